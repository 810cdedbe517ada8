//! Binding an enclave key to TEE evidence (DESIGN.md "Binding a key to the
//! hardware"): the report-data field carries
//! `sha512("archipelago-enclave-v1" ‖ ek_public ‖ expires_at_be64 ‖ nonce)`.
//!
//! Nitro has separate fields, used as: `user_data` = the same 64-byte binding
//! hash, `public_key` = `ek_public` (32 bytes), `nonce` = the verifier's
//! nonce. All three are checked.

use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::{AttestationResult, TeeType};

/// Domain separator of the binding hash.
pub const BINDING_DOMAIN: &[u8] = b"archipelago-enclave-v1";

/// The 64-byte value an enclave puts in its report data.
pub fn key_binding(ek_public: &[u8; 32], expires_at: u64, nonce: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(BINDING_DOMAIN);
    h.update(ek_public);
    h.update(expires_at.to_be_bytes());
    h.update(nonce);
    h.finalize().into()
}

/// The evidence does not bind the given key, expiry and nonce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The report data differs from the expected binding.
    #[error("{field} does not match the key binding: expected {expected}, found {found}")]
    Mismatch {
        /// The evidence field checked (`report_data`, `user_data`, `public_key`, `nonce`).
        field: &'static str,
        /// Expected value (hex).
        expected: String,
        /// Value found (hex, or "absent").
        found: String,
    },
}

fn mismatch(field: &'static str, expected: &[u8], found: Option<&[u8]>) -> BindingError {
    BindingError::Mismatch {
        field,
        expected: hex::encode(expected),
        found: found.map(hex::encode).unwrap_or_else(|| "absent".into()),
    }
}

fn check_field(
    field: &'static str,
    expected: &[u8],
    found: Option<&[u8]>,
) -> Result<(), BindingError> {
    match found {
        Some(f) if f.len() == expected.len() && bool::from(f.ct_eq(expected)) => Ok(()),
        _ => Err(mismatch(field, expected, found)),
    }
}

/// Check that a verified result binds `ek_public`, `expires_at` and `nonce`.
pub fn check_key_binding(
    result: &AttestationResult,
    ek_public: &[u8; 32],
    expires_at: u64,
    nonce: &[u8],
) -> Result<(), BindingError> {
    let expected = key_binding(ek_public, expires_at, nonce);
    if result.tee == TeeType::Nitro {
        let n = result.nitro.as_ref();
        check_field(
            "user_data",
            &expected,
            n.and_then(|n| n.user_data.as_deref()),
        )?;
        check_field(
            "public_key",
            ek_public,
            n.and_then(|n| n.public_key.as_deref()),
        )?;
        check_field("nonce", nonce, n.and_then(|n| n.nonce.as_deref()))?;
        return Ok(());
    }
    check_field(
        "report_data",
        &expected,
        result.report_data.as_ref().map(|r| &r[..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_is_the_documented_hash() {
        let ek = [7u8; 32];
        let b = key_binding(&ek, 0x0102030405060708, b"nonce");
        let mut m = Vec::new();
        m.extend_from_slice(b"archipelago-enclave-v1");
        m.extend_from_slice(&ek);
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        m.extend_from_slice(b"nonce");
        assert_eq!(b.to_vec(), Sha512::digest(&m).to_vec());
        assert_ne!(b, key_binding(&ek, 0x0102030405060709, b"nonce"));
        assert_ne!(b, key_binding(&ek, 0x0102030405060708, b"noncf"));
    }
}
