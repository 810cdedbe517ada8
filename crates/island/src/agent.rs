//! The agent's main loop: enroll (or resume), start the enclave, then run
//! four cooperating tasks until shutdown:
//!
//! - **heartbeat**: report load, capabilities and active jobs; obey the
//!   coordinator's `attestation_due` and `cancel_jobs`;
//! - **attestation**: on enclave start, key change, or when due, fetch a
//!   fresh nonce per key, ask the enclave for evidence bound to it, and post
//!   it (the coordinator verifies and appraises it);
//! - **leasing**: long-poll for jobs while a capacity slot is free;
//! - **jobs**: one task per leased job, renewing its lease while it runs,
//!   then posting the result (plain output, or the enclave's sealed
//!   response as opaque base64url).
//!
//! **Streaming.** Jobs of the streaming workloads (`chat`, and `echo`, its
//! test stand-in) relay their output as it is produced: for a confidential
//! job the enclave is asked to stream, and each sealed response frame
//! (header, then every chunk) is posted as it arrives to
//! `POST /island/jobs/{id}/chunks` as opaque base64url bytes, in order
//! (`seq` 0, 1, …; frames that queue up while a post is in flight are
//! concatenated into one post — the client's decoder accepts any split).
//! Concatenated, the posted pieces are exactly the sealed response the
//! result carries, so the client can open tokens as they come. A plain chat
//! job relays its `{"delta": …}` lines the same way. The result is posted
//! only after the relay has flushed, so a stream never ends before its
//! chunks.
//!
//! **Releasing a job.** When the agent cannot run a confidential job — the
//! enclave no longer holds the key the envelope names (it restarted), it is
//! restarting, busy or shutting down — it gives the job back with
//! `POST /island/jobs/{id}/release` instead of posting a failure. The
//! coordinator requeues it at once for the envelope's *other* recipients
//! (excluding this island), or fails it with its re-encrypt error when none
//! is left; nothing is charged. Should the release itself fail, the lease
//! lapses and the coordinator does the same a lease period later.
//!
//! **Draining.** On shutdown the agent stops leasing, lets running jobs
//! finish for up to `drain_timeout`, releases the rest, and then asks the
//! enclave to exit.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archipelago_proto::api::{EncryptedPayload, JobError, MODE_HE, MODE_PLAIN, MODE_TEE};
use archipelago_proto::channel::{ErrorCode, JobRequest};
use archipelago_proto::island::*;
use archipelago_proto::{b64, KeyId};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::client::{ClientError, CoordinatorClient};
use crate::enclave::{
    self, stopped, Backoff, CurrentEnclave, EnclaveCommand, EnclaveEvent, JobOutcome,
};
use crate::he::{HeEvaluator, HE_RUNTIME};
use crate::identity::{Identity, IDENTITY_FILE};
use crate::plain::PlainRunner;
use crate::tee::TeeChoice;
use crate::IslandError;

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Coordinator base URL.
    pub coordinator: String,
    /// Where the identity lives.
    pub data_dir: PathBuf,
    /// One-time enrollment token (only needed before the first enrollment).
    pub enrollment_token: Option<String>,
    /// Island name shown to the operator.
    pub name: String,
    /// The TEE this island offers.
    pub tee: TeeChoice,
    /// How to start the enclave (required unless `tee` is `None`).
    pub enclave: Option<EnclaveCommand>,
    /// Enclave restart back-off.
    pub backoff: Backoff,
    /// Jobs run at once.
    pub capacity: usize,
    /// Memory offered to workloads, MiB.
    pub memory_mb: i64,
    /// Long-poll wait per lease request.
    pub lease_wait: Duration,
    /// How long running jobs may take to finish on shutdown.
    pub drain_timeout: Duration,
    /// Plain-job runner.
    pub plain: PlainRunner,
}

impl AgentConfig {
    /// A configuration with defaults for everything but the essentials.
    pub fn new(
        coordinator: &str,
        data_dir: PathBuf,
        tee: TeeChoice,
        plain: PlainRunner,
    ) -> AgentConfig {
        AgentConfig {
            coordinator: coordinator.trim_end_matches('/').to_string(),
            data_dir,
            enrollment_token: None,
            name: "island".into(),
            tee,
            enclave: None,
            backoff: Backoff::default(),
            capacity: 1,
            memory_mb: 4096,
            lease_wait: Duration::from_secs(25),
            drain_timeout: Duration::from_secs(30),
            plain,
        }
    }
}

/// Shared state of the running agent.
struct Ctx {
    client: CoordinatorClient,
    island_id: String,
    capabilities: Capabilities,
    plain: PlainRunner,
    /// Homomorphic evaluator (every island has one: no TEE needed).
    he: Arc<HeEvaluator>,
    enclave: Option<CurrentEnclave>,
    /// Running jobs → their cancel switch.
    active: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Set on shutdown: jobs stopped from now on are released.
    draining: AtomicBool,
    capacity: usize,
    heartbeat_every: Mutex<Duration>,
}

impl Ctx {
    fn active_ids(&self) -> Vec<String> {
        self.active
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn cancel(&self, job_id: &str) {
        if let Some(tx) = self.active.lock().ok().and_then(|a| a.get(job_id).cloned()) {
            let _ = tx.send(true);
        }
    }
}

/// Enroll with the token, or resume the saved identity.
async fn identity(
    config: &AgentConfig,
    capabilities: &Capabilities,
) -> Result<(Identity, Option<u64>), IslandError> {
    if let Some(id) = Identity::load(&config.data_dir)? {
        if id.coordinator == config.coordinator {
            tracing::info!(island_id = %id.island_id, "resuming saved island identity");
            return Ok((id, None));
        }
        if config.enrollment_token.is_none() {
            return Err(IslandError::Config(format!(
                "the saved identity belongs to coordinator {}, not {}; pass --enrollment-token to enroll with the new one",
                id.coordinator, config.coordinator
            )));
        }
    }
    let token = config
        .enrollment_token
        .clone()
        .ok_or_else(|| IslandError::NotEnrolled {
            file: IDENTITY_FILE,
            dir: config.data_dir.display().to_string(),
        })?;
    let client = CoordinatorClient::new(&config.coordinator)?;
    let resp = client
        .enroll(&EnrollRequest {
            enrollment_token: token,
            name: config.name.clone(),
            capabilities: capabilities.clone(),
        })
        .await?;
    let id = Identity {
        island_id: resp.island_id,
        island_token: resp.island_token,
        coordinator: config.coordinator.clone(),
    };
    id.save(&config.data_dir)?;
    tracing::info!(island_id = %id.island_id, "enrolled");
    Ok((id, Some(resp.heartbeat_interval_secs)))
}

fn runtimes_for(plain: &PlainRunner, workloads: &[u64]) -> Vec<String> {
    let mut r: Vec<String> = plain.runtimes();
    for w in workloads {
        let rt = match w {
            5 => "echo",
            1..=3 => "candle",
            _ => continue,
        };
        if !r.iter().any(|x| x == rt) {
            r.push(rt.to_string());
        }
    }
    r
}

/// Runs the agent until `shutdown` resolves, then drains.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), IslandError> {
    if config.capacity == 0 || config.capacity > 1024 {
        return Err(IslandError::Config("capacity must be 1..=1024".into()));
    }
    if config.tee != TeeChoice::None && config.enclave.is_none() {
        return Err(IslandError::Config(format!(
            "TEE {} needs the enclave binary (--enclave-bin)",
            config.tee
        )));
    }
    let tee_name = config.tee.tee_type().map(|t| t.as_str().to_string());
    if config.tee == TeeChoice::Sim {
        tracing::warn!("SIM TEE: no hardware protection; only development coordinators accept it");
    }
    let (stop_tx, stop_rx) = watch::channel(false);

    // Start the enclave first: its workloads decide the runtimes reported.
    let (current, mut events, supervisor) = match &config.enclave {
        Some(cmd) if config.tee != TeeChoice::None => {
            let (cur, ev, task) = enclave::supervise(cmd.clone(), config.backoff, stop_rx.clone());
            (Some(cur), Some(ev), Some(task))
        }
        _ => (None, None, None),
    };
    let mut workloads = Vec::new();
    if let Some(ev) = events.as_mut() {
        // Wait for the first start so the runtimes are known.
        match tokio::time::timeout(Duration::from_secs(120), ev.recv()).await {
            Ok(Some(EnclaveEvent::Started(info))) => {
                workloads = info.workloads.clone();
            }
            _ => tracing::warn!("the enclave has not started yet; enrolling without its workloads"),
        }
    }
    let he = Arc::new(HeEvaluator::builtin());
    let mut runtimes = runtimes_for(&config.plain, &workloads);
    runtimes.push(HE_RUNTIME.to_string());
    let capabilities = Capabilities {
        tee_type: tee_name.clone(),
        he_capable: true,
        runtimes,
        memory_mb: config.memory_mb,
        capacity: config.capacity as i64,
    };
    let (id, hb_secs) = match identity(&config, &capabilities).await {
        Ok(x) => x,
        Err(e) => {
            let _ = stop_tx.send(true);
            if let Some(t) = supervisor {
                let _ = t.await;
            }
            return Err(e);
        }
    };
    tracing::info!(
        island_id = %id.island_id,
        tee = tee_name.as_deref().unwrap_or("none"),
        runtimes = ?capabilities.runtimes,
        capacity = config.capacity,
        "island agent running"
    );
    let ctx = Arc::new(Ctx {
        client: CoordinatorClient::new(&config.coordinator)?.with_token(&id.island_token),
        island_id: id.island_id.clone(),
        capabilities,
        plain: config.plain.clone(),
        he,
        enclave: current,
        active: Mutex::new(HashMap::new()),
        draining: AtomicBool::new(false),
        capacity: config.capacity,
        heartbeat_every: Mutex::new(Duration::from_secs(hb_secs.unwrap_or(10).max(1))),
    });

    // Attestation rounds are requested through this channel.
    let (attest_tx, attest_rx) = mpsc::unbounded_channel::<&'static str>();
    if ctx.enclave.is_some() {
        let _ = attest_tx.send("enclave started");
    }
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(heartbeat_loop(
        ctx.clone(),
        attest_tx.clone(),
        stop_rx.clone(),
    )));
    if ctx.enclave.is_some() {
        tasks.push(tokio::spawn(attest_loop(
            ctx.clone(),
            attest_rx,
            stop_rx.clone(),
        )));
    }
    if let Some(mut ev) = events {
        let tx = attest_tx.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = ev.recv() => match e {
                        Some(EnclaveEvent::Started(_)) => { let _ = tx.send("enclave started"); }
                        Some(EnclaveEvent::KeysChanged(_)) => { let _ = tx.send("enclave keys changed"); }
                        Some(EnclaveEvent::Exited) => {}
                        None => return,
                    },
                    _ = stopped(&mut stop) => return,
                }
            }
        }));
    }

    let (drain_tx, drain_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(config.capacity));
    let lease_task = tokio::spawn(lease_loop(
        ctx.clone(),
        slots.clone(),
        config.lease_wait,
        drain_rx,
    ));

    shutdown.await;
    tracing::info!(
        active_jobs = ctx.active_ids().len(),
        "shutdown requested; draining"
    );
    let _ = drain_tx.send(true);
    let _ = lease_task.await;
    // Running jobs hold slots; all slots free means all jobs finished.
    let capacity = u32::try_from(config.capacity).unwrap_or(1);
    match tokio::time::timeout(config.drain_timeout, slots.acquire_many(capacity)).await {
        Ok(_) => tracing::info!("all jobs finished"),
        Err(_) => {
            let left = ctx.active_ids();
            tracing::warn!(jobs = ?left, "drain timeout: releasing unfinished jobs (the coordinator requeues them for other islands)");
            ctx.draining.store(true, Ordering::SeqCst);
            for j in &left {
                ctx.cancel(j);
            }
            let _ =
                tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(capacity)).await;
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = supervisor {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    tracing::info!("island agent stopped");
    Ok(())
}

async fn heartbeat_loop(
    ctx: Arc<Ctx>,
    attest: mpsc::UnboundedSender<&'static str>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let active = ctx.active_ids();
        let hb = Heartbeat {
            load: (active.len() as f64 / ctx.capacity as f64).clamp(0.0, 1.0),
            capabilities: ctx.capabilities.clone(),
            active_jobs: active,
        };
        match ctx.client.heartbeat(&hb).await {
            Ok(r) => {
                if let Ok(mut h) = ctx.heartbeat_every.lock() {
                    *h = Duration::from_secs(r.heartbeat_interval_secs.clamp(1, 300));
                }
                if r.attestation_due && ctx.enclave.is_some() {
                    let _ = attest.send("attestation due");
                }
                for j in r.cancel_jobs {
                    tracing::info!(job_id = %j, "coordinator says stop this job");
                    ctx.cancel(&j);
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        let every = ctx
            .heartbeat_every
            .lock()
            .map(|h| *h)
            .unwrap_or(Duration::from_secs(10));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

async fn attest_loop(
    ctx: Arc<Ctx>,
    mut requests: mpsc::UnboundedReceiver<&'static str>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let reason = tokio::select! {
            r = requests.recv() => match r { Some(r) => r, None => return },
            _ = stopped(&mut stop) => return,
        };
        // Coalesce requests that piled up meanwhile.
        while requests.try_recv().is_ok() {}
        match attest_round(&ctx).await {
            Ok(n) => tracing::info!(reason, keys = n, "attestation round done"),
            Err(e) => {
                tracing::warn!(reason, error = %e, "attestation round failed; retrying when next due")
            }
        }
    }
}

/// One attestation round: every key the enclave holds gets its own fresh
/// nonce and evidence. Returns the number of keys the coordinator accepted.
async fn attest_round(ctx: &Ctx) -> Result<usize, IslandError> {
    let Some(current) = &ctx.enclave else {
        return Ok(0);
    };
    let mut current = current.clone();
    // A restarting enclave is back within the back-off; wait a little.
    let enclave = match tokio::time::timeout(
        Duration::from_secs(30),
        current.wait_for(|e| e.is_some()),
    )
    .await
    {
        Ok(Ok(e)) => e.clone(),
        _ => return Err(crate::EnclaveError::NotRunning.into()),
    };
    let Some(enclave) = enclave else {
        return Err(crate::EnclaveError::NotRunning.into());
    };
    let mut done: HashSet<String> = HashSet::new();
    let mut accepted = 0;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    for _ in 0..archipelago_proto::channel::MAX_KEYS {
        let challenge = ctx.client.challenge().await?;
        let nonce = b64::decode_any(&challenge.nonce, 128).map_err(|_| ClientError::Malformed {
            what: "attestation challenge",
            detail: "nonce is not base64".into(),
        })?;
        let evidence = enclave.attest(&nonce).await?;
        let Some(k) = evidence
            .into_iter()
            .find(|k| !done.contains(k.key.key_id.as_str()) && k.key.expires_at > now() + 5)
        else {
            break;
        };
        done.insert(k.key.key_id.as_str().to_string());
        let ev_json: serde_json::Value = serde_json::from_slice(&k.evidence)
            .map_err(|_| crate::EnclaveError::Protocol("evidence is not JSON".into()))?;
        let req = AttestRequest {
            nonce: challenge.nonce.clone(),
            enclave_public_key: b64::encode_std(&k.key.public_key),
            key_expires_at: i64::try_from(k.key.expires_at).unwrap_or(i64::MAX),
            evidence: ev_json,
        };
        match ctx.client.attest(&req).await {
            Ok(r) => {
                accepted += 1;
                tracing::info!(
                    enclave_key_id = %r.enclave_key_id,
                    tee = %r.tee_type,
                    valid_until = r.valid_until,
                    evidence_len = k.evidence.len(),
                    "enclave key attested"
                );
            }
            Err(e) => {
                tracing::warn!(enclave_key_id = %k.key.key_id.as_str(), error = %e, "attestation refused")
            }
        }
    }
    Ok(accepted)
}

async fn lease_loop(
    ctx: Arc<Ctx>,
    slots: Arc<Semaphore>,
    wait: Duration,
    mut drain: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut drain) => return,
        };
        let leased = tokio::select! {
            r = ctx.client.lease(wait.as_millis() as u64) => r,
            _ = stopped(&mut drain) => return,
        };
        match leased {
            Ok(Some(job)) => {
                failures = 0;
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    run_job(&ctx, job).await;
                    drop(permit);
                });
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)));
                tracing::warn!(error = %e, retry_ms = delay.as_millis() as u64, "lease request failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut drain) => return,
                }
            }
        }
    }
}

/// How a job attempt ended, from the agent's point of view.
enum Finish {
    /// Post this result.
    Post(ResultPost),
    /// Give the job back (`reason` is a short code) so the coordinator
    /// requeues it elsewhere.
    Release(&'static str),
}

async fn run_job(ctx: &Ctx, job: LeasedJob) {
    let (cancel_tx, mut cancel_rx) = watch::channel(false);
    if let Ok(mut a) = ctx.active.lock() {
        a.insert(job.job_id.clone(), cancel_tx.clone());
    }
    tracing::info!(
        job_id = %job.job_id,
        island_id = %ctx.island_id,
        workload_id = job.workload_id,
        mode = %job.mode,
        enclave_key_id = job.enclave_key_id.as_deref().unwrap_or("-"),
        "job leased"
    );
    let renewer = tokio::spawn(renew_loop(
        ctx.client.clone(),
        job.job_id.clone(),
        job.lease_id.clone(),
        job.lease_expires_at,
        cancel_tx,
    ));
    let started = Instant::now();
    let finish = tokio::select! {
        f = execute(ctx, &job) => Some(f),
        _ = stopped(&mut cancel_rx) => None,
    };
    renewer.abort();
    if let Ok(mut a) = ctx.active.lock() {
        a.remove(&job.job_id);
    }
    match finish {
        None if ctx.draining.load(Ordering::SeqCst) => {
            release(ctx, &job, "draining").await;
        }
        None => {
            tracing::info!(job_id = %job.job_id, "job stopped (lease lost or cancelled)")
        }
        Some(Finish::Release(reason)) => {
            release(ctx, &job, reason).await;
        }
        Some(Finish::Post(mut post)) => {
            if post.execution_ms == 0 {
                post.execution_ms = started.elapsed().as_millis() as i64;
            }
            post_result(ctx, &job.job_id, &post).await;
        }
    }
}

/// Gives a leased job back so the coordinator requeues it now for the
/// other recipients (excluding this island). If that fails the lease
/// lapses and the coordinator requeues it a lease period later.
async fn release(ctx: &Ctx, job: &LeasedJob, reason: &'static str) {
    let req = ReleaseRequest {
        lease_id: job.lease_id.clone(),
        reason: Some(reason.to_string()),
    };
    let job_id = job.job_id.as_str();
    for attempt in 0..3u32 {
        match ctx.client.release(job_id, &req).await {
            Ok(r) => {
                tracing::info!(job_id, reason, state = %r.state, "job released to the coordinator");
                return;
            }
            Err(e) if e.is_lease_gone() => {
                tracing::info!(job_id, reason, error = %e, "release not needed: the lease is gone");
                return;
            }
            Err(e @ ClientError::Transport { .. }) => {
                tracing::warn!(job_id, attempt, error = %e, "releasing the job failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                tracing::warn!(job_id, reason, error = %e, "release refused; the lease will lapse instead");
                return;
            }
        }
    }
    tracing::warn!(
        job_id,
        reason,
        "could not release the job; the lease will lapse instead"
    );
}

/// Whether a workload streams its output as it is produced (chat, and the
/// echo test workload that stands in for it).
fn streams(job: &LeasedJob) -> bool {
    matches!(job.workload_slug.as_str(), "chat" | "echo")
}

/// Largest batch of relayed bytes per chunk post (the coordinator takes up
/// to 2 MiB per chunk).
const MAX_RELAY_BATCH: usize = 1024 * 1024;

/// Posts a job's streamed pieces to the coordinator in order, as they are
/// produced. Pieces that queue up while a post is in flight go out together
/// in the next post.
struct Relay {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// `encode` turns relayed bytes into the chunk's `data` (base64url for
    /// sealed frames, UTF-8 text for plain deltas).
    fn start(ctx: &Ctx, job: &LeasedJob, encode: fn(&[u8]) -> String) -> Relay {
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let client = ctx.client.clone();
        let job_id = job.job_id.clone();
        let lease_id = job.lease_id.clone();
        let task = tokio::spawn(async move {
            let mut seq = 0i64;
            let mut held: Option<Vec<u8>> = None;
            loop {
                let mut batch = match held.take() {
                    Some(b) => b,
                    None => match rx.recv().await {
                        Some(b) => b,
                        None => return,
                    },
                };
                while let Ok(more) = rx.try_recv() {
                    if batch.len() + more.len() > MAX_RELAY_BATCH {
                        held = Some(more);
                        break;
                    }
                    batch.extend_from_slice(&more);
                }
                let post = ChunkPost {
                    lease_id: lease_id.clone(),
                    seq,
                    data: encode(&batch),
                };
                let mut sent = false;
                for attempt in 0..3u32 {
                    match client.chunk(&job_id, &post).await {
                        Ok(()) => {
                            sent = true;
                            break;
                        }
                        Err(e @ ClientError::Transport { .. }) => {
                            tracing::debug!(job_id = %job_id, seq, attempt, error = %e, "chunk post failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        }
                        Err(e) => {
                            tracing::info!(job_id = %job_id, seq, error = %e, "chunk refused; streaming stops (the result still carries the whole output)");
                            break;
                        }
                    }
                }
                if !sent {
                    // Later pieces cannot be relayed in order any more; the
                    // result carries them all.
                    rx.close();
                    while rx.recv().await.is_some() {}
                    return;
                }
                tracing::trace!(job_id = %job_id, seq, len = batch.len(), "chunk relayed");
                seq += 1;
            }
        });
        Relay { tx, task }
    }

    /// Waits until everything handed over has been posted (bounded).
    async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

async fn post_result(ctx: &Ctx, job_id: &str, post: &ResultPost) {
    for attempt in 0..6u32 {
        match ctx.client.result(job_id, post).await {
            Ok(r) => {
                tracing::info!(job_id, outcome = %post.outcome, state = %r.state, cost = r.cost, "result posted");
                return;
            }
            Err(e) if e.is_lease_gone() => {
                tracing::info!(job_id, error = %e, "result not accepted: the lease is gone");
                return;
            }
            Err(e @ ClientError::Transport { .. }) => {
                tracing::warn!(job_id, attempt, error = %e, "posting the result failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => {
                tracing::warn!(job_id, error = %e, "result refused");
                return;
            }
        }
    }
}

async fn renew_loop(
    client: CoordinatorClient,
    job_id: String,
    lease_id: String,
    mut expires_at_ms: i64,
    cancel: watch::Sender<bool>,
) {
    let mut running = true;
    loop {
        let req = RenewRequest {
            lease_id: lease_id.clone(),
            running,
        };
        match client.renew(&job_id, &req).await {
            Ok(r) => {
                running = false;
                expires_at_ms = r.lease_expires_at;
            }
            Err(e) if e.is_lease_gone() => {
                tracing::info!(job_id = %job_id, error = %e, "lease gone; stopping the job");
                let _ = cancel.send(true);
                return;
            }
            Err(e) => {
                tracing::warn!(job_id = %job_id, error = %e, "lease renewal failed; retrying")
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // Renew at a third of the remaining lease (at least every 200 ms,
        // at most every 10 s).
        let wait = ((expires_at_ms - now_ms) / 3).clamp(200, 10_000) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

fn failed(code: &str, message: &str) -> ResultPost {
    ResultPost {
        lease_id: String::new(),
        outcome: "failed".into(),
        execution_ms: 0,
        output: None,
        error: Some(JobError {
            code: code.chars().take(64).collect(),
            message: message.chars().take(512).collect(),
        }),
    }
}

async fn execute(ctx: &Ctx, job: &LeasedJob) -> Finish {
    let mut finish = match job.mode.as_str() {
        MODE_PLAIN => execute_plain(ctx, job).await,
        MODE_TEE => execute_tee(ctx, job).await,
        MODE_HE => execute_he(ctx, job).await,
        other => {
            tracing::warn!(job_id = %job.job_id, mode = other, "job mode not supported by this island");
            Finish::Post(failed(
                "unsupported_mode",
                "this island does not run jobs of this mode",
            ))
        }
    };
    if let Finish::Post(p) = &mut finish {
        p.lease_id = job.lease_id.clone();
    }
    finish
}

async fn execute_plain(ctx: &Ctx, job: &LeasedJob) -> Finish {
    let plain = ctx.plain.clone();
    let workload = job.workload_id;
    let input = job.input.clone();
    let started = Instant::now();
    let relay = streams(job)
        .then(|| Relay::start(ctx, job, |b: &[u8]| String::from_utf8_lossy(b).into_owned()));
    let tx = relay.as_ref().map(|r| r.tx.clone());
    let result = on_job_thread(move || {
        plain.run_streaming(workload, &input, &mut |piece| {
            if let Some(tx) = &tx {
                let _ = tx.send(piece.to_vec());
            }
        })
    })
    .await;
    let execution_ms = started.elapsed().as_millis() as i64;
    tracing::debug!(job_id = %job.job_id, execution_ms, "plain workload finished");
    if let Some(r) = relay {
        r.finish().await;
    }
    match result {
        Ok(Ok(output)) => Finish::Post(ResultPost {
            lease_id: String::new(),
            outcome: "succeeded".into(),
            execution_ms: execution_ms.max(1),
            output: Some(output),
            error: None,
        }),
        Ok(Err(e)) => {
            tracing::info!(job_id = %job.job_id, code = e.code(), "plain job failed");
            let mut p = failed(e.code(), &e.to_string());
            p.execution_ms = execution_ms;
            Finish::Post(p)
        }
        Err(why) => Finish::Post(failed("internal", why)),
    }
}

/// Runs a plain job on a thread of its own, which exits with the job.
///
/// Not tokio's blocking pool: llama.cpp's OpenMP keeps a team of worker
/// threads for every thread that has called it, for as long as that
/// thread lives, and once the pool's long-lived threads hold more such
/// workers than there are CPUs, libgomp stops spinning at its barriers
/// (each one then sleeps in a futex). Measured here: plain chat 2.2x slower
/// after a few hundred jobs (`job_e2e` bench). The enclave runs each job on
/// a fresh thread too.
async fn on_job_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, &'static str> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("plain-job".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|_| "the island could not start a thread for the job; it is short of resources")?;
    rx.await.map_err(|_| "the workload panicked")
}

async fn execute_tee(ctx: &Ctx, job: &LeasedJob) -> Finish {
    let Some(current) = &ctx.enclave else {
        return Finish::Release("no_enclave");
    };
    // The input is the submitted `{"encrypted": true, "key_id", "ciphertext"}`.
    let payload: EncryptedPayload = match serde_json::from_value(job.input.clone()) {
        Ok(p) => p,
        Err(_) => {
            return Finish::Post(failed(
                "bad_envelope",
                "the job input is not an encrypted payload",
            ))
        }
    };
    let envelope = match b64::decode_any(
        &payload.ciphertext,
        archipelago_proto::envelope::MAX_ENVELOPE_LEN * 4 / 3 + 4,
    ) {
        Ok(b) => b,
        Err(_) => {
            return Finish::Post(failed(
                "bad_envelope",
                "the ciphertext is not base64url or is too large",
            ))
        }
    };
    let key_id_text = job.encryption_key_id.as_deref().unwrap_or(&payload.key_id);
    let client_key_id = match KeyId::parse(key_id_text) {
        Ok(k) => k,
        Err(_) => {
            return Finish::Post(failed(
                "bad_envelope",
                "the job's encryption_key_id is not a ck_ key id",
            ))
        }
    };
    let workload_id = match u64::try_from(job.workload_id) {
        Ok(w) => w,
        Err(_) => return Finish::Post(failed("bad_envelope", "negative workload id")),
    };
    let mut current = current.clone();
    let enclave = match tokio::time::timeout(
        Duration::from_secs(10),
        current.wait_for(|e| e.is_some()),
    )
    .await
    {
        Ok(Ok(e)) => e.clone(),
        _ => None,
    };
    let Some(enclave) = enclave else {
        return Finish::Release("enclave_not_running");
    };
    let stream = streams(job);
    tracing::debug!(job_id = %job.job_id, envelope_len = envelope.len(), stream, "handing the envelope to the enclave");
    let relay = stream.then(|| Relay::start(ctx, job, |b: &[u8]| b64::encode_url(b)));
    let outcome = enclave
        .run_job(
            JobRequest {
                job_id: job.job_id.clone(),
                workload_id,
                client_key_id,
                envelope: envelope.into(),
                stream,
            },
            relay.as_ref().map(|r| &r.tx),
        )
        .await;
    if let Some(r) = relay {
        r.finish().await;
    }
    let sealed = |bytes: &[u8]| {
        serde_json::to_value(EncryptedPayload {
            encrypted: true,
            key_id: key_id_text.to_string(),
            ciphertext: b64::encode_url(bytes),
            enclave_key_id: job.enclave_key_id.clone(),
        })
        .ok()
    };
    match outcome {
        Ok(JobOutcome::Done { response, exec_ms }) => {
            tracing::debug!(job_id = %job.job_id, response_len = response.len(), exec_ms, "enclave finished the job");
            Finish::Post(ResultPost {
                lease_id: String::new(),
                outcome: "succeeded".into(),
                execution_ms: i64::try_from(exec_ms).unwrap_or(0).max(1),
                output: sealed(&response),
                error: None,
            })
        }
        Ok(JobOutcome::Failed {
            code,
            sealed_response,
        }) => {
            tracing::info!(job_id = %job.job_id, code = code.as_str(), "enclave refused or failed the job");
            match code {
                // The enclave no longer holds the key the envelope names.
                ErrorCode::NotARecipient => Finish::Release("not_a_recipient"),
                ErrorCode::Busy | ErrorCode::ShuttingDown => Finish::Release("enclave_busy"),
                _ => {
                    let mut p = failed(code.as_str(), code.describe());
                    p.output = sealed_response.as_deref().and_then(sealed);
                    Finish::Post(p)
                }
            }
        }
        Err(e) => {
            tracing::warn!(job_id = %job.job_id, error = %e, "enclave failed while running the job");
            Finish::Release("enclave_lost")
        }
    }
}

/// A homomorphic job: evaluated here on ciphertext (see [`crate::he`]).
async fn execute_he(ctx: &Ctx, job: &LeasedJob) -> Finish {
    let result = ctx
        .he
        .run(
            &ctx.client,
            job.workload_id,
            job.encryption_key_id.as_deref(),
            &job.input,
        )
        .await;
    match result {
        Ok(out) => {
            tracing::info!(job_id = %job.job_id, response_len = out.response_len, exec_ms = out.execution_ms, "homomorphic job evaluated");
            Finish::Post(ResultPost {
                lease_id: String::new(),
                outcome: "succeeded".into(),
                execution_ms: out.execution_ms,
                output: Some(out.output),
                error: None,
            })
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(job_id = %job.job_id, error = %e, "homomorphic job released");
            Finish::Release("the HE key could not be fetched")
        }
        Err(e) => {
            tracing::info!(job_id = %job.job_id, code = e.code(), "homomorphic job refused");
            Finish::Post(failed(e.code(), &e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_follow_enclave_workloads() {
        let p = PlainRunner::echo_only();
        assert_eq!(runtimes_for(&p, &[]), vec!["echo"]);
        assert_eq!(runtimes_for(&p, &[5, 3, 2, 99]), vec!["echo", "candle"]);
    }

    #[test]
    fn failures_are_truncated_codes_and_messages() {
        let p = failed(&"x".repeat(100), &"y".repeat(1000));
        let e = p.error.unwrap();
        assert_eq!(e.code.len(), 64);
        assert_eq!(e.message.len(), 512);
        assert_eq!(p.outcome, "failed");
    }

    #[tokio::test]
    async fn not_enrolled_without_token_is_a_clear_error() {
        let dir =
            std::env::temp_dir().join(format!("island-agent-noenroll-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = AgentConfig::new(
            "http://127.0.0.1:9",
            dir.clone(),
            TeeChoice::None,
            PlainRunner::echo_only(),
        );
        let err = run(cfg, std::future::pending()).await.unwrap_err();
        assert!(matches!(err, IslandError::NotEnrolled { .. }), "{err}");
        assert!(err.to_string().contains("--enrollment-token"));
    }

    #[tokio::test]
    async fn plain_jobs_run_on_a_fresh_thread_that_ends_with_the_job() {
        let here = std::thread::current().id();
        let (id, name) = on_job_thread(|| {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_owned))
        })
        .await
        .unwrap();
        assert_ne!(id, here);
        assert_eq!(name.as_deref(), Some("plain-job"));
        let (again, _) = on_job_thread(|| (std::thread::current().id(), ()))
            .await
            .unwrap();
        assert_ne!(again, id, "a job thread must not be reused");
        let panicked = on_job_thread(|| -> u8 { panic!("boom") }).await;
        assert_eq!(panicked, Err("the workload panicked"));
    }
}
