//! Response encapsulations made between a client's jobs, so the next
//! response to that client starts without public-key work.
//!
//! Sealing a response begins with HPKE's `AuthEncap` from the enclave key
//! to the client's key: a fresh ephemeral X25519 key and two Diffie-Hellman
//! operations (≈ 0.15–0.2 ms, the largest piece of the enclave's own
//! cryptography per job). It depends only on the two keys, so after each
//! job the job thread makes the next one for the same (enclave key, client
//! key) pair, after the job's last frame is sent: off the job's critical
//! path, and not while a model runs (a setup on a second thread during the
//! workload was measured slower: it competes with the model's threads).
//!
//! Each entry is used once ([`Prepared::take`] removes it), so no two
//! responses share an ephemeral key. Entries are bounded in number and
//! dropped (their secrets zeroized) when their enclave key leaves the ring.

use std::collections::HashMap;

use archipelago_proto::envelope::PreparedResponse;
use archipelago_proto::PublicKey;

/// How many (enclave key, client key) pairs keep a prepared encapsulation.
pub const DEFAULT_PREPARED_CAPACITY: usize = 256;

/// The prepared encapsulations, at most one per key pair.
pub struct Prepared {
    entries: HashMap<(PublicKey, PublicKey), (u64, PreparedResponse)>,
    capacity: usize,
    /// Insertion counter: the smallest is evicted first.
    clock: u64,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("entries", &self.entries.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Prepared {
    /// An empty store for at most `capacity` pairs (0 disables it).
    pub fn new(capacity: usize) -> Prepared {
        Prepared {
            entries: HashMap::new(),
            capacity,
            clock: 0,
        }
    }

    /// Removes and returns the encapsulation from `enclave` to `client`.
    pub fn take(&mut self, enclave: &PublicKey, client: &PublicKey) -> Option<PreparedResponse> {
        self.entries.remove(&(*enclave, *client)).map(|(_, p)| p)
    }

    /// Stores `prepared`, replacing one for the same pair and evicting the
    /// oldest entry when full.
    pub fn put(&mut self, prepared: PreparedResponse) {
        if self.capacity == 0 {
            return;
        }
        let pair = (*prepared.enclave(), *prepared.client());
        if !self.entries.contains_key(&pair) && self.entries.len() >= self.capacity {
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.clock = self.clock.wrapping_add(1);
        self.entries.insert(pair, (self.clock, prepared));
    }

    /// Drops every entry whose enclave key is not in `held`.
    pub fn retain_enclave_keys(&mut self, held: &[PublicKey]) {
        self.entries
            .retain(|(enclave, _), _| held.contains(enclave));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archipelago_proto::SecretKey;

    #[test]
    fn used_once_bounded_and_dropped_with_their_key() {
        let enclave = SecretKey::generate();
        let retired = SecretKey::generate();
        let clients: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
        let mut store = Prepared::new(2);
        let prep = |e: &SecretKey, c: &SecretKey| PreparedResponse::new(e, &c.public()).unwrap();

        store.put(prep(&enclave, &clients[0]));
        let got = store.take(&enclave.public(), &clients[0].public()).unwrap();
        assert!(got.is_for(&enclave, &clients[0].public()));
        assert!(
            store
                .take(&enclave.public(), &clients[0].public())
                .is_none(),
            "each one serves one response"
        );
        assert!(store
            .take(&retired.public(), &clients[0].public())
            .is_none());

        // Full: the oldest pair goes.
        store.put(prep(&enclave, &clients[0]));
        store.put(prep(&retired, &clients[1]));
        store.put(prep(&enclave, &clients[2]));
        assert_eq!(store.len(), 2);
        assert!(store
            .take(&enclave.public(), &clients[0].public())
            .is_none());
        // Replacing a pair does not evict another.
        store.put(prep(&enclave, &clients[2]));
        assert_eq!(store.len(), 2);

        // The retired key leaves the ring: its entries go with it.
        store.retain_enclave_keys(&[enclave.public()]);
        assert_eq!(store.len(), 1);
        assert!(store
            .take(&retired.public(), &clients[1].public())
            .is_none());
        assert!(store
            .take(&enclave.public(), &clients[2].public())
            .is_some());
        assert!(store.is_empty());

        let mut off = Prepared::new(0);
        off.put(prep(&enclave, &clients[0]));
        assert!(off.is_empty());
        assert!(!format!("{store:?}").contains("shared"));
    }
}
