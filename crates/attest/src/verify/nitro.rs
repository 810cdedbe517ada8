//! AWS Nitro Enclaves verifier. The evidence is the NSM's COSE_Sign1
//! attestation document (ES384); its payload carries the leaf certificate
//! and a CA bundle whose first element must be the pinned AWS Nitro root G1.
//! We check the chain root → bundle → leaf (ECDSA P-384, names, validity at
//! `now`), the document signature by the leaf, and report the PCRs,
//! `public_key`, `user_data`, `nonce` and the document's timestamp.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ciborium::Value;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use super::cose::{alg, get_text, parse_sign1, payload_map, verify_sign1, Es};
use super::x509::{check_issued_by, check_validity, parse_der, parse_pem};
use crate::{AttestationResult, NitroFields, TcbInfo, TeeType, VerifyError};

const T: TeeType = TeeType::Nitro;

/// The AWS Nitro Enclaves root certificate G1 (public; SHA-256 fingerprint
/// 64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B).
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";
const ROOT_SHA256: &str = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

struct Root {
    cert: Certificate,
    der: Vec<u8>,
}

fn root() -> Result<&'static Root, VerifyError> {
    static ROOT: OnceLock<Result<Root, String>> = OnceLock::new();
    ROOT.get_or_init(|| {
        use x509_cert::der::Encode as _;
        let cert =
            parse_pem(T, "root", AWS_NITRO_ROOT_G1_PEM.as_bytes()).map_err(|e| e.to_string())?;
        let der = cert.to_der().map_err(|e| e.to_string())?;
        if hex::encode(Sha256::digest(&der)) != ROOT_SHA256 {
            return Err("pinned AWS Nitro root G1 fingerprint mismatch".into());
        }
        Ok(Root { cert, der })
    })
    .as_ref()
    .map_err(|e| VerifyError::chain(T, "root", e))
}

fn bytes_field(
    m: &[(Value, Value)],
    key: &'static str,
    max: usize,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match get_text(m, key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) if b.len() <= max => Ok(Some(b.clone())),
        Some(Value::Bytes(b)) => Err(VerifyError::malformed(
            T,
            key,
            format!("{} bytes, more than {max}", b.len()),
        )),
        Some(_) => Err(VerifyError::malformed(T, key, "not a byte string")),
    }
}

/// Verify a Nitro attestation document at `now`.
pub fn verify_nitro(doc: &[u8], now: u64) -> Result<AttestationResult, VerifyError> {
    let s = parse_sign1(T, "document", doc)?;
    let es = alg(T, "document", &s)?;
    if es != Es::Es384 {
        return Err(VerifyError::mismatch(T, "document.alg", "ES384", "ES256"));
    }
    let m = payload_map(T, "payload", &s)?;
    let module_id = match get_text(&m, "module_id") {
        Some(Value::Text(t)) if !t.is_empty() => t.clone(),
        _ => return Err(VerifyError::malformed(T, "module_id", "missing or empty")),
    };
    let digest = match get_text(&m, "digest") {
        Some(Value::Text(t)) => t.clone(),
        _ => return Err(VerifyError::malformed(T, "digest", "missing")),
    };
    if digest != "SHA384" {
        return Err(VerifyError::mismatch(T, "digest", "SHA384", digest));
    }
    let timestamp_ms = match get_text(&m, "timestamp").and_then(Value::as_integer) {
        Some(i) => {
            u64::try_from(i).map_err(|_| VerifyError::malformed(T, "timestamp", "negative"))?
        }
        None => return Err(VerifyError::malformed(T, "timestamp", "missing")),
    };
    let mut measurements = BTreeMap::new();
    let pcrs = match get_text(&m, "pcrs") {
        Some(Value::Map(p)) if !p.is_empty() && p.len() <= 32 => p,
        _ => {
            return Err(VerifyError::malformed(
                T,
                "pcrs",
                "missing, empty or too many",
            ))
        }
    };
    for (k, v) in pcrs {
        let idx = k
            .as_integer()
            .and_then(|i| u8::try_from(i).ok())
            .filter(|i| *i < 32)
            .ok_or_else(|| VerifyError::malformed(T, "pcrs", "PCR index not in 0..32"))?;
        let val = match v {
            Value::Bytes(b) if matches!(b.len(), 32 | 48 | 64) => b,
            _ => {
                return Err(VerifyError::malformed(
                    T,
                    format!("pcr{idx}"),
                    "not a 32/48/64-byte string",
                ))
            }
        };
        measurements.insert(format!("pcr{idx}"), hex::encode(val));
    }
    if !measurements.contains_key("pcr0") {
        return Err(VerifyError::malformed(T, "pcr0", "missing"));
    }
    let leaf_der = bytes_field(&m, "certificate", 16 * 1024)?
        .ok_or_else(|| VerifyError::malformed(T, "certificate", "missing"))?;
    let bundle = match get_text(&m, "cabundle") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 8 => a,
        _ => {
            return Err(VerifyError::malformed(
                T,
                "cabundle",
                "missing, empty or longer than 8",
            ))
        }
    };
    let public_key = bytes_field(&m, "public_key", 1024)?;
    let user_data = bytes_field(&m, "user_data", 512)?;
    let nonce = bytes_field(&m, "nonce", 512)?;

    // Chain: pinned root == cabundle[0] → cabundle[1..] → leaf.
    let root = root()?;
    let mut chain: Vec<(String, Certificate)> = Vec::with_capacity(bundle.len() + 1);
    for (i, c) in bundle.iter().enumerate() {
        let der = c.as_bytes().ok_or_else(|| {
            VerifyError::malformed(T, format!("cabundle[{i}]"), "not a byte string")
        })?;
        if i == 0 {
            if der != &root.der {
                return Err(VerifyError::chain(
                    T,
                    "cabundle[0]",
                    "the bundle's root is not the AWS Nitro root G1",
                ));
            }
            chain.push(("cabundle[0]".into(), root.cert.clone()));
            continue;
        }
        chain.push((
            format!("cabundle[{i}]"),
            parse_der(T, &format!("cabundle[{i}]"), der)?,
        ));
    }
    chain.push((
        "certificate".into(),
        parse_der(T, "certificate", &leaf_der)?,
    ));
    for (name, c) in &chain {
        check_validity(T, name, c, now)?;
    }
    for w in chain.windows(2) {
        check_issued_by(T, &w[1].0, &w[1].1, &w[0].1)?;
    }
    let Some((_, leaf)) = chain.last() else {
        return Err(VerifyError::malformed(T, "certificate", "missing"));
    };
    let leaf_key = leaf
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    verify_sign1(T, "document", &s, Es::Es384, leaf_key)?;

    // A debug-mode enclave reports all-zero PCRs.
    let debug = measurements
        .get("pcr0")
        .is_some_and(|p| p.bytes().all(|c| c == b'0'));
    let mut claims = BTreeMap::new();
    claims.insert("module_id".into(), module_id.clone());
    claims.insert("timestamp_ms".into(), timestamp_ms.to_string());
    Ok(AttestationResult {
        tee: T,
        primary_measurement: "pcr0",
        measurements,
        tcb: TcbInfo::default(),
        debug,
        report_data: None,
        nitro: Some(NitroFields {
            module_id,
            digest,
            public_key,
            user_data,
            nonce,
        }),
        evidence_time: Some(timestamp_ms / 1000),
        claims,
    })
}
