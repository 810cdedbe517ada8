//! End to end over the real channel: spawn the built `archipelago-enclave`
//! with the sim TEE and drive it as the island would, with a client built
//! only from the proto and attest crates (it verifies the evidence itself,
//! seals to the attested key, opens the sealed response).

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use archipelago_attest::{check_key_binding, verify_and_appraise, Evidence, Policy, SimRoot};
use archipelago_proto::channel::{
    read_frame, write_frame, Blob, EnclaveFrame, ErrorCode, FromEnclave, IslandFrame, JobRequest,
    KeyInfo, ToEnclave, PROTOCOL_VERSION,
};
use archipelago_proto::envelope::{
    open_response, seal_request, ChunkKind, RequestBody, ResponseOpener,
};
use archipelago_proto::{PublicKey, SecretKey};

const BIN: &str = env!("CARGO_BIN_EXE_archipelago-enclave");
const SECRET: &str = "hello secret patient forty two";
const TIMEOUT: Duration = Duration::from_secs(60);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("enclave-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The island side of the channel, as a test harness.
struct Island {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: Receiver<Option<EnclaveFrame>>,
    next_req: u64,
    unsolicited: Vec<FromEnclave>,
    log: PathBuf,
}

impl Island {
    fn spawn(dir: &Path, root: &Path, extra: &[&str]) -> Island {
        let log = dir.join("enclave.log");
        let mut child = Command::new(BIN)
            .args(["run", "--tee", "sim", "--sim-root"])
            .arg(root)
            .args(extra)
            .env_remove("ARCHIPELAGO_MODELS_DIR")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                match read_frame::<EnclaveFrame, _>(&mut r) {
                    Ok(Some(f)) => {
                        if tx.send(Some(f)).is_err() {
                            return;
                        }
                    }
                    _ => {
                        let _ = tx.send(None);
                        return;
                    }
                }
            }
        });
        Island {
            stdin: child.stdin.take(),
            child,
            frames: rx,
            next_req: 1,
            unsolicited: Vec::new(),
            log,
        }
    }

    fn send(&mut self, msg: ToEnclave) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        write_frame(self.stdin.as_mut().unwrap(), &IslandFrame { req, msg }).unwrap();
        req
    }

    fn next(&mut self) -> Option<EnclaveFrame> {
        match self.frames.recv_timeout(TIMEOUT) {
            Ok(f) => f,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no frame from the enclave within {TIMEOUT:?}")
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The single reply to a control request.
    fn call(&mut self, msg: ToEnclave) -> FromEnclave {
        let req = self.send(msg);
        loop {
            let f = self.next().expect("enclave closed the channel");
            if f.req == 0 {
                self.unsolicited.push(f.msg);
                continue;
            }
            assert_eq!(f.req, req);
            return f.msg;
        }
    }

    /// Every frame of a job, up to and including JobDone/JobFailed.
    fn job(&mut self, job: JobRequest) -> Vec<FromEnclave> {
        let req = self.send(ToEnclave::RunJob(job));
        let mut out = Vec::new();
        loop {
            let f = self.next().expect("enclave closed the channel");
            if f.req == 0 {
                self.unsolicited.push(f.msg);
                continue;
            }
            assert_eq!(f.req, req);
            let end = matches!(
                f.msg,
                FromEnclave::JobDone { .. } | FromEnclave::JobFailed { .. }
            );
            out.push(f.msg);
            if end {
                return out;
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    key: SecretKey,
}

impl Client {
    fn job(&self, job_id: &str, workload_id: u64, envelope: Vec<u8>, stream: bool) -> JobRequest {
        JobRequest {
            job_id: job_id.into(),
            workload_id,
            client_key_id: self.key.client_id(),
            envelope: Blob(envelope),
            stream,
        }
    }

    fn seal(&self, body: &RequestBody, to: &[PublicKey]) -> Vec<u8> {
        seal_request(body, to).unwrap()
    }

    fn echo_body(&self, prompt: &str) -> RequestBody {
        let input = serde_json::to_vec(&serde_json::json!({ "prompt": prompt })).unwrap();
        RequestBody::new(5, input, self.key.public())
    }
}

/// Concatenated response bytes and the final message of a job.
fn split(frames: Vec<FromEnclave>) -> (Vec<u8>, Vec<Vec<u8>>, FromEnclave) {
    let mut whole = Vec::new();
    let mut chunks = Vec::new();
    let mut last = None;
    for f in frames {
        match f {
            FromEnclave::ResponseHeader { bytes, .. } => {
                assert!(whole.is_empty(), "header must come first");
                whole.extend_from_slice(&bytes);
            }
            FromEnclave::ResponseChunk { bytes, .. } => {
                whole.extend_from_slice(&bytes);
                chunks.push(bytes.0);
            }
            other => last = Some(other),
        }
    }
    (whole, chunks, last.unwrap())
}

fn sim_root(dir: &Path) -> (PathBuf, SimRoot) {
    let root = SimRoot::generate();
    let path = dir.join("sim-root");
    root.save(&path).unwrap();
    (path, root)
}

/// Verifies the evidence for every key as a client would; returns the keys.
fn attest(island: &mut Island, policy: &Policy, measurement: &str) -> Vec<KeyInfo> {
    let nonce: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(7) ^ (now() as u8))
        .collect();
    let FromEnclave::Evidence {
        nonce: echoed,
        keys,
    } = island.call(ToEnclave::Attest {
        nonce: Blob(nonce.clone()),
    })
    else {
        panic!("expected Evidence")
    };
    assert_eq!(echoed.0, nonce);
    assert!(!keys.is_empty());
    for k in &keys {
        let ev = Evidence::from_json(&k.evidence).unwrap();
        let result = verify_and_appraise(&ev, policy, now()).unwrap();
        check_key_binding(&result, &k.key.public_key, k.key.expires_at, &nonce).unwrap();
        // A binding to another nonce does not verify.
        assert!(check_key_binding(&result, &k.key.public_key, k.key.expires_at, b"other").is_err());
        assert_eq!(result.measurements["measurement"], measurement);
    }
    keys.into_iter().map(|k| k.key).collect()
}

#[test]
fn confidential_job_round_trip_over_the_channel() {
    let dir = temp_dir("round-trip");
    let (root_path, root) = sim_root(&dir);
    let mut island = Island::spawn(&dir, &root_path, &["--tick-ms", "100"]);
    let policy = Policy::dev_sim(root.public_key());

    let FromEnclave::Ready {
        version,
        tee,
        measurement,
        keys,
        workloads,
    } = island.call(ToEnclave::Hello {
        version: PROTOCOL_VERSION,
    })
    else {
        panic!("expected Ready")
    };
    assert_eq!(version, PROTOCOL_VERSION);
    assert_eq!(tee, "sim");
    assert_eq!(measurement.len(), 96);
    assert_eq!(keys.len(), 1);
    assert!(workloads.contains(&5));
    // `measure` prints the same measurement a policy would pin.
    let printed = Command::new(BIN)
        .arg("measure")
        .env_remove("ARCHIPELAGO_MODELS_DIR")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8(printed.stdout).unwrap().trim(),
        measurement
    );

    let keys = attest(&mut island, &policy, &measurement);
    let ek = PublicKey(keys[0].public_key);
    let client = Client {
        key: SecretKey::generate(),
    };

    // Whole response.
    let body = client.echo_body(SECRET);
    let envelope = client.seal(&body, &[ek]);
    let (whole, _, last) = split(island.job(client.job("job-1", 5, envelope.clone(), false)));
    assert!(matches!(last, FromEnclave::JobDone { ref job_id, .. } if job_id == "job-1"));
    let (kind, out) = open_response(&whole, &client.key, &ek, &body.request_id).unwrap();
    assert_eq!(kind, ChunkKind::Data);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["text"], SECRET.to_uppercase());

    // The same envelope again: refused as a replay, nothing sealed.
    let frames = island.job(client.job("job-1-again", 5, envelope, false));
    assert_eq!(
        frames,
        vec![FromEnclave::JobFailed {
            job_id: "job-1-again".into(),
            code: ErrorCode::Replay,
            sealed_error: false
        }]
    );

    // Streamed: one chunk per word, then the whole output, opened in order.
    let body = client.echo_body("one two three");
    let envelope = client.seal(&body, &[ek]);
    let (whole, chunks, last) = split(island.job(client.job("job-2", 5, envelope, true)));
    assert!(matches!(last, FromEnclave::JobDone { .. }), "{last:?}");
    assert_eq!(chunks.len(), 4);
    let mut opener = ResponseOpener::new(&whole, &client.key, &ek, &body.request_id).unwrap();
    let deltas: Vec<String> = chunks[..3]
        .iter()
        .map(|c| {
            let ch = opener.open_chunk(c).unwrap();
            assert!(!ch.last);
            let v: serde_json::Value = serde_json::from_slice(ch.data()).unwrap();
            v["delta"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(deltas, ["ONE", "TWO", "THREE"]);
    let fin = opener.open_chunk(&chunks[3]).unwrap();
    assert!(fin.last);
    opener.finish().unwrap();

    // Envelope swapped onto another job's workload or client.
    let body = client.echo_body(SECRET);
    let envelope = client.seal(&body, &[ek]);
    let frames = island.job(client.job("job-3", 1, envelope.clone(), false));
    assert!(matches!(
        frames[..],
        [FromEnclave::JobFailed {
            code: ErrorCode::WorkloadMismatch,
            sealed_error: false,
            ..
        }]
    ));
    let mut other = client.job("job-3b", 5, envelope.clone(), false);
    other.client_key_id = SecretKey::generate().client_id();
    assert!(matches!(
        island.job(other)[..],
        [FromEnclave::JobFailed {
            code: ErrorCode::ClientKeyMismatch,
            ..
        }]
    ));
    // Sealed to a key this enclave never held.
    let stranger = SecretKey::generate().public();
    let frames = island.job(client.job("job-4", 5, client.seal(&body, &[stranger]), false));
    assert!(matches!(
        frames[..],
        [FromEnclave::JobFailed {
            code: ErrorCode::NotARecipient,
            ..
        }]
    ));
    // Altered ciphertext.
    let mut bad = envelope;
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        island.job(client.job("job-5", 5, bad, false))[..],
        [FromEnclave::JobFailed {
            code: ErrorCode::BadEnvelope,
            ..
        }]
    ));

    // Stale: the client learns why from a sealed error report.
    let input = serde_json::to_vec(&serde_json::json!({ "prompt": SECRET })).unwrap();
    let stale = RequestBody::with_parts(5, [9; 16], now() - 3600, client.key.public(), input);
    let (whole, _, last) =
        split(island.job(client.job("job-6", 5, client.seal(&stale, &[ek]), false)));
    assert!(matches!(
        last,
        FromEnclave::JobFailed {
            code: ErrorCode::Stale,
            sealed_error: true,
            ..
        }
    ));
    let (kind, report) = open_response(&whole, &client.key, &ek, &stale.request_id).unwrap();
    assert_eq!(kind, ChunkKind::Error);
    let v: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(v["error"]["code"], "stale");

    // Bad input: sealed error report, code in clear, no contents.
    let bad_input = RequestBody::new(
        5,
        format!("{{\"prompt\": 7, \"note\": \"{SECRET}\"}}").into_bytes(),
        client.key.public(),
    );
    let (whole, _, last) =
        split(island.job(client.job("job-7", 5, client.seal(&bad_input, &[ek]), false)));
    assert!(matches!(
        last,
        FromEnclave::JobFailed {
            code: ErrorCode::BadInput,
            sealed_error: true,
            ..
        }
    ));
    let (kind, report) = open_response(&whole, &client.key, &ek, &bad_input.request_id).unwrap();
    assert_eq!(kind, ChunkKind::Error);
    assert!(!String::from_utf8_lossy(&report).contains(SECRET));

    // Unknown workload.
    let unknown = RequestBody::new(77, b"{}".to_vec(), client.key.public());
    let (_, _, last) =
        split(island.job(client.job("job-8", 77, client.seal(&unknown, &[ek]), false)));
    assert!(matches!(
        last,
        FromEnclave::JobFailed {
            code: ErrorCode::UnknownWorkload,
            sealed_error: true,
            ..
        }
    ));

    // Rotation: a new current key; the old one still opens during grace.
    let FromEnclave::Rotated { keys: rotated } = island.call(ToEnclave::Rotate) else {
        panic!("expected Rotated")
    };
    assert_eq!(rotated.len(), 2);
    assert_eq!(rotated[1].key_id, keys[0].key_id);
    let keys = attest(&mut island, &policy, &measurement);
    assert_eq!(keys.len(), 2);
    let body = client.echo_body("old key still works");
    let (whole, _, last) =
        split(island.job(client.job("job-9", 5, client.seal(&body, &[ek]), false)));
    assert!(matches!(last, FromEnclave::JobDone { .. }), "{last:?}");
    open_response(&whole, &client.key, &ek, &body.request_id).unwrap();
    let new_ek = PublicKey(rotated[0].public_key);
    let body = client.echo_body("new key works");
    let (whole, _, _) =
        split(island.job(client.job("job-10", 5, client.seal(&body, &[new_ek]), false)));
    open_response(&whole, &client.key, &new_ek, &body.request_id).unwrap();

    // Unsupported version.
    assert_eq!(
        island.call(ToEnclave::Hello { version: 99 }),
        FromEnclave::Failed {
            code: ErrorCode::Unsupported
        }
    );

    // Shutdown: Bye, clean exit.
    assert_eq!(island.call(ToEnclave::Shutdown), FromEnclave::Bye);
    let status = island.child.wait().unwrap();
    assert!(status.success(), "{status:?}");

    // The enclave log holds ids and sizes, never the plaintext.
    let log = island.log_text();
    assert!(log.contains("job-1"), "log should name jobs: {log}");
    for needle in [SECRET, &SECRET.to_uppercase(), "ONE", "THREE"] {
        assert!(
            !log.contains(needle),
            "enclave log leaks plaintext {needle:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scheduled_rotation_is_announced_and_old_keys_expire() {
    let dir = temp_dir("rotation");
    let (root_path, _) = sim_root(&dir);
    let mut island = Island::spawn(
        &dir,
        &root_path,
        &["--rotate-secs", "1", "--grace-secs", "1", "--tick-ms", "50"],
    );
    let FromEnclave::Ready { keys, .. } = island.call(ToEnclave::Hello {
        version: PROTOCOL_VERSION,
    }) else {
        panic!("expected Ready")
    };
    let first = keys[0].key_id.clone();
    // Unsolicited KeysChanged frames (req 0) until the first key is gone.
    loop {
        let f = island.next().expect("enclave exited");
        assert_eq!(f.req, 0);
        let FromEnclave::KeysChanged { keys } = f.msg else {
            panic!("expected KeysChanged, got {:?}", f.msg)
        };
        assert!(keys.len() <= 2, "old keys must be dropped after grace");
        assert_ne!(keys[0].key_id, first);
        if keys.iter().all(|k| k.key_id != first) {
            break;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_malformed_frame_is_refused_and_the_enclave_exits() {
    let dir = temp_dir("bad-frame");
    let (root_path, _) = sim_root(&dir);
    let mut island = Island::spawn(&dir, &root_path, &[]);
    // A length prefix over the limit: refused before reading the body.
    let stdin = island.stdin.as_mut().unwrap();
    stdin.write_all(&u32::MAX.to_be_bytes()).unwrap();
    stdin.flush().unwrap();
    let f = island.next().expect("expected a Failed frame");
    assert_eq!(
        f,
        EnclaveFrame {
            req: 0,
            msg: FromEnclave::Failed {
                code: ErrorCode::BadFrame
            }
        }
    );
    assert!(
        island.next().is_none(),
        "the enclave must close the channel"
    );
    let status = island.child.wait().unwrap();
    assert!(!status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_without_a_sim_root_fails_with_guidance() {
    let out = Command::new(BIN)
        .args(["run", "--tee", "sim"])
        .env_remove("ARCHIPELAGO_SIM_ROOT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sim-root"));
    assert!(
        out.stdout.is_empty(),
        "stdout is reserved for channel frames"
    );
}
