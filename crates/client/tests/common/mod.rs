//! A small real network for the SDK and gateway tests: an in-process
//! coordinator (SQLite in a temp dir, dev sim policy) and islands whose
//! "enclave" is this test process holding real X25519 enclave keys, real
//! sim evidence bound to them, and the real envelope code. The islands run
//! the `echo` workload (uppercases `prompt`, streams one `{"delta"}` line
//! per word like the real enclave) through the coordinator's island API.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use archipelago_attest::{key_binding, SimEvidenceSource, SimRoot};
use archipelago_coordinator::{Config, Coordinator};
use archipelago_proto::api::{EncryptedPayload, JobError};
use archipelago_proto::envelope::{open_request, ChunkKind, Expectations, ResponseSealer};
use archipelago_proto::island::*;
use archipelago_proto::{b64, KeyId, SecretKey};
use serde_json::json;

pub struct Net {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub api_key: String,
    pub root_seed: [u8; 32],
    pub enrollment_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Net {
    pub fn root(&self) -> SimRoot {
        SimRoot::from_seed(&self.root_seed)
    }

    /// A client policy file accepting this network's sim root.
    pub fn policy_file(&self) -> std::path::PathBuf {
        let p = self.dir.path().join("client-policy.toml");
        std::fs::write(
            &p,
            archipelago_client::config::dev_sim_policy_toml(&self.root().public_key()),
        )
        .unwrap();
        p
    }
}

pub async fn start() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let root = SimRoot::from_seed(&seed);
    let config = Config {
        data_dir: Some(dir.path().join("coordinator")),
        dev_sim_root: Some(hex::encode(root.public_key())),
        reap_interval_ms: 200,
        ..Config::default()
    };
    let init = archipelago_coordinator::init(&config).await.unwrap();
    let coord = Coordinator::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = coord
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    Net {
        dir,
        url,
        api_key: init.api_key,
        root_seed: seed,
        enrollment_token: init.enrollment_token,
        stop: Some(tx),
    }
}

async fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> Result<(u16, Option<T>), String> {
    let mut rb = http.post(url).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let r = rb.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    if status == 204 {
        return Ok((status, None));
    }
    let text = r.text().await.map_err(|e| e.to_string())?;
    if status >= 300 {
        return Err(format!("{status}: {text}"));
    }
    Ok((status, serde_json::from_str(&text).ok()))
}

/// Starts a sim-TEE island whose enclave runs `echo`; `measurement` is what
/// its evidence reports. Returns the enclave key id once attested.
pub async fn sim_island(net: &Net, name: &str, measurement: [u8; 48]) -> KeyId {
    let http = reqwest::Client::new();
    let base = format!("{}/api/v1/island", net.url);
    let caps = json!({"tee_type": "sim", "he_capable": false, "runtimes": ["echo"], "memory_mb": 1024, "capacity": 2});
    let mut enroll = caps.clone();
    enroll["enrollment_token"] = json!(net.enrollment_token);
    enroll["name"] = json!(name);
    let (_, e): (_, Option<EnrollResponse>) = post(&http, &format!("{base}/enroll"), None, enroll)
        .await
        .unwrap();
    let e = e.unwrap();
    let token = e.island_token.clone();
    let mut hb = caps.clone();
    hb["load"] = json!(0.0);
    post::<serde_json::Value>(
        &http,
        &format!("{base}/heartbeat"),
        Some(&token),
        hb.clone(),
    )
    .await
    .unwrap();
    let ek = Arc::new(SecretKey::generate());
    let (_, ch): (_, Option<AttestChallenge>) = post(
        &http,
        &format!("{base}/attest/challenge"),
        Some(&token),
        json!({}),
    )
    .await
    .unwrap();
    let ch = ch.unwrap();
    let nonce = b64::decode_any(&ch.nonce, 128).unwrap();
    let expires = archipelago_client::verify::now_secs() + 3600;
    let src = SimEvidenceSource::new(net.root(), measurement);
    let ev = archipelago_attest::EvidenceSource::collect(
        &src,
        &key_binding(&ek.public().0, expires, &nonce),
    )
    .unwrap();
    post::<AttestResponse>(
        &http,
        &format!("{base}/attest"),
        Some(&token),
        json!({"nonce": ch.nonce, "enclave_public_key": ek.public().to_base64(), "key_expires_at": expires, "evidence": ev}),
    )
    .await
    .unwrap();
    // Heartbeats.
    {
        let (http, base, token, hb) = (http.clone(), base.clone(), token.clone(), hb.clone());
        tokio::spawn(async move {
            loop {
                if post::<serde_json::Value>(
                    &http,
                    &format!("{base}/heartbeat"),
                    Some(&token),
                    hb.clone(),
                )
                .await
                .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
    // The lease loop with the "enclave".
    let id = ek.enclave_id();
    tokio::spawn(async move {
        loop {
            let leased = post::<LeasedJob>(
                &http,
                &format!("{base}/lease"),
                Some(&token),
                json!({"wait_ms": 2000}),
            )
            .await;
            let job = match leased {
                Ok((_, Some(j))) => j,
                Ok(_) => continue,
                Err(_) => return,
            };
            let result = run_echo(&ek, &job, &http, &base, &token).await;
            let body = match result {
                Ok(resp) => {
                    let output = EncryptedPayload {
                        encrypted: true,
                        key_id: job.encryption_key_id.clone().unwrap_or_default(),
                        ciphertext: b64::encode_url(&resp),
                        enclave_key_id: Some(ek.enclave_id().to_string()),
                    };
                    json!({"lease_id": job.lease_id, "outcome": "succeeded", "execution_ms": 1, "output": output})
                }
                Err(code) => {
                    let error = JobError {
                        code: code.into(),
                        message: "the enclave refused the envelope".into(),
                    };
                    json!({"lease_id": job.lease_id, "outcome": "failed", "execution_ms": 1, "error": error})
                }
            };
            let _ = post::<serde_json::Value>(
                &http,
                &format!("{base}/jobs/{}/result", job.job_id),
                Some(&token),
                body,
            )
            .await;
        }
    });
    id
}

/// Opens the envelope, uppercases `prompt`, streams one sealed chunk per
/// word to the coordinator and returns the whole sealed response.
async fn run_echo(
    ek: &SecretKey,
    job: &LeasedJob,
    http: &reqwest::Client,
    base: &str,
    token: &str,
) -> Result<Vec<u8>, &'static str> {
    let p: EncryptedPayload = serde_json::from_value(job.input.clone()).map_err(|_| "bad_input")?;
    let env = b64::decode_any(&p.ciphertext, 32 << 20).map_err(|_| "bad_input")?;
    let ck =
        KeyId::parse(job.encryption_key_id.as_deref().unwrap_or("")).map_err(|_| "bad_input")?;
    let opened = open_request(
        &env,
        ek,
        &Expectations {
            workload_id: Some(job.workload_id as u64),
            client_key_id: Some(&ck),
        },
    )
    .map_err(|_| "envelope_refused")?;
    let v: serde_json::Value =
        serde_json::from_slice(opened.body.input()).map_err(|_| "bad_input")?;
    let upper = v["prompt"].as_str().unwrap_or("").to_uppercase();
    let (mut sealer, header) =
        ResponseSealer::new(ek, &opened.body.response_key, opened.body.request_id).unwrap();
    let mut whole = header.clone();
    let mut pieces = vec![header];
    for w in upper.split_whitespace() {
        let line = format!("{}\n", json!({"delta": w}));
        pieces.push(
            sealer
                .seal_chunk(line.as_bytes(), ChunkKind::Data, false)
                .unwrap(),
        );
    }
    let out = json!({"text": upper, "chars": upper.chars().count()}).to_string();
    pieces.push(
        sealer
            .seal_chunk(out.as_bytes(), ChunkKind::Data, true)
            .unwrap(),
    );
    for (seq, piece) in pieces.iter().enumerate() {
        if seq > 0 {
            whole.extend_from_slice(piece);
        }
        let _ = post::<serde_json::Value>(
            http,
            &format!("{base}/jobs/{}/chunks", job.job_id),
            Some(token),
            json!({"lease_id": job.lease_id, "seq": seq, "data": b64::encode_url(piece)}),
        )
        .await;
    }
    Ok(whole)
}
