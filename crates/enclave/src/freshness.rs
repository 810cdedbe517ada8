//! Freshness of requests: a request is run at most once, and only near the
//! time it was sealed.
//!
//! The two checks work together. [`check_skew`] refuses a request whose
//! `issued_at` is more than the skew window away from the enclave clock, so
//! the [`ReplayCache`] only has to remember a request id until
//! `issued_at + skew`; after that the skew check refuses the replay anyway.
//! The cache is bounded: when it is full of still-live ids it refuses new
//! requests (`Full`) rather than forgetting a live id, which would allow a
//! replay. Across an enclave restart nothing needs remembering: the keys
//! are new, so envelopes sealed to the old ones no longer open.

use std::collections::HashMap;

use archipelago_proto::envelope::RequestId;

/// Default skew window: 5 minutes either side of the enclave clock.
pub const DEFAULT_SKEW_SECS: u64 = 300;
/// Default number of request ids remembered.
pub const DEFAULT_REPLAY_CAPACITY: usize = 1 << 20;

/// Why a request is not fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreshnessError {
    /// `issued_at` is outside the window.
    #[error("request issued at {issued_at} is {off_by} s away from the enclave clock ({now}); the window is ±{skew} s")]
    Stale {
        issued_at: u64,
        now: u64,
        off_by: u64,
        skew: u64,
    },
    /// The request id was seen before.
    #[error("request id already seen (replay)")]
    Replay,
    /// The cache holds `capacity` live ids.
    #[error("replay cache full ({capacity} live request ids); retry later")]
    Full { capacity: usize },
}

/// Refuses `issued_at` more than `skew` seconds away from `now`.
pub fn check_skew(issued_at: u64, now: u64, skew: u64) -> Result<(), FreshnessError> {
    let off_by = issued_at.abs_diff(now);
    if off_by > skew {
        return Err(FreshnessError::Stale {
            issued_at,
            now,
            off_by,
            skew,
        });
    }
    Ok(())
}

/// Remembers request ids until their skew window has passed.
#[derive(Debug)]
pub struct ReplayCache {
    /// request id → Unix second after which it can be forgotten.
    seen: HashMap<RequestId, u64>,
    capacity: usize,
    skew: u64,
}

impl ReplayCache {
    /// A cache remembering at most `capacity` ids, for a skew window of
    /// `skew` seconds.
    pub fn new(capacity: usize, skew: u64) -> ReplayCache {
        ReplayCache {
            seen: HashMap::new(),
            capacity: capacity.max(1),
            skew,
        }
    }

    /// The skew window this cache was built for.
    pub fn skew(&self) -> u64 {
        self.skew
    }

    /// Checks `issued_at` against the window and records `id`; refuses a
    /// stale request, an id seen before, or a full cache.
    pub fn check_and_insert(
        &mut self,
        id: RequestId,
        issued_at: u64,
        now: u64,
    ) -> Result<(), FreshnessError> {
        check_skew(issued_at, now, self.skew)?;
        if self.seen.contains_key(&id) {
            return Err(FreshnessError::Replay);
        }
        if self.seen.len() >= self.capacity {
            self.seen.retain(|_, forget_after| *forget_after >= now);
            if self.seen.len() >= self.capacity {
                return Err(FreshnessError::Full {
                    capacity: self.capacity,
                });
            }
        }
        self.seen.insert(id, issued_at.saturating_add(self.skew));
        Ok(())
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_window_is_inclusive_both_ways() {
        assert!(check_skew(1000, 1000, 300).is_ok());
        assert!(check_skew(700, 1000, 300).is_ok());
        assert!(check_skew(1300, 1000, 300).is_ok());
        assert_eq!(
            check_skew(699, 1000, 300),
            Err(FreshnessError::Stale {
                issued_at: 699,
                now: 1000,
                off_by: 301,
                skew: 300
            })
        );
        assert!(matches!(
            check_skew(1301, 1000, 300),
            Err(FreshnessError::Stale { off_by: 301, .. })
        ));
        assert!(check_skew(u64::MAX, 0, 300).is_err());
    }

    #[test]
    fn replay_is_refused() {
        let mut c = ReplayCache::new(10, 300);
        assert_eq!(c.check_and_insert([1; 16], 1000, 1000), Ok(()));
        assert_eq!(
            c.check_and_insert([1; 16], 1000, 1001),
            Err(FreshnessError::Replay)
        );
        assert_eq!(c.check_and_insert([2; 16], 1000, 1001), Ok(()));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn stale_requests_are_not_remembered() {
        let mut c = ReplayCache::new(10, 300);
        assert!(matches!(
            c.check_and_insert([1; 16], 10, 1000),
            Err(FreshnessError::Stale { .. })
        ));
        assert!(c.is_empty());
    }

    #[test]
    fn full_cache_forgets_only_expired_ids() {
        let mut c = ReplayCache::new(2, 300);
        c.check_and_insert([1; 16], 1000, 1000).unwrap();
        c.check_and_insert([2; 16], 1200, 1200).unwrap();
        // Both still live: refuse rather than forget.
        assert_eq!(
            c.check_and_insert([3; 16], 1200, 1200),
            Err(FreshnessError::Full { capacity: 2 })
        );
        // At 1301 the first id's window (1000 + 300) has passed: it goes.
        assert_eq!(c.check_and_insert([3; 16], 1250, 1301), Ok(()));
        assert_eq!(c.len(), 2);
        // The second id is still remembered.
        assert_eq!(
            c.check_and_insert([2; 16], 1200, 1301),
            Err(FreshnessError::Replay)
        );
        // The forgotten id is refused as stale, not run again.
        assert!(matches!(
            c.check_and_insert([1; 16], 1000, 1301),
            Err(FreshnessError::Stale { .. })
        ));
    }
}
