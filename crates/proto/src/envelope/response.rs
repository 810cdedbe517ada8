//! Sealing and opening responses (enclave → client), streamed or whole.
//!
//! A response is a header followed by one or more chunks:
//!
//! ```text
//! header  magic | version | kind 0x02 | suite | request_id [16]
//!         | enclave key id (len 29 + ASCII) | client key id (len 29 + ASCII)
//!         | response nonce [32]
//! chunk   magic | version | kind 0x03 | suite | request_id [16] | seq u32 | flags u8
//!         | length u32 | AEAD ciphertext (length bytes, tag included)
//! ```
//!
//! The response's key comes from the static–static Diffie-Hellman of the
//! enclave key and the client key (so only their holders can seal or open
//! it, and the client knows which attested enclave wrote it), made fresh per
//! response by the enclave's random nonce and bound to the header:
//! `shared_secret = ExtractAndExpand(DH(enclave, client), nonce ‖ pkC ‖ pkE)`
//! as DHKEM computes it, then HPKE's key schedule (base mode) with
//! `info = "archipelago-envelope-v3/response" ‖ header without the nonce`.
//! Both sides keep the Diffie-Hellman per key pair
//! ([`ResponseStaticShare`]), so a response costs no public-key work.
//! Each chunk is one AEAD message of that context whose associated data is
//! its own 33-byte chunk header. HPKE numbers AEAD messages, so a chunk
//! opens only at its own position in its own response; the explicit `seq`
//! and `request_id` fields let the opener say *what* went wrong.

use std::fmt;

use hpke::kem::SharedSecret;
use hpke::rand_core::CryptoRng;
use hpke::{aead::AeadCtxR, aead::AeadCtxS, OpModeR, OpModeS};
use zeroize::Zeroizing;

use super::codec::{put_key_id, put_preamble, Reader};
use super::{
    dhkem_shared_secret, x25519, Aead, EnvelopeError, Kdf, Kem, RequestId, INFO_RESPONSE,
    KIND_RESPONSE_CHUNK, KIND_RESPONSE_HEADER, MAX_CHUNK_LEN, MAX_ENVELOPE_LEN, TAG_LEN,
};
use crate::ids::{KeyId, KeyPrefix};
use crate::keys::{PublicKey, SecretKey};

const FLAG_FINAL: u8 = 0x01;
const FLAG_ERROR: u8 = 0x02;
/// Length of the response nonce.
const NONCE_LEN: usize = 32;
/// Length of the response header in bytes.
pub const RESPONSE_HEADER_LEN: usize = 8 + 16 + 30 + 30 + NONCE_LEN;
/// Offset of the nonce in the response header.
#[cfg(test)]
pub(crate) const RESPONSE_NONCE_AT: usize = RESPONSE_HEADER_LEN - NONCE_LEN;
const CHUNK_HEADER_LEN: usize = 8 + 16 + 4 + 1 + 4;

/// What a chunk carries: output data, or an error report for the client
/// (sealed like data, so it may describe the input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Data,
    Error,
}

/// An opened chunk. Zeroized on drop; `Debug` shows only its size.
pub struct Chunk {
    pub seq: u32,
    pub kind: ChunkKind,
    pub last: bool,
    data: Zeroizing<Vec<u8>>,
}

impl Chunk {
    /// The plaintext.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Takes the plaintext out.
    pub fn into_data(self) -> Zeroizing<Vec<u8>> {
        self.data
    }
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("seq", &self.seq)
            .field("kind", &self.kind)
            .field("last", &self.last)
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .finish()
    }
}

/// The public fields of a response header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeaderView {
    pub request_id: RequestId,
    pub enclave_key_id: KeyId,
    pub client_key_id: KeyId,
}

/// A parsed response header: its public view, the bytes HPKE's `info`
/// covers (everything before the nonce), and the nonce itself.
struct HeaderParts<'a> {
    view: ResponseHeaderView,
    info_part: &'a [u8],
    nonce: [u8; NONCE_LEN],
}

fn header_parts(bytes: &[u8]) -> Result<HeaderParts<'_>, EnvelopeError> {
    let mut r = Reader::new(bytes);
    r.preamble(KIND_RESPONSE_HEADER, "response header")?;
    let request_id = r.array("request id")?;
    let enclave_key_id = r.key_id("enclave key id", KeyPrefix::Enclave)?;
    let client_key_id = r.key_id("client key id", KeyPrefix::Client)?;
    let info_end = r.pos();
    let nonce = r.array("response nonce")?;
    Ok(HeaderParts {
        view: ResponseHeaderView {
            request_id,
            enclave_key_id,
            client_key_id,
        },
        info_part: &bytes[..info_end],
        nonce,
    })
}

/// Reads the public header at the start of a response (whole or streamed):
/// the client uses it to find the enclave key that must have written it.
pub fn peek_response_header(bytes: &[u8]) -> Result<ResponseHeaderView, EnvelopeError> {
    header_parts(bytes).map(|p| p.view)
}

fn response_info(info_part: &[u8]) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_RESPONSE.len() + info_part.len());
    info.extend_from_slice(INFO_RESPONSE);
    info.extend_from_slice(info_part);
    info
}

/// Seals a response, chunk by chunk, inside the enclave.
pub struct ResponseSealer {
    ctx: AeadCtxS<Aead, Kdf, Kem>,
    request_id: RequestId,
    next_seq: u32,
    finished: bool,
}

impl fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseSealer")
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ResponseSealer {
    /// Starts a response to `request_id` from `enclave` to `client`; returns
    /// the sealer and the header bytes to send first. Does the key pair's
    /// Diffie-Hellman now: an enclave that answers a client more than once
    /// keeps it ([`ResponseStaticShare::for_enclave`],
    /// [`ResponseSealer::with_share`]).
    pub fn new(
        enclave: &SecretKey,
        client: &PublicKey,
        request_id: RequestId,
    ) -> Result<(ResponseSealer, Vec<u8>), EnvelopeError> {
        Self::new_with_rng(enclave, client, request_id, &mut super::os_rng())
    }

    /// As [`ResponseSealer::new`]; draws the 32-byte response nonce from
    /// `rng`.
    pub fn new_with_rng(
        enclave: &SecretKey,
        client: &PublicKey,
        request_id: RequestId,
        rng: &mut impl CryptoRng,
    ) -> Result<(ResponseSealer, Vec<u8>), EnvelopeError> {
        let share = ResponseStaticShare::for_enclave(enclave, client)?;
        Self::with_share_and_rng(&share, request_id, rng)
    }

    /// Starts a response with the key pair's Diffie-Hellman kept from an
    /// earlier one: no public-key work, a fresh nonce from the OS CSPRNG.
    pub fn with_share(
        share: &ResponseStaticShare,
        request_id: RequestId,
    ) -> Result<(ResponseSealer, Vec<u8>), EnvelopeError> {
        Self::with_share_and_rng(share, request_id, &mut super::os_rng())
    }

    /// As [`ResponseSealer::with_share`]; draws the nonce from `rng`.
    pub fn with_share_and_rng(
        share: &ResponseStaticShare,
        request_id: RequestId,
        rng: &mut impl CryptoRng,
    ) -> Result<(ResponseSealer, Vec<u8>), EnvelopeError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut header = Vec::with_capacity(RESPONSE_HEADER_LEN);
        put_preamble(&mut header, KIND_RESPONSE_HEADER);
        header.extend_from_slice(&request_id);
        put_key_id(&mut header, &KeyId::enclave(&share.enclave.0));
        put_key_id(&mut header, &KeyId::client(&share.client.0));
        let info = response_info(&header);
        header.extend_from_slice(&nonce);
        let ctx = <Kdf as hpke::kdf::Kdf>::combine_secrets::<Aead, Kem, _>(
            &OpModeS::Base,
            share.shared_secret(&nonce)?,
            &info,
        );
        Ok((
            ResponseSealer {
                ctx: ctx.into(),
                request_id,
                next_seq: 0,
                finished: false,
            },
            header,
        ))
    }

    /// Seals the next chunk. `last` marks the end of the response.
    pub fn seal_chunk(
        &mut self,
        data: &[u8],
        kind: ChunkKind,
        last: bool,
    ) -> Result<Vec<u8>, EnvelopeError> {
        if self.finished {
            return Err(EnvelopeError::ChunkAfterFinal);
        }
        if data.len() > MAX_CHUNK_LEN {
            return Err(EnvelopeError::ChunkTooLarge {
                len: data.len(),
                max: MAX_CHUNK_LEN,
            });
        }
        let flags = if last { FLAG_FINAL } else { 0 }
            | if kind == ChunkKind::Error {
                FLAG_ERROR
            } else {
                0
            };
        let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + data.len() + TAG_LEN);
        put_preamble(&mut out, KIND_RESPONSE_CHUNK);
        out.extend_from_slice(&self.request_id);
        out.extend_from_slice(&self.next_seq.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&((data.len() + TAG_LEN) as u32).to_be_bytes());
        let ct = self
            .ctx
            .seal(data, &out)
            .map_err(|_| EnvelopeError::SealFailed)?;
        out.extend_from_slice(&ct);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.finished = last;
        Ok(out)
    }
}

/// The static–static Diffie-Hellman of one enclave key and one client key,
/// `DH(enclave secret, client public) = DH(client secret, enclave public)`:
/// every response between the two starts from it. It is the same for every
/// response of the pair, so the enclave keeps one per client it answers and
/// the client one per enclave key it seals to, and neither does public-key
/// work per response; each response's nonce makes its key fresh.
/// Zeroized on drop; `Debug` shows only the key ids.
pub struct ResponseStaticShare {
    client: PublicKey,
    enclave: PublicKey,
    dh: Zeroizing<[u8; 32]>,
}

impl ResponseStaticShare {
    /// The client's side: `DH(client, enclave)`. Refuses an enclave key
    /// whose result is the all-zero value (a small-order point), as RFC 9180
    /// §7.1.4 requires of DHKEM(X25519).
    pub fn new(
        client: &SecretKey,
        enclave: &PublicKey,
    ) -> Result<ResponseStaticShare, EnvelopeError> {
        let dh = x25519(client, &enclave.0).ok_or(EnvelopeError::BadPublicKey)?;
        Ok(ResponseStaticShare {
            client: client.public(),
            enclave: *enclave,
            dh,
        })
    }

    /// The enclave's side: `DH(enclave, client)`, the same value. Refuses a
    /// small-order client key likewise.
    pub fn for_enclave(
        enclave: &SecretKey,
        client: &PublicKey,
    ) -> Result<ResponseStaticShare, EnvelopeError> {
        let dh = x25519(enclave, &client.0).ok_or(EnvelopeError::BadPublicKey)?;
        Ok(ResponseStaticShare {
            client: *client,
            enclave: enclave.public(),
            dh,
        })
    }

    /// Whether this share is for `client` and `enclave`.
    pub fn is_for(&self, client: &PublicKey, enclave: &PublicKey) -> bool {
        self.client == *client && self.enclave == *enclave
    }

    /// The client key.
    pub fn client(&self) -> &PublicKey {
        &self.client
    }

    /// The enclave key.
    pub fn enclave(&self) -> &PublicKey {
        &self.enclave
    }

    /// The response's KEM shared secret, as DHKEM(X25519, HKDF-SHA256)
    /// derives one (RFC 9180 §4.1) with the nonce in the place of `enc`:
    /// `ExtractAndExpand(dh, kem_context = nonce ‖ pkC ‖ pkE)` under the
    /// KEM's suite id (`"KEM" ‖ 0x0020`).
    fn shared_secret(&self, nonce: &[u8; NONCE_LEN]) -> Result<SharedSecret<Kem>, EnvelopeError> {
        let mut kem_context = [0u8; NONCE_LEN + 64];
        kem_context[..NONCE_LEN].copy_from_slice(nonce);
        kem_context[NONCE_LEN..NONCE_LEN + 32].copy_from_slice(&self.client.0);
        kem_context[NONCE_LEN + 32..].copy_from_slice(&self.enclave.0);
        dhkem_shared_secret(&self.dh, &kem_context)
    }
}

impl fmt::Debug for ResponseStaticShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStaticShare")
            .field("client", &KeyId::client(&self.client.0).to_string())
            .field("enclave", &KeyId::enclave(&self.enclave.0).to_string())
            .finish_non_exhaustive()
    }
}

/// Opens a response chunk by chunk on the client.
pub struct ResponseOpener {
    ctx: AeadCtxR<Aead, Kdf, Kem>,
    request_id: RequestId,
    next_seq: u32,
    finished: bool,
    failed: bool,
}

impl fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseOpener")
            .field("next_seq", &self.next_seq)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ResponseOpener {
    /// Checks the header (right request, written by `enclave`, addressed to
    /// `client`) and sets up the HPKE context. `header` may be followed by
    /// chunk bytes; only the header is read.
    pub fn new(
        header: &[u8],
        client: &SecretKey,
        enclave: &PublicKey,
        request_id: &RequestId,
    ) -> Result<ResponseOpener, EnvelopeError> {
        Self::new_with_share(header, client, enclave, request_id, None)
    }

    /// As [`ResponseOpener::new`], reusing `share` when it is for this
    /// client key and enclave key (no public-key work); without one it does
    /// the Diffie-Hellman now. Same result.
    pub fn new_with_share(
        header: &[u8],
        client: &SecretKey,
        enclave: &PublicKey,
        request_id: &RequestId,
        share: Option<&ResponseStaticShare>,
    ) -> Result<ResponseOpener, EnvelopeError> {
        let HeaderParts {
            view,
            info_part,
            nonce,
        } = header_parts(header)?;
        let expected_enclave = KeyId::enclave(&enclave.0);
        if view.enclave_key_id != expected_enclave {
            return Err(EnvelopeError::EnclaveKeyMismatch {
                expected: expected_enclave.to_string(),
                found: view.enclave_key_id.to_string(),
            });
        }
        if view.client_key_id != client.client_id() {
            return Err(EnvelopeError::ResponseRecipientMismatch {
                expected: client.client_id().to_string(),
                found: view.client_key_id.to_string(),
            });
        }
        if view.request_id != *request_id {
            return Err(EnvelopeError::RequestIdMismatch);
        }
        let made;
        let share = match share.filter(|s| s.is_for(&client.public(), enclave)) {
            Some(share) => share,
            None => {
                made = ResponseStaticShare::new(client, enclave)?;
                &made
            }
        };
        let ctx = <Kdf as hpke::kdf::Kdf>::combine_secrets::<Aead, Kem, _>(
            &OpModeR::Base,
            share.shared_secret(&nonce)?,
            &response_info(info_part),
        );
        Ok(ResponseOpener {
            ctx: ctx.into(),
            request_id: *request_id,
            next_seq: 0,
            finished: false,
            failed: false,
        })
    }

    /// Opens the next chunk; refuses reordered, duplicated, foreign, altered
    /// chunks and anything after the final one.
    pub fn open_chunk(&mut self, bytes: &[u8]) -> Result<Chunk, EnvelopeError> {
        let mut r = Reader::new(bytes);
        let chunk = self.open_next(&mut r)?;
        r.finish()?;
        Ok(chunk)
    }

    fn open_next(&mut self, r: &mut Reader<'_>) -> Result<Chunk, EnvelopeError> {
        let start = r.pos();
        r.preamble(KIND_RESPONSE_CHUNK, "response chunk")?;
        let request_id: RequestId = r.array("chunk request id")?;
        let seq = r.u32("chunk sequence number")?;
        let flags = r.u8("chunk flags")?;
        let len = r.u32("chunk length")? as usize;
        let aad_end = r.pos();
        if len > MAX_CHUNK_LEN + TAG_LEN {
            return Err(EnvelopeError::ChunkTooLarge {
                len,
                max: MAX_CHUNK_LEN + TAG_LEN,
            });
        }
        let ct = r.take(len, "chunk ciphertext")?;
        let aad = r.slice(start, aad_end);
        if request_id != self.request_id {
            return Err(EnvelopeError::ForeignChunk);
        }
        if self.finished {
            return Err(EnvelopeError::ChunkAfterFinal);
        }
        if self.failed {
            return Err(EnvelopeError::ChunkAuthFailed(seq));
        }
        if seq < self.next_seq {
            return Err(EnvelopeError::DuplicateChunk(seq));
        }
        if seq > self.next_seq {
            return Err(EnvelopeError::ChunkOutOfOrder {
                expected: self.next_seq,
                found: seq,
            });
        }
        if flags & !(FLAG_FINAL | FLAG_ERROR) != 0 {
            return Err(EnvelopeError::BadChunkFlags(flags));
        }
        let data = self.ctx.open(ct, aad).map_err(|_| {
            self.failed = true;
            EnvelopeError::ChunkAuthFailed(seq)
        })?;
        self.next_seq = self.next_seq.wrapping_add(1);
        let last = flags & FLAG_FINAL != 0;
        self.finished = last;
        Ok(Chunk {
            seq,
            kind: if flags & FLAG_ERROR != 0 {
                ChunkKind::Error
            } else {
                ChunkKind::Data
            },
            last,
            data: Zeroizing::new(data),
        })
    }

    /// Whether the final chunk has been opened.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Confirms the stream ended with its final chunk.
    pub fn finish(&self) -> Result<(), EnvelopeError> {
        if self.finished {
            Ok(())
        } else {
            Err(EnvelopeError::TruncatedStream)
        }
    }
}

/// Seals a whole response (header followed by its chunks) in one buffer,
/// splitting outputs larger than [`MAX_CHUNK_LEN`] across chunks.
pub fn seal_response(
    enclave: &SecretKey,
    client: &PublicKey,
    request_id: RequestId,
    kind: ChunkKind,
    output: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if output.len() > MAX_ENVELOPE_LEN / 2 {
        return Err(EnvelopeError::TooLarge {
            len: output.len(),
            max: MAX_ENVELOPE_LEN / 2,
        });
    }
    let (mut sealer, mut out) = ResponseSealer::new(enclave, client, request_id)?;
    let mut pieces = output.chunks(MAX_CHUNK_LEN).peekable();
    if pieces.peek().is_none() {
        out.extend(sealer.seal_chunk(&[], kind, true)?);
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        out.extend(sealer.seal_chunk(piece, kind, last)?);
    }
    Ok(out)
}

/// Opens a whole response: checks every chunk and that the final one is
/// there; returns the kind (error if any chunk is an error report) and the
/// concatenated plaintext.
pub fn open_response(
    bytes: &[u8],
    client: &SecretKey,
    enclave: &PublicKey,
    request_id: &RequestId,
) -> Result<(ChunkKind, Zeroizing<Vec<u8>>), EnvelopeError> {
    open_response_with_share(bytes, client, enclave, request_id, None)
}

/// As [`open_response`], with the client's static share for `enclave`
/// ([`ResponseStaticShare`]) when it has one.
pub fn open_response_with_share(
    bytes: &[u8],
    client: &SecretKey,
    enclave: &PublicKey,
    request_id: &RequestId,
    share: Option<&ResponseStaticShare>,
) -> Result<(ChunkKind, Zeroizing<Vec<u8>>), EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let mut opener = ResponseOpener::new_with_share(bytes, client, enclave, request_id, share)?;
    let mut r = Reader::new(bytes);
    r.take(RESPONSE_HEADER_LEN, "response header")?;
    let mut kind = ChunkKind::Data;
    let mut out = Zeroizing::new(Vec::new());
    while r.remaining() > 0 {
        let chunk = opener.open_next(&mut r)?;
        if chunk.kind == ChunkKind::Error {
            kind = ChunkKind::Error;
        }
        out.extend_from_slice(chunk.data());
    }
    opener.finish()?;
    Ok((kind, out))
}
