//! Sealing and opening the request envelope (client → enclave).
//!
//! Layout (all integers big-endian; see `docs/envelope.md`):
//!
//! ```text
//! header core   magic "ARCE" | version 3 | kind 0x01 | suite u16
//!               | workload_id u64 | client key id (len 29 + ASCII)
//!               | recipient count u8 | recipient ek_ ids (len 29 + ASCII each)
//! wraps         count × (enc [32] | wrapped content key [32 + 16 tag])
//! body length   u32
//! body          ChaCha20-Poly1305(content key, nonce 0, aad = header, body plaintext)
//! ```
//!
//! The body plaintext is `workload_id u64 | request_id [16] | issued_at u64 |
//! response key [32] | input length u32 | input | next-enc count u8 |
//! next encs (enclave key id | enc [32] each)`.
//!
//! The next encs are the `enc` values the client will use in its next
//! request to those enclave keys (its [`PreparedWrap`]s, made ahead), so an
//! enclave can do that request's Diffie-Hellman between jobs
//! ([`PreparedDecap`]) and open it without any public-key work. They are a
//! hint: a request that uses another `enc` opens as before.

use std::fmt;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use hpke::aead::AeadCtxR;
use hpke::rand_core::CryptoRng;
use hpke::{OpModeR, OpModeS};
use zeroize::Zeroizing;

use super::codec::{put_key_id, put_preamble, Reader};
use super::{
    dhkem_shared_secret, x25519, Aead, EnvelopeError, Kdf, Kem, RequestId, INFO_WRAP, KIND_REQUEST,
    MAX_ENVELOPE_LEN, MAX_INPUT_LEN, MAX_RECIPIENTS, TAG_LEN,
};
use crate::ids::{KeyId, KeyPrefix};
use crate::keys::{PublicKey, SecretKey};

const ENC_LEN: usize = 32;
const WRAPPED_LEN: usize = 32 + TAG_LEN;
const BODY_FIXED_LEN: usize = 8 + 16 + 8 + 32 + 4 + 1;
const NEXT_ENC_LEN: usize = 30 + ENC_LEN;

/// At most one announced `enc` per enclave key, and no more than a request
/// has recipients.
fn check_next_encs(next: &[NextEnc]) -> Result<(), EnvelopeError> {
    if next.len() > MAX_RECIPIENTS {
        return Err(EnvelopeError::MalformedBody(
            "more next encs than a request has recipients",
        ));
    }
    for (i, n) in next.iter().enumerate() {
        if n.recipient.prefix() != KeyPrefix::Enclave {
            return Err(EnvelopeError::MalformedBody(
                "a next enc's key id is not an ek_ id",
            ));
        }
        if next[..i].iter().any(|m| m.recipient == n.recipient) {
            return Err(EnvelopeError::MalformedBody(
                "two next encs for one enclave key",
            ));
        }
    }
    Ok(())
}

/// The plaintext of a request: what only the client and the enclave see.
/// Zeroized on drop; its `Debug` shows sizes, never the input.
pub struct RequestBody {
    /// The workload the client meant; must equal the header's and the job's.
    pub workload_id: u64,
    /// Random per request; the enclave refuses one it has seen.
    pub request_id: RequestId,
    /// Unix seconds when sealed; the enclave refuses stale ones.
    pub issued_at: u64,
    /// The client's X25519 key the response is sealed to.
    pub response_key: PublicKey,
    input: Zeroizing<Vec<u8>>,
    /// The `enc` the client's next request to each of these enclave keys
    /// will carry (at most [`MAX_RECIPIENTS`], one per key).
    pub next_encs: Vec<NextEnc>,
}

/// An announced `enc`: the X25519 ephemeral public key the client has set
/// up for its next request to `recipient` (see the module doc). Public
/// values only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextEnc {
    /// The `ek_` id of the enclave key.
    pub recipient: KeyId,
    /// The encapsulated key that request's wrap will carry.
    pub enc: [u8; ENC_LEN],
}

impl RequestBody {
    /// A body with a fresh random request id and `issued_at` = now.
    pub fn new(workload_id: u64, input: Vec<u8>, response_key: PublicKey) -> RequestBody {
        let mut request_id = [0u8; 16];
        hpke::rand_core::Rng::fill_bytes(&mut super::os_rng(), &mut request_id);
        let issued_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        RequestBody::with_parts(workload_id, request_id, issued_at, response_key, input)
    }

    /// A body with every field given (tests, vectors).
    pub fn with_parts(
        workload_id: u64,
        request_id: RequestId,
        issued_at: u64,
        response_key: PublicKey,
        input: Vec<u8>,
    ) -> RequestBody {
        RequestBody {
            workload_id,
            request_id,
            issued_at,
            response_key,
            input: Zeroizing::new(input),
            next_encs: Vec::new(),
        }
    }

    /// The same body announcing `next` (see [`NextEnc`]); sealing refuses
    /// more than [`MAX_RECIPIENTS`] or two for one key.
    pub fn with_next_encs(mut self, next: Vec<NextEnc>) -> RequestBody {
        self.next_encs = next;
        self
    }

    /// The job input (plaintext).
    pub fn input(&self) -> &[u8] {
        &self.input
    }

    pub(super) fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        check_next_encs(&self.next_encs)?;
        let mut out = Zeroizing::new(Vec::with_capacity(
            BODY_FIXED_LEN + self.input.len() + self.next_encs.len() * NEXT_ENC_LEN,
        ));
        out.extend_from_slice(&self.workload_id.to_be_bytes());
        out.extend_from_slice(&self.request_id);
        out.extend_from_slice(&self.issued_at.to_be_bytes());
        out.extend_from_slice(&self.response_key.0);
        out.extend_from_slice(&(self.input.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.input);
        out.push(self.next_encs.len() as u8);
        for n in &self.next_encs {
            put_key_id(&mut out, &n.recipient);
            out.extend_from_slice(&n.enc);
        }
        Ok(out)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<RequestBody, EnvelopeError> {
        let malformed = |_| EnvelopeError::MalformedBody("shorter than its fields");
        let mut r = Reader::new(bytes);
        let workload_id = r.u64("body workload id").map_err(malformed)?;
        let request_id = r.array("body request id").map_err(malformed)?;
        let issued_at = r.u64("body issued at").map_err(malformed)?;
        let response_key = PublicKey(r.array("body response key").map_err(malformed)?);
        let len = r.u32("body input length").map_err(malformed)? as usize;
        let input = r.take(len, "body input").map_err(malformed)?;
        let count = r.u8("body next-enc count").map_err(malformed)? as usize;
        if count > MAX_RECIPIENTS {
            return Err(EnvelopeError::MalformedBody(
                "more next encs than a request has recipients",
            ));
        }
        let mut next_encs = Vec::with_capacity(count);
        for _ in 0..count {
            let recipient = r
                .key_id("body next-enc key id", KeyPrefix::Enclave)
                .map_err(|_| {
                    EnvelopeError::MalformedBody("a next enc's key id is not an ek_ id")
                })?;
            let enc = r.array("body next enc").map_err(malformed)?;
            next_encs.push(NextEnc { recipient, enc });
        }
        if r.remaining() != 0 {
            return Err(EnvelopeError::MalformedBody(
                "trailing bytes after the next encs",
            ));
        }
        check_next_encs(&next_encs)?;
        Ok(RequestBody::with_parts(
            workload_id,
            request_id,
            issued_at,
            response_key,
            input.to_vec(),
        )
        .with_next_encs(next_encs))
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("workload_id", &self.workload_id)
            .field("request_id", &hex16(&self.request_id))
            .field("issued_at", &self.issued_at)
            .field("response_key", &self.response_key)
            .field(
                "input",
                &format_args!("<{} bytes redacted>", self.input.len()),
            )
            .field("next_encs", &self.next_encs.len())
            .finish()
    }
}

pub(crate) fn hex16(id: &[u8; 16]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// What anyone (the coordinator included) can read from a request envelope
/// without a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderView {
    pub workload_id: u64,
    pub client_key_id: KeyId,
    pub recipients: Vec<KeyId>,
    /// Length of the encrypted body, tag included.
    pub body_len: usize,
}

struct Parsed<'a> {
    view: HeaderView,
    core: &'a [u8],
    header: &'a [u8],
    wraps: Vec<(&'a [u8], &'a [u8])>,
    body: &'a [u8],
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max: MAX_ENVELOPE_LEN,
        });
    }
    let mut r = Reader::new(bytes);
    r.preamble(KIND_REQUEST, "request")?;
    let workload_id = r.u64("workload id")?;
    let client_key_id = r.key_id("client key id", KeyPrefix::Client)?;
    let count = r.u8("recipient count")? as usize;
    if count == 0 {
        return Err(EnvelopeError::NoRecipients);
    }
    if count > MAX_RECIPIENTS {
        return Err(EnvelopeError::TooManyRecipients {
            count,
            max: MAX_RECIPIENTS,
        });
    }
    let mut recipients: Vec<KeyId> = Vec::with_capacity(count);
    for _ in 0..count {
        let id = r.key_id("recipient key id", KeyPrefix::Enclave)?;
        if recipients.contains(&id) {
            return Err(EnvelopeError::DuplicateRecipient(id.to_string()));
        }
        recipients.push(id);
    }
    let core_end = r.pos();
    let mut wraps = Vec::with_capacity(count);
    for _ in 0..count {
        let enc = r.take(ENC_LEN, "recipient enc")?;
        let wrapped = r.take(WRAPPED_LEN, "wrapped content key")?;
        wraps.push((enc, wrapped));
    }
    let body_len = r.u32("body length")? as usize;
    if body_len < TAG_LEN {
        return Err(EnvelopeError::MalformedBody("body shorter than its tag"));
    }
    let header_end = r.pos();
    let body = r.take(body_len, "body")?;
    r.finish()?;
    Ok(Parsed {
        view: HeaderView {
            workload_id,
            client_key_id,
            recipients,
            body_len,
        },
        core: &bytes[..core_end],
        header: &bytes[..header_end],
        wraps,
        body,
    })
}

/// Reads the public header of a request envelope (no key needed): what the
/// coordinator uses to route a job to one of its recipients.
pub fn peek_header(bytes: &[u8]) -> Result<HeaderView, EnvelopeError> {
    parse(bytes).map(|p| p.view)
}

/// Seals `body` to `recipients` (enclave public keys) with the OS CSPRNG.
pub fn seal_request(
    body: &RequestBody,
    recipients: &[PublicKey],
) -> Result<Vec<u8>, EnvelopeError> {
    seal_request_with_rng(body, recipients, &mut super::os_rng())
}

/// Seals with the given RNG. Randomness is drawn in this order: the 32-byte
/// content key, then for each recipient in order the 32-byte HPKE `ikmE`.
pub fn seal_request_with_rng(
    body: &RequestBody,
    recipients: &[PublicKey],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, EnvelopeError> {
    check_recipients(recipients.len())?;
    let content_key = content_key(rng);
    let wraps = recipients
        .iter()
        .map(|pk| PreparedWrap::new_with_rng(pk, rng))
        .collect::<Result<Vec<_>, _>>()?;
    seal_with(body, &content_key, wraps)
}

/// One recipient's HPKE sender context (`SetupBaseS` with the wrap info),
/// set up before the request it will carry a content key for. The setup is
/// all of a wrap's public-key work (an X25519 key generation and one
/// Diffie-Hellman) and depends only on the recipient's key, so a client
/// can do it while idle and seal the next request with
/// [`seal_request_prepared`] without any. Used once: sealing consumes it,
/// so no two requests share an ephemeral key. The context's keys are
/// zeroized on drop; `Debug` shows only the recipient.
pub struct PreparedWrap {
    recipient: PublicKey,
    enc: [u8; ENC_LEN],
    ctx: hpke::aead::AeadCtxS<Aead, Kdf, Kem>,
}

impl PreparedWrap {
    /// A fresh wrap context for `recipient` from the OS CSPRNG.
    pub fn new(recipient: &PublicKey) -> Result<PreparedWrap, EnvelopeError> {
        Self::new_with_rng(recipient, &mut super::os_rng())
    }

    /// As [`PreparedWrap::new`]; draws the 32-byte HPKE `ikmE` from `rng`.
    pub fn new_with_rng(
        recipient: &PublicKey,
        rng: &mut impl CryptoRng,
    ) -> Result<PreparedWrap, EnvelopeError> {
        let pk = recipient
            .to_kem()
            .map_err(|_| EnvelopeError::BadPublicKey)?;
        let (enc, ctx) =
            hpke::setup_sender_with_rng::<Aead, Kdf, Kem>(&OpModeS::Base, &pk, INFO_WRAP, rng)
                .map_err(|_| EnvelopeError::SealFailed)?;
        let enc = super::enc_bytes(&enc)?;
        Ok(PreparedWrap {
            recipient: *recipient,
            enc,
            ctx,
        })
    }

    /// The enclave key this wrap is for.
    pub fn recipient(&self) -> &PublicKey {
        &self.recipient
    }

    /// The `enc` (ephemeral public key) the request sealed with this wrap
    /// will carry: what a body announces as [`NextEnc`].
    pub fn enc(&self) -> &[u8; ENC_LEN] {
        &self.enc
    }
}

impl fmt::Debug for PreparedWrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedWrap")
            .field("recipient", &KeyId::enclave(&self.recipient.0).to_string())
            .finish_non_exhaustive()
    }
}

/// Seals `body` with wrap contexts set up beforehand ([`PreparedWrap`]),
/// one per recipient in the order given, and a fresh content key from the
/// OS CSPRNG: the same bytes on the wire as [`seal_request`], without its
/// per-recipient public-key work.
pub fn seal_request_prepared(
    body: &RequestBody,
    wraps: Vec<PreparedWrap>,
) -> Result<Vec<u8>, EnvelopeError> {
    check_recipients(wraps.len())?;
    seal_with(body, &content_key(&mut super::os_rng()), wraps)
}

fn content_key(rng: &mut impl CryptoRng) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(key.as_mut());
    key
}

fn check_recipients(count: usize) -> Result<(), EnvelopeError> {
    if count == 0 {
        return Err(EnvelopeError::NoRecipients);
    }
    if count > MAX_RECIPIENTS {
        return Err(EnvelopeError::TooManyRecipients {
            count,
            max: MAX_RECIPIENTS,
        });
    }
    Ok(())
}

/// The envelope around `body` for `wraps` (their count already checked).
fn seal_with(
    body: &RequestBody,
    content_key: &[u8; 32],
    wraps: Vec<PreparedWrap>,
) -> Result<Vec<u8>, EnvelopeError> {
    if body.input.len() > MAX_INPUT_LEN {
        return Err(EnvelopeError::InputTooLarge {
            len: body.input.len(),
            max: MAX_INPUT_LEN,
        });
    }
    let ids: Vec<KeyId> = wraps
        .iter()
        .map(|w| KeyId::enclave(&w.recipient.0))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        if ids[..i].contains(id) {
            return Err(EnvelopeError::DuplicateRecipient(id.to_string()));
        }
    }

    let plaintext = body.encode()?;
    let body_len = plaintext.len() + TAG_LEN;
    let mut out = Vec::with_capacity(80 + wraps.len() * (30 + ENC_LEN + WRAPPED_LEN) + body_len);
    put_preamble(&mut out, KIND_REQUEST);
    out.extend_from_slice(&body.workload_id.to_be_bytes());
    put_key_id(&mut out, &KeyId::client(&body.response_key.0));
    out.push(wraps.len() as u8);
    for id in &ids {
        put_key_id(&mut out, id);
    }
    let core_end = out.len();
    for mut w in wraps {
        // A single-shot HPKE seal is this context's first (sequence 0) seal.
        let wrapped = w
            .ctx
            .seal(content_key, &out[..core_end])
            .map_err(|_| EnvelopeError::SealFailed)?;
        out.extend_from_slice(&w.enc);
        out.extend_from_slice(&wrapped);
    }
    out.extend_from_slice(&(body_len as u32).to_be_bytes());
    let header_end = out.len();
    out.extend_from_slice(&plaintext);
    let cipher = ChaCha20Poly1305::new(content_key.into());
    let (header, body_buf) = out.split_at_mut(header_end);
    let tag = cipher
        .encrypt_inout_detached(&Default::default(), header, body_buf.into())
        .map_err(|_| EnvelopeError::SealFailed)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// What the relying party expects of an envelope before spending any
/// public-key work on it (from the job it was handed).
#[derive(Debug, Default, Clone, Copy)]
pub struct Expectations<'a> {
    pub workload_id: Option<u64>,
    pub client_key_id: Option<&'a KeyId>,
}

/// An opened request: the public header and the plaintext body.
#[derive(Debug)]
pub struct OpenedRequest {
    pub header: HeaderView,
    pub body: RequestBody,
}

/// The KEM shared secret of one wrap, `Decap(enc, skR)` (RFC 9180 §4.1:
/// one X25519 and `ExtractAndExpand`), made before the request that
/// carries `enc` arrives: an enclave makes it between jobs for an `enc` a
/// client announced ([`NextEnc`]), so opening that request costs no
/// public-key work. Secret: zeroized on drop, `Debug` shows only the key
/// and `enc`.
pub struct PreparedDecap {
    recipient: PublicKey,
    enc: [u8; ENC_LEN],
    /// `hpke`'s type, zeroized on drop.
    shared: hpke::kem::SharedSecret<Kem>,
}

impl PreparedDecap {
    /// Decapsulates `enc` with `key`. An all-zero Diffie-Hellman (a
    /// small-order point, which no honest client announces) is
    /// `HeaderAuthFailed`, as it would be at opening.
    pub fn new(key: &SecretKey, enc: &[u8; ENC_LEN]) -> Result<PreparedDecap, EnvelopeError> {
        let dh = x25519(key, enc).ok_or(EnvelopeError::HeaderAuthFailed)?;
        let mut kem_context = [0u8; ENC_LEN + 32];
        kem_context[..ENC_LEN].copy_from_slice(enc);
        kem_context[ENC_LEN..].copy_from_slice(&key.public().0);
        let shared =
            dhkem_shared_secret(&dh, &kem_context).map_err(|_| EnvelopeError::HeaderAuthFailed)?;
        Ok(PreparedDecap {
            recipient: key.public(),
            enc: *enc,
            shared,
        })
    }

    /// The enclave public key it was made with.
    pub fn recipient(&self) -> &PublicKey {
        &self.recipient
    }

    /// The `enc` it decapsulates.
    pub fn enc(&self) -> &[u8; ENC_LEN] {
        &self.enc
    }
}

impl fmt::Debug for PreparedDecap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedDecap")
            .field("recipient", &KeyId::enclave(&self.recipient.0).to_string())
            .field("enc", &crate::b64::encode_url(&self.enc))
            .finish_non_exhaustive()
    }
}

/// RFC 9180 `OpenBase(enc, skR, info = INFO_WRAP, aad, ct)`, with
/// `Decap`'s `pkRm` taken from `key` rather than derived from the secret
/// again (as `hpke`'s `decap` does: a fixed-base scalar multiplication, a
/// quarter of the open's public-key work, for a value the enclave holds),
/// and `Decap` itself skipped when `prepared` was made for this key and
/// `enc`. A failure of any part, an all-zero Diffie-Hellman included, is
/// `HeaderAuthFailed`: the wrap or the header it covers was altered.
pub(crate) fn open_wrap(
    key: &SecretKey,
    enc: &[u8; ENC_LEN],
    wrapped: &[u8],
    aad: &[u8],
    prepared: Option<PreparedDecap>,
) -> Result<Vec<u8>, EnvelopeError> {
    let decap = match prepared {
        Some(p) if p.enc == *enc && p.recipient == key.public() => p,
        _ => PreparedDecap::new(key, enc)?,
    };
    let mut ctx: AeadCtxR<Aead, Kdf, Kem> =
        <Kdf as hpke::kdf::Kdf>::combine_secrets::<Aead, Kem, _>(
            &OpModeR::Base,
            decap.shared,
            INFO_WRAP,
        )
        .into();
    ctx.open(wrapped, aad)
        .map_err(|_| EnvelopeError::HeaderAuthFailed)
}

/// Opens a request envelope with one enclave key.
pub fn open_request(
    bytes: &[u8],
    key: &SecretKey,
    expect: &Expectations<'_>,
) -> Result<OpenedRequest, EnvelopeError> {
    open_request_with(bytes, key, expect, |_| None)
}

/// [`open_request`], asking `prepared` for a [`PreparedDecap`] of the
/// wrap's `enc` (once, after the header checks); without one (or with one
/// for another key or `enc`) the wrap is decapsulated here.
pub fn open_request_with(
    bytes: &[u8],
    key: &SecretKey,
    expect: &Expectations<'_>,
    prepared: impl FnOnce(&[u8; ENC_LEN]) -> Option<PreparedDecap>,
) -> Result<OpenedRequest, EnvelopeError> {
    let p = parse(bytes)?;
    if let Some(job) = expect.workload_id {
        if job != p.view.workload_id {
            return Err(EnvelopeError::WorkloadMismatch {
                job,
                envelope: p.view.workload_id,
            });
        }
    }
    if let Some(job) = expect.client_key_id {
        if *job != p.view.client_key_id {
            return Err(EnvelopeError::ClientKeyMismatch {
                job: job.to_string(),
                envelope: p.view.client_key_id.to_string(),
            });
        }
    }
    let own = key.enclave_id();
    let idx = p
        .view
        .recipients
        .iter()
        .position(|id| *id == own)
        .ok_or_else(|| EnvelopeError::NotARecipient(own.to_string()))?;
    let (enc, wrapped) = p.wraps[idx];
    // `parse` took ENC_LEN bytes for it.
    let enc: &[u8; ENC_LEN] = enc
        .try_into()
        .map_err(|_| EnvelopeError::HeaderAuthFailed)?;
    let content_key = Zeroizing::new(open_wrap(key, enc, wrapped, p.core, prepared(enc))?);
    let content_key: &[u8; 32] = content_key
        .as_slice()
        .try_into()
        .map_err(|_| EnvelopeError::HeaderAuthFailed)?;
    let cipher = ChaCha20Poly1305::new(content_key.into());
    let (ct, tag) = p.body.split_at(p.body.len() - TAG_LEN);
    let mut plain = Zeroizing::new(ct.to_vec());
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| EnvelopeError::BodyAuthFailed)?;
    cipher
        .decrypt_inout_detached(
            &Default::default(),
            p.header,
            plain.as_mut_slice().into(),
            tag.into(),
        )
        .map_err(|_| EnvelopeError::BodyAuthFailed)?;
    let body = RequestBody::decode(&plain)?;
    if body.workload_id != p.view.workload_id {
        return Err(EnvelopeError::MalformedBody(
            "workload id inside the body differs from the header",
        ));
    }
    if KeyId::client(&body.response_key.0) != p.view.client_key_id {
        return Err(EnvelopeError::ResponseKeyMismatch);
    }
    Ok(OpenedRequest {
        header: p.view,
        body,
    })
}
