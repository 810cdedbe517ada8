//! Small helpers every module needs: clocks, random ids and secret tokens,
//! and token hashing. Secrets (`ak_…`, `it_…`, enrollment tokens) carry 256
//! bits of entropy, so a single SHA-256 is a sufficient at-rest hash.

use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE32_NOPAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Unix seconds.
pub fn now_secs() -> i64 {
    now_ms() / 1000
}

fn base32_lower(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// A random identifier `prefix_<26 base32 chars>` (128 bits).
pub fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}_{}", base32_lower(&b))
}

/// A secret bearer token `prefix_<52 base32 chars>` (256 bits).
pub fn random_token(prefix: &str) -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    format!("{prefix}_{}", base32_lower(&b))
}

/// Time-ordered id (`prefix_<hex micros><hex random>`), for ledger entries
/// whose listing order is their creation order.
pub fn ordered_id(prefix: &str) -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let r = rand::thread_rng().next_u64();
    format!("{prefix}_{micros:016x}{r:016x}")
}

/// Hex SHA-256 of a token, as stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_prefix_and_entropy() {
        let a = random_token("ak");
        let b = random_token("ak");
        assert!(a.starts_with("ak_"));
        assert_eq!(a.len(), 3 + 52);
        assert_ne!(a, b);
        assert_eq!(hash_token(&a).len(), 64);
        assert_ne!(hash_token(&a), hash_token(&b));
        let x = ordered_id("le");
        let y = ordered_id("le");
        assert!(x < y || x[..19] == y[..19]);
    }
}
