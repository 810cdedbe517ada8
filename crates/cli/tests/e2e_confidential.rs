//! End-to-end confidential inference on loopback, as real processes: a
//! coordinator (`archipelago coordinator serve`), sim islands
//! (`archipelago island --tee sim`, each supervising its own
//! `archipelago-enclave`) and a client built here from the proto and attest
//! crates, which verifies the enclaves' evidence itself under its own
//! policy, seals to the enclave keys and opens the sealed outputs.
//!
//! The fault tests of issue 5 §4: round trip; islands without an accepted
//! TEE never see the job; a replayed envelope is refused by the enclave; an
//! island SIGKILLed mid-job (the job completes on the other recipient, or
//! fails with the re-encrypt error, charged at most once); key rotation
//! while jobs are queued; enclave crash → restart → re-attestation; and no
//! plaintext in the island and coordinator logs or the SQLite database.
//!
//! Each test starts its own network in a fresh directory and is bounded by
//! explicit deadlines. "Mid-job" is made deterministic by freezing the
//! enclaves (SIGSTOP): whichever island leases the job then holds it.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use archipelago_attest::{check_key_binding, verify_and_appraise, Evidence, Policy, SimRoot};
use archipelago_proto::api::{EnclaveInfo, EnclaveList, EncryptedPayload};
use archipelago_proto::envelope::{
    open_response, peek_response_header, seal_request, ChunkKind, RequestBody,
};
use archipelago_proto::{b64, KeyId, PublicKey, SecretKey};
use serde_json::{json, Value};

const ECHO: i64 = 5;

// ---------------------------------------------------------------- processes

fn archipelago_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_archipelago"))
}

/// `archipelago-enclave` is built by its own package; it lives next to the
/// `archipelago` binary in the same target directory.
fn enclave_bin() -> PathBuf {
    let bin = archipelago_bin();
    let dir = bin.parent().expect("binary directory");
    let enclave = dir.join("archipelago-enclave");
    if !enclave.exists() {
        let target_dir = dir.parent().expect("target directory");
        eprintln!(
            "archipelago-enclave not found at {}; building it with `cargo build -p archipelago-enclave`",
            enclave.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "archipelago-enclave", "--target-dir"])
            .arg(target_dir)
            .status()
            .expect("running cargo build -p archipelago-enclave");
        assert!(
            status.success() && enclave.exists(),
            "could not build archipelago-enclave into {}: run `cargo build -p archipelago-enclave` with the same target directory",
            target_dir.display()
        );
    }
    enclave
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "archipelago-e2e-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped, its stderr in a log file.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let f = File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .env("ARCHIPELAGO_LOG", "debug");
        let child = cmd.spawn().expect("spawning a test process");
        Proc { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Child processes of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------- HTTP

struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method, format!("{}/api/v1{path}", self.base))
                .bearer_auth(&self.key)
                .timeout(Duration::from_secs(20));
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            }
        })
    }

    fn get(&self, path: &str) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, path, None);
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, Some(body));
        assert!((200..300).contains(&s), "POST {path}: HTTP {s} {v}");
        v
    }
}

// ---------------------------------------------------------------- network

struct Island {
    proc: Proc,
    dir: PathBuf,
}

impl Island {
    fn id(&self) -> String {
        let text = wait_until("island.json", Duration::from_secs(30), || {
            std::fs::read_to_string(self.dir.join("island.json")).ok()
        });
        let v: Value = serde_json::from_str(&text).unwrap();
        v["island_id"].as_str().unwrap().to_string()
    }

    /// The enclave process the island supervises.
    fn enclave_pid(&self) -> u32 {
        let pid = self.proc.pid();
        wait_until(
            "the island's enclave process",
            Duration::from_secs(30),
            || children(pid).into_iter().next(),
        )
    }
}

struct Net {
    dir: PathBuf,
    coordinator: Proc,
    api: Api,
    token: String,
    sim_root: PathBuf,
    sim_root_b64: String,
    measurement: String,
}

impl Net {
    fn start(name: &str) -> Net {
        Net::start_with(name, 2)
    }

    fn start_with(name: &str, lease_secs: u64) -> Net {
        let enclave = enclave_bin();
        let dir = scratch(name);
        let root = SimRoot::generate();
        let sim_root = dir.join("sim-root.key");
        root.save(&sim_root).unwrap();
        let cdir = dir.join("coordinator");
        std::fs::create_dir_all(&cdir).unwrap();
        std::fs::write(
            cdir.join("coordinator.toml"),
            format!(
                "dev_sim_root = \"{}\"\nlease_secs = {lease_secs}\nheartbeat_interval_secs = 1\nreap_interval_ms = 200\n\
                 max_lease_wait_ms = 2000\nrate_limit_per_sec = 10000.0\nrate_limit_burst = 10000.0\n",
                hex(&root.public_key())
            ),
        )
        .unwrap();
        let out = Command::new(archipelago_bin())
            .args(["coordinator", "init", "--json", "--data-dir"])
            .arg(&cdir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "coordinator init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init: Value =
            serde_json::from_slice(&out.stdout).expect("coordinator init --json prints JSON");
        let port = free_port();
        let mut cmd = Command::new(archipelago_bin());
        cmd.args([
            "coordinator",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&cdir);
        let coordinator = Proc::spawn(cmd, dir.join("coordinator.log"));
        let api = Api {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            key: init["api_key"].as_str().unwrap().to_string(),
        };
        wait_until(
            "the coordinator to answer /health",
            Duration::from_secs(30),
            || (api.call(reqwest::Method::GET, "/health", None).0 == 200).then_some(()),
        );
        // The client pins the sim enclave's measurement (binary, no models).
        let m = Command::new(&enclave)
            .arg("measure")
            .env_remove("ARCHIPELAGO_MODELS_DIR")
            .output()
            .unwrap();
        assert!(m.status.success(), "archipelago-enclave measure failed");
        let measurement = String::from_utf8(m.stdout).unwrap().trim().to_string();
        Net {
            coordinator,
            api,
            token: init["enrollment_token"].as_str().unwrap().to_string(),
            sim_root_b64: b64::encode_std(&root.public_key()),
            sim_root,
            measurement,
            dir,
        }
    }

    /// Starts an island; `tee` is `sim` (with this network's sim root),
    /// `foreign-sim` (sim signed by a root the coordinator does not accept)
    /// or `none`.
    fn island(&self, name: &str, tee: &str, env: &[(&str, &str)]) -> Island {
        self.island_with(name, tee, env, 10)
    }

    /// [`Net::island`] with a given `--drain-timeout-secs`.
    fn island_with(&self, name: &str, tee: &str, env: &[(&str, &str)], drain_secs: u64) -> Island {
        let dir = self.dir.join(name);
        let mut cmd = Command::new(archipelago_bin());
        cmd.args([
            "island",
            "--coordinator",
            &self.api.base,
            "--enrollment-token",
            &self.token,
            "--name",
            name,
        ])
        .args([
            "--no-models",
            "--lease-wait-ms",
            "1500",
            "--restart-backoff-ms",
            "200",
            "--drain-timeout-secs",
            &drain_secs.to_string(),
        ])
        .arg("--enclave-bin")
        .arg(enclave_bin())
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("ARCHIPELAGO_MODELS_DIR");
        match tee {
            "sim" => {
                cmd.args(["--tee", "sim", "--sim-root"]).arg(&self.sim_root);
            }
            "foreign-sim" => {
                let other = self.dir.join(format!("{name}-foreign-root.key"));
                SimRoot::generate().save(&other).unwrap();
                cmd.args(["--tee", "sim", "--sim-root"]).arg(other);
            }
            _ => {
                cmd.args(["--tee", "none"]);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn(cmd, self.dir.join(format!("{name}.log")));
        Island { proc, dir }
    }

    /// The client's own policy: sim evidence from this network's root only,
    /// with the enclave measurement pinned.
    fn client_policy(&self) -> Policy {
        Policy::from_toml_str(&format!(
            "accepted_tees = [\"sim\"]\naccept_sim = true\n[sim]\nroots = [\"{}\"]\nmeasurements = [\"{}\"]\n",
            self.sim_root_b64, self.measurement
        ))
        .expect("client policy")
    }

    /// Enclave keys listed for the echo workload.
    fn enclaves(&self) -> Vec<EnclaveInfo> {
        let v = self
            .api
            .get(&format!("/confidential/enclaves?workload_id={ECHO}"));
        serde_json::from_value::<EnclaveList>(v).unwrap().enclaves
    }

    /// Waits until every island in `ids` has an attested key; returns the
    /// newest key per island, in the order of `ids`, each verified by the
    /// client itself.
    fn verified_keys(&self, ids: &[String], exclude: &HashSet<String>) -> Vec<EnclaveInfo> {
        let policy = self.client_policy();
        wait_until(
            "attested enclave keys for every island",
            Duration::from_secs(60),
            || {
                let list = self.enclaves();
                let mut out = Vec::new();
                for id in ids {
                    let newest = list
                        .iter()
                        .filter(|e| &e.island_id == id && !exclude.contains(&e.key_id))
                        .max_by_key(|e| e.attested_at)?;
                    out.push(newest.clone());
                }
                Some(out)
            },
        )
        .into_iter()
        .inspect(|e| client_verify(e, &policy))
        .collect()
    }

    fn register_client_key(&self) -> (SecretKey, KeyId) {
        let sk = SecretKey::generate();
        let id = sk.client_id();
        let v = self.api.post(
            "/confidential/keys",
            &json!({ "public_key": sk.public().to_base64() }),
        );
        assert_eq!(
            v["key_id"],
            id.as_str(),
            "the coordinator derives the same self-certifying id"
        );
        (sk, id)
    }

    fn submit(&self, ck: &KeyId, envelope: &[u8]) -> String {
        self.submit_with(ck, envelope, None)
    }

    fn submit_with(&self, ck: &KeyId, envelope: &[u8], timeout_seconds: Option<i64>) -> String {
        let mut body = json!({
            "workload_id": ECHO,
            "confidential": true,
            "encryption_key_id": ck.as_str(),
            "input": {"encrypted": true, "key_id": ck.as_str(), "ciphertext": b64::encode_url(envelope)},
        });
        if let Some(t) = timeout_seconds {
            body["timeout_seconds"] = json!(t);
        }
        self.api.post("/jobs", &body)["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn job(&self, id: &str) -> Value {
        self.api.get(&format!("/jobs/{id}"))
    }

    fn wait_terminal(&self, id: &str, timeout: Duration) -> Value {
        wait_until(&format!("job {id} to finish"), timeout, || {
            let j = self.job(id);
            matches!(
                j["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
            .then_some(j)
        })
    }

    /// Ledger entries of kind `charge` for a job.
    fn charges(&self, job_id: &str) -> usize {
        let acct = self.api.get("/account");
        acct["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "charge" && e["job_id"] == job_id)
            .count()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The client never trusts the coordinator's verdict: it verifies the
/// evidence under its own policy and checks the key binding itself.
fn client_verify(e: &EnclaveInfo, policy: &Policy) {
    let pk = b64::decode_key32(&e.public_key).unwrap();
    KeyId::parse(&e.key_id)
        .unwrap()
        .check(&pk)
        .expect("key id is self-certifying");
    let evidence = Evidence::from_json(&serde_json::to_vec(&e.evidence).unwrap()).unwrap();
    let result = verify_and_appraise(&evidence, policy, now())
        .expect("the client's policy accepts the enclave");
    let nonce = b64::decode_any(&e.nonce, 128).unwrap();
    check_key_binding(&result, &pk, e.key_expires_at as u64, &nonce)
        .expect("the evidence binds the enclave key");
}

struct Sealed {
    envelope: Vec<u8>,
    request_id: [u8; 16],
}

fn seal(sk: &SecretKey, to: &[&EnclaveInfo], input: &Value) -> Sealed {
    let body = RequestBody::new(ECHO as u64, serde_json::to_vec(input).unwrap(), sk.public());
    let request_id = body.request_id;
    let keys: Vec<PublicKey> = to
        .iter()
        .map(|e| PublicKey(b64::decode_key32(&e.public_key).unwrap()))
        .collect();
    Sealed {
        envelope: seal_request(&body, &keys).unwrap(),
        request_id,
    }
}

/// Opens a succeeded job's output, checking that one of the chosen,
/// verified enclave keys wrote it (keyed by its Diffie-Hellman with the
/// client key).
fn open_output(
    job: &Value,
    sk: &SecretKey,
    chosen: &[&EnclaveInfo],
    request_id: &[u8; 16],
) -> (String, Value) {
    let out: EncryptedPayload =
        serde_json::from_value(job["output"].clone()).expect("encrypted output");
    assert!(out.encrypted);
    assert_eq!(out.key_id, sk.client_id().as_str());
    let bytes = b64::decode_any(&out.ciphertext, 1 << 26).unwrap();
    let header = peek_response_header(&bytes).unwrap();
    let writer = chosen
        .iter()
        .find(|e| e.key_id == header.enclave_key_id.as_str())
        .expect("the response is written by one of the enclave keys the client chose");
    let pk = PublicKey(b64::decode_key32(&writer.public_key).unwrap());
    let (kind, plain) =
        open_response(&bytes, sk, &pk, request_id).expect("the response opens and authenticates");
    assert_eq!(kind, ChunkKind::Data);
    // A streamed response carries its `{"delta"}` lines before the output.
    let tail = match plain.iter().rposition(|b| *b == b'\n') {
        Some(i) => &plain[i + 1..],
        None => &plain[..],
    };
    (writer.key_id.clone(), serde_json::from_slice(tail).unwrap())
}

fn grep_files(files: &[PathBuf], needle: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------- tests

/// Round trip through two sim islands; an island without a TEE and one
/// whose sim root the coordinator does not accept never see the job; a
/// replayed envelope is refused by the enclave; and the job input appears
/// in no log file and not in the SQLite database.
#[test]
fn confidential_round_trip_unaccepted_islands_replay_and_no_plaintext() {
    let net = Net::start("roundtrip");
    let a = net.island("a", "sim", &[]);
    let b = net.island("b", "sim", &[]);
    let plain_island = net.island("none", "none", &[]);
    let foreign = net.island("foreign", "foreign-sim", &[]);
    let ids = [a.id(), b.id()];
    let keys = net.verified_keys(&ids, &HashSet::new());
    let (sk, ck) = net.register_client_key();

    // The foreign-root island tried to attest and was refused.
    let foreign_id = foreign.id();
    let none_id = plain_island.id();
    wait_until(
        "the foreign island's refused attestation",
        Duration::from_secs(30),
        || {
            foreign
                .proc
                .log_text()
                .contains("attestation refused")
                .then_some(())
        },
    );
    assert!(net
        .enclaves()
        .iter()
        .all(|e| e.island_id != foreign_id && e.island_id != none_id));

    // The code word's `q` keeps it out of the hex alphabet, so the hex ids
    // and hashes in the grepped files cannot match it by chance.
    let secret = "the patient's secret diagnosis 7f3a9q";
    let chosen = [&keys[0], &keys[1]];
    let mut job_ids = Vec::new();
    for i in 0..4 {
        let input = json!({ "prompt": format!("{secret} #{i}") });
        let s = seal(&sk, &chosen, &input);
        let id = net.submit(&ck, &s.envelope);
        let job = net.wait_terminal(&id, Duration::from_secs(30));
        assert_eq!(job["state"], "succeeded", "{job}");
        let island = job["island_id"].as_str().unwrap();
        assert!(ids.iter().any(|x| x == island), "ran on an accepted island");
        let (_, out) = open_output(&job, &sk, &chosen, &s.request_id);
        assert_eq!(out["text"], format!("{secret} #{i}").to_uppercase());
        assert_eq!(job["recipients"].as_array().unwrap().len(), 2);
        job_ids.push(id);
    }

    // A plain echo job runs too (on any island, the TEE-less one included).
    let plain = net.api.post(
        "/jobs",
        &json!({"workload_id": ECHO, "input": {"prompt": "plain words"}}),
    );
    let plain = net.wait_terminal(plain["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(plain["state"], "succeeded", "{plain}");
    assert_eq!(plain["output"], json!({"text": "PLAIN WORDS", "chars": 11}));

    // Replay: the same envelope (one recipient, so the same enclave) twice.
    let input = json!({ "prompt": format!("{secret} replay") });
    let s = seal(&sk, &[&keys[0]], &input);
    let first = net.submit(&ck, &s.envelope);
    let first = net.wait_terminal(&first, Duration::from_secs(30));
    assert_eq!(first["state"], "succeeded", "{first}");
    let again = net.submit(&ck, &s.envelope);
    let again = net.wait_terminal(&again, Duration::from_secs(30));
    assert_eq!(again["state"], "failed", "{again}");
    assert_eq!(again["error"]["code"], "replay", "{again}");
    assert_eq!(again["island_id"], first["island_id"]);
    job_ids.push(first["id"].as_str().unwrap().to_string());

    // No job went to the TEE-less or the unaccepted island.
    for id in &job_ids {
        let j = net.job(id);
        assert!(
            j["island_id"] != none_id && j["island_id"] != foreign_id,
            "{j}"
        );
    }
    for isl in [&plain_island, &foreign] {
        let log = isl.proc.log_text();
        for id in &job_ids {
            assert!(
                !log.contains(id.as_str()),
                "an unaccepted island saw confidential job {id}"
            );
        }
    }

    // Stop everything, then grep every log and the database files.
    let logs = vec![
        a.proc.log.clone(),
        b.proc.log.clone(),
        plain_island.proc.log.clone(),
        foreign.proc.log.clone(),
        net.coordinator.log.clone(),
    ];
    for island in [&a, &b] {
        assert!(
            island.proc.log_text().contains("job leased")
                || island.proc.log_text().contains("island agent running")
        );
    }
    drop((a, b, plain_island, foreign));
    let Net {
        coordinator, dir, ..
    } = net;
    drop(coordinator);
    let mut files = logs;
    files.extend(files_under(&dir.join("coordinator")));
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".db")),
        "the SQLite database is among the grepped files"
    );
    for needle in [secret, &secret.to_uppercase(), "7f3a9q", "7F3A9Q"] {
        let hits = grep_files(&files, needle);
        assert!(hits.is_empty(), "plaintext {needle:?} found in {hits:?}");
    }
    // The grep can find things: the plain job's input is stored in clear.
    assert!(
        !grep_files(&files, "plain words").is_empty(),
        "the grep sees plain-job text, so it would see leaks"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An island SIGKILLed while it holds a job: the job completes on the other
/// recipient and is charged once; a job whose only recipient dies fails with
/// the re-encrypt error and is not charged.
#[test]
fn island_killed_mid_job_completes_elsewhere_or_fails_with_reencrypt() {
    let net = Net::start("kill");
    let mut islands = vec![net.island("a", "sim", &[]), net.island("b", "sim", &[])];
    let ids: Vec<String> = islands.iter().map(Island::id).collect();
    let keys = net.verified_keys(&ids, &HashSet::new());
    let (sk, ck) = net.register_client_key();

    // Freeze both enclaves: whichever island leases the job is stuck with it.
    let enclaves: Vec<u32> = islands.iter().map(Island::enclave_pid).collect();
    for p in &enclaves {
        assert!(signal(*p, "STOP"));
    }
    let chosen = [&keys[0], &keys[1]];
    let s = seal(&sk, &chosen, &json!({"prompt": "survive a crash"}));
    let id = net.submit(&ck, &s.envelope);
    let holder = wait_until(
        "an island to lease the job",
        Duration::from_secs(20),
        || {
            let j = net.job(&id);
            j["island_id"].as_str().map(str::to_string)
        },
    );
    let victim = ids.iter().position(|x| *x == holder).unwrap();
    let other = 1 - victim;
    assert!(signal(islands[victim].proc.pid(), "KILL"));
    assert!(signal(enclaves[victim], "KILL"));
    assert!(signal(enclaves[other], "CONT"));
    let job = net.wait_terminal(&id, Duration::from_secs(40));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["island_id"], ids[other].as_str());
    assert!(job["attempts"].as_i64().unwrap() >= 2, "{job}");
    let (writer, out) = open_output(&job, &sk, &chosen, &s.request_id);
    assert_eq!(writer, keys[other].key_id);
    assert_eq!(out["text"], "SURVIVE A CRASH");
    assert_eq!(net.charges(&id), 1, "charged exactly once");

    // Now the survivor is the only recipient, and it dies mid-job too.
    let survivor_enclave = enclaves[other];
    assert!(signal(survivor_enclave, "STOP"));
    let s = seal(&sk, &[&keys[other]], &json!({"prompt": "nowhere to go"}));
    let id = net.submit(&ck, &s.envelope);
    wait_until(
        "the survivor to lease the job",
        Duration::from_secs(20),
        || (net.job(&id)["island_id"] == ids[other].as_str()).then_some(()),
    );
    assert!(signal(islands[other].proc.pid(), "KILL"));
    assert!(signal(survivor_enclave, "KILL"));
    let job = net.wait_terminal(&id, Duration::from_secs(40));
    assert_eq!(job["state"], "failed", "{job}");
    let msg = job["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        msg.contains("re-encrypt"),
        "the error tells the client to re-encrypt: {job}"
    );
    assert_eq!(net.charges(&id), 0, "a failed job is not charged");
    assert_eq!(job["cost"].as_i64().unwrap_or(0), 0);
    for i in &mut islands {
        assert!(!i.proc.alive());
    }
    let _ = std::fs::remove_dir_all(&net.dir);
}

/// Enclaves rotate their keys while jobs sealed to the old keys wait in the
/// queue: the old keys stay usable for their grace period, the new keys are
/// attested and routable.
#[test]
fn key_rotation_while_jobs_are_queued() {
    let net = Net::start("rotate");
    let env = [
        ("ARCHIPELAGO_ENCLAVE_ROTATE_SECS", "3"),
        ("ARCHIPELAGO_ENCLAVE_GRACE_SECS", "120"),
    ];
    let islands = [net.island("a", "sim", &env), net.island("b", "sim", &env)];
    let ids: Vec<String> = islands.iter().map(Island::id).collect();
    let old = net.verified_keys(&ids, &HashSet::new());
    let (sk, ck) = net.register_client_key();

    // Freeze the enclaves, queue jobs sealed to the current keys, and let a
    // rotation come due while they wait.
    let enclaves: Vec<u32> = islands.iter().map(Island::enclave_pid).collect();
    for p in &enclaves {
        assert!(signal(*p, "STOP"));
    }
    let chosen = [&old[0], &old[1]];
    let mut jobs = Vec::new();
    for i in 0..5 {
        let s = seal(&sk, &chosen, &json!({"prompt": format!("queued {i}")}));
        jobs.push((net.submit(&ck, &s.envelope), s.request_id, i));
    }
    std::thread::sleep(Duration::from_secs(4));
    let queued = jobs
        .iter()
        .filter(|(id, _, _)| net.job(id)["state"] == "queued")
        .count();
    assert!(
        queued >= 3,
        "jobs wait in the queue while the enclaves are frozen ({queued} queued)"
    );
    for p in &enclaves {
        assert!(signal(*p, "CONT"));
    }
    for (id, rid, i) in &jobs {
        let job = net.wait_terminal(id, Duration::from_secs(40));
        assert_eq!(job["state"], "succeeded", "{job}");
        let (writer, out) = open_output(&job, &sk, &chosen, rid);
        assert!(old.iter().any(|k| k.key_id == writer));
        assert_eq!(out["text"], format!("QUEUED {i}"));
    }
    // New keys were attested for both islands and work.
    let old_ids: HashSet<String> = old.iter().map(|k| k.key_id.clone()).collect();
    let new = net.verified_keys(&ids, &old_ids);
    for k in &new {
        assert!(!old_ids.contains(&k.key_id));
    }
    let chosen = [&new[0], &new[1]];
    let s = seal(&sk, &chosen, &json!({"prompt": "after rotation"}));
    let id = net.submit(&ck, &s.envelope);
    let job = net.wait_terminal(&id, Duration::from_secs(30));
    assert_eq!(job["state"], "succeeded", "{job}");
    let (writer, _) = open_output(&job, &sk, &chosen, &s.request_id);
    assert!(!old_ids.contains(&writer));
    for i in &islands {
        assert!(i.proc.log_text().contains("enclave keys changed"));
    }
    drop(islands);
    let _ = std::fs::remove_dir_all(&net.dir);
}

/// The enclave crashes: the island restarts it (new process, new key),
/// re-attests, and jobs sealed to the new key run; a job sealed only to the
/// lost key fails with the re-encrypt error. Then SIGTERM drains the island.
#[test]
fn enclave_crash_restart_and_reattestation_then_graceful_shutdown() {
    let net = Net::start("crash");
    let mut island = net.island("a", "sim", &[]);
    let id = island.id();
    let first = net
        .verified_keys(std::slice::from_ref(&id), &HashSet::new())
        .remove(0);
    let (sk, ck) = net.register_client_key();

    let pid = island.enclave_pid();
    assert!(signal(pid, "KILL"));
    let new_pid = wait_until("a restarted enclave", Duration::from_secs(30), || {
        children(island.proc.pid()).into_iter().find(|p| *p != pid)
    });
    assert_ne!(new_pid, pid);
    let lost: HashSet<String> = [first.key_id.clone()].into();
    let second = net
        .verified_keys(std::slice::from_ref(&id), &lost)
        .remove(0);
    assert_ne!(second.key_id, first.key_id);
    assert!(second.attested_at >= first.attested_at);

    let s = seal(&sk, &[&second], &json!({"prompt": "after the crash"}));
    let job = net.submit(&ck, &s.envelope);
    let job = net.wait_terminal(&job, Duration::from_secs(30));
    assert_eq!(job["state"], "succeeded", "{job}");
    let (_, out) = open_output(&job, &sk, &[&second], &s.request_id);
    assert_eq!(out["text"], "AFTER THE CRASH");

    // The lost key died with the old enclave: the island releases the job
    // and, with no other recipient, it fails telling the client to re-encrypt.
    if net.enclaves().iter().any(|e| e.key_id == first.key_id) {
        let s = seal(&sk, &[&first], &json!({"prompt": "sealed to a dead key"}));
        let job = net.submit_with(&ck, &s.envelope, Some(20));
        let job = net.wait_terminal(&job, Duration::from_secs(40));
        assert_eq!(job["state"], "failed", "{job}");
        assert!(
            job["error"]["message"]
                .as_str()
                .unwrap()
                .contains("re-encrypt"),
            "{job}"
        );
        assert_eq!(net.charges(job["id"].as_str().unwrap()), 0);
    }

    // SIGTERM: the agent drains, stops its enclave and exits cleanly.
    let enclave_now = island.enclave_pid();
    assert!(signal(island.proc.pid(), "TERM"));
    let status = wait_until(
        "the island to exit after SIGTERM",
        Duration::from_secs(30),
        || island.proc.child.try_wait().ok().flatten(),
    );
    assert!(status.success(), "island exit status {status}");
    assert!(
        !Path::new(&format!("/proc/{enclave_now}")).exists()
            || children(island.proc.pid()).is_empty()
    );
    let log = island.proc.log_text();
    assert!(
        log.contains("enclave exited; restarting"),
        "the crash was noticed"
    );
    assert!(log.contains("island agent stopped"));
    let _ = std::fs::remove_dir_all(&net.dir);
}

// ---------------------------------------------------------------- homomorphic (issue 8)

/// An island with the fetched models (`tee` is `sim` or `none`).
fn island_with_models(net: &Net, name: &str, tee: &str) -> Island {
    let dir = net.dir.join(name);
    let mut cmd = Command::new(archipelago_bin());
    cmd.args([
        "island",
        "--coordinator",
        &net.api.base,
        "--enrollment-token",
        &net.token,
        "--name",
        name,
        "--lease-wait-ms",
        "1500",
        "--tee",
        tee,
    ])
    .arg("--enclave-bin")
    .arg(enclave_bin())
    .arg("--data-dir")
    .arg(&dir);
    if tee == "sim" {
        cmd.arg("--sim-root").arg(&net.sim_root);
    }
    let proc = Proc::spawn(cmd, net.dir.join(format!("{name}.log")));
    Island { proc, dir }
}

/// Runs the `archipelago` CLI as the user, with its own keystore and policy.
fn cli(net: &Net, policy: &Path, args: &[&str]) -> Value {
    let home = net.dir.join("user");
    let out = Command::new(archipelago_bin())
        .args(args)
        .env("ARCHIPELAGO_URL", &net.api.base)
        .env("ARCHIPELAGO_API_KEY", &net.api.key)
        .env("ARCHIPELAGO_POLICY", policy)
        .env("ARCHIPELAGO_KEYSTORE", home.join("keys"))
        .env("ARCHIPELAGO_HOME", &home)
        .env("ARCHIPELAGO_CONFIG", home.join("absent.toml"))
        .env_remove("ARCHIPELAGO_KEY_ID")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "archipelago {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "archipelago {args:?} did not print JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `archipelago run --workload classify --he "text"` through an island with
/// no TEE gives the same label as the plain and the confidential (sim TEE)
/// runs of the same text; the island's log and data directory and the
/// coordinator's log and database never contain the text; the job is billed
/// by measured time and counted apart in `/confidential/stats`.
#[test]
fn he_classify_without_tee_matches_plain_and_confidential() {
    let net = Net::start("he");
    let none = island_with_models(&net, "no-tee", "none");
    let none_id = none.id();
    let text = "I started this pill three months ago and my periods became irregular, with spotting and cramps (zq81).";
    // Parentheses keep the needle out of the base64 and hex alphabets, so
    // it cannot turn up by chance in the HE ciphertexts the files hold.
    let secret_word = "(zq81)";
    // The client policy pins the sim enclave measured with the models.
    let models = archipelago_inference::ModelStore::from_env().unwrap();
    models
        .check()
        .expect("this test needs the fetched models: scripts/fetch-models.sh");
    let m = Command::new(enclave_bin())
        .arg("measure")
        .arg("--models-dir")
        .arg(models.dir())
        .output()
        .unwrap();
    assert!(m.status.success(), "archipelago-enclave measure failed");
    let measurement = String::from_utf8(m.stdout).unwrap().trim().to_string();
    let policy = net.dir.join("client-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "accepted_tees = [\"sim\"]\naccept_sim = true\n[sim]\nroots = [\"{}\"]\nmeasurements = [\"{measurement}\"]\n",
            net.sim_root_b64
        ),
    )
    .unwrap();

    // 1. Homomorphic, while the TEE-less island is the only island.
    let he = cli(
        &net,
        &policy,
        &["run", "--workload", "classify", "--he", "--json", text],
    );
    assert_eq!(he["state"], "succeeded", "{he}");
    assert_eq!(he["mode"], "he", "{he}");
    assert_eq!(
        he["island_id"],
        none_id.as_str(),
        "ran on the island without a TEE"
    );
    let he_label = he["output"]["label"].as_str().unwrap().to_string();
    assert_eq!(he["output"]["labels"][0]["label"], he_label.as_str());
    let he_job = net.job(he["job_id"].as_str().unwrap());
    assert!(he_job["execution_ms"].as_i64().unwrap() >= 1, "{he_job}");
    let w = net.api.get("/workloads/3");
    let rate = w["price_per_second"].as_i64().unwrap();
    let ms = he_job["execution_ms"].as_i64().unwrap();
    let cost = he_job["cost"].as_i64().unwrap();
    assert_eq!(
        cost,
        (ms * rate + 999) / 1000,
        "billed by measured time at the workload rate: {he_job}"
    );
    assert!(cost >= 1);
    let stats = net.api.get("/confidential/stats");
    assert_eq!(stats["he_jobs"]["succeeded"], 1, "{stats}");
    assert!(stats["he_capable_hosts"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats.get("tee_types").is_some() && stats.get("attested_hosts").is_some());

    // Nothing that saw the HE job holds the text: island log and data dir,
    // coordinator log and database (grepped while running; WAL included).
    let mut files = vec![none.proc.log.clone(), net.coordinator.log.clone()];
    files.extend(files_under(&none.dir));
    files.extend(files_under(&net.dir.join("coordinator")));
    assert!(files.iter().any(|f| f.to_string_lossy().ends_with(".db")));
    for needle in [text, secret_word, "periods became irregular"] {
        let hits = grep_files(&files, needle);
        assert!(hits.is_empty(), "plaintext {needle:?} found in {hits:?}");
    }

    // 2. Plain: the same text in the clear (now the database holds it).
    let plain = cli(
        &net,
        &policy,
        &["run", "--workload", "classify", "--json", text],
    );
    assert_eq!(plain["state"], "succeeded", "{plain}");
    assert_eq!(
        plain["output"]["labels"][0]["label"],
        he_label.as_str(),
        "{plain}"
    );
    let mut db = files_under(&net.dir.join("coordinator"));
    db.retain(|f| f.to_string_lossy().contains(".db"));
    assert!(
        !grep_files(&db, secret_word).is_empty(),
        "the grep sees plain-job text, so it would have seen a leak"
    );

    // 3. Confidential, in a sim enclave with the same head.
    let tee = island_with_models(&net, "sim-tee", "sim");
    let tee_id = tee.id();
    wait_until("the sim island to attest", Duration::from_secs(180), || {
        let s = net.api.get("/confidential/stats");
        (s["attested_hosts"].as_u64() >= Some(1)).then_some(())
    });
    cli(&net, &policy, &["keys", "create", "--json"]);
    let conf = cli(
        &net,
        &policy,
        &[
            "run",
            "--workload",
            "classify",
            "--confidential",
            "--json",
            text,
        ],
    );
    assert_eq!(conf["state"], "succeeded", "{conf}");
    assert_eq!(
        conf["output"]["labels"][0]["label"],
        he_label.as_str(),
        "{conf}"
    );
    let conf_job = net.job(conf["job_id"].as_str().unwrap());
    assert_eq!(conf_job["island_id"], tee_id.as_str());
    let stats = net.api.get("/confidential/stats");
    assert_eq!(stats["tee_jobs"]["succeeded"], 1, "{stats}");
    assert_eq!(stats["he_jobs"]["succeeded"], 1, "{stats}");

    // A bad HE input (a ciphertext for another key) is refused at
    // submission with a clear error, and the island is still alive.
    let (status, body) = net.api.call(
        reqwest::Method::POST,
        "/jobs",
        Some(&json!({
            "workload_id": 3, "confidential": true, "encryption_key_id": he_job["encryption_key_id"],
            "input": {"encrypted": true, "key_id": he_job["encryption_key_id"], "ciphertext": "QVJIRQEDAQA"},
        })),
    );
    assert_eq!(status, 422, "{body}");
    drop(tee);
    let mut none = none;
    assert!(none.proc.alive(), "the TEE-less island is still running");
    drop(none);
    let Net {
        coordinator, dir, ..
    } = net;
    drop(coordinator);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 7 streaming through real processes: the island relays each sealed
/// response frame to the coordinator as the enclave produces it, the SSE
/// stream delivers them, and the SDK opens and authenticates the chunks
/// (several, before the job's final event) with its own verified policy.
#[test]
fn confidential_stream_is_relayed_chunk_by_chunk_and_opened_by_the_sdk() {
    use archipelago_client::{ApiClient, Keystore, Session, StreamEvent};
    let net = Net::start("stream");
    let island = net.island("a", "sim", &[]);
    let id = island.id();
    net.verified_keys(std::slice::from_ref(&id), &HashSet::new());
    let session = Session::new(
        ApiClient::new(&net.api.base, Some(net.api.key.clone())).unwrap(),
        Keystore::open(net.dir.join("client-keys")).unwrap(),
        net.client_policy(),
    );
    net.api.rt.block_on(async {
        let meta = session.create_key(Some("stream")).await.unwrap();
        let key = session.load_key(meta.key_id.as_str()).unwrap();
        let sealed = session
            .seal(Some(ECHO), br#"{"prompt":"one two three four"}"#, &key)
            .await
            .unwrap();
        let job = session.submit(&sealed).await.unwrap();
        let mut record = sealed.record();
        record.job_id = Some(job.id.clone());
        let mut log: Vec<String> = Vec::new();
        let (job, complete) = session
            .follow(
                &job.id,
                Duration::from_secs(60),
                Some((&record, &key)),
                &mut |ev| match ev {
                    StreamEvent::Data(d) => {
                        log.push(format!("data:{}", String::from_utf8_lossy(&d)))
                    }
                    StreamEvent::State(s) => log.push(format!("state:{s}")),
                },
            )
            .await
            .unwrap();
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert!(
            complete,
            "the relayed stream is the whole sealed response: {log:?}"
        );
        let data: Vec<&String> = log.iter().filter(|l| l.starts_with("data:")).collect();
        assert!(data.len() >= 2, "at least two chunks streamed: {log:?}");
        let deltas: String = data
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l["data:".len()..].trim()).ok())
            .filter_map(|v| v["delta"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(deltas, "ONE TWO THREE FOUR", "{log:?}");
        let last_data = log.iter().rposition(|l| l.starts_with("data:")).unwrap();
        let done = log.iter().position(|l| l == "state:succeeded").unwrap();
        assert!(
            last_data < done,
            "chunks arrive before the final event: {log:?}"
        );
        let out = session.open_job(&job, &record, &key).unwrap();
        assert_eq!(out.json().unwrap()["text"], "ONE TWO THREE FOUR");
    });
    let log = island.proc.log_text();
    assert!(!log.contains("one two three four") && !log.contains("ONE TWO"));
    let _ = std::fs::remove_dir_all(&net.dir);
}

/// Draining releases a job the island cannot finish at once: with 30 s
/// leases, the other recipient gets it within seconds of SIGTERM (not after
/// the lease lapses), and it is charged exactly once.
#[test]
fn drain_releases_unfinished_jobs_promptly() {
    let net = Net::start_with("drain", 30);
    let a = net.island_with("a", "sim", &[], 1);
    let b = net.island("b", "sim", &[]);
    let ids = [a.id(), b.id()];
    let keys = net.verified_keys(&ids, &HashSet::new());
    let (sk, ck) = net.register_client_key();
    // Only a may lease now, and its enclave cannot finish.
    let a_enclave = a.enclave_pid();
    assert!(signal(b.proc.pid(), "STOP"));
    assert!(signal(a_enclave, "STOP"));
    // b may have been stopped inside a long poll: the coordinator would hand
    // the job to that waiting request (and b would hold it for the whole
    // 30 s lease). Let it time out first (island wait 1.5 s, server max 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    let chosen = [&keys[0], &keys[1]];
    let s = seal(&sk, &chosen, &json!({"prompt": "hand me over"}));
    let id = net.submit(&ck, &s.envelope);
    wait_until("island a to lease the job", Duration::from_secs(20), || {
        (net.job(&id)["island_id"] == ids[0].as_str()).then_some(())
    });
    assert!(signal(b.proc.pid(), "CONT"));
    let t0 = Instant::now();
    assert!(signal(a.proc.pid(), "TERM"));
    let job = net.wait_terminal(&id, Duration::from_secs(25));
    let took = t0.elapsed();
    assert!(signal(a_enclave, "CONT"));
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["island_id"], ids[1].as_str());
    assert!(
        took < Duration::from_secs(20),
        "released promptly, not after the 30 s lease: {took:?}"
    );
    let (writer, out) = open_output(&job, &sk, &chosen, &s.request_id);
    assert_eq!(writer, keys[1].key_id);
    assert_eq!(out["text"], "HAND ME OVER");
    assert_eq!(net.charges(&id), 1);
    assert!(
        a.proc
            .log_text()
            .contains("job released to the coordinator"),
        "the agent released the job"
    );
    let _ = std::fs::remove_dir_all(&net.dir);
}
