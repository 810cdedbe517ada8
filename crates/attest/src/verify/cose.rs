//! COSE_Sign1 helpers shared by the Nitro and CCA verifiers: parse tagged or
//! untagged, check the algorithm, verify ES256/ES384 with a SEC1 key, and
//! decode the CBOR payload into a map with typed errors.

use ciborium::Value;
use coset::{iana, CborSerializable as _, CoseSign1, TaggedCborSerializable as _};

use crate::{TeeType, VerifyError};

/// Parse a COSE_Sign1, tagged (18) or untagged.
pub fn parse_sign1(tee: TeeType, field: &str, bytes: &[u8]) -> Result<CoseSign1, VerifyError> {
    let r = if bytes.first() == Some(&0xd2) {
        CoseSign1::from_tagged_slice(bytes)
    } else {
        CoseSign1::from_slice(bytes)
    };
    r.map_err(|e| VerifyError::malformed(tee, field, format!("not a COSE_Sign1: {e}")))
}

/// The ECDSA curve a COSE_Sign1 is signed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Es {
    /// ES256 (P-256, SHA-256).
    Es256,
    /// ES384 (P-384, SHA-384).
    Es384,
}

/// The signature algorithm of a COSE_Sign1's protected header.
pub fn alg(tee: TeeType, field: &str, s: &CoseSign1) -> Result<Es, VerifyError> {
    match &s.protected.header.alg {
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES256)) => Ok(Es::Es256),
        Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::ES384)) => Ok(Es::Es384),
        other => Err(VerifyError::mismatch(
            tee,
            format!("{field}.alg"),
            "ES256 or ES384",
            format!("{other:?}"),
        )),
    }
}

/// Verify a COSE_Sign1 with a SEC1-encoded public key.
pub fn verify_sign1(
    tee: TeeType,
    field: &str,
    s: &CoseSign1,
    es: Es,
    sec1: &[u8],
) -> Result<(), VerifyError> {
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED};
    let algo = match es {
        Es::Es256 => &ECDSA_P256_SHA256_FIXED,
        Es::Es384 => &ECDSA_P384_SHA384_FIXED,
    };
    s.verify_signature(b"", |sig, data| {
        UnparsedPublicKey::new(algo, sec1)
            .verify(data, sig)
            .map_err(|_| VerifyError::signature(tee, field, "signature does not verify"))
    })
}

/// Decode the payload as a CBOR map.
pub fn payload_map(
    tee: TeeType,
    field: &str,
    s: &CoseSign1,
) -> Result<Vec<(Value, Value)>, VerifyError> {
    let p = s
        .payload
        .as_deref()
        .ok_or_else(|| VerifyError::malformed(tee, field, "COSE_Sign1 has no payload"))?;
    let v: Value = ciborium::from_reader(p)
        .map_err(|e| VerifyError::malformed(tee, field, format!("payload is not CBOR: {e}")))?;
    match v {
        Value::Map(m) => Ok(m),
        _ => Err(VerifyError::malformed(
            tee,
            field,
            "payload is not a CBOR map",
        )),
    }
}

/// Look up a map entry by text key.
pub fn get_text<'a>(m: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// Look up a map entry by integer key.
pub fn get_int(m: &[(Value, Value)], key: i64) -> Option<&Value> {
    m.iter()
        .find(|(k, _)| k.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(key))
        .map(|(_, v)| v)
}
