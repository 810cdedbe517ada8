//! Decapsulations made between jobs for the `enc`s clients announced, so
//! that opening their next request costs no public-key work.
//!
//! A request's wrap is opened with `Decap(enc, skR)`: one X25519 with the
//! client's ephemeral key, ≈ 40 µs on the job's critical path. A client
//! that keeps sealing to this enclave sets up its next wraps ahead and
//! announces their `enc` inside the request body (`docs/envelope.md`,
//! version 3, "next encs"). After the job's last frame the enclave makes
//! the [`PreparedDecap`] for each announced `enc` addressed to a key it
//! holds, and the next request's open takes it from here.
//!
//! This moves work, it changes no secret: a prepared decapsulation is what
//! the open would compute from the same `enc` and key, held in the same
//! memory as the key. Each is used at most once (taken), entries are
//! bounded in number (the oldest goes first; a client announces at most one
//! per key per request, and only a client whose request opened can
//! announce), and they are dropped, zeroized, with their enclave key.

use archipelago_proto::envelope::PreparedDecap;
use archipelago_proto::PublicKey;

use crate::bounded::Bounded;

/// How many announced decapsulations are kept.
pub const DEFAULT_DECAP_CAPACITY: usize = 256;

/// The prepared decapsulations, by enclave key and `enc`.
pub struct Decaps(Bounded<(PublicKey, [u8; 32]), PreparedDecap>);

impl std::fmt::Debug for Decaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decaps")
            .field("entries", &self.0.len())
            .field("capacity", &self.0.capacity())
            .finish()
    }
}

impl Decaps {
    /// An empty store for at most `capacity` entries (0 keeps none).
    pub fn new(capacity: usize) -> Decaps {
        Decaps(Bounded::new(capacity))
    }

    /// Whether one is kept (or nothing can be): then there is nothing to
    /// prepare.
    pub fn has(&self, enclave: &PublicKey, enc: &[u8; 32]) -> bool {
        self.0.capacity() == 0 || self.0.contains(&(*enclave, *enc))
    }

    /// Takes the decapsulation of `enc` with `enclave`'s key, if kept.
    pub fn take(&mut self, enclave: &PublicKey, enc: &[u8; 32]) -> Option<PreparedDecap> {
        self.0.take(&(*enclave, *enc))
    }

    /// Keeps `decap`, evicting the oldest entry when full.
    pub fn put(&mut self, decap: PreparedDecap) {
        self.0.put((*decap.recipient(), *decap.enc()), decap);
    }

    /// Drops every entry whose enclave key is not in `held`.
    pub fn retain_enclave_keys(&mut self, held: &[PublicKey]) {
        self.0.retain(|(enclave, _)| held.contains(enclave));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archipelago_proto::SecretKey;

    #[test]
    fn taken_once_bounded_and_dropped_with_their_key() {
        let key = SecretKey::generate();
        let retired = SecretKey::generate();
        let encs: Vec<[u8; 32]> = (0..3).map(|_| SecretKey::generate().public().0).collect();
        let decap = |k: &SecretKey, e: &[u8; 32]| PreparedDecap::new(k, e).unwrap();
        let mut store = Decaps::new(2);
        store.put(decap(&key, &encs[0]));
        assert!(store.has(&key.public(), &encs[0]));
        assert!(!store.has(&retired.public(), &encs[0]));
        let got = store.take(&key.public(), &encs[0]).unwrap();
        assert_eq!(got.enc(), &encs[0]);
        assert!(store.take(&key.public(), &encs[0]).is_none(), "used once");

        // Full: the oldest goes.
        store.put(decap(&key, &encs[0]));
        store.put(decap(&retired, &encs[1]));
        store.put(decap(&key, &encs[2]));
        assert_eq!(store.len(), 2);
        assert!(!store.has(&key.public(), &encs[0]));

        // The retired key leaves the ring: its entries go with it.
        store.retain_enclave_keys(&[key.public()]);
        assert_eq!(store.len(), 1);
        assert!(store.has(&key.public(), &encs[2]));

        let mut off = Decaps::new(0);
        off.put(decap(&key, &encs[0]));
        assert!(off.is_empty());
        assert!(
            off.has(&key.public(), &encs[0]),
            "nothing to prepare when off"
        );
        assert!(!format!("{store:?}").contains("shared"));
    }
}
