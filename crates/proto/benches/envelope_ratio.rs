//! Interleaved A/B measurement of the envelope against its HPKE floor.
//!
//! On a shared machine absolute times drift with load, so a ratio taken from
//! two benchmarks run minutes apart is noisy. This bench alternates short
//! rounds of A (the floor: 3 HPKE sender setups + 1 receiver setup) and B
//! (our seal + open of a 1 KiB body to 3 recipients) and reports the median
//! of the per-round ratios B/A, which load changes cancel out of.
//!
//! `cargo bench -p archipelago-proto --bench envelope_ratio`

use std::hint::black_box;
use std::time::Instant;

use archipelago_proto::envelope::{open_request, seal_request, Expectations, RequestBody};
use archipelago_proto::SecretKey;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Kem, OpModeR, OpModeS};

const ROUNDS: usize = 41;
const ITERS: usize = 40;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    let quick = std::env::args().any(|a| a == "--test");
    let (rounds, iters) = if quick { (3, 2) } else { (ROUNDS, ITERS) };

    let recips: Vec<_> = (0..3).map(|_| X25519HkdfSha256::gen_keypair()).collect();
    let floor = || {
        let mut enc = None;
        for (_, pk) in &recips {
            let (e, _) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                &OpModeS::Base,
                black_box(pk),
                b"x",
            )
            .unwrap();
            enc = Some(e);
        }
        hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &recips[2].0,
            &enc.unwrap(),
            b"x",
        )
        .unwrap();
    };
    let client = SecretKey::generate();
    let enclaves: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let pks: Vec<_> = enclaves.iter().map(|k| k.public()).collect();
    let body = RequestBody::new(1, vec![0x61; 1024], client.public());
    let envelope = || {
        let env = seal_request(black_box(&body), &pks).unwrap();
        black_box(open_request(&env, &enclaves[2], &Expectations::default()).unwrap());
    };

    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed().as_secs_f64() / iters as f64
    };
    // Warm up both.
    time(&floor);
    time(&envelope);
    let mut ratios = Vec::with_capacity(rounds);
    let mut floors = Vec::with_capacity(rounds);
    let mut envs = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // Alternate which goes first so neither always sees a warmer cache.
        let (a, b) = if round % 2 == 0 {
            let a = time(&floor);
            (a, time(&envelope))
        } else {
            let b = time(&envelope);
            (time(&floor), b)
        };
        floors.push(a);
        envs.push(b);
        ratios.push(b / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    println!(
        "envelope_ratio: floor (3 sender + 1 receiver setups) median {:.1} µs; \
         envelope seal+open 1 KiB / 3 recipients median {:.1} µs; \
         median per-round ratio {:.3} (goal ≤ 1.200) over {rounds} rounds × {iters} iterations",
        median(&mut floors) * 1e6,
        median(&mut envs) * 1e6,
        median(&mut ratios)
    );
}
