//! Appraisal policy: the relying party's reference values and rules, read
//! from one TOML file whose format is shared by coordinator and client
//! (documented in `docs/policy.md`). Authentic evidence is not enough: the
//! policy decides which TEEs, measurements, TCB levels and ages are accepted.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine as _;
use serde::Deserialize;

use crate::anchors::{CcaTrustAnchorSpec, TrustAnchors};
use crate::{AttestationResult, TeeType};

/// Largest policy file read.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Default maximum evidence age (where the evidence carries a time).
pub const DEFAULT_MAX_EVIDENCE_AGE_SECS: u64 = 24 * 3600;

/// An appraisal policy. Build with [`Policy::from_toml_str`], [`Policy::load`],
/// [`Policy::production`] or [`Policy::dev_sim`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PolicyFile")]
pub struct Policy {
    /// TEE types accepted (sim additionally needs `accept_sim`).
    pub accepted_tees: Vec<TeeType>,
    /// Whether sim evidence may count as attested.
    pub accept_sim: bool,
    /// Maximum age of evidence that carries a time.
    pub max_evidence_age_secs: u64,
    /// Refuse evidence that carries no time of its own.
    pub require_evidence_time: bool,
    /// Per-TEE reference values.
    pub tees: BTreeMap<TeeType, TeePolicy>,
    /// Operator-supplied trust anchors (sim roots, CCA platform keys).
    pub anchors: TrustAnchors,
}

/// Reference values for one TEE type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeePolicy {
    /// Allowed values of the primary measurement (hex); absent = any.
    #[serde(default)]
    pub measurements: Option<Vec<String>>,
    /// Other measurement registers that must equal these values (hex).
    #[serde(default)]
    pub require: BTreeMap<String, String>,
    /// Accepted vendor TCB statuses (DCAP); absent = UpToDate and
    /// SWHardeningNeeded.
    #[serde(default)]
    pub accepted_tcb_status: Option<Vec<String>>,
    /// Minimum security version per component.
    #[serde(default)]
    pub min_svn: BTreeMap<String, u64>,
    /// Highest VMPL accepted (SEV); absent = 0.
    #[serde(default)]
    pub max_vmpl: Option<u64>,
    /// `[sim]` only: accepted sim root public keys (base64).
    #[serde(default)]
    pub roots: Vec<String>,
    /// `[trustzone]` only: CCA platform keys.
    #[serde(default)]
    pub trust_anchors: Vec<CcaTrustAnchorSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    accepted_tees: Vec<TeeType>,
    #[serde(default)]
    accept_sim: bool,
    #[serde(default)]
    max_evidence_age_secs: Option<u64>,
    #[serde(default)]
    require_evidence_time: bool,
    #[serde(default)]
    sgx: Option<TeePolicy>,
    #[serde(default)]
    tdx: Option<TeePolicy>,
    #[serde(default)]
    sev: Option<TeePolicy>,
    #[serde(default)]
    nitro: Option<TeePolicy>,
    #[serde(default)]
    trustzone: Option<TeePolicy>,
    #[serde(default)]
    sim: Option<TeePolicy>,
}

/// The policy file is unreadable or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Could not read the file.
    #[error("policy file {path}: {detail}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        detail: String,
    },
    /// Invalid TOML or values; see docs/policy.md.
    #[error("invalid policy (see docs/policy.md): {0}")]
    Invalid(String),
}

/// Authentic evidence refused by policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy refused {field}: expected {expected}, found {found}")]
pub struct PolicyRefusal {
    /// The failing field (e.g. `tee`, `debug`, `measurement`, `tcb_status`,
    /// `svn.snp`, `vmpl`, `evidence_age`).
    pub field: String,
    /// What the policy expects.
    pub expected: String,
    /// What the evidence says.
    pub found: String,
}

fn refuse(
    field: impl Into<String>,
    expected: impl Into<String>,
    found: impl Into<String>,
) -> PolicyRefusal {
    PolicyRefusal {
        field: field.into(),
        expected: expected.into(),
        found: found.into(),
    }
}

fn check_hex(field: &str, v: &str) -> Result<String, PolicyError> {
    let lower = v.trim().to_ascii_lowercase();
    if lower.is_empty() || hex::decode(&lower).is_err() {
        return Err(PolicyError::Invalid(format!(
            "{field}: {v:?} is not a hex string"
        )));
    }
    Ok(lower)
}

impl TryFrom<PolicyFile> for Policy {
    type Error = PolicyError;

    fn try_from(f: PolicyFile) -> Result<Self, PolicyError> {
        let mut tees = BTreeMap::new();
        let mut anchors = TrustAnchors::default();
        for (t, p) in [
            (TeeType::Sgx, f.sgx),
            (TeeType::Tdx, f.tdx),
            (TeeType::Sev, f.sev),
            (TeeType::Nitro, f.nitro),
            (TeeType::Trustzone, f.trustzone),
            (TeeType::Sim, f.sim),
        ] {
            let Some(mut p) = p else { continue };
            if t != TeeType::Sim && !p.roots.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "[{t}] roots: only [sim] has roots"
                )));
            }
            if t != TeeType::Trustzone && !p.trust_anchors.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "[{t}] trust_anchors: only [trustzone] has trust_anchors"
                )));
            }
            if let Some(ms) = &mut p.measurements {
                for m in ms.iter_mut() {
                    *m = check_hex(&format!("[{t}] measurements"), m)?;
                }
            }
            for (k, v) in p.require.iter_mut() {
                *v = check_hex(&format!("[{t}] require.{k}"), v)?;
            }
            for r in &p.roots {
                let b = STANDARD
                    .decode(r.trim())
                    .or_else(|_| URL_SAFE.decode(r.trim()))
                    .map_err(|_| {
                        PolicyError::Invalid(format!("[sim] roots: {r:?} is not base64"))
                    })?;
                let k: [u8; 32] = b.try_into().map_err(|_| {
                    PolicyError::Invalid(format!("[sim] roots: {r:?} is not a 32-byte Ed25519 key"))
                })?;
                anchors.sim_roots.push(k);
            }
            for a in &p.trust_anchors {
                anchors.cca.push(
                    a.to_anchor()
                        .map_err(|e| PolicyError::Invalid(format!("[trustzone] {e}")))?,
                );
            }
            tees.insert(t, p);
        }
        if f.accepted_tees.contains(&TeeType::Sim) && !f.accept_sim {
            return Err(PolicyError::Invalid(
                "accepted_tees lists \"sim\" but accept_sim is false; set accept_sim = true \
                 (development only) or remove sim"
                    .into(),
            ));
        }
        let mut accepted_tees = f.accepted_tees;
        if f.accept_sim && !accepted_tees.contains(&TeeType::Sim) {
            accepted_tees.push(TeeType::Sim);
        }
        Ok(Policy {
            accepted_tees,
            accept_sim: f.accept_sim,
            max_evidence_age_secs: f
                .max_evidence_age_secs
                .unwrap_or(DEFAULT_MAX_EVIDENCE_AGE_SECS),
            require_evidence_time: f.require_evidence_time,
            tees,
            anchors,
        })
    }
}

impl Policy {
    /// Parse a TOML policy.
    pub fn from_toml_str(s: &str) -> Result<Policy, PolicyError> {
        if s.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::Invalid(format!(
                "policy is {} bytes, more than {MAX_POLICY_BYTES}",
                s.len()
            )));
        }
        toml::from_str(s).map_err(|e| PolicyError::Invalid(e.to_string()))
    }

    /// Read and parse a TOML policy file.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let io = |e: std::io::Error| PolicyError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_POLICY_BYTES as u64 {
            return Err(PolicyError::Invalid(format!(
                "policy file is {len} bytes, more than {MAX_POLICY_BYTES}"
            )));
        }
        Policy::from_toml_str(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// The default production policy: every hardware TEE, any measurement
    /// (pin measurements for real deployments), DCAP `UpToDate` or
    /// `SWHardeningNeeded`, no debug, VMPL 0, evidence at most a day old,
    /// sim refused.
    pub fn production() -> Policy {
        Policy {
            accepted_tees: vec![
                TeeType::Sgx,
                TeeType::Tdx,
                TeeType::Sev,
                TeeType::Nitro,
                TeeType::Trustzone,
            ],
            accept_sim: false,
            max_evidence_age_secs: DEFAULT_MAX_EVIDENCE_AGE_SECS,
            require_evidence_time: false,
            tees: BTreeMap::new(),
            anchors: TrustAnchors::default(),
        }
    }

    /// A development policy that accepts sim evidence signed by `sim_root_public`
    /// with any measurement (plus every hardware TEE as in production).
    pub fn dev_sim(sim_root_public: [u8; 32]) -> Policy {
        let mut p = Policy::production();
        p.accept_sim = true;
        p.accepted_tees.push(TeeType::Sim);
        p.anchors.sim_roots.push(sim_root_public);
        p
    }

    /// Appraise an authentic attestation result against this policy.
    pub fn appraise(&self, r: &AttestationResult, now: u64) -> Result<(), PolicyRefusal> {
        let names = || {
            self.accepted_tees
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if r.tee == TeeType::Sim && !self.accept_sim {
            return Err(refuse("tee", "a hardware TEE (accept_sim = false)", "sim"));
        }
        if !self.accepted_tees.contains(&r.tee) {
            return Err(refuse(
                "tee",
                format!("one of [{}]", names()),
                r.tee.as_str(),
            ));
        }
        if r.debug {
            return Err(refuse("debug", "false", "true"));
        }
        let empty = TeePolicy::default();
        let tp = self.tees.get(&r.tee).unwrap_or(&empty);
        let primary = r.primary_measurement_hex().unwrap_or("absent");
        if let Some(allowed) = &tp.measurements {
            if !allowed.iter().any(|m| m == primary) {
                return Err(refuse(
                    format!("measurement.{}", r.primary_measurement),
                    format!("one of [{}]", allowed.join(", ")),
                    primary,
                ));
            }
        }
        for (k, v) in &tp.require {
            let found = r
                .measurements
                .get(k)
                .map(String::as_str)
                .unwrap_or("absent");
            if found != v {
                return Err(refuse(format!("measurement.{k}"), v.clone(), found));
            }
        }
        if matches!(r.tee, TeeType::Sgx | TeeType::Tdx) {
            let default = ["UpToDate".to_string(), "SWHardeningNeeded".to_string()];
            let accepted: &[String] = tp.accepted_tcb_status.as_deref().unwrap_or(&default);
            let found = r.tcb.status.as_deref().unwrap_or("absent");
            if !accepted.iter().any(|s| s == found) {
                return Err(refuse(
                    "tcb_status",
                    format!("one of [{}]", accepted.join(", ")),
                    format!("{found} (advisories: {})", r.tcb.advisory_ids.join(", ")),
                ));
            }
        }
        for (k, min) in &tp.min_svn {
            match r.tcb.svns.get(k) {
                Some(v) if v >= min => {}
                Some(v) => {
                    return Err(refuse(
                        format!("svn.{k}"),
                        format!(">= {min}"),
                        v.to_string(),
                    ))
                }
                None => return Err(refuse(format!("svn.{k}"), format!(">= {min}"), "absent")),
            }
        }
        if r.tee == TeeType::Sev {
            let max = tp.max_vmpl.unwrap_or(0);
            let found = r.claims.get("vmpl").and_then(|v| v.parse::<u64>().ok());
            match found {
                Some(v) if v <= max => {}
                other => {
                    return Err(refuse(
                        "vmpl",
                        format!("<= {max}"),
                        other
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "absent".into()),
                    ))
                }
            }
        }
        match r.evidence_time {
            Some(t) => {
                let age = now.saturating_sub(t);
                if age > self.max_evidence_age_secs {
                    return Err(refuse(
                        "evidence_age",
                        format!("<= {} s", self.max_evidence_age_secs),
                        format!("{age} s (evidence time {t}, now {now})"),
                    ));
                }
            }
            None if self.require_evidence_time => {
                return Err(refuse(
                    "evidence_time",
                    "present (require_evidence_time)",
                    "absent",
                ));
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TcbInfo;

    fn result(tee: TeeType) -> AttestationResult {
        let mut measurements = BTreeMap::new();
        measurements.insert("measurement".to_string(), "aa".to_string());
        let mut svns = BTreeMap::new();
        svns.insert("snp".to_string(), 8);
        svns.insert("bootloader".to_string(), 3);
        let mut claims = BTreeMap::new();
        claims.insert("vmpl".to_string(), "0".to_string());
        AttestationResult {
            tee,
            primary_measurement: "measurement",
            measurements,
            tcb: TcbInfo {
                status: None,
                advisory_ids: vec![],
                svns,
            },
            debug: false,
            report_data: None,
            nitro: None,
            evidence_time: Some(100),
            claims,
        }
    }

    #[test]
    fn parses_documented_example() {
        let p = Policy::from_toml_str(
            r#"
accepted_tees = ["sev", "tdx"]
max_evidence_age_secs = 600
[sev]
measurements = ["AA"]
min_svn = { snp = 8, bootloader = 3 }
max_vmpl = 0
[tdx]
accepted_tcb_status = ["UpToDate"]
require = { rtmr0 = "00ff" }
"#,
        )
        .unwrap();
        assert_eq!(p.max_evidence_age_secs, 600);
        assert_eq!(
            p.tees[&TeeType::Sev].measurements.as_deref(),
            Some(&["aa".to_string()][..])
        );
        p.appraise(&result(TeeType::Sev), 200).unwrap();
        let e = p.appraise(&result(TeeType::Sev), 10_000).unwrap_err();
        assert_eq!(e.field, "evidence_age");
        let e = p.appraise(&result(TeeType::Nitro), 200).unwrap_err();
        assert_eq!((e.field.as_str(), e.found.as_str()), ("tee", "nitro"));
        let mut r = result(TeeType::Sev);
        r.tcb.svns.insert("snp".into(), 7);
        let e = p.appraise(&r, 200).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.expected.as_str(), e.found.as_str()),
            ("svn.snp", ">= 8", "7")
        );
        r.tcb.svns.remove("bootloader");
        assert_eq!(p.appraise(&r, 200).unwrap_err().field, "svn.bootloader");
    }

    #[test]
    fn refuses_invalid_files() {
        for bad in [
            "",
            "accepted_tees = [\"bogus\"]",
            "accepted_tees = [\"sim\"]",
            "accepted_tees = []\nunknown = 1",
            "accepted_tees = []\n[sev]\nmeasurements = [\"zz\"]",
            "accepted_tees = []\n[sev]\nroots = [\"AAAA\"]",
            "accepted_tees = []\n[sim]\nroots = [\"AAAA\"]",
            "accepted_tees = []\n[sgx]\ntrust_anchors = [{ instance-id = \"01\", pkey = { kty = \"EC\", crv = \"P-256\", x = \"\", y = \"\" } }]",
            "accepted_tees = []\n[trustzone]\ntrust_anchors = [{ instance-id = \"01\", pkey = { kty = \"RSA\", crv = \"P-256\", x = \"\", y = \"\" } }]",
            "accepted_tees = []\n[sev]\nbogus = 1",
        ] {
            assert!(Policy::from_toml_str(bad).is_err(), "accepted: {bad}");
        }
        assert!(Policy::load(Path::new("/nonexistent/policy.toml")).is_err());
    }

    #[test]
    fn sim_only_with_accept_sim() {
        let r = result(TeeType::Sim);
        assert_eq!(
            Policy::production().appraise(&r, 100).unwrap_err().field,
            "tee"
        );
        Policy::dev_sim([0; 32]).appraise(&r, 100).unwrap();
        let p = Policy::from_toml_str("accepted_tees = []\naccept_sim = true\n[sim]\nroots = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n").unwrap();
        assert_eq!(p.anchors.sim_roots, vec![[0u8; 32]]);
        p.appraise(&r, 100).unwrap();
    }
}
