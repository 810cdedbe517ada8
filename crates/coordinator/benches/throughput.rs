//! Coordinator throughput: submit → lease → result → settle for a no-op
//! workload (`echo`), with fake islands in-process talking HTTP to a real
//! coordinator on 127.0.0.1, over SQLite (file, WAL) and PostgreSQL.
//!
//! Two measurements per database:
//! - throughput: `BENCH_JOBS` jobs submitted by `BENCH_SUBMITTERS` concurrent
//!   clients while `BENCH_ISLANDS` islands lease and settle them; jobs/s is
//!   counted from the first submission to the last settlement.
//! - latency: idle islands long-polling, jobs submitted one at a time; the
//!   time from sending `POST /jobs` to an island holding the lease (p50/p99).
//!
//! `cargo bench -p archipelago-coordinator --bench throughput` runs the full
//! sizes; run without `--bench` (as `cargo test --benches` does) it does a
//! small smoke run. `BENCH_PG=0` skips PostgreSQL, `BENCH_SQLITE=0` the
//! end-to-end SQLite run, `BENCH_E2E=0` runs the
//! storage layer alone (for profiling), `BENCH_LEASE_BATCH` sets the fake
//! islands' `max_jobs` (default 16; 1 = one job per lease call).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archipelago_coordinator::{Config, Coordinator, DbConfig, Store};
use serde_json::{json, Value};
use tokio::runtime::Handle;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    base: String,
    user_keys: Vec<String>,
    island_tokens: Vec<String>,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    cleanup: Option<String>,
    _dir: Option<std::path::PathBuf>,
}

/// Opens the database and starts the coordinator on the server runtime
/// `srv` (its own threads, so its CPU time is counted apart from the
/// bench's clients), then enrolls the fake islands over HTTP.
async fn setup(pg: bool, islands: usize, users: usize, srv: &Handle) -> Setup {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let server = srv.spawn(async move {
        let (cfg, cleanup, dir) = if pg {
            let schema = format!("bench_{}", std::process::id());
            let url = std::env::var("ARCHIPELAGO_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            (
                DbConfig {
                    url,
                    schema: Some(schema.clone()),
                    max_connections: 16,
                    synchronous_commit: std::env::var("BENCH_PG_SYNC")
                        .map(|v| v != "0")
                        .unwrap_or(true),
                },
                Some(schema),
                None,
            )
        } else {
            let dir =
                std::env::temp_dir().join(format!("archipelago-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            (DbConfig::sqlite_in(&dir), None, Some(dir))
        };
        let store = Store::connect(&cfg).await.expect("database");
        store.ensure_default_workloads().await.unwrap();
        // Many clients and many island owners, as in a real network (one
        // account for everything would serialise on its balance row).
        let mut user_keys = Vec::new();
        for i in 0..users {
            let user = store
                .create_account(&format!("bench-{i}"), false, 1 << 40)
                .await
                .unwrap();
            let (_, key) = store
                .create_api_key(&user, "bench", &["read".into(), "write".into()])
                .await
                .unwrap();
            user_keys.push(key);
        }
        let mut enrollments = Vec::new();
        for i in 0..islands {
            let owner = store
                .create_account(&format!("owner-{i}"), false, 0)
                .await
                .unwrap();
            enrollments.push(store.create_enrollment_token(&owner, None).await.unwrap());
        }
        let config = Config {
            rate_limit_per_sec: 1e9,
            rate_limit_burst: 1e9,
            ..Config::default()
        };
        let coordinator = Coordinator::with_store(store, config, None);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let _ = ready_tx.send((base, user_keys, enrollments, cleanup, dir));
        coordinator
            .serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    let (base, user_keys, enrollments, cleanup, dir) = ready_rx.await.expect("server setup");
    let http = reqwest::Client::new();
    let mut island_tokens = Vec::new();
    for (i, enrollment) in enrollments.iter().enumerate() {
        let r: Value = http
            .post(format!("{base}/api/v1/island/enroll"))
            .json(
                &json!({"enrollment_token": enrollment, "name": format!("fake-{i}"),
                "runtimes": ["echo"], "memory_mb": 1024, "capacity": 64}),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = r["island_token"].as_str().unwrap().to_string();
        http.post(format!("{base}/api/v1/island/heartbeat"))
            .bearer_auth(&token)
            .json(&json!({"load": 0.0, "runtimes": ["echo"], "memory_mb": 1024, "capacity": 64}))
            .send()
            .await
            .unwrap();
        island_tokens.push(token);
    }
    Setup {
        base,
        user_keys,
        island_tokens,
        stop,
        server,
        cleanup,
        _dir: dir,
    }
}

async fn teardown(s: Setup) {
    let _ = s.stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), s.server).await;
    if let Some(schema) = s.cleanup {
        let url = std::env::var("ARCHIPELAGO_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let _ = Store::drop_schema(&url, &schema).await;
    }
    if let Some(dir) = s._dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// An island worker: lease up to `batch` jobs (the `max_jobs` lease a real
/// island agent makes with `lease_many`), post each result at once, repeat
/// until `target` jobs are settled. `batch` 1 uses the original
/// one-job-per-call shape.
async fn island_worker(
    http: reqwest::Client,
    base: String,
    token: String,
    settled: Arc<AtomicUsize>,
    target: usize,
    leased_at: Arc<Mutex<HashMap<String, Instant>>>,
    batch: u32,
) {
    while settled.load(Ordering::Relaxed) < target {
        let body = if batch > 1 {
            json!({"wait_ms": 200, "max_jobs": batch})
        } else {
            json!({"wait_ms": 200})
        };
        let r = http
            .post(format!("{base}/api/v1/island/lease"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            continue;
        }
        let now = Instant::now();
        let v: Value = r.json().await.unwrap();
        let jobs = if batch > 1 {
            v["jobs"].as_array().cloned().unwrap_or_default()
        } else {
            vec![v]
        };
        {
            let mut l = leased_at.lock().unwrap();
            for job in &jobs {
                l.insert(job["job_id"].as_str().unwrap().to_string(), now);
            }
        }
        for job in jobs {
            let id = job["job_id"].as_str().unwrap();
            let r = http
                .post(format!("{base}/api/v1/island/jobs/{id}/result"))
                .bearer_auth(&token)
                .json(&json!({"lease_id": job["lease_id"], "outcome": "succeeded", "execution_ms": 1, "output": job["input"]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            settled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// CPU time used so far by this process's threads, in seconds, by group.
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Coordinator runtime threads (HTTP, JSON, handlers).
    server: f64,
    /// SQLite: sqlx's connection worker thread and the store's writer and
    /// checkpoint threads (statement execution).
    db: f64,
    /// The bench's own client runtime (submitters, fake islands).
    client: f64,
    total: f64,
}

impl Cpu {
    /// From `/proc/self/task/*/stat` (Linux; zeros elsewhere).
    fn now() -> Cpu {
        let mut c = Cpu::default();
        let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
            return c;
        };
        for e in dir.flatten() {
            let Some((comm, ticks)) = proc_stat(&e.path()) else {
                continue;
            };
            // utime and stime
            let secs = (ticks(11) + ticks(12)) / 100.0;
            if comm.starts_with("coord-srv") {
                c.server += secs;
            } else if comm.starts_with("sqlx-sqlite") || comm.starts_with("store-") {
                c.db += secs;
            } else if comm.starts_with("bench-cli") {
                c.client += secs;
            }
            c.total += secs;
        }
        c
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            server: self.server - before.server,
            db: self.db - before.db,
            client: self.client - before.client,
            total: self.total - before.total,
        }
    }
}

/// CPU seconds used so far by the local PostgreSQL server's processes
/// (every process named `postgres`: backends, WAL writer, checkpointer,
/// autovacuum), counting exited children through `cutime`/`cstime` of the
/// postmaster. Linux only; 0 when the server runs elsewhere.
fn postgres_cpu() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut secs = 0.0;
    for e in dir.flatten() {
        let Some((comm, ticks)) = proc_stat(&e.path()) else {
            continue;
        };
        if comm == "postgres" {
            // utime, stime, cutime, cstime
            secs += (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0;
        }
    }
    secs
}

/// A process's or thread's name and its `stat` fields after the name, by
/// index from 0 (= field 3, state), as clock ticks of 1/100 s where they
/// are times; `None` when it has gone.
fn proc_stat(dir: &std::path::Path) -> Option<(String, impl Fn(usize) -> f64)> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<f64> = stat[close + 1..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    Some((comm, move |i: usize| fields.get(i).copied().unwrap_or(0.0)))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(
    pg: bool,
    jobs: usize,
    submitters: usize,
    islands: usize,
    latency_jobs: usize,
    batch: u32,
    srv: &Handle,
) {
    let name = if pg { "postgres" } else { "sqlite" };
    let s = setup(pg, islands, submitters, srv).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();

    // ---- throughput
    let settled = Arc::new(AtomicUsize::new(0));
    let leased_at = Arc::new(Mutex::new(HashMap::new()));
    let cpu0 = Cpu::now();
    let pg_cpu0 = postgres_cpu();
    let start = Instant::now();
    let mut workers = Vec::new();
    for t in &s.island_tokens {
        for _ in 0..4 {
            workers.push(tokio::spawn(island_worker(
                http.clone(),
                s.base.clone(),
                t.clone(),
                settled.clone(),
                jobs,
                leased_at.clone(),
                batch,
            )));
        }
    }
    let next = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for key in s.user_keys.iter().take(submitters) {
        let (http, base, key, next) = (http.clone(), s.base.clone(), key.clone(), next.clone());
        subs.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let r = http
                    .post(format!("{base}/api/v1/jobs"))
                    .bearer_auth(&key)
                    .json(&json!({"workload_id": 5, "input": {"text": "noop"}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for t in subs {
        t.await.unwrap();
    }
    let submitted = start.elapsed();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = start.elapsed();
    let cpu = Cpu::now().since(cpu0);
    let pg_cpu = postgres_cpu() - pg_cpu0;
    let rate = jobs as f64 / elapsed.as_secs_f64();
    println!(
        "{name}: {jobs} jobs submitted→leased→settled in {:.2} s = {rate:.0} jobs/s (submission alone {:.0} jobs/s; {submitters} submitters, {} islands × 4 pollers, max_jobs {batch})",
        elapsed.as_secs_f64(),
        jobs as f64 / submitted.as_secs_f64(),
        islands
    );
    let us = |secs: f64| secs * 1e6 / jobs as f64;
    println!(
        "{name}: CPU per job: coordinator {:.0} µs (HTTP/handlers {:.0} + SQLite threads {:.0}), bench clients {:.0} µs; whole process {:.0} µs",
        us(cpu.server + cpu.db),
        us(cpu.server),
        us(cpu.db),
        us(cpu.client),
        us(cpu.total)
    );
    if pg && pg_cpu > 0.0 {
        println!(
            "{name}: CPU per job in the local PostgreSQL server: {:.0} µs ({:.2} of a core over the run)",
            us(pg_cpu),
            pg_cpu / elapsed.as_secs_f64()
        );
    }

    // ---- latency: idle islands waiting, one job at a time
    let settled = Arc::new(AtomicUsize::new(0));
    let leased_at = Arc::new(Mutex::new(HashMap::new()));
    let mut workers = Vec::new();
    for t in &s.island_tokens {
        workers.push(tokio::spawn(island_worker(
            http.clone(),
            s.base.clone(),
            t.clone(),
            settled.clone(),
            latency_jobs,
            leased_at.clone(),
            batch,
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sent = Vec::new();
    for i in 0..latency_jobs {
        let t0 = Instant::now();
        let r: Value = http
            .post(format!("{}/api/v1/jobs", s.base))
            .bearer_auth(&s.user_keys[i % s.user_keys.len()])
            .json(&json!({"workload_id": 5, "input": {"i": i}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        sent.push((r["id"].as_str().unwrap().to_string(), t0));
        // wait until settled so the islands are idle again
        while settled.load(Ordering::Relaxed) <= i {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    let leased = leased_at.lock().unwrap().clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t0)| {
            leased
                .get(id)
                .map(|t| t.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{name}: submit→lease latency over {} jobs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    teardown(s).await;
}

/// The storage layer alone, one job at a time: submit, claim, complete.
async fn store_only(pg: bool, jobs: usize) {
    use archipelago_coordinator::store::{IslandSnapshot, NewJob, SubmitOutcome};
    let cfg = if pg {
        let url = std::env::var("ARCHIPELAGO_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        DbConfig {
            url,
            schema: Some(format!("bench_store_{}", std::process::id())),
            max_connections: 4,
            synchronous_commit: std::env::var("BENCH_PG_SYNC")
                .map(|v| v != "0")
                .unwrap_or(true),
        }
    } else {
        // A file in WAL mode, as the end-to-end run and a real deployment use.
        let dir =
            std::env::temp_dir().join(format!("archipelago-bench-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        DbConfig::sqlite_in(&dir)
    };
    let store = Store::connect(&cfg).await.expect("database");
    store.ensure_default_workloads().await.unwrap();
    let user = store.create_account("u", false, 1 << 40).await.unwrap();
    let owner = store.create_account("o", false, 0).await.unwrap();
    let token = store.create_enrollment_token(&owner, None).await.unwrap();
    let (island, _) = store
        .enroll_island(&token, "i", None, false, &["echo".into()], 1024, 64)
        .await
        .unwrap()
        .unwrap();
    let snap = IslandSnapshot {
        id: island.clone(),
        runtimes: vec!["echo".into()],
        memory_mb: 1024,
        capacity: 64,
        he_capable: false,
        has_enclave: false,
    };
    let cpu0 = Cpu::now();
    let start = Instant::now();
    for _ in 0..jobs {
        let j = NewJob {
            account_id: user.clone(),
            workload_id: 5,
            mode: "plain",
            runtime: "echo".into(),
            memory_mb: 16,
            max_seconds: 10,
            price_per_second: 1,
            encryption_key_id: None,
            input: "{}".into(),
            recipients: vec![],
            hold: 10,
            deadline_at: i64::MAX / 2,
            idempotency: None,
        };
        let SubmitOutcome::Created(_) = store.submit_job(&j).await.unwrap() else {
            panic!()
        };
        let c = store
            .claim_job(&snap, 30_000, false)
            .await
            .unwrap()
            .unwrap();
        store
            .complete_job(
                &island,
                &owner,
                &c.job.id,
                c.job.lease_id.as_deref().unwrap(),
                true,
                1,
                Some("{}"),
                None,
                85,
            )
            .await
            .unwrap();
    }
    let e = start.elapsed();
    let cpu = Cpu::now().since(cpu0);
    println!(
        "{}: storage only, sequential submit+claim+settle: {:.0} jobs/s ({:.0} µs per job; CPU {:.0} µs per job)",
        if pg { "postgres" } else { "sqlite" },
        jobs as f64 / e.as_secs_f64(),
        e.as_secs_f64() * 1e6 / jobs as f64,
        cpu.total * 1e6 / jobs as f64
    );
    if pg {
        let _ = sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            cfg.schema.clone().unwrap_or_default()
        ))
        .execute(store.pool())
        .await;
    }
    store.close().await;
    if !pg {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("archipelago-bench-store-{}", std::process::id())),
        );
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (jobs, latency_jobs) = if full {
        (
            env_usize("BENCH_JOBS", 5000),
            env_usize("BENCH_LATENCY_JOBS", 500),
        )
    } else {
        (50, 20)
    };
    let submitters = env_usize("BENCH_SUBMITTERS", 32);
    let islands = env_usize("BENCH_ISLANDS", 8);
    let batch = env_usize("BENCH_LEASE_BATCH", 16).clamp(1, 64) as u32;
    // The coordinator and the bench's clients on separate runtimes (two
    // threads each, as many as the machine has cores), so the CPU time of
    // each side can be read per thread.
    let srv_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coord-srv")
        .enable_all()
        .build()
        .unwrap();
    let srv = srv_rt.handle().clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-cli")
        .enable_all()
        .build()
        .unwrap();
    let pg_on = std::env::var("BENCH_PG").map(|v| v != "0").unwrap_or(true);
    rt.block_on(async {
        println!(
            "load average: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        srv.spawn(store_only(false, jobs / 5)).await.unwrap();
        if pg_on {
            srv.spawn(store_only(true, jobs / 5)).await.unwrap();
        }
        if std::env::var("BENCH_E2E")
            .map(|v| v == "0")
            .unwrap_or(false)
        {
            return;
        }
        if std::env::var("BENCH_SQLITE")
            .map(|v| v != "0")
            .unwrap_or(true)
        {
            run(false, jobs, submitters, islands, latency_jobs, batch, &srv).await;
        }
        if pg_on {
            run(true, jobs, submitters, islands, latency_jobs, batch, &srv).await;
        }
        println!(
            "load average: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    });
}
