//! End to end through a real coordinator: the product page's four Quick
//! Start requests against the gateway, exactly as written there (plus the
//! `workload_id` we must name, since the page's workload 42 does not exist
//! here), the SDK streaming a confidential job, the OpenAI-compatible chat
//! endpoint, and a policy that refuses every enclave failing fast with a
//! clear error.

mod common;

use std::time::Duration;

use archipelago_client::gateway::{GatewayConfig, GatewayState};
use archipelago_client::records::RequestRecords;
use archipelago_client::{ApiClient, ClientError, Keystore, Session, StreamEvent};
use serde_json::{json, Value};

const ECHO: i64 = 5;

fn session(net: &common::Net, policy: archipelago_attest::Policy, sub: &str) -> Session {
    let d = net.dir.path().join(sub);
    Session::new(
        ApiClient::new(&net.url, Some(net.api_key.clone())).unwrap(),
        Keystore::open(d.join("keys")).unwrap(),
        policy,
    )
    .with_records(RequestRecords::open(d.join("requests")).unwrap())
}

async fn gateway(net: &common::Net) -> String {
    let policy = archipelago_client::config::load_policy(&net.policy_file()).unwrap();
    let s = session(net, policy, "gateway");
    let config = GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        allow_remote: false,
        token: None,
        job_timeout: Duration::from_secs(60),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let st = GatewayState::new(s, config);
    tokio::spawn(archipelago_client::gateway::serve(
        st,
        listener,
        std::future::pending(),
    ));
    url
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn wait_job(http: &reqwest::Client, gw: &str, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (_, job) = call(
            http,
            reqwest::Method::GET,
            format!("{gw}/api/v1/jobs/{id}"),
            key,
            None,
        )
        .await;
        if matches!(
            job["state"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_quick_start_through_the_gateway() {
    let net = common::start().await;
    common::sim_island(&net, "sim-1", [1; 48]).await;
    common::sim_island(&net, "sim-2", [1; 48]).await;
    let gw = gateway(&net).await;
    let http = reqwest::Client::new();
    let k = net.api_key.as_str();
    use reqwest::Method as M;

    // 1. Generate a key.
    let (st, key) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/keys"),
        k,
        None,
    )
    .await;
    assert_eq!(st, 201, "{key}");
    let key_id = key["key_id"].as_str().unwrap().to_string();
    assert!(key_id.starts_with("ck_"));
    assert!(key["public_key"].as_str().unwrap().ends_with('='));

    // 2. Encrypt the input (the page's body: no workload).
    let (st, enc) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/encrypt"),
        k,
        Some(json!({"input": {"prompt": "Classify this patient record..."}, "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 200, "{enc}");
    assert_eq!(enc["encrypted"], true);
    assert_eq!(enc["workload_bound"], false);
    let ct = enc["ciphertext"].as_str().unwrap().to_string();
    assert!(!ct.contains("Classify"));

    // 3. Submit the confidential job (the page's shape).
    let submit = json!({
        "workload_id": ECHO,
        "confidential": true,
        "encryption_key_id": key_id,
        "input": {"encrypted": true, "key_id": key_id, "ciphertext": ct}
    });
    let (st, job) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/jobs"),
        k,
        Some(submit.clone()),
    )
    .await;
    assert_eq!(st, 201, "{job}");
    assert_eq!(job["mode"], "tee");
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["output"]["encrypted"], true);

    // The same unbound ciphertext cannot be used twice.
    let (st, again) = call(&http, M::POST, format!("{gw}/api/v1/jobs"), k, Some(submit)).await;
    assert_eq!(st, 422, "{again}");
    assert_eq!(again["error"]["code"], "unbound_envelope");

    // 4. Decrypt the response.
    let (st, dec) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/decrypt"),
        k,
        Some(json!({"output": job["output"], "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 200, "{dec}");
    assert_eq!(dec["output"]["text"], "CLASSIFY THIS PATIENT RECORD...");
    assert!(dec["enclave_key_id"].as_str().unwrap().starts_with("ek_"));

    // With workload_id the envelope is bound and goes to the coordinator as is.
    let (_, enc) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/encrypt"),
        k,
        Some(json!({"input": {"prompt": "bound"}, "key_id": key_id, "workload_id": ECHO})),
    )
    .await;
    assert_eq!(enc["workload_bound"], true);
    assert_eq!(enc["recipients"].as_array().unwrap().len(), 2);
    let (st, job) = call(
        &http,
        M::POST,
        format!("{}/api/v1/jobs", net.url),
        k,
        Some(
            json!({"workload_id": ECHO, "confidential": true, "encryption_key_id": key_id,
            "input": {"encrypted": true, "key_id": key_id, "ciphertext": enc["ciphertext"]}}),
        ),
    )
    .await;
    assert_eq!(st, 201, "{job}");
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    let (_, dec) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/decrypt"),
        k,
        Some(json!({"output": job["output"], "key_id": key_id})),
    )
    .await;
    assert_eq!(dec["output"]["text"], "BOUND");

    // Monitoring, proxied: the page's stats shape.
    let (st, stats) = call(
        &http,
        M::GET,
        format!("{gw}/api/v1/confidential/stats"),
        k,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(stats["tee_types"]["sim"], 2);
    assert_eq!(stats["attested_hosts"], 2);

    // Decrypting an output this machine did not request is refused.
    let (st, e) = call(&http, M::POST, format!("{gw}/api/v1/confidential/decrypt"), k, Some(json!({"output": {"encrypted": true, "key_id": key_id, "ciphertext": "QVJDRQ"}, "key_id": key_id}))).await;
    assert_eq!(st, 422, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_streams_and_openai_chat_works() {
    let net = common::start().await;
    common::sim_island(&net, "sim-1", [1; 48]).await;
    let policy = archipelago_client::config::load_policy(&net.policy_file()).unwrap();
    let s = session(&net, policy, "client");
    s.create_key(Some("test")).await.unwrap();
    let mut deltas = String::new();
    let mut states = Vec::new();
    let (job, out) = s
        .run_streaming(
            ECHO,
            br#"{"prompt":"one two three"}"#,
            None,
            Duration::from_secs(60),
            &mut |ev| match ev {
                StreamEvent::Data(d) => deltas.push_str(&String::from_utf8_lossy(&d)),
                StreamEvent::State(st) => states.push(st),
            },
        )
        .await
        .unwrap();
    assert_eq!(job.state, "succeeded");
    assert_eq!(out.json().unwrap()["text"], "ONE TWO THREE");
    assert!(deltas.contains(r#"{"delta":"ONE"}"#), "{deltas}");
    assert_eq!(states.last().map(String::as_str), Some("succeeded"));
    // `jobs get` path: decrypt later from the local record.
    let again = s.api().get_job(&job.id).await.unwrap();
    assert_eq!(
        s.decrypt_job(&again).await.unwrap().json().unwrap()["text"],
        "ONE TWO THREE"
    );

    // OpenAI-compatible, through the gateway.
    let gw = gateway(&net).await;
    let http = reqwest::Client::new();
    let (st, models) = call(
        &http,
        reqwest::Method::GET,
        format!("{gw}/v1/models"),
        &net.api_key,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "echo"));
    let (st, c) = call(
        &http,
        reqwest::Method::POST,
        format!("{gw}/v1/chat/completions"),
        &net.api_key,
        Some(json!({"model": "echo", "messages": [{"role": "user", "content": "hello there"}]})),
    )
    .await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["choices"][0]["message"]["content"], "HELLO THERE");
    let r = http
        .post(format!("{gw}/v1/chat/completions"))
        .bearer_auth(&net.api_key)
        .json(&json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": "a b"}]}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let mut content = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(c);
        }
    }
    assert_eq!(content, "AB");
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let (st, e) = call(
        &http,
        reqwest::Method::POST,
        format!("{gw}/v1/chat/completions"),
        &net.api_key,
        Some(json!({"model": "nope", "messages": []})),
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refusing_every_enclave_fails_fast_and_clearly() {
    let net = common::start().await;
    common::sim_island(&net, "sim-1", [1; 48]).await;
    common::sim_island(&net, "sim-2", [1; 48]).await;
    let mut policy = archipelago_client::config::load_policy(&net.policy_file()).unwrap();
    policy
        .tees
        .get_mut(&archipelago_attest::TeeType::Sim)
        .unwrap()
        .measurements = Some(vec![hex::encode([2u8; 48])]);
    let s = session(&net, policy, "client");
    s.create_key(None).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        s.run(ECHO, br#"{"prompt":"x"}"#, None, Duration::from_secs(600)),
    )
    .await
    .expect("refusal must not hang");
    let e = r.unwrap_err();
    assert!(matches!(e, ClientError::NoAcceptableEnclave { .. }));
    assert_eq!(
        e.to_string(),
        "no attested enclave for workload 5 matches your policy: 2 refused because measurement not in allow-list; see `archipelago attest list`"
    );
    // The production policy (no sim) refuses them too, with its own reason.
    let s = session(&net, archipelago_attest::Policy::production(), "client2");
    s.create_key(None).await.unwrap();
    let e = s
        .run(ECHO, br#"{"prompt":"x"}"#, None, Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("2 refused because TEE type not accepted by your policy"),
        "{e}"
    );
}

/// Homomorphic mode through the gateway and a real island agent without a
/// TEE (in-process, `archipelago_island::run`): an `he-bfv` key made by the
/// gateway, `/encrypt` of a feature vector and of aggregate records,
/// submission, evaluation on ciphertext by the island, `/decrypt`; the
/// label equals the plaintext head's, the totals are exact; a ciphertext
/// for another key fails the job on the island with a clear code and the
/// island keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn he_classify_and_aggregate_through_the_gateway_on_an_island_without_tee() {
    let net = common::start().await;
    let mut cfg = archipelago_island::AgentConfig::new(
        &net.url,
        net.dir.path().join("island"),
        archipelago_island::TeeChoice::None,
        archipelago_island::PlainRunner::echo_only(),
    );
    cfg.enrollment_token = Some(net.enrollment_token.clone());
    cfg.lease_wait = Duration::from_millis(500);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let island = tokio::spawn(archipelago_island::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let gw = gateway(&net).await;
    let http = reqwest::Client::new();
    let k = net.api_key.as_str();
    use reqwest::Method as M;

    let (st, key) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/keys"),
        k,
        Some(json!({"kind": "he-bfv", "label": "he"})),
    )
    .await;
    assert_eq!(st, 201, "{key}");
    assert_eq!(key["kind"], "he-bfv");
    assert_eq!(key["params"], "bfv-n8192-q150-t40-v1");
    let key_id = key["key_id"].as_str().unwrap().to_string();

    // he-classify on a unit feature vector.
    let head = archipelago_inference::classify::LinearHead::builtin().unwrap();
    let mut x: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32) - 50.0).collect();
    let n = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    x.iter_mut().for_each(|v| *v /= n);
    let expected = head.top_k(&x, 1)[0].0.clone();
    let (st, enc) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/encrypt"),
        k,
        Some(json!({"input": {"features": x}, "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 200, "{enc}");
    assert_eq!(enc["mode"], "he");
    assert_eq!(enc["workload_id"], 3);
    let submit = |ct: &Value, w: i64| {
        json!({"workload_id": w, "confidential": true, "encryption_key_id": key_id,
            "input": {"encrypted": true, "key_id": key_id, "ciphertext": ct}})
    };
    let (st, job) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/jobs"),
        k,
        Some(submit(&enc["ciphertext"], 3)),
    )
    .await;
    assert_eq!(st, 201, "{job}");
    assert_eq!(job["mode"], "he");
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["output"]["enclave_key_id"].is_null());
    assert!(job["cost"].as_i64().unwrap() >= 1, "billed: {job}");
    let (st, dec) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/decrypt"),
        k,
        Some(json!({"output": job, "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 200, "{dec}");
    assert_eq!(dec["mode"], "he");
    assert_eq!(dec["output"]["label"], expected.as_str(), "{dec}");
    assert_eq!(dec["output"]["labels"][0]["label"], expected.as_str());

    // he-aggregate: count, sum, mean and a histogram.
    let schema = json!({"columns": [
        {"kind": "value", "name": "ldl", "scale": 10.0, "min": 0.0, "max": 400.0},
        {"kind": "histogram", "name": "band", "edges": [100.0, 160.0]},
    ]});
    let records = json!([[130.5, 130.5], [162.0, 162.0], [98.4, 98.4]]);
    let (st, enc) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/encrypt"),
        k,
        Some(json!({"input": {"schema": schema, "records": records}, "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 200, "{enc}");
    assert_eq!(enc["workload_id"], 4);
    let (_, job) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/jobs"),
        k,
        Some(submit(&enc["ciphertext"], 4)),
    )
    .await;
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (st, dec) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/decrypt"),
        k,
        Some(json!({"output": job["output"], "key_id": key_id})),
    )
    .await;
    assert_eq!(st, 422, "the schema is needed: {dec}");
    assert_eq!(dec["error"]["code"], "schema_required");
    let (st, dec) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/confidential/decrypt"),
        k,
        Some(json!({"output": job["output"], "key_id": key_id, "schema": schema})),
    )
    .await;
    assert_eq!(st, 200, "{dec}");
    assert_eq!(dec["output"]["count"], 3);
    let sum = dec["output"]["columns"][0]["sum"].as_f64().unwrap();
    assert!((sum - 390.9).abs() < 1e-6, "{dec}");
    assert_eq!(dec["output"]["columns"][1]["counts"], json!([1, 1, 1]));

    // The coordinator checks only the header; the island parses the body
    // strictly: a request with an unreduced coefficient fails the job there.
    let sk = {
        let ks = Keystore::open(net.dir.path().join("gateway").join("keys")).unwrap();
        ks.load_he(&key_id, None).unwrap()
    };
    let mut bad = archipelago_he::encrypt_features(&sk, &x).unwrap();
    let len = bad.len();
    bad[len - 2000..len - 100].fill(0xff);
    let ct = Value::String(archipelago_proto::b64::encode_url(&bad));
    let (st, job) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/jobs"),
        k,
        Some(submit(&ct, 3)),
    )
    .await;
    assert_eq!(st, 201, "{job}");
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "he_malformed", "{job}");
    assert!(
        job["cost"].as_i64().unwrap_or(0) == 0,
        "failures are not charged"
    );
    // ... and the island still serves.
    let (_, job) = call(
        &http,
        M::POST,
        format!("{gw}/api/v1/jobs"),
        k,
        Some(submit(&enc["ciphertext"], 4)),
    )
    .await;
    let job = wait_job(&http, &gw, k, job["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let stats = call(
        &http,
        M::GET,
        format!("{gw}/api/v1/confidential/stats"),
        k,
        None,
    )
    .await
    .1;
    assert_eq!(stats["he_capable_hosts"], 1, "{stats}");
    assert_eq!(stats["he_jobs"]["succeeded"], 3, "{stats}");
    assert_eq!(stats["he_jobs"]["failed"], 1, "{stats}");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), island).await;
}
