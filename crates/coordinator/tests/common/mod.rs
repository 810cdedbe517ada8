//! Test harness: a real coordinator on 127.0.0.1:0 over SQLite (a file in
//! a fresh temporary directory, as `--data-dir` makes it, so the store's
//! writer thread is what runs) or PostgreSQL (a fresh schema per test),
//! driven over HTTP.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use archipelago_attest::{key_binding, Policy, SimEvidenceSource, SimRoot};
use archipelago_coordinator::{Config, Coordinator, DbConfig, Store};
use archipelago_proto::envelope::{seal_request, RequestBody};
use archipelago_proto::{b64, PublicKey, SecretKey};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn pg_url() -> String {
    std::env::var("ARCHIPELAGO_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG.to_string())
}

/// A fresh SQLite file store in a new temporary directory, which the
/// caller removes.
pub async fn fresh_sqlite_file() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "archipelago-test-{}-{}",
        std::process::id(),
        hex_rand()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    (
        Store::connect(&DbConfig::sqlite_in(&dir)).await.unwrap(),
        dir,
    )
}

/// Opens a fresh, isolated store. A SQLite one is in memory; see
/// [`fresh_sqlite_file`] for the file a deployment uses.
pub async fn fresh_store(backend: Backend) -> (Store, Option<String>) {
    match backend {
        Backend::Sqlite => (
            Store::connect(&DbConfig::sqlite_memory()).await.unwrap(),
            None,
        ),
        Backend::Postgres => {
            let schema = format!("t_{}", hex_rand());
            let cfg = DbConfig {
                url: pg_url(),
                schema: Some(schema.clone()),
                max_connections: 8,
                synchronous_commit: false,
            };
            let store = Store::connect(&cfg).await.unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {} is not usable ({e}). Start one (scripts/ensure-postgres.sh) or set ARCHIPELAGO_TEST_DATABASE_URL.",
                    pg_url()
                )
            });
            (store, Some(schema))
        }
    }
}

fn hex_rand() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub admin_key: String,
    pub admin_account: String,
    pub enrollment: String,
    pub store: Store,
    pub sim_seed: [u8; 32],
    schema: Option<String>,
    sqlite_dir: Option<std::path::PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Harness::start_with(backend, true, |_| {}).await
    }

    /// `accept_sim`: policy accepting the harness's sim root, or the
    /// production policy (sim refused).
    pub async fn start_with(
        backend: Backend,
        accept_sim: bool,
        tweak: impl FnOnce(&mut Config),
    ) -> Harness {
        let (store, schema, sqlite_dir) = match backend {
            Backend::Sqlite => {
                let (store, dir) = fresh_sqlite_file().await;
                (store, None, Some(dir))
            }
            Backend::Postgres => {
                let (store, schema) = fresh_store(backend).await;
                (store, schema, None)
            }
        };
        store.ensure_default_workloads().await.unwrap();
        let mut config = Config {
            rate_limit_per_sec: 1e6,
            rate_limit_burst: 1e6,
            reap_interval_ms: 50,
            ..Config::default()
        };
        tweak(&mut config);
        let sim_seed: [u8; 32] = rand::random();
        let sim_root = SimRoot::from_seed(&sim_seed);
        let policy = if accept_sim {
            Policy::dev_sim(sim_root.public_key())
        } else {
            Policy::production()
        };
        let admin_account = store
            .create_account("admin", true, 1_000_000)
            .await
            .unwrap();
        let (_, admin_key) = store
            .create_api_key(
                &admin_account,
                "admin",
                &["read".into(), "write".into(), "admin".into()],
            )
            .await
            .unwrap();
        let enrollment = store
            .create_enrollment_token(&admin_account, None)
            .await
            .unwrap();
        let coordinator = Coordinator::with_store(store.clone(), config, Some(policy));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            coordinator
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Harness {
            base,
            // No idle connection reuse: tests send bodies the server refuses
            // before reading them (413, 429) and then closes the connection;
            // a pooled connection reused in that window fails the *next*
            // request with IncompleteMessage (seen once in CI).
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            admin_key,
            admin_account,
            enrollment,
            store,
            sim_seed,
            schema,
            sqlite_dir,
            stop: Some(tx),
            server: Some(server),
        }
    }

    /// Starts a second coordinator replica on the same PostgreSQL schema;
    /// returns its base URL and a stop handle.
    pub async fn replica(&self) -> (String, tokio::sync::oneshot::Sender<()>) {
        let schema = self.schema.clone().expect("replicas need PostgreSQL");
        let store = Store::connect(&DbConfig {
            url: pg_url(),
            schema: Some(schema),
            max_connections: 8,
            synchronous_commit: false,
        })
        .await
        .unwrap();
        let config = Config {
            rate_limit_per_sec: 1e6,
            rate_limit_burst: 1e6,
            reap_interval_ms: 50,
            ..Config::default()
        };
        let policy = Policy::dev_sim(SimRoot::from_seed(&self.sim_seed).public_key());
        let coordinator = Coordinator::with_store(store, config, Some(policy));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            coordinator
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        (base, tx)
    }

    /// Stops the server and drops the test schema.
    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s).await;
        }
        if let Some(schema) = self.schema.take() {
            // A plain connection: opening a Store on the default schema would
            // migrate `public`, and a database another build migrated there
            // would then fail every test.
            let _ = Store::drop_schema(&pg_url(), &schema).await;
        }
        if let Some(dir) = self.sqlite_dir.take() {
            self.store.close().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        self.call_h(method, path, token, body, &[]).await
    }

    pub async fn call_h(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A new user account with `credits`; returns (account id, API key).
    pub async fn user(&self, credits: i64) -> (String, String) {
        let r = self
            .post(
                "/api/v1/admin/accounts",
                &self.admin_key.clone(),
                json!({"name": "user", "credits": credits}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (
            r.body["account_id"].as_str().unwrap().to_string(),
            r.body["api_key"].as_str().unwrap().to_string(),
        )
    }

    /// Enrolls an island; returns (island id, island token).
    pub async fn island(&self, caps: Value) -> (String, String) {
        let mut body = json!({"enrollment_token": self.enrollment, "name": "island"});
        for (k, v) in caps.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .call(Method::POST, "/api/v1/island/enroll", None, Some(body))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.body["island_id"].as_str().unwrap().to_string();
        let token = r.body["island_token"].as_str().unwrap().to_string();
        let hb = self
            .post(
                "/api/v1/island/heartbeat",
                &token,
                heartbeat_body(&caps, &[]),
            )
            .await;
        assert_eq!(hb.status, 200, "{:?}", hb.body);
        (id, token)
    }

    /// Runs a sim attestation round for `ek`; returns the response.
    pub async fn attest_with(&self, token: &str, ek: &PublicKey, seed: &[u8; 32]) -> Resp {
        let ch = self
            .post("/api/v1/island/attest/challenge", token, json!({}))
            .await;
        assert_eq!(ch.status, 200, "{:?}", ch.body);
        let nonce = b64::decode_any(ch.body["nonce"].as_str().unwrap(), 100).unwrap();
        let expires = now_secs() + 3600;
        let binding = key_binding(ek.as_bytes(), expires, &nonce);
        let evidence = SimEvidenceSource::new(SimRoot::from_seed(seed), [7u8; 48])
            .collect_at(&binding, now_secs());
        let evidence: Value = serde_json::from_str(&evidence.to_json()).unwrap();
        self.post(
            "/api/v1/island/attest",
            token,
            json!({"nonce": b64::encode_std(&nonce), "enclave_public_key": ek.to_base64(),
                   "key_expires_at": expires, "evidence": evidence}),
        )
        .await
    }

    /// Attests a fresh enclave key with the harness's sim root.
    pub async fn attest(&self, token: &str) -> (SecretKey, String) {
        let ek = SecretKey::generate();
        let r = self.attest_with(token, &ek.public(), &self.sim_seed).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let id = r.body["enclave_key_id"].as_str().unwrap().to_string();
        (ek, id)
    }

    /// Registers a fresh client key for `api_key`; returns (secret, key id).
    pub async fn client_key(&self, api_key: &str) -> (SecretKey, String) {
        let ck = SecretKey::generate();
        let r = self
            .post(
                "/api/v1/confidential/keys",
                api_key,
                json!({"public_key": ck.public().to_base64()}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (ck, r.body["key_id"].as_str().unwrap().to_string())
    }

    /// Submits a TEE job sealed to `recipients`.
    pub async fn submit_sealed(
        &self,
        api_key: &str,
        ck: &SecretKey,
        key_id: &str,
        workload: u64,
        recipients: &[PublicKey],
        extra: Value,
    ) -> Resp {
        let body = RequestBody::new(
            workload,
            b"classify this secret record".to_vec(),
            ck.public(),
        );
        let env = seal_request(&body, recipients).unwrap();
        let mut req = json!({
            "workload_id": workload, "confidential": true, "encryption_key_id": key_id,
            "input": {"encrypted": true, "key_id": key_id, "ciphertext": b64::encode_url(&env)}
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        self.post("/api/v1/jobs", api_key, req).await
    }

    pub async fn lease(&self, token: &str, wait_ms: u64) -> Resp {
        self.post("/api/v1/island/lease", token, json!({"wait_ms": wait_ms}))
            .await
    }

    /// Follows the job's SSE stream on a task of its own until its text
    /// contains `until` (or 10 s pass without a byte); returns the text.
    pub fn follow(
        &self,
        api_key: &str,
        id: &str,
        until: &'static str,
    ) -> tokio::task::JoinHandle<String> {
        let url = format!("{}/api/v1/jobs/{id}/stream", self.base);
        let (http, key) = (self.http.clone(), api_key.to_string());
        tokio::spawn(async move {
            let mut r = http.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            let mut text = String::new();
            while let Ok(Some(c)) =
                tokio::time::timeout(std::time::Duration::from_secs(10), r.chunk())
                    .await
                    .unwrap()
            {
                text.push_str(&String::from_utf8_lossy(&c));
                if text.contains(until) {
                    break;
                }
            }
            text
        })
    }

    pub async fn job(&self, api_key: &str, id: &str) -> Value {
        let r = self.get(&format!("/api/v1/jobs/{id}"), api_key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    /// Polls until the job reaches `state` (at most ~5 s).
    pub async fn wait_state(&self, api_key: &str, id: &str, state: &str) -> Value {
        for _ in 0..100 {
            let j = self.job(api_key, id).await;
            if j["state"] == state {
                return j;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "job {id} never reached {state}: {:?}",
            self.job(api_key, id).await
        );
    }
}

pub fn heartbeat_body(caps: &Value, active: &[&str]) -> Value {
    let mut hb = json!({"load": 0.1, "active_jobs": active});
    for (k, v) in caps.as_object().unwrap() {
        hb[k] = v.clone();
    }
    hb
}

pub fn plain_caps() -> Value {
    json!({"runtimes": ["echo", "candle"], "memory_mb": 4096, "capacity": 4})
}

pub fn sim_caps() -> Value {
    json!({"runtimes": ["echo", "candle"], "memory_mb": 4096, "capacity": 4, "tee_type": "sim"})
}

pub fn he_caps() -> Value {
    json!({"runtimes": ["echo", "candle", "he"], "memory_mb": 4096, "capacity": 4, "he_capable": true})
}

/// Runs the test body against SQLite and PostgreSQL.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(Backend::Postgres).await
            }
        }
    };
}
