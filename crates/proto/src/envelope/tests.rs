//! One test per refusal: each way an envelope can be wrong maps to its own
//! typed error, and none of them panics.

use super::response::RESPONSE_NONCE_AT;
use super::*;
use crate::ids::KeyId;
use crate::keys::PublicKey;
use crate::keys::SecretKey;

struct Fixture {
    client: SecretKey,
    enclaves: Vec<SecretKey>,
    body: RequestBody,
    sealed: Vec<u8>,
}

fn fixture(recipients: usize) -> Fixture {
    let client = SecretKey::generate();
    let enclaves: Vec<SecretKey> = (0..recipients).map(|_| SecretKey::generate()).collect();
    let body = RequestBody::new(
        42,
        b"{\"prompt\":\"secret patient record\"}".to_vec(),
        client.public(),
    );
    let pks: Vec<_> = enclaves.iter().map(|k| k.public()).collect();
    let sealed = seal_request(&body, &pks).unwrap();
    Fixture {
        client,
        enclaves,
        body,
        sealed,
    }
}

fn open(f: &Fixture, bytes: &[u8]) -> Result<OpenedRequest, EnvelopeError> {
    open_request(bytes, &f.enclaves[0], &Expectations::default())
}

/// Offset of the first recipient id, the wraps and the body in a request.
fn offsets(recipients: usize) -> (usize, usize, usize) {
    let first_id = 8 + 8 + 30 + 1;
    let wraps = first_id + 30 * recipients;
    let body = wraps + 80 * recipients + 4;
    (first_id, wraps, body)
}

#[test]
fn every_recipient_opens_and_header_is_public() {
    let f = fixture(3);
    for k in &f.enclaves {
        let opened = open_request(&f.sealed, k, &Expectations::default()).unwrap();
        assert_eq!(opened.body.input(), f.body.input());
        assert_eq!(opened.body.request_id, f.body.request_id);
        assert_eq!(opened.body.issued_at, f.body.issued_at);
        assert_eq!(opened.body.response_key, f.client.public());
    }
    let view = peek_header(&f.sealed).unwrap();
    assert_eq!(view.workload_id, 42);
    assert_eq!(view.client_key_id, f.client.client_id());
    let ids: Vec<KeyId> = f.enclaves.iter().map(|k| k.enclave_id()).collect();
    assert_eq!(view.recipients, ids);
    // The plaintext is nowhere in the envelope bytes.
    assert!(!f.sealed.windows(6).any(|w| w == b"secret"));
}

#[test]
fn truncated_at_every_length() {
    let f = fixture(2);
    for len in 0..f.sealed.len() {
        match peek_header(&f.sealed[..len]) {
            Err(EnvelopeError::Truncated { .. }) => {}
            other => panic!("cut at {len}: {other:?}"),
        }
    }
}

#[test]
fn oversized() {
    let big = vec![0u8; MAX_ENVELOPE_LEN + 1];
    assert!(matches!(
        peek_header(&big),
        Err(EnvelopeError::TooLarge { .. })
    ));
    let client = SecretKey::generate();
    let body = RequestBody::new(1, vec![0u8; MAX_INPUT_LEN + 1], client.public());
    assert!(matches!(
        seal_request(&body, &[SecretKey::generate().public()]),
        Err(EnvelopeError::InputTooLarge { .. })
    ));
}

#[test]
fn trailing_bytes() {
    let f = fixture(1);
    let mut b = f.sealed.clone();
    b.push(0);
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::TrailingBytes(1));
}

#[test]
fn bad_magic_version_kind_suite() {
    let f = fixture(1);
    let mut b = f.sealed.clone();
    b[0] ^= 1;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::BadMagic);
    let mut b = f.sealed.clone();
    for old_or_new in [1, 2, 4] {
        b[4] = old_or_new;
        assert_eq!(
            open(&f, &b).unwrap_err(),
            EnvelopeError::UnsupportedVersion(old_or_new)
        );
    }
    let mut b = f.sealed.clone();
    b[5] = KIND_RESPONSE_CHUNK;
    assert!(matches!(open(&f, &b), Err(EnvelopeError::WrongKind { .. })));
    let mut b = f.sealed.clone();
    b[7] = 9;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::UnknownSuite(9));
}

#[test]
fn zero_and_too_many_recipients() {
    let f = fixture(1);
    let (first_id, _, _) = offsets(1);
    let mut b = f.sealed.clone();
    b[first_id - 1] = 0;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::NoRecipients);
    let mut b = f.sealed.clone();
    b[first_id - 1] = (MAX_RECIPIENTS + 1) as u8;
    assert!(matches!(
        open(&f, &b),
        Err(EnvelopeError::TooManyRecipients { count: 17, max: 16 })
    ));
    let pks: Vec<_> = (0..=MAX_RECIPIENTS)
        .map(|_| SecretKey::generate().public())
        .collect();
    assert!(matches!(
        seal_request(&f.body, &pks),
        Err(EnvelopeError::TooManyRecipients { .. })
    ));
    assert_eq!(
        seal_request(&f.body, &[]).unwrap_err(),
        EnvelopeError::NoRecipients
    );
}

#[test]
fn duplicate_recipient_refused() {
    let f = fixture(1);
    let pk = f.enclaves[0].public();
    assert!(matches!(
        seal_request(&f.body, &[pk, pk]),
        Err(EnvelopeError::DuplicateRecipient(_))
    ));
}

#[test]
fn malformed_and_wrong_kind_ids() {
    let f = fixture(1);
    let (first_id, _, _) = offsets(1);
    let mut b = f.sealed.clone();
    b[first_id + 5] = b'!';
    assert!(matches!(open(&f, &b), Err(EnvelopeError::BadKeyId { .. })));
    let mut b = f.sealed.clone();
    b[first_id + 1] = b'c'; // ek_ → ck_
    assert!(matches!(
        open(&f, &b),
        Err(EnvelopeError::WrongIdKind { .. })
    ));
}

#[test]
fn tampered_header_fields() {
    let f = fixture(2);
    // Workload id (bytes 8..16): authenticated by the wraps' associated data.
    let mut b = f.sealed.clone();
    b[15] ^= 1;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::HeaderAuthFailed);
    // A wrapped content key.
    let (_, wraps, _) = offsets(2);
    let mut b = f.sealed.clone();
    b[wraps + 40] ^= 1;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::HeaderAuthFailed);
    // The other recipient's wrap is covered by the body's associated data.
    let mut b = f.sealed.clone();
    b[wraps + 80 + 40] ^= 1;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::BodyAuthFailed);
}

#[test]
fn tampered_body_and_tag() {
    let f = fixture(1);
    let (_, _, body) = offsets(1);
    let mut b = f.sealed.clone();
    b[body + 3] ^= 0x80;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::BodyAuthFailed);
    let mut b = f.sealed.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    assert_eq!(open(&f, &b).unwrap_err(), EnvelopeError::BodyAuthFailed);
}

#[test]
fn wrong_key() {
    let f = fixture(2);
    let stranger = SecretKey::generate();
    assert!(matches!(
        open_request(&f.sealed, &stranger, &Expectations::default()),
        Err(EnvelopeError::NotARecipient(_))
    ));
}

#[test]
fn swapped_workload_or_client_key_id() {
    let f = fixture(1);
    let e = Expectations {
        workload_id: Some(7),
        client_key_id: None,
    };
    assert_eq!(
        open_request(&f.sealed, &f.enclaves[0], &e).unwrap_err(),
        EnvelopeError::WorkloadMismatch {
            job: 7,
            envelope: 42
        }
    );
    let other = SecretKey::generate().client_id();
    let e = Expectations {
        workload_id: Some(42),
        client_key_id: Some(&other),
    };
    assert!(matches!(
        open_request(&f.sealed, &f.enclaves[0], &e),
        Err(EnvelopeError::ClientKeyMismatch { .. })
    ));
    let own = f.client.client_id();
    let e = Expectations {
        workload_id: Some(42),
        client_key_id: Some(&own),
    };
    assert!(open_request(&f.sealed, &f.enclaves[0], &e).is_ok());
}

struct Stream {
    client: SecretKey,
    enclave: SecretKey,
    request_id: RequestId,
    header: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

fn stream(n: usize) -> Stream {
    let client = SecretKey::generate();
    let enclave = SecretKey::generate();
    let request_id = [9u8; 16];
    let (mut s, header) = ResponseSealer::new(&enclave, &client.public(), request_id).unwrap();
    let chunks = (0..n)
        .map(|i| {
            s.seal_chunk(format!("token {i}").as_bytes(), ChunkKind::Data, i + 1 == n)
                .unwrap()
        })
        .collect();
    Stream {
        client,
        enclave,
        request_id,
        header,
        chunks,
    }
}

impl Stream {
    fn opener(&self) -> ResponseOpener {
        ResponseOpener::new(
            &self.header,
            &self.client,
            &self.enclave.public(),
            &self.request_id,
        )
        .unwrap()
    }
}

#[test]
fn stream_roundtrip() {
    let s = stream(5);
    let mut o = s.opener();
    for (i, c) in s.chunks.iter().enumerate() {
        let chunk = o.open_chunk(c).unwrap();
        assert_eq!(chunk.data(), format!("token {i}").as_bytes());
        assert_eq!(chunk.last, i == 4);
    }
    o.finish().unwrap();
}

#[test]
fn stream_reordered() {
    let s = stream(3);
    let mut o = s.opener();
    assert_eq!(
        o.open_chunk(&s.chunks[1]).unwrap_err(),
        EnvelopeError::ChunkOutOfOrder {
            expected: 0,
            found: 1
        }
    );
}

#[test]
fn stream_duplicated_chunk_is_a_replay() {
    let s = stream(3);
    let mut o = s.opener();
    o.open_chunk(&s.chunks[0]).unwrap();
    assert_eq!(
        o.open_chunk(&s.chunks[0]).unwrap_err(),
        EnvelopeError::DuplicateChunk(0)
    );
}

#[test]
fn stream_truncated() {
    let s = stream(3);
    let mut o = s.opener();
    o.open_chunk(&s.chunks[0]).unwrap();
    o.open_chunk(&s.chunks[1]).unwrap();
    assert_eq!(o.finish().unwrap_err(), EnvelopeError::TruncatedStream);
}

#[test]
fn stream_after_final() {
    let s = stream(1);
    let mut o = s.opener();
    o.open_chunk(&s.chunks[0]).unwrap();
    assert_eq!(
        o.open_chunk(&s.chunks[0]).unwrap_err(),
        EnvelopeError::ChunkAfterFinal
    );
}

#[test]
fn stream_spliced_from_another_response() {
    let a = stream(3);
    // Another response to another request: refused by its request id.
    let b = stream(3);
    let mut b_other_request = b.chunks[1].clone();
    b_other_request[8..24].copy_from_slice(&[1u8; 16]);
    let mut o = a.opener();
    o.open_chunk(&a.chunks[0]).unwrap();
    assert_eq!(
        o.open_chunk(&b_other_request).unwrap_err(),
        EnvelopeError::ForeignChunk
    );
    // Another response to the same request id (e.g. a second enclave):
    // same position, but sealed under another HPKE context.
    let mut o = a.opener();
    o.open_chunk(&a.chunks[0]).unwrap();
    assert_eq!(
        o.open_chunk(&b.chunks[1]).unwrap_err(),
        EnvelopeError::ChunkAuthFailed(1)
    );
}

#[test]
fn stream_flags_and_size() {
    let s = stream(2);
    let mut o = s.opener();
    let mut c = s.chunks[0].clone();
    c[28] = 0x80;
    assert_eq!(
        o.open_chunk(&c).unwrap_err(),
        EnvelopeError::BadChunkFlags(0x80)
    );
    // Flipping the final flag is caught by the AEAD (flags are associated data).
    let mut o = s.opener();
    let mut c = s.chunks[0].clone();
    c[28] = 0x01;
    assert_eq!(
        o.open_chunk(&c).unwrap_err(),
        EnvelopeError::ChunkAuthFailed(0)
    );
    let mut o = s.opener();
    let mut c = s.chunks[0].clone();
    c[29..33].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        o.open_chunk(&c),
        Err(EnvelopeError::ChunkTooLarge { .. })
    ));
}

#[test]
fn response_from_wrong_enclave_or_to_wrong_client() {
    let s = stream(1);
    let impostor = SecretKey::generate();
    assert!(matches!(
        ResponseOpener::new(&s.header, &s.client, &impostor.public(), &s.request_id),
        Err(EnvelopeError::EnclaveKeyMismatch { .. })
    ));
    let other_client = SecretKey::generate();
    assert!(matches!(
        ResponseOpener::new(&s.header, &other_client, &s.enclave.public(), &s.request_id),
        Err(EnvelopeError::ResponseRecipientMismatch { .. })
    ));
    assert_eq!(
        ResponseOpener::new(&s.header, &s.client, &s.enclave.public(), &[0u8; 16]).unwrap_err(),
        EnvelopeError::RequestIdMismatch
    );
}

#[test]
fn response_forged_by_another_key_fails_authentication() {
    // The impostor writes a header naming the genuine enclave's key id, but
    // can only key the response with its own Diffie-Hellman with the client.
    let s = stream(1);
    let impostor = SecretKey::generate();
    let (mut forged, mut header) =
        ResponseSealer::new(&impostor, &s.client.public(), s.request_id).unwrap();
    let chunk = forged.seal_chunk(b"forged", ChunkKind::Data, true).unwrap();
    header[24..54].copy_from_slice(&s.header[24..54]);
    let mut o =
        ResponseOpener::new(&header, &s.client, &s.enclave.public(), &s.request_id).unwrap();
    assert_eq!(
        o.open_chunk(&chunk).unwrap_err(),
        EnvelopeError::ChunkAuthFailed(0)
    );
}

#[test]
fn whole_response_roundtrip_and_multi_chunk() {
    let client = SecretKey::generate();
    let enclave = SecretKey::generate();
    let out = vec![7u8; MAX_CHUNK_LEN + 10];
    let sealed = seal_response(&enclave, &client.public(), [1; 16], ChunkKind::Data, &out).unwrap();
    let (kind, data) = open_response(&sealed, &client, &enclave.public(), &[1; 16]).unwrap();
    assert_eq!(kind, ChunkKind::Data);
    assert_eq!(&data[..], &out[..]);
    let view = peek_response_header(&sealed).unwrap();
    assert_eq!(view.enclave_key_id, enclave.enclave_id());
    // Dropping the last chunk is truncation.
    let cut = sealed.len() - (10 + TAG_LEN + 33);
    assert_eq!(
        open_response(&sealed[..cut], &client, &enclave.public(), &[1; 16]).unwrap_err(),
        EnvelopeError::TruncatedStream
    );
    let empty = seal_response(&enclave, &client.public(), [1; 16], ChunkKind::Error, b"").unwrap();
    let (kind, data) = open_response(&empty, &client, &enclave.public(), &[1; 16]).unwrap();
    assert_eq!((kind, data.len()), (ChunkKind::Error, 0));
}

#[test]
fn debug_output_redacts_plaintext() {
    let f = fixture(1);
    let opened = open(&f, &f.sealed).unwrap();
    let dbg = format!("{opened:?}");
    assert!(!dbg.contains("secret patient"), "{dbg}");
    assert!(dbg.contains("redacted"));
    let s = stream(1);
    let chunk = s.opener().open_chunk(&s.chunks[0]).unwrap();
    assert!(!format!("{chunk:?}").contains("token"));
}

/// A request sealed with wrap contexts prepared beforehand opens exactly
/// like one sealed in one go, for every recipient, and each context serves
/// one request only (two requests never share an ephemeral key).
#[test]
fn prepared_wraps_seal_the_same_envelope_and_are_used_once() {
    let client = SecretKey::generate();
    let enclaves: Vec<SecretKey> = (0..2).map(|_| SecretKey::generate()).collect();
    let prepare = || {
        enclaves
            .iter()
            .map(|k| PreparedWrap::new(&k.public()).unwrap())
            .collect::<Vec<_>>()
    };
    let body = RequestBody::new(7, b"prepared".to_vec(), client.public());
    let wraps = prepare();
    assert_eq!(wraps[1].recipient(), &enclaves[1].public());
    let a = seal_request_prepared(&body, wraps).unwrap();
    let b = seal_request_prepared(&body, prepare()).unwrap();
    let fresh = seal_request(&body, &[enclaves[0].public(), enclaves[1].public()]).unwrap();
    assert_eq!(a.len(), fresh.len());
    assert_eq!(
        peek_header(&a).unwrap().recipients,
        peek_header(&fresh).unwrap().recipients
    );
    for k in &enclaves {
        for env in [&a, &b] {
            let opened = open_request(env, k, &Expectations::default()).unwrap();
            assert_eq!(opened.body.input(), b"prepared");
            assert_eq!(opened.body.request_id, body.request_id);
        }
    }
    // Different contexts, different ephemeral keys (the wraps' `enc`).
    let (_, wraps_at, _) = offsets(2);
    assert_ne!(a[wraps_at..wraps_at + 32], b[wraps_at..wraps_at + 32]);
}

#[test]
fn prepared_wraps_are_checked_like_recipients() {
    let client = SecretKey::generate();
    let enclave = SecretKey::generate();
    let body = RequestBody::new(7, b"x".to_vec(), client.public());
    assert!(matches!(
        seal_request_prepared(&body, Vec::new()),
        Err(EnvelopeError::NoRecipients)
    ));
    let twice = vec![
        PreparedWrap::new(&enclave.public()).unwrap(),
        PreparedWrap::new(&enclave.public()).unwrap(),
    ];
    assert!(matches!(
        seal_request_prepared(&body, twice),
        Err(EnvelopeError::DuplicateRecipient(_))
    ));
    let many: Vec<_> = (0..MAX_RECIPIENTS + 1)
        .map(|_| PreparedWrap::new(&SecretKey::generate().public()).unwrap())
        .collect();
    assert!(matches!(
        seal_request_prepared(&body, many),
        Err(EnvelopeError::TooManyRecipients { .. })
    ));
    // Debug names the recipient, never the context's keys.
    let w = PreparedWrap::new(&enclave.public()).unwrap();
    let shown = format!("{w:?}");
    assert!(shown.contains(enclave.enclave_id().as_str()), "{shown}");
    // No other field than the recipient (`ctx:` would be a derived Debug).
    assert!(
        !shown.contains("ctx:") && shown.ends_with(", .. }") && shown.matches(',').count() == 1,
        "{shown}"
    );
}

/// The enclave's share and the client's share of a key pair are the same
/// Diffie-Hellman: a response sealed from the enclave's opens with the
/// client's, with none (computed on the spot) and streamed; each response's
/// nonce gives it a fresh key; a share for other keys is not used; a
/// small-order key is refused when a share is made.
#[test]
fn static_shares_agree_and_each_response_is_fresh() {
    for i in 0..32u8 {
        let client = SecretKey::generate();
        let enclave = SecretKey::generate();
        let out = vec![i; 1 + i as usize * 7];
        let sealer_share = ResponseStaticShare::for_enclave(&enclave, &client.public()).unwrap();
        assert!(sealer_share.is_for(&client.public(), &enclave.public()));
        let (mut sealer, header) = ResponseSealer::with_share(&sealer_share, [i; 16]).unwrap();
        let sealed = [
            header.clone(),
            sealer.seal_chunk(&out, ChunkKind::Data, true).unwrap(),
        ]
        .concat();
        let share = ResponseStaticShare::new(&client, &enclave.public()).unwrap();
        assert!(share.is_for(&client.public(), &enclave.public()));
        let (_, a) = open_response(&sealed, &client, &enclave.public(), &[i; 16]).unwrap();
        let (_, b) =
            open_response_with_share(&sealed, &client, &enclave.public(), &[i; 16], Some(&share))
                .unwrap();
        assert_eq!(&a[..], &out[..]);
        assert_eq!(&b[..], &out[..]);
        // Streamed: the opener from the share opens every chunk.
        let mut o = ResponseOpener::new_with_share(
            &sealed,
            &client,
            &enclave.public(),
            &[i; 16],
            Some(&share),
        )
        .unwrap();
        let chunk = o.open_chunk(&sealed[RESPONSE_HEADER_LEN..]).unwrap();
        assert_eq!(chunk.data(), &out[..]);
        // Altered: still refused.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            open_response_with_share(&bad, &client, &enclave.public(), &[i; 16], Some(&share)),
            Err(EnvelopeError::ChunkAuthFailed(0))
        ));
        // A second response from the same share, to the same request id and
        // with the same output: another nonce, another key.
        let (mut again, header2) = ResponseSealer::with_share(&sealer_share, [i; 16]).unwrap();
        assert_ne!(
            header[RESPONSE_NONCE_AT..],
            header2[RESPONSE_NONCE_AT..],
            "nonce reused"
        );
        assert_ne!(
            again.seal_chunk(&out, ChunkKind::Data, true).unwrap(),
            sealed[RESPONSE_HEADER_LEN..],
            "two responses share a key"
        );
    }
    // A share for another enclave or client is ignored, not misused.
    let client = SecretKey::generate();
    let enclave = SecretKey::generate();
    let sealed = seal_response(&enclave, &client.public(), [1; 16], ChunkKind::Data, b"x").unwrap();
    for wrong in [
        ResponseStaticShare::new(&client, &SecretKey::generate().public()).unwrap(),
        ResponseStaticShare::new(&SecretKey::generate(), &enclave.public()).unwrap(),
    ] {
        assert!(!wrong.is_for(&client.public(), &enclave.public()));
        let (_, data) =
            open_response_with_share(&sealed, &client, &enclave.public(), &[1; 16], Some(&wrong))
                .unwrap();
        assert_eq!(&data[..], b"x");
    }
    // A response forged by another key fails with the share too, and so
    // does one whose nonce was changed on the way.
    let forger = SecretKey::generate();
    let forged = seal_response(&forger, &client.public(), [1; 16], ChunkKind::Data, b"x").unwrap();
    let mut spliced = forged.clone();
    spliced[8 + 16..8 + 16 + 30].copy_from_slice(&sealed[8 + 16..8 + 16 + 30]);
    let share = ResponseStaticShare::new(&client, &enclave.public()).unwrap();
    let mut renonced = sealed.clone();
    renonced[RESPONSE_NONCE_AT] ^= 1;
    for bad in [&spliced, &renonced] {
        for share in [None, Some(&share)] {
            assert!(matches!(
                open_response_with_share(bad, &client, &enclave.public(), &[1; 16], share),
                Err(EnvelopeError::ChunkAuthFailed(0))
            ));
        }
    }
    // The identity point (u = 0) gives the all-zero DH: refused on both
    // sides, and by an opener that has to make its own share.
    assert!(matches!(
        ResponseStaticShare::new(&client, &PublicKey([0; 32])),
        Err(EnvelopeError::BadPublicKey)
    ));
    assert!(matches!(
        ResponseStaticShare::for_enclave(&enclave, &PublicKey([0; 32])),
        Err(EnvelopeError::BadPublicKey)
    ));
    assert!(matches!(
        ResponseSealer::new(&enclave, &PublicKey([0; 32]), [1; 16]),
        Err(EnvelopeError::BadPublicKey)
    ));
    let mut zero = sealed.clone();
    zero[8 + 16..8 + 16 + 30].copy_from_slice(&{
        let mut id = Vec::new();
        super::codec::put_key_id(&mut id, &KeyId::enclave(&[0; 32]));
        id
    });
    assert!(matches!(
        open_response(&zero, &client, &PublicKey([0; 32]), &[1; 16]),
        Err(EnvelopeError::BadPublicKey)
    ));
    // Names only, no secret: not `!contains("dh")`, which a random base32
    // key id can contain (it did, once in CI).
    let shown = format!("{share:?}");
    assert!(
        shown.contains(enclave.enclave_id().as_str())
            && !shown.contains("dh:")
            && shown.ends_with(", .. }")
            && shown.matches(',').count() == 2,
        "{shown}"
    );
}

/// The enclave's own decapsulation (the public key from the key pair, not
/// derived again) opens every wrap exactly as `hpke`'s `single_shot_open`
/// does, and refuses what it refuses: another key's wrap, an altered `enc`
/// and the identity point (an all-zero Diffie-Hellman).
#[test]
fn wrap_open_agrees_with_hpke() {
    use hpke::{Deserializable, OpModeR};
    for i in 0..24u8 {
        let f = fixture(1 + (i as usize % 3));
        let (_, wraps, _) = offsets(f.enclaves.len());
        let core = &f.sealed[..wraps];
        for (r, key) in f.enclaves.iter().enumerate() {
            let at = wraps + 80 * r;
            let (enc, wrapped) = (&f.sealed[at..at + 32], &f.sealed[at + 32..at + 80]);
            let enc32: [u8; 32] = enc.try_into().unwrap();
            let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(key.to_bytes().as_ref()).unwrap();
            let enc_k = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).unwrap();
            let theirs = hpke::single_shot_open::<Aead, Kdf, Kem>(
                &OpModeR::Base,
                &sk,
                &enc_k,
                INFO_WRAP,
                wrapped,
                core,
            )
            .unwrap();
            let ours = super::request::open_wrap(key, &enc32, wrapped, core, None).unwrap();
            assert_eq!(ours, theirs, "wrap {r} of envelope {i}");
            // Decapsulated ahead (an announced enc): the same key.
            let ahead = PreparedDecap::new(key, &enc32).unwrap();
            assert_eq!(
                super::request::open_wrap(key, &enc32, wrapped, core, Some(ahead)).unwrap(),
                theirs
            );
            // One made for another enc or another key is not used.
            let stray = PreparedDecap::new(key, &SecretKey::generate().public().0).unwrap();
            assert_eq!(
                super::request::open_wrap(key, &enc32, wrapped, core, Some(stray)).unwrap(),
                theirs
            );
            let other = SecretKey::generate();
            let foreign = PreparedDecap::new(&other, &enc32).unwrap();
            assert_eq!(
                super::request::open_wrap(key, &enc32, wrapped, core, Some(foreign)).unwrap(),
                theirs
            );
            assert_eq!(
                super::request::open_wrap(&other, &enc32, wrapped, core, None),
                Err(EnvelopeError::HeaderAuthFailed)
            );
            let mut bad = enc32;
            bad[i as usize % 32] ^= 1 << (i % 8);
            assert_eq!(
                super::request::open_wrap(key, &bad, wrapped, core, None),
                Err(EnvelopeError::HeaderAuthFailed)
            );
        }
    }
    let f = fixture(1);
    let (_, wraps, _) = offsets(1);
    let mut zero = f.sealed.clone();
    zero[wraps..wraps + 32].fill(0);
    assert_eq!(
        open(&f, &zero).unwrap_err(),
        EnvelopeError::HeaderAuthFailed
    );
}

/// A body announces the encs of the client's next wraps: they travel
/// encrypted, every recipient reads them, and the enclave's decapsulation
/// made ahead from one opens the next request exactly as the plain open.
#[test]
fn next_encs_round_trip_and_open_the_next_request() {
    let client = SecretKey::generate();
    let enclaves: Vec<SecretKey> = (0..2).map(|_| SecretKey::generate()).collect();
    let pks: Vec<PublicKey> = enclaves.iter().map(|k| k.public()).collect();
    let next: Vec<PreparedWrap> = pks
        .iter()
        .map(|pk| PreparedWrap::new(pk).unwrap())
        .collect();
    let announced: Vec<NextEnc> = next
        .iter()
        .map(|w| NextEnc {
            recipient: KeyId::enclave(&w.recipient().0),
            enc: *w.enc(),
        })
        .collect();
    let body =
        RequestBody::new(7, b"first".to_vec(), client.public()).with_next_encs(announced.clone());
    let first = seal_request(&body, &pks).unwrap();
    for k in &enclaves {
        let opened = open_request(&first, k, &Expectations::default()).unwrap();
        assert_eq!(opened.body.next_encs, announced);
    }
    let second = seal_request_prepared(
        &RequestBody::new(7, b"second".to_vec(), client.public()),
        next,
    )
    .unwrap();
    for (k, n) in enclaves.iter().zip(&announced) {
        let ahead = PreparedDecap::new(k, &n.enc).unwrap();
        let mut asked = None;
        let opened = open_request_with(&second, k, &Expectations::default(), |enc| {
            asked = Some(*enc);
            Some(ahead)
        })
        .unwrap();
        assert_eq!(asked, Some(n.enc), "asked for the wrap's enc");
        assert_eq!(opened.body.input(), b"second");
        assert!(opened.body.next_encs.is_empty());
    }
    assert!(!format!(
        "{:?}",
        PreparedDecap::new(&enclaves[0], &announced[0].enc).unwrap()
    )
    .contains("shared"));
}

/// Each malformed announcement is refused, when sealing and when opening.
#[test]
fn malformed_next_encs_are_refused() {
    let client = SecretKey::generate();
    let enclave = SecretKey::generate();
    let one = NextEnc {
        recipient: enclave.enclave_id(),
        enc: [9; 32],
    };
    let body = |next: Vec<NextEnc>| {
        RequestBody::new(1, b"x".to_vec(), client.public()).with_next_encs(next)
    };
    let refused = |b: RequestBody| seal_request(&b, &[enclave.public()]).unwrap_err();
    assert!(
        matches!(refused(body(vec![one.clone(); 2])), EnvelopeError::MalformedBody(m) if m.contains("two next encs"))
    );
    let many: Vec<NextEnc> = (0..17)
        .map(|_| NextEnc {
            recipient: SecretKey::generate().enclave_id(),
            enc: [1; 32],
        })
        .collect();
    assert!(matches!(
        refused(body(many)),
        EnvelopeError::MalformedBody(_)
    ));
    let client_id = NextEnc {
        recipient: client.client_id(),
        enc: [1; 32],
    };
    assert!(
        matches!(refused(body(vec![client_id])), EnvelopeError::MalformedBody(m) if m.contains("ek_"))
    );

    // Decoding: the encoded body with its announcement cut, padded, or
    // with a count beyond the limit.
    let good = body(vec![one]).encode().unwrap();
    assert_eq!(RequestBody::decode(&good).unwrap().next_encs.len(), 1);
    for cut in [1, 32, 62] {
        assert!(matches!(
            RequestBody::decode(&good[..good.len() - cut]),
            Err(EnvelopeError::MalformedBody(_))
        ));
    }
    let mut padded = good.to_vec();
    padded.push(0);
    assert!(matches!(
        RequestBody::decode(&padded),
        Err(EnvelopeError::MalformedBody(m)) if m.contains("trailing")
    ));
    let mut counted = good.to_vec();
    let at = counted.len() - 63;
    counted[at] = 17;
    assert!(matches!(
        RequestBody::decode(&counted),
        Err(EnvelopeError::MalformedBody(_))
    ));
    let mut no_count = good.to_vec();
    no_count.truncate(at);
    assert!(matches!(
        RequestBody::decode(&no_count),
        Err(EnvelopeError::MalformedBody(_))
    ));
    // A client (ck_) id where an enclave id belongs.
    let mut client_named = good.to_vec();
    client_named[at + 2..at + 4].copy_from_slice(b"ck");
    assert!(matches!(
        RequestBody::decode(&client_named),
        Err(EnvelopeError::MalformedBody(m)) if m.contains("ek_")
    ));
    // The same key announced twice.
    let mut twice = good.to_vec();
    twice[at] = 2;
    twice.extend_from_slice(&good[at + 1..]);
    assert!(matches!(
        RequestBody::decode(&twice),
        Err(EnvelopeError::MalformedBody(m)) if m.contains("two next encs")
    ));
}
