//! End-to-end latency of a confidential job against the same job plain
//! (issue 5 §5), from the client's point of view, through real processes:
//! a coordinator (`archipelago coordinator serve`, SQLite) and ONE sim
//! island (`archipelago island --tee sim`, supervising its
//! `archipelago-enclave`), both with the real models.
//!
//! The same MiniLM classify jobs (one sentence, a ~600-character patient
//! record whose model takes 15–50 ms depending on the machine, its first
//! half, and a prefix of it calibrated to ~15 ms of model on this machine)
//! and the same short greedy chat job run plain and confidential in pairs,
//! one pair per round, the order alternating; classify gets many more
//! rounds (`BENCH_CLASSIFY_ROUNDS`, default 200) than chat (`BENCH_ROUNDS`,
//! default 10), because a ~10 ms job varies by more than its 3 % goal from
//! one sample to the next. Plain:
//! submit → result. Confidential: seal (recipients verified with the
//! client's own policy) → submit → result → open and
//! authenticate. Both wait for the result the same way (the SDK follows
//! the job's SSE stream). The client-side seal and open are timed, and the
//! enclave-side open + seal of the same sizes is measured in-process, so
//! the crypto share of the difference can be stated.
//!
//! ```sh
//! cargo build --release -p archipelago-enclave -p archipelago --bins
//! cargo bench -p archipelago --bench job_e2e
//! BENCH_ROUNDS=20 BENCH_CLASSIFY_ROUNDS=400 BENCH_CHAT_TOKENS=32 cargo bench -p archipelago --bench job_e2e
//! ```
//!
//! Needs the models (`scripts/fetch-models.sh`). Prints a Markdown table.
//! `BENCH_SAMPLES=FILE` also writes the raw classify samples as CSV;
//! `BENCH_KEEP_LOGS=1` keeps the processes' logs (named at the end), and
//! `BENCH_LOG` sets their filter (default `info`).
//! `BENCH_JOBS=half` (a comma list of sentence, record, half, calibrated,
//! chat) runs only those jobs, for a long A/B run of one size. The
//! `calibrated` job is the record's first N words, N chosen at the start
//! (by bisection over plain jobs, printed on stderr) so that its model
//! takes `BENCH_MODEL_MS` (default 15) ms on this machine, the size issue
//! 5's goal names (`BENCH_CALIBRATED_WORDS=N` fixes N, for an A/B). The
//! "median difference per round" column (confidential − plain, ms) is the
//! steadiest number to compare between builds. After each job size the
//! bench prints (stderr) the CPU time per job of the coordinator, the
//! agent, the enclave and the client (from /proc); `BENCH_ONLY_MODE=plain`
//! or `tee` runs one half of each pair only, so those figures are per mode
//! (no ratios then).
//! `BENCH_TRACE=FILE` writes one CSV line per job (id, mode, and the
//! wall-clock µs at which the client's steps ended) to line up with the
//! processes' debug logs for a per-step breakdown.
//! `BENCH_COORDINATOR_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=F"`
//! runs the coordinator under that command (instruction counts per mode),
//! and `BENCH_ISLAND_WRAPPER` the island agent. Not its enclave: under
//! valgrind (`--trace-children=yes`) the sim enclave measures valgrind's
//! binary, so the bench's policy refuses its key, as it should. The bench
//! process itself (the client) can run under valgrind as it is.
//! `BENCH_NO_IDEMPOTENCY=1` submits the confidential jobs without the
//! SDK's Idempotency-Key. `ARCHIPELAGO_ENCLAVE_SHARE_CAPACITY=0` (inherited by the enclave)
//! makes the enclave keep no client's response Diffie-Hellman (one X25519
//! per response), and `ARCHIPELAGO_ENCLAVE_DECAP_CAPACITY=0` no
//! decapsulation of the encs the SDK announces (one X25519 per open), for
//! an A/B run of the same build.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use archipelago_attest::{Policy, SimRoot};
use archipelago_client::{ApiClient, Keystore, Session};
use archipelago_proto::api::SubmitJobRequest;
use archipelago_proto::envelope::{
    open_request_with, open_response_with_share, seal_request_prepared, ChunkKind, Expectations,
    PreparedDecap, PreparedWrap, RequestBody, ResponseSealer, ResponseStaticShare,
};
use archipelago_proto::{b64, SecretKey};
use serde_json::{json, Value};

const CHAT: i64 = 1;
const CLASSIFY: i64 = 3;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> Result<Proc> {
    let f = File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(f))
        .env(
            "ARCHIPELAGO_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into()),
        );
    Ok(Proc(cmd.spawn().context("spawning")?))
}

/// `archipelago`, or the command in the environment variable `var`
/// (e.g. `valgrind --tool=callgrind …`) with `archipelago` as its last
/// argument.
fn wrapped(var: &str) -> Result<Command> {
    Ok(match std::env::var(var) {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().context("wrapper")?);
            c.args(parts).arg(archipelago_bin());
            c
        }
        _ => Command::new(archipelago_bin()),
    })
}

fn archipelago_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_archipelago"))
}

fn enclave_bin() -> Result<PathBuf> {
    let bin = archipelago_bin();
    let dir = bin.parent().context("binary dir")?;
    // Benches live in deps/; the binaries one level up.
    for d in [dir.to_path_buf(), dir.join("..")] {
        let e = d.join("archipelago-enclave");
        if e.exists() {
            return Ok(e);
        }
    }
    bail!(
        "archipelago-enclave not found next to {}; build it with `cargo build -p archipelago-enclave` (same profile)",
        bin.display()
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Microseconds since the Unix epoch: the clock the processes' log lines
/// use, so a `BENCH_TRACE` line lines up with them.
fn unix_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// `BENCH_TRACE=FILE`: one CSV line per measured job (job id, mode, and
/// the wall-clock times its client steps ended), to line up with the
/// processes' debug logs (`BENCH_KEEP_LOGS=1`) for a per-step breakdown.
/// `None` when not asked for, so no line is even formatted.
struct Trace(Option<std::sync::Mutex<Vec<String>>>);

impl Trace {
    fn push(&self, line: impl FnOnce() -> String) {
        if let Some(Ok(mut t)) = self.0.as_ref().map(|t| t.lock()) {
            t.push(line());
        }
    }
}

/// CPU time (user + system, ms) and minor page faults so far of the
/// coordinator (pid `c`), the island agent (pid `i`), the enclave (the
/// agent's child) and this process, from /proc.
fn proc_stats((c, i): (u32, u32)) -> [(f64, f64); 4] {
    fn of(pid: u32) -> (f64, f64) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return (0.0, 0.0);
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return (0.0, 0.0);
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| -> f64 { f.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        // Fields 14 and 15 (utime, stime) of stat, in USER_HZ ticks, which
        // Linux fixes at 100 per second; field 10 is minflt.
        ((field(14) + field(15)) * 10.0, field(10))
    }
    // The enclave is a child of whichever agent thread spawned it.
    let enclave = std::fs::read_dir(format!("/proc/{i}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .find_map(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(0);
    [of(c), of(i), of(enclave), of(std::process::id())]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Samples {
    plain: Vec<f64>,
    conf: Vec<f64>,
    seal: Vec<f64>,
    open: Vec<f64>,
    /// The island's measured execution time (ms), plain and confidential.
    exec_plain: Vec<f64>,
    exec_conf: Vec<f64>,
    /// confidential / plain of each round's pair.
    pair_ratio: Vec<f64>,
    /// confidential − plain of each round's pair (ms).
    pair_diff: Vec<f64>,
    /// The submit call alone (request → 201), plain and confidential.
    submit_plain: Vec<f64>,
    submit_conf: Vec<f64>,
    /// From the submit's answer to the result in hand (SSE), both.
    wait_plain: Vec<f64>,
    wait_conf: Vec<f64>,
    input_len: usize,
    output_len: usize,
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let classify_rounds: usize = std::env::var("BENCH_CLASSIFY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
        .max(1);
    let chat_tokens: usize = std::env::var("BENCH_CHAT_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let models = archipelago_inference::ModelStore::from_env()
        .context("model store")?
        .dir()
        .to_path_buf();
    let enclave = enclave_bin()?;
    let dir = std::env::temp_dir().join(format!("archipelago-bench-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("coordinator"))?;
    let root = SimRoot::generate();
    let root_file = dir.join("sim-root.key");
    root.save(&root_file)?;
    let cdir = dir.join("coordinator");
    std::fs::write(
        cdir.join("coordinator.toml"),
        format!(
            "dev_sim_root = \"{}\"\nrate_limit_per_sec = 10000.0\nrate_limit_burst = 10000.0\n",
            hex(&root.public_key())
        ),
    )?;
    let out = Command::new(archipelago_bin())
        .args(["coordinator", "init", "--json", "--data-dir"])
        .arg(&cdir)
        .output()?;
    if !out.status.success() {
        bail!("coordinator init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let init: Value = serde_json::from_slice(&out.stdout)?;
    let api_key = init["api_key"].as_str().context("api_key")?.to_string();
    let token = init["enrollment_token"]
        .as_str()
        .context("enrollment_token")?
        .to_string();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    // `BENCH_COORDINATOR_WRAPPER="valgrind --tool=callgrind …"` runs the
    // coordinator under that command, for instruction counts per job
    // (with `BENCH_ONLY_MODE`, per mode) that the machine's noise does
    // not move.
    let mut cmd = wrapped("BENCH_COORDINATOR_WRAPPER")?;
    cmd.args([
        "coordinator",
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(&cdir);
    let _coordinator = spawn(cmd, &dir.join("coordinator.log"))?;
    let m = Command::new(&enclave)
        .args(["measure", "--models-dir"])
        .arg(&models)
        .output()?;
    if !m.status.success() {
        bail!("archipelago-enclave measure failed");
    }
    let measurement = String::from_utf8(m.stdout)?.trim().to_string();
    let mut cmd = wrapped("BENCH_ISLAND_WRAPPER")?;
    cmd.args([
        "island",
        "--coordinator",
        &base,
        "--enrollment-token",
        &token,
    ])
    .args(["--name", "bench", "--tee", "sim", "--sim-root"])
    .arg(&root_file)
    .arg("--enclave-bin")
    .arg(&enclave)
    .arg("--models-dir")
    .arg(&models)
    .arg("--data-dir")
    .arg(dir.join("island"));
    let _island = spawn(cmd, &dir.join("island.log"))?;
    let pids = (_coordinator.0.id(), _island.0.id());

    let policy = Policy::from_toml_str(&format!(
        "accepted_tees = [\"sim\"]\naccept_sim = true\n[sim]\nroots = [\"{}\"]\nmeasurements = [\"{measurement}\"]\n",
        b64::encode_std(&root.public_key())
    ))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let session = Session::new(
        ApiClient::new(&base, Some(api_key))?,
        Keystore::open(dir.join("keys"))?,
        policy,
    );
    let result = rt.block_on(run(
        &session,
        pids,
        rounds.max(1),
        classify_rounds,
        chat_tokens,
    ));
    drop(_island);
    drop(_coordinator);
    if result.is_ok() && std::env::var_os("BENCH_KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    result
}

async fn run(
    session: &Session,
    pids: (u32, u32),
    rounds: usize,
    classify_rounds: usize,
    chat_tokens: usize,
) -> Result<()> {
    // Wait for the island's enclave key to be attested and accepted.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = session.choose_recipients(Some(CLASSIFY)).await {
            if !r.is_empty() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("no attested enclave accepted by the bench policy within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let meta = session.create_key(Some("bench")).await?;
    let key = session.load_key(meta.key_id.as_str())?;
    let classify_in =
        json!({"text": "The battery died after two days and support never answered my emails."});
    // The product page's "classify this patient record": long enough that
    // the model alone takes ~15 ms here, the job size issue 5's 1.03 goal
    // is stated for.
    let record_in = json!({"text": "Patient, 54, type 2 diabetes for nine years, started on metformin \
        500 mg twice daily after her HbA1c rose to 8.1 %. Reports nausea and loose stools during the first \
        three weeks, now resolved when the dose is taken with meals. Fasting glucose readings have come down \
        from around 180 to 130 mg/dL, weight is down four pounds, and she says her energy in the afternoon is \
        much better. No episodes of low blood sugar. She is worried about the long-term effect on her kidneys \
        and asks whether the dose can be increased to reach her target faster."});
    // Its first half (two sentences fewer): on machines where the whole
    // record's model takes ~30 ms, this one's takes ~15 ms.
    let short_in = json!({"text": "Patient, 54, type 2 diabetes for nine years, started on metformin \
        500 mg twice daily after her HbA1c rose to 8.1 %. Reports nausea and loose stools during the first \
        three weeks, now resolved when the dose is taken with meals."});
    let chat_in = json!({"prompt": "Name three colours of the rainbow.", "max_tokens": chat_tokens, "temperature": 0.0, "seed": 1});
    let timeout = Duration::from_secs(600);
    // `BENCH_JOBS=half,record` runs only those (sentence, record, half,
    // chat), for a long A/B run of one job size.
    let jobs = std::env::var("BENCH_JOBS").unwrap_or_default();
    // `BENCH_ONLY_MODE=plain|tee`: run only that half of each pair (the
    // tables then lack ratios), for the per-process CPU time per job.
    let only = std::env::var("BENCH_ONLY_MODE").ok();
    let want = |name: &str| jobs.is_empty() || jobs.split(',').any(|j| j.trim() == name);
    let trace_path = std::env::var("BENCH_TRACE").ok();
    let trace = Trace(trace_path.as_ref().map(|_| Default::default()));
    let trace = &trace;

    let plain = |w: i64, input: Value| async move {
        let u0 = unix_us();
        let t0 = Instant::now();
        let req = SubmitJobRequest {
            workload_id: w,
            confidential: false,
            encryption_key_id: None,
            mode: None,
            input,
            timeout_seconds: None,
        };
        let job = session.api().submit_job(&req, None).await?;
        let submitted = t0.elapsed();
        let u1 = unix_us();
        let job = session.wait(&job.id, timeout).await?;
        let total = t0.elapsed();
        let u2 = unix_us();
        trace.push(|| {
            let n = req.input.to_string().len();
            format!("{},plain,{w},{n},{u0},{u0},{u1},{u2},{u2}", job.id)
        });
        if job.state != "succeeded" {
            bail!("plain job {} ended {}: {:?}", job.id, job.state, job.error);
        }
        Ok::<_, anyhow::Error>((
            total,
            job.execution_ms.unwrap_or(0) as f64,
            submitted,
            total - submitted,
        ))
    };
    // The SDK submits a sealed request with its request id as the
    // Idempotency-Key (a retry is then safe); plain submissions here, as in
    // `archipelago run`, send none. `BENCH_NO_IDEMPOTENCY=1` submits the
    // confidential jobs without one too, to show what that costs.
    let no_idem = std::env::var_os("BENCH_NO_IDEMPOTENCY").is_some_and(|v| v == "1");
    let conf = |w: i64, input: Vec<u8>| {
        let key = &key;
        async move {
            let u0 = unix_us();
            let t0 = Instant::now();
            let sealed = session.seal(Some(w), &input, key).await?;
            let seal_t = t0.elapsed();
            let u_seal = unix_us();
            let ts = Instant::now();
            let job = if no_idem {
                let req = sealed.submit_request(w);
                session.api().submit_job(&req, None).await?
            } else {
                session.submit(&sealed).await?
            };
            let submit_t = ts.elapsed();
            let u_sub = unix_us();
            let mut record = sealed.record();
            record.job_id = Some(job.id.clone());
            let (job, _) = session
                .follow(&job.id, timeout, Some((&record, key)), &mut |_| {})
                .await?;
            let t1 = Instant::now();
            let u_res = unix_us();
            let wait_t = t1 - ts - submit_t;
            let out = session.open_job(&job, &record, key)?;
            let open_t = t1.elapsed();
            let u_open = unix_us();
            trace.push(|| {
                let n = input.len();
                format!(
                    "{},tee,{w},{n},{u0},{u_seal},{u_sub},{u_res},{u_open}",
                    job.id
                )
            });
            let exec = job.execution_ms.unwrap_or(0) as f64;
            Ok::<_, anyhow::Error>((
                t0.elapsed(),
                seal_t,
                open_t,
                out.data().len(),
                exec,
                submit_t,
                wait_t,
            ))
        }
    };

    let classify_bytes = serde_json::to_vec(&classify_in)?;
    let record_bytes = serde_json::to_vec(&record_in)?;
    let short_bytes = serde_json::to_vec(&short_in)?;
    let chat_bytes = serde_json::to_vec(&chat_in)?;
    eprintln!("warming up (model loads in the island and in the enclave)…");
    // Only what will run: the models a run of one job size or one mode
    // does not use stay unloaded (so, e.g., the agent can run under
    // callgrind in a `BENCH_ONLY_MODE=tee` run).
    let warm_plain = only.as_deref() != Some("tee");
    let warm_tee = only.as_deref() != Some("plain");
    for _ in 0..2 {
        for (name, json, bytes) in [
            ("sentence", &classify_in, &classify_bytes),
            ("record", &record_in, &record_bytes),
            ("half", &short_in, &short_bytes),
        ] {
            // The calibrated job is a prefix of the record.
            if want(name) || (name == "record" && want("calibrated")) {
                if warm_plain {
                    plain(CLASSIFY, json.clone()).await?;
                }
                if warm_tee {
                    conf(CLASSIFY, bytes.clone()).await?;
                }
            }
        }
        if want("chat") {
            if warm_plain {
                plain(CHAT, chat_in.clone()).await?;
            }
            if warm_tee {
                conf(CHAT, chat_bytes.clone()).await?;
            }
        }
    }
    // `calibrated`: the record's first words (repeated past its end if need
    // be), as many as make the plain job's model (the island's
    // `execution_ms`) take `BENCH_MODEL_MS` (default 15) ms on this
    // machine: the job size issue 5's 1.03 goal is stated for, whatever
    // the machine's speed. Chosen by bisection, each step the median of
    // five plain jobs.
    let (calibrated_in, calibrated_words) = if want("calibrated") {
        let target: f64 = std::env::var("BENCH_MODEL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(15.0);
        let words: Vec<&str> = record_in["text"]
            .as_str()
            .context("record text")?
            .split_whitespace()
            .collect();
        let text = |n: usize| {
            let t: Vec<&str> = (0..n).map(|i| words[i % words.len()]).collect();
            json!({ "text": t.join(" ") })
        };
        let model_ms = |n: usize| {
            let input = text(n);
            async move {
                let mut v = Vec::new();
                for _ in 0..5 {
                    v.push(plain(CLASSIFY, input.clone()).await?.1);
                }
                Ok::<_, anyhow::Error>(median(&mut v))
            }
        };
        // The agent's model, not warmed up when only confidential jobs run,
        // is loaded before the first measurement.
        if !warm_plain {
            plain(CLASSIFY, text(words.len())).await?;
        }
        // The first n with model_ms(n) ≥ target, in [1, 3 × the record];
        // `BENCH_CALIBRATED_WORDS=n` fixes n instead (the same job for
        // every run of an A/B).
        let fixed: Option<usize> = std::env::var("BENCH_CALIBRATED_WORDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n >= 1);
        let (mut lo, mut hi) = match fixed {
            Some(n) => (n, n),
            None => (1usize, 3 * words.len()),
        };
        while lo < hi {
            let mid = (lo + hi) / 2;
            if model_ms(mid).await? >= target {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let got = model_ms(lo).await?;
        eprintln!(
            "calibrated job: {lo} words, model {got:.1} ms (target {target} ms; the record has {} words)",
            words.len()
        );
        (text(lo), lo)
    } else {
        (Value::Null, 0)
    };
    let calibrated_bytes = serde_json::to_vec(&calibrated_in)?;
    let mut classify = Samples {
        input_len: classify_bytes.len(),
        ..Default::default()
    };
    let mut record = Samples {
        input_len: record_bytes.len(),
        ..Default::default()
    };
    let mut short = Samples {
        input_len: short_bytes.len(),
        ..Default::default()
    };
    let mut calibrated = Samples {
        input_len: calibrated_bytes.len(),
        ..Default::default()
    };
    let mut chat = Samples {
        input_len: chat_bytes.len(),
        ..Default::default()
    };
    // One round: a plain and a confidential job back to back, the order
    // alternating; the pair's ratio is kept as well as the times. `$job`
    // is the job's name in `BENCH_JOBS`.
    macro_rules! pairs {
        ($job:literal, $rounds:expr, $w:expr, $json:expr, $bytes:expr, $s:expr, $label:expr) => {
            if want($job) {
                let cpu0 = proc_stats(pids);
                for round in 0..$rounds {
                    for step in 0..2 {
                        let is_plain = (step + round) % 2 == 0;
                        if only.as_deref().is_some_and(|m| m != if is_plain { "plain" } else { "tee" }) {
                            continue;
                        }
                        if is_plain {
                            let (t, e, sub, wait) = plain($w, $json.clone()).await?;
                            $s.plain.push(ms(t));
                            $s.exec_plain.push(e);
                            $s.submit_plain.push(ms(sub));
                            $s.wait_plain.push(ms(wait));
                        } else {
                            let (t, s, o, n, e, sub, wait) = conf($w, $bytes.clone()).await?;
                            $s.conf.push(ms(t));
                            $s.submit_conf.push(ms(sub));
                            $s.wait_conf.push(ms(wait));
                            $s.exec_conf.push(e);
                            $s.seal.push(ms(s));
                            $s.open.push(ms(o));
                            $s.output_len = n;
                        }
                    }
                    let n = $s.conf.len();
                    if n > 0 && $s.plain.len() == n {
                        $s.pair_ratio.push($s.conf[n - 1] / $s.plain[n - 1]);
                        $s.pair_diff.push($s.conf[n - 1] - $s.plain[n - 1]);
                    }
                }
                let cpu1 = proc_stats(pids);
                let jobs = ($s.plain.len() + $s.conf.len()).max(1) as f64;
                let per = |k: usize, f: fn((f64, f64)) -> f64| (f(cpu1[k]) - f(cpu0[k])) / jobs;
                eprintln!(
                    "{}: {} rounds done; CPU ms per job: coordinator {:.3}, island agent {:.3}, enclave {:.3}, client {:.3}; minor page faults per job: {:.0}, {:.0}, {:.0}, {:.0}",
                    $label, $rounds,
                    per(0, |p| p.0), per(1, |p| p.0), per(2, |p| p.0), per(3, |p| p.0),
                    per(0, |p| p.1), per(1, |p| p.1), per(2, |p| p.1), per(3, |p| p.1)
                );
            }
        };
    }
    // Classify is short, so its plain time moves by more than the 3 % goal
    // from one sample to the next: it gets many rounds.
    pairs!(
        "sentence",
        classify_rounds,
        CLASSIFY,
        classify_in,
        classify_bytes,
        classify,
        "classify"
    );
    pairs!(
        "record",
        classify_rounds,
        CLASSIFY,
        record_in,
        record_bytes,
        record,
        "classify (record)"
    );
    pairs!(
        "half",
        classify_rounds,
        CLASSIFY,
        short_in,
        short_bytes,
        short,
        "classify (short record)"
    );
    pairs!(
        "calibrated",
        classify_rounds,
        CLASSIFY,
        calibrated_in,
        calibrated_bytes,
        calibrated,
        "classify (calibrated)"
    );
    if let Ok(path) = std::env::var("BENCH_SAMPLES") {
        // Raw classify samples, one line per round, for looking at the
        // distribution: job, plain ms, confidential ms, seal ms, open ms.
        let mut csv = String::from("job,plain_ms,confidential_ms,seal_ms,open_ms\n");
        for (name, s) in [
            ("sentence", &classify),
            ("record", &record),
            ("short_record", &short),
            ("calibrated", &calibrated),
        ] {
            for i in 0..s.conf.len() {
                csv.push_str(&format!(
                    "{name},{:.3},{:.3},{:.3},{:.3}\n",
                    s.plain[i], s.conf[i], s.seal[i], s.open[i]
                ));
            }
        }
        std::fs::write(&path, csv).with_context(|| format!("writing {path}"))?;
    }
    pairs!("chat", rounds, CHAT, chat_in, chat_bytes, chat, "chat");
    if let (Some(path), Some(Ok(lines))) = (&trace_path, trace.0.as_ref().map(|t| t.lock())) {
        let mut csv = String::from("job_id,mode,workload_id,input_len,start_us,sealed_us,submitted_us,result_us,opened_us\n");
        for l in lines.iter() {
            csv.push_str(l);
            csv.push('\n');
        }
        std::fs::write(path, csv).with_context(|| format!("writing {path}"))?;
    }

    println!("| job | rounds | plain median | confidential median | ratio of medians | median ratio per round (IQR) | median difference per round | client seal (incl. recipient check) | client open (of which HPKE, in-process) | enclave open + seal (in-process) | crypto share of plain |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // What the enclave does for a client it answered before (the bench's
    // case after the warm-up), unless keeping shares is turned off.
    let kept =
        std::env::var("ARCHIPELAGO_ENCLAVE_SHARE_CAPACITY").map_or(true, |v| v.trim() != "0");
    // And the decapsulation made ahead for the enc the SDK announced.
    let decapped =
        std::env::var("ARCHIPELAGO_ENCLAVE_DECAP_CAPACITY").map_or(true, |v| v.trim() != "0");
    for (name, s) in [
        ("classify (MiniLM), one sentence", &mut classify),
        ("classify (MiniLM), patient record", &mut record),
        ("classify (MiniLM), half the record", &mut short),
        (
            &*format!("classify (MiniLM), calibrated ({calibrated_words} words)"),
            &mut calibrated,
        ),
        (&*format!("chat ({chat_tokens} tokens, greedy)"), &mut chat),
    ] {
        let n = s.pair_ratio.len();
        if n == 0 {
            continue;
        }
        let enclave_ms = enclave_crypto_ms(s.input_len, s.output_len, kept, decapped);
        let (open_hpke, open_hpke_no_share) = client_open_ms(s.output_len);
        let d = median(&mut s.pair_diff);
        let p = median(&mut s.plain);
        let c = median(&mut s.conf);
        let r = median(&mut s.pair_ratio);
        let (q1, q3) = (s.pair_ratio[n / 4], s.pair_ratio[(3 * n) / 4]);
        let seal = median(&mut s.seal);
        let open = median(&mut s.open);
        println!(
            "| {name} | {n} | {p:.2} ms | {c:.2} ms | {:.3} | {r:.3} ({q1:.3}–{q3:.3}) | {d:.2} ms | {seal:.2} ms | {open:.2} ms ({open_hpke:.2} ms; {open_hpke_no_share:.2} without the share) | {enclave_ms:.2} ms | {:.1} % |",
            c / p,
            100.0 * (seal + open + enclave_ms) / p
        );
    }
    println!(
        "\n| job | island execution_ms, plain | confidential (enclave round trip) | submit call, plain | confidential | submit → result, plain | confidential |\n|---|---|---|---|---|---|---|"
    );
    for (name, s) in [
        ("classify, sentence", &mut classify),
        ("classify, record", &mut record),
        ("classify, half record", &mut short),
        ("classify, calibrated", &mut calibrated),
        ("chat", &mut chat),
    ] {
        if s.conf.is_empty() {
            continue;
        }
        println!(
            "| {name} | {:.1} ms | {:.1} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            median(&mut s.exec_plain),
            median(&mut s.exec_conf),
            median(&mut s.submit_plain),
            median(&mut s.submit_conf),
            median(&mut s.wait_plain),
            median(&mut s.wait_conf)
        );
    }
    println!("\nclassify {classify_rounds} rounds, chat {rounds}; each round one plain and one confidential job, order alternating; medians.");
    Ok(())
}

/// Median in-process time of what the enclave adds for one job of these
/// sizes: open the request envelope (with the decapsulation made after the
/// previous job for the enc it announced, or with the X25519 now), then set
/// up the response (from the share kept since the client's first job, or
/// with the Diffie-Hellman now) and seal the output.
fn enclave_crypto_ms(
    input_len: usize,
    output_len: usize,
    with_kept_share: bool,
    with_prepared_decap: bool,
) -> f64 {
    let enclave = SecretKey::generate();
    let client = SecretKey::generate();
    let input = vec![b'x'; input_len];
    let output = vec![b'y'; output_len.max(1)];
    // Kept since the client's first job, as the enclave does.
    let Ok(kept) = ResponseStaticShare::for_enclave(&enclave, &client.public()) else {
        return f64::NAN;
    };
    let mut times = Vec::new();
    for _ in 0..200 {
        let body = RequestBody::new(3, input.clone(), client.public());
        let Ok(wrap) = PreparedWrap::new(&enclave.public()) else {
            return f64::NAN;
        };
        let ahead = if with_prepared_decap {
            PreparedDecap::new(&enclave, wrap.enc()).ok()
        } else {
            None
        };
        let Ok(env) = seal_request_prepared(&body, vec![wrap]) else {
            return f64::NAN;
        };
        let cid = client.client_id();
        let t0 = Instant::now();
        let Ok(opened) = open_request_with(
            &env,
            &enclave,
            &Expectations {
                workload_id: Some(3),
                client_key_id: Some(&cid),
            },
            |_| ahead,
        ) else {
            return f64::NAN;
        };
        let started = if with_kept_share {
            ResponseSealer::with_share(&kept, opened.body.request_id)
        } else {
            ResponseSealer::new(&enclave, &opened.body.response_key, opened.body.request_id)
        };
        let Ok((mut sealer, _header)) = started else {
            return f64::NAN;
        };
        let _ = sealer.seal_chunk(&output, ChunkKind::Data, true);
        times.push(ms(t0.elapsed()));
    }
    median(&mut times)
}

/// Median in-process time of the client's `open_response` of a response
/// of this size (the HPKE key schedule + the chunk), the part of "client
/// open" that is cryptography rather than JSON and base64: with the share
/// the session keeps per enclave key, and without (one X25519 more).
fn client_open_ms(output_len: usize) -> (f64, f64) {
    let enclave = SecretKey::generate();
    let client = SecretKey::generate();
    let output = vec![b'y'; output_len.max(1)];
    let Ok(share) = ResponseStaticShare::new(&client, &enclave.public()) else {
        return (f64::NAN, f64::NAN);
    };
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..400 {
        let Ok(sealed) = archipelago_proto::envelope::seal_response(
            &enclave,
            &client.public(),
            [7; 16],
            ChunkKind::Data,
            &output,
        ) else {
            return (f64::NAN, f64::NAN);
        };
        let use_share = i % 2 == 0;
        let t0 = Instant::now();
        let opened = open_response_with_share(
            &sealed,
            &client,
            &enclave.public(),
            &[7; 16],
            use_share.then_some(&share),
        );
        let t = ms(t0.elapsed());
        if opened.is_err() {
            return (f64::NAN, f64::NAN);
        }
        if use_share {
            with.push(t);
        } else {
            without.push(t);
        }
    }
    (median(&mut with), median(&mut without))
}
