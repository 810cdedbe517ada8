//! The channel loop: read [`IslandFrame`]s, answer with [`EnclaveFrame`]s.
//!
//! One thread at a time reads requests and answers control messages at
//! once. When it reads a job it passes the channel to a spare thread that
//! waits for it, and runs the job itself (at most `max_jobs` at a time),
//! writing its frames as they are produced. So no job waits for a thread
//! to start or for a second thread to wake, and nothing starts while a
//! model runs (a thread start there took the CPU from one of the model's
//! threads, whose partner then waited for it). After the job the thread
//! waits as the next spare, unless the workload binds its thread: chat
//! jobs end their thread and start a fresh spare, because llama.cpp's
//! OpenMP keeps worker threads for each thread that called it while that
//! thread lives, and with more of them than CPUs it stops spinning at its
//! barriers (which made chat 2.2x slower on long-lived threads). A ticker
//! thread applies the key rotation schedule and announces changes with an
//! unsolicited `KeysChanged`. A preparer thread at `SCHED_IDLE` decapsulates
//! the `enc`s requests announce ([`Enclave::prepare`]): it runs only on a
//! CPU nothing else wants, so that X25519 neither delays the way back of
//! the job that announced it (the island, the coordinator and the client
//! are busy with its response just then) nor the next job. Writers share
//! one lock, so frames never interleave mid-frame. A refused frame is
//! fatal: the island is expected to restart the enclave.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use archipelago_proto::channel::{
    encode_frame, read_frame, ChannelError, EnclaveFrame, ErrorCode, FromEnclave, IslandFrame,
    JobRequest, ToEnclave,
};

use crate::enclave::{unix_now, Announced, Enclave};

/// How the loop runs.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Jobs run at once; more are refused with `Busy`.
    pub max_jobs: usize,
    /// How often the rotation schedule is checked.
    pub tick: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_jobs: 2,
            tick: Duration::from_secs(1),
        }
    }
}

/// Why the loop stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refused a frame from the island: {0}")]
    Channel(#[from] ChannelError),
    /// No thread could be started to read the channel.
    #[error("cannot start the channel reader thread; check the process and memory limits (ulimit -u, cgroup pids.max)")]
    NoThread,
    /// The thread reading the channel panicked.
    #[error("the channel reader thread panicked; the island will restart the enclave")]
    ReaderPanicked,
}

/// Shared writer: one frame at a time; remembers a broken pipe.
struct Out<W: Write> {
    w: Mutex<W>,
    broken: AtomicBool,
}

impl<W: Write> Out<W> {
    fn send(&self, req: u64, msg: FromEnclave) {
        self.send_all(req, vec![msg]);
    }

    /// Frames of one request in one write (one wake-up of the island for
    /// all of them).
    fn send_all(&self, req: u64, msgs: Vec<FromEnclave>) {
        let mut bytes = Vec::new();
        for msg in msgs {
            match encode_frame(&EnclaveFrame { req, msg }) {
                Ok(f) if bytes.is_empty() => bytes = f,
                Ok(f) => bytes.extend_from_slice(&f),
                Err(e) => return self.failed(&e),
            }
        }
        let mut w = self
            .w
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = w.write_all(&bytes).and_then(|()| w.flush()) {
            self.failed(&ChannelError::from(e));
        }
    }

    fn failed(&self, e: &ChannelError) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            tracing::error!(error = %e, "cannot write to the island; it is probably gone");
        }
    }
}

/// Job slots: the ids running, and the threads still busy with a job
/// (running it and writing its frames).
#[derive(Default)]
struct Slots {
    running: HashSet<String>,
    threads: usize,
}

/// What every reader thread shares.
struct Shared<R, W: Write> {
    enclave: Arc<Enclave>,
    out: Arc<Out<W>>,
    opts: ServeOptions,
    slots: Mutex<Slots>,
    /// Signalled when a job thread finishes (for `Shutdown`).
    idle: Condvar,
    /// The thread the leader hands the channel to when it reads the next
    /// job: a job thread whose job is over, or one started for the
    /// purpose (see [`serve`]).
    spare: Mutex<Spare<R>>,
    /// Channel threads started so far.
    started: Arc<AtomicUsize>,
    /// To the preparer thread; `None` if it could not be started (jobs
    /// then prepare on their own thread).
    preparer: Option<mpsc::Sender<Announced>>,
}

/// The spare, if one is ready; none is taken on once the channel has ended
/// (its thread would wait for a channel that will not come).
struct Spare<R> {
    tx: Option<mpsc::SyncSender<R>>,
    closed: bool,
}

impl<R, W: Write> Shared<R, W> {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare<R>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Ends a job thread's slot when the thread is done with the job, also if
/// the workload panicked.
struct SlotGuard<'a, R, W: Write>(&'a Shared<R, W>);

impl<R, W: Write> Drop for SlotGuard<'_, R, W> {
    fn drop(&mut self) {
        let mut s = self.0.slots();
        s.threads = s.threads.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

/// The reader's outcome, sent once to `serve` by the thread that holds the
/// channel when it ends; a reader that panics while holding it reports so.
struct Reporter {
    done: mpsc::Sender<Result<(), ServeError>>,
    armed: bool,
}

impl Reporter {
    fn report(mut self, r: Result<(), ServeError>) {
        self.armed = false;
        let _ = self.done.send(r);
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if self.armed && std::thread::panicking() {
            let _ = self.done.send(Err(ServeError::ReaderPanicked));
        }
    }
}

/// Serves the channel until `Shutdown`, the end of `input`, or a refused
/// frame.
///
/// Leader and spare: the thread reading the channel (the leader) runs the
/// first job it reads itself, on the core that just woke up for the frame,
/// after passing the channel to the spare thread, which becomes the next
/// leader. When its job is over the thread becomes the next spare, or, if
/// the workload binds its thread, ends and starts one (see the module
/// doc).
pub fn serve<R, W>(
    enclave: Arc<Enclave>,
    input: R,
    output: W,
    opts: ServeOptions,
) -> Result<(), ServeError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    serve_counted(enclave, input, output, opts, Arc::default())
}

/// [`serve`], counting the channel threads it starts in `started`.
fn serve_counted<R, W>(
    enclave: Arc<Enclave>,
    input: R,
    output: W,
    opts: ServeOptions,
    started: Arc<AtomicUsize>,
) -> Result<(), ServeError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let out = Arc::new(Out {
        w: Mutex::new(output),
        broken: AtomicBool::new(false),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (enclave, out, stop) = (enclave.clone(), out.clone(), stop.clone());
        std::thread::Builder::new()
            .name("rotation".into())
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(opts.tick);
                    if let Some(msg) = enclave.tick(unix_now()) {
                        out.send(0, msg);
                    }
                }
            })
    };
    if let Err(e) = &ticker {
        tracing::error!(error = %e, "cannot start the rotation thread; keys will rotate only on request");
    }
    let preparer = {
        let (tx, rx) = mpsc::channel::<Announced>();
        let enclave = enclave.clone();
        let started = std::thread::Builder::new()
            .name("prepare".into())
            .spawn(move || {
                background_priority();
                while let Ok(a) = rx.recv() {
                    enclave.prepare(a);
                }
            });
        match started {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the preparer thread; jobs prepare announced encs themselves");
                None
            }
        }
    };
    let shared = Arc::new(Shared {
        enclave,
        out,
        opts,
        preparer,
        slots: Mutex::default(),
        idle: Condvar::new(),
        spare: Mutex::new(Spare {
            tx: None,
            closed: false,
        }),
        started,
    });
    let (done_tx, done_rx) = mpsc::channel();
    // The first leader is a thread too: the thread that called `serve`
    // never runs a job, so it never keeps an OpenMP team.
    let first = match standby(&shared, &done_tx) {
        Some(tx) => tx,
        None => {
            stop.store(true, Ordering::SeqCst);
            return Err(ServeError::NoThread);
        }
    };
    shared.spare().tx = standby(&shared, &done_tx);
    drop(done_tx);
    let result = if first.send(input).is_err() {
        Err(ServeError::NoThread)
    } else {
        drop(first);
        // Every reader holds a sender; all gone without a word means a
        // standby died before it got the channel.
        done_rx.recv().unwrap_or(Err(ServeError::ReaderPanicked))
    };
    stop.store(true, Ordering::SeqCst);
    result
}

/// Starts a thread that waits for the channel and then leads; `None` (after
/// logging why) when no thread can be started.
fn standby<R, W>(
    shared: &Arc<Shared<R, W>>,
    done: &mpsc::Sender<Result<(), ServeError>>,
) -> Option<mpsc::SyncSender<R>>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel::<R>(1);
    let (shared, done) = (shared.clone(), done.clone());
    let counter = shared.started.clone();
    let spawned = std::thread::Builder::new()
        .name("job".into())
        .spawn(move || channel_thread(&shared, rx, &done));
    match spawned {
        Ok(_) => {
            counter.fetch_add(1, Ordering::Relaxed);
            Some(tx)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a channel thread");
            None
        }
    }
}

/// A channel thread's life: wait to be handed the channel, lead until a
/// job arrives, run it, then either wait again as the spare (a workload
/// that leaves nothing in its thread: no thread start or exit per job) or
/// end, starting a fresh spare (chat: llama.cpp's OpenMP team stays with
/// the thread that called it).
fn channel_thread<R, W>(
    shared: &Arc<Shared<R, W>>,
    rx: mpsc::Receiver<R>,
    done: &mpsc::Sender<Result<(), ServeError>>,
) where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // The leader that started this one ended without a job to hand over,
    // or the channel ended: nothing to do.
    let Ok(mut input) = rx.recv() else { return };
    loop {
        let Some((req, job)) = lead(shared, input, done) else {
            return;
        };
        if shared.enclave.binds_its_thread(job.workload_id) {
            run(shared, req, job, || {});
            let mut spare = shared.spare();
            if spare.tx.is_none() && !spare.closed {
                spare.tx = standby(shared, done);
            }
            return;
        }
        // This thread is the spare from just before the job's last frames
        // (so the island's next job finds it), and takes the channel once
        // the job is over.
        let (tx, rx) = mpsc::sync_channel::<R>(1);
        let mut offered = false;
        run(shared, req, job, || {
            let mut spare = shared.spare();
            if spare.tx.is_none() && !spare.closed {
                spare.tx = Some(tx);
                offered = true;
            }
        });
        if !offered {
            return;
        }
        match rx.recv() {
            Ok(i) => input = i,
            Err(_) => return,
        }
    }
}

/// Reads frames and answers control messages until the channel ends
/// (`None`) or a job arrives, which it returns after handing the channel
/// to the spare.
fn lead<R, W>(
    shared: &Arc<Shared<R, W>>,
    mut input: R,
    done: &mpsc::Sender<Result<(), ServeError>>,
) -> Option<(u64, JobRequest)>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let reporter = Reporter {
        done: done.clone(),
        armed: true,
    };
    // The channel's end is the end of the spare, too: dropping its sender
    // ends its thread.
    let retire = |reporter: Reporter, r: Result<(), ServeError>| {
        let mut spare = shared.spare();
        spare.closed = true;
        spare.tx = None;
        drop(spare);
        reporter.report(r);
        None
    };
    let (enclave, out) = (&shared.enclave, &shared.out);
    loop {
        let frame = match read_frame::<IslandFrame, _>(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::info!("island closed the channel; exiting");
                return retire(reporter, Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, "refused a frame; exiting");
                out.send(
                    0,
                    FromEnclave::Failed {
                        code: ErrorCode::BadFrame,
                    },
                );
                return retire(reporter, Err(ServeError::Channel(e)));
            }
        };
        let req = frame.req;
        match frame.msg {
            ToEnclave::Hello { version } => out.send(req, enclave.hello(version)),
            ToEnclave::Attest { nonce } => out.send(req, enclave.attest(&nonce)),
            ToEnclave::Rotate => out.send(req, enclave.rotate(unix_now())),
            ToEnclave::RunJob(job) => {
                let refuse = {
                    let mut s = shared.slots();
                    if s.running.contains(&job.job_id) {
                        Some(ErrorCode::DuplicateJob)
                    } else if s.running.len() >= shared.opts.max_jobs.max(1) {
                        Some(ErrorCode::Busy)
                    } else {
                        s.running.insert(job.job_id.clone());
                        s.threads += 1;
                        None
                    }
                };
                if let Some(code) = refuse {
                    tracing::warn!(job_id = %job.job_id, code = code.as_str(), "job refused");
                    out.send(
                        req,
                        FromEnclave::JobFailed {
                            job_id: job.job_id,
                            code,
                            sealed_error: false,
                        },
                    );
                    continue;
                }
                // Hand the channel on (to a thread started now if no spare
                // is ready: two jobs at once, or no thread could be
                // started after the last one), then run the job here.
                let spare = shared.spare().tx.take();
                let handed = match spare.or_else(|| standby(shared, done)) {
                    Some(tx) => match tx.send(input) {
                        Ok(()) => None,
                        Err(mpsc::SendError(back)) => Some(back),
                    },
                    None => Some(input),
                };
                if let Some(back) = handed {
                    input = back;
                    {
                        let mut s = shared.slots();
                        s.running.remove(&job.job_id);
                        s.threads = s.threads.saturating_sub(1);
                    }
                    out.send(
                        req,
                        FromEnclave::JobFailed {
                            job_id: job.job_id,
                            code: ErrorCode::Busy,
                            sealed_error: false,
                        },
                    );
                    continue;
                }
                let mut reporter = reporter;
                reporter.armed = false;
                drop(reporter);
                tracing::debug!(job_id = %job.job_id, "job frame read; channel handed on");
                return Some((req, job));
            }
            ToEnclave::Shutdown => {
                let mut s = shared.slots();
                tracing::info!(
                    running = s.threads,
                    "shutdown requested; finishing running jobs"
                );
                while s.threads > 0 {
                    s = shared
                        .idle
                        .wait(s)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                drop(s);
                out.send(req, FromEnclave::Bye);
                return retire(reporter, Ok(()));
            }
        }
    }
}

/// Runs a job whose slot [`lead`] took, writing its frames (a job that
/// does not stream sends them together when it ends), then hands the
/// `enc`s its request announced to the preparer thread, and frees the
/// slot; `before_end` runs just before the frame that ends the job is
/// written.
fn run<R, W: Write>(shared: &Shared<R, W>, req: u64, job: JobRequest, before_end: impl FnOnce()) {
    let _slot = SlotGuard(shared);
    let out = &shared.out;
    let mut held = Vec::new();
    let mut before_end = Some(before_end);
    let announced = shared.enclave.run_job(&job, unix_now(), &mut |msg| {
        let end = matches!(
            msg,
            FromEnclave::JobDone { .. } | FromEnclave::JobFailed { .. }
        );
        // Free the slot before the island hears the job ended, so its next
        // job is not refused as Busy.
        if end {
            shared.slots().running.remove(&job.job_id);
            if let Some(f) = before_end.take() {
                f();
            }
        }
        if job.stream {
            out.send(req, msg);
        } else {
            held.push(msg);
            if end {
                out.send_all(req, std::mem::take(&mut held));
            }
        }
    });
    if !held.is_empty() {
        out.send_all(req, held);
    }
    // The job is over for the island; the next request's X25519 runs when
    // a CPU is idle, off every job's path.
    if announced.is_empty() {
        return;
    }
    let queued = match &shared.preparer {
        Some(tx) => tx.send(announced).map_err(|mpsc::SendError(a)| a),
        None => Err(announced),
    };
    if let Err(a) = queued {
        shared.enclave.prepare(a);
    }
}

/// Puts the calling thread at `SCHED_IDLE`: it runs only on a CPU nothing
/// else wants. Best effort: a refusal leaves the thread as it was.
fn background_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
            ThreadPriority, ThreadSchedulePolicy,
        };
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        ) {
            tracing::debug!(error = ?e, "the preparer thread keeps its priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Workloads};
    use archipelago_attest::{SimEvidenceSource, SimRoot};
    use archipelago_proto::channel::{write_frame, Blob, JobRequest, PROTOCOL_VERSION};
    use archipelago_proto::envelope::{open_response, seal_request, RequestBody};
    use archipelago_proto::{PublicKey, SecretKey};
    use std::io::{PipeReader, PipeWriter};
    use std::sync::mpsc::Receiver;

    struct Harness {
        to: Option<PipeWriter>,
        from: Receiver<EnclaveFrame>,
        served: std::thread::JoinHandle<Result<(), ServeError>>,
        key: PublicKey,
        started: Arc<AtomicUsize>,
        enclave: Arc<Enclave>,
    }

    fn start(max_jobs: usize) -> Harness {
        let enclave = Arc::new(Enclave::new(
            Box::new(SimEvidenceSource::new(
                SimRoot::from_seed(&[1; 32]),
                [2; 48],
            )),
            hex::encode([2u8; 48]),
            Workloads::new(None),
            Config::default(),
            unix_now(),
        ));
        let key = PublicKey(enclave.key_infos()[0].public_key);
        let (in_r, in_w): (PipeReader, PipeWriter) = std::io::pipe().unwrap();
        let (mut out_r, out_w) = std::io::pipe().unwrap();
        let opts = ServeOptions {
            max_jobs,
            tick: Duration::from_secs(3600),
        };
        let started = Arc::new(AtomicUsize::new(0));
        let counter = started.clone();
        let kept = enclave.clone();
        let served = std::thread::spawn(move || serve_counted(enclave, in_r, out_w, opts, counter));
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(f)) = read_frame::<EnclaveFrame, _>(&mut out_r) {
                if tx.send(f).is_err() {
                    return;
                }
            }
        });
        Harness {
            to: Some(in_w),
            from,
            served,
            key,
            started,
            enclave: kept,
        }
    }

    impl Harness {
        fn send(&mut self, req: u64, msg: ToEnclave) {
            let w = self.to.as_mut().unwrap();
            write_frame(w, &IslandFrame { req, msg }).unwrap();
        }
        fn next(&self) -> EnclaveFrame {
            self.from.recv_timeout(Duration::from_secs(30)).unwrap()
        }
        /// `Hello` as request 1, and its `Ready`.
        fn hello(&mut self) {
            self.send(
                1,
                ToEnclave::Hello {
                    version: PROTOCOL_VERSION,
                },
            );
            assert!(matches!(self.next().msg, FromEnclave::Ready { .. }));
        }
        /// An echo job for `client`, and its request id.
        fn job(&self, id: &str, client: &SecretKey, prompt: &str) -> (JobRequest, [u8; 16]) {
            self.job_of(5, id, client, prompt)
        }
        /// A job of `workload` for `client`, and its request id.
        fn job_of(
            &self,
            workload: u64,
            id: &str,
            client: &SecretKey,
            prompt: &str,
        ) -> (JobRequest, [u8; 16]) {
            let body = RequestBody::new(
                workload,
                format!(r#"{{"prompt":"{prompt}"}}"#).into_bytes(),
                client.public(),
            );
            let env = seal_request(&body, &[self.key]).unwrap();
            (
                JobRequest {
                    job_id: id.into(),
                    workload_id: workload,
                    client_key_id: client.client_id(),
                    envelope: Blob(env),
                    stream: false,
                },
                body.request_id,
            )
        }
        /// The frames of request `req` up to its job's end, skipping others.
        fn job_frames(&self, req: u64) -> Vec<FromEnclave> {
            let mut v = Vec::new();
            loop {
                let f = self.next();
                if f.req != req {
                    continue;
                }
                let end = matches!(
                    f.msg,
                    FromEnclave::JobDone { .. } | FromEnclave::JobFailed { .. }
                );
                v.push(f.msg);
                if end {
                    return v;
                }
            }
        }
    }

    fn opened(h: &Harness, frames: &[FromEnclave], client: &SecretKey, rid: &[u8; 16]) -> String {
        let whole = crate::enclave::tests::response_bytes(frames);
        let (_, out) = open_response(&whole, client, &h.key, rid).unwrap();
        String::from_utf8(out.to_vec()).unwrap()
    }

    /// Jobs and control frames alternate over one channel while the reader
    /// role passes from thread to thread: every job is answered, every
    /// control frame too, and the end of input ends `serve` cleanly.
    #[test]
    fn jobs_and_control_frames_are_served_as_the_reader_moves_on() {
        let mut h = start(2);
        let client = SecretKey::generate();
        h.hello();
        for i in 0..6u64 {
            let (job, rid) = h.job(&format!("j{i}"), &client, "abc");
            h.send(10 + i, ToEnclave::RunJob(job));
            let frames = h.job_frames(10 + i);
            assert!(matches!(frames.last(), Some(FromEnclave::JobDone { .. })));
            assert_eq!(
                opened(&h, &frames, &client, &rid),
                r#"{"text":"ABC","chars":3}"#
            );
            h.send(
                100 + i,
                ToEnclave::Attest {
                    nonce: Blob(vec![i as u8; 32]),
                },
            );
            let f = h.next();
            assert_eq!(f.req, 100 + i);
            assert!(matches!(f.msg, FromEnclave::Evidence { .. }), "{:?}", f.msg);
        }
        drop(h.to.take());
        h.served.join().unwrap().unwrap();
    }

    /// The enc a request announces is decapsulated by the preparer thread
    /// once the job's frames are out, and the request that carries it
    /// takes it.
    #[test]
    fn announced_encs_are_prepared_off_the_job_thread() {
        use archipelago_proto::envelope::{seal_request_prepared, NextEnc, PreparedWrap};
        let mut h = start(2);
        let client = SecretKey::generate();
        h.hello();
        let next = PreparedWrap::new(&h.key).unwrap();
        let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public())
            .with_next_encs(vec![NextEnc {
                recipient: archipelago_proto::KeyId::enclave(&h.key.0),
                enc: *next.enc(),
            }]);
        let job = |id: &str, env: Vec<u8>| JobRequest {
            job_id: id.into(),
            workload_id: 5,
            client_key_id: client.client_id(),
            envelope: Blob(env),
            stream: false,
        };
        h.send(
            2,
            ToEnclave::RunJob(job("a1", seal_request(&body, &[h.key]).unwrap())),
        );
        let frames = h.job_frames(2);
        assert_eq!(
            opened(&h, &frames, &client, &body.request_id),
            r#"{"text":"ABC","chars":3}"#
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while h.enclave.decap_count() < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(h.enclave.decap_count(), 1, "prepared after the job");
        let second = RequestBody::new(5, br#"{"prompt":"next"}"#.to_vec(), client.public());
        let env = seal_request_prepared(&second, vec![next]).unwrap();
        h.send(3, ToEnclave::RunJob(job("a2", env)));
        let frames = h.job_frames(3);
        assert_eq!(
            opened(&h, &frames, &client, &second.request_id),
            r#"{"text":"NEXT","chars":4}"#
        );
        assert_eq!(
            h.enclave.decap_count(),
            0,
            "used by the request that carried it"
        );
        drop(h.to.take());
        h.served.join().unwrap().unwrap();
    }

    /// A thread that ran a workload which leaves nothing in it waits as the
    /// next spare, so back-to-back echo jobs start no threads beyond the
    /// first leader and its spare; a chat job's thread ends with it and a
    /// fresh spare is started (llama.cpp's OpenMP stays with its thread).
    #[test]
    fn threads_are_reused_unless_the_workload_binds_them() {
        let mut h = start(2);
        let client = SecretKey::generate();
        // Once the first leader answers, it and the spare have started.
        h.hello();
        assert_eq!(
            h.started.load(Ordering::Relaxed),
            2,
            "the first leader and its spare"
        );
        let mut req = 10;
        let mut echo = |h: &mut Harness, i: u64| {
            let (job, rid) = h.job(&format!("e{i}"), &client, "abc");
            req += 1;
            h.send(req, ToEnclave::RunJob(job));
            let frames = h.job_frames(req);
            assert_eq!(
                opened(h, &frames, &client, &rid),
                r#"{"text":"ABC","chars":3}"#
            );
        };
        for i in 0..5 {
            echo(&mut h, i);
        }
        assert_eq!(
            h.started.load(Ordering::Relaxed),
            2,
            "echo threads are reused"
        );
        // Chat (no model here: it fails, sealed, but still ran on its thread).
        let (job, _) = h.job_of(1, "c1", &client, "hi");
        h.send(50, ToEnclave::RunJob(job));
        let frames = h.job_frames(50);
        assert!(matches!(
            frames.last(),
            Some(FromEnclave::JobFailed {
                code: ErrorCode::ModelUnavailable,
                sealed_error: true,
                ..
            })
        ));
        // Its thread starts the next spare just after the job's frames.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while h.started.load(Ordering::Relaxed) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            h.started.load(Ordering::Relaxed),
            3,
            "a fresh spare after chat"
        );
        for i in 5..8 {
            echo(&mut h, i);
        }
        assert_eq!(h.started.load(Ordering::Relaxed), 3);
        drop(h.to.take());
        h.served.join().unwrap().unwrap();
    }

    /// Two jobs sent back to back, without waiting, both run, and a
    /// Shutdown right behind them answers Bye only after both have ended.
    #[test]
    fn shutdown_waits_for_the_jobs_it_follows() {
        let mut h = start(2);
        let client = SecretKey::generate();
        let mut rids = Vec::new();
        for i in 0..2u64 {
            let (job, rid) = h.job(&format!("j{i}"), &client, "hello");
            rids.push(rid);
            h.send(10 + i, ToEnclave::RunJob(job));
        }
        h.send(99, ToEnclave::Shutdown);
        let mut ended = 0;
        let mut frames: Vec<Vec<FromEnclave>> = vec![Vec::new(), Vec::new()];
        loop {
            let f = h.next();
            if f.req == 99 {
                assert_eq!(f.msg, FromEnclave::Bye);
                break;
            }
            let i = (f.req - 10) as usize;
            if matches!(f.msg, FromEnclave::JobDone { .. }) {
                ended += 1;
            }
            frames[i].push(f.msg);
        }
        assert_eq!(ended, 2, "Bye came before both jobs ended");
        for i in 0..2 {
            assert_eq!(
                opened(&h, &frames[i], &client, &rids[i]),
                r#"{"text":"HELLO","chars":5}"#
            );
        }
        h.served.join().unwrap().unwrap();
    }

    /// A frame that is not a frame is answered with BadFrame, and `serve`
    /// returns the channel error, also when the reader is not the thread
    /// it started with.
    #[test]
    fn a_bad_frame_after_a_job_ends_serve_with_the_channel_error() {
        let mut h = start(1);
        let client = SecretKey::generate();
        let (job, _) = h.job("j0", &client, "x");
        h.send(1, ToEnclave::RunJob(job));
        h.job_frames(1);
        h.to.as_mut()
            .unwrap()
            .write_all(&u32::MAX.to_be_bytes())
            .unwrap();
        let f = h.next();
        assert_eq!(
            f.msg,
            FromEnclave::Failed {
                code: ErrorCode::BadFrame
            }
        );
        assert!(matches!(
            h.served.join().unwrap(),
            Err(ServeError::Channel(_))
        ));
    }
}
