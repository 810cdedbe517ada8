//! The enclave's keys: generated inside, rotated on a schedule, kept for a
//! grace period so envelopes sealed just before a rotation still open, then
//! dropped (each [`SecretKey`] zeroizes itself on drop).
//!
//! A key created at `t` is the *current* key (the one new evidence
//! advertises first) until `t + rotate`; it keeps opening envelopes until
//! its `expires_at = t + rotate + grace`, the value bound into its evidence.
//! Time is always passed in (`now`, Unix seconds), so the schedule is tested
//! without sleeping.

use std::sync::Arc;

use archipelago_proto::channel::{KeyInfo, MAX_KEYS};
use archipelago_proto::{KeyId, SecretKey};

/// One enclave key: the secret half never leaves this process.
pub struct EnclaveKey {
    secret: SecretKey,
    info: KeyInfo,
}

impl EnclaveKey {
    /// The secret key (to open envelopes and seal responses).
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
    /// The public description sent to the island.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }
    /// The key's `ek_` id.
    pub fn id(&self) -> &KeyId {
        &self.info.key_id
    }
}

impl std::fmt::Debug for EnclaveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EnclaveKey({}, expires_at {})",
            self.info.key_id, self.info.expires_at
        )
    }
}

/// The set of keys held, newest first.
#[derive(Debug)]
pub struct KeyRing {
    keys: Vec<Arc<EnclaveKey>>,
    rotate_secs: u64,
    grace_secs: u64,
}

impl KeyRing {
    /// A ring holding one fresh key created at `now`.
    pub fn new(rotate_secs: u64, grace_secs: u64, now: u64) -> KeyRing {
        let mut ring = KeyRing {
            keys: Vec::new(),
            rotate_secs: rotate_secs.max(1),
            grace_secs,
        };
        ring.rotate(now);
        ring
    }

    /// Generates a new current key now, whatever the schedule says. Keeps at
    /// most [`MAX_KEYS`] keys: if forced rotations exceed that, the oldest
    /// are dropped early.
    pub fn rotate(&mut self, now: u64) {
        let secret = SecretKey::generate();
        let public = secret.public();
        let info = KeyInfo {
            key_id: KeyId::enclave(&public.0),
            public_key: public.0,
            created_at: now,
            expires_at: now
                .saturating_add(self.rotate_secs)
                .saturating_add(self.grace_secs),
        };
        tracing::info!(key_id = %info.key_id, expires_at = info.expires_at, "enclave key generated");
        self.keys.insert(0, Arc::new(EnclaveKey { secret, info }));
        while self.keys.len() > MAX_KEYS {
            if let Some(old) = self.keys.pop() {
                tracing::info!(key_id = %old.id(), "enclave key dropped (too many keys)");
            }
        }
    }

    /// Applies the schedule at `now`: rotates when the current key is due,
    /// drops expired keys. Returns whether the key set changed.
    pub fn tick(&mut self, now: u64) -> bool {
        let mut changed = false;
        let due = self
            .keys
            .first()
            .is_none_or(|k| now >= k.info.created_at.saturating_add(self.rotate_secs));
        if due {
            self.rotate(now);
            changed = true;
        }
        let before = self.keys.len();
        self.keys.retain(|k| {
            let keep = now < k.info.expires_at;
            if !keep {
                tracing::info!(key_id = %k.id(), "enclave key expired and dropped");
            }
            keep
        });
        changed || self.keys.len() != before
    }

    /// The current (newest) key.
    pub fn current(&self) -> Option<&Arc<EnclaveKey>> {
        self.keys.first()
    }

    /// The held key among `recipients` (newest first), if any.
    pub fn find(&self, recipients: &[KeyId]) -> Option<Arc<EnclaveKey>> {
        self.keys
            .iter()
            .find(|k| recipients.contains(k.id()))
            .cloned()
    }

    /// Every key held, newest first.
    pub fn keys(&self) -> &[Arc<EnclaveKey>] {
        &self.keys
    }

    /// Public descriptions of every key, newest first.
    pub fn infos(&self) -> Vec<KeyInfo> {
        self.keys.iter().map(|k| k.info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_and_grace_follow_the_schedule() {
        let mut ring = KeyRing::new(10, 5, 100);
        let first = ring.current().unwrap().id().clone();
        assert_eq!(ring.current().unwrap().info().expires_at, 115);
        assert!(!ring.tick(109), "not due before the rotation interval");
        assert!(ring.tick(110), "due at created_at + rotate");
        assert_eq!(ring.keys().len(), 2);
        let second = ring.current().unwrap().id().clone();
        assert_ne!(first, second);
        // The old key still opens envelopes during its grace period.
        assert!(ring.find(std::slice::from_ref(&first)).is_some());
        assert!(!ring.tick(114));
        assert!(
            ring.tick(115),
            "old key expires at created + rotate + grace"
        );
        assert_eq!(ring.keys().len(), 1);
        assert!(ring.find(&[first]).is_none());
        assert_eq!(ring.current().unwrap().id(), &second);
    }

    #[test]
    fn forced_rotation_keeps_old_keys_until_expiry_and_bounds_count() {
        let mut ring = KeyRing::new(3600, 60, 0);
        let first = ring.current().unwrap().id().clone();
        ring.rotate(1);
        assert_eq!(ring.infos().len(), 2);
        assert_eq!(ring.infos()[1].key_id, first);
        for i in 0..40 {
            ring.rotate(2 + i);
        }
        assert_eq!(ring.keys().len(), MAX_KEYS);
        assert!(ring.find(&[first]).is_none());
        // Ids are the ids of the keys.
        for k in ring.keys() {
            assert!(k.info().validate().is_ok());
        }
    }

    #[test]
    fn find_prefers_newest_and_ignores_strangers() {
        let mut ring = KeyRing::new(10, 10, 0);
        let old = ring.current().unwrap().id().clone();
        ring.rotate(1);
        let new = ring.current().unwrap().id().clone();
        let stranger = KeyId::enclave(&[1; 32]);
        assert_eq!(ring.find(&[old.clone(), new.clone()]).unwrap().id(), &new);
        assert_eq!(
            ring.find(&[stranger.clone(), old.clone()]).unwrap().id(),
            &old
        );
        assert!(ring.find(&[stranger]).is_none());
    }
}
