//! The Diffie-Hellman of each (enclave key, client key) pair this enclave
//! answers, kept so that a response costs no public-key work.
//!
//! A response's key comes from `DH(enclave key, client key)` and the
//! response's fresh nonce (`docs/envelope.md`, since version 2). The
//! Diffie-Hellman is the same for every response of the pair, so the
//! enclave makes it at a client's first job to a key (one X25519, ≈ 45 µs)
//! and keeps it: each later response to that client starts with the HPKE
//! key schedule only. The nonce, not the share, makes each response's key
//! fresh, so reusing a share is sound.
//!
//! Entries are bounded in number (the oldest goes first) and dropped, their
//! secrets zeroized, when their enclave key leaves the ring.

use std::sync::Arc;

use archipelago_proto::envelope::ResponseStaticShare;
use archipelago_proto::PublicKey;

use crate::bounded::Bounded;

/// How many (enclave key, client key) pairs keep their share.
pub const DEFAULT_SHARE_CAPACITY: usize = 256;

/// The kept shares, one per key pair.
pub struct Shares(Bounded<(PublicKey, PublicKey), Arc<ResponseStaticShare>>);

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shares")
            .field("entries", &self.0.len())
            .field("capacity", &self.0.capacity())
            .finish()
    }
}

impl Shares {
    /// An empty store for at most `capacity` pairs (0 keeps none).
    pub fn new(capacity: usize) -> Shares {
        Shares(Bounded::new(capacity))
    }

    /// The share of `enclave` and `client`, if kept.
    pub fn get(&self, enclave: &PublicKey, client: &PublicKey) -> Option<Arc<ResponseStaticShare>> {
        self.0.get(&(*enclave, *client)).cloned()
    }

    /// Keeps `share`, replacing one for the same pair and evicting the
    /// oldest entry when full.
    pub fn put(&mut self, share: Arc<ResponseStaticShare>) {
        self.0.put((*share.enclave(), *share.client()), share);
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
    fn kept_per_pair_bounded_and_dropped_with_their_key() {
        let enclave = SecretKey::generate();
        let retired = SecretKey::generate();
        let clients: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
        let mut store = Shares::new(2);
        let share = |e: &SecretKey, c: &SecretKey| {
            Arc::new(ResponseStaticShare::for_enclave(e, &c.public()).unwrap())
        };

        store.put(share(&enclave, &clients[0]));
        let got = store.get(&enclave.public(), &clients[0].public()).unwrap();
        assert!(got.is_for(&clients[0].public(), &enclave.public()));
        assert!(
            store.get(&enclave.public(), &clients[0].public()).is_some(),
            "kept for every response of the pair"
        );
        assert!(store.get(&retired.public(), &clients[0].public()).is_none());
        assert!(store.get(&enclave.public(), &clients[1].public()).is_none());

        // Full: the oldest pair goes.
        store.put(share(&retired, &clients[1]));
        store.put(share(&enclave, &clients[2]));
        assert_eq!(store.len(), 2);
        assert!(store.get(&enclave.public(), &clients[0].public()).is_none());
        // Replacing a pair does not evict another.
        store.put(share(&enclave, &clients[2]));
        assert_eq!(store.len(), 2);

        // The retired key leaves the ring: its entries go with it.
        store.retain_enclave_keys(&[enclave.public()]);
        assert_eq!(store.len(), 1);
        assert!(store.get(&retired.public(), &clients[1].public()).is_none());
        assert!(store.get(&enclave.public(), &clients[2].public()).is_some());

        let mut off = Shares::new(0);
        off.put(share(&enclave, &clients[0]));
        assert!(off.is_empty());
        assert!(!format!("{store:?}").contains("dh:"));
    }
}
