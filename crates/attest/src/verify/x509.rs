//! Small X.509 helpers shared by the SEV and Nitro verifiers: DER parsing
//! with typed errors, validity windows at an explicit `now`, issuer/subject
//! linkage and ECDSA (P-256/P-384) certificate signatures.

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1};
use x509_cert::der::{Decode as _, Encode as _};
use x509_cert::Certificate;

use crate::{TeeType, VerifyError};

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
/// Largest certificate accepted.
pub const MAX_CERT_BYTES: usize = 16 * 1024;

/// Parse a DER certificate.
pub fn parse_der(tee: TeeType, field: &str, der: &[u8]) -> Result<Certificate, VerifyError> {
    if der.len() > MAX_CERT_BYTES {
        return Err(VerifyError::malformed(
            tee,
            field,
            format!(
                "certificate of {} bytes exceeds {MAX_CERT_BYTES}",
                der.len()
            ),
        ));
    }
    Certificate::from_der(der).map_err(|e| {
        VerifyError::malformed(tee, field, format!("not a DER X.509 certificate: {e}"))
    })
}

/// Parse a PEM certificate.
pub fn parse_pem(tee: TeeType, field: &str, pem: &[u8]) -> Result<Certificate, VerifyError> {
    use x509_cert::der::DecodePem as _;
    Certificate::from_pem(pem).map_err(|e| {
        VerifyError::malformed(tee, field, format!("not a PEM X.509 certificate: {e}"))
    })
}

/// The validity window (unix seconds).
pub fn validity(cert: &Certificate) -> (u64, u64) {
    let v = &cert.tbs_certificate.validity;
    (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    )
}

/// Refuse a certificate outside its validity window at `now`.
pub fn check_validity(
    tee: TeeType,
    field: &str,
    cert: &Certificate,
    now: u64,
) -> Result<(), VerifyError> {
    let (not_before, not_after) = validity(cert);
    if now < not_before || now > not_after {
        return Err(VerifyError::OutsideValidity {
            tee,
            field: field.into(),
            not_before,
            not_after,
            now,
        });
    }
    Ok(())
}

/// Verify an ECDSA signature with the public key of `issuer`.
pub fn ecdsa_verify(
    tee: TeeType,
    field: &str,
    issuer: &Certificate,
    hash_is_384: bool,
    msg: &[u8],
    der_sig: &[u8],
) -> Result<(), VerifyError> {
    let spki = &issuer.tbs_certificate.subject_public_key_info;
    let key = spki.subject_public_key.raw_bytes();
    let bad = |e: &dyn std::fmt::Display| VerifyError::signature(tee, field, e.to_string());
    let algo = match (key.len(), hash_is_384) {
        (97, true) => &ECDSA_P384_SHA384_ASN1,
        (65, false) => &ECDSA_P256_SHA256_ASN1,
        (97, false) => return Err(bad(&"P-384 key with a SHA-256 signature")),
        (65, true) => return Err(bad(&"P-256 key with a SHA-384 signature")),
        (n, _) => {
            return Err(bad(&format!(
                "unsupported issuer key ({n}-byte SEC1 point)"
            )))
        }
    };
    UnparsedPublicKey::new(algo, key)
        .verify(msg, der_sig)
        .map_err(|_| bad(&"ECDSA signature does not verify"))
}

/// Check that `issuer` issued `cert`: names link and the ECDSA signature verifies.
pub fn check_issued_by(
    tee: TeeType,
    field: &str,
    cert: &Certificate,
    issuer: &Certificate,
) -> Result<(), VerifyError> {
    if cert.tbs_certificate.issuer != issuer.tbs_certificate.subject {
        return Err(VerifyError::chain(
            tee,
            field,
            format!(
                "issuer {} does not match the next certificate's subject {}",
                cert.tbs_certificate.issuer, issuer.tbs_certificate.subject
            ),
        ));
    }
    let alg = cert.signature_algorithm.oid.to_string();
    let is384 = match alg.as_str() {
        ECDSA_SHA384 => true,
        ECDSA_SHA256 => false,
        other => {
            return Err(VerifyError::chain(
                tee,
                field,
                format!("unsupported signature algorithm {other}"),
            ));
        }
    };
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| VerifyError::malformed(tee, field, e))?;
    let sig = cert.signature.as_bytes().ok_or_else(|| {
        VerifyError::malformed(tee, field, "signature bit string has unused bits")
    })?;
    let issuer_key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let ck = super::cache::key(&[b"x509-link", issuer_key, &tbs, sig]);
    if super::cache::get(&ck).is_some() {
        return Ok(());
    }
    ecdsa_verify(tee, field, issuer, is384, &tbs, sig)
        .map(|()| super::cache::put(ck, 1))
        .map_err(|e| match e {
            VerifyError::BadSignature { detail, .. } => VerifyError::chain(
                tee,
                field,
                format!("signature by issuer does not verify: {detail}"),
            ),
            other => other,
        })
}
