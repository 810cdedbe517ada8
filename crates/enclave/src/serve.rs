//! The channel loop: read [`IslandFrame`]s, answer with [`EnclaveFrame`]s.
//!
//! One thread at a time reads requests and answers control messages at
//! once. When it reads a job it passes the channel to a standby thread and
//! runs the job itself (at most `max_jobs` at a time), writing its frames as
//! they are produced, then ends. So each job runs on a fresh thread that ends
//! with it (fresh, not pooled: llama.cpp's OpenMP keeps worker threads for
//! each thread that called it while that thread lives, and with more of them
//! than CPUs it stops spinning at its barriers, which made chat 2.2x slower
//! when jobs ran on long-lived threads), yet no job waits for a thread to
//! start or for a second thread to wake. A ticker thread applies the key
//! rotation schedule and announces changes with an unsolicited
//! `KeysChanged`. Writers share one lock, so frames never interleave
//! mid-frame. A refused frame is fatal: the island is expected to restart
//! the enclave.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use archipelago_proto::channel::{
    encode_frame, read_frame, ChannelError, EnclaveFrame, ErrorCode, FromEnclave, IslandFrame,
    ToEnclave,
};

use crate::enclave::{unix_now, Enclave};

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
/// (its frames and, after them, the next response's preparation).
#[derive(Default)]
struct Slots {
    running: HashSet<String>,
    threads: usize,
}

/// What every reader thread shares.
struct Shared<W: Write> {
    enclave: Arc<Enclave>,
    out: Arc<Out<W>>,
    opts: ServeOptions,
    slots: Mutex<Slots>,
    /// Signalled when a job thread finishes (for `Shutdown`).
    idle: Condvar,
}

impl<W: Write> Shared<W> {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Ends a job thread's slot when the thread is done with the job, also if
/// the workload panicked.
struct SlotGuard<'a, W: Write>(&'a Shared<W>);

impl<W: Write> Drop for SlotGuard<'_, W> {
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
/// Leader and standby: the thread reading the channel (the leader) runs
/// the first job it reads itself, on the core that just woke up for the
/// frame, after passing the channel to a standby thread started earlier,
/// which becomes the next leader and starts its own standby. So a job
/// waits for no thread start and no second wake-up, and every job still
/// runs on a thread that never ran one before and ends with it (see the
/// module doc for why that matters).
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
    let shared = Arc::new(Shared {
        enclave,
        out,
        opts,
        slots: Mutex::default(),
        idle: Condvar::new(),
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
    shared: &Arc<Shared<W>>,
    done: &mpsc::Sender<Result<(), ServeError>>,
) -> Option<mpsc::SyncSender<R>>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel::<R>(1);
    let (shared, done) = (shared.clone(), done.clone());
    let spawned = std::thread::Builder::new()
        .name("job".into())
        .spawn(move || {
            // The leader that started this one ended without a job to hand
            // over: nothing to do.
            if let Ok(input) = rx.recv() {
                lead(&shared, input, done);
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start a channel thread");
            None
        }
    }
}

/// Reads frames until the channel ends or a job arrives; a job is run here
/// after the channel has gone to the standby.
fn lead<R, W>(shared: &Arc<Shared<W>>, mut input: R, done: mpsc::Sender<Result<(), ServeError>>)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let reporter = Reporter {
        done: done.clone(),
        armed: true,
    };
    // Started now, while the previous leader's job runs, not when the next
    // job is waiting.
    let mut next = standby(shared, &done);
    let (enclave, out) = (&shared.enclave, &shared.out);
    loop {
        let frame = match read_frame::<IslandFrame, _>(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::info!("island closed the channel; exiting");
                return reporter.report(Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, "refused a frame; exiting");
                out.send(
                    0,
                    FromEnclave::Failed {
                        code: ErrorCode::BadFrame,
                    },
                );
                return reporter.report(Err(ServeError::Channel(e)));
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
                // Hand the channel on (a standby could not be started
                // earlier: try once more), then run the job here.
                let handed = match next.take().or_else(|| standby(shared, &done)) {
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
                drop(done);
                tracing::debug!(job_id = %job.job_id, "job frame read; channel handed on");
                let _slot = SlotGuard(shared);
                // A job that does not stream sends its frames (response
                // header, chunks, end) together when it ends.
                let mut held = Vec::new();
                enclave.run_job(&job, unix_now(), &mut |msg| {
                    let end = matches!(
                        msg,
                        FromEnclave::JobDone { .. } | FromEnclave::JobFailed { .. }
                    );
                    // Free the slot before the island hears the job ended,
                    // so its next job is not refused as Busy.
                    if end {
                        shared.slots().running.remove(&job.job_id);
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
                return;
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
                return reporter.report(Ok(()));
            }
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
        let served = std::thread::spawn(move || serve(enclave, in_r, out_w, opts));
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
        /// An echo job for `client`, and its request id.
        fn job(&self, id: &str, client: &SecretKey, prompt: &str) -> (JobRequest, [u8; 16]) {
            let body = RequestBody::new(
                5,
                format!(r#"{{"prompt":"{prompt}"}}"#).into_bytes(),
                client.public(),
            );
            let env = seal_request(&body, &[self.key]).unwrap();
            (
                JobRequest {
                    job_id: id.into(),
                    workload_id: 5,
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
        h.send(
            1,
            ToEnclave::Hello {
                version: PROTOCOL_VERSION,
            },
        );
        assert!(matches!(h.next().msg, FromEnclave::Ready { .. }));
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
