//! The island ↔ enclave channel: the only way into or out of the trusted
//! `archipelago-enclave` process.
//!
//! The island agent is untrusted: it may read, drop, reorder or forge
//! anything on this channel. So the channel carries only what the island may
//! see anyway — request envelopes and sealed responses (ciphertext), public
//! enclave keys, evidence, job ids, sizes and error *codes*. No plaintext of
//! a job and no secret key ever crosses it; a failure the client should read
//! in detail is sealed to the client as an error chunk
//! ([`crate::envelope::ChunkKind::Error`]) and only its [`ErrorCode`] travels
//! in clear.
//!
//! # Framing
//!
//! Each message is one frame on the enclave's stdin (island → enclave) or
//! stdout (enclave → island):
//!
//! ```text
//! length u32 big-endian | body (length bytes): postcard encoding of the message
//! ```
//!
//! `1 ≤ length ≤` [`MAX_FRAME_LEN`] (17 MiB: a 16 MiB envelope plus room).
//! A reader refuses an oversized length *before* allocating, a zero length,
//! a stream that ends inside a frame, a body that does not decode, bytes left
//! over after the message, and a message whose fields break their limits —
//! each with its own [`ChannelError`]. A clean end of stream between frames
//! is `Ok(None)`. The enclave treats any refused frame as fatal (it answers
//! [`ErrorCode::BadFrame`] with `req = 0` if it can, then exits); the island
//! should restart it.
//!
//! Bodies are [postcard](https://docs.rs/postcard) (serde, varint integers,
//! enum variants by index). Variants and fields are **append-only**: never
//! reorder or remove one; bump [`PROTOCOL_VERSION`] for any other change.
//!
//! # Messages
//!
//! The island sends [`IslandFrame`] `{ req, msg: ToEnclave }`; the enclave
//! sends [`EnclaveFrame`] `{ req, msg: FromEnclave }`. `req` is chosen by the
//! island (any non-zero `u64`, unique among its outstanding requests); every
//! reply to a request echoes it. `req = 0` marks an unsolicited enclave
//! message ([`FromEnclave::KeysChanged`], or a `Failed` for a bad frame).
//!
//! | island → enclave | enclave → island (same `req`) |
//! |---|---|
//! | `Hello { version }` | `Ready { version, tee, measurement, keys, workloads }` |
//! | `Attest { nonce }` | `Evidence { nonce, keys: [KeyEvidence] }` or `Failed { code }` |
//! | `RunJob(JobRequest)` | `ResponseHeader`, `ResponseChunk`… then `JobDone` or `JobFailed` |
//! | `Rotate` | `Rotated { keys }` |
//! | `Shutdown` | `Bye` (after running jobs finish), then the enclave exits |
//!
//! Control requests (`Hello`, `Attest`, `Rotate`) are answered promptly even
//! while jobs run; job frames of concurrent jobs may interleave (tell them
//! apart by `req` or `job_id`). Every `RunJob` ends with exactly one
//! `JobDone` or `JobFailed`.
//!
//! **Keys.** [`KeyInfo`] is a public enclave key: `key_id` (`ek_…`, derived
//! from `public_key` — check it), `created_at`, `expires_at` (Unix seconds;
//! the value bound into the evidence; after it the enclave has zeroized the
//! secret and can no longer open envelopes sealed to it). The first key in a
//! list is the newest (the one clients should seal to).
//!
//! **Evidence.** For `Attest { nonce }` the enclave returns, for every key it
//! holds, fresh evidence whose report data is
//! `archipelago_attest::key_binding(public_key, expires_at, nonce)`;
//! `KeyEvidence::evidence` is the archipelago-attest evidence JSON
//! (`{"tee","evidence","endorsements"}`) as UTF-8 bytes, ready to be put into
//! [`crate::island::AttestRequest::evidence`].
//!
//! **Jobs.** `RunJob` carries the request envelope and the job's workload id
//! and client key id, which the enclave checks against the envelope header.
//! The response leaves as the sealed response header
//! (`ResponseHeader { bytes }`, kind `02`) followed by sealed chunks
//! (`ResponseChunk { bytes }`, kind `03`); concatenated in order they form a
//! whole response that `open_response` accepts. With `stream: false` the
//! enclave sends all chunks at the end; with `stream: true` it sends each as
//! the workload produces it. `JobFailed { sealed_error: true }` means the
//! frames already sent form a complete response whose final chunk is an
//! error report sealed to the client; with `sealed_error: false` the enclave
//! could not (or must not) answer the client — e.g. the envelope is not
//! addressed to it, or is a replay.
#![allow(clippy::large_enum_variant)]

use std::fmt;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, KeyPrefix};

/// Version of this channel protocol; `Hello` and `Ready` carry it.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame body accepted or sent, in bytes (17 MiB).
pub const MAX_FRAME_LEN: usize = 17 * 1024 * 1024;
/// Largest attestation nonce.
pub const MAX_NONCE_LEN: usize = 64;
/// Largest job id (the coordinator's ids are far shorter).
pub const MAX_JOB_ID_LEN: usize = 128;
/// Most keys an enclave reports at once (the current key plus those in their
/// grace period).
pub const MAX_KEYS: usize = 16;
/// Most workloads an enclave advertises.
pub const MAX_WORKLOADS: usize = 64;
/// Largest `tee`/`measurement` string.
pub const MAX_LABEL_LEN: usize = 128;

/// Opaque bytes (ciphertext, evidence, nonces). Its `Debug` shows only the
/// length, so logging a message never dumps a payload.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Blob(v)
    }
}

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A frame from the island to the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IslandFrame {
    /// Request id chosen by the island (non-zero); echoed in every reply.
    pub req: u64,
    pub msg: ToEnclave,
}

/// A frame from the enclave to the island.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnclaveFrame {
    /// The request this answers, or 0 for an unsolicited message.
    pub req: u64,
    pub msg: FromEnclave,
}

/// Island → enclave messages. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToEnclave {
    /// First message; answered by [`FromEnclave::Ready`] (or `Failed {
    /// Unsupported }` when the versions differ).
    Hello { version: u32 },
    /// A verifier's challenge: fresh evidence for every key held.
    Attest { nonce: Blob },
    /// Run a confidential job.
    RunJob(JobRequest),
    /// Rotate now (tests, operators); answered by [`FromEnclave::Rotated`].
    Rotate,
    /// Finish running jobs, answer `Bye`, zeroize keys and exit.
    Shutdown,
}

/// A confidential job handed to the enclave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    /// The coordinator's job id (for logs and correlation; not secret).
    pub job_id: String,
    /// The workload the job was submitted for; must equal the envelope's.
    pub workload_id: u64,
    /// The client key the job was submitted with; must equal the envelope's.
    pub client_key_id: KeyId,
    /// The sealed request envelope (`docs/envelope.md`, kind `01`).
    pub envelope: Blob,
    /// Send each output chunk as it is produced.
    pub stream: bool,
}

/// A public enclave key as the enclave reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// `ek_…` id of `public_key`.
    pub key_id: KeyId,
    /// X25519 public key.
    pub public_key: [u8; 32],
    /// Unix seconds when the key was generated.
    pub created_at: u64,
    /// Unix seconds when the key is dropped; bound into its evidence.
    pub expires_at: u64,
}

/// Fresh evidence for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvidence {
    pub key: KeyInfo,
    /// archipelago-attest evidence JSON (`{"tee","evidence","endorsements"}`),
    /// report data = `key_binding(key.public_key, key.expires_at, nonce)`.
    pub evidence: Blob,
}

/// Enclave → island messages. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromEnclave {
    /// Answer to `Hello`.
    Ready {
        version: u32,
        /// TEE type name (`sim`, `sgx`, `tdx`, `sev`, `nitro`, `trustzone`).
        tee: String,
        /// The enclave's measurement as the evidence reports it, lowercase
        /// hex (48 bytes = 96 characters for sim).
        measurement: String,
        /// Keys held, newest first.
        keys: Vec<KeyInfo>,
        /// Workload ids this enclave can run now.
        workloads: Vec<u64>,
    },
    /// Answer to `Attest`.
    Evidence { nonce: Blob, keys: Vec<KeyEvidence> },
    /// Answer to `Rotate`: the keys now held, newest first.
    Rotated { keys: Vec<KeyInfo> },
    /// Unsolicited (`req = 0`): the key set changed (scheduled rotation or a
    /// key expired). The island should re-attest the new keys.
    KeysChanged { keys: Vec<KeyInfo> },
    /// The sealed response header of a job (kind `02`).
    ResponseHeader { job_id: String, bytes: Blob },
    /// One sealed response chunk of a job (kind `03`).
    ResponseChunk { job_id: String, bytes: Blob },
    /// The job finished; the response frames sent form a whole response.
    JobDone { job_id: String, exec_ms: u64 },
    /// The job failed; see the module doc for `sealed_error`.
    JobFailed {
        job_id: String,
        code: ErrorCode,
        sealed_error: bool,
    },
    /// A control request (or, with `req = 0`, a frame) failed.
    Failed { code: ErrorCode },
    /// Answer to `Shutdown`; the enclave exits after sending it.
    Bye,
}

/// Why something failed inside the enclave. Codes only: never contents.
/// Append-only (postcard encodes the variant index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// None of the envelope's recipients is a key this enclave holds (now):
    /// re-encrypt to a current key.
    NotARecipient,
    /// The request id was seen before.
    Replay,
    /// `issued_at` lies outside the enclave's skew window.
    Stale,
    /// The envelope is for another workload than the job.
    WorkloadMismatch,
    /// The envelope was sealed by another client key than the job names.
    ClientKeyMismatch,
    /// The envelope is malformed or fails authentication.
    BadEnvelope,
    /// The enclave does not know this workload.
    UnknownWorkload,
    /// The workload's model is not installed in this enclave.
    ModelUnavailable,
    /// The workload refused the input (details sealed to the client).
    BadInput,
    /// The workload failed while running (details sealed to the client).
    WorkloadFailed,
    /// Protocol version or request not supported.
    Unsupported,
    /// The TEE would not produce evidence.
    EvidenceUnavailable,
    /// A job with this job id is already running.
    DuplicateJob,
    /// Too many jobs at once; retry later.
    Busy,
    /// A frame was refused (see [`ChannelError`]).
    BadFrame,
    /// The enclave is shutting down.
    ShuttingDown,
    /// Anything else (a bug); the enclave log has the detail (no contents).
    Internal,
}

impl ErrorCode {
    /// Stable snake_case name, for logs and API error codes.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotARecipient => "not_a_recipient",
            ErrorCode::Replay => "replay",
            ErrorCode::Stale => "stale",
            ErrorCode::WorkloadMismatch => "workload_mismatch",
            ErrorCode::ClientKeyMismatch => "client_key_mismatch",
            ErrorCode::BadEnvelope => "bad_envelope",
            ErrorCode::UnknownWorkload => "unknown_workload",
            ErrorCode::ModelUnavailable => "model_unavailable",
            ErrorCode::BadInput => "bad_input",
            ErrorCode::WorkloadFailed => "workload_failed",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::EvidenceUnavailable => "evidence_unavailable",
            ErrorCode::DuplicateJob => "duplicate_job",
            ErrorCode::Busy => "busy",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    /// What happened and what to do, in one sentence (no contents).
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::NotARecipient => "the envelope is not addressed to a key this enclave holds; re-encrypt it to a current enclave key",
            ErrorCode::Replay => "the enclave has already seen this request id; seal a new request",
            ErrorCode::Stale => "the request's issued_at is outside the enclave's clock skew window; check the client clock and seal a new request",
            ErrorCode::WorkloadMismatch => "the envelope was sealed for another workload than the job names",
            ErrorCode::ClientKeyMismatch => "the envelope was sealed with another client key than the job names",
            ErrorCode::BadEnvelope => "the envelope is malformed or was altered",
            ErrorCode::UnknownWorkload => "this enclave does not run the workload",
            ErrorCode::ModelUnavailable => "the workload's model is not installed in this enclave",
            ErrorCode::BadInput => "the workload refused the input; the client can open the sealed error report",
            ErrorCode::WorkloadFailed => "the workload failed; the client can open the sealed error report",
            ErrorCode::Unsupported => "the enclave does not support this protocol version or request",
            ErrorCode::EvidenceUnavailable => "the TEE did not produce evidence; see the enclave log",
            ErrorCode::DuplicateJob => "a job with this id is already running in the enclave",
            ErrorCode::Busy => "the enclave is running as many jobs as it can; retry later",
            ErrorCode::BadFrame => "the enclave refused a malformed channel frame",
            ErrorCode::ShuttingDown => "the enclave is shutting down",
            ErrorCode::Internal => "internal enclave error; see the enclave log",
        }
    }

    /// Whether the client must re-encrypt (the enclave can never open it).
    pub fn needs_reencrypt(self) -> bool {
        matches!(self, ErrorCode::NotARecipient)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.describe())
    }
}

/// Every way a frame can be refused.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("channel I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the channel limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (length 0)")]
    Empty,
    #[error("channel closed inside a frame: expected {expected} bytes of {what}, got {got}")]
    Truncated {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("channel message does not encode: {0}")]
    Encode(String),
    #[error("frame body does not decode as a channel message: {0}")]
    Decode(String),
    #[error("{0} trailing bytes after the channel message")]
    TrailingBytes(usize),
    #[error("channel message field {field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// A message that can travel on the channel: serde plus field limits.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    /// Checks the field limits (sizes, id kinds) of a decoded message.
    fn validate(&self) -> Result<(), ChannelError>;
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ChannelError {
    ChannelError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), ChannelError> {
    if len > max {
        return Err(invalid(field, format!("{len} exceeds the limit of {max}")));
    }
    Ok(())
}

fn check_job_id(job_id: &str) -> Result<(), ChannelError> {
    if job_id.is_empty() {
        return Err(invalid("job_id", "empty"));
    }
    check_len("job_id", job_id.len(), MAX_JOB_ID_LEN)
}

fn check_keys(keys: &[KeyInfo]) -> Result<(), ChannelError> {
    check_len("keys", keys.len(), MAX_KEYS)?;
    keys.iter().try_for_each(KeyInfo::validate)
}

impl KeyInfo {
    /// The id is an `ek_` id of the public key.
    pub fn validate(&self) -> Result<(), ChannelError> {
        if self.key_id.prefix() != KeyPrefix::Enclave {
            return Err(invalid("key_id", "not an ek_ id"));
        }
        self.key_id
            .check(&self.public_key)
            .map_err(|e| invalid("key_id", e.to_string()))
    }
}

impl Message for IslandFrame {
    fn validate(&self) -> Result<(), ChannelError> {
        if self.req == 0 {
            return Err(invalid("req", "0 is reserved for unsolicited messages"));
        }
        match &self.msg {
            ToEnclave::Attest { nonce } => check_len("nonce", nonce.len(), MAX_NONCE_LEN),
            ToEnclave::RunJob(job) => {
                check_job_id(&job.job_id)?;
                if job.client_key_id.prefix() != KeyPrefix::Client {
                    return Err(invalid("client_key_id", "not a ck_ id"));
                }
                if job.envelope.is_empty() {
                    return Err(invalid("envelope", "empty"));
                }
                check_len(
                    "envelope",
                    job.envelope.len(),
                    crate::envelope::MAX_ENVELOPE_LEN,
                )
            }
            ToEnclave::Hello { .. } | ToEnclave::Rotate | ToEnclave::Shutdown => Ok(()),
        }
    }
}

impl Message for EnclaveFrame {
    fn validate(&self) -> Result<(), ChannelError> {
        match &self.msg {
            FromEnclave::Ready {
                tee,
                measurement,
                keys,
                workloads,
                ..
            } => {
                check_len("tee", tee.len(), MAX_LABEL_LEN)?;
                check_len("measurement", measurement.len(), MAX_LABEL_LEN)?;
                check_len("workloads", workloads.len(), MAX_WORKLOADS)?;
                check_keys(keys)
            }
            FromEnclave::Evidence { nonce, keys } => {
                check_len("nonce", nonce.len(), MAX_NONCE_LEN)?;
                check_len("keys", keys.len(), MAX_KEYS)?;
                keys.iter().try_for_each(|k| k.key.validate())
            }
            FromEnclave::Rotated { keys } | FromEnclave::KeysChanged { keys } => check_keys(keys),
            FromEnclave::ResponseHeader { job_id, .. }
            | FromEnclave::ResponseChunk { job_id, .. }
            | FromEnclave::JobDone { job_id, .. }
            | FromEnclave::JobFailed { job_id, .. } => check_job_id(job_id),
            FromEnclave::Failed { .. } | FromEnclave::Bye => Ok(()),
        }
    }
}

/// Encodes a message as one frame (length prefix included).
pub fn encode_frame<M: Message>(msg: &M) -> Result<Vec<u8>, ChannelError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(msg, out).map_err(|e| ChannelError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(ChannelError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Checks a frame's 4-byte length prefix; returns the body length.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, ChannelError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(ChannelError::Empty);
    }
    if len > MAX_FRAME_LEN {
        return Err(ChannelError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes and validates a frame body (without its length prefix).
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, ChannelError> {
    if body.is_empty() {
        return Err(ChannelError::Empty);
    }
    if body.len() > MAX_FRAME_LEN {
        return Err(ChannelError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<M>(body).map_err(|e| ChannelError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ChannelError::TrailingBytes(rest.len()));
    }
    msg.validate()?;
    Ok(msg)
}

/// Writes one frame and flushes.
pub fn write_frame<M: Message, W: Write>(w: &mut W, msg: &M) -> Result<(), ChannelError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads as many bytes as are available up to `buf.len()`; returns how many.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame. `Ok(None)` on a clean end of stream before a frame.
pub fn read_frame<M: Message, R: Read>(r: &mut R) -> Result<Option<M>, ChannelError> {
    let mut prefix = [0u8; 4];
    match read_full(r, &mut prefix)? {
        0 => return Ok(None),
        4 => {}
        got => {
            return Err(ChannelError::Truncated {
                what: "length prefix",
                expected: 4,
                got,
            })
        }
    }
    let len = frame_len(prefix)?;
    // Read in bounded steps so a lying length cannot make us allocate 17 MiB
    // up front for a stream that then ends.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let got = Read::take(&mut *r, len as u64).read_to_end(&mut body)?;
    if got != len {
        return Err(ChannelError::Truncated {
            what: "frame body",
            expected: len,
            got,
        });
    }
    decode_body(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn key_info() -> KeyInfo {
        let k = SecretKey::from_bytes(&[9u8; 32]).unwrap();
        KeyInfo {
            key_id: k.enclave_id(),
            public_key: k.public().0,
            created_at: 1,
            expires_at: 2,
        }
    }

    fn job() -> IslandFrame {
        IslandFrame {
            req: 7,
            msg: ToEnclave::RunJob(JobRequest {
                job_id: "job_1".into(),
                workload_id: 5,
                client_key_id: KeyId::client(&[1u8; 32]),
                envelope: Blob(vec![1, 2, 3]),
                stream: true,
            }),
        }
    }

    fn roundtrip<M: Message + PartialEq + fmt::Debug>(m: &M) {
        let bytes = encode_frame(m).unwrap();
        let back: M = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(&back, m);
    }

    #[test]
    fn every_message_round_trips() {
        for msg in [
            ToEnclave::Hello { version: 1 },
            ToEnclave::Attest {
                nonce: Blob(vec![4; 32]),
            },
            ToEnclave::Rotate,
            ToEnclave::Shutdown,
        ] {
            roundtrip(&IslandFrame { req: 1, msg });
        }
        roundtrip(&job());
        let k = key_info();
        for msg in [
            FromEnclave::Ready {
                version: 1,
                tee: "sim".into(),
                measurement: "ab".repeat(48),
                keys: vec![k.clone()],
                workloads: vec![5],
            },
            FromEnclave::Evidence {
                nonce: Blob(vec![1; 32]),
                keys: vec![KeyEvidence {
                    key: k.clone(),
                    evidence: Blob(b"{}".to_vec()),
                }],
            },
            FromEnclave::Rotated {
                keys: vec![k.clone()],
            },
            FromEnclave::KeysChanged { keys: vec![k] },
            FromEnclave::ResponseHeader {
                job_id: "j".into(),
                bytes: Blob(vec![1]),
            },
            FromEnclave::ResponseChunk {
                job_id: "j".into(),
                bytes: Blob(vec![2]),
            },
            FromEnclave::JobDone {
                job_id: "j".into(),
                exec_ms: 3,
            },
            FromEnclave::JobFailed {
                job_id: "j".into(),
                code: ErrorCode::Replay,
                sealed_error: false,
            },
            FromEnclave::Failed {
                code: ErrorCode::Internal,
            },
            FromEnclave::Bye,
        ] {
            roundtrip(&EnclaveFrame { req: 0, msg });
        }
    }

    #[test]
    fn several_frames_in_one_stream_then_clean_eof() {
        let mut s = encode_frame(&job()).unwrap();
        s.extend(
            encode_frame(&IslandFrame {
                req: 8,
                msg: ToEnclave::Shutdown,
            })
            .unwrap(),
        );
        let mut r = &s[..];
        assert_eq!(read_frame::<IslandFrame, _>(&mut r).unwrap(), Some(job()));
        assert!(matches!(
            read_frame::<IslandFrame, _>(&mut r).unwrap(),
            Some(IslandFrame {
                msg: ToEnclave::Shutdown,
                ..
            })
        ));
        assert_eq!(read_frame::<IslandFrame, _>(&mut r).unwrap(), None);
    }

    #[test]
    fn refuses_oversized_length_before_reading() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let err = read_frame::<IslandFrame, _>(&mut &prefix[..]).unwrap_err();
        assert!(matches!(err, ChannelError::TooLarge { len, .. } if len == MAX_FRAME_LEN + 1));
    }

    #[test]
    fn refuses_empty_frame() {
        let err = read_frame::<IslandFrame, _>(&mut &[0u8, 0, 0, 0][..]).unwrap_err();
        assert!(matches!(err, ChannelError::Empty));
    }

    #[test]
    fn refuses_truncated_prefix_and_body() {
        let err = read_frame::<IslandFrame, _>(&mut &[0u8, 0][..]).unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Truncated {
                what: "length prefix",
                got: 2,
                ..
            }
        ));
        let frame = encode_frame(&job()).unwrap();
        let cut = &frame[..frame.len() - 1];
        let err = read_frame::<IslandFrame, _>(&mut &cut[..]).unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Truncated {
                what: "frame body",
                ..
            }
        ));
    }

    #[test]
    fn refuses_undecodable_and_trailing_bytes() {
        // Variant index 99 does not exist.
        let mut frame = vec![0, 0, 0, 2, 1, 99];
        let err = read_frame::<IslandFrame, _>(&mut &frame[..]).unwrap_err();
        assert!(matches!(err, ChannelError::Decode(_)), "{err:?}");
        frame = encode_frame(&IslandFrame {
            req: 1,
            msg: ToEnclave::Rotate,
        })
        .unwrap();
        frame.push(0xff);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        let err = read_frame::<IslandFrame, _>(&mut &frame[..]).unwrap_err();
        assert!(matches!(err, ChannelError::TrailingBytes(1)));
    }

    #[test]
    fn refuses_invalid_fields() {
        let cases: Vec<(IslandFrame, &str)> = vec![
            (
                IslandFrame {
                    req: 0,
                    msg: ToEnclave::Rotate,
                },
                "req",
            ),
            (
                IslandFrame {
                    req: 1,
                    msg: ToEnclave::Attest {
                        nonce: Blob(vec![0; MAX_NONCE_LEN + 1]),
                    },
                },
                "nonce",
            ),
            (
                {
                    let mut f = job();
                    if let ToEnclave::RunJob(j) = &mut f.msg {
                        j.job_id = String::new();
                    }
                    f
                },
                "job_id",
            ),
            (
                {
                    let mut f = job();
                    if let ToEnclave::RunJob(j) = &mut f.msg {
                        j.job_id = "x".repeat(MAX_JOB_ID_LEN + 1);
                    }
                    f
                },
                "job_id",
            ),
            (
                {
                    let mut f = job();
                    if let ToEnclave::RunJob(j) = &mut f.msg {
                        j.client_key_id = KeyId::enclave(&[1; 32]);
                    }
                    f
                },
                "client_key_id",
            ),
            (
                {
                    let mut f = job();
                    if let ToEnclave::RunJob(j) = &mut f.msg {
                        j.envelope = Blob::default();
                    }
                    f
                },
                "envelope",
            ),
        ];
        for (frame, field) in cases {
            let bytes = encode_frame(&frame).unwrap();
            let err = read_frame::<IslandFrame, _>(&mut &bytes[..]).unwrap_err();
            assert!(
                matches!(err, ChannelError::Invalid { field: f, .. } if f == field),
                "{field}: {err:?}"
            );
        }
        // A key id that is not the id of the key it comes with.
        let mut k = key_info();
        k.public_key[0] ^= 1;
        let bytes = encode_frame(&EnclaveFrame {
            req: 1,
            msg: FromEnclave::Rotated { keys: vec![k] },
        })
        .unwrap();
        let err = read_frame::<EnclaveFrame, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(
            err,
            ChannelError::Invalid {
                field: "key_id",
                ..
            }
        ));
    }

    #[test]
    fn refuses_oversized_message_on_encode() {
        let mut f = job();
        if let ToEnclave::RunJob(j) = &mut f.msg {
            j.envelope = Blob(vec![0; MAX_FRAME_LEN + 1]);
        }
        assert!(matches!(
            encode_frame(&f),
            Err(ChannelError::TooLarge { .. })
        ));
    }

    #[test]
    fn debug_never_prints_payload_bytes() {
        let mut f = job();
        if let ToEnclave::RunJob(j) = &mut f.msg {
            j.envelope = Blob(b"SECRET-LOOKING".to_vec());
        }
        let dbg = format!("{f:?}");
        assert!(dbg.contains("<14 bytes>"));
        assert!(!dbg.contains("83, 69"));
    }

    #[test]
    fn error_codes_have_distinct_names() {
        let all = [
            ErrorCode::NotARecipient,
            ErrorCode::Replay,
            ErrorCode::Stale,
            ErrorCode::WorkloadMismatch,
            ErrorCode::ClientKeyMismatch,
            ErrorCode::BadEnvelope,
            ErrorCode::UnknownWorkload,
            ErrorCode::ModelUnavailable,
            ErrorCode::BadInput,
            ErrorCode::WorkloadFailed,
            ErrorCode::Unsupported,
            ErrorCode::EvidenceUnavailable,
            ErrorCode::DuplicateJob,
            ErrorCode::Busy,
            ErrorCode::BadFrame,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), all.len());
        // The wire encoding is the variant index: pin the first and last.
        assert_eq!(
            postcard::to_allocvec(&ErrorCode::NotARecipient).unwrap(),
            [0]
        );
        assert_eq!(postcard::to_allocvec(&ErrorCode::Internal).unwrap(), [16]);
    }
}
