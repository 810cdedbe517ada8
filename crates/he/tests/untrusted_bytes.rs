//! Every parser of untrusted bytes returns a typed error on garbage and never
//! panics: random bytes, random bytes behind a valid header, and random
//! single-byte corruptions of valid messages.

use std::sync::OnceLock;

use archipelago_he::{
    decrypt_aggregate, decrypt_scores, encrypt_features, encrypt_records, evaluate_aggregate,
    evaluate_classify, generate_keypair, peek_header, AggregateColumn, AggregateSchema,
    HePublicMaterial, HeSecretKey, LinearHead, LinearHeadQuantised,
};
use proptest::prelude::*;

struct Fixture {
    sk: HeSecretKey,
    pm: HePublicMaterial,
    head: LinearHeadQuantised,
    schema: AggregateSchema,
    classify_request: Vec<u8>,
    classify_response: Vec<u8>,
    aggregate_request: Vec<u8>,
    aggregate_response: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (sk, pm) = generate_keypair().unwrap();
        let dim = 384;
        let head = LinearHead {
            labels: vec!["a".into(), "b".into(), "c".into()],
            weights: (0..3)
                .map(|c| {
                    (0..dim)
                        .map(|i| ((i * 7 + c * 13) % 17) as f32 / 17.0 - 0.5)
                        .collect()
                })
                .collect(),
            bias: vec![0.1, -0.2, 0.0],
        }
        .quantise()
        .unwrap();
        let mut x: Vec<f32> = (0..dim).map(|i| ((i % 5) as f32) - 2.0).collect();
        let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        x.iter_mut().for_each(|v| *v /= n);
        let classify_request = encrypt_features(&sk, &x).unwrap();
        let classify_response = evaluate_classify(&pm, &head, &classify_request).unwrap();
        let schema = AggregateSchema {
            columns: vec![AggregateColumn::Value {
                name: "v".into(),
                scale: 10.0,
                min: 0.0,
                max: 100.0,
            }],
        };
        let aggregate_request = encrypt_records(&sk, &schema, &[vec![1.5], vec![2.5]]).unwrap();
        let aggregate_response = evaluate_aggregate(&pm, &aggregate_request).unwrap();
        Fixture {
            sk,
            pm,
            head,
            schema,
            classify_request,
            classify_response,
            aggregate_request,
            aggregate_response,
        }
    })
}

/// Run every parser on `bytes`; each must return (Ok or a typed error) without panicking.
fn parse_everything(bytes: &[u8]) {
    let f = fixture();
    let _ = peek_header(bytes);
    let _ = HePublicMaterial::from_bytes(bytes);
    let _ = HeSecretKey::from_bytes(bytes);
    let _ = evaluate_classify(&f.pm, &f.head, bytes);
    let _ = decrypt_scores(&f.sk, bytes, 3);
    let _ = evaluate_aggregate(&f.pm, bytes);
    let _ = decrypt_aggregate(&f.sk, &f.schema, bytes);
}

#[test]
fn fixture_round_trips() {
    let f = fixture();
    let s = decrypt_scores(&f.sk, &f.classify_response, 3).unwrap();
    assert_eq!(s.quantised().len(), 3);
    let a = decrypt_aggregate(&f.sk, &f.schema, &f.aggregate_response).unwrap();
    assert_eq!(a.count, 2);
}

#[test]
fn header_then_garbage_is_refused_for_every_kind() {
    for kind in 1u8..=6 {
        for len in [0usize, 1, 29, 33, 100, 4096] {
            let mut b = b"ARHE\x01".to_vec();
            b.push(kind);
            b.extend_from_slice(&1u16.to_le_bytes());
            b.extend((0..len).map(|i| (i * 31 % 251) as u8));
            parse_everything(&b);
            assert!(evaluate_classify(&fixture().pm, &fixture().head, &b).is_err());
            assert!(HePublicMaterial::from_bytes(&b).is_err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        parse_everything(&bytes);
    }

    #[test]
    fn random_bytes_after_valid_header_never_panic(
        kind in 1u8..=6,
        body in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut b = b"ARHE\x01".to_vec();
        b.push(kind);
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&body);
        parse_everything(&b);
    }

    #[test]
    fn corrupted_valid_messages_never_panic(
        which in 0usize..5,
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let f = fixture();
        let original: &[u8] = match which {
            0 => &f.classify_request,
            1 => &f.classify_response,
            2 => &f.aggregate_request,
            3 => &f.aggregate_response,
            _ => f.pm.to_bytes(),
        };
        let mut b = original.to_vec();
        // Concentrate corruptions in the header and metadata, where parsing decides.
        let i = if pos.index(4) == 0 { pos.index(b.len()) } else { pos.index(64.min(b.len())) };
        b[i] ^= byte.max(1);
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        parse_everything(&b);
    }
}
