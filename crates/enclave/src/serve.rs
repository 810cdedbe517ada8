//! The channel loop: read [`IslandFrame`]s, answer with [`EnclaveFrame`]s.
//!
//! One thread reads requests and answers control messages at once; each job
//! runs on a fresh thread of its own (at most `max_jobs` at a time) and
//! writes its frames as they are produced (fresh, not pooled: llama.cpp's
//! OpenMP keeps worker threads for each thread that called it while that
//! thread lives, and with more of them than CPUs it stops spinning at its
//! barriers, which made chat 2.2x slower when jobs ran on long-lived
//! threads); a ticker thread applies the key rotation
//! schedule and announces changes with an unsolicited `KeysChanged`.
//! Writers share one lock, so frames never interleave mid-frame. A refused
//! frame is fatal: the island is expected to restart the enclave.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use archipelago_proto::channel::{
    read_frame, write_frame, ChannelError, EnclaveFrame, ErrorCode, FromEnclave, IslandFrame,
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
}

/// Shared writer: one frame at a time; remembers a broken pipe.
struct Out<W: Write> {
    w: Mutex<W>,
    broken: AtomicBool,
}

impl<W: Write> Out<W> {
    fn send(&self, req: u64, msg: FromEnclave) {
        let frame = EnclaveFrame { req, msg };
        let mut w = self
            .w
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = write_frame(&mut *w, &frame) {
            if !self.broken.swap(true, Ordering::SeqCst) {
                tracing::error!(error = %e, "cannot write to the island; it is probably gone");
            }
        }
    }
}

/// Serves the channel until `Shutdown`, the end of `input`, or a refused
/// frame.
pub fn serve<R, W>(
    enclave: Arc<Enclave>,
    mut input: R,
    output: W,
    opts: ServeOptions,
) -> Result<(), ServeError>
where
    R: Read,
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
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();

    let result = loop {
        let frame = match read_frame::<IslandFrame, _>(&mut input) {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::info!("island closed the channel; exiting");
                break Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "refused a frame; exiting");
                out.send(
                    0,
                    FromEnclave::Failed {
                        code: ErrorCode::BadFrame,
                    },
                );
                break Err(ServeError::Channel(e));
            }
        };
        let req = frame.req;
        match frame.msg {
            ToEnclave::Hello { version } => out.send(req, enclave.hello(version)),
            ToEnclave::Attest { nonce } => out.send(req, enclave.attest(&nonce)),
            ToEnclave::Rotate => out.send(req, enclave.rotate(unix_now())),
            ToEnclave::RunJob(job) => {
                handles.retain(|h| !h.is_finished());
                let refuse = {
                    let mut r = running
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if r.contains(&job.job_id) {
                        Some(ErrorCode::DuplicateJob)
                    } else if r.len() >= opts.max_jobs.max(1) {
                        Some(ErrorCode::Busy)
                    } else {
                        r.insert(job.job_id.clone());
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
                let (t_enclave, t_out, t_running) = (enclave.clone(), out.clone(), running.clone());
                let job_id = job.job_id.clone();
                tracing::debug!(job_id = %job_id, "job frame read; starting its thread");
                let spawned = std::thread::Builder::new()
                    .name("job".into())
                    .spawn(move || {
                        tracing::debug!(job_id = %job.job_id, "job thread started");
                        t_enclave.run_job(&job, unix_now(), &mut |msg| {
                            // Free the slot before the island hears the job
                            // ended, so its next job is not refused as Busy.
                            if matches!(
                                msg,
                                FromEnclave::JobDone { .. } | FromEnclave::JobFailed { .. }
                            ) {
                                t_running
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .remove(&job.job_id);
                            }
                            t_out.send(req, msg)
                        });
                    });
                match spawned {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a job thread");
                        running
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&job_id);
                        out.send(
                            req,
                            FromEnclave::JobFailed {
                                job_id,
                                code: ErrorCode::Busy,
                                sealed_error: false,
                            },
                        );
                    }
                }
            }
            ToEnclave::Shutdown => {
                tracing::info!(
                    running = handles.len(),
                    "shutdown requested; finishing running jobs"
                );
                for h in handles.drain(..) {
                    let _ = h.join();
                }
                out.send(req, FromEnclave::Bye);
                break Ok(());
            }
        }
    };
    stop.store(true, Ordering::SeqCst);
    result
}
