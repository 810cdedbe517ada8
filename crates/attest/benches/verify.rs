//! Verification latency of each real sample with warm caches (the pinned
//! roots are parsed and self-checked once per process). Reads the samples
//! from `../shared/testdata/attestation/`.

use std::path::PathBuf;

use archipelago_attest::{verify, Evidence, SimEvidenceSource, SimRoot, TeeType, TrustAnchors};
use criterion::{criterion_group, criterion_main, Criterion};

fn read(rel: &str) -> Vec<u8> {
    let dir = std::env::var_os("ARCHIPELAGO_ATTESTATION_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/attestation")
        });
    let p = dir.join(rel);
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "attestation sample {} missing ({e}): the bench needs ../shared/testdata/attestation",
            p.display()
        )
    })
}

fn bench(c: &mut Criterion) {
    let none = TrustAnchors::default();
    let samples = [
        (
            "sgx",
            Evidence::new(
                TeeType::Sgx,
                read("sgx/quote.bin"),
                vec![read("sgx/collateral.json")],
            )
            .unwrap(),
            1_750_420_800,
            none.clone(),
        ),
        (
            "tdx",
            Evidence::new(
                TeeType::Tdx,
                read("tdx/quote.bin"),
                vec![read("tdx/collateral.json")],
            )
            .unwrap(),
            1_750_420_800,
            none.clone(),
        ),
        (
            "sev",
            Evidence::new(
                TeeType::Sev,
                read("sev/report.bin"),
                vec![read("sev/vcek.der")],
            )
            .unwrap(),
            1_750_420_800,
            none.clone(),
        ),
        (
            "nitro",
            Evidence::new(TeeType::Nitro, read("nitro/attestation.cose"), vec![]).unwrap(),
            1_736_179_625,
            none.clone(),
        ),
        (
            "trustzone",
            Evidence::new(TeeType::Trustzone, read("cca/token.cbor"), vec![]).unwrap(),
            1_750_420_800,
            TrustAnchors {
                cca: TrustAnchors::cca_from_json(&read("cca/trust-anchors.json")).unwrap(),
                ..Default::default()
            },
        ),
    ];
    let root = SimRoot::from_seed(&[1; 32]);
    let pk = root.public_key();
    let sim = SimEvidenceSource::new(root, [2; 48]).collect_at(&[3; 64], 1_750_420_800);
    let mut g = c.benchmark_group("verify");
    for (name, ev, at, anchors) in &samples {
        verify(ev, anchors, *at).unwrap();
        g.bench_function(*name, |b| b.iter(|| verify(ev, anchors, *at).unwrap()));
    }
    let anchors = TrustAnchors {
        sim_roots: vec![pk],
        ..Default::default()
    };
    g.bench_function("sim", |b| {
        b.iter(|| verify(&sim, &anchors, 1_750_420_800).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
