//! AMD SEV-SNP verifier. The evidence is the 1184-byte attestation report,
//! the endorsement the VCEK certificate (DER or PEM). The chain VCEK → ASK →
//! ARK is checked against the ARK/ASK pairs built into the `sev` crate for
//! Milan, Genoa and Turin (RSA-PSS, pure Rust). On top of what the crate
//! does we check: every certificate's validity at `now`, the report
//! signature over the *raw* signed bytes (not a re-serialisation), that the
//! VCEK's hwID and TCB extensions match the report, the signing key type,
//! and we report the guest policy's debug bit, VMPL and TCB SVNs.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use sev::certs::snp::{builtin, Certificate as SevCert, Verifiable as _};
use sev::firmware::guest::AttestationReport;
use x509_cert::Certificate;

use super::x509::{check_validity, parse_der, parse_pem};
use crate::{AttestationResult, TcbInfo, TeeType, VerifyError};

const T: TeeType = TeeType::Sev;
/// Size of an SEV-SNP attestation report.
pub const REPORT_LEN: usize = 1184;
const SIGNED_LEN: usize = 0x2a0;

struct Generation {
    name: &'static str,
    ark: Certificate,
    ask: Certificate,
    ask_sev: SevCert,
}

fn builtin_generations() -> &'static Result<Vec<Generation>, String> {
    static CACHE: OnceLock<Result<Vec<Generation>, String>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let pairs: [(&str, &[u8], &[u8]); 3] = [
            ("milan", builtin::milan::ARK, builtin::milan::ASK),
            ("genoa", builtin::genoa::ARK, builtin::genoa::ASK),
            ("turin", builtin::turin::ARK, builtin::turin::ASK),
        ];
        pairs
            .into_iter()
            .map(|(name, ark_pem, ask_pem)| {
                let ark_sev = SevCert::from_pem(ark_pem).map_err(|e| format!("{name} ARK: {e}"))?;
                let ask_sev = SevCert::from_pem(ask_pem).map_err(|e| format!("{name} ASK: {e}"))?;
                (&ark_sev, &ark_sev)
                    .verify()
                    .map_err(|e| format!("{name} ARK is not self-signed: {e}"))?;
                (&ark_sev, &ask_sev)
                    .verify()
                    .map_err(|e| format!("{name} ARK does not sign ASK: {e}"))?;
                let ark = parse_pem(T, "ark", ark_pem).map_err(|e| e.to_string())?;
                let ask = parse_pem(T, "ask", ask_pem).map_err(|e| e.to_string())?;
                Ok(Generation {
                    name,
                    ark,
                    ask,
                    ask_sev,
                })
            })
            .collect()
    })
}

fn le_to_be48(le: &[u8]) -> Result<[u8; 48], VerifyError> {
    if le[48..72].iter().any(|b| *b != 0) {
        return Err(VerifyError::signature(
            T,
            "signature",
            "component wider than 384 bits",
        ));
    }
    let mut be = [0u8; 48];
    for (i, b) in le[..48].iter().enumerate() {
        be[47 - i] = *b;
    }
    Ok(be)
}

/// Read the value of a VCEK TCB/hwID extension: DER INTEGER, OCTET STRING
/// or (legacy) raw bytes.
fn ext_bytes(v: &[u8]) -> Vec<u8> {
    match v.first() {
        Some(0x02) | Some(0x04) if v.len() >= 2 && usize::from(v[1]) == v.len() - 2 => {
            v[2..].to_vec()
        }
        _ => v.to_vec(),
    }
}

fn ext_int(v: &[u8]) -> Option<u64> {
    let b = ext_bytes(v);
    if b.is_empty() || b.len() > 8 {
        return None;
    }
    Some(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
}

/// Verify an SEV-SNP report with its VCEK at `now`.
pub fn verify_sev(
    report: &[u8],
    endorsements: &[Vec<u8>],
    now: u64,
) -> Result<AttestationResult, VerifyError> {
    if report.len() != REPORT_LEN {
        return Err(VerifyError::malformed(
            T,
            "report",
            format!("{} bytes, expected {REPORT_LEN}", report.len()),
        ));
    }
    let vcek_bytes = endorsements
        .first()
        .ok_or_else(|| VerifyError::MissingEndorsement {
            tee: T,
            detail: "the VCEK certificate (DER or PEM) from AMD KDS for this chip and TCB".into(),
        })?;
    let parsed = AttestationReport::from_bytes(report)
        .map_err(|e| VerifyError::malformed(T, "report", e))?;
    if parsed.sig_algo != 1 {
        return Err(VerifyError::mismatch(
            T,
            "sig_algo",
            "1 (ECDSA P-384 SHA-384)",
            parsed.sig_algo,
        ));
    }
    let signing_key = parsed.key_info.signing_key();
    if signing_key != 0 {
        return Err(VerifyError::mismatch(
            T,
            "signing_key",
            "0 (VCEK)",
            signing_key,
        ));
    }

    let (vcek, vcek_sev) = if vcek_bytes.starts_with(b"-----BEGIN") {
        let c = parse_pem(T, "vcek", vcek_bytes)?;
        let s = SevCert::from_pem(vcek_bytes).map_err(|e| VerifyError::malformed(T, "vcek", e))?;
        (c, s)
    } else {
        let c = parse_der(T, "vcek", vcek_bytes)?;
        let s = SevCert::from_der(vcek_bytes).map_err(|e| VerifyError::malformed(T, "vcek", e))?;
        (c, s)
    };
    let gens = builtin_generations()
        .as_ref()
        .map_err(|e| VerifyError::chain(T, "ark", e))?;
    let ck = super::cache::key(&[b"sev-vcek", vcek_bytes]);
    let gen = super::cache::get(&ck)
        .and_then(|i| gens.get(usize::from(i)))
        .or_else(|| {
            let (i, g) = gens
                .iter()
                .enumerate()
                .find(|(_, g)| (&g.ask_sev, &vcek_sev).verify().is_ok())?;
            super::cache::put(ck, u8::try_from(i).unwrap_or(u8::MAX));
            Some(g)
        })
        .ok_or_else(|| {
            VerifyError::chain(
                T,
                "vcek",
                "VCEK is not signed by the AMD ASK of Milan, Genoa or Turin (wrong or altered VCEK?)",
            )
        })?;
    check_validity(T, "ark", &gen.ark, now)?;
    check_validity(T, "ask", &gen.ask, now)?;
    check_validity(T, "vcek", &vcek, now)?;

    // Report signature over the raw signed bytes.
    let r = le_to_be48(&report[SIGNED_LEN..SIGNED_LEN + 72])?;
    let s = le_to_be48(&report[SIGNED_LEN + 72..SIGNED_LEN + 144])?;
    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&r);
    sig[48..].copy_from_slice(&s);
    let spk = vcek
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    if spk.len() != 97 {
        return Err(VerifyError::malformed(
            T,
            "vcek",
            "public key is not a P-384 point",
        ));
    }
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, spk)
        .verify(&report[..SIGNED_LEN], &sig)
        .map_err(|_| {
            VerifyError::signature(
                T,
                "report",
                "the VCEK's signature over the report does not verify",
            )
        })?;

    // The VCEK certifies one chip at one TCB: both must match the report.
    let mut exts = BTreeMap::new();
    for e in vcek.tbs_certificate.extensions.iter().flatten() {
        exts.insert(e.extn_id.to_string(), e.extn_value.as_bytes().to_vec());
    }
    let hwid = exts.get("1.3.6.1.4.1.3704.1.4").map(|v| ext_bytes(v));
    let chip_id: &[u8] = &parsed.chip_id[..];
    if chip_id.iter().any(|b| *b != 0) {
        let expected = hwid.clone().unwrap_or_default();
        let cmp_len = expected.len().min(64);
        if expected.is_empty() || expected[..cmp_len] != chip_id[..cmp_len] {
            return Err(VerifyError::mismatch(
                T,
                "chip_id",
                format!("VCEK hwID {}", hex::encode(&expected)),
                hex::encode(chip_id),
            ));
        }
    }
    let tcb = &parsed.reported_tcb;
    let mut svns = BTreeMap::new();
    svns.insert("bootloader".to_string(), u64::from(tcb.bootloader));
    svns.insert("tee".to_string(), u64::from(tcb.tee));
    svns.insert("snp".to_string(), u64::from(tcb.snp));
    svns.insert("microcode".to_string(), u64::from(tcb.microcode));
    if let Some(fmc) = tcb.fmc {
        svns.insert("fmc".to_string(), u64::from(fmc));
    }
    for (name, oid) in [
        ("bootloader", "1.3.6.1.4.1.3704.1.3.1"),
        ("tee", "1.3.6.1.4.1.3704.1.3.2"),
        ("snp", "1.3.6.1.4.1.3704.1.3.3"),
        ("microcode", "1.3.6.1.4.1.3704.1.3.8"),
        ("fmc", "1.3.6.1.4.1.3704.1.3.9"),
    ] {
        let (Some(v), Some(reported)) = (exts.get(oid), svns.get(name)) else {
            continue;
        };
        let cert_v = ext_int(v).ok_or_else(|| {
            VerifyError::malformed(T, format!("vcek.tcb.{name}"), "not an integer")
        })?;
        if cert_v != *reported {
            return Err(VerifyError::mismatch(
                T,
                format!("reported_tcb.{name}"),
                format!("{cert_v} (certified by the VCEK)"),
                reported,
            ));
        }
    }
    svns.insert("guest_svn".to_string(), u64::from(parsed.guest_svn));

    let mut measurements = BTreeMap::new();
    measurements.insert(
        "measurement".to_string(),
        hex::encode(&parsed.measurement[..]),
    );
    measurements.insert("host_data".to_string(), hex::encode(&parsed.host_data[..]));
    measurements.insert(
        "id_key_digest".to_string(),
        hex::encode(&parsed.id_key_digest[..]),
    );
    measurements.insert(
        "author_key_digest".to_string(),
        hex::encode(&parsed.author_key_digest[..]),
    );
    measurements.insert("family_id".to_string(), hex::encode(&parsed.family_id[..]));
    measurements.insert("image_id".to_string(), hex::encode(&parsed.image_id[..]));

    let mut claims = BTreeMap::new();
    claims.insert("vmpl".to_string(), parsed.vmpl.to_string());
    claims.insert("generation".to_string(), gen.name.to_string());
    claims.insert("report_version".to_string(), parsed.version.to_string());
    let policy = u64::from_le_bytes(
        report[8..16]
            .try_into()
            .map_err(|_| VerifyError::malformed(T, "policy", "short"))?,
    );
    claims.insert("guest_policy".to_string(), format!("{policy:#x}"));
    claims.insert("chip_id".to_string(), hex::encode(chip_id));
    let mut report_data = [0u8; 64];
    report_data.copy_from_slice(&parsed.report_data[..]);
    Ok(AttestationResult {
        tee: T,
        primary_measurement: "measurement",
        measurements,
        tcb: TcbInfo {
            status: None,
            advisory_ids: Vec::new(),
            svns,
        },
        debug: policy & (1 << 19) != 0,
        report_data: Some(report_data),
        nitro: None,
        evidence_time: None,
        claims,
    })
}
