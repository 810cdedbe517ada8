//! Envelope cost against its floor, side by side in one run.
//!
//! The floor is the public-key work RFC 9180 requires: for a 1 KiB request to
//! 3 recipients that is 3 HPKE sender setups (each with an ephemeral X25519
//! key generation) and 1 receiver setup. `hpke_floor/*` measures exactly that
//! with the `hpke` crate directly; `envelope/*` measures our seal + open. The
//! ratio of the two is the overhead the envelope format adds.

use archipelago_proto::envelope::{
    open_request, open_response, seal_request, seal_response, ChunkKind, Expectations, RequestBody,
    ResponseOpener, ResponseSealer,
};
use archipelago_proto::SecretKey;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

type Pk = <X25519HkdfSha256 as Kem>::PublicKey;
type Sk = <X25519HkdfSha256 as Kem>::PrivateKey;

fn hpke_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("hpke_floor");
    let recips: Vec<(Sk, Pk)> = (0..3).map(|_| X25519HkdfSha256::gen_keypair()).collect();
    let (enc, _) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &recips[0].1,
        b"x",
    )
    .unwrap();
    g.bench_function("sender_setup", |b| {
        b.iter(|| {
            hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                &OpModeS::Base,
                black_box(&recips[0].1),
                b"x",
            )
            .unwrap()
        })
    });
    g.bench_function("receiver_setup", |b| {
        b.iter(|| {
            hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                black_box(&recips[0].0),
                &enc,
                b"x",
            )
            .unwrap()
        })
    });
    g.bench_function("x25519_keygen", |b| b.iter(X25519HkdfSha256::gen_keypair));
    g.bench_function("3_sender_setups+1_receiver_setup", |b| {
        b.iter(|| {
            let mut last = None;
            for (_, pk) in &recips {
                last = Some(
                    hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                        &OpModeS::Base,
                        black_box(pk),
                        b"x",
                    )
                    .unwrap(),
                );
            }
            let enc = last.map(|(e, _)| e.to_bytes()).unwrap();
            let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc).unwrap();
            hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
                &OpModeR::Base,
                &recips[2].0,
                &enc,
                b"x",
            )
            .unwrap()
        })
    });
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let client = SecretKey::generate();
    let enclaves: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    for size in [1024usize, 64 * 1024] {
        for n in [1usize, 3] {
            let pks: Vec<_> = enclaves[..n].iter().map(|k| k.public()).collect();
            let body = RequestBody::new(1, vec![0x61; size], client.public());
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(
                BenchmarkId::new(
                    format!("seal+open/{}KiB", size / 1024),
                    format!("{n}_recipients"),
                ),
                |b| {
                    b.iter(|| {
                        let env = seal_request(black_box(&body), &pks).unwrap();
                        open_request(&env, &enclaves[n - 1], &Expectations::default()).unwrap()
                    })
                },
            );
        }
    }
    let body = RequestBody::new(1, vec![0x61; 1024], client.public());
    let pks: Vec<_> = enclaves.iter().map(|k| k.public()).collect();
    let env = seal_request(&body, &pks).unwrap();
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("seal/1KiB/3_recipients", |b| {
        b.iter(|| seal_request(black_box(&body), &pks).unwrap())
    });
    g.bench_function("open/1KiB/3_recipients", |b| {
        b.iter(|| open_request(black_box(&env), &enclaves[2], &Expectations::default()).unwrap())
    });
    let out = vec![0x62u8; 1024];
    g.bench_function("response_seal+open/1KiB", |b| {
        b.iter(|| {
            let r = seal_response(
                &enclaves[0],
                &client.public(),
                [1; 16],
                ChunkKind::Data,
                black_box(&out),
            )
            .unwrap();
            open_response(&r, &client, &enclaves[0].public(), &[1; 16]).unwrap()
        })
    });
    g.throughput(Throughput::Elements(1000));
    g.bench_function("stream/1000_chunks_of_16B", |b| {
        let token = [0x63u8; 16];
        b.iter(|| {
            let (mut s, header) =
                ResponseSealer::new(&enclaves[0], &client.public(), [2; 16]).unwrap();
            let mut o =
                ResponseOpener::new(&header, &client, &enclaves[0].public(), &[2; 16]).unwrap();
            for i in 0..1000 {
                let c = s.seal_chunk(&token, ChunkKind::Data, i == 999).unwrap();
                black_box(o.open_chunk(&c).unwrap());
            }
            o.finish().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, hpke_floor, envelope);
criterion_main!(benches);
