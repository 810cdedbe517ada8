//! Launching, talking to and supervising the `archipelago-enclave` process.
//!
//! The enclave is the only component on the island trusted with plaintext;
//! the agent reaches it solely over the framed channel of
//! `archipelago_proto::channel` on the child's stdin/stdout (its stderr is
//! the enclave's own log, passed through). Everything the agent sends or
//! receives there is ciphertext, public keys, evidence, ids and error codes.
//!
//! [`Enclave`] is one running process: a writer task serialises frames, a
//! reader task routes each reply to the request (`req`) that asked for it,
//! and unsolicited `KeysChanged` messages go to the agent as
//! [`EnclaveEvent`]s. [`supervise`] keeps one enclave running: it restarts a
//! crashed enclave with exponential back-off and publishes the current one
//! through a `watch` channel, so the agent re-attests the fresh keys.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use archipelago_proto::channel::{
    decode_body, encode_frame, frame_len, ChannelError, EnclaveFrame, ErrorCode, FromEnclave,
    IslandFrame, JobRequest, KeyEvidence, KeyInfo, ToEnclave, PROTOCOL_VERSION,
};
use archipelago_proto::envelope::MAX_ENVELOPE_LEN;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

/// How to start the enclave.
#[derive(Debug, Clone)]
pub struct EnclaveCommand {
    /// The `archipelago-enclave` binary.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// Talking to the enclave failed.
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    /// The process could not be started.
    #[error("cannot start the enclave {program}: {source}; check --enclave-bin")]
    Spawn {
        /// The binary.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No enclave is running (it crashed and is being restarted).
    #[error("no enclave is running (it is being restarted)")]
    NotRunning,
    /// The enclave exited before answering.
    #[error("the enclave exited before answering {0}")]
    Exited(&'static str),
    /// The enclave did not answer in time.
    #[error("the enclave did not answer {0} in time")]
    Timeout(&'static str),
    /// The enclave refused the request.
    #[error("the enclave refused {what}: {code}")]
    Refused {
        /// The request.
        what: &'static str,
        /// Its reason code.
        code: ErrorCode,
    },
    /// A frame could not be encoded or decoded.
    #[error("enclave channel: {0}")]
    Channel(#[from] ChannelError),
    /// The enclave answered something the protocol does not allow here.
    #[error("enclave protocol violation: {0}")]
    Protocol(String),
}

/// What the enclave said about itself at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInfo {
    /// TEE type name.
    pub tee: String,
    /// Measurement, lowercase hex.
    pub measurement: String,
    /// Keys held, newest first.
    pub keys: Vec<KeyInfo>,
    /// Workload ids the enclave runs.
    pub workloads: Vec<u64>,
}

/// Things the agent must react to.
#[derive(Debug, Clone)]
pub enum EnclaveEvent {
    /// A (re)started enclave is ready: attest its keys.
    Started(ReadyInfo),
    /// The enclave rotated or dropped keys: attest the new set.
    KeysChanged(Vec<KeyInfo>),
    /// The enclave process exited (it will be restarted).
    Exited,
}

/// A finished confidential job, as opaque bytes.
#[derive(Debug)]
pub enum JobOutcome {
    /// The sealed response (header followed by its chunks).
    Done {
        /// Response header ‖ chunks.
        response: Vec<u8>,
        /// Execution time the enclave measured.
        exec_ms: u64,
    },
    /// The enclave refused or failed the job.
    Failed {
        /// Why.
        code: ErrorCode,
        /// With `sealed_error`: the complete response whose final chunk is an
        /// error report sealed to the client.
        sealed_response: Option<Vec<u8>>,
    },
}

type Routes = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<FromEnclave>>>>;

/// One running enclave process.
pub struct Enclave {
    writer: mpsc::Sender<Vec<u8>>,
    routes: Routes,
    next_req: AtomicU64,
    ready: ReadyInfo,
    pid: Option<u32>,
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("pid", &self.pid)
            .field("tee", &self.ready.tee)
            .finish()
    }
}

/// Largest response the agent relays (the envelope limit of a whole
/// response, plus framing slack).
const MAX_RESPONSE_LEN: usize = MAX_ENVELOPE_LEN + 64 * 1024;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO_TIMEOUT: Duration = Duration::from_secs(120);

/// Reads one frame from an async stream; `Ok(None)` on a clean end of
/// stream between frames.
pub async fn read_frame_async<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<EnclaveFrame>, ChannelError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(ChannelError::Truncated {
                what: "length prefix",
                expected: 4,
                got,
            });
        }
        got += n;
    }
    let len = frame_len(prefix)?;
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(ChannelError::Truncated {
            what: "frame body",
            expected: len,
            got: body.len(),
        });
    }
    decode_body(&body).map(Some)
}

impl Enclave {
    /// Starts the enclave and completes the `Hello`/`Ready` handshake.
    /// Returns the enclave and its child process (whose exit the caller
    /// watches).
    pub async fn spawn(
        cmd: &EnclaveCommand,
        events: mpsc::UnboundedSender<EnclaveEvent>,
    ) -> Result<(Arc<Enclave>, Child), EnclaveError> {
        let mut child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| EnclaveError::Spawn {
                program: cmd.program.display().to_string(),
                source,
            })?;
        let pid = child.id();
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(EnclaveError::Protocol("enclave pipes missing".into()));
        };
        let (writer, mut frames) = mpsc::channel::<Vec<u8>>(64);
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if stdin.write_all(&frame).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
            // Dropping stdin closes the channel: the enclave sees EOF.
        });
        let routes: Routes = Arc::default();
        let reader_routes = routes.clone();
        tokio::spawn(async move {
            // Buffered: a job's frames come in one write, and are then
            // taken in one read rather than two or more per frame.
            let mut stdout = tokio::io::BufReader::with_capacity(64 * 1024, stdout);
            loop {
                match read_frame_async(&mut stdout).await {
                    Ok(Some(frame)) => route(&reader_routes, &events, frame),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "enclave sent a malformed frame; closing the channel");
                        break;
                    }
                }
            }
            // Wake every waiter: their senders are dropped.
            if let Ok(mut r) = reader_routes.lock() {
                r.clear();
            }
        });
        let enclave = Enclave {
            writer,
            routes,
            next_req: AtomicU64::new(1),
            ready: ReadyInfo {
                tee: String::new(),
                measurement: String::new(),
                keys: Vec::new(),
                workloads: Vec::new(),
            },
            pid,
        };
        let ready = match enclave
            .control(
                "hello",
                ToEnclave::Hello {
                    version: PROTOCOL_VERSION,
                },
                HELLO_TIMEOUT,
            )
            .await?
        {
            FromEnclave::Ready {
                version,
                tee,
                measurement,
                keys,
                workloads,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(EnclaveError::Protocol(format!(
                        "enclave speaks channel version {version}, this agent {PROTOCOL_VERSION}; install matching versions"
                    )));
                }
                ReadyInfo {
                    tee,
                    measurement,
                    keys,
                    workloads,
                }
            }
            other => return Err(unexpected("hello", &other)),
        };
        let enclave = Enclave { ready, ..enclave };
        Ok((Arc::new(enclave), child))
    }

    /// What the enclave reported at start-up.
    pub fn ready(&self) -> &ReadyInfo {
        &self.ready
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn register(&self) -> (u64, mpsc::UnboundedReceiver<FromEnclave>) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut r) = self.routes.lock() {
            r.insert(req, tx);
        }
        (req, rx)
    }

    fn unregister(&self, req: u64) {
        if let Ok(mut r) = self.routes.lock() {
            r.remove(&req);
        }
    }

    async fn send(&self, req: u64, msg: ToEnclave) -> Result<(), EnclaveError> {
        let frame = encode_frame(&IslandFrame { req, msg })?;
        self.writer
            .send(frame)
            .await
            .map_err(|_| EnclaveError::Exited("a request"))
    }

    async fn control(
        &self,
        what: &'static str,
        msg: ToEnclave,
        timeout: Duration,
    ) -> Result<FromEnclave, EnclaveError> {
        let (req, mut rx) = self.register();
        let result = async {
            self.send(req, msg).await?;
            match tokio::time::timeout(timeout, rx.recv()).await {
                Err(_) => Err(EnclaveError::Timeout(what)),
                Ok(None) => Err(EnclaveError::Exited(what)),
                Ok(Some(FromEnclave::Failed { code })) => Err(EnclaveError::Refused { what, code }),
                Ok(Some(m)) => Ok(m),
            }
        }
        .await;
        self.unregister(req);
        result
    }

    /// Fresh evidence for every key the enclave holds, bound to `nonce`.
    pub async fn attest(&self, nonce: &[u8]) -> Result<Vec<KeyEvidence>, EnclaveError> {
        match self
            .control(
                "attest",
                ToEnclave::Attest {
                    nonce: nonce.to_vec().into(),
                },
                CONTROL_TIMEOUT,
            )
            .await?
        {
            FromEnclave::Evidence { nonce: n, keys } if n.0 == nonce => Ok(keys),
            FromEnclave::Evidence { .. } => {
                Err(EnclaveError::Protocol("evidence for another nonce".into()))
            }
            other => Err(unexpected("attest", &other)),
        }
    }

    /// Rotate the enclave key now; returns the keys held, newest first.
    pub async fn rotate(&self) -> Result<Vec<KeyInfo>, EnclaveError> {
        match self
            .control("rotate", ToEnclave::Rotate, CONTROL_TIMEOUT)
            .await?
        {
            FromEnclave::Rotated { keys } => Ok(keys),
            other => Err(unexpected("rotate", &other)),
        }
    }

    /// Ask the enclave to finish its jobs and exit; waits for `Bye`.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), EnclaveError> {
        match self
            .control("shutdown", ToEnclave::Shutdown, timeout)
            .await?
        {
            FromEnclave::Bye => Ok(()),
            other => Err(unexpected("shutdown", &other)),
        }
    }

    /// Runs a confidential job: hands the envelope in, collects the sealed
    /// response. The agent never sees anything but ciphertext and a code.
    /// With `relay`, every sealed response frame (header, then each chunk)
    /// is also sent there the moment it arrives, for streaming.
    pub async fn run_job(
        &self,
        job: JobRequest,
        relay: Option<&mpsc::UnboundedSender<Vec<u8>>>,
    ) -> Result<JobOutcome, EnclaveError> {
        let job_id = job.job_id.clone();
        let (req, mut rx) = self.register();
        let result = async {
            self.send(req, ToEnclave::RunJob(job)).await?;
            let mut response = Vec::new();
            let mut saw_header = false;
            loop {
                let msg = rx.recv().await.ok_or(EnclaveError::Exited("a job"))?;
                match msg {
                    FromEnclave::ResponseHeader { job_id: j, bytes }
                        if j == job_id && !saw_header =>
                    {
                        saw_header = true;
                        append(&mut response, &bytes)?;
                        if let Some(r) = relay {
                            let _ = r.send(bytes.0);
                        }
                    }
                    FromEnclave::ResponseChunk { job_id: j, bytes }
                        if j == job_id && saw_header =>
                    {
                        append(&mut response, &bytes)?;
                        if let Some(r) = relay {
                            let _ = r.send(bytes.0);
                        }
                    }
                    FromEnclave::JobDone { job_id: j, exec_ms } if j == job_id => {
                        if !saw_header {
                            return Err(EnclaveError::Protocol(
                                "job done without a response".into(),
                            ));
                        }
                        return Ok(JobOutcome::Done { response, exec_ms });
                    }
                    FromEnclave::JobFailed {
                        job_id: j,
                        code,
                        sealed_error,
                    } if j == job_id => {
                        let sealed_response = (sealed_error && saw_header).then_some(response);
                        return Ok(JobOutcome::Failed {
                            code,
                            sealed_response,
                        });
                    }
                    FromEnclave::Failed { code } => {
                        return Ok(JobOutcome::Failed {
                            code,
                            sealed_response: None,
                        })
                    }
                    other => return Err(unexpected("a job", &other)),
                }
            }
        }
        .await;
        self.unregister(req);
        result
    }
}

fn append(response: &mut Vec<u8>, bytes: &[u8]) -> Result<(), EnclaveError> {
    if response.len() + bytes.len() > MAX_RESPONSE_LEN {
        return Err(EnclaveError::Protocol(format!(
            "response larger than {MAX_RESPONSE_LEN} bytes"
        )));
    }
    response.extend_from_slice(bytes);
    Ok(())
}

fn unexpected(what: &str, msg: &FromEnclave) -> EnclaveError {
    // Debug of channel messages shows only sizes for byte fields.
    let name = format!("{msg:?}");
    let name: String = name
        .split([' ', '{', '('])
        .next()
        .unwrap_or("?")
        .chars()
        .take(32)
        .collect();
    EnclaveError::Protocol(format!("unexpected {name} in answer to {what}"))
}

fn route(routes: &Routes, events: &mpsc::UnboundedSender<EnclaveEvent>, frame: EnclaveFrame) {
    if frame.req == 0 {
        match frame.msg {
            FromEnclave::KeysChanged { keys } => {
                tracing::info!(keys = keys.len(), "enclave keys changed");
                let _ = events.send(EnclaveEvent::KeysChanged(keys));
            }
            FromEnclave::Failed { code } => {
                tracing::warn!(code = code.as_str(), "enclave reported a channel failure")
            }
            other => {
                tracing::warn!(message = %short_name(&other), "unexpected unsolicited enclave message")
            }
        }
        return;
    }
    let tx = routes.lock().ok().and_then(|r| r.get(&frame.req).cloned());
    match tx {
        Some(tx) => {
            let _ = tx.send(frame.msg);
        }
        None => tracing::debug!(
            req = frame.req,
            "enclave answer for a request nobody waits on"
        ),
    }
}

fn short_name(msg: &FromEnclave) -> String {
    let name = format!("{msg:?}");
    name.split([' ', '{', '('])
        .next()
        .unwrap_or("?")
        .chars()
        .take(32)
        .collect()
}

/// Back-off between enclave restarts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// An enclave that ran this long resets the delay.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Resolves once the switch turns true (or its sender is gone). Holds no
/// borrow of the value across an await, so the future stays `Send`.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The enclave currently running, if any.
pub type CurrentEnclave = watch::Receiver<Option<Arc<Enclave>>>;

/// Keeps one enclave running until `stop` turns true: restarts it after a
/// crash with back-off, publishes it in the returned `watch`, and reports
/// start, exit and key changes as events. On stop it asks the enclave to
/// finish and exit (then kills it if it does not).
pub fn supervise(
    cmd: EnclaveCommand,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) -> (
    CurrentEnclave,
    mpsc::UnboundedReceiver<EnclaveEvent>,
    tokio::task::JoinHandle<()>,
) {
    let (current_tx, current_rx) = watch::channel(None::<Arc<Enclave>>);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut delay = backoff.initial;
        loop {
            if *stop.borrow() {
                return;
            }
            let started = tokio::time::Instant::now();
            match Enclave::spawn(&cmd, events_tx.clone()).await {
                Ok((enclave, mut child)) => {
                    let info = enclave.ready().clone();
                    tracing::info!(
                        pid = enclave.pid().unwrap_or(0),
                        tee = %info.tee,
                        measurement = %info.measurement,
                        keys = info.keys.len(),
                        workloads = ?info.workloads,
                        "enclave ready"
                    );
                    let _ = current_tx.send(Some(enclave.clone()));
                    let _ = events_tx.send(EnclaveEvent::Started(info));
                    tokio::select! {
                        status = child.wait() => {
                            let _ = current_tx.send(None);
                            let _ = events_tx.send(EnclaveEvent::Exited);
                            match status {
                                Ok(s) => tracing::warn!(status = %s, "enclave exited; restarting"),
                                Err(e) => tracing::warn!(error = %e, "enclave wait failed; restarting"),
                            }
                        }
                        _ = stopped(&mut stop) => {
                            let _ = current_tx.send(None);
                            match enclave.shutdown(Duration::from_secs(20)).await {
                                Ok(()) => tracing::info!("enclave said goodbye"),
                                Err(e) => tracing::warn!(error = %e, "enclave did not shut down cleanly"),
                            }
                            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                                tracing::warn!("enclave still running after shutdown; killing it");
                                let _ = child.kill().await;
                            }
                            return;
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "enclave failed to start"),
            }
            if started.elapsed() >= backoff.reset_after {
                delay = backoff.initial;
            }
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "restarting the enclave after back-off"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped(&mut stop) => return,
            }
            delay = (delay * 2).min(backoff.max);
        }
    });
    (current_rx, events_rx, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn async_reader_matches_the_sync_framing_and_refuses_bad_frames() {
        let frame = EnclaveFrame {
            req: 3,
            msg: FromEnclave::JobDone {
                job_id: "job_1".into(),
                exec_ms: 4,
            },
        };
        let mut bytes = encode_frame(&frame).unwrap();
        bytes.extend(
            encode_frame(&EnclaveFrame {
                req: 0,
                msg: FromEnclave::Bye,
            })
            .unwrap(),
        );
        let mut r = &bytes[..];
        assert_eq!(read_frame_async(&mut r).await.unwrap(), Some(frame));
        assert!(matches!(
            read_frame_async(&mut r).await.unwrap(),
            Some(EnclaveFrame { req: 0, .. })
        ));
        assert_eq!(read_frame_async(&mut r).await.unwrap(), None);

        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame_async(&mut r).await,
            Err(ChannelError::Truncated { .. })
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame_async(&mut r).await,
            Err(ChannelError::Empty)
        ));
        let big = ((archipelago_proto::channel::MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let mut r: &[u8] = &big;
        assert!(matches!(
            read_frame_async(&mut r).await,
            Err(ChannelError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[0, 0, 0, 9, 1];
        assert!(matches!(
            read_frame_async(&mut r).await,
            Err(ChannelError::Truncated { .. })
        ));
    }

    #[tokio::test]
    async fn spawn_failure_names_the_binary() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let cmd = EnclaveCommand {
            program: PathBuf::from("/nonexistent/archipelago-enclave"),
            args: vec![],
        };
        let err = Enclave::spawn(&cmd, tx).await.unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/archipelago-enclave"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_process_that_is_not_an_enclave_fails_the_handshake() {
        let (tx, _rx) = mpsc::unbounded_channel();
        // `true` exits at once: the handshake sees the channel close.
        let cmd = EnclaveCommand {
            program: PathBuf::from("true"),
            args: vec![],
        };
        let err = Enclave::spawn(&cmd, tx).await.unwrap_err();
        assert!(matches!(err, EnclaveError::Exited(_)), "{err}");
    }
}
