//! A confidential job from the user's side, end to end: load the client
//! key, fetch the enclaves and verify them with the user's policy, pick K,
//! seal, submit in the product page's shape, wait or stream, then open the
//! response — checking it was written by one of the chosen enclaves for
//! this very request — and decrypt.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use archipelago_attest::Policy;
use archipelago_proto::api::{EncryptedPayload, Job, SubmitJobRequest, MODE_TEE};
use archipelago_proto::envelope::{
    open_response_with_share, peek_response_header, seal_request_prepared, ChunkKind, NextEnc,
    PreparedWrap, RequestBody, RequestId, ResponseOpener, ResponseStaticShare, MAX_ENVELOPE_LEN,
    RESPONSE_HEADER_LEN,
};
use archipelago_proto::{b64, KeyId, PublicKey, SecretKey};
use futures_util::StreamExt;
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::error::KeystoreError;
use crate::http::ApiClient;
use crate::keystore::{Keystore, Passphrase, StoredKey};
use crate::records::{RecordedRecipient, RequestRecord, RequestRecords};
use crate::verify::{appraise_enclaves, now_secs, pick_recipients, Appraisal, VerifiedEnclave};

/// Workload id sealed into an envelope whose workload is not known yet
/// (the gateway's `/encrypt` without `workload_id`). The coordinator refuses
/// to submit it for any real workload, so it can only be re-sealed.
pub const UNBOUND_WORKLOAD: u64 = 0;

/// A sealed request and what is needed to open its answer.
pub struct Sealed {
    /// The request envelope bytes.
    pub envelope: Vec<u8>,
    pub request_id: RequestId,
    pub client_key_id: KeyId,
    pub workload_id: u64,
    pub recipients: Vec<VerifiedEnclave>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("envelope_len", &self.envelope.len())
            .field("request_id", &hex::encode(self.request_id))
            .field("client_key_id", &self.client_key_id)
            .field("workload_id", &self.workload_id)
            .field("recipients", &self.recipients.len())
            .finish()
    }
}

impl Sealed {
    /// `{"encrypted": true, "key_id", "ciphertext"}` as on the product page.
    pub fn payload(&self) -> EncryptedPayload {
        EncryptedPayload {
            encrypted: true,
            key_id: self.client_key_id.to_string(),
            ciphertext: b64::encode_url(&self.envelope),
            enclave_key_id: None,
        }
    }

    /// The `POST /jobs` body in the product page's shape.
    pub fn submit_request(&self, workload_id: i64) -> SubmitJobRequest {
        SubmitJobRequest {
            workload_id,
            confidential: true,
            encryption_key_id: Some(self.client_key_id.to_string()),
            mode: None,
            input: serde_json::to_value(self.payload()).unwrap_or(serde_json::Value::Null),
            timeout_seconds: None,
        }
    }

    /// What must be remembered to open the answer (no secrets).
    pub fn record(&self) -> RequestRecord {
        RequestRecord {
            request_id: hex::encode(self.request_id),
            workload_id: self.workload_id,
            client_key_id: self.client_key_id.to_string(),
            recipients: self
                .recipients
                .iter()
                .map(|r| RecordedRecipient {
                    key_id: r.key_id.to_string(),
                    public_key: r.public_key.to_base64(),
                })
                .collect(),
            job_id: None,
            created_at: now_secs() as i64,
        }
    }
}

/// A decrypted output. Zeroized on drop; `Debug` shows only its size.
pub struct ConfidentialOutput {
    data: Zeroizing<Vec<u8>>,
    /// The attested enclave key that sealed it.
    pub enclave_key_id: KeyId,
}

impl ConfidentialOutput {
    pub fn new(data: Zeroizing<Vec<u8>>, enclave_key_id: KeyId) -> Self {
        ConfidentialOutput {
            data,
            enclave_key_id,
        }
    }
    /// The plaintext.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// The output as JSON. A response whose chunks were streamed carries
    /// the streamed pieces (`{"delta": …}` lines, each ending in a newline)
    /// before the final output, so when the whole is not one JSON value the
    /// part after the last newline is taken.
    pub fn json(&self) -> Option<serde_json::Value> {
        if let Ok(v) = serde_json::from_slice(&self.data) {
            return Some(v);
        }
        let tail = match self.data.iter().rposition(|b| *b == b'\n') {
            Some(i) => &self.data[i + 1..],
            None => return None,
        };
        serde_json::from_slice(tail).ok()
    }
}

impl std::fmt::Debug for ConfidentialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfidentialOutput")
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .field("enclave_key_id", &self.enclave_key_id)
            .finish()
    }
}

/// What a streamed run reports as it goes.
pub enum StreamEvent {
    /// The job's state changed (`queued`, `assigned`, `running`, ...).
    State(String),
    /// A decrypted, authenticated output chunk.
    Data(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for StreamEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamEvent::State(s) => write!(f, "State({s})"),
            StreamEvent::Data(d) => write!(f, "Data(<{} bytes redacted>)", d.len()),
        }
    }
}

/// Opens a response arriving in pieces: the streamed pieces, concatenated,
/// are the response header followed by its chunks, however they are split.
pub struct StreamDecoder<'a> {
    record: &'a RequestRecord,
    key: &'a SecretKey,
    buf: Vec<u8>,
    opener: Option<ResponseOpener>,
    enclave_key_id: Option<KeyId>,
    error_report: bool,
    /// The session's kept response shares, when it has them.
    shares: Option<&'a ShareCache>,
}

const CHUNK_FIXED: usize = 8 + 16 + 4 + 1 + 4;

impl<'a> StreamDecoder<'a> {
    pub fn new(record: &'a RequestRecord, key: &'a SecretKey) -> Self {
        StreamDecoder {
            record,
            key,
            buf: Vec::new(),
            opener: None,
            enclave_key_id: None,
            error_report: false,
            shares: None,
        }
    }

    /// Feeds bytes; returns the chunks they complete (authenticated, in order).
    pub fn feed(
        &mut self,
        bytes: &[u8],
    ) -> Result<Vec<archipelago_proto::envelope::Chunk>, ClientError> {
        if self.buf.len() + bytes.len() > MAX_ENVELOPE_LEN {
            return Err(ClientError::Envelope(
                archipelago_proto::EnvelopeError::TooLarge {
                    len: self.buf.len() + bytes.len(),
                    max: MAX_ENVELOPE_LEN,
                },
            ));
        }
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        if self.opener.is_none() {
            let header_len = RESPONSE_HEADER_LEN;
            if self.buf.len() < header_len {
                return Ok(out);
            }
            let (opener, ek) =
                open_header(&self.buf[..header_len], self.record, self.key, self.shares)?;
            self.opener = Some(opener);
            self.enclave_key_id = Some(ek);
            self.buf.drain(..header_len);
        }
        let Some(opener) = self.opener.as_mut() else {
            return Ok(out);
        };
        while self.buf.len() >= CHUNK_FIXED {
            let len = u32::from_be_bytes([self.buf[29], self.buf[30], self.buf[31], self.buf[32]])
                as usize;
            let total = CHUNK_FIXED.saturating_add(len);
            if len
                > archipelago_proto::envelope::MAX_CHUNK_LEN + archipelago_proto::envelope::TAG_LEN
            {
                return Err(ClientError::Envelope(
                    archipelago_proto::EnvelopeError::ChunkTooLarge {
                        len,
                        max: archipelago_proto::envelope::MAX_CHUNK_LEN
                            + archipelago_proto::envelope::TAG_LEN,
                    },
                ));
            }
            if self.buf.len() < total {
                break;
            }
            let chunk = opener.open_chunk(&self.buf[..total])?;
            self.buf.drain(..total);
            if chunk.kind == ChunkKind::Error {
                self.error_report = true;
            }
            out.push(chunk);
        }
        Ok(out)
    }

    /// The stream ended with its final chunk and nothing after it.
    pub fn is_finished(&self) -> bool {
        self.opener.as_ref().is_some_and(|o| o.is_finished()) && self.buf.is_empty()
    }

    pub fn enclave_key_id(&self) -> Option<&KeyId> {
        self.enclave_key_id.as_ref()
    }

    /// Whether a chunk was an enclave error report.
    pub fn error_report(&self) -> bool {
        self.error_report
    }
}

/// Checks a response header against the record (our request id, our key,
/// an enclave we chose) and sets up the opener, with the pair's share from
/// `shares` when given.
fn open_header(
    header: &[u8],
    record: &RequestRecord,
    key: &SecretKey,
    shares: Option<&ShareCache>,
) -> Result<(ResponseOpener, KeyId), ClientError> {
    let view = peek_response_header(header)?;
    let expected_id = record
        .request_id_bytes()
        .ok_or_else(|| ClientError::UnknownRequest {
            request_id: record.request_id.clone(),
        })?;
    if view.request_id != expected_id {
        return Err(ClientError::Envelope(
            archipelago_proto::EnvelopeError::RequestIdMismatch,
        ));
    }
    let pk = recipient_key(record, &view.enclave_key_id)?;
    let share = shares.and_then(|c| c.get_or_make(key, &pk));
    let opener = ResponseOpener::new_with_share(header, key, &pk, &expected_id, share.as_deref())?;
    Ok((opener, view.enclave_key_id))
}

/// Opens a whole sealed output (`job.output`) with the record of its request.
pub fn open_payload(
    payload: &EncryptedPayload,
    record: &RequestRecord,
    key: &SecretKey,
    job_id: &str,
) -> Result<ConfidentialOutput, ClientError> {
    open_payload_with(payload, record, key, job_id, None)
}

/// As [`open_payload`], taking the key pair's Diffie-Hellman from `shares`
/// (made there on first use).
fn open_payload_with(
    payload: &EncryptedPayload,
    record: &RequestRecord,
    key: &SecretKey,
    job_id: &str,
    shares: Option<&ShareCache>,
) -> Result<ConfidentialOutput, ClientError> {
    if !payload.encrypted {
        return Err(ClientError::InvalidInput(
            "the output is not encrypted".into(),
        ));
    }
    if payload.key_id != key.client_id().as_str() {
        return Err(ClientError::InvalidInput(format!(
            "the output is sealed to {}, not to {}",
            payload.key_id,
            key.client_id()
        )));
    }
    let bytes = b64::decode_any(&payload.ciphertext, MAX_ENVELOPE_LEN * 4 / 3 + 4)
        .map_err(|e| ClientError::InvalidInput(format!("output.ciphertext: {e}")))?;
    let view = peek_response_header(&bytes)?;
    let expected_id = record
        .request_id_bytes()
        .ok_or_else(|| ClientError::UnknownRequest {
            request_id: record.request_id.clone(),
        })?;
    if view.request_id != expected_id {
        return Err(ClientError::Envelope(
            archipelago_proto::EnvelopeError::RequestIdMismatch,
        ));
    }
    if let Some(claimed) = &payload.enclave_key_id {
        if claimed != view.enclave_key_id.as_str() {
            return Err(ClientError::UnexpectedEnclave {
                found: view.enclave_key_id.to_string(),
                expected: claimed.clone(),
            });
        }
    }
    let pk = recipient_key(record, &view.enclave_key_id)?;
    let share = shares.and_then(|c| c.get_or_make(key, &pk));
    let (kind, data) = open_response_with_share(&bytes, key, &pk, &expected_id, share.as_deref())?;
    if kind == ChunkKind::Error {
        return Err(ClientError::EnclaveReported {
            job_id: job_id.to_string(),
            message: String::from_utf8_lossy(&data).chars().take(4096).collect(),
        });
    }
    Ok(ConfidentialOutput::new(data, view.enclave_key_id))
}

/// The SDK entry point.
pub struct Session {
    api: ApiClient,
    keystore: Keystore,
    policy: Policy,
    recipients: usize,
    records: Option<RequestRecords>,
    passphrase: Option<Passphrase>,
    passphrase_prompt: Option<PassphrasePrompt>,
    default_key: Option<String>,
    /// Enclaves verified under the policy, per workload, reused for
    /// [`RECIPIENT_CACHE_TTL`] (never past a key's routing or expiry time).
    verified: std::sync::Mutex<Vec<VerifiedCache>>,
    /// Client key ids registered with the coordinator by this session.
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
    /// HE secret keys this session loaded (loading one checks it against
    /// its public material, ~4 ms), each with the stamp of the key file it
    /// came from: a changed or deleted file is read again.
    pub(crate) he_secrets: std::sync::Mutex<Vec<crate::he::CachedHeKey>>,
    /// Wrap contexts prepared ahead of time for the enclaves this session
    /// seals to (see [`WrapPool`]).
    wraps: WrapPool,
    /// Each response's Diffie-Hellman, per client key and enclave key (see
    /// [`ShareCache`]).
    shares: ShareCache,
}

/// `DH(client key, enclave key)` for the pairs this session opened
/// responses for: every response from one enclave key to one client key
/// starts from it (each with its own nonce), so each open after the first
/// does no public-key work (it was one X25519, ≈ 45–65 µs, measured in
/// `job_e2e`). Bounded; cleared with the verified recipients. Each share
/// zeroizes itself on drop.
struct ShareCache {
    shares: std::sync::Mutex<
        std::collections::HashMap<(PublicKey, PublicKey), Arc<ResponseStaticShare>>,
    >,
}

/// Most (client key, enclave key) pairs a session keeps a share for.
const SHARE_PAIRS: usize = 256;

impl ShareCache {
    fn new() -> ShareCache {
        ShareCache {
            shares: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The share for `client` and `enclave`, made now if missing; `None`
    /// if the enclave key cannot make one (the opener then refuses it the
    /// usual way).
    fn get_or_make(
        &self,
        client: &SecretKey,
        enclave: &PublicKey,
    ) -> Option<Arc<ResponseStaticShare>> {
        let pair = (client.public(), *enclave);
        if let Some(s) = self.shares.lock().ok()?.get(&pair) {
            return Some(s.clone());
        }
        let share = Arc::new(ResponseStaticShare::new(client, enclave).ok()?);
        let mut m = self.shares.lock().ok()?;
        if m.len() >= SHARE_PAIRS {
            m.clear();
        }
        m.insert(pair, share.clone());
        Some(share)
    }

    fn clear(&self) {
        if let Ok(mut m) = self.shares.lock() {
            m.clear();
        }
    }
}

/// Wrap contexts ([`PreparedWrap`]) set up ahead for the enclave keys this
/// session seals to. A seal takes one per recipient (or, with none ready,
/// sets one up inline) and asks the pool's thread to prepare replacements,
/// so a session that keeps sealing to the same enclaves does the requests'
/// public-key work between jobs rather than on their critical path. A key's
/// contexts are used oldest first, and each seal announces the `enc` of the
/// one after it, so the enclave can do its side of that next request's
/// key agreement between jobs too (`docs/envelope.md`, next encs). Each
/// context is used once; a key's contexts are dropped (and zeroized) when
/// the session forgets its recipients or ends.
struct WrapPool {
    ready: Arc<std::sync::Mutex<std::collections::HashMap<PublicKey, VecDeque<PreparedWrap>>>>,
    /// To the preparing thread, started on first use; it ends with the session.
    worker: std::sync::Mutex<Option<std::sync::mpsc::Sender<Vec<PublicKey>>>>,
}

/// Most contexts kept ready per enclave key, and most keys with any.
const WRAPS_PER_KEY: usize = 2;
const WRAP_KEYS: usize = 64;

impl WrapPool {
    fn new() -> WrapPool {
        WrapPool {
            ready: Arc::new(std::sync::Mutex::new(std::collections::HashMap::new())),
            worker: std::sync::Mutex::new(None),
        }
    }

    /// One context per recipient, in order: a prepared one where ready
    /// (the oldest, which the last seal announced), and for each key with
    /// another one ready, that one's `enc`: what this seal announces for the
    /// next (`NextEnc`, so the enclave decapsulates it between jobs).
    fn take(
        &self,
        recipients: &[PublicKey],
    ) -> Result<(Vec<PreparedWrap>, Vec<NextEnc>), ClientError> {
        let mut out = Vec::with_capacity(recipients.len());
        let mut next = Vec::new();
        for pk in recipients {
            let (ready, following) = self
                .ready
                .lock()
                .ok()
                .and_then(|mut m| {
                    m.get_mut(pk)
                        .map(|v| (v.pop_front(), v.front().map(|w| *w.enc())))
                })
                .unwrap_or((None, None));
            out.push(match ready {
                Some(w) => w,
                None => PreparedWrap::new(pk)?,
            });
            if let Some(enc) = following {
                next.push(NextEnc {
                    recipient: KeyId::enclave(&pk.0),
                    enc,
                });
            }
        }
        Ok((out, next))
    }

    /// Asks the thread to top up these keys' contexts.
    fn refill(&self, recipients: &[PublicKey]) {
        let Ok(mut worker) = self.worker.lock() else {
            return;
        };
        if let Some(tx) = worker.as_ref() {
            if tx.send(recipients.to_vec()).is_ok() {
                return;
            }
        }
        let (tx, rx) = std::sync::mpsc::channel::<Vec<PublicKey>>();
        let ready = Arc::downgrade(&self.ready);
        let started = std::thread::Builder::new()
            .name("envelope-wraps".into())
            .spawn(move || {
                background_priority();
                while let Ok(keys) = rx.recv() {
                    let Some(ready) = ready.upgrade() else {
                        return;
                    };
                    for pk in keys {
                        let have = ready.lock().map(|m| m.get(&pk).map_or(0, VecDeque::len));
                        let Ok(have) = have else { return };
                        for _ in have..WRAPS_PER_KEY {
                            let Ok(w) = PreparedWrap::new(&pk) else { break };
                            let Ok(mut m) = ready.lock() else { return };
                            if m.len() >= WRAP_KEYS && !m.contains_key(&pk) {
                                // Keys this session no longer seals to go first.
                                m.retain(|_, v| !v.is_empty());
                                if m.len() >= WRAP_KEYS {
                                    break;
                                }
                            }
                            let v = m.entry(pk).or_default();
                            if v.len() < WRAPS_PER_KEY {
                                v.push_back(w);
                            }
                        }
                    }
                }
            });
        if started.is_ok() && tx.send(recipients.to_vec()).is_ok() {
            *worker = Some(tx);
        }
    }

    fn clear(&self) {
        if let Ok(mut m) = self.ready.lock() {
            m.clear();
        }
    }
}

/// Puts the calling thread at `SCHED_IDLE`: it runs only on a CPU nothing
/// else wants. For the wrap pool, whose work is for later seals: woken at
/// normal priority by a seal, it preempted the sealing thread itself on the
/// same CPU in a fifth of the seals traced (`perf sched`, `job_e2e`), ~0.1
/// ms on the request's path. If it starves, a seal sets its wrap up inline,
/// as without a pool. Best effort: a refusal leaves the thread as it was.
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
            tracing::debug!(error = ?e, "the wrap pool's thread keeps its priority");
        }
    }
}

/// Asks the user for the passphrase of a sealed key (the CLI reads it from
/// the terminal). Called with the key id; `None` means "no answer".
pub type PassphrasePrompt = Box<dyn Fn(&str) -> Option<Passphrase> + Send + Sync>;

/// Enclaves verified for a workload (or any), and when.
type VerifiedCache = (Option<i64>, Instant, Vec<VerifiedEnclave>);

/// How long a session reuses the enclaves it verified before fetching and
/// verifying the list again. Each use also drops keys within
/// [`EXPIRY_MARGIN_SECS`] of their `valid_until` or expiry.
pub const RECIPIENT_CACHE_TTL: Duration = Duration::from_secs(30);
const EXPIRY_MARGIN_SECS: i64 = 10;

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("api", &self.api)
            .field("keystore", &self.keystore)
            .field("recipients", &self.recipients)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(api: ApiClient, keystore: Keystore, policy: Policy) -> Session {
        Session {
            api,
            keystore,
            policy,
            recipients: crate::config::DEFAULT_RECIPIENTS,
            records: None,
            passphrase: None,
            passphrase_prompt: None,
            default_key: None,
            verified: std::sync::Mutex::new(Vec::new()),
            registered: std::sync::Mutex::new(std::collections::HashSet::new()),
            he_secrets: std::sync::Mutex::new(Vec::new()),
            wraps: WrapPool::new(),
            shares: ShareCache::new(),
        }
    }

    /// A session from a [`crate::ClientConfig`]; records live beside the keystore.
    pub fn from_config(c: &crate::ClientConfig) -> Result<Session, ClientError> {
        let api = ApiClient::new(&c.url, c.api_key.clone())?;
        let keystore = Keystore::open(&c.keystore_dir)?;
        let records = RequestRecords::open(c.keystore_dir.join("requests"))?;
        Ok(Session::new(api, keystore, c.policy()?)
            .with_recipients(c.recipients)
            .with_records(records)
            .with_default_key(c.key_id.clone())
            .with_passphrase(Passphrase::from_env()))
    }

    pub fn with_recipients(mut self, k: usize) -> Self {
        self.recipients = k.clamp(1, archipelago_proto::envelope::MAX_RECIPIENTS);
        self
    }
    pub fn with_records(mut self, r: RequestRecords) -> Self {
        self.records = Some(r);
        self
    }
    pub fn with_passphrase(mut self, p: Option<Passphrase>) -> Self {
        self.passphrase = p;
        self
    }
    /// Where to ask for a passphrase when a sealed key is needed and none
    /// was given (environment or file).
    pub fn with_passphrase_prompt(mut self, p: Option<PassphrasePrompt>) -> Self {
        self.passphrase_prompt = p;
        self
    }
    pub fn with_default_key(mut self, k: Option<String>) -> Self {
        self.default_key = k;
        self
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }
    pub fn keystore(&self) -> &Keystore {
        &self.keystore
    }
    pub fn policy(&self) -> &Policy {
        &self.policy
    }
    pub fn records(&self) -> Option<&RequestRecords> {
        self.records.as_ref()
    }
    /// The configured default key id, if any.
    pub fn default_key_id(&self) -> Option<&str> {
        self.default_key.as_deref()
    }
    pub(crate) fn passphrase_ref(&self) -> Option<&Passphrase> {
        self.passphrase.as_ref()
    }

    /// Runs `load` with the session's passphrase; when the key is sealed and
    /// no passphrase was given, asks the prompt (if any) and retries once.
    pub(crate) fn with_key_passphrase<T>(
        &self,
        key_id: &str,
        load: impl Fn(Option<&Passphrase>) -> Result<T, KeystoreError>,
    ) -> Result<T, ClientError> {
        match load(self.passphrase.as_ref()) {
            Err(KeystoreError::PassphraseRequired { .. })
                if self.passphrase.is_none() && self.passphrase_prompt.is_some() =>
            {
                let asked = self.passphrase_prompt.as_ref().and_then(|ask| ask(key_id));
                Ok(load(asked.as_ref())?)
            }
            r => Ok(r?),
        }
    }

    /// The stored key to use: `key_id`, else the configured one, else the
    /// newest in the keystore.
    pub fn key_meta(&self, key_id: Option<&str>) -> Result<StoredKey, ClientError> {
        Ok(match key_id.or(self.default_key.as_deref()) {
            Some(id) => self.keystore.get(id)?,
            None => self.keystore.default_key()?,
        })
    }

    /// Loads a secret key. A sealed key opens with the session's passphrase
    /// (environment or file); without one, the prompt (if any) is asked.
    pub fn load_key(&self, key_id: &str) -> Result<SecretKey, ClientError> {
        self.with_key_passphrase(key_id, |p| self.keystore.load(key_id, p))
    }

    /// Creates a key in the keystore and registers its public half.
    pub async fn create_key(&self, label: Option<&str>) -> Result<StoredKey, ClientError> {
        let (stored, _sk) = self.keystore.create(label, self.passphrase.as_ref())?;
        self.register(&stored).await?;
        Ok(stored)
    }

    /// Registers a stored key's public half with the coordinator
    /// (idempotent: a key already registered is fine).
    pub async fn register(&self, stored: &StoredKey) -> Result<(), ClientError> {
        let id = stored.key_id.to_string();
        if self.registered.lock().is_ok_and(|r| r.contains(&id)) {
            return Ok(());
        }
        self.register_now(stored).await?;
        if let Ok(mut r) = self.registered.lock() {
            r.insert(id);
        }
        Ok(())
    }

    async fn register_now(&self, stored: &StoredKey) -> Result<(), ClientError> {
        let req = archipelago_proto::api::RegisterKeyRequest {
            public_key: stored.public_key.clone(),
            kind: Some(archipelago_proto::api::KEY_KIND_X25519.into()),
            key_id: Some(stored.key_id.to_string()),
            evaluation_keys: None,
            label: stored.label.clone(),
        };
        match self.api.register_key(&req).await {
            Ok(_) => Ok(()),
            Err(ClientError::Api { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Fetches the enclaves for `workload_id` and appraises them with the
    /// user's policy.
    pub async fn appraise(&self, workload_id: Option<i64>) -> Result<Appraisal, ClientError> {
        let list = self.api.enclaves(workload_id).await?;
        Ok(appraise_enclaves(&list.enclaves, &self.policy, now_secs()))
    }

    /// Verified recipients for `workload_id`, or a clear error. The
    /// enclaves verified for a workload are reused for
    /// [`RECIPIENT_CACHE_TTL`]; see [`Session::forget_recipients`].
    pub async fn choose_recipients(
        &self,
        workload_id: Option<i64>,
    ) -> Result<Vec<VerifiedEnclave>, ClientError> {
        let now = now_secs() as i64;
        let live = |e: &VerifiedEnclave| {
            e.valid_until > now + EXPIRY_MARGIN_SECS && e.key_expires_at > now + EXPIRY_MARGIN_SECS
        };
        if let Ok(cache) = self.verified.lock() {
            if let Some((_, _, list)) = cache
                .iter()
                .find(|(w, at, _)| *w == workload_id && at.elapsed() < RECIPIENT_CACHE_TTL)
            {
                let list: Vec<VerifiedEnclave> = list.iter().filter(|e| live(e)).cloned().collect();
                if !list.is_empty() {
                    return Ok(pick_recipients(&list, self.recipients));
                }
            }
        }
        let a = self.appraise(workload_id).await?;
        let mut accepted = a.accepted;
        if let Some(w) = workload_id {
            accepted.retain(|e| e.workload_ids.is_empty() || e.workload_ids.contains(&w));
        }
        if accepted.is_empty() {
            return Err(ClientError::NoAcceptableEnclave {
                workload_id,
                refused: a.refused,
            });
        }
        if let Ok(mut cache) = self.verified.lock() {
            cache.retain(|(w, at, _)| *w != workload_id && at.elapsed() < RECIPIENT_CACHE_TTL);
            cache.push((workload_id, Instant::now(), accepted.clone()));
        }
        Ok(pick_recipients(&accepted, self.recipients))
    }

    /// Drops the enclaves this session verified, so the next seal fetches
    /// and verifies the list again (e.g. after a job failed because none of
    /// its recipients was available).
    pub fn forget_recipients(&self) {
        if let Ok(mut cache) = self.verified.lock() {
            cache.clear();
        }
        self.wraps.clear();
        self.shares.clear();
    }

    /// Seals `input` for `workload_id` (None: unbound, see
    /// [`UNBOUND_WORKLOAD`]) to K verified enclaves, under the client key
    /// `key`. The record is saved when the session has a records directory.
    pub async fn seal(
        &self,
        workload_id: Option<i64>,
        input: &[u8],
        key: &SecretKey,
    ) -> Result<Sealed, ClientError> {
        if let Some(w) = workload_id {
            if w <= 0 {
                return Err(ClientError::InvalidInput(format!(
                    "workload_id {w} must be positive"
                )));
            }
        }
        let recipients = self.choose_recipients(workload_id).await?;
        self.seal_to(workload_id, input, key, recipients)
    }

    /// Seals to the given, already verified, recipients.
    pub fn seal_to(
        &self,
        workload_id: Option<i64>,
        input: &[u8],
        key: &SecretKey,
        recipients: Vec<VerifiedEnclave>,
    ) -> Result<Sealed, ClientError> {
        let workload = workload_id.map(|w| w as u64).unwrap_or(UNBOUND_WORKLOAD);
        let pks: Vec<PublicKey> = recipients.iter().map(|r| r.public_key).collect();
        let (wraps, next) = self.wraps.take(&pks)?;
        let body = RequestBody::new(workload, input.to_vec(), key.public()).with_next_encs(next);
        let envelope = seal_request_prepared(&body, wraps)?;
        self.wraps.refill(&pks);
        let sealed = Sealed {
            envelope,
            request_id: body.request_id,
            client_key_id: key.client_id(),
            workload_id: workload,
            recipients,
        };
        if let Some(r) = &self.records {
            r.save(&sealed.record())?;
        }
        tracing::debug!(
            workload_id = workload,
            recipients = sealed.recipients.len(),
            envelope_len = sealed.envelope.len(),
            "request sealed"
        );
        Ok(sealed)
    }

    /// Submits a sealed request; records the job id.
    pub async fn submit(&self, sealed: &Sealed) -> Result<Job, ClientError> {
        let req = sealed.submit_request(sealed.workload_id as i64);
        let idem = hex::encode(sealed.request_id);
        let job = self.api.submit_job(&req, Some(&idem)).await?;
        if let Some(r) = &self.records {
            let mut rec = sealed.record();
            rec.job_id = Some(job.id.clone());
            r.save(&rec)?;
        }
        Ok(job)
    }

    /// Waits until the job is terminal (streaming its events), at most `timeout`.
    pub async fn wait(&self, job_id: &str, timeout: Duration) -> Result<Job, ClientError> {
        self.follow(job_id, timeout, None, &mut |_| {})
            .await
            .map(|(j, _)| j)
    }

    /// Follows a job's event stream until it ends; with a record and key,
    /// streamed chunks are opened and reported as [`StreamEvent::Data`].
    /// Falls back to polling when the stream breaks. Returns the terminal
    /// job and whether the streamed response was complete.
    pub async fn follow(
        &self,
        job_id: &str,
        timeout: Duration,
        open: Option<(&RequestRecord, &SecretKey)>,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<(Job, bool), ClientError> {
        let deadline = Instant::now() + timeout;
        let mut decoder = open.map(|(r, k)| StreamDecoder {
            shares: Some(&self.shares),
            ..StreamDecoder::new(r, k)
        });
        let mut last_state = String::new();
        fn report(state: &str, last: &mut String, on_event: &mut (dyn FnMut(StreamEvent) + Send)) {
            if state != last {
                *last = state.to_string();
                on_event(StreamEvent::State(state.to_string()));
            }
        }
        if let Ok(stream) = self.api.stream_job(job_id).await {
            let mut stream = Box::pin(stream);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let ev = match tokio::time::timeout(left, stream.next()).await {
                    Err(_) => break,
                    Ok(None) | Ok(Some(Err(_))) => break,
                    Ok(Some(Ok(ev))) => ev,
                };
                match ev.event.as_str() {
                    "state" | "done" => {
                        let job: Job =
                            serde_json::from_str(&ev.data).map_err(|e| ClientError::Protocol {
                                what: "job event".into(),
                                detail: e.to_string(),
                            })?;
                        report(&job.state, &mut last_state, &mut *on_event);
                        if ev.event == "done" || is_terminal(&job.state) {
                            let finished = decoder.as_ref().is_some_and(|d| d.is_finished());
                            return Ok((job, finished));
                        }
                    }
                    "chunk" => {
                        let Some(d) = decoder.as_mut() else { continue };
                        let c: archipelago_proto::api::JobChunk = serde_json::from_str(&ev.data)
                            .map_err(|e| ClientError::Protocol {
                                what: "chunk event".into(),
                                detail: e.to_string(),
                            })?;
                        let bytes =
                            b64::decode_any(&c.data, 2 * 1024 * 1024 * 4 / 3 + 8).map_err(|e| {
                                ClientError::Protocol {
                                    what: "chunk event".into(),
                                    detail: e.to_string(),
                                }
                            })?;
                        match d.feed(&bytes) {
                            Ok(chunks) => {
                                for chunk in chunks {
                                    if chunk.kind == ChunkKind::Data {
                                        on_event(StreamEvent::Data(chunk.into_data()));
                                    }
                                }
                            }
                            Err(e) => {
                                // Stop streaming; the whole output, opened
                                // and checked at the end, is authoritative.
                                tracing::warn!(job_id, error = %e, "streamed output refused; waiting for the whole output");
                                decoder = None;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // Polling fallback.
        loop {
            let job = self.api.get_job(job_id).await?;
            report(&job.state, &mut last_state, &mut *on_event);
            if is_terminal(&job.state) {
                return Ok((job, false));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout {
                    job_id: job_id.to_string(),
                    state: job.state,
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Opens a terminal job's output with its request record.
    pub fn open_job(
        &self,
        job: &Job,
        record: &RequestRecord,
        key: &SecretKey,
    ) -> Result<ConfidentialOutput, ClientError> {
        if job.state == "failed" {
            if job
                .error
                .as_ref()
                .is_some_and(|e| e.code == "no_enclave_available")
            {
                // The enclaves chosen are gone: verify afresh next time.
                self.forget_recipients();
            }
            // An enclave error report travels sealed in the output.
            if let Some(out) = &job.output {
                if let Ok(p) = serde_json::from_value::<EncryptedPayload>(out.clone()) {
                    open_payload_with(&p, record, key, &job.id, Some(&self.shares))?;
                }
            }
        }
        let out = finished_output(job)?;
        let payload: EncryptedPayload =
            serde_json::from_value(out.clone()).map_err(|_| ClientError::Protocol {
                what: format!("job {}", job.id),
                detail: "a confidential job's output is not {\"encrypted\": true, ...}".into(),
            })?;
        open_payload_with(&payload, record, key, &job.id, Some(&self.shares))
    }

    /// Seals, submits, follows (reporting state changes and streamed
    /// chunks) and opens the output of a confidential TEE job.
    pub async fn run_streaming(
        &self,
        workload_id: i64,
        input: &[u8],
        key_id: Option<&str>,
        timeout: Duration,
        on_event: &mut (dyn FnMut(StreamEvent) + Send),
    ) -> Result<(Job, ConfidentialOutput), ClientError> {
        let meta = self.key_meta(key_id)?;
        let key = self.load_key(meta.key_id.as_str())?;
        self.register(&meta).await?;
        let sealed = self.seal(Some(workload_id), input, &key).await?;
        let job = self.submit(&sealed).await?;
        debug_assert_eq!(job.mode, MODE_TEE);
        let mut record = sealed.record();
        record.job_id = Some(job.id.clone());
        let (job, _) = self
            .follow(&job.id, timeout, Some((&record, &key)), on_event)
            .await?;
        let out = self.open_job(&job, &record, &key)?;
        Ok((job, out))
    }

    /// [`Session::run_streaming`] without progress reports.
    pub async fn run(
        &self,
        workload_id: i64,
        input: &[u8],
        key_id: Option<&str>,
        timeout: Duration,
    ) -> Result<(Job, ConfidentialOutput), ClientError> {
        self.run_streaming(workload_id, input, key_id, timeout, &mut |_| {})
            .await
    }

    /// Decrypts the output of an earlier job submitted by this machine.
    pub async fn decrypt_job(&self, job: &Job) -> Result<ConfidentialOutput, ClientError> {
        let records = self
            .records
            .as_ref()
            .ok_or_else(|| ClientError::UnknownRequest {
                request_id: "(no records directory)".into(),
            })?;
        let record = records
            .by_job(&job.id)?
            .ok_or_else(|| ClientError::UnknownRequest {
                request_id: format!("of job {}", job.id),
            })?;
        let key = self.load_key(&record.client_key_id)?;
        self.open_job(job, &record, &key)
    }
}

/// Terminal job states.
pub fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// The public key of the recipient enclave that a response says wrote it,
/// refused unless it is one this machine chose for the request.
fn recipient_key(record: &RequestRecord, enclave_key_id: &KeyId) -> Result<PublicKey, ClientError> {
    let recipient = record
        .recipients
        .iter()
        .find(|r| r.key_id == enclave_key_id.as_str())
        .ok_or_else(|| ClientError::UnexpectedEnclave {
            found: enclave_key_id.to_string(),
            expected: record
                .recipients
                .iter()
                .map(|r| r.key_id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    PublicKey::from_base64(&recipient.public_key).map_err(|_| ClientError::Protocol {
        what: "request record".into(),
        detail: "recipient public key is not base64".into(),
    })
}

/// A terminal job's output, or the error its state means: cancelled,
/// failed (with the job's error code and message), or not finished.
pub(crate) fn finished_output(job: &Job) -> Result<&serde_json::Value, ClientError> {
    match job.state.as_str() {
        "succeeded" => job.output.as_ref().ok_or_else(|| ClientError::Protocol {
            what: format!("job {}", job.id),
            detail: "succeeded without an output".into(),
        }),
        "cancelled" => Err(ClientError::JobCancelled {
            job_id: job.id.clone(),
        }),
        "failed" => {
            let (code, message) = job
                .error
                .as_ref()
                .map(|e| (e.code.clone(), e.message.clone()))
                .unwrap_or_else(|| ("failed".into(), "no reason given".into()));
            Err(ClientError::JobFailed {
                job_id: job.id.clone(),
                code,
                message,
            })
        }
        other => Err(ClientError::Timeout {
            job_id: job.id.clone(),
            state: other.to_string(),
            secs: 0,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::tests::{offer, policy_for, sim_root};
    use archipelago_proto::envelope::{open_request, seal_response, ResponseSealer};

    #[test]
    fn sealed_keys_open_with_the_prompted_passphrase() {
        let root = sim_root();
        let d = tempfile::tempdir().unwrap();
        let session = |prompt: Option<PassphrasePrompt>| {
            Session::new(
                ApiClient::new("http://127.0.0.1:1", None).unwrap(),
                Keystore::open(d.path()).unwrap(),
                policy_for(&root),
            )
            .with_passphrase_prompt(prompt)
        };
        let (stored, sk) = session(None)
            .keystore()
            .create(None, Some(&Passphrase::new("correct horse")))
            .unwrap();
        let id = stored.key_id.as_str();
        // No passphrase and nobody to ask: the error says what to set.
        assert!(matches!(
            session(None).load_key(id),
            Err(ClientError::Keystore(
                KeystoreError::PassphraseRequired { .. }
            ))
        ));
        // The prompt is asked with the key id, and its answer opens the key.
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let s = session(Some(Box::new(move |k: &str| {
            log.lock().unwrap().push(k.to_string());
            Some(Passphrase::new("correct horse"))
        })));
        assert_eq!(
            s.load_key(id).unwrap().public().to_base64(),
            sk.public().to_base64()
        );
        assert_eq!(asked.lock().unwrap().as_slice(), [id.to_string()]);
        // A wrong answer is refused as a wrong passphrase, not a missing one.
        let s = session(Some(Box::new(|_: &str| Some(Passphrase::new("wrong")))));
        assert!(matches!(
            s.load_key(id),
            Err(ClientError::Keystore(KeystoreError::WrongPassphrase { .. }))
        ));
    }

    #[test]
    fn he_secret_keys_are_loaded_once_until_their_file_changes() {
        let root = sim_root();
        let d = tempfile::tempdir().unwrap();
        let s = Session::new(
            ApiClient::new("http://127.0.0.1:1", None).unwrap(),
            Keystore::open(d.path()).unwrap(),
            policy_for(&root),
        );
        let (stored, _, _) = s.keystore().create_he(None, None).unwrap();
        let a = s.load_he_key(&stored.key_id).unwrap();
        let b = s.load_he_key(&stored.key_id).unwrap();
        assert!(std::sync::Arc::ptr_eq(&a, &b), "second load was not cached");
        // A rewritten file (another length or time) is read again ...
        let bytes = std::fs::read(&stored.path).unwrap();
        let mut longer = bytes.clone();
        longer.push(b'\n');
        crate::keystore::write_secret_file(&stored.path, &longer).unwrap();
        let c = s.load_he_key(&stored.key_id).unwrap();
        assert!(
            !std::sync::Arc::ptr_eq(&a, &c),
            "changed file served from cache"
        );
        assert_eq!(c.key_id(), stored.key_id);
        // ... and a deleted key is not served from the cache.
        s.keystore().delete_he(&stored.key_id).unwrap();
        assert!(s.load_he_key(&stored.key_id).is_err());
    }

    fn sealed_fixture() -> (SecretKey, SecretKey, Sealed, Session) {
        let root = sim_root();
        let now = now_secs();
        let (ek, info) = offer(&root, [1; 48], "isl_a", now);
        let a = appraise_enclaves(&[info], &policy_for(&root), now);
        let d = tempfile::tempdir().unwrap();
        let s = Session::new(
            ApiClient::new("http://127.0.0.1:1", None).unwrap(),
            Keystore::open(d.path()).unwrap(),
            policy_for(&root),
        );
        let ck = SecretKey::generate();
        let sealed = s
            .seal_to(Some(5), br#"{"text":"hi"}"#, &ck, a.accepted)
            .unwrap();
        (ck, ek, sealed, s)
    }

    /// The pool's thread prepares wrap contexts after a seal asks for them;
    /// a seal then takes one (each once, oldest first) and announces the
    /// enc of the one it leaves, which the next seal uses; forgetting the
    /// recipients drops them.
    #[test]
    fn wrap_pool_prepares_replacements_off_the_seal_path() {
        let pool = WrapPool::new();
        let k = SecretKey::generate().public();
        let ready = |pool: &WrapPool| pool.ready.lock().unwrap().get(&k).map_or(0, VecDeque::len);
        let fill = |pool: &WrapPool| {
            pool.refill(&[k]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while ready(pool) < WRAPS_PER_KEY {
                assert!(Instant::now() < deadline, "no wraps prepared");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // Nothing prepared yet: set up inline, nothing to announce.
        let (taken, next) = pool.take(&[k]).unwrap();
        assert_eq!(taken[0].recipient(), &k);
        assert!(next.is_empty());
        fill(&pool);
        let (taken, next) = pool.take(&[k]).unwrap();
        assert_eq!(taken[0].recipient(), &k);
        assert_eq!(ready(&pool), WRAPS_PER_KEY - 1);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].recipient, KeyId::enclave(&k.0));
        assert_ne!(&next[0].enc, taken[0].enc());
        // The refill adds behind the announced one, which goes next.
        fill(&pool);
        let (again, _) = pool.take(&[k]).unwrap();
        assert_eq!(
            again[0].enc(),
            &next[0].enc,
            "the announced wrap is used next"
        );
        pool.clear();
        assert_eq!(ready(&pool), 0);
    }

    #[test]
    fn seal_then_open_whole_and_streamed() {
        let (ck, ek, sealed, s) = sealed_fixture();
        let req = sealed.submit_request(5);
        assert!(req.confidential);
        assert_eq!(req.input["encrypted"], true);
        assert_eq!(req.input["key_id"], ck.client_id().as_str());
        // The enclave side.
        let env = b64::decode_any(req.input["ciphertext"].as_str().unwrap(), 1 << 20).unwrap();
        let opened = open_request(
            &env,
            &ek,
            &archipelago_proto::envelope::Expectations {
                workload_id: Some(5),
                client_key_id: Some(&ck.client_id()),
            },
        );
        let opened = match opened {
            Ok(o) => o,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(opened.body.input(), br#"{"text":"hi"}"#);
        let resp = seal_response(
            &ek,
            &ck.public(),
            sealed.request_id,
            ChunkKind::Data,
            b"{\"text\":\"ok\"}",
        )
        .unwrap();
        let job = Job {
            id: "job_1".into(),
            workload_id: 5,
            state: "succeeded".into(),
            confidential: true,
            mode: "tee".into(),
            encryption_key_id: Some(ck.client_id().to_string()),
            recipients: vec![],
            island_id: None,
            output: Some(
                serde_json::json!({"encrypted": true, "key_id": ck.client_id().as_str(), "ciphertext": b64::encode_url(&resp), "enclave_key_id": ek.enclave_id().as_str()}),
            ),
            error: None,
            hold: 0,
            cost: None,
            execution_ms: None,
            attempts: 1,
            created_at: 0,
            updated_at: 0,
            deadline_at: 0,
        };
        let record = sealed.record();
        let out = s.open_job(&job, &record, &ck).unwrap();
        assert_eq!(out.data(), b"{\"text\":\"ok\"}");
        assert!(format!("{out:?}").contains("redacted"));
        // Streamed, split at awkward places.
        let (mut sealer, header) =
            ResponseSealer::new(&ek, &ck.public(), sealed.request_id).unwrap();
        let mut all = header;
        all.extend(
            sealer
                .seal_chunk(b"{\"delta\":\"o\"}\n", ChunkKind::Data, false)
                .unwrap(),
        );
        all.extend(
            sealer
                .seal_chunk(b"{\"delta\":\"k\"}\n", ChunkKind::Data, true)
                .unwrap(),
        );
        let mut dec = StreamDecoder::new(&record, &ck);
        let mut got = Vec::new();
        for piece in all.chunks(7) {
            for c in dec.feed(piece).unwrap() {
                got.extend_from_slice(c.data());
            }
        }
        assert!(dec.is_finished());
        assert_eq!(got, b"{\"delta\":\"o\"}\n{\"delta\":\"k\"}\n");
        // The same with the session's kept shares: made once, then reused.
        let cache = ShareCache::new();
        for _ in 0..2 {
            let mut dec = StreamDecoder {
                shares: Some(&cache),
                ..StreamDecoder::new(&record, &ck)
            };
            let mut again = Vec::new();
            for c in dec.feed(&all).unwrap() {
                again.extend_from_slice(c.data());
            }
            assert!(dec.is_finished());
            assert_eq!(again, got);
            assert_eq!(cache.shares.lock().unwrap().len(), 1);
        }
    }

    #[test]
    fn outputs_from_other_enclaves_or_requests_are_refused() {
        let (ck, _ek, sealed, _s) = sealed_fixture();
        let record = sealed.record();
        // An enclave that was not chosen.
        let intruder = SecretKey::generate();
        let resp = seal_response(
            &intruder,
            &ck.public(),
            sealed.request_id,
            ChunkKind::Data,
            b"x",
        )
        .unwrap();
        let p = EncryptedPayload {
            encrypted: true,
            key_id: ck.client_id().to_string(),
            ciphertext: b64::encode_url(&resp),
            enclave_key_id: None,
        };
        assert!(matches!(
            open_payload(&p, &record, &ck, "j"),
            Err(ClientError::UnexpectedEnclave { .. })
        ));
        // Another request id.
        let resp =
            seal_response(&intruder, &ck.public(), [0u8; 16], ChunkKind::Data, b"x").unwrap();
        let p = EncryptedPayload {
            ciphertext: b64::encode_url(&resp),
            ..p
        };
        assert!(matches!(
            open_payload(&p, &record, &ck, "j"),
            Err(ClientError::Envelope(
                archipelago_proto::EnvelopeError::RequestIdMismatch
            ))
        ));
        // Garbage.
        let p = EncryptedPayload {
            ciphertext: "AAAA".into(),
            ..p
        };
        assert!(matches!(
            open_payload(&p, &record, &ck, "j"),
            Err(ClientError::Envelope(_))
        ));
    }

    /// The wrap pool's thread runs at `SCHED_IDLE`, so its public-key work
    /// never preempts a seal or anything else that wants the CPU.
    #[cfg(target_os = "linux")]
    #[test]
    fn wrap_pool_thread_runs_at_idle_priority() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let policy = std::thread::spawn(|| {
            background_priority();
            thread_priority::thread_schedule_policy().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(
            policy,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)
        );
    }

    /// Outputs open the same with the session's cached static shares: one
    /// share per (client key, enclave key), made on the first open; an
    /// intruder's response is still refused.
    #[test]
    fn outputs_open_with_cached_shares() {
        let (ck, ek, sealed, _s) = sealed_fixture();
        let record = sealed.record();
        let cache = ShareCache::new();
        for i in 0..3u8 {
            let out = vec![b'a' + i; 10];
            let resp =
                seal_response(&ek, &ck.public(), sealed.request_id, ChunkKind::Data, &out).unwrap();
            let p = EncryptedPayload {
                encrypted: true,
                key_id: ck.client_id().to_string(),
                ciphertext: b64::encode_url(&resp),
                enclave_key_id: None,
            };
            let opened = open_payload_with(&p, &record, &ck, "j", Some(&cache)).unwrap();
            assert_eq!(opened.data(), &out[..]);
            assert_eq!(cache.shares.lock().unwrap().len(), 1);
        }
        let forged = seal_response(
            &SecretKey::generate(),
            &ck.public(),
            sealed.request_id,
            ChunkKind::Data,
            b"x",
        )
        .unwrap();
        // The forger's header claims the chosen enclave's key id.
        let mut spliced = forged.clone();
        let ek_id = ek.enclave_id();
        spliced[24 + 1..24 + 30].copy_from_slice(ek_id.as_str().as_bytes());
        let p = EncryptedPayload {
            encrypted: true,
            key_id: ck.client_id().to_string(),
            ciphertext: b64::encode_url(&spliced),
            enclave_key_id: None,
        };
        assert!(matches!(
            open_payload_with(&p, &record, &ck, "j", Some(&cache)),
            Err(ClientError::Envelope(
                archipelago_proto::EnvelopeError::ChunkAuthFailed(0)
            ))
        ));
        cache.clear();
        assert!(cache.shares.lock().unwrap().is_empty());
    }

    #[test]
    fn enclave_error_reports_are_surfaced() {
        let (ck, ek, sealed, _s) = sealed_fixture();
        let resp = seal_response(
            &ek,
            &ck.public(),
            sealed.request_id,
            ChunkKind::Error,
            b"prompt too long",
        )
        .unwrap();
        let p = EncryptedPayload {
            encrypted: true,
            key_id: ck.client_id().to_string(),
            ciphertext: b64::encode_url(&resp),
            enclave_key_id: None,
        };
        let e = open_payload(&p, &sealed.record(), &ck, "job_9").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the enclave reported an error for job job_9: prompt too long"
        );
    }

    #[test]
    fn no_enclave_message_groups_refusals() {
        let e = ClientError::NoAcceptableEnclave {
            workload_id: Some(42),
            refused: vec![
                crate::verify::Refusal {
                    key_id: "ek_a".into(),
                    tee_type: "sim".into(),
                    island_id: "i".into(),
                    measurement: None,
                    reason: crate::verify::RefusalReason::Policy {
                        field: "measurement.measurement".into()
                    },
                    detail: String::new(),
                };
                2
            ],
        };
        assert_eq!(
            e.to_string(),
            "no attested enclave for workload 42 matches your policy: 2 refused because measurement not in allow-list; see `archipelago attest list`"
        );
    }
}
