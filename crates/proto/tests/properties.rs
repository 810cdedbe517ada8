//! Property tests: sealing then opening returns the input for any input and
//! recipient set; any single-byte change anywhere in a request or a response
//! is refused; arbitrary bytes never panic a parser.

mod common;

use archipelago_proto::envelope::{
    open_request, open_response, peek_header, peek_response_header, seal_request_with_rng,
    seal_response, ChunkKind, Expectations, RequestBody, ResponseOpener, ResponseSealer,
};
use archipelago_proto::SecretKey;
use common::Tape;
use proptest::prelude::*;

fn keys(seed: u8, n: usize) -> Vec<SecretKey> {
    (0..n)
        .map(|i| {
            SecretKey::from_bytes(&common::pattern32(seed.wrapping_add(i as u8 * 37))).unwrap()
        })
        .collect()
}

fn sealed(input: &[u8], workload: u64, n: usize, seed: u8) -> (SecretKey, Vec<SecretKey>, Vec<u8>) {
    let client = SecretKey::from_bytes(&common::pattern32(seed ^ 0x5a)).unwrap();
    let enclaves = keys(seed, n);
    let body = RequestBody::with_parts(
        workload,
        [seed; 16],
        1_700_000_000,
        client.public(),
        input.to_vec(),
    );
    let pks: Vec<_> = enclaves.iter().map(|k| k.public()).collect();
    let mut tape = Tape::new(
        (0..32 * (n + 1))
            .map(|i| (i as u8).wrapping_mul(seed | 1))
            .collect(),
    );
    let env = seal_request_with_rng(&body, &pks, &mut tape).unwrap();
    (client, enclaves, env)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn request_roundtrip(input in proptest::collection::vec(any::<u8>(), 0..2048),
                         workload in any::<u64>(), n in 1usize..4, seed in any::<u8>()) {
        let (client, enclaves, env) = sealed(&input, workload, n, seed);
        let view = peek_header(&env).unwrap();
        prop_assert_eq!(view.workload_id, workload);
        prop_assert_eq!(view.client_key_id, client.client_id());
        for k in &enclaves {
            let opened = open_request(&env, k, &Expectations::default()).unwrap();
            prop_assert_eq!(opened.body.input(), &input[..]);
        }
    }

    #[test]
    fn any_single_byte_change_to_a_request_is_refused(
        input in proptest::collection::vec(any::<u8>(), 0..256),
        n in 1usize..4, seed in any::<u8>(), pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (_, enclaves, mut env) = sealed(&input, 7, n, seed);
        let i = pos.index(env.len());
        env[i] ^= flip;
        for k in &enclaves {
            prop_assert!(open_request(&env, k, &Expectations::default()).is_err(), "byte {} accepted", i);
        }
    }

    #[test]
    fn any_single_byte_change_to_a_response_is_refused(
        output in proptest::collection::vec(any::<u8>(), 0..512),
        pos in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let ks = keys(3, 2);
        let (client, enclave) = (&ks[0], &ks[1]);
        let mut resp = seal_response(enclave, &client.public(), [4; 16], ChunkKind::Data, &output).unwrap();
        let (_, ok) = open_response(&resp, client, &enclave.public(), &[4; 16]).unwrap();
        prop_assert_eq!(&ok[..], &output[..]);
        let i = pos.index(resp.len());
        resp[i] ^= flip;
        prop_assert!(open_response(&resp, client, &enclave.public(), &[4; 16]).is_err(), "byte {} accepted", i);
    }

    #[test]
    fn any_reordering_of_a_stream_is_refused(perm in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle()) {
        prop_assume!(perm != (0..5).collect::<Vec<_>>());
        let ks = keys(9, 2);
        let (mut s, header) = ResponseSealer::new(&ks[1], &ks[0].public(), [1; 16]).unwrap();
        let chunks: Vec<_> = (0..5).map(|i| s.seal_chunk(&[i as u8], ChunkKind::Data, i == 4).unwrap()).collect();
        let mut o = ResponseOpener::new(&header, &ks[0], &ks[1].public(), &[1; 16]).unwrap();
        let mut failed = false;
        for &i in &perm {
            if o.open_chunk(&chunks[i]).is_err() { failed = true; break; }
        }
        prop_assert!(failed);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let ks = keys(1, 2);
        let _ = peek_header(&bytes);
        let _ = open_request(&bytes, &ks[0], &Expectations::default());
        let _ = peek_response_header(&bytes);
        let _ = open_response(&bytes, &ks[0], &ks[1].public(), &[0; 16]);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_prefix_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..400) {
        let (_, enclaves, env) = sealed(b"hello", 1, 2, 11);
        let mut b = env[..cut.min(env.len())].to_vec();
        b.extend_from_slice(&tail);
        let _ = open_request(&b, &enclaves[0], &Expectations::default());
    }
}
