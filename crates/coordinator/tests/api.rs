//! HTTP-level tests of every endpoint, each run against SQLite and
//! PostgreSQL: the authorization matrix, placement rules, lease expiry and
//! requeue, billing and its conservation under random outcomes.

mod common;

use std::time::Duration;

use archipelago_proto::{b64, SecretKey};
use common::*;
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

async fn basics(b: Backend) {
    let h = Harness::start(b).await;
    let r = h.call(Method::GET, "/api/v1/health", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    // OpenAPI 3.1 document
    let r = h
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(r.body["paths"]["/api/v1/jobs"]["post"].is_object());
    // no / bad credentials
    let r = h.call(Method::GET, "/api/v1/account", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "unauthorized");
    let r = h.get("/api/v1/account", "ak_nope").await;
    assert_eq!(r.status, 401);
    let r = h.get("/api/v1/nowhere", &h.admin_key).await;
    assert_eq!(r.status, 404);
    // encryption happens on the user's machine
    for p in [
        "/api/v1/confidential/encrypt",
        "/api/v1/confidential/decrypt",
    ] {
        let r = h
            .post(
                p,
                &h.admin_key,
                json!({"input": {"prompt": "x"}, "key_id": "ck_x"}),
            )
            .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.body["error"]["code"], "client_side_only");
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("archipelago gateway"));
    }
    // workloads
    let r = h.get("/api/v1/workloads", &h.admin_key).await;
    let slugs: Vec<&str> = r.body["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["chat", "embed", "classify", "he-aggregate", "echo"]);
    let r = h.get("/api/v1/workloads/5", &h.admin_key).await;
    assert_eq!(r.body["slug"], "echo");
    assert_eq!(
        h.get("/api/v1/workloads/42", &h.admin_key).await.status,
        404
    );
    // stats shape of the product page
    let r = h.get("/api/v1/confidential/stats", &h.admin_key).await;
    assert_eq!(r.status, 200);
    assert!(r.body["tee_types"].is_object());
    assert_eq!(r.body["attested_hosts"], 0);
    // metrics
    let r = h.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    let text = r.body.as_str().unwrap().to_string();
    assert!(text.contains("archipelago_jobs{state=\"queued\"} 0"));
    assert!(text.contains("archipelago_queue_depth 0"));
    assert!(text.contains("archipelago_attested_enclaves{tee_type=\"sev\"} 0"));
    assert!(text.contains("archipelago_ledger_credits{book=\"issued\"} 1000000"));
    assert!(text.contains("archipelago_lease_expiries_total"));
    // account
    let r = h.get("/api/v1/account", &h.admin_key).await;
    assert_eq!(r.body["balance"], 1_000_000);
    assert_eq!(r.body["ledger"][0]["kind"], "grant");
    h.finish().await;
}
both!(basics_t, basics);

async fn api_keys_and_scopes(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(100).await;
    // a read-only key cannot write
    let r = h
        .post(
            "/api/v1/api-keys",
            &user,
            json!({"name": "ro", "scopes": ["read"]}),
        )
        .await;
    assert_eq!(r.status, 201);
    let ro = r.body["api_key"].as_str().unwrap().to_string();
    let ro_id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(h.get("/api/v1/account", &ro).await.status, 200);
    let r = h
        .post(
            "/api/v1/jobs",
            &ro,
            json!({"workload_id": 5, "input": {"text": "hi"}}),
        )
        .await;
    assert_eq!(r.status, 403);
    // non-admins cannot mint admin keys or use admin endpoints
    let r = h
        .post("/api/v1/api-keys", &user, json!({"scopes": ["admin"]}))
        .await;
    assert_eq!(r.status, 403);
    let r = h
        .post("/api/v1/admin/accounts", &user, json!({"name": "x"}))
        .await;
    assert_eq!(r.status, 403);
    let r = h
        .post("/api/v1/admin/enrollment-tokens", &user, json!({}))
        .await;
    assert_eq!(r.status, 403);
    let r = h
        .post("/api/v1/api-keys", &user, json!({"scopes": ["root"]}))
        .await;
    assert_eq!(r.status, 422);
    // listing shows no secrets; revocation is immediate
    let r = h.get("/api/v1/api-keys", &user).await;
    assert_eq!(r.body["api_keys"].as_array().unwrap().len(), 2);
    assert!(r.body["api_keys"][0].get("api_key").is_none());
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{ro_id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(h.get("/api/v1/account", &ro).await.status, 401);
    // another account cannot revoke my key
    let (_, other) = h.user(0).await;
    let mine = h.get("/api/v1/api-keys", &user).await.body["api_keys"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{mine}"),
            Some(&other),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    // admin: grant and enrollment tokens with limited uses
    let (acct, _) = h.user(0).await;
    let r = h
        .post(
            &format!("/api/v1/admin/accounts/{acct}/grant"),
            &h.admin_key,
            json!({"credits": 5}),
        )
        .await;
    assert_eq!(r.status, 204);
    let r = h
        .post(
            "/api/v1/admin/accounts/acct_nope/grant",
            &h.admin_key,
            json!({"credits": 5}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = h
        .post(
            "/api/v1/admin/enrollment-tokens",
            &h.admin_key,
            json!({"max_uses": 1}),
        )
        .await;
    let et = r.body["enrollment_token"].as_str().unwrap().to_string();
    let enroll = json!({"enrollment_token": et, "name": "a", "runtimes": ["echo"], "memory_mb": 10, "capacity": 1});
    assert_eq!(
        h.call(
            Method::POST,
            "/api/v1/island/enroll",
            None,
            Some(enroll.clone())
        )
        .await
        .status,
        201
    );
    assert_eq!(
        h.call(Method::POST, "/api/v1/island/enroll", None, Some(enroll))
            .await
            .status,
        401
    );
    h.finish().await;
}
both!(api_keys_t, api_keys_and_scopes);

async fn key_registry(b: Backend) {
    let h = Harness::start(b).await;
    let (_, a) = h.user(0).await;
    let (_, bk) = h.user(0).await;
    let ck = SecretKey::generate();
    let pk = ck.public().to_base64();
    let r = h
        .post("/api/v1/confidential/keys", &a, json!({"public_key": pk}))
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["key_id"].as_str().unwrap().to_string();
    assert_eq!(id, ck.public().client_id_string());
    assert_eq!(r.body["public_key"], pk);
    // idempotent re-registration, URL-safe alphabet accepted
    let url_safe = pk
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string();
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": url_safe, "key_id": id}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // self-certifying: a wrong id is refused
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": pk, "key_id": "ck_aaaaaaaaaaaaaaaaaaaaaaaaaa"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"]["fields"][0]["field"], "key_id");
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": "AAAA"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": pk, "kind": "rsa"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = h
        .post("/api/v1/confidential/keys", &a, json!({"kind": "x25519"}))
        .await;
    assert_eq!(r.status, 422, "missing field is a 422");
    // HE key material: parsed, id derived by the server, params recorded
    let (he_sk, he_pm) = archipelago_he::generate_keypair().unwrap();
    let he = b64::encode_std(he_pm.to_bytes());
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": he, "kind": "he-bfv", "evaluation_keys": b64::encode_std(&[1u8; 64])}),
        )
        .await;
    assert_eq!(r.status, 422, "no separate evaluation keys");
    assert_eq!(r.body["error"]["fields"][0]["field"], "evaluation_keys");
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": he, "kind": "he-bfv", "key_id": "ck_aaaaaaaaaaaaaaaaaaaaaaaaaa"}),
        )
        .await;
    assert_eq!(r.status, 422, "the id is self-certifying");
    assert!(r.body["error"]["fields"][0]["message"]
        .as_str()
        .unwrap()
        .contains(he_pm.key_id()));
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": he, "kind": "he-bfv", "key_id": he_pm.key_id()}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["kind"], "he-bfv");
    assert_eq!(r.body["key_id"], he_pm.key_id());
    assert_eq!(r.body["params"], "bfv-n8192-q150-t40-v1");
    // wrong kinds of material
    for (bad, what) in [
        (b64::encode_std(&he_sk.to_bytes()), "secret key"),
        (pk.clone(), "X25519"),
        (b64::encode_std(&[9u8; 256]), "bad magic"),
    ] {
        let r = h
            .post(
                "/api/v1/confidential/keys",
                &a,
                json!({"public_key": bad, "kind": "he-bfv"}),
            )
            .await;
        assert_eq!(r.status, 422, "{what}: {:?}", r.body);
        assert_eq!(r.body["error"]["fields"][0]["field"], "public_key");
    }
    // HE material sent as an X25519 key says what to do
    let r = h
        .post("/api/v1/confidential/keys", &a, json!({"public_key": he}))
        .await;
    assert_eq!(r.status, 422);
    assert!(r.body["error"]["fields"][0]["message"]
        .as_str()
        .unwrap()
        .contains("he-bfv"));
    // over the size limit: 413 with the limit in the message
    let big = b64::encode_std(&vec![0u8; archipelago_he::MAX_PUBLIC_MATERIAL_BYTES + 1]);
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &a,
            json!({"public_key": big, "kind": "he-bfv"}),
        )
        .await;
    assert_eq!(r.status, 413, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "payload_too_large");
    // list: own keys only
    assert_eq!(
        h.get("/api/v1/confidential/keys", &a).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        h.get("/api/v1/confidential/keys", &bk).await.body["keys"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // another account's key: 404
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/confidential/keys/{id}"),
            Some(&bk),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/confidential/keys/{id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/confidential/keys/{id}"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    h.finish().await;
}
both!(key_registry_t, key_registry);

trait IdString {
    fn client_id_string(&self) -> String;
}
impl IdString for archipelago_proto::PublicKey {
    fn client_id_string(&self) -> String {
        archipelago_proto::KeyId::client(self.as_bytes())
            .as_str()
            .to_string()
    }
}

async fn plain_job_lifecycle(b: Backend) {
    let h = Harness::start(b).await;
    let (acct, user) = h.user(1000).await;
    let (island, it) = h.island(plain_caps()).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {"text": "hello"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.body["state"], "queued");
    assert_eq!(r.body["confidential"], false);
    assert_eq!(r.body["hold"], 10);
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(
        (acc["balance"].as_i64(), acc["held"].as_i64()),
        (Some(990), Some(10))
    );
    // SSE subscriber
    let sse = h.follow(&user, &id, "event: done");
    let l = h.lease(&it, 1000).await;
    assert_eq!(l.status, 200, "{:?}", l.body);
    assert_eq!(l.body["job_id"], id.as_str());
    assert_eq!(l.body["input"]["text"], "hello");
    assert_eq!(l.body["workload_slug"], "echo");
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    assert_eq!(h.job(&user, &id).await["state"], "assigned");
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/renew"),
            &it,
            json!({"lease_id": lease, "running": true}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "running");
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/chunks"),
            &it,
            json!({"lease_id": lease, "seq": 0, "data": "hel"}),
        )
        .await;
    assert_eq!(r.status, 204);
    // heartbeat: job is still live
    let r = h
        .post(
            "/api/v1/island/heartbeat",
            &it,
            heartbeat_body(&plain_caps(), &[&id, "job_gone"]),
        )
        .await;
    assert_eq!(r.body["cancel_jobs"], json!(["job_gone"]));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = h
        .post(&format!("/api/v1/island/jobs/{id}/result"), &it, json!({"lease_id": lease, "outcome": "succeeded", "execution_ms": 1000, "output": {"text": "hello"}}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["cost"], 1);
    assert_eq!(r.body["earned"], 0);
    // posting again is harmless and settles nothing more
    let r2 = h
        .post(&format!("/api/v1/island/jobs/{id}/result"), &it, json!({"lease_id": lease, "outcome": "succeeded", "execution_ms": 1000, "output": {"text": "hello"}}))
        .await;
    assert_eq!(r2.status, 200);
    assert_eq!(r2.body, r.body);
    let j = h.job(&user, &id).await;
    assert_eq!(j["state"], "succeeded");
    assert_eq!(j["output"]["text"], "hello");
    assert_eq!(j["cost"], 1);
    assert_eq!(j["island_id"], island.as_str());
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(
        (acc["balance"].as_i64(), acc["held"].as_i64()),
        (Some(999), Some(0))
    );
    let text = sse.await.unwrap();
    assert!(text.contains("event: chunk"), "{text}");
    assert!(text.contains("event: done"), "{text}");
    // Stored chunks go once the job has been over for the retention time;
    // the stream of a finished job still ends with its whole output.
    let ended = j["updated_at"].as_i64().unwrap_or(i64::MAX);
    assert_eq!(h.store.purge_chunks(ended).await.unwrap(), 0);
    assert_eq!(h.store.chunks_after(&id, -1).await.unwrap().len(), 1);
    assert_eq!(h.store.purge_chunks(ended + 1).await.unwrap(), 1);
    assert!(h.store.chunks_after(&id, -1).await.unwrap().is_empty());
    let r = h
        .call(
            Method::GET,
            &format!("/api/v1/jobs/{id}/stream"),
            Some(&user),
            None,
        )
        .await;
    let text = r.body.as_str().unwrap_or_default();
    assert!(
        text.contains("event: done") && text.contains("hello"),
        "{text}"
    );
    assert!(!text.contains("event: chunk"), "{text}");
    // list and filter
    let r = h.get("/api/v1/jobs?state=succeeded", &user).await;
    assert_eq!(r.body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(h.get("/api/v1/jobs?state=bogus", &user).await.status, 422);
    assert_eq!(h.get("/api/v1/jobs?limit=0", &user).await.status, 422);
    // cancel after the end: 409
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(r.status, 409);
    // islands listing
    let r = h.get("/api/v1/islands", &user).await;
    assert_eq!(r.body["islands"][0]["status"], "online");
    assert!(r.body["islands"][0].get("owner_account_id").is_none());
    let t = h.store.ledger_totals().await.unwrap();
    assert_eq!(t.sum, 0);
    let _ = acct;
    h.finish().await;
}
both!(plain_job_t, plain_job_lifecycle);

/// `max_jobs`: several jobs per lease call, oldest first, bounded by the
/// island's free capacity; each is settled on its own; without `max_jobs`
/// the answer keeps the one-job shape.
async fn multi_job_lease(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(1000).await;
    let (_, it) = h
        .island(json!({"runtimes": ["echo"], "memory_mb": 4096, "capacity": 3}))
        .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = h
            .post(
                "/api/v1/jobs",
                &user,
                json!({"workload_id": 5, "input": {"i": i}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    for bad in [0, 65] {
        let r = h
            .post(
                "/api/v1/island/lease",
                &it,
                json!({"wait_ms": 0, "max_jobs": bad}),
            )
            .await;
        assert_eq!(r.status, 422, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_request");
    }
    // capacity 3 caps a request for 10
    let l = h
        .post(
            "/api/v1/island/lease",
            &it,
            json!({"wait_ms": 1000, "max_jobs": 10}),
        )
        .await;
    assert_eq!(l.status, 200, "{:?}", l.body);
    let jobs = l.body["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 3);
    let mut got: Vec<String> = jobs
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_string())
        .collect();
    for j in &jobs {
        let i = j["input"]["i"].as_u64().unwrap() as usize;
        assert_eq!(j["job_id"], ids[i].as_str());
        assert_eq!(j["workload_slug"], "echo");
        assert!(j["lease_id"].as_str().unwrap().starts_with("lease_"));
        assert_eq!(h.job(&user, &ids[i]).await["state"], "assigned");
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 3);
    let rest: Vec<String> = ids.iter().filter(|i| !got.contains(i)).cloned().collect();
    // full: nothing more until one finishes
    let r = h
        .post(
            "/api/v1/island/lease",
            &it,
            json!({"wait_ms": 0, "max_jobs": 2}),
        )
        .await;
    assert_eq!(r.status, 204);
    // each job of the batch settles on its own lease
    let mut charged = 0;
    for (i, j) in jobs.iter().enumerate().take(2) {
        let outcome = if i == 0 { "succeeded" } else { "failed" };
        let r = h
            .post(
                &format!("/api/v1/island/jobs/{}/result", j["job_id"].as_str().unwrap()),
                &it,
                json!({"lease_id": j["lease_id"], "outcome": outcome, "execution_ms": 1, "output": {}}),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["state"], outcome);
        charged += r.body["cost"].as_i64().unwrap();
    }
    // a batch's lease id does not settle a job outside the batch
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{}/result", rest[0]),
            &it,
            json!({"lease_id": jobs[2]["lease_id"], "outcome": "succeeded", "output": {}}),
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    // two slots free again; max_jobs 1 answers in the batch shape
    let r = h
        .post(
            "/api/v1/island/lease",
            &it,
            json!({"wait_ms": 1000, "max_jobs": 1}),
        )
        .await;
    assert_eq!(r.status, 200);
    let batch = r.body["jobs"].as_array().unwrap();
    assert_eq!(batch.len(), 1);
    let first = batch[0]["job_id"].as_str().unwrap().to_string();
    assert!(rest.contains(&first));
    // no max_jobs: the original one-job shape
    let r = h.lease(&it, 1000).await;
    assert_eq!(r.status, 200);
    let second = r.body["job_id"].as_str().unwrap().to_string();
    assert!(rest.contains(&second) && second != first);
    assert!(r.body.get("jobs").is_none());
    // holds: 3 jobs still leased (10 each), one charged, one refunded
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(acc["held"], 30);
    assert_eq!(acc["balance"].as_i64().unwrap(), 1000 - 30 - charged);
    h.finish().await;
}
both!(multi_lease_t, multi_job_lease);

/// Many submissions and results at once (on SQLite they are group
/// committed): submissions beyond the balance are refused alone, duplicate
/// results settle once, and the ledger still balances.
async fn concurrent_jobs_settle_once(b: Backend) {
    let h = Harness::start(b).await;
    // echo holds 10 per job: credits for exactly 10 of 16 submissions
    let (_, user) = h.user(100).await;
    let (_, it) = h
        .island(json!({"runtimes": ["echo"], "memory_mb": 4096, "capacity": 32}))
        .await;
    let mut subs = Vec::new();
    for i in 0..16 {
        let (http, url, user) = (
            h.http.clone(),
            format!("{}/api/v1/jobs", h.base),
            user.clone(),
        );
        subs.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(user)
                .json(&json!({"workload_id": 5, "input": {"i": i}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in subs {
        codes.push(t.await.unwrap());
    }
    codes.sort();
    assert_eq!(
        codes,
        [[201u16; 10].as_slice(), [402u16; 6].as_slice()].concat()
    );
    let l = h
        .post(
            "/api/v1/island/lease",
            &it,
            json!({"wait_ms": 1000, "max_jobs": 16}),
        )
        .await;
    assert_eq!(l.status, 200, "{:?}", l.body);
    let jobs = l.body["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 10);
    // every result posted twice, all at once
    let mut posts = Vec::new();
    for j in jobs.iter().chain(jobs.iter()) {
        let id = j["job_id"].as_str().unwrap().to_string();
        let (http, base, it) = (h.http.clone(), h.base.clone(), it.clone());
        let body = json!({"lease_id": j["lease_id"], "outcome": "succeeded", "execution_ms": 1, "output": {}});
        posts.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/api/v1/island/jobs/{id}/result"))
                .bearer_auth(it)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (id, status, v["cost"].as_i64())
        }));
    }
    let mut cost_of = std::collections::HashMap::new();
    for t in posts {
        let (id, status, cost) = t.await.unwrap();
        assert_eq!(status, 200);
        let cost = cost.unwrap();
        assert_eq!(
            *cost_of.entry(id).or_insert(cost),
            cost,
            "a retry reported another cost"
        );
    }
    let charged: i64 = cost_of.values().sum();
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(acc["held"], 0);
    assert_eq!(acc["balance"].as_i64().unwrap(), 100 - charged);
    let t = h.store.ledger_totals().await.unwrap();
    assert_eq!(t.sum, 0);
    assert_eq!(t.held, 0);
    assert_eq!(
        (t.available, t.held),
        (t.projected_available, t.projected_held)
    );
    // each job has exactly one charge entry
    for id in cost_of.keys() {
        let n: i64 = sqlx::Row::get(
            &sqlx::query(
                "SELECT COUNT(*) AS n FROM ledger_entries WHERE job_id = $1 AND kind = 'charge'",
            )
            .bind(id)
            .fetch_one(h.store.pool())
            .await
            .unwrap(),
            "n",
        );
        assert_eq!(n, 1);
    }
    h.finish().await;
}
both!(concurrent_settle_t, concurrent_jobs_settle_once);

async fn billing_shares(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(10_000).await;
    let (_, it) = h.island(plain_caps()).await;
    // chat: 10 credits/s, max 120 s → hold 1200
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 1, "input": {"prompt": "hi"}}),
        )
        .await;
    assert_eq!(r.body["hold"], 1200);
    let id = r.body["id"].as_str().unwrap().to_string();
    let l = h.lease(&it, 1000).await;
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = h
        .post(&format!("/api/v1/island/jobs/{id}/result"), &it, json!({"lease_id": lease, "outcome": "succeeded", "execution_ms": 2000, "output": {"text": "x"}}))
        .await;
    assert_eq!(r.body["cost"], 20);
    assert_eq!(r.body["earned"], 17);
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(acc["balance"], 10_000 - 20);
    let admin = h.get("/api/v1/account", &h.admin_key).await.body;
    assert_eq!(
        admin["balance"],
        1_000_000 + 17,
        "island owner (admin) earned 85%"
    );
    let t = h.store.ledger_totals().await.unwrap();
    assert_eq!(t.platform, 3);
    // failure refunds in full
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 1, "input": {"prompt": "hi"}}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let l = h.lease(&it, 1000).await;
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    let r = h
        .post(&format!("/api/v1/island/jobs/{id}/result"), &it, json!({"lease_id": lease, "outcome": "failed", "execution_ms": 5, "error": {"code": "model_error", "message": "out of memory"}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["cost"], 0);
    let j = h.job(&user, &id).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["error"]["code"], "model_error");
    assert_eq!(
        h.get("/api/v1/account", &user).await.body["balance"],
        10_000 - 20
    );
    // 402 when the balance cannot cover the hold
    let (_, poor) = h.user(5).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &poor,
            json!({"workload_id": 1, "input": {}}),
        )
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body["error"]["code"], "insufficient_credits");
    assert_eq!(
        h.get("/api/v1/jobs", &poor).await.body["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    h.finish().await;
}
both!(billing_t, billing_shares);

async fn validation_and_limits(b: Backend) {
    let h = Harness::start_with(b, true, |c| {
        c.rate_limit_per_sec = 0.5;
        c.rate_limit_burst = 3.0;
        c.max_payload_bytes = 64 * 1024;
    })
    .await;
    let (_, user) = h.user(1000).await;
    let r = h.post("/api/v1/jobs", &user, json!({"input": {}})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"]["code"], "invalid_request");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("workload_id"));
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 42, "input": {}}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"]["fields"][0]["field"], "workload_id");
    // rate limit: the 4th request within a second is refused
    assert_eq!(h.get("/api/v1/account", &user).await.status, 200);
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": "x".repeat(100 * 1024)}),
        )
        .await;
    assert_eq!(r.status, 429, "bucket of 3 is empty: {:?}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(r.body["error"]["code"], "rate_limited");
    // another key has its own bucket; oversized bodies are refused with 413
    let (_, other) = h.user(1000).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &other,
            json!({"workload_id": 5, "input": "x".repeat(100 * 1024)}),
        )
        .await;
    assert_eq!(r.status, 413);
    let r = h
        .call_h(
            Method::POST,
            "/api/v1/jobs",
            Some(&other),
            None,
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(r.status, 400);
    // quoted values never come back in error messages
    let r = h
        .post(
            "/api/v1/jobs",
            &other,
            json!({"workload_id": "top secret words", "input": {}}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert!(!r.body.to_string().contains("top secret"), "{}", r.body);
    h.finish().await;
}
both!(validation_t, validation_and_limits);

async fn idempotency_and_cancel(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(1000).await;
    let body = json!({"workload_id": 5, "input": {"text": "once"}});
    let hdr = [("idempotency-key", "abc-123")];
    let a = h
        .call_h(
            Method::POST,
            "/api/v1/jobs",
            Some(&user),
            Some(body.clone()),
            &hdr,
        )
        .await;
    assert_eq!(a.status, 201);
    let b2 = h
        .call_h(Method::POST, "/api/v1/jobs", Some(&user), Some(body), &hdr)
        .await;
    assert_eq!(b2.status, 200);
    assert_eq!(a.body["id"], b2.body["id"]);
    let c = h
        .call_h(
            Method::POST,
            "/api/v1/jobs",
            Some(&user),
            Some(json!({"workload_id": 5, "input": {"text": "other"}})),
            &hdr,
        )
        .await;
    assert_eq!(c.status, 409);
    assert_eq!(
        h.get("/api/v1/account", &user).await.body["held"],
        10,
        "held once"
    );
    // cancel a queued job: full refund
    let id = a.body["id"].as_str().unwrap();
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["state"], "cancelled");
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(
        (acc["balance"].as_i64(), acc["held"].as_i64()),
        (Some(1000), Some(0))
    );
    // cancel a leased job: the island learns on renew and result
    let (_, it) = h.island(plain_caps()).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {}}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let l = h.lease(&it, 1000).await;
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    assert_eq!(
        h.call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}"),
            Some(&user),
            None
        )
        .await
        .status,
        200
    );
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/renew"),
            &it,
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "job_cancelled");
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &it,
            json!({"lease_id": lease, "outcome": "succeeded", "output": {}}),
        )
        .await;
    assert_eq!(r.status, 409);
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(
        (acc["balance"].as_i64(), acc["held"].as_i64()),
        (Some(1000), Some(0))
    );
    let r = h
        .post(
            "/api/v1/island/heartbeat",
            &it,
            heartbeat_body(&plain_caps(), &[&id]),
        )
        .await;
    assert_eq!(r.body["cancel_jobs"], json!([id]));
    h.finish().await;
}
both!(idempotency_t, idempotency_and_cancel);

async fn authorization_matrix(b: Backend) {
    let h = Harness::start(b).await;
    let (_, alice) = h.user(1000).await;
    let (_, bob) = h.user(1000).await;
    let (_, it1) = h.island(plain_caps()).await;
    let (_, it2) = h.island(plain_caps()).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &alice,
            json!({"workload_id": 5, "input": {"text": "alice's"}}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    // bob sees none of alice's job, keys or ledger
    assert_eq!(h.get(&format!("/api/v1/jobs/{id}"), &bob).await.status, 404);
    assert_eq!(
        h.get(&format!("/api/v1/jobs/{id}/stream"), &bob)
            .await
            .status,
        404
    );
    assert_eq!(
        h.call(
            Method::DELETE,
            &format!("/api/v1/jobs/{id}"),
            Some(&bob),
            None
        )
        .await
        .status,
        404
    );
    assert!(h.get("/api/v1/jobs", &bob).await.body["jobs"]
        .as_array()
        .unwrap()
        .is_empty());
    let ledger = h.get("/api/v1/account", &bob).await.body["ledger"].clone();
    assert!(
        ledger
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["job_id"].is_null()),
        "{ledger:?}"
    );
    // bob cannot use alice's key for a confidential job
    let (ck, kid) = h.client_key(&alice).await;
    let (_, ek) = {
        let (_, t3) = h.island(sim_caps()).await;
        h.attest(&t3).await
    };
    let _ = ek;
    let r = h
        .submit_sealed(
            &bob,
            &ck,
            &kid,
            5,
            &[SecretKey::generate().public()],
            json!({}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"]["fields"][0]["field"], "encryption_key_id");
    // island 2 cannot renew, stream into or finish island 1's lease
    let l = h.lease(&it1, 1000).await;
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/renew"),
            &it2,
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/chunks"),
            &it2,
            json!({"lease_id": lease, "seq": 0, "data": "x"}),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &it2,
            json!({"lease_id": lease, "outcome": "succeeded", "output": {}}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(h.job(&alice, &id).await["state"], "assigned");
    // users and islands cannot use each other's endpoints
    assert_eq!(h.lease(&alice, 0).await.status, 401);
    assert_eq!(h.get("/api/v1/account", &it1).await.status, 401);
    assert_eq!(
        h.call(Method::POST, "/api/v1/island/lease", None, Some(json!({})))
            .await
            .status,
        401
    );
    h.finish().await;
}
both!(authz_t, authorization_matrix);

async fn confidential_placement(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(10_000).await;
    let (ck, kid) = h.client_key(&user).await;
    let (ia, ta) = h.island(sim_caps()).await;
    let (_, tb) = h.island(sim_caps()).await;
    let (_, tplain) = h.island(plain_caps()).await;
    let (_, tunattested) = h.island(sim_caps()).await;
    let (eka, ida) = h.attest(&ta).await;
    let (_ekb, idb) = h.attest(&tb).await;
    // enclaves are listed with their evidence for the client to verify
    let r = h
        .get("/api/v1/confidential/enclaves?workload_id=5", &user)
        .await;
    let list = r.body["enclaves"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let a = list.iter().find(|e| e["key_id"] == ida.as_str()).unwrap();
    assert_eq!(a["tee_type"], "sim");
    assert_eq!(a["island_id"], ia.as_str());
    assert_eq!(a["evidence"]["tee"], "sim");
    assert!(a["workload_ids"].as_array().unwrap().contains(&json!(5)));
    assert_eq!(
        h.get("/api/v1/confidential/enclaves?workload_id=4", &user)
            .await
            .body["enclaves"],
        json!([])
    );
    assert_eq!(
        h.get("/api/v1/confidential/enclaves?workload_id=42", &user)
            .await
            .status,
        404
    );
    let s = h.get("/api/v1/confidential/stats", &user).await.body;
    assert_eq!(s["tee_types"]["sim"], 2);
    assert_eq!(s["attested_hosts"], 2);
    // a job sealed to A's enclave only goes to A
    let r = h
        .submit_sealed(&user, &ck, &kid, 5, &[eka.public()], json!({}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["confidential"], true);
    assert_eq!(r.body["mode"], "tee");
    assert_eq!(r.body["recipients"], json!([ida]));
    let id = r.body["id"].as_str().unwrap().to_string();
    for t in [&tb, &tplain, &tunattested] {
        assert_eq!(h.lease(t, 0).await.status, 204);
    }
    let l = h.lease(&ta, 1000).await;
    assert_eq!(l.status, 200);
    assert_eq!(l.body["job_id"], id.as_str());
    assert_eq!(l.body["enclave_key_id"], ida.as_str());
    assert_eq!(l.body["mode"], "tee");
    assert_eq!(l.body["input"]["encrypted"], true);
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    // a confidential result must be ciphertext
    let bad = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &ta,
            json!({"lease_id": lease, "outcome": "succeeded", "output": {"text": "plaintext!"}}),
        )
        .await;
    assert_eq!(bad.status, 422);
    let out = json!({"encrypted": true, "key_id": kid, "ciphertext": b64::encode_url(b"sealed-output"), "enclave_key_id": ida, "smuggled": "x"});
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &ta,
            json!({"lease_id": lease, "outcome": "succeeded", "output": out, "execution_ms": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let j = h.job(&user, &id).await;
    assert_eq!(j["output"]["encrypted"], true);
    assert!(
        j["output"].get("smuggled").is_none(),
        "only the sealed shape is stored"
    );
    // sealed to two enclaves: either may take it, nobody else
    let r = h
        .submit_sealed(
            &user,
            &ck,
            &kid,
            5,
            &[eka.public(), _ekb.public()],
            json!({}),
        )
        .await;
    let id2 = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(h.lease(&tplain, 0).await.status, 204);
    let l = h.lease(&tb, 1000).await;
    assert_eq!(l.body["job_id"], id2.as_str());
    assert_eq!(l.body["enclave_key_id"], idb.as_str());
    // mismatched workload in the envelope header is refused
    let r = h
        .submit_sealed(
            &user,
            &ck,
            &kid,
            1,
            &[eka.public()],
            json!({"workload_id": 5}),
        )
        .await;
    assert_eq!(r.status, 422);
    // garbage ciphertext is refused
    let r = h
        .post("/api/v1/jobs", &user, json!({"workload_id": 5, "confidential": true, "encryption_key_id": kid, "input": {"encrypted": true, "key_id": kid, "ciphertext": "AAAA"}}))
        .await;
    assert_eq!(r.status, 422);
    // encrypted input without confidential: true is refused
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {"encrypted": true}}),
        )
        .await;
    assert_eq!(r.status, 422);
    // no recipient live: stays queued until the deadline, then fails telling the client to re-encrypt
    let gone = SecretKey::generate();
    let r = h
        .submit_sealed(
            &user,
            &ck,
            &kid,
            5,
            &[gone.public()],
            json!({"timeout_seconds": 1}),
        )
        .await;
    let id3 = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(h.lease(&ta, 0).await.status, 204);
    let j = h.wait_state(&user, &id3, "failed").await;
    assert_eq!(j["error"]["code"], "no_enclave_available");
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("re-encrypt"));
    assert_eq!(j["cost"], 0);
    h.finish().await;
}
both!(confidential_t, confidential_placement);

async fn sim_refused_without_policy(b: Backend) {
    let h = Harness::start_with(b, false, |_| {}).await;
    let (_, user) = h.user(10_000).await;
    let (ck, kid) = h.client_key(&user).await;
    let (_, t) = h.island(sim_caps()).await;
    let ek = SecretKey::generate();
    let r = h.attest_with(&t, &ek.public(), &h.sim_seed).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], "attestation_refused");
    let r = h
        .submit_sealed(&user, &ck, &kid, 5, &[ek.public()], json!({}))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(h.lease(&t, 200).await.status, 204);
    assert_eq!(
        h.get("/api/v1/confidential/stats", &user).await.body["attested_hosts"],
        0
    );
    h.finish().await;
}
both!(sim_refused_t, sim_refused_without_policy);

async fn attestation_refusals(b: Backend) {
    let h = Harness::start(b).await;
    let (_, t) = h.island(sim_caps()).await;
    let (_, t2) = h.island(sim_caps()).await;
    let ek = SecretKey::generate();
    // evidence signed by an unknown sim root
    let r = h.attest_with(&t, &ek.public(), &[3u8; 32]).await;
    assert_eq!(r.status, 403);
    // the nonce is single use and bound to the island
    let ch = h
        .post("/api/v1/island/attest/challenge", &t, json!({}))
        .await;
    let nonce = ch.body["nonce"].as_str().unwrap();
    let body = json!({"nonce": nonce, "enclave_public_key": ek.public().to_base64(), "key_expires_at": now_secs() + 60,
        "evidence": {"tee": "sim", "evidence": "AAAA"}});
    let r = h.post("/api/v1/island/attest", &t2, body.clone()).await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    let r = h.post("/api/v1/island/attest", &t, body.clone()).await;
    assert_eq!(r.status, 403, "garbage evidence: {:?}", r.body);
    let r = h.post("/api/v1/island/attest", &t, body).await;
    assert_eq!(r.status, 409, "nonce already used");
    // a key bound to another key's evidence: binding mismatch
    let ch = h
        .post("/api/v1/island/attest/challenge", &t, json!({}))
        .await;
    let nonce = b64::decode_any(ch.body["nonce"].as_str().unwrap(), 100).unwrap();
    let expires = now_secs() + 3600;
    let other = SecretKey::generate();
    let binding = archipelago_attest::key_binding(other.public().as_bytes(), expires, &nonce);
    let ev = archipelago_attest::SimEvidenceSource::new(
        archipelago_attest::SimRoot::from_seed(&h.sim_seed),
        [7u8; 48],
    )
    .collect_at(&binding, now_secs());
    let r = h
        .post("/api/v1/island/attest", &t, json!({"nonce": b64::encode_std(&nonce), "enclave_public_key": ek.public().to_base64(),
            "key_expires_at": expires, "evidence": serde_json::from_str::<Value>(&ev.to_json()).unwrap()}))
        .await;
    assert_eq!(r.status, 403);
    // the heartbeat says attestation is due until one succeeds
    let hb = h
        .post(
            "/api/v1/island/heartbeat",
            &t,
            heartbeat_body(&sim_caps(), &[]),
        )
        .await;
    assert_eq!(hb.body["attestation_due"], true);
    h.attest(&t).await;
    let hb = h
        .post(
            "/api/v1/island/heartbeat",
            &t,
            heartbeat_body(&sim_caps(), &[]),
        )
        .await;
    assert_eq!(hb.body["attestation_due"], false);
    // one enclave key cannot be claimed by a second island
    let (ek1, _) = h.attest(&t).await;
    let r = h.attest_with(&t2, &ek1.public(), &h.sim_seed).await;
    assert_eq!(r.status, 409);
    h.finish().await;
}
both!(attestation_t, attestation_refusals);

async fn he_placement(b: Backend) {
    let h = Harness::start(b).await;
    let (_, user) = h.user(10_000).await;
    let (sk, pm) = archipelago_he::generate_keypair().unwrap();
    let he = b64::encode_std(pm.to_bytes());
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &user,
            json!({"public_key": he, "kind": "he-bfv"}),
        )
        .await;
    let kid = r.body["key_id"].as_str().unwrap().to_string();
    let (_, tplain) = h.island(plain_caps()).await;
    let (_, the) = h.island(he_caps()).await;
    let job = |workload: i64, ct: &[u8]| {
        json!({"workload_id": workload, "confidential": true, "encryption_key_id": kid,
            "input": {"encrypted": true, "key_id": kid, "ciphertext": b64::encode_url(ct)}})
    };
    let schema = archipelago_he::AggregateSchema {
        columns: vec![archipelago_he::AggregateColumn::Value {
            name: "v".into(),
            scale: 1.0,
            min: 0.0,
            max: 10.0,
        }],
    };
    let agg = archipelago_he::encrypt_records(&sk, &schema, &[vec![1.0], vec![2.0]]).unwrap();
    let x: Vec<f32> = (0..384).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
    let cls = archipelago_he::encrypt_features(&sk, &x).unwrap();
    // refused at submission, reading only the header and key id
    let (_, other) = archipelago_he::generate_keypair().unwrap();
    let for_other = archipelago_he::encrypt_features(&other, &x).unwrap();
    for (body, why) in [
        (job(4, &[1u8; 64]), "not an ARHE message"),
        (job(4, &cls), "a classify request for he-aggregate"),
        (job(3, &agg), "an aggregate request for classify"),
        (job(3, pm.to_bytes()), "public material as a request"),
        (job(3, &for_other), "a request for another key"),
        (job(3, &cls[..20]), "truncated before the key id"),
        (job(2, &cls), "embed has no homomorphic mode"),
    ] {
        let r = h.post("/api/v1/jobs", &user, body).await;
        assert_eq!(r.status, 422, "{why}: {:?}", r.body);
    }
    let mut unknown_params = cls.clone();
    unknown_params[6] = 0x7f;
    let r = h.post("/api/v1/jobs", &user, job(3, &unknown_params)).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert!(r.body["error"]["fields"][0]["message"]
        .as_str()
        .unwrap()
        .contains("parameter set"));
    let r = h.post("/api/v1/jobs", &user, job(4, &agg)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["mode"], "he");
    let r = h.post("/api/v1/jobs", &user, job(3, &cls)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["mode"], "he");
    assert_eq!(h.lease(&tplain, 0).await.status, 204);
    let l = h.lease(&the, 1000).await;
    assert_eq!(l.status, 200);
    assert_eq!(l.body["mode"], "he");
    let r = h.get(&format!("/api/v1/island/he-keys/{kid}"), &the).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["public_key"], he);
    // the classify HE job goes to the HE-capable island too (runtime `he`)
    let l2 = h.lease(&the, 1000).await;
    assert_eq!(l2.status, 200);
    assert_eq!(l2.body["mode"], "he");
    assert_eq!(l2.body["runtime"], "he");
    // unknown key / a key of another kind
    let r = h
        .get("/api/v1/island/he-keys/ck_aaaaaaaaaaaaaaaaaaaaaaaaaa", &the)
        .await;
    assert_eq!(r.status, 404);
    let x = SecretKey::generate();
    let r = h
        .post(
            "/api/v1/confidential/keys",
            &user,
            json!({"public_key": x.public().to_base64()}),
        )
        .await;
    let xid = r.body["key_id"].as_str().unwrap().to_string();
    let r = h.get(&format!("/api/v1/island/he-keys/{xid}"), &the).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["error"]["code"], "wrong_key_kind");
    // he-aggregate has no plain mode
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 4, "input": {}}),
        )
        .await;
    assert_eq!(r.status, 422);
    let s = h.get("/api/v1/confidential/stats", &user).await.body;
    assert_eq!(s["he_capable_hosts"], 1);
    assert_eq!(s["he_jobs"]["assigned"], 2, "{s}");
    assert_eq!(s["he_jobs"]["queued"], 0, "{s}");
    assert_eq!(s["tee_jobs"]["assigned"], 0, "{s}");
    assert!(s["tee_types"].is_object() && s["attested_hosts"].is_number());
    // A deleted key takes no more jobs at once, although the submissions
    // above had its facts cached.
    let r = h
        .call(
            Method::DELETE,
            &format!("/api/v1/confidential/keys/{kid}"),
            Some(&user),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = h.post("/api/v1/jobs", &user, job(4, &agg)).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.body["error"]["fields"][0]["field"], "encryption_key_id");
    h.finish().await;
}
both!(he_t, he_placement);

async fn lease_expiry_and_requeue(b: Backend) {
    let h = Harness::start_with(b, true, |c| {
        c.lease_secs = 1;
        c.offline_after_secs = 1;
    })
    .await;
    let (_, user) = h.user(10_000).await;
    let (_, t1) = h.island(plain_caps()).await;
    let (_, t2) = h.island(plain_caps()).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {}}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let l = h.lease(&t1, 1000).await;
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    // renewals keep it
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        h.post(
            &format!("/api/v1/island/jobs/{id}/renew"),
            &t1,
            json!({"lease_id": lease})
        )
        .await
        .status,
        200
    );
    // then island 1 goes silent: the job returns to the queue
    let j = h.wait_state(&user, &id, "queued").await;
    assert_eq!(j["attempts"], 1);
    // the island that lost it may not lease it again, another may
    assert_eq!(h.lease(&t1, 0).await.status, 204);
    let l2 = h.lease(&t2, 1000).await;
    assert_eq!(l2.body["job_id"], id.as_str());
    // the late result of island 1 is refused
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &t1,
            json!({"lease_id": lease, "outcome": "succeeded", "output": {}}),
        )
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "lease_lost");
    let lease2 = l2.body["lease_id"].as_str().unwrap().to_string();
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{id}/result"),
            &t2,
            json!({"lease_id": lease2, "outcome": "succeeded", "output": {}}),
        )
        .await;
    assert_eq!(r.status, 200);
    // islands without heartbeats go offline
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let isl = h.get("/api/v1/islands", &user).await.body;
    assert!(isl["islands"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["status"] == "offline"));
    let m = h
        .call(Method::GET, "/metrics", None, None)
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        m.contains("archipelago_lease_expiries_total 1")
            || m.contains("archipelago_lease_expiries_total 2"),
        "{m}"
    );

    // TEE: with its only recipient's island gone, the job fails and tells the client to re-encrypt
    let (ck, kid) = h.client_key(&user).await;
    let (_, ts) = h.island(sim_caps()).await;
    let (ek, _) = h.attest(&ts).await;
    let r = h
        .submit_sealed(&user, &ck, &kid, 5, &[ek.public()], json!({}))
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(h.lease(&ts, 1000).await.status, 200);
    let j = h.wait_state(&user, &id, "failed").await;
    assert_eq!(j["error"]["code"], "no_enclave_available");
    let acc = h.get("/api/v1/account", &user).await.body;
    assert_eq!(acc["held"], 0, "every hold settled");
    h.finish().await;
}
both!(lease_expiry_t, lease_expiry_and_requeue);

/// `POST /island/jobs/{id}/release`: only the leasing island, under its
/// live lease, may give a job back; it is requeued at once (long before the
/// lease would lapse) for the envelope's other recipients only, fails with
/// the re-encrypt error when none is left, and is never charged.
async fn release_requeues_now(b: Backend) {
    // Leases of 60 s: anything requeued within this test was released.
    let h = Harness::start_with(b, true, |c| c.lease_secs = 60).await;
    let (_, user) = h.user(10_000).await;
    let (ck, kid) = h.client_key(&user).await;
    let (_, ta) = h.island(sim_caps()).await;
    let (_, tb) = h.island(sim_caps()).await;
    let (_, tplain) = h.island(plain_caps()).await;
    let (eka, ida) = h.attest(&ta).await;
    let (ekb, idb) = h.attest(&tb).await;
    let r = h
        .submit_sealed(
            &user,
            &ck,
            &kid,
            5,
            &[eka.public(), ekb.public()],
            json!({}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let (holder, other) = (ta.clone(), tb.clone());
    let l = h.lease(&holder, 1000).await;
    assert_eq!(l.status, 200, "{:?}", l.body);
    assert_eq!(l.body["job_id"], id.as_str());
    let lease = l.body["lease_id"].as_str().unwrap().to_string();
    let url = format!("/api/v1/island/jobs/{id}/release");
    // Authorization matrix.
    let r = h
        .call(Method::POST, &url, None, Some(json!({"lease_id": lease})))
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    let r = h.post(&url, &user, json!({"lease_id": lease})).await;
    assert_eq!(r.status, 401, "an API key is not an island token");
    for t in [&other, &tplain] {
        let r = h.post(&url, t, json!({"lease_id": lease})).await;
        assert_eq!(r.status, 404, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "not_found");
    }
    let r = h
        .post(
            "/api/v1/island/jobs/job_nope/release",
            &holder,
            json!({"lease_id": lease}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = h
        .post(&url, &holder, json!({"lease_id": "lease_other"}))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "lease_lost");
    let r = h
        .post(
            &url,
            &holder,
            json!({"lease_id": lease, "reason": "Not A Code"}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(h.job(&user, &id).await["state"], "assigned");
    // The holder releases: queued now, not after the 60 s lease.
    let r = h
        .post(
            &url,
            &holder,
            json!({"lease_id": lease, "reason": "draining"}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "queued");
    let j = h.job(&user, &id).await;
    assert_eq!(j["state"], "queued");
    assert_eq!(j["attempts"], 1);
    // Releasing again is refused: the lease is gone.
    let r = h.post(&url, &holder, json!({"lease_id": lease})).await;
    assert_eq!(r.status, 404);
    // Never back to the releasing island; the other recipient takes it.
    assert_eq!(h.lease(&holder, 0).await.status, 204);
    let l2 = h.lease(&other, 1000).await;
    assert_eq!(l2.status, 200);
    assert_eq!(l2.body["job_id"], id.as_str());
    // The last recipient releases too: failed with the re-encrypt error,
    // refunded in full.
    let lease2 = l2.body["lease_id"].as_str().unwrap().to_string();
    let r = h.post(&url, &other, json!({"lease_id": lease2})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["state"], "failed");
    let j = h.job(&user, &id).await;
    assert_eq!(j["state"], "failed");
    assert_eq!(j["error"]["code"], "no_enclave_available");
    assert_eq!(j["cost"], 0);
    // Both recipients, sorted (the job query folds them into one column).
    let mut both = vec![ida.clone(), idb.clone()];
    both.sort();
    assert_eq!(j["recipients"], json!(both));

    // A plain job released by one island goes to another.
    let (_, tplain2) = h.island(plain_caps()).await;
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {}}),
        )
        .await;
    let pid = r.body["id"].as_str().unwrap().to_string();
    // A follower of the job's stream, across the release.
    let follower = h.follow(&user, &pid, "second attempt");
    let l = h.lease(&tplain, 1000).await;
    assert_eq!(l.body["job_id"], pid.as_str());
    let chunk_url = format!("/api/v1/island/jobs/{pid}/chunks");
    let chunk = |lease: &Value, data: &str| json!({"lease_id": lease, "seq": 0, "data": data});
    let first = chunk(&l.body["lease_id"], "first attempt");
    assert_eq!(h.post(&chunk_url, &tplain, first).await.status, 204);
    let r = h
        .post(
            &format!("/api/v1/island/jobs/{pid}/release"),
            &tplain,
            json!({"lease_id": l.body["lease_id"]}),
        )
        .await;
    assert_eq!(r.body["state"], "queued");
    assert_eq!(h.lease(&tplain, 0).await.status, 204);
    let l = h.lease(&tplain2, 1000).await;
    assert_eq!(l.body["job_id"], pid.as_str());
    // The next attempt's stream starts again at seq 0 and is what the
    // job's stream holds, not the released attempt's pieces.
    let second = chunk(&l.body["lease_id"], "second attempt");
    assert_eq!(h.post(&chunk_url, &tplain2, second).await.status, 204);
    let stored = h.store.chunks_after(&pid, -1).await.unwrap();
    assert_eq!(stored, vec![(0, "second attempt".to_string())]);
    // The follower is sent the new attempt's seq 0 too.
    let text = follower.await.unwrap();
    assert!(text.contains("second attempt"), "{text}");
    let acc = h.get("/api/v1/account", &user).await.body;
    assert!(
        acc["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["kind"] != "charge"),
        "a released job is charged nothing: {acc}"
    );
    h.finish().await;
}
both!(release_t, release_requeues_now);

async fn conservation(b: Backend) {
    let h = Harness::start_with(b, true, |c| {
        c.lease_secs = 1;
        c.max_attempts = 1;
    })
    .await;
    let mut users = Vec::new();
    for _ in 0..3 {
        users.push(h.user(5_000).await.1);
    }
    let (_, it) = h.island(plain_caps()).await;
    let mut rng = rand::thread_rng();
    let mut ids = Vec::new();
    for i in 0..24 {
        let u = &users[i % users.len()];
        let w = [1, 2, 3, 5][rng.gen_range(0..4)];
        let r = h
            .post(
                "/api/v1/jobs",
                u,
                json!({"workload_id": w, "input": {"n": i}}),
            )
            .await;
        assert!(r.status == 201 || r.status == 402, "{:?}", r.body);
        if r.status == 201 {
            ids.push((u.clone(), r.body["id"].as_str().unwrap().to_string()));
        }
    }
    let mut lapsed = 0;
    for (u, id) in &ids {
        if rng.gen_range(0..5) == 0 {
            let _ = h
                .call(Method::DELETE, &format!("/api/v1/jobs/{id}"), Some(u), None)
                .await;
            continue;
        }
        let l = h.lease(&it, 500).await;
        if l.status != 200 {
            continue;
        }
        let jid = l.body["job_id"].as_str().unwrap().to_string();
        let lease = l.body["lease_id"].as_str().unwrap().to_string();
        let url = format!("/api/v1/island/jobs/{jid}/result");
        match rng.gen_range(0..4) {
            0 => {
                h.post(
                    &url,
                    &it,
                    json!({"lease_id": lease, "outcome": "failed", "execution_ms": 3}),
                )
                .await;
            }
            1 => lapsed += 1,
            _ => {
                let ms = rng.gen_range(0..5000);
                let r = h.post(&url, &it, json!({"lease_id": lease, "outcome": "succeeded", "execution_ms": ms, "output": {}})).await;
                assert_eq!(r.status, 200);
                // retries settle nothing more
                h.post(&url, &it, json!({"lease_id": lease, "outcome": "succeeded", "execution_ms": ms, "output": {}})).await;
            }
        }
    }
    // cancel what is still queued, let lapsed leases expire
    for (u, id) in &ids {
        let _ = h
            .call(Method::DELETE, &format!("/api/v1/jobs/{id}"), Some(u), None)
            .await;
    }
    if lapsed > 0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    for (u, id) in &ids {
        let j = h.job(u, id).await;
        assert!(
            ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()),
            "{j:?}"
        );
    }
    let t = h.store.ledger_totals().await.unwrap();
    assert_eq!(t.sum, 0, "every ledger transaction balances");
    assert_eq!(t.held, 0, "no holds left");
    assert_eq!(t.projected_available, t.available);
    assert_eq!(t.projected_held, t.held);
    assert_eq!(t.issued, 1_000_000 + 3 * 5_000);
    assert_eq!(
        t.available + t.platform,
        t.issued,
        "balances + platform = credits granted"
    );
    let mut sum = 0;
    for a in h.store.accounts().await.unwrap() {
        sum += a.balance;
    }
    assert_eq!(sum + t.platform, t.issued);
    h.finish().await;
}
both!(conservation_t, conservation);

/// Two replicas on one PostgreSQL database: a job submitted to one wakes an
/// island long-polling the other at once (LISTEN/NOTIFY), not at its next
/// one-second re-check, and exactly one island gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_queue_postgres() {
    let h = Harness::start(Backend::Postgres).await;
    let (base_b, stop_b) = h.replica().await;
    let (_, user) = h.user(1000).await;
    let (_, it) = h.island(plain_caps()).await;
    let (_, it2) = h.island(plain_caps()).await;
    let http = h.http.clone();
    let poll = |token: String| {
        let (http, base) = (http.clone(), base_b.clone());
        tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            let r = http
                .post(format!("{base}/api/v1/island/lease"))
                .bearer_auth(token)
                .json(&json!({"wait_ms": 5000}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), t0)
        })
    };
    let p1 = poll(it.clone());
    let p2 = poll(it2.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let submitted = std::time::Instant::now();
    let r = h
        .post(
            "/api/v1/jobs",
            &user,
            json!({"workload_id": 5, "input": {}}),
        )
        .await;
    assert_eq!(r.status, 201);
    // whichever island wins, it wins fast; the other times out with 204
    let (s1, _) = p1.await.unwrap();
    let (s2, _) = p2.await.unwrap();
    let mut statuses = [s1, s2];
    statuses.sort();
    assert_eq!(statuses, [200, 204]);
    let j = h.job(&user, r.body["id"].as_str().unwrap()).await;
    assert_eq!(j["state"], "assigned");
    let leased_at = j["updated_at"].as_i64().unwrap();
    let created_at = j["created_at"].as_i64().unwrap();
    assert!(
        leased_at - created_at < 600,
        "cross-replica wake-up took {} ms (NOTIFY not delivered?)",
        leased_at - created_at
    );
    let _ = submitted;
    let _ = stop_b.send(());
    h.finish().await;
}

/// A database that a newer (or another) build migrated further is refused
/// with an error that names the unknown migration and what to do, and the
/// test harness's clean-up never opens (and so never migrates) any schema
/// but the test's own: a stray migration in `public` once failed every
/// PostgreSQL test of a later build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_migration_is_refused_clearly_postgres() {
    use archipelago_coordinator::{DbConfig, Store};
    let (store, schema) = fresh_store(Backend::Postgres).await;
    let schema = schema.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from a newer build', TRUE, '\\x00'::bytea, 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let cfg = DbConfig {
        url: pg_url(),
        schema: Some(schema.clone()),
        max_connections: 2,
        synchronous_commit: true,
    };
    let err = match Store::connect(&cfg).await {
        Ok(_) => panic!("a database with an unknown migration was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("migration 9999"), "{err}");
    assert!(err.contains("newer"), "{err}");
    Store::drop_schema(&pg_url(), &schema).await.unwrap();
    // The drop used a plain connection: the schema is gone and nothing was
    // created in its place.
    let (probe, probe_schema) = fresh_store(Backend::Postgres).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = $1",
    )
    .bind(&schema)
    .fetch_one(probe.pool())
    .await
    .unwrap();
    assert_eq!(left, 0);
    probe.close().await;
    Store::drop_schema(&pg_url(), &probe_schema.unwrap())
        .await
        .unwrap();
    assert!(Store::drop_schema(&pg_url(), "bad;name").await.is_err());
}
