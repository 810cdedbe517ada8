//! The product page's confidential endpoints, served on the user's machine.
//!
//! `/encrypt` body: `{"input": <JSON>, "key_id", "workload_id"?}`. With
//! `workload_id` the envelope is bound to that workload and sealed to K
//! enclaves, verified with the user's policy, that serve it; the ciphertext
//! can then be submitted anywhere (this gateway or the coordinator).
//! **Without `workload_id` nothing binds the workload**: the envelope is
//! sealed with workload 0 to enclaves serving any workload, and the
//! coordinator would refuse it for a real workload. This gateway's
//! `POST /api/v1/jobs` therefore re-seals such an input for the job's
//! workload (to enclaves that serve it) from a copy held in memory only, for
//! at most an hour; submitted elsewhere or later, it is refused — pass
//! `workload_id` to bind it from the start.
//!
//! HE keys (`he-bfv`) take the paths in [`super::he`]: `/keys` with
//! `{"kind": "he-bfv"}`, `/encrypt` with an HE `key_id`, `/decrypt` of an
//! output whose ciphertext is an `ARHE` message.
//!
//! `/decrypt` body: `{"output": {"encrypted": true, "key_id", "ciphertext",
//! ...}, "key_id"}` → `{"output": <decrypted JSON>, "key_id",
//! "enclave_key_id"}`. The output opens only if it answers a request this
//! machine sealed, was written by one of the enclaves chosen for it, and
//! is addressed to `key_id`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{GatewayError, GatewayState, Unbound, MAX_UNBOUND, UNBOUND_TTL};
use crate::error::ClientError;
use crate::session::{open_payload, UNBOUND_WORKLOAD};
use archipelago_proto::api::{EncryptedPayload, SubmitJobRequest};
use archipelago_proto::b64;
use archipelago_proto::envelope::{peek_response_header, MAX_INPUT_LEN};

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|e| {
        GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("expected {shape} (line {} column {})", e.line(), e.column()),
        )
    })
}

/// `POST /api/v1/confidential/keys`.
pub async fn create_key(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let trimmed = body.iter().all(|b| b.is_ascii_whitespace());
    let v: serde_json::Value = if trimmed {
        serde_json::json!({})
    } else {
        parse(
            &body,
            "an empty body (make a key here) or {\"public_key\", \"kind\"?}",
        )?
    };
    if v.get("public_key").is_some() {
        // A key made elsewhere: pass it through.
        return super::proxy::forward(
            &st,
            Method::POST,
            "/api/v1/confidential/keys",
            None,
            &headers,
            body,
        )
        .await;
    }
    let label = v
        .get("label")
        .and_then(|l| l.as_str())
        .map(|s| s.chars().take(128).collect::<String>());
    let api = st.api_for(&headers)?;
    match v.get("kind").and_then(|k| k.as_str()) {
        None | Some(archipelago_proto::api::KEY_KIND_X25519) => {}
        Some(archipelago_proto::api::KEY_KIND_HE_BFV) => {
            return super::he::create_key(&st, &api, label).await
        }
        Some(_) => {
            return Err(GatewayError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "kind must be \"x25519\" (default) or \"he-bfv\"",
            ))
        }
    }
    let session = &st.session;
    let (stored, _sk) = session
        .keystore()
        .create(label.as_deref(), None)
        .map_err(ClientError::from)?;
    let req = archipelago_proto::api::RegisterKeyRequest {
        public_key: stored.public_key.clone(),
        kind: Some(archipelago_proto::api::KEY_KIND_X25519.into()),
        key_id: Some(stored.key_id.to_string()),
        evaluation_keys: None,
        label,
    };
    match api.register_key(&req).await {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(e) => {
            // Do not keep a key the coordinator does not know.
            let _ = session.keystore().delete(stored.key_id.as_str());
            Err(e.into())
        }
    }
}

/// `DELETE /api/v1/confidential/keys/{key_id}`: at the coordinator, then
/// the local secret.
pub async fn delete_key(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    Path(key_id): Path<String>,
) -> Result<Response, GatewayError> {
    let api = st.api_for(&headers)?;
    api.delete_key(&key_id).await?;
    let ks = st.session.keystore();
    if ks.is_he_key(&key_id) {
        let _ = ks.delete_he(&key_id);
    } else {
        let _ = ks.delete(&key_id);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    input: serde_json::Value,
    key_id: Option<String>,
    #[serde(default)]
    workload_id: Option<i64>,
}

/// `POST /api/v1/confidential/encrypt`.
pub async fn encrypt(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let req: EncryptBody = parse(
        &body,
        "{\"input\": {...}, \"key_id\": \"ck_…\", \"workload_id\"?: n}",
    )?;
    let input = zeroize::Zeroizing::new(
        serde_json::to_vec(&req.input)
            .map_err(|_| GatewayError::bad_request("input is not JSON"))?,
    );
    if input.len() > MAX_INPUT_LEN {
        return Err(GatewayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "input_too_large",
            format!("input is more than {MAX_INPUT_LEN} bytes"),
        ));
    }
    let session = &st.session;
    if let Some(k) = req
        .key_id
        .as_deref()
        .filter(|k| session.keystore().is_he_key(k))
    {
        return super::he::encrypt(&st, k, &req.input, req.workload_id).await;
    }
    let meta = session
        .key_meta(req.key_id.as_deref())
        .map_err(GatewayError::from)?;
    let key = session.load_key(meta.key_id.as_str())?;
    let api = st.api_for(&headers)?;
    let sealed = seal_with(&st, &api, req.workload_id, &input, &key).await?;
    let payload = sealed.payload();
    if req.workload_id.is_none() {
        let mut map = st.unbound.lock().map_err(|_| {
            GatewayError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "state lock poisoned",
            )
        })?;
        map.retain(|_, u| u.at.elapsed() < UNBOUND_TTL);
        if map.len() >= MAX_UNBOUND {
            return Err(GatewayError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_unbound_inputs",
                "too many inputs encrypted without workload_id are waiting; pass workload_id to /encrypt",
            ));
        }
        map.insert(
            Sha256::digest(payload.ciphertext.as_bytes()).into(),
            Unbound {
                input: input.clone(),
                key_id: meta.key_id.to_string(),
                at: std::time::Instant::now(),
            },
        );
    }
    let recipients: Vec<String> = sealed
        .recipients
        .iter()
        .map(|r| r.key_id.to_string())
        .collect();
    Ok(Json(serde_json::json!({
        "encrypted": true,
        "key_id": payload.key_id,
        "ciphertext": payload.ciphertext,
        "workload_id": req.workload_id,
        "workload_bound": req.workload_id.is_some(),
        "recipients": recipients,
    }))
    .into_response())
}

async fn seal_with(
    st: &GatewayState,
    api: &crate::http::ApiClient,
    workload_id: Option<i64>,
    input: &[u8],
    key: &archipelago_proto::SecretKey,
) -> Result<crate::session::Sealed, GatewayError> {
    let session = &st.session;
    let list = api.enclaves(workload_id).await?;
    let a = crate::verify::appraise_enclaves(
        &list.enclaves,
        session.policy(),
        crate::verify::now_secs(),
    );
    let mut accepted = a.accepted;
    if let Some(w) = workload_id {
        accepted.retain(|e| e.workload_ids.is_empty() || e.workload_ids.contains(&w));
    }
    if accepted.is_empty() {
        return Err(ClientError::NoAcceptableEnclave {
            workload_id,
            refused: a.refused,
        }
        .into());
    }
    let k = crate::config::DEFAULT_RECIPIENTS;
    let chosen = crate::verify::pick_recipients(&accepted, k);
    Ok(session.seal_to(workload_id, input, key, chosen)?)
}

/// `POST /api/v1/jobs`: passed through; unbound envelopes are re-sealed.
pub async fn submit_job(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let Ok(mut req) = serde_json::from_slice::<SubmitJobRequest>(&body) else {
        // Let the coordinator explain what is wrong with it.
        return super::proxy::forward(&st, Method::POST, "/api/v1/jobs", None, &headers, body)
            .await;
    };
    let payload = serde_json::from_value::<EncryptedPayload>(req.input.clone()).ok();
    let unbound = match &payload {
        Some(p) if req.confidential => {
            let digest: [u8; 32] = Sha256::digest(p.ciphertext.as_bytes()).into();
            let header_workload = b64::decode_any(&p.ciphertext, super::MAX_BODY_BYTES)
                .ok()
                .and_then(|b| archipelago_proto::peek_header(&b).ok())
                .map(|h| h.workload_id);
            if header_workload == Some(UNBOUND_WORKLOAD) {
                let mut map = st.unbound.lock().map_err(|_| {
                    GatewayError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "state lock poisoned",
                    )
                })?;
                Some(map.remove(&digest).ok_or_else(|| {
                    GatewayError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "unbound_envelope",
                        "this ciphertext was encrypted without workload_id and this gateway no longer holds its input \
                         (expired after an hour, used once already, or encrypted elsewhere); encrypt again, preferably \
                         with \"workload_id\"",
                    )
                })?)
            } else {
                None
            }
        }
        _ => None,
    };
    let Some(u) = unbound else {
        let api = st.api_for(&headers)?;
        let job = submit_and_record(&st, &api, &req, &headers).await?;
        return Ok((StatusCode::CREATED, Json(job)).into_response());
    };
    if req.encryption_key_id.as_deref() != Some(u.key_id.as_str()) {
        return Err(GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "key_mismatch",
            "encryption_key_id differs from the key the input was encrypted with",
        ));
    }
    let key = st.session.load_key(&u.key_id)?;
    let api = st.api_for(&headers)?;
    let sealed = seal_with(&st, &api, Some(req.workload_id), &u.input, &key).await?;
    req.input =
        serde_json::to_value(sealed.payload()).map_err(|_| GatewayError::bad_request("payload"))?;
    tracing::info!(
        workload_id = req.workload_id,
        "unbound input re-sealed for the job's workload"
    );
    let job = submit_and_record(&st, &api, &req, &headers).await?;
    Ok((StatusCode::CREATED, Json(job)).into_response())
}

async fn submit_and_record(
    _st: &GatewayState,
    api: &crate::http::ApiClient,
    req: &SubmitJobRequest,
    headers: &HeaderMap,
) -> Result<archipelago_proto::api::Job, GatewayError> {
    let idem = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    Ok(api.submit_job(req, idem).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptBody {
    output: serde_json::Value,
    key_id: Option<String>,
    /// he-aggregate outputs: the schema the records were encrypted with.
    #[serde(default)]
    schema: Option<serde_json::Value>,
}

/// `POST /api/v1/confidential/decrypt`.
pub async fn decrypt(
    State(st): State<GatewayState>,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let req: DecryptBody = parse(
        &body,
        "{\"output\": {\"encrypted\": true, ...}, \"key_id\": \"ck_…\"}",
    )?;
    // Accept the whole job object too.
    let (output, job_id) = match req.output.get("output") {
        Some(inner) if req.output.get("state").is_some() => (
            inner.clone(),
            req.output
                .get("id")
                .and_then(|i| i.as_str())
                .unwrap_or("")
                .to_string(),
        ),
        _ => (req.output.clone(), String::new()),
    };
    let payload: EncryptedPayload = serde_json::from_value(output).map_err(|_| {
        GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_output",
            "output must be the job's {\"encrypted\": true, \"key_id\", \"ciphertext\", \"enclave_key_id\"?}",
        )
    })?;
    if let Some(k) = &req.key_id {
        if *k != payload.key_id {
            return Err(GatewayError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "key_mismatch",
                format!("the output is sealed to {}, not to {k}", payload.key_id),
            ));
        }
    }
    let bytes = b64::decode_any(&payload.ciphertext, super::MAX_BODY_BYTES).map_err(|e| {
        GatewayError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_output",
            format!("output.ciphertext: {e}"),
        )
    })?;
    if bytes.starts_with(&archipelago_he::wire::MAGIC) {
        return super::he::decrypt(&st, &payload.key_id, &bytes, req.schema.as_ref());
    }
    let view = peek_response_header(&bytes).map_err(ClientError::from)?;
    let records = st
        .session
        .records()
        .ok_or_else(|| ClientError::UnknownRequest {
            request_id: hex::encode(view.request_id),
        })?;
    let record = records
        .get(&view.request_id)
        .map_err(ClientError::from)?
        .ok_or_else(|| ClientError::UnknownRequest {
            request_id: hex::encode(view.request_id),
        })?;
    let key = st.session.load_key(&payload.key_id)?;
    let out = open_payload(&payload, &record, &key, &job_id)?;
    let value = out.json().unwrap_or_else(|| {
        serde_json::Value::String(String::from_utf8_lossy(out.data()).into_owned())
    });
    Ok(Json(serde_json::json!({
        "output": value,
        "key_id": payload.key_id,
        "enclave_key_id": out.enclave_key_id.as_str(),
    }))
    .into_response())
}
