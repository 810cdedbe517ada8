//! `he-classify` vs the TEE `classify` job with the same head (issue 8 §6),
//! in one interleaved run on a real local network: a coordinator, an island
//! without TEE and a sim-TEE island (both with the models), as processes.
//!
//!     cargo build --release -p archipelago -p archipelago-enclave
//!     cargo bench -p archipelago --bench he_vs_tee            # HE_BENCH_ROUNDS=N
//!
//! Each round runs one HE job and one TEE job on the same sentence, in
//! alternating order, through the SDK (`Session::run_he_classify`: embed
//! locally, encrypt, submit, wait, decrypt; `Session::run`: seal to the
//! verified enclave, submit, wait, open), and also times the island-side HE
//! evaluation in-process (`HeEvaluator::evaluate`, µs resolution). Reported:
//! medians of the islands' measured `execution_ms` (HE: parse + evaluate
//! on ciphertext; TEE: the enclave's classify incl. the MiniLM embedding),
//! the in-process HE evaluation, end-to-end latencies, and the median of the
//! per-round HE/TEE latency ratios. Goals: island evaluation ≤ 10 ms; HE job
//! ≤ 3× the TEE job end to end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use archipelago_client::records::RequestRecords;
use archipelago_client::{ApiClient, Keystore, Session};
use archipelago_island::he::{HeEvaluator, CLASSIFY_WORKLOAD_ID};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_archipelago"))
}

fn spawn(args: &[&str], extra: &[&Path], log: &Path) -> anyhow::Result<Proc> {
    let f = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(f))
        .env("ARCHIPELAGO_LOG", "warn");
    Ok(Proc(cmd.spawn()?))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken from argv.
    let rounds: usize = std::env::var("HE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let enclave = bin().with_file_name("archipelago-enclave");
    if !enclave.exists() {
        bail!(
            "{} is missing: cargo build --release -p archipelago-enclave",
            enclave.display()
        );
    }
    let store = archipelago_inference::ModelStore::from_env()?;
    store
        .check()
        .context("the bench needs the models: scripts/fetch-models.sh")?;
    let dir = std::env::temp_dir().join(format!("archipelago-he-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let root = archipelago_attest::SimRoot::generate();
    let root_path = dir.join("sim-root.key");
    root.save(&root_path)?;

    let cdir = dir.join("coordinator");
    let out = Command::new(bin())
        .args(["coordinator", "init", "--json", "--data-dir"])
        .arg(&cdir)
        .output()?;
    if !out.status.success() {
        bail!("coordinator init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let init: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let api_key = init["api_key"].as_str().context("api_key")?.to_string();
    let token = init["enrollment_token"]
        .as_str()
        .context("enrollment_token")?
        .to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let root_hex = hex::encode(root.public_key());
    let listen = format!("127.0.0.1:{port}");
    let _coordinator = spawn(
        &[
            "coordinator",
            "serve",
            "--listen",
            &listen,
            "--dev-sim-root",
            &root_hex,
            "--data-dir",
        ],
        &[cdir.as_path()],
        &dir.join("coordinator.log"),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let api = ApiClient::new(&url, Some(api_key))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(api.workloads()).is_err() {
        if Instant::now() > deadline {
            bail!("the coordinator did not start");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let he_dir = dir.join("he-island");
    let enclave_text = enclave.display().to_string();
    let _he_island = spawn(
        &[
            "island",
            "--coordinator",
            &url,
            "--enrollment-token",
            &token,
            "--name",
            "he-island",
            "--tee",
            "none",
            "--lease-wait-ms",
            "1500",
            "--enclave-bin",
            &enclave_text,
            "--data-dir",
        ],
        &[he_dir.as_path()],
        &dir.join("he-island.log"),
    )?;
    let _tee_island = {
        let idir = dir.join("tee-island");
        let log = dir.join("tee-island.log");
        let f = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin());
        cmd.args([
            "island",
            "--coordinator",
            &url,
            "--enrollment-token",
            &token,
            "--name",
            "tee-island",
            "--tee",
            "sim",
            "--lease-wait-ms",
            "1500",
        ])
        .arg("--sim-root")
        .arg(&root_path)
        .arg("--enclave-bin")
        .arg(&enclave)
        .arg("--data-dir")
        .arg(&idir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(f))
        .env("ARCHIPELAGO_LOG", "warn");
        Proc(cmd.spawn()?)
    };
    eprintln!("waiting for the sim enclave to attest…");
    let deadline = Instant::now() + Duration::from_secs(300);
    while !rt
        .block_on(api.stats())
        .map(|s| s.attested_hosts >= 1 && s.he_capable_hosts >= 2)
        .unwrap_or(false)
    {
        if Instant::now() > deadline {
            bail!(
                "no attested enclave after 300 s (logs in {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    // The client: its own keystore; policy pins this sim root and the
    // enclave measured with the models.
    let m = Command::new(&enclave)
        .arg("measure")
        .arg("--models-dir")
        .arg(store.dir())
        .output()?;
    let measurement = String::from_utf8(m.stdout)?.trim().to_string();
    let policy = archipelago_attest::Policy::from_toml_str(&format!(
        "accepted_tees = [\"sim\"]\naccept_sim = true\n[sim]\nroots = [\"{}\"]\nmeasurements = [\"{measurement}\"]\n",
        archipelago_proto::b64::encode_std(&root.public_key())
    ))?;
    let keys = dir.join("client-keys");
    let session = Session::new(api.clone(), Keystore::open(&keys)?, policy)
        .with_records(RequestRecords::open(keys.join("requests"))?)
        .with_recipients(1);
    rt.block_on(session.create_key(Some("bench")))?;
    rt.block_on(session.create_he_key(Some("bench-he")))?;

    // In-process island evaluation (the same evaluator and head).
    let ev = HeEvaluator::builtin();
    let he_key = session.keystore().default_he_key()?;
    let sk = session.load_he_key(&he_key.key_id)?;
    let pm = session.keystore().load_he_public(&he_key.key_id)?;
    let embedder = archipelago_client::he::local_embedder()?;

    let sentences: Vec<&str> = include_str!("../../inference/assets/bench_sentences.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let timeout = Duration::from_secs(120);
    let mut he_exec = Vec::new();
    let mut tee_exec = Vec::new();
    let mut he_eval_us = Vec::new();
    let mut he_e2e = Vec::new();
    let mut tee_e2e = Vec::new();
    let mut ratios = Vec::new();
    let mut he_islands = std::collections::BTreeMap::<String, usize>::new();
    let mut disagreements = 0usize;
    let warmup = 2;
    for round in 0..rounds + warmup {
        let text = sentences[round % sentences.len()];
        let input = serde_json::to_vec(&serde_json::json!({"text": text, "top_k": 1}))?;
        let run_he = || -> anyhow::Result<(f64, i64, String, String)> {
            let t = Instant::now();
            let (job, c) =
                rt.block_on(session.run_he_classify(CLASSIFY_WORKLOAD_ID, text, None, timeout))?;
            Ok((
                t.elapsed().as_secs_f64() * 1000.0,
                job.execution_ms.unwrap_or(0),
                c.label().to_string(),
                job.island_id.unwrap_or_default(),
            ))
        };
        let run_tee = || -> anyhow::Result<(f64, i64, String)> {
            let t = Instant::now();
            let (job, out) =
                rt.block_on(session.run(CLASSIFY_WORKLOAD_ID, &input, None, timeout))?;
            let label = out
                .json()
                .and_then(|v| v["labels"][0]["label"].as_str().map(str::to_string))
                .unwrap_or_default();
            Ok((
                t.elapsed().as_secs_f64() * 1000.0,
                job.execution_ms.unwrap_or(0),
                label,
            ))
        };
        let (he, tee) = if round % 2 == 0 {
            let h = run_he()?;
            (h, run_tee()?)
        } else {
            let t = run_tee()?;
            (run_he()?, t)
        };
        // Island-side evaluation alone, in-process.
        let x = archipelago_client::he::embed_text(&embedder, text)?;
        let req = archipelago_he::encrypt_features(&*sk, &x)?;
        let t = Instant::now();
        let _ = ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &req)?;
        let eval_us = t.elapsed().as_secs_f64() * 1e6;
        if round < warmup {
            continue;
        }
        if he.2 != tee.2 {
            disagreements += 1;
        }
        *he_islands.entry(he.3.clone()).or_default() += 1;
        he_exec.push(he.1 as f64);
        tee_exec.push(tee.1 as f64);
        he_eval_us.push(eval_us);
        he_e2e.push(he.0);
        tee_e2e.push(tee.0);
        ratios.push(he.0 / tee.0);
        eprintln!(
            "round {:>2}: HE {:>7.1} ms (island {} ms), TEE {:>7.1} ms (island {} ms), in-process HE eval {:>6.0} µs",
            round - warmup,
            he.0,
            he.1,
            tee.0,
            tee.1,
            eval_us
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nhe-classify vs TEE classify, {rounds} interleaved rounds (load average {})",
        load.trim()
    );
    println!("island-side, measured by the islands (execution_ms, median):");
    println!(
        "  HE  (parse + evaluate on ciphertext)       {:>8.1} ms",
        median(&mut he_exec)
    );
    println!(
        "  TEE (enclave: MiniLM embedding + head)     {:>8.1} ms",
        median(&mut tee_exec)
    );
    println!(
        "  HE evaluate in-process (µs resolution)     {:>8.2} ms",
        median(&mut he_eval_us) / 1000.0
    );
    println!("end to end through the SDK (median):");
    println!(
        "  HE job  (embed here, encrypt, submit, wait, decrypt)  {:>8.1} ms",
        median(&mut he_e2e)
    );
    println!(
        "  TEE job (seal, submit, wait, open)                    {:>8.1} ms",
        median(&mut tee_e2e)
    );
    println!(
        "  median per-round ratio HE/TEE                         {:>8.2}×",
        median(&mut ratios)
    );
    println!("HE jobs per island: {he_islands:?}; label disagreements HE vs TEE: {disagreements}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
