//! Re-derives the test vectors published in `docs/envelope.md` from their
//! fixed keys and randomness, and checks every value the document states, so
//! the document cannot drift from the code. Run with
//! `ARCHIPELAGO_PRINT_VECTORS=1 cargo test -p archipelago-proto --test vectors -- --nocapture`
//! to print the block after a deliberate format change.

mod common;

use std::collections::BTreeMap;

use archipelago_proto::envelope::{
    open_request, open_request_with, open_response, open_response_with_share,
    seal_request_prepared, seal_request_with_rng, ChunkKind, Expectations, NextEnc, PreparedDecap,
    PreparedWrap, RequestBody, ResponseOpener, ResponseSealer, ResponseStaticShare,
};
use archipelago_proto::SecretKey;
use common::{pattern32, Tape};

fn derive() -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    let client = SecretKey::from_bytes(&pattern32(0x01)).unwrap();
    let enclaves = [
        SecretKey::from_bytes(&pattern32(0x41)).unwrap(),
        SecretKey::from_bytes(&pattern32(0x81)).unwrap(),
    ];
    v.push(("client_secret_key", hex::encode(client.to_bytes().as_ref())));
    v.push(("client_public_key", hex::encode(client.public().0)));
    v.push(("client_public_key_b64", client.public().to_base64()));
    v.push(("client_key_id", client.client_id().to_string()));
    for (i, e) in enclaves.iter().enumerate() {
        let name: &'static str = ["enclave_0", "enclave_1"][i];
        v.push((
            leak(format!("{name}_secret_key")),
            hex::encode(e.to_bytes().as_ref()),
        ));
        v.push((
            leak(format!("{name}_public_key")),
            hex::encode(e.public().0),
        ));
        v.push((leak(format!("{name}_key_id")), e.enclave_id().to_string()));
    }
    let content_key = pattern32(0xc0);
    let ikm_e = [pattern32(0xd0), pattern32(0xe0)];
    v.push(("content_key", hex::encode(content_key)));
    v.push(("ikm_e_0", hex::encode(ikm_e[0])));
    v.push(("ikm_e_1", hex::encode(ikm_e[1])));
    let request_id: [u8; 16] = std::array::from_fn(|i| i as u8);
    let issued_at = 1_767_225_600u64; // 2026-01-01T00:00:00Z
    let input = br#"{"prompt":"Classify this patient record..."}"#.to_vec();
    v.push(("workload_id", "42".into()));
    v.push(("request_id", hex::encode(request_id)));
    v.push(("issued_at", issued_at.to_string()));
    v.push(("input_utf8", String::from_utf8(input.clone()).unwrap()));
    // The client's next wrap to enclave_0, set up ahead; the body
    // announces its enc.
    let next_ikm = pattern32(0xa0);
    v.push(("next_ikm_e_0", hex::encode(next_ikm)));
    let next_wrap =
        PreparedWrap::new_with_rng(&enclaves[0].public(), &mut Tape::new(next_ikm.to_vec()))
            .unwrap();
    v.push(("next_enc_0", hex::encode(next_wrap.enc())));
    let announced = vec![NextEnc {
        recipient: enclaves[0].enclave_id(),
        enc: *next_wrap.enc(),
    }];
    let body = RequestBody::with_parts(42, request_id, issued_at, client.public(), input.clone())
        .with_next_encs(announced.clone());
    let mut tape = Tape::new([content_key, ikm_e[0], ikm_e[1]].concat());
    let pks = [enclaves[0].public(), enclaves[1].public()];
    let envelope = seal_request_with_rng(&body, &pks, &mut tape).unwrap();
    assert_eq!(
        tape.used(),
        96,
        "randomness order: content key, then ikmE per recipient"
    );
    v.push(("request_envelope", hex::encode(&envelope)));
    v.push((
        "request_envelope_b64url",
        archipelago_proto::b64::encode_url(&envelope),
    ));
    // Both recipients open it and see the input.
    for e in &enclaves {
        let opened = open_request(&envelope, e, &Expectations::default()).unwrap();
        assert_eq!(opened.body.input(), &input[..]);
        assert_eq!(opened.body.next_encs, announced);
    }
    // The next request carries the announced enc; enclave_0 opens it with
    // the decapsulation it made ahead.
    let second = seal_request_prepared(
        &RequestBody::new(42, b"next".to_vec(), client.public()),
        vec![next_wrap],
    )
    .unwrap();
    let ahead = PreparedDecap::new(&enclaves[0], &announced[0].enc).unwrap();
    let opened = open_request_with(&second, &enclaves[0], &Expectations::default(), |_| {
        Some(ahead)
    })
    .unwrap();
    assert_eq!(opened.body.input(), b"next");

    let response_nonce = pattern32(0xf0);
    v.push(("response_nonce", hex::encode(response_nonce)));
    let output = br#"{"labels":[{"label":"Depression","score":0.91}]}"#;
    v.push(("output_utf8", String::from_utf8(output.to_vec()).unwrap()));
    let mut tape = Tape::new(response_nonce.to_vec());
    let (mut sealer, header) =
        ResponseSealer::new_with_rng(&enclaves[0], &client.public(), request_id, &mut tape)
            .unwrap();
    assert_eq!(tape.used(), 32, "randomness: the response nonce");
    let chunk0 = sealer
        .seal_chunk(&output[..12], ChunkKind::Data, false)
        .unwrap();
    let chunk1 = sealer
        .seal_chunk(&output[12..], ChunkKind::Data, true)
        .unwrap();
    // The same response from the enclave's kept share of the key pair
    // (what it does from a client's second job on): the same bytes.
    let enclave_share = ResponseStaticShare::for_enclave(&enclaves[0], &client.public()).unwrap();
    let mut tape = Tape::new(response_nonce.to_vec());
    let (mut s_sealer, s_header) =
        ResponseSealer::with_share_and_rng(&enclave_share, request_id, &mut tape).unwrap();
    assert_eq!(s_header, header, "response header from the kept share");
    assert_eq!(
        s_sealer
            .seal_chunk(&output[..12], ChunkKind::Data, false)
            .unwrap(),
        chunk0
    );
    assert_eq!(
        s_sealer
            .seal_chunk(&output[12..], ChunkKind::Data, true)
            .unwrap(),
        chunk1
    );
    v.push(("response_header", hex::encode(&header)));
    v.push(("response_chunk_0", hex::encode(&chunk0)));
    v.push(("response_chunk_1", hex::encode(&chunk1)));
    let whole = [header.clone(), chunk0.clone(), chunk1.clone()].concat();
    let (kind, opened) =
        open_response(&whole, &client, &enclaves[0].public(), &request_id).unwrap();
    assert_eq!(kind, ChunkKind::Data);
    assert_eq!(&opened[..], &output[..]);
    // The client's opener with its kept share for the enclave key.
    let share = ResponseStaticShare::new(&client, &enclaves[0].public()).unwrap();
    let (_, with_share) = open_response_with_share(
        &whole,
        &client,
        &enclaves[0].public(),
        &request_id,
        Some(&share),
    )
    .unwrap();
    assert_eq!(&with_share[..], &output[..]);
    let mut o = ResponseOpener::new(&header, &client, &enclaves[0].public(), &request_id).unwrap();
    o.open_chunk(&chunk0).unwrap();
    o.open_chunk(&chunk1).unwrap();
    o.finish().unwrap();
    v
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Reads `name = value` lines between the vector markers of the document.
fn documented() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/envelope.md");
    let doc = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let start = doc
        .find("<!-- vectors:begin -->")
        .expect("docs/envelope.md lacks <!-- vectors:begin -->");
    let end = doc
        .find("<!-- vectors:end -->")
        .expect("docs/envelope.md lacks <!-- vectors:end -->");
    let mut map = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc[start..end].lines() {
        let kv = line
            .split_once(" = ")
            .or_else(|| line.strip_suffix(" =").map(|k| (k, "")));
        if let Some((k, val)) = kv.filter(|_| !line.starts_with(' ')) {
            let k = k.trim().to_string();
            map.insert(k.clone(), val.trim().to_string());
            current = Some(k);
        } else if line.starts_with("    ") && !line.trim().is_empty() {
            // Continuation line of a long hex value.
            if let Some(k) = &current {
                map.entry(k.clone()).or_default().push_str(line.trim());
            }
        } else {
            current = None;
        }
    }
    map
}

#[test]
fn documented_vectors_match_the_code() {
    let derived = derive();
    if std::env::var_os("ARCHIPELAGO_PRINT_VECTORS").is_some() {
        for (k, val) in &derived {
            if val.len() > 64 && !k.ends_with("utf8") {
                println!("{k} =");
                for piece in val.as_bytes().chunks(64) {
                    println!("    {}", std::str::from_utf8(piece).unwrap());
                }
            } else {
                println!("{k} = {val}");
            }
        }
    }
    let doc = documented();
    for (k, val) in &derived {
        let got = doc
            .get(*k)
            .unwrap_or_else(|| panic!("docs/envelope.md does not state vector `{k}`"));
        assert_eq!(
            got, val,
            "vector `{k}` in docs/envelope.md differs from the code"
        );
    }
    assert_eq!(
        doc.len(),
        derived.len(),
        "docs/envelope.md states extra vectors"
    );
}
