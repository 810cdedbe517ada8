//! Wake-ups: islands long-poll for work; when a job is queued the
//! dispatcher wakes the best eligible waiting island (see [`crate::placement`])
//! instead of all of them. Wake-ups from other replicas (PostgreSQL
//! `NOTIFY`) wake every local waiter, who then race for the job with
//! `SKIP LOCKED`. Waiters also re-check the queue every second, so a lost
//! wake-up costs at most that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::placement::{choose, Candidate, JobNeeds};

struct Waiter {
    notify: Arc<Notify>,
    candidate: Candidate,
    /// Woken and not yet waiting again: a second wake-up would be lost
    /// (permits do not add up), so the next job goes to another waiter.
    woken: bool,
}

/// The long-poll waiters of this replica.
#[derive(Default)]
pub struct Dispatcher {
    next: AtomicU64,
    waiters: Mutex<HashMap<u64, Waiter>>,
}

/// Unregisters its waiter when dropped.
pub struct Registration<'a> {
    dispatcher: &'a Dispatcher,
    id: u64,
    pub notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.dispatcher.waiters.lock() {
            w.remove(&self.id);
        }
    }
}

impl Dispatcher {
    pub fn new() -> Dispatcher {
        Dispatcher::default()
    }

    /// Registers a waiting lease request of an island.
    pub fn register(&self, candidate: Candidate) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(
                id,
                Waiter {
                    notify: notify.clone(),
                    candidate,
                    woken: false,
                },
            );
        }
        Registration {
            dispatcher: self,
            id,
            notify,
        }
    }

    /// A job was queued here: wake the best eligible waiter. Returns the
    /// chosen island, if any.
    pub fn job_queued(&self, needs: &JobNeeds) -> Option<String> {
        let Ok(mut w) = self.waiters.lock() else {
            return None;
        };
        let cands: Vec<Candidate> = w
            .values()
            .filter(|w| !w.woken)
            .map(|w| w.candidate.clone())
            .collect();
        let chosen = choose(needs, &cands, &mut rand::thread_rng())?
            .island_id
            .clone();
        let waiter = w
            .values_mut()
            .find(|w| !w.woken && w.candidate.island_id == chosen)?;
        waiter.woken = true;
        waiter.notify.notify_one();
        Some(chosen)
    }

    /// The waiter is about to wait again: it may be woken for the next job.
    pub fn idle(&self, reg: &Registration<'_>) {
        if let Ok(mut w) = self.waiters.lock() {
            if let Some(waiter) = w.get_mut(&reg.id) {
                waiter.woken = false;
            }
        }
    }

    /// Wakes every waiter (a job arrived through another replica, or a job
    /// went back to the queue).
    pub fn wake_all(&self) {
        if let Ok(w) = self.waiters.lock() {
            for waiter in w.values() {
                waiter.notify.notify_one();
            }
        }
    }

    /// Number of waiting lease requests.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().map(|w| w.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, load: f64) -> Candidate {
        Candidate {
            island_id: id.into(),
            runtimes: vec!["echo".into()],
            memory_mb: 100,
            he_capable: false,
            enclave_keys: vec![],
            load,
            succeeded: 0,
            failed: 0,
            expired: 0,
        }
    }

    #[tokio::test]
    async fn wakes_the_best_waiter_only() {
        let d = Dispatcher::new();
        let busy = d.register(cand("busy", 0.8));
        let idle = d.register(cand("idle", 0.1));
        let needs = JobNeeds {
            mode: "plain".into(),
            runtime: "echo".into(),
            memory_mb: 1,
            recipients: vec![],
        };
        assert_eq!(d.job_queued(&needs).as_deref(), Some("idle"));
        // the idle waiter holds a permit, the busy one does not
        tokio::time::timeout(std::time::Duration::from_millis(50), idle.notify.notified())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), busy.notify.notified())
                .await
                .is_err()
        );
        drop(idle);
        drop(busy);
        assert_eq!(d.waiting(), 0);
        assert_eq!(d.job_queued(&needs), None);
    }
}
