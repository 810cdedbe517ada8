//! A small process-wide cache of signature checks that already succeeded
//! (certificate-by-issuer links, VCEK-by-ASK), keyed by a SHA-256 over the
//! signer's key, the signed bytes and the signature. Only successes are
//! remembered and validity times are still checked on every call, so a hit
//! changes speed, never the verdict. Bounded: cleared when full.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

const MAX_ENTRIES: usize = 4096;

static CACHE: Mutex<Option<HashMap<[u8; 32], u8>>> = Mutex::new(None);

/// Key over the parts of a signature check.
pub fn key(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The remembered value of a successful check, if any.
pub fn get(k: &[u8; 32]) -> Option<u8> {
    CACHE.lock().ok()?.as_ref()?.get(k).copied()
}

/// Remember a successful check.
pub fn put(k: [u8; 32], v: u8) {
    if let Ok(mut g) = CACHE.lock() {
        let m = g.get_or_insert_with(HashMap::new);
        if m.len() >= MAX_ENTRIES {
            m.clear();
        }
        m.insert(k, v);
    }
}
