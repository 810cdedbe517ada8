//! What confidential execution costs inside the enclave: the same job run
//! plain (workload only) and confidential (open envelope, freshness checks,
//! workload, seal response), plus the client's share (seal request, open
//! response). Workloads: `echo` always; `classify` (MiniLM, ~15 ms) when the
//! models are installed (`ARCHIPELAGO_MODELS_DIR` or ~/.cache/archipelago/models).

use std::hint::black_box;
use std::time::Duration;

use archipelago_attest::{SimEvidenceSource, SimRoot};
use archipelago_enclave::enclave::unix_now;
use archipelago_enclave::{Config, Enclave, Workloads};
use archipelago_proto::channel::{Blob, FromEnclave, JobRequest};
use archipelago_proto::envelope::{open_response, seal_request, RequestBody};
use archipelago_proto::{PublicKey, SecretKey};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn enclave(models: Option<&std::path::Path>) -> Enclave {
    let src = SimEvidenceSource::new(SimRoot::from_seed(&[1; 32]), [0; 48]);
    Enclave::new(
        Box::new(src),
        String::new(),
        Workloads::new(models),
        Config::default(),
        unix_now(),
    )
}

fn bench_workload(
    c: &mut Criterion,
    name: &str,
    workload_id: u64,
    input: &[u8],
    e: &Enclave,
    w: &Workloads,
) {
    let client = SecretKey::generate();
    let ek = PublicKey(e.key_infos()[0].public_key);
    let mut g = c.benchmark_group(name);
    g.sample_size(20).measurement_time(Duration::from_secs(6));
    g.bench_function("plain", |b| {
        b.iter(|| black_box(w.run(workload_id, input, &mut |_| {}).ok()))
    });
    g.bench_function("confidential_enclave_side", |b| {
        b.iter_batched(
            || {
                let body = RequestBody::new(workload_id, input.to_vec(), client.public());
                let env = seal_request(&body, &[ek]).unwrap_or_default();
                JobRequest {
                    job_id: "bench".into(),
                    workload_id,
                    client_key_id: client.client_id(),
                    envelope: Blob(env),
                    stream: false,
                }
            },
            |job| {
                let mut n = 0usize;
                let _ = e.run_job(&job, unix_now(), &mut |m| {
                    if let FromEnclave::ResponseChunk { bytes, .. } = m {
                        n += bytes.len();
                    }
                });
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    // The crypto alone, client and enclave sides, for this input size and
    // the real output size.
    let out = w
        .run(workload_id, input, &mut |_| {})
        .map(|o| o.to_vec())
        .unwrap_or_default();
    let enclave_key = SecretKey::generate();
    let ek2 = enclave_key.public();
    g.bench_function("crypto_round_trip", |b| {
        b.iter(|| {
            let body = RequestBody::new(workload_id, input.to_vec(), client.public());
            let env = seal_request(&body, &[ek2]).unwrap_or_default();
            let opened =
                archipelago_proto::envelope::open_request(&env, &enclave_key, &Default::default());
            let resp = archipelago_proto::envelope::seal_response(
                &enclave_key,
                &client.public(),
                body.request_id,
                archipelago_proto::envelope::ChunkKind::Data,
                &out,
            )
            .unwrap_or_default();
            black_box((
                opened.is_ok(),
                open_response(&resp, &client, &ek2, &body.request_id).is_ok(),
            ))
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let models = archipelago_inference::models_dir()
        .ok()
        .filter(|d| d.is_dir());
    let e = enclave(models.as_deref());
    let w = Workloads::new(models.as_deref());
    bench_workload(
        c,
        "echo",
        5,
        br#"{"prompt":"Classify this patient record: mild headache for two days"}"#,
        &e,
        &w,
    );
    if w.ids().contains(&3) {
        bench_workload(
            c,
            "classify",
            3,
            br#"{"text":"This medication worked well for my migraines with few side effects."}"#,
            &e,
            &w,
        );
    } else {
        eprintln!("classify skipped: models not installed (scripts/fetch-models.sh)");
    }
}

criterion_group!(job, benches);
criterion_main!(job);
