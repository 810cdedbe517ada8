//! The enclave's logic, free of I/O: answer the island's requests with
//! channel messages. [`crate::serve`] wires it to the framed channel.
//!
//! A job goes: header checks against the job → find a held recipient key →
//! open the envelope → skew window and replay cache → run the workload →
//! seal every output piece to the client's response key (from the key
//! pair's Diffie-Hellman, made at the client's first job to that key and
//! kept: [`crate::shares`]). Anything the client should read in detail is
//! sealed to it; the island sees only an [`ErrorCode`]. The `enc`s a request
//! announces for the client's next request are decapsulated after the job
//! ([`Enclave::prepare`], kept in [`crate::decaps`]), so the next open needs
//! no X25519.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use archipelago_attest::{EvidenceSource, TeeType};
use archipelago_proto::channel::{
    Blob, ErrorCode, FromEnclave, JobRequest, KeyEvidence, KeyInfo, PROTOCOL_VERSION,
};
use archipelago_proto::envelope::{
    open_request_with, ChunkKind, Expectations, PreparedDecap, ResponseSealer, ResponseStaticShare,
    MAX_CHUNK_LEN, MAX_ENVELOPE_LEN,
};
use archipelago_proto::{peek_header, EnvelopeError, PublicKey};
use zeroize::Zeroizing;

use crate::decaps::{Decaps, DEFAULT_DECAP_CAPACITY};
use crate::freshness::{FreshnessError, ReplayCache, DEFAULT_REPLAY_CAPACITY, DEFAULT_SKEW_SECS};
use crate::keyring::{EnclaveKey, KeyRing};
use crate::shares::{Shares, DEFAULT_SHARE_CAPACITY};
use crate::workload::Workloads;

/// Largest output one job may produce (a whole response must stay within
/// [`MAX_ENVELOPE_LEN`], streamed pieces included).
pub const MAX_OUTPUT_LEN: usize = MAX_ENVELOPE_LEN / 2;

/// Schedules and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Seconds between key rotations.
    pub rotate_secs: u64,
    /// Seconds an old key keeps opening envelopes after its rotation.
    pub grace_secs: u64,
    /// Accepted distance of `issued_at` from the enclave clock, seconds.
    pub skew_secs: u64,
    /// Request ids remembered at most.
    pub replay_capacity: usize,
    /// (enclave key, client key) pairs whose Diffie-Hellman is kept for
    /// the client's next responses; 0 keeps none (every response then does
    /// one X25519).
    pub share_capacity: usize,
    /// Decapsulations of announced `enc`s kept for clients' next requests;
    /// 0 keeps none (every open then does its X25519 on the job's path).
    pub decap_capacity: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            rotate_secs: 3600,
            grace_secs: 3600,
            skew_secs: DEFAULT_SKEW_SECS,
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            share_capacity: DEFAULT_SHARE_CAPACITY,
            decap_capacity: DEFAULT_DECAP_CAPACITY,
        }
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent across a panic (each update is a
    // single call), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The enclave: its keys, evidence source, replay cache and workloads.
pub struct Enclave {
    source: Box<dyn EvidenceSource>,
    measurement: String,
    keys: Mutex<KeyRing>,
    replay: Mutex<ReplayCache>,
    shares: Mutex<Shares>,
    decaps: Mutex<Decaps>,
    workloads: Workloads,
}

/// The `enc`s a job's request announced for keys this enclave holds, to
/// decapsulate once the job's frames are out ([`Enclave::prepare`]).
#[must_use = "hand it to Enclave::prepare after the job's last frame"]
#[derive(Default)]
pub struct Announced(Vec<(Arc<EnclaveKey>, [u8; 32])>);

impl Announced {
    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Enclave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enclave")
            .field("tee", &self.source.tee_type())
            .field("measurement", &self.measurement)
            .finish_non_exhaustive()
    }
}

impl Enclave {
    /// An enclave with a fresh key created at `now`. `measurement` is the
    /// hex measurement reported in `Ready` (empty when only the hardware
    /// evidence knows it).
    pub fn new(
        source: Box<dyn EvidenceSource>,
        measurement: String,
        workloads: Workloads,
        config: Config,
        now: u64,
    ) -> Enclave {
        Enclave {
            source,
            measurement,
            keys: Mutex::new(KeyRing::new(config.rotate_secs, config.grace_secs, now)),
            replay: Mutex::new(ReplayCache::new(config.replay_capacity, config.skew_secs)),
            shares: Mutex::new(Shares::new(config.share_capacity)),
            decaps: Mutex::new(Decaps::new(config.decap_capacity)),
            workloads,
        }
    }

    /// The TEE type of the evidence source.
    pub fn tee(&self) -> TeeType {
        self.source.tee_type()
    }

    /// Whether a job of `workload_id` must run on a thread that ends with
    /// it (see [`Workloads::binds_its_thread`]).
    pub fn binds_its_thread(&self, workload_id: u64) -> bool {
        self.workloads.binds_its_thread(workload_id)
    }

    /// Public descriptions of the keys held, newest first.
    pub fn key_infos(&self) -> Vec<KeyInfo> {
        lock(&self.keys).infos()
    }

    /// Answer to `Hello`.
    pub fn hello(&self, version: u32) -> FromEnclave {
        if version != PROTOCOL_VERSION {
            tracing::warn!(
                version,
                supported = PROTOCOL_VERSION,
                "island speaks another channel version"
            );
            return FromEnclave::Failed {
                code: ErrorCode::Unsupported,
            };
        }
        FromEnclave::Ready {
            version: PROTOCOL_VERSION,
            tee: self.tee().as_str().to_owned(),
            measurement: self.measurement.clone(),
            keys: self.key_infos(),
            workloads: self.workloads.ids(),
        }
    }

    /// Answer to `Attest`: fresh evidence binding each key, its expiry and
    /// the nonce.
    pub fn attest(&self, nonce: &[u8]) -> FromEnclave {
        let infos = self.key_infos();
        let mut keys = Vec::with_capacity(infos.len());
        for key in infos {
            match self
                .source
                .collect_for_key(&key.public_key, key.expires_at, nonce)
            {
                Ok(evidence) => keys.push(KeyEvidence {
                    key,
                    evidence: Blob(evidence.to_json().into_bytes()),
                }),
                Err(e) => {
                    tracing::error!(tee = %self.tee(), error = %e, "evidence collection failed");
                    return FromEnclave::Failed {
                        code: ErrorCode::EvidenceUnavailable,
                    };
                }
            }
        }
        tracing::info!(
            keys = keys.len(),
            nonce_len = nonce.len(),
            "evidence produced"
        );
        FromEnclave::Evidence {
            nonce: Blob(nonce.to_vec()),
            keys,
        }
    }

    /// Answer to `Rotate`: a new current key now.
    pub fn rotate(&self, now: u64) -> FromEnclave {
        let mut ring = lock(&self.keys);
        ring.rotate(now);
        ring.tick(now);
        self.forget_dropped_keys(&ring);
        FromEnclave::Rotated { keys: ring.infos() }
    }

    /// Applies the rotation schedule; `Some(KeysChanged)` when keys changed.
    pub fn tick(&self, now: u64) -> Option<FromEnclave> {
        let mut ring = lock(&self.keys);
        let changed = ring.tick(now);
        if changed {
            self.forget_dropped_keys(&ring);
        }
        changed.then(|| FromEnclave::KeysChanged { keys: ring.infos() })
    }

    /// Drops (and zeroizes) the kept shares and decapsulations of keys no
    /// longer held.
    fn forget_dropped_keys(&self, ring: &KeyRing) {
        let held: Vec<PublicKey> = ring.keys().iter().map(|k| k.secret().public()).collect();
        lock(&self.shares).retain_enclave_keys(&held);
        lock(&self.decaps).retain_enclave_keys(&held);
    }

    /// Decapsulations kept for announced `enc`s (for tests and metrics).
    pub fn decap_count(&self) -> usize {
        lock(&self.decaps).len()
    }

    /// Decapsulates the `enc`s a job announced (one X25519 each) and keeps
    /// them for the requests that will carry them. Run it after the job's
    /// last frame: this is the work that leaves the next job's path.
    pub fn prepare(&self, announced: Announced) {
        for (key, enc) in announced.0 {
            let pk = key.secret().public();
            if lock(&self.decaps).has(&pk, &enc) {
                continue;
            }
            // A small-order enc gets nothing: its open fails anyway.
            let Ok(decap) = PreparedDecap::new(key.secret(), &enc) else {
                continue;
            };
            // Under the ring's lock (the order `tick` takes them in), so a
            // key dropped meanwhile leaves nothing behind.
            let ring = lock(&self.keys);
            if ring.find(std::slice::from_ref(key.id())).is_some() {
                lock(&self.decaps).put(decap);
            }
        }
    }

    /// Key pairs whose share is kept (for tests and metrics).
    pub fn share_count(&self) -> usize {
        lock(&self.shares).len()
    }

    /// The Diffie-Hellman of `key` and `client` for a response: the kept
    /// one, or made now (one X25519) and kept if the key is still held. The
    /// check and the insert happen under the key ring's lock (the order
    /// [`Enclave::tick`] takes them in), so a key dropped meanwhile cannot
    /// leave an entry behind until the next key change.
    fn response_share(
        &self,
        key: &Arc<EnclaveKey>,
        client: &PublicKey,
    ) -> Result<Arc<ResponseStaticShare>, EnvelopeError> {
        if let Some(share) = lock(&self.shares).get(&key.secret().public(), client) {
            return Ok(share);
        }
        let share = Arc::new(ResponseStaticShare::for_enclave(key.secret(), client)?);
        let ring = lock(&self.keys);
        if ring.find(std::slice::from_ref(key.id())).is_some() {
            lock(&self.shares).put(share.clone());
        }
        Ok(share)
    }

    /// Runs a job, handing each outgoing message to `emit`; always ends with
    /// exactly one `JobDone` or `JobFailed`. Returns the `enc`s the request
    /// announced for this enclave's keys, for [`Enclave::prepare`].
    pub fn run_job(
        &self,
        job: &JobRequest,
        now: u64,
        emit: &mut dyn FnMut(FromEnclave),
    ) -> Announced {
        let start = Instant::now();
        let mut announced = Announced::default();
        let outcome = self.job_inner(job, now, start, emit, &mut announced);
        let exec_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        match outcome {
            Ok(done) => {
                emit(FromEnclave::JobDone {
                    job_id: job.job_id.clone(),
                    exec_ms,
                });
                // One line per job, after its last frame (the island
                // forwards the enclave's log lines, each a pipe write and a
                // wake-up of the agent): ids and sizes only.
                tracing::info!(
                    job_id = %job.job_id,
                    workload_id = job.workload_id,
                    key_id = %done.key_id,
                    envelope_len = job.envelope.len(),
                    input_len = done.input_len,
                    output_len = done.output_len,
                    streamed = done.streamed,
                    run_ms = done.run_ms,
                    exec_ms,
                    "job done"
                );
            }
            Err((code, sealed_error)) => {
                emit(FromEnclave::JobFailed {
                    job_id: job.job_id.clone(),
                    code,
                    sealed_error,
                });
                tracing::warn!(job_id = %job.job_id, code = code.as_str(), sealed_error, exec_ms, "job failed");
            }
        }
        announced
    }

    fn job_inner(
        &self,
        job: &JobRequest,
        now: u64,
        start: Instant,
        emit: &mut dyn FnMut(FromEnclave),
        announced: &mut Announced,
    ) -> Result<JobSummary, (ErrorCode, bool)> {
        let unsealed = |code| (code, false);
        let header = peek_header(&job.envelope).map_err(|e| unsealed(envelope_code(&e)))?;
        if header.workload_id != job.workload_id {
            return Err(unsealed(ErrorCode::WorkloadMismatch));
        }
        if header.client_key_id != job.client_key_id {
            return Err(unsealed(ErrorCode::ClientKeyMismatch));
        }
        let key = lock(&self.keys)
            .find(&header.recipients)
            .ok_or(unsealed(ErrorCode::NotARecipient))?;
        let key_pk = key.secret().public();
        let opened = open_request_with(
            &job.envelope,
            key.secret(),
            &Expectations {
                workload_id: Some(job.workload_id),
                client_key_id: Some(&job.client_key_id),
            },
            |enc| lock(&self.decaps).take(&key_pk, enc),
        )
        .map_err(|e| unsealed(envelope_code(&e)))?;
        let body = opened.body;
        tracing::debug!(
            job_id = %job.job_id,
            key_id = %key.id(),
            input_len = body.input().len(),
            "envelope opened"
        );

        let stale = match lock(&self.replay).check_and_insert(body.request_id, body.issued_at, now)
        {
            Ok(()) => None,
            Err(FreshnessError::Replay) => return Err(unsealed(ErrorCode::Replay)),
            Err(FreshnessError::Full { .. }) => return Err(unsealed(ErrorCode::Busy)),
            Err(stale @ FreshnessError::Stale { .. }) => Some(stale),
        };
        // A fresh request's announcements, for the keys held.
        if stale.is_none() && !body.next_encs.is_empty() {
            let ring = lock(&self.keys);
            for n in &body.next_encs {
                if let Some(k) = ring.find(std::slice::from_ref(&n.recipient)) {
                    announced.0.push((k, n.enc));
                }
            }
        }
        // A response key the client cannot have a share with (a small-order
        // point) gets no response: the client would refuse it anyway.
        let share = self
            .response_share(&key, &body.response_key)
            .map_err(|e| unsealed(envelope_code(&e)))?;
        let (mut sealer, header_bytes) = ResponseSealer::with_share(&share, body.request_id)
            .map_err(|_| unsealed(ErrorCode::Internal))?;
        let mut send_header = Some(header_bytes);
        let job_id = &job.job_id;
        let mut send = |bytes: Vec<u8>, emit: &mut dyn FnMut(FromEnclave)| {
            if let Some(h) = send_header.take() {
                emit(FromEnclave::ResponseHeader {
                    job_id: job_id.clone(),
                    bytes: Blob(h),
                });
            }
            emit(FromEnclave::ResponseChunk {
                job_id: job_id.clone(),
                bytes: Blob(bytes),
            });
        };
        if let Some(stale) = stale {
            let report = error_report(ErrorCode::Stale, &stale.to_string());
            let chunk = sealer
                .seal_chunk(&report, ChunkKind::Error, true)
                .map_err(|_| unsealed(ErrorCode::Internal))?;
            send(chunk, emit);
            return Err((ErrorCode::Stale, true));
        }

        // Run, sealing streamed pieces as they come.
        let mut streamed = 0usize;
        let mut stream_err: Option<ErrorCode> = None;
        let result = {
            let mut sink = |piece: &[u8]| {
                if !job.stream || stream_err.is_some() {
                    return;
                }
                streamed += piece.len();
                if streamed > MAX_OUTPUT_LEN {
                    stream_err = Some(ErrorCode::WorkloadFailed);
                    return;
                }
                for part in piece.chunks(MAX_CHUNK_LEN) {
                    match sealer.seal_chunk(part, ChunkKind::Data, false) {
                        Ok(c) => send(c, emit),
                        Err(_) => {
                            stream_err = Some(ErrorCode::Internal);
                            return;
                        }
                    }
                }
            };
            self.workloads.run(job.workload_id, body.input(), &mut sink)
        };
        let run_ms = start.elapsed().as_millis();
        let outcome: Result<_, (ErrorCode, Zeroizing<String>)> = match (stream_err, result) {
            (Some(code), _) if streamed > MAX_OUTPUT_LEN => Err((
                code,
                Zeroizing::new(format!(
                    "the streamed output exceeds the {MAX_OUTPUT_LEN}-byte limit of a response"
                )),
            )),
            (Some(code), _) => Err((
                code,
                Zeroizing::new("sealing a streamed chunk failed".to_owned()),
            )),
            (None, Ok(out)) if out.len().saturating_add(streamed) <= MAX_OUTPUT_LEN => Ok(out),
            (None, Ok(out)) => Err((
                ErrorCode::WorkloadFailed,
                Zeroizing::new(format!(
                    "the output of {} bytes exceeds the {MAX_OUTPUT_LEN}-byte limit of a response",
                    out.len()
                )),
            )),
            (None, Err(e)) => Err((e.code, Zeroizing::new(e.message().to_owned()))),
        };
        match outcome {
            Ok(out) => {
                tracing::debug!(job_id = %job.job_id, output_len = out.len(), streamed, run_ms, "workload finished");
                let mut pieces = out.chunks(MAX_CHUNK_LEN).peekable();
                if pieces.peek().is_none() {
                    let c = sealer
                        .seal_chunk(&[], ChunkKind::Data, true)
                        .map_err(|_| unsealed(ErrorCode::Internal))?;
                    send(c, emit);
                }
                while let Some(piece) = pieces.next() {
                    let last = pieces.peek().is_none();
                    let c = sealer
                        .seal_chunk(piece, ChunkKind::Data, last)
                        .map_err(|_| unsealed(ErrorCode::Internal))?;
                    send(c, emit);
                }
                Ok(JobSummary {
                    key_id: key.id().clone(),
                    input_len: body.input().len(),
                    output_len: out.len(),
                    streamed,
                    run_ms,
                })
            }
            Err((code, message)) => {
                let report = error_report(code, &message);
                let c = sealer
                    .seal_chunk(&report, ChunkKind::Error, true)
                    .map_err(|_| unsealed(ErrorCode::Internal))?;
                send(c, emit);
                Err((code, true))
            }
        }
    }
}

/// What the log says of a finished job: ids and sizes.
struct JobSummary {
    key_id: archipelago_proto::KeyId,
    input_len: usize,
    output_len: usize,
    streamed: usize,
    run_ms: u128,
}

/// The error report sealed to the client:
/// `{"error": {"code": "...", "message": "..."}}`.
fn error_report(code: ErrorCode, message: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        serde_json::to_vec(&serde_json::json!({
            "error": { "code": code.as_str(), "message": message }
        }))
        .unwrap_or_default(),
    )
}

/// The channel code for an envelope refusal.
pub fn envelope_code(e: &EnvelopeError) -> ErrorCode {
    match e {
        EnvelopeError::NotARecipient(_) => ErrorCode::NotARecipient,
        EnvelopeError::WorkloadMismatch { .. } => ErrorCode::WorkloadMismatch,
        EnvelopeError::ClientKeyMismatch { .. } => ErrorCode::ClientKeyMismatch,
        _ => ErrorCode::BadEnvelope,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use archipelago_attest::{Evidence, EvidenceError, SimEvidenceSource, SimRoot};
    use archipelago_proto::envelope::{
        open_response, seal_request, seal_request_prepared, NextEnc, PreparedWrap, RequestBody,
        RESPONSE_HEADER_LEN,
    };
    use archipelago_proto::SecretKey;

    struct Broken;
    impl EvidenceSource for Broken {
        fn tee_type(&self) -> TeeType {
            TeeType::Sev
        }
        fn collect(&self, _: &[u8; 64]) -> Result<Evidence, EvidenceError> {
            Err(EvidenceError::Io {
                tee: TeeType::Sev,
                path: "/sys/kernel/config/tsm/report".into(),
                detail: "absent".into(),
            })
        }
    }

    fn sim() -> Enclave {
        let src = SimEvidenceSource::new(SimRoot::from_seed(&[1; 32]), [2; 48]);
        Enclave::new(
            Box::new(src),
            hex::encode([2u8; 48]),
            Workloads::new(None),
            Config::default(),
            unix_now(),
        )
    }

    /// A sim enclave created at t = 1000 with `config`.
    fn sim_with(config: Config) -> Enclave {
        Enclave::new(
            Box::new(SimEvidenceSource::new(
                SimRoot::from_seed(&[1; 32]),
                [2; 48],
            )),
            hex::encode([2u8; 48]),
            Workloads::new(None),
            config,
            1000,
        )
    }

    /// Keys rotated every 10 s with 5 s of grace (with [`sim_with`], the
    /// first rotation is at 1010 and the first key goes at 1015).
    fn rotating() -> Config {
        Config {
            rotate_secs: 10,
            grace_secs: 5,
            ..Config::default()
        }
    }

    fn job(client: &SecretKey, envelope: Vec<u8>) -> JobRequest {
        JobRequest {
            job_id: "j1".into(),
            workload_id: 5,
            client_key_id: client.client_id(),
            envelope: Blob(envelope),
            stream: false,
        }
    }

    #[test]
    fn evidence_failure_is_a_code() {
        let e = Enclave::new(
            Box::new(Broken),
            String::new(),
            Workloads::new(None),
            Config::default(),
            0,
        );
        assert_eq!(
            e.attest(&[1; 32]),
            FromEnclave::Failed {
                code: ErrorCode::EvidenceUnavailable
            }
        );
    }

    #[test]
    fn job_runs_once_and_replay_is_refused() {
        let e = sim();
        let client = SecretKey::generate();
        let ek = e.key_infos()[0].public_key;
        let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public());
        let env = seal_request(&body, &[archipelago_proto::PublicKey(ek)]).unwrap();
        let mut frames = Vec::new();
        let _ = e.run_job(&job(&client, env.clone()), unix_now(), &mut |m| {
            frames.push(m)
        });
        let whole = response_bytes(&frames);
        assert!(matches!(frames.last(), Some(FromEnclave::JobDone { .. })));
        let (_, out) = open_response(
            &whole,
            &client,
            &archipelago_proto::PublicKey(ek),
            &body.request_id,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"text": "ABC", "chars": 3}));
        let mut again = Vec::new();
        let _ = e.run_job(&job(&client, env), unix_now(), &mut |m| again.push(m));
        assert_eq!(
            again,
            vec![FromEnclave::JobFailed {
                job_id: "j1".into(),
                code: ErrorCode::Replay,
                sealed_error: false
            }]
        );
    }

    /// The response header and chunks a job's frames carry, concatenated.
    pub(crate) fn response_bytes(frames: &[FromEnclave]) -> Vec<u8> {
        let mut whole = Vec::new();
        for f in frames {
            if let FromEnclave::ResponseHeader { bytes, .. }
            | FromEnclave::ResponseChunk { bytes, .. } = f
            {
                whole.extend_from_slice(bytes);
            }
        }
        whole
    }

    /// The enclave makes a client's share at its first job to a key and
    /// keeps it: later responses use it (they open as usual, each with its
    /// own nonce); a replay makes none; a small-order response key is
    /// refused as a bad envelope; the shares go when their key is dropped.
    #[test]
    fn shares_are_kept_per_client_and_dropped_with_the_key() {
        let e = sim_with(rotating());
        let client = SecretKey::generate();
        let ek = archipelago_proto::PublicKey(e.key_infos()[0].public_key);
        let mut nonces = Vec::new();
        for round in 0..3 {
            let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public());
            let env = seal_request(&body, &[ek]).unwrap();
            let mut frames = Vec::new();
            let _ = e.run_job(&job(&client, env.clone()), unix_now(), &mut |m| {
                frames.push(m)
            });
            let whole = response_bytes(&frames);
            let (_, out) = open_response(&whole, &client, &ek, &body.request_id).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"text": "ABC", "chars": 3}),
                "round {round}"
            );
            nonces.push(whole[RESPONSE_HEADER_LEN - 32..RESPONSE_HEADER_LEN].to_vec());
            assert_eq!(e.share_count(), 1, "round {round}");
            // A replay is refused before any share is looked up.
            let mut again = Vec::new();
            let _ = e.run_job(&job(&client, env), unix_now(), &mut |m| again.push(m));
            assert_eq!(e.share_count(), 1);
        }
        assert!(
            nonces[0] != nonces[1] && nonces[1] != nonces[2],
            "one nonce per response"
        );
        // A second client gets its own.
        let other = SecretKey::generate();
        let body = RequestBody::new(5, br#"{"prompt":"x"}"#.to_vec(), other.public());
        let env = seal_request(&body, &[ek]).unwrap();
        let _ = e.run_job(&job(&other, env), unix_now(), &mut |_| {});
        assert_eq!(e.share_count(), 2);
        // A response key on which no share can be made (the identity point:
        // an all-zero Diffie-Hellman) gets a code and no response.
        let mut body = RequestBody::new(5, br#"{"prompt":"x"}"#.to_vec(), other.public());
        body.response_key = archipelago_proto::PublicKey([0; 32]);
        let env = seal_request(&body, &[ek]).unwrap();
        let zero_id = archipelago_proto::KeyId::client(&[0; 32]);
        let mut frames = Vec::new();
        let _ = e.run_job(
            &JobRequest {
                client_key_id: zero_id,
                ..job(&other, env)
            },
            unix_now(),
            &mut |m| frames.push(m),
        );
        assert!(
            matches!(
                frames[..],
                [FromEnclave::JobFailed {
                    code: ErrorCode::BadEnvelope,
                    sealed_error: false,
                    ..
                }]
            ),
            "{frames:?}"
        );
        assert_eq!(e.share_count(), 2);
        // Rotation keeps them while the old key is in its grace period ...
        assert!(e.tick(1010).is_some());
        assert_eq!(e.share_count(), 2);
        // ... and drops them with it.
        assert!(e.tick(1015).is_some());
        assert_eq!(e.share_count(), 0);
    }

    /// The enc a request announces for a key the enclave holds is
    /// decapsulated by `prepare` (never before: the job's frames come
    /// first) and taken by the request that carries it, which opens as
    /// usual; announcements for other keys, from a replay, or with the
    /// store off make nothing; the kept ones go with their key.
    #[test]
    fn announced_encs_are_prepared_after_the_job_and_used_once() {
        let e = sim();
        let client = SecretKey::generate();
        let ek = archipelago_proto::PublicKey(e.key_infos()[0].public_key);
        let elsewhere = SecretKey::generate().public();
        let next = PreparedWrap::new(&ek).unwrap();
        let other_next = PreparedWrap::new(&elsewhere).unwrap();
        let announce = |w: &PreparedWrap| NextEnc {
            recipient: archipelago_proto::KeyId::enclave(&w.recipient().0),
            enc: *w.enc(),
        };
        let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public())
            .with_next_encs(vec![announce(&next), announce(&other_next)]);
        let env = seal_request(&body, &[ek, elsewhere]).unwrap();
        let mut frames = Vec::new();
        let announced = e.run_job(&job(&client, env.clone()), unix_now(), &mut |m| {
            frames.push(m)
        });
        assert!(matches!(frames.last(), Some(FromEnclave::JobDone { .. })));
        assert_eq!(announced.len(), 1, "only the enclave's own key");
        assert_eq!(e.decap_count(), 0, "nothing before prepare");
        e.prepare(announced);
        assert_eq!(e.decap_count(), 1);
        // A replay of the announcing request announces nothing.
        let replayed = e.run_job(&job(&client, env), unix_now(), &mut |_| {});
        assert!(replayed.is_empty());

        let body = RequestBody::new(5, br#"{"prompt":"next"}"#.to_vec(), client.public());
        let env = seal_request_prepared(&body, vec![next]).unwrap();
        let mut frames = Vec::new();
        let _ = e.run_job(&job(&client, env), unix_now(), &mut |m| frames.push(m));
        let (_, out) =
            open_response(&response_bytes(&frames), &client, &ek, &body.request_id).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"text": "NEXT", "chars": 4}));
        assert_eq!(e.decap_count(), 0, "taken by the request that carried it");

        // Off: nothing is kept.
        let off = sim_with(Config {
            decap_capacity: 0,
            ..rotating()
        });
        let ek = archipelago_proto::PublicKey(off.key_infos()[0].public_key);
        let next = PreparedWrap::new(&ek).unwrap();
        let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public())
            .with_next_encs(vec![announce(&next)]);
        let env = seal_request(&body, &[ek]).unwrap();
        let a = off.run_job(&job(&client, env), unix_now(), &mut |_| {});
        off.prepare(a);
        assert_eq!(off.decap_count(), 0);

        // Kept ones go when their key is dropped.
        let e = sim_with(rotating());
        let ek = archipelago_proto::PublicKey(e.key_infos()[0].public_key);
        let next = PreparedWrap::new(&ek).unwrap();
        let body = RequestBody::new(5, br#"{"prompt":"abc"}"#.to_vec(), client.public())
            .with_next_encs(vec![announce(&next)]);
        let env = seal_request(&body, &[ek]).unwrap();
        let a = e.run_job(&job(&client, env), unix_now(), &mut |_| {});
        e.prepare(a);
        assert_eq!(e.decap_count(), 1);
        assert!(e.tick(1010).is_some());
        assert_eq!(
            e.decap_count(),
            1,
            "kept while the key is in its grace period"
        );
        assert!(e.tick(1015).is_some());
        assert_eq!(e.decap_count(), 0);
    }

    #[test]
    fn envelope_errors_map_to_codes() {
        assert_eq!(
            envelope_code(&EnvelopeError::NotARecipient("ek_x".into())),
            ErrorCode::NotARecipient
        );
        assert_eq!(
            envelope_code(&EnvelopeError::BodyAuthFailed),
            ErrorCode::BadEnvelope
        );
        let e = sim();
        let client = SecretKey::generate();
        let mut frames = Vec::new();
        let _ = e.run_job(&job(&client, b"not an envelope".to_vec()), 0, &mut |m| {
            frames.push(m)
        });
        assert!(matches!(
            frames[..],
            [FromEnclave::JobFailed {
                code: ErrorCode::BadEnvelope,
                sealed_error: false,
                ..
            }]
        ));
    }
}
