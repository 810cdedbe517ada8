//! Benchmarks of the homomorphic mode: key generation, client encryption and
//! decryption, island evaluation (`he-classify` goal ≤ 10 ms) and wire sizes.
//!
//! Run: `cargo bench -p archipelago-he --bench he`. Sizes are printed once.

use std::time::Duration;

use archipelago_he::{
    decrypt_aggregate, decrypt_scores, encrypt_features, encrypt_records, evaluate_aggregate,
    evaluate_classify, generate_keypair, AggregateColumn, AggregateSchema, HeSecretKey, LinearHead,
};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const DIM: usize = 384;
const CLASSES: usize = 11;

/// Deterministic pseudo-random numbers (no RNG dependency needed here).
fn lcg(state: &mut u64) -> f32 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn head() -> LinearHead {
    let mut s = 1;
    LinearHead {
        labels: (0..CLASSES).map(|c| format!("c{c}")).collect(),
        weights: (0..CLASSES)
            .map(|_| (0..DIM).map(|_| lcg(&mut s) * 3.0).collect())
            .collect(),
        bias: (0..CLASSES).map(|_| lcg(&mut s) * 0.5).collect(),
    }
}

fn features() -> Vec<f32> {
    let mut s = 7;
    let v: Vec<f32> = (0..DIM).map(|_| lcg(&mut s)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn schema() -> AggregateSchema {
    AggregateSchema {
        columns: vec![
            AggregateColumn::Value {
                name: "value".into(),
                scale: 100.0,
                min: 0.0,
                max: 100.0,
            },
            AggregateColumn::Histogram {
                name: "bucket".into(),
                edges: vec![10.0, 20.0, 40.0, 80.0],
            },
        ],
    }
}

fn records(n: usize) -> Vec<Vec<f64>> {
    let mut s = 3;
    (0..n)
        .map(|_| {
            let v = ((lcg(&mut s) + 1.0) * 50.0) as f64;
            vec![(v * 100.0).round() / 100.0, v]
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (sk, pm) = generate_keypair().unwrap();
    let q = head().quantise().unwrap();
    let x = features();
    let req_sk = encrypt_features(&sk, &x).unwrap();
    let req_pk = encrypt_features(&pm, &x).unwrap();
    let resp = evaluate_classify(&pm, &q, &req_sk).unwrap();
    let s = schema();
    let per_ct = s.records_per_ciphertext(pm.param_set());
    let recs = records(per_ct * 8);
    let agg_req_1 = encrypt_records(&sk, &s, &recs[..per_ct]).unwrap();
    let agg_req_8 = encrypt_records(&sk, &s, &recs).unwrap();
    let agg_resp = evaluate_aggregate(&pm, &agg_req_8).unwrap();

    eprintln!("sizes (bytes):");
    eprintln!("  public material            {}", pm.to_bytes().len());
    eprintln!("  secret key (keystore)      {}", sk.to_bytes().len());
    eprintln!("  classify request (sk)      {}", req_sk.len());
    eprintln!("  classify request (pk)      {}", req_pk.len());
    eprintln!("  classify response          {}", resp.len());
    eprintln!(
        "  aggregate request 1 ct     {} ({per_ct} records)",
        agg_req_1.len()
    );
    eprintln!(
        "  aggregate request 8 ct     {} ({} records)",
        agg_req_8.len(),
        recs.len()
    );
    eprintln!("  aggregate response         {}", agg_resp.len());

    let mut g = c.benchmark_group("he");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("keygen", |b| {
        b.iter(|| black_box(generate_keypair().unwrap()))
    });
    g.bench_function("secret_key_load", |b| {
        let bytes = sk.to_bytes();
        b.iter(|| black_box(HeSecretKey::from_bytes(&bytes).unwrap()))
    });
    g.bench_function("public_material_load", |b| {
        b.iter(|| black_box(archipelago_he::HePublicMaterial::from_bytes(pm.to_bytes()).unwrap()))
    });
    g.bench_function("head_quantise_11x384", |b| {
        let h = head();
        b.iter(|| black_box(h.quantise().unwrap()))
    });
    g.bench_function("client_encrypt_features_sk", |b| {
        b.iter(|| black_box(encrypt_features(&sk, &x).unwrap()))
    });
    g.bench_function("client_encrypt_features_pk", |b| {
        b.iter(|| black_box(encrypt_features(&pm, &x).unwrap()))
    });
    g.bench_function("island_evaluate_classify_11x384", |b| {
        b.iter(|| black_box(evaluate_classify(&pm, &q, &req_sk).unwrap()))
    });
    g.bench_function("client_decrypt_scores", |b| {
        b.iter(|| black_box(decrypt_scores(&sk, &resp, CLASSES).unwrap()))
    });
    g.bench_function("client_encrypt_records_1ct", |b| {
        b.iter(|| black_box(encrypt_records(&sk, &s, &recs[..per_ct]).unwrap()))
    });
    g.bench_function("island_evaluate_aggregate_1ct", |b| {
        b.iter(|| black_box(evaluate_aggregate(&pm, &agg_req_1).unwrap()))
    });
    g.bench_function("island_evaluate_aggregate_8ct", |b| {
        b.iter(|| black_box(evaluate_aggregate(&pm, &agg_req_8).unwrap()))
    });
    g.bench_function("client_decrypt_aggregate", |b| {
        b.iter(|| black_box(decrypt_aggregate(&sk, &s, &agg_resp).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
