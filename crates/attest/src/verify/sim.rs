//! The `sim` TEE: the same claims as a real TEE (measurement, report data,
//! SVN, debug flag, time) signed with Ed25519 by a software root the operator
//! generates. It lets the whole system run on machines without a TEE; policy
//! refuses it unless `accept_sim = true`.
//!
//! Evidence layout (229 bytes, big-endian integers):
//! `"ARCHSIM1" ‖ measurement[48] ‖ report_data[64] ‖ svn u32 ‖ flags u8
//! (bit 0 = debug) ‖ timestamp u64 ‖ root_public[32] ‖ signature[64]`, the
//! signature covering `"archipelago-sim-evidence-v1" ‖` everything before it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::{AttestationResult, TcbInfo, TeeType, VerifyError};

const MAGIC: &[u8; 8] = b"ARCHSIM1";
const DOMAIN: &[u8] = b"archipelago-sim-evidence-v1";
/// Length of a sim evidence blob.
pub const SIM_EVIDENCE_LEN: usize = 8 + 48 + 64 + 4 + 1 + 8 + 32 + 64;
const SIGNED_LEN: usize = SIM_EVIDENCE_LEN - 64;
const FILE_TAG: &str = "archipelago-sim-root-v1";

/// The claims carried by sim evidence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimClaims {
    /// SHA-384 measurement of the enclave binary, its shared libraries and model files.
    pub measurement: [u8; 48],
    /// The 64-byte report data (key binding).
    pub report_data: [u8; 64],
    /// Security version number.
    pub svn: u32,
    /// Debug flag.
    pub debug: bool,
    /// Unix seconds when produced.
    pub timestamp: u64,
}

/// The operator's software root for sim evidence. The secret key is
/// zeroized on drop and never printed.
pub struct SimRoot {
    key: SigningKey,
}

impl fmt::Debug for SimRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimRoot")
            .field("public_key", &self.public_key_b64())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A sim root file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SimRootError {
    /// I/O error.
    #[error("sim root file {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a sim root.
    #[error("sim root file {path} is malformed: {detail} (generate one with SimRoot::generate)")]
    Malformed {
        /// Path.
        path: String,
        /// What was wrong.
        detail: &'static str,
    },
}

impl SimRoot {
    /// Generate a fresh root from the OS random generator.
    pub fn generate() -> Self {
        SimRoot {
            key: SigningKey::generate(&mut rand_core::OsRng),
        }
    }

    /// Build from a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SimRoot {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The 32-byte public key (the trust anchor relying parties configure).
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The public key, standard base64 (for `[sim] roots` in a policy).
    pub fn public_key_b64(&self) -> String {
        STANDARD.encode(self.public_key())
    }

    /// Save as a text file with mode 0600.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SimRootError> {
        let path = path.as_ref();
        let io = |source| SimRootError::Io {
            path: path.display().to_string(),
            source,
        };
        let seed = Zeroizing::new(self.key.to_bytes());
        let line = Zeroizing::new(format!("{FILE_TAG} {}\n", STANDARD.encode(*seed)));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(io)?;
        }
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    }

    /// Load a file written by [`SimRoot::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SimRootError> {
        let path = path.as_ref();
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| SimRootError::Io {
            path: p.clone(),
            source,
        })?;
        if meta.len() > 1024 {
            return Err(SimRootError::Malformed {
                path: p,
                detail: "file larger than 1 KiB",
            });
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SimRootError::Io {
                    path: p.clone(),
                    source,
                })?,
            );
        let b64 =
            text.trim()
                .strip_prefix(FILE_TAG)
                .map(str::trim)
                .ok_or(SimRootError::Malformed {
                    path: p.clone(),
                    detail: "missing archipelago-sim-root-v1 tag",
                })?;
        let seed = Zeroizing::new(STANDARD.decode(b64).map_err(|_| SimRootError::Malformed {
            path: p.clone(),
            detail: "secret is not base64",
        })?);
        let seed: &[u8; 32] = seed
            .as_slice()
            .try_into()
            .map_err(|_| SimRootError::Malformed {
                path: p,
                detail: "secret is not 32 bytes",
            })?;
        Ok(SimRoot::from_seed(seed))
    }

    /// Sign claims into a sim evidence blob.
    pub fn sign(&self, c: &SimClaims) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIM_EVIDENCE_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&c.measurement);
        out.extend_from_slice(&c.report_data);
        out.extend_from_slice(&c.svn.to_be_bytes());
        out.push(u8::from(c.debug));
        out.extend_from_slice(&c.timestamp.to_be_bytes());
        out.extend_from_slice(&self.public_key());
        let sig = self.key.sign(&signed_message(&out));
        out.extend_from_slice(&sig.to_bytes());
        out
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

/// Parse a sim evidence blob without checking its signature.
pub fn parse_sim(evidence: &[u8]) -> Result<(SimClaims, [u8; 32]), VerifyError> {
    let t = TeeType::Sim;
    if evidence.len() != SIM_EVIDENCE_LEN {
        return Err(VerifyError::malformed(
            t,
            "evidence",
            format!("{} bytes, expected {SIM_EVIDENCE_LEN}", evidence.len()),
        ));
    }
    if &evidence[..8] != MAGIC {
        return Err(VerifyError::malformed(t, "magic", "not ARCHSIM1"));
    }
    let mut at = 8;
    let mut take = |n: usize| {
        let s = &evidence[at..at + n];
        at += n;
        s
    };
    let mut measurement = [0u8; 48];
    measurement.copy_from_slice(take(48));
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(take(64));
    let mut svn = [0u8; 4];
    svn.copy_from_slice(take(4));
    let flags = take(1)[0];
    let mut ts = [0u8; 8];
    ts.copy_from_slice(take(8));
    let mut root = [0u8; 32];
    root.copy_from_slice(take(32));
    if flags & !1 != 0 {
        return Err(VerifyError::malformed(
            t,
            "flags",
            format!("unknown bits {flags:#04x}"),
        ));
    }
    Ok((
        SimClaims {
            measurement,
            report_data,
            svn: u32::from_be_bytes(svn),
            debug: flags & 1 == 1,
            timestamp: u64::from_be_bytes(ts),
        },
        root,
    ))
}

/// Verify sim evidence against the configured sim roots.
pub fn verify_sim(
    evidence: &[u8],
    roots: &[[u8; 32]],
    now: u64,
) -> Result<AttestationResult, VerifyError> {
    let t = TeeType::Sim;
    let (claims, root) = parse_sim(evidence)?;
    if roots.is_empty() {
        return Err(VerifyError::NoTrustAnchor {
            tee: t,
            detail: "no sim root public key configured (policy [sim] roots)".into(),
        });
    }
    if !roots.contains(&root) {
        return Err(VerifyError::chain(
            t,
            "root_public_key",
            format!(
                "signer {} is not a configured sim root",
                STANDARD.encode(root)
            ),
        ));
    }
    let vk = VerifyingKey::from_bytes(&root)
        .map_err(|e| VerifyError::malformed(t, "root_public_key", e))?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&evidence[SIGNED_LEN..]);
    vk.verify_strict(
        &signed_message(&evidence[..SIGNED_LEN]),
        &Signature::from_bytes(&sig),
    )
    .map_err(|e| VerifyError::signature(t, "evidence", e))?;
    // Allow five minutes of clock skew for evidence "from the future".
    if claims.timestamp > now.saturating_add(300) {
        return Err(VerifyError::OutsideValidity {
            tee: t,
            field: "timestamp".into(),
            not_before: 0,
            not_after: now.saturating_add(300),
            now: claims.timestamp,
        });
    }
    let mut measurements = BTreeMap::new();
    measurements.insert("measurement".to_string(), hex::encode(claims.measurement));
    let mut svns = BTreeMap::new();
    svns.insert("svn".to_string(), u64::from(claims.svn));
    let mut extra = BTreeMap::new();
    extra.insert("sim_root".to_string(), STANDARD.encode(root));
    Ok(AttestationResult {
        tee: t,
        primary_measurement: "measurement",
        measurements,
        tcb: TcbInfo {
            status: None,
            advisory_ids: Vec::new(),
            svns,
        },
        debug: claims.debug,
        report_data: Some(claims.report_data),
        nitro: None,
        evidence_time: Some(claims.timestamp),
        claims: extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> SimClaims {
        SimClaims {
            measurement: [1; 48],
            report_data: [2; 64],
            svn: 3,
            debug: false,
            timestamp: 1000,
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let root = SimRoot::from_seed(&[9; 32]);
        let ev = root.sign(&claims());
        let r = verify_sim(&ev, &[root.public_key()], 1000).unwrap();
        assert_eq!(r.report_data, Some([2; 64]));
        assert_eq!(r.tcb.svns["svn"], 3);
        for i in 8..SIGNED_LEN {
            let mut bad = ev.clone();
            bad[i] ^= 1;
            assert!(
                verify_sim(&bad, &[root.public_key()], 1000).is_err(),
                "byte {i}"
            );
        }
        let other = SimRoot::from_seed(&[8; 32]);
        let e = verify_sim(&ev, &[other.public_key()], 1000).unwrap_err();
        assert_eq!(e.field(), "root_public_key");
        let e = verify_sim(&ev, &[root.public_key()], 10).unwrap_err();
        assert_eq!(e.field(), "timestamp");
        assert!(verify_sim(&ev[..100], &[root.public_key()], 1000).is_err());
        assert!(verify_sim(&ev, &[], 1000).is_err());
    }

    #[test]
    fn save_load_mode_0600_and_redacted_debug() {
        let dir = std::env::temp_dir().join(format!("attest-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("root");
        let root = SimRoot::generate();
        root.save(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let back = SimRoot::load(&p).unwrap();
        assert_eq!(back.public_key(), root.public_key());
        let dbg = format!("{root:?}");
        assert!(dbg.contains("redacted"));
        let seed_b64 = STANDARD.encode(root.key.to_bytes());
        assert!(!dbg.contains(&seed_b64));
        std::fs::write(&p, "nonsense").unwrap();
        assert!(SimRoot::load(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
