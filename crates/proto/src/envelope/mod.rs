//! The sealed envelope: how a confidential job's input reaches an enclave and
//! its output comes back, readable by nobody in between.
//!
//! *Request* ([`seal_request`] / [`open_request`]): a random content key
//! encrypts the body with ChaCha20-Poly1305; the content key is wrapped to
//! each chosen enclave key with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305). The body's
//! associated data is the whole header, so no header field can be swapped; the
//! wraps' associated data is the header core (everything but the wraps), so a
//! recipient detects an altered header before touching the body.
//!
//! *Response* ([`ResponseSealer`] / [`ResponseOpener`]): keyed by the
//! static–static Diffie-Hellman of the enclave key and the client key
//! (kept per key pair on both sides, [`ResponseStaticShare`]), so only the
//! client can read it and it knows which attested enclave wrote it; a fresh
//! nonce per response and HPKE's key schedule give one context per
//! response, one AEAD message per chunk, each chunk numbered and the last
//! one flagged, so reordering, duplication, truncation and splicing chunks
//! of another response all fail.
//!
//! The byte layout, field by field, and test vectors are in `docs/envelope.md`;
//! `tests/vectors.rs` re-derives those vectors.

mod codec;
mod request;
mod response;

pub use request::{
    open_request, open_request_with, peek_header, seal_request, seal_request_prepared,
    seal_request_with_rng, Expectations, HeaderView, NextEnc, OpenedRequest, PreparedDecap,
    PreparedWrap, RequestBody,
};
pub use response::{
    open_response, open_response_with_share, peek_response_header, seal_response, Chunk, ChunkKind,
    ResponseHeaderView, ResponseOpener, ResponseSealer, ResponseStaticShare, RESPONSE_HEADER_LEN,
};

use hpke::rand_core::UnwrapErr;

use crate::keys::SecretKey;

/// Magic bytes that open every envelope message: "ARCE".
pub const MAGIC: [u8; 4] = *b"ARCE";
/// The only format version this code reads and writes.
pub const VERSION: u8 = 3;
/// Suite 1: DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305.
pub const SUITE_X25519_SHA256_CHACHA: u16 = 0x0001;
/// Message kinds (byte 5).
pub const KIND_REQUEST: u8 = 0x01;
pub const KIND_RESPONSE_HEADER: u8 = 0x02;
pub const KIND_RESPONSE_CHUNK: u8 = 0x03;

/// Largest envelope or response (all chunks) accepted, in bytes.
pub const MAX_ENVELOPE_LEN: usize = 16 * 1024 * 1024;
/// Largest request input, leaving room for the header.
pub const MAX_INPUT_LEN: usize = MAX_ENVELOPE_LEN - 64 * 1024;
/// Largest plaintext in one response chunk.
pub const MAX_CHUNK_LEN: usize = 1024 * 1024;
/// Most recipients one request may name.
pub const MAX_RECIPIENTS: usize = 16;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;

pub(crate) const INFO_WRAP: &[u8] = b"archipelago-envelope-v3/wrap";
pub(crate) const INFO_RESPONSE: &[u8] = b"archipelago-envelope-v3/response";

pub(crate) type Aead = hpke::aead::ChaCha20Poly1305;
pub(crate) type Kdf = hpke::kdf::HkdfSha256;
pub(crate) type Kem = hpke::kem::X25519HkdfSha256;

/// An HPKE `enc` (the X25519 ephemeral public key) as its 32 bytes.
pub(crate) fn enc_bytes(enc: &<Kem as hpke::Kem>::EncappedKey) -> Result<[u8; 32], EnvelopeError> {
    use hpke::Serializable;
    enc.to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::SealFailed)
}

/// X25519 of `sk` and the point `pk`; `None` for the all-zero result (a
/// small-order point), which RFC 9180 §7.1.4 requires DHKEM(X25519) to
/// refuse.
pub(crate) fn x25519(sk: &SecretKey, pk: &[u8; 32]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let secret = x25519_dalek::StaticSecret::from(*sk.to_bytes());
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*pk));
    if !shared.was_contributory() {
        return None;
    }
    Some(zeroize::Zeroizing::new(*shared.as_bytes()))
}

/// DHKEM(X25519, HKDF-SHA256)'s `ExtractAndExpand(dh, kem_context)` (RFC
/// 9180 §4.1) under the KEM's suite id (`"KEM" ‖ 0x0020`): the KEM shared
/// secret that HPKE's key schedule ([`hpke::kdf::Kdf::combine_secrets`])
/// takes.
pub(crate) fn dhkem_shared_secret(
    dh: &[u8; 32],
    kem_context: &[u8],
) -> Result<hpke::kem::SharedSecret<Kem>, EnvelopeError> {
    let id = <Kem as hpke::Kem>::KEM_ID.to_be_bytes();
    let suite_id = [b'K', b'E', b'M', id[0], id[1]];
    let mut shared = hpke::kem::SharedSecret::<Kem>::default();
    <Kdf as hpke::kdf::Kdf>::extract_and_expand(dh, &suite_id, kem_context, &mut shared.0)
        .map_err(|_| EnvelopeError::SealFailed)?;
    Ok(shared)
}

/// The operating system's CSPRNG, as the RNG type HPKE takes.
pub fn os_rng() -> UnwrapErr<getrandom::SysRng> {
    UnwrapErr(getrandom::SysRng)
}

/// Every way an envelope can be refused. Messages never contain plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope truncated: needed {needed} more bytes for {field}")]
    Truncated { field: &'static str, needed: usize },
    #[error("envelope is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    #[error("not an Archipelago envelope (bad magic bytes)")]
    BadMagic,
    #[error("envelope version {0} is not supported (this build reads version 3); upgrade the older of the SDK and the enclave")]
    UnsupportedVersion(u8),
    #[error("cipher suite {0:#06x} is not supported (only 0x0001, X25519/HKDF-SHA256/ChaCha20-Poly1305)")]
    UnknownSuite(u16),
    #[error("expected a {expected} message, found kind {found:#04x}")]
    WrongKind { expected: &'static str, found: u8 },
    #[error("the envelope names no recipient")]
    NoRecipients,
    #[error("the envelope names {count} recipients, more than the limit of {max}")]
    TooManyRecipients { count: usize, max: usize },
    #[error("recipient {0} is named twice")]
    DuplicateRecipient(String),
    #[error("malformed key id in {field}: {reason}")]
    BadKeyId { field: &'static str, reason: String },
    #[error("recipient ids must be ek_ ids and the client id a ck_ id ({field})")]
    WrongIdKind { field: &'static str },
    #[error("this envelope is not addressed to key {0}; re-encrypt it for an enclave that holds one of its recipient keys")]
    NotARecipient(String),
    #[error("the envelope header was altered or the wrapped key does not open with this key (authentication failed)")]
    HeaderAuthFailed,
    #[error("the envelope body or its tag was altered (authentication failed)")]
    BodyAuthFailed,
    #[error("the envelope body is malformed: {0}")]
    MalformedBody(&'static str),
    #[error("the envelope is for workload {envelope}, but the job is for workload {job}")]
    WorkloadMismatch { job: u64, envelope: u64 },
    #[error("the envelope was sealed by client key {envelope}, but the job names {job}")]
    ClientKeyMismatch { job: String, envelope: String },
    #[error("the response key inside the body does not match the client key id in the header")]
    ResponseKeyMismatch,
    #[error("input is {len} bytes, more than the limit of {max}")]
    InputTooLarge { len: usize, max: usize },
    #[error("the response was written by {found}, not by the expected enclave key {expected}")]
    EnclaveKeyMismatch { expected: String, found: String },
    #[error("the response answers another request (request id differs)")]
    RequestIdMismatch,
    #[error("the response is addressed to client key {found}, not {expected}")]
    ResponseRecipientMismatch { expected: String, found: String },
    #[error("chunk {found} arrived when chunk {expected} was expected (reordered or dropped)")]
    ChunkOutOfOrder { expected: u32, found: u32 },
    #[error("chunk {0} was already received (duplicate or replay)")]
    DuplicateChunk(u32),
    #[error("chunk belongs to another response (spliced)")]
    ForeignChunk,
    #[error("a chunk arrived after the final chunk")]
    ChunkAfterFinal,
    #[error("chunk {0} failed authentication (altered, or sealed under another response)")]
    ChunkAuthFailed(u32),
    #[error("chunk of {len} bytes exceeds the limit of {max}")]
    ChunkTooLarge { len: usize, max: usize },
    #[error("chunk flags {0:#04x} use undefined bits")]
    BadChunkFlags(u8),
    #[error("the response stream ended before its final chunk (truncated)")]
    TruncatedStream,
    #[error("a public key is not a valid X25519 point")]
    BadPublicKey,
    #[error("HPKE failed to seal (internal error)")]
    SealFailed,
}

/// 16-byte random request id.
pub type RequestId = [u8; 16];

#[cfg(test)]
mod tests;
