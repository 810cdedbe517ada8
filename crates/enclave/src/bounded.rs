//! A map that holds at most a fixed number of entries and, when full,
//! drops the one inserted first: the memory bound of the enclave's kept
//! secrets ([`crate::shares`], [`crate::decaps`]), which untrusted input
//! (new clients, announced encs) could otherwise grow without end.

use std::collections::HashMap;
use std::hash::Hash;

/// At most `capacity` entries (0 keeps none); the oldest insert goes first.
pub(crate) struct Bounded<K, V> {
    entries: HashMap<K, (u64, V)>,
    capacity: usize,
    /// Insertion counter: the smallest is evicted first.
    clock: u64,
}

impl<K: Eq + Hash + Copy, V> Bounded<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Bounded {
            entries: HashMap::new(),
            capacity,
            clock: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.entries.get(k).map(|(_, v)| v)
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.entries.contains_key(k)
    }

    /// Removes and returns the entry.
    pub(crate) fn take(&mut self, k: &K) -> Option<V> {
        self.entries.remove(k).map(|(_, v)| v)
    }

    /// Inserts or replaces; evicts the oldest entry when full.
    pub(crate) fn put(&mut self, k: K, v: V) {
        if self.capacity == 0 {
            return;
        }
        if !self.entries.contains_key(&k) && self.entries.len() >= self.capacity {
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
        self.entries.insert(k, (self.clock, v));
    }

    /// Keeps the entries whose key passes `keep`.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_goes_first_and_zero_keeps_none() {
        let mut b = Bounded::new(2);
        b.put(1, "a");
        b.put(2, "b");
        b.put(1, "a2"); // a replacement evicts nothing ...
        assert_eq!(b.len(), 2);
        b.put(3, "c"); // ... and counts as the newest: 2 goes.
        assert!(!b.contains(&2));
        assert_eq!(b.get(&1), Some(&"a2"));
        assert_eq!(b.take(&3), Some("c"));
        assert_eq!(b.take(&3), None);
        b.retain(|k| *k != 1);
        assert_eq!(b.len(), 0);
        let mut off = Bounded::new(0);
        off.put(1, ());
        assert_eq!(off.len(), 0);
    }
}
