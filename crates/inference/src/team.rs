//! A spin-waiting fork–join team for the short parallel phases of one
//! MiniLM forward pass.
//!
//! Why not a general thread pool: a sentence of ~27 tokens runs 24 matmuls
//! of 0.1–0.3 ms each, separated by short serial steps. A pool whose idle
//! workers sleep (rayon's do, after a few yields) must wake one for every
//! matmul, and on a virtual machine waking an idle vCPU takes about as long
//! as the matmul itself: measured here, two rayon threads embedded single
//! sentences only 1.05× faster than one. A team's helpers instead spin on
//! an atomic between jobs, so a job starts within a fraction of a
//! microsecond. The forward pass uses one process-wide team ([`shared`]),
//! whose helpers keep spinning while passes come back to back and park
//! after 2 ms without work; they yield the CPU every few hundred spins in
//! case the machine is shared. [`Team::with`] makes a scoped team whose
//! jobs may borrow (tests).
//!
//! Jobs exchange data by value (`Arc` buffers and weights in, owned blocks
//! out), so all of this is safe Rust.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Output blocks of one job, each tagged with where it goes (a panel or
/// part index the caller chose).
pub(crate) type Parts = Vec<(usize, Vec<f32>)>;

/// One unit of work: runs on a helper (or the calling thread) and returns
/// its output blocks.
pub(crate) type Job<'env> = Box<dyn FnOnce() -> Parts + Send + 'env>;

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const QUIT: u8 = 3;
const DEAD: u8 = 4;

/// Threads a forward pass may use: `ARCHIPELAGO_EMBED_THREADS` if set
/// (≥ 1), else the CPUs available to this process.
pub(crate) fn threads() -> usize {
    static T: OnceLock<usize> = OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("ARCHIPELAGO_EMBED_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .min(64)
    })
}

/// How long an idle helper spins before it parks (a parked one costs a
/// wake-up, ~0.1 ms on a VM, at the next job).
const PARK_AFTER: Duration = Duration::from_millis(2);

struct Slot<'env> {
    state: AtomicU8,
    job: Mutex<Option<Job<'env>>>,
    out: Mutex<Option<Parts>>,
    /// Set while the helper is parked (or about to park).
    sleeping: AtomicBool,
    /// The helper's thread, for unparking it.
    thread: OnceLock<std::thread::Thread>,
}

impl Slot<'_> {
    fn new() -> Self {
        Slot {
            state: AtomicU8::new(IDLE),
            job: Mutex::new(None),
            out: Mutex::new(None),
            sleeping: AtomicBool::new(false),
            thread: OnceLock::new(),
        }
    }

    /// Sets the state and wakes the helper if it is parked.
    fn signal(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The calling thread plus `helpers` spinning threads.
pub(crate) struct Team<'env> {
    slots: Vec<Arc<Slot<'env>>>,
}

/// The process-wide team (one helper per further CPU), started on first
/// use; its helpers spin while forward passes come back to back and park
/// after [`PARK_AFTER`] without work. `None` while another forward pass
/// holds it, or if no helper could be started: the caller then runs alone.
pub(crate) fn shared() -> Option<MutexGuard<'static, Team<'static>>> {
    static TEAM: OnceLock<Mutex<Team<'static>>> = OnceLock::new();
    let team = TEAM.get_or_init(|| {
        let mut slots = Vec::new();
        for i in 1..threads() {
            let slot = Arc::new(Slot::new());
            let s = slot.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("minilm-{i}"))
                .spawn(move || s.serve());
            if spawned.is_err() {
                break;
            }
            slots.push(slot);
        }
        Mutex::new(Team { slots })
    });
    team.try_lock().ok().filter(|t| !t.slots.is_empty())
}

/// Marks a helper's slot dead if its job panics, so the caller stops
/// waiting and panics itself (a scoped team's scope also re-raises the
/// helper's panic; the shared team's mutex is then poisoned, and later
/// passes run alone).
struct DeadOnPanic<'a>(&'a AtomicU8);

impl Drop for DeadOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(DEAD, Ordering::Release);
        }
    }
}

/// Spins until `state` satisfies `done`, yielding now and then.
#[inline]
fn wait(state: &AtomicU8, done: impl Fn(u8) -> bool) -> u8 {
    let mut spins = 0u32;
    loop {
        let s = state.load(Ordering::Acquire);
        if done(s) {
            return s;
        }
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(256) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

impl<'env> Team<'env> {
    /// Runs `f` with a team of `helpers` extra threads that exist only
    /// while `f` runs. With 0 helpers no thread is started.
    pub(crate) fn with<R>(helpers: usize, f: impl FnOnce(&Team<'env>) -> R) -> R {
        let team = Team {
            slots: (0..helpers).map(|_| Arc::new(Slot::new())).collect(),
        };
        if helpers == 0 {
            return f(&team);
        }
        std::thread::scope(|scope| {
            for slot in &team.slots {
                let slot = slot.clone();
                scope.spawn(move || slot.serve());
            }
            // Helpers quit however `f` ends (a panic included), so the
            // scope can join them.
            struct QuitOnDrop<'a, 'env>(&'a Team<'env>);
            impl Drop for QuitOnDrop<'_, '_> {
                fn drop(&mut self) {
                    for slot in &self.0.slots {
                        slot.signal(QUIT);
                    }
                }
            }
            let _quit = QuitOnDrop(&team);
            f(&team)
        })
    }

    /// Threads in the team, the caller included.
    pub(crate) fn size(&self) -> usize {
        self.slots.len() + 1
    }

    /// Runs the jobs in parallel (job 0 on the calling thread, job i on
    /// helper i−1) and returns their outputs in order. At most
    /// [`Team::size`] jobs.
    pub(crate) fn run(&self, mut jobs: Vec<Job<'env>>) -> Vec<Parts> {
        assert!(
            !jobs.is_empty() && jobs.len() <= self.size(),
            "{} jobs for a team of {}",
            jobs.len(),
            self.size()
        );
        let rest = jobs.split_off(1);
        let posted = rest.len();
        for (slot, job) in self.slots.iter().zip(rest) {
            if let Ok(mut j) = slot.job.lock() {
                *j = Some(job);
            }
            slot.signal(POSTED);
        }
        let mut outs = Vec::with_capacity(posted + 1);
        for job in jobs {
            outs.push(job());
        }
        for slot in &self.slots[..posted] {
            let s = wait(&slot.state, |s| s == DONE || s == DEAD);
            assert!(s != DEAD, "a MiniLM worker thread panicked");
            let out = slot.out.lock().ok().and_then(|mut o| o.take());
            slot.state.store(IDLE, Ordering::Release);
            outs.push(out.unwrap_or_default());
        }
        outs
    }
}

impl Slot<'_> {
    /// Waits for a job (or QUIT): spins, then parks after [`PARK_AFTER`].
    fn wait_for_job(&self) -> u8 {
        let ready = |s: u8| s == POSTED || s == QUIT;
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let s = self.state.load(Ordering::Acquire);
            if ready(s) {
                return s;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
                continue;
            }
            if idle_since.elapsed() < PARK_AFTER {
                std::thread::yield_now();
                continue;
            }
            // Announce the nap, then look once more: a job posted after
            // this store sees `sleeping` and unparks us (both SeqCst).
            self.sleeping.store(true, Ordering::SeqCst);
            let s = self.state.load(Ordering::SeqCst);
            if !ready(s) {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            self.sleeping.store(false, Ordering::SeqCst);
            // A timeout (or a spurious wake) goes straight back to sleep,
            // without another 2 ms of spinning: an idle helper would burn
            // 2 % of a core for nothing, taken from whatever else the
            // process runs (llama.cpp's OpenMP team stalls at its barriers
            // whenever one of its threads is preempted).
        }
    }

    fn serve(&self) {
        let _guard = DeadOnPanic(&self.state);
        let _ = self.thread.set(std::thread::current());
        loop {
            if self.wait_for_job() == QUIT {
                return;
            }
            let job = self.job.lock().ok().and_then(|mut j| j.take());
            // The job (and every Arc it holds) is dropped before DONE, so
            // the caller gets its buffers back unshared.
            let out = job.map(|j| j()).unwrap_or_default();
            if let Ok(mut o) = self.out.lock() {
                *o = Some(out);
            }
            self.state.store(DONE, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_run_in_parallel_and_return_in_order() {
        let data = Arc::new((0..1000).map(|i| i as f32).collect::<Vec<_>>());
        Team::with(3, |team| {
            assert_eq!(team.size(), 4);
            for round in 0..200 {
                let jobs: Vec<Job<'_>> = (0..team.size())
                    .map(|t| {
                        let d = data.clone();
                        Box::new(move || vec![(t, vec![d[t * 10 + round % 10]])]) as Job<'_>
                    })
                    .collect();
                let outs = team.run(jobs);
                for (t, o) in outs.iter().enumerate() {
                    assert_eq!(o, &vec![(t, vec![(t * 10 + round % 10) as f32])]);
                }
            }
            // Fewer jobs than threads.
            let outs = team.run(vec![
                Box::new(|| vec![(0, vec![1.0])]),
                Box::new(|| vec![(1, vec![2.0])]),
            ]);
            assert_eq!(outs, vec![vec![(0, vec![1.0])], vec![(1, vec![2.0])]]);
        });
        // Every job's Arc was dropped.
        assert_eq!(Arc::strong_count(&data), 1);
    }

    #[test]
    fn jobs_may_borrow_the_environment() {
        let weights = vec![2.0f32; 8];
        let w = &weights;
        let outs = Team::with(1, |team| {
            team.run(vec![
                Box::new(move || vec![(0, w[..4].to_vec())]),
                Box::new(move || vec![(4, w[4..].iter().map(|v| v * 2.0).collect())]),
            ])
        });
        assert_eq!(outs, vec![vec![(0, vec![2.0; 4])], vec![(4, vec![4.0; 4])]]);
    }

    #[test]
    fn the_shared_team_works_after_its_helpers_parked() {
        let Some(team) = shared() else {
            // One CPU, or another test holds it: nothing to check here.
            return;
        };
        for round in 0..3 {
            let jobs: Vec<Job<'static>> = (0..team.size())
                .map(|t| Box::new(move || vec![(t, vec![round as f32])]) as Job<'static>)
                .collect();
            let outs = team.run(jobs);
            assert_eq!(outs.len(), team.size());
            for (t, o) in outs.iter().enumerate() {
                assert_eq!(o, &vec![(t, vec![round as f32])]);
            }
            // Long enough for every helper to park.
            std::thread::sleep(PARK_AFTER * 3);
        }
    }

    #[test]
    fn a_team_without_helpers_runs_inline() {
        let outs = Team::with(0, |team| {
            assert_eq!(team.size(), 1);
            team.run(vec![Box::new(|| vec![(0, vec![7.0])])])
        });
        assert_eq!(outs, vec![vec![(0, vec![7.0])]]);
    }

    #[test]
    fn a_panicking_job_reaches_the_caller_instead_of_hanging() {
        let r = std::panic::catch_unwind(|| {
            Team::with(1, |team| {
                team.run(vec![
                    Box::new(|| vec![(0, vec![1.0])]),
                    Box::new(|| panic!("job failed")),
                ])
            })
        });
        assert!(r.is_err());
    }
}
