//! OpenAI-compatible endpoints, each call a confidential TEE job run
//! transparently: the request is turned into the workload's input, sealed
//! on this machine to enclaves the user's policy accepts, and the answer
//! opened here. `model` may be the workload slug (`chat`, `embed`), its id
//! or its model name (`SmolLM2-135M-Instruct`, `all-MiniLM-L6-v2`).
//!
//! - `GET /v1/models`: confidential workloads.
//! - `POST /v1/chat/completions`: `messages`, `temperature`, `top_p`,
//!   `max_tokens` (or `max_completion_tokens`), `seed`, `stream`.
//! - `POST /v1/embeddings`: `input` (string or list), `encoding_format`
//!   `float` or `base64` (the Python client's default).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{GatewayError, GatewayState};
use crate::error::ClientError;
use crate::session::{Session, StreamEvent};
use archipelago_proto::api::Workload;

/// OpenAI's error shape: `{"error": {"message", "type", "code"}}`.
fn oai_error(e: GatewayError) -> Response {
    let kind = if e.status.is_client_error() {
        "invalid_request_error"
    } else {
        "api_error"
    };
    (
        e.status,
        Json(json!({"error": {"message": e.message, "type": kind, "code": e.code, "param": null}})),
    )
        .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn workloads(st: &GatewayState, headers: &HeaderMap) -> Result<Vec<Workload>, GatewayError> {
    Ok(st.api_for(headers)?.workloads().await?.workloads)
}

fn find_workload<'a>(
    list: &'a [Workload],
    model: &str,
    slug_default: &str,
) -> Result<&'a Workload, GatewayError> {
    let m = model.trim();
    list.iter()
        .find(|w| w.slug == m || w.id.to_string() == m || w.name.eq_ignore_ascii_case(m))
        .filter(|w| w.confidential)
        .ok_or_else(|| {
            GatewayError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "no confidential workload named {m:?}; use \"{slug_default}\" (GET /v1/models lists them)"
                ),
            )
        })
}

/// `GET /v1/models`.
pub async fn models(State(st): State<GatewayState>, headers: HeaderMap) -> Response {
    match workloads(&st, &headers).await {
        Ok(list) => Json(json!({
            "object": "list",
            "data": list.iter().filter(|w| w.confidential).map(|w| json!({
                "id": w.slug, "object": "model", "created": 0, "owned_by": "archipelago",
                "name": w.name, "workload_id": w.id,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => oai_error(e),
    }
}

/// The client key the gateway uses for OpenAI calls: the configured or
/// newest key, made and registered on first use.
async fn ensure_key(st: &GatewayState, headers: &HeaderMap) -> Result<String, GatewayError> {
    let session: &Session = &st.session;
    match session.key_meta(None) {
        Ok(k) => Ok(k.key_id.to_string()),
        Err(ClientError::Keystore(crate::error::KeystoreError::Empty { .. })) => {
            let (stored, _) = session
                .keystore()
                .create(Some("gateway"), None)
                .map_err(ClientError::from)?;
            let api = st.api_for(headers)?;
            let req = archipelago_proto::api::RegisterKeyRequest {
                public_key: stored.public_key.clone(),
                kind: Some(archipelago_proto::api::KEY_KIND_X25519.into()),
                key_id: Some(stored.key_id.to_string()),
                evaluation_keys: None,
                label: Some("gateway".into()),
            };
            api.register_key(&req).await?;
            Ok(stored.key_id.to_string())
        }
        Err(e) => Err(e.into()),
    }
}

/// A session for this call (the caller's API key upstream).
fn call_session(st: &GatewayState, headers: &HeaderMap) -> Result<Session, GatewayError> {
    let s = &st.session;
    let mut out = Session::new(
        st.api_for(headers)?,
        s.keystore().clone(),
        s.policy().clone(),
    );
    if let Some(r) = s.records() {
        out = out.with_records(r.clone());
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    max_tokens: Option<usize>,
    #[serde(default)]
    max_completion_tokens: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: Value,
}

fn message_text(content: &Value) -> Result<String, GatewayError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(|t| t.as_str()),
                    p.get("text").and_then(|t| t.as_str()),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(GatewayError::bad_request(
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Ok(String::new()),
        _ => Err(GatewayError::bad_request(
            "message content must be a string or text parts",
        )),
    }
}

fn delta_text(chunk: &[u8]) -> String {
    let mut out = String::new();
    for line in chunk.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            if let Some(d) = v.get("delta").and_then(|d| d.as_str()) {
                out.push_str(d);
            }
        }
    }
    out
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match chat_inner(st, headers, body).await {
        Ok(r) => r,
        Err(e) => oai_error(e),
    }
}

async fn chat_inner(
    st: GatewayState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let req: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(format!(
            "invalid chat completion request (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let list = workloads(&st, &headers).await?;
    let w = find_workload(&list, &req.model, "chat")?.clone();
    let mut messages = Vec::new();
    for m in &req.messages {
        messages.push(json!({"role": m.role, "content": message_text(&m.content)?}));
    }
    let input = match w.slug.as_str() {
        "chat" => json!({
            "messages": messages,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens.or(req.max_completion_tokens),
            "seed": req.seed,
        }),
        // The test workload: echoes the last user message.
        "echo" => json!({"prompt": req.messages.iter().rev().find(|m| m.role == "user")
            .map(|m| message_text(&m.content)).transpose()?.unwrap_or_default()}),
        _ => {
            return Err(GatewayError::bad_request(format!(
                "{} is not a chat model; use \"chat\"",
                req.model
            )))
        }
    };
    let input =
        Zeroizing::new(serde_json::to_vec(&input).map_err(|_| GatewayError::bad_request("input"))?);
    drop(messages);
    let key_id = ensure_key(&st, &headers).await?;
    let session = call_session(&st, &headers)?;
    let timeout = st.config.job_timeout;
    let created = now();
    let model = w.slug.clone();
    if !req.stream {
        let (job, out) = session.run(w.id, &input, Some(&key_id), timeout).await?;
        let v = out.json().unwrap_or(Value::Null);
        let text = v.get("text").and_then(|t| t.as_str()).unwrap_or("");
        let tokens = v.get("tokens").and_then(|t| t.as_u64()).unwrap_or(0);
        let finish = v
            .get("finish_reason")
            .and_then(|t| t.as_str())
            .unwrap_or("stop");
        return Ok(Json(json!({
            "id": format!("chatcmpl-{}", job.id),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null}],
            "usage": {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens},
            "system_fingerprint": out.enclave_key_id.as_str(),
        }))
        .into_response());
    }
    // Streaming: run the job in a task, relay decrypted deltas as they come.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Event, Infallible>>();
    tokio::spawn(async move {
        let id = format!("chatcmpl-{}", hex::encode(rand::random::<[u8; 8]>()));
        let chunk = move |delta: Value, finish: Value| -> Result<Event, Infallible> {
            let v = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
            });
            Ok(Event::default().data(v.to_string()))
        };
        let _ = tx.send(chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        ));
        let streamed = Arc::new(AtomicBool::new(false));
        let (txc, chunk_c, streamed_c) = (tx.clone(), chunk.clone(), streamed.clone());
        let mut on_event = move |ev: StreamEvent| {
            if let StreamEvent::Data(d) = ev {
                let text = delta_text(&d);
                if !text.is_empty() {
                    streamed_c.store(true, Ordering::Relaxed);
                    let _ = txc.send(chunk_c(json!({"content": text}), Value::Null));
                }
            }
        };
        match session
            .run_streaming(w.id, &input, Some(&key_id), timeout, &mut on_event)
            .await
        {
            Ok((_job, out)) => {
                let v = out.json().unwrap_or(Value::Null);
                // An enclave that did not stream still answers in full.
                if !streamed.load(Ordering::Relaxed) {
                    if let Some(text) = v.get("text").and_then(|t| t.as_str()) {
                        let _ = tx.send(chunk(json!({"content": text}), Value::Null));
                    }
                }
                let finish = v
                    .get("finish_reason")
                    .and_then(|t| t.as_str())
                    .unwrap_or("stop")
                    .to_string();
                let _ = tx.send(chunk(json!({}), Value::String(finish)));
            }
            Err(e) => {
                let ge = GatewayError::from(e);
                let _ = tx.send(Ok(Event::default().data(
                    json!({"error": {"message": ge.message, "type": "api_error", "code": ge.code}})
                        .to_string(),
                )));
            }
        }
        let _ = tx.send(Ok(Event::default().data("[DONE]")));
    });
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: Value,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match embeddings_inner(st, headers, body).await {
        Ok(r) => r,
        Err(e) => oai_error(e),
    }
}

async fn embeddings_inner(
    st: GatewayState,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let req: EmbeddingsRequest = serde_json::from_slice(&body).map_err(|e| {
        GatewayError::bad_request(format!(
            "invalid embeddings request (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let texts: Vec<String> = match &req.input {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.iter().all(|v| v.is_string()) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => {
            return Err(GatewayError::bad_request(
                "input must be a string or a list of strings (token arrays are not supported)",
            ))
        }
    };
    let base64_out = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(GatewayError::bad_request(format!(
                "encoding_format {other:?}: use float or base64"
            )))
        }
    };
    let list = workloads(&st, &headers).await?;
    let w = find_workload(&list, &req.model, "embed")?.clone();
    if w.slug != "embed" {
        return Err(GatewayError::bad_request(format!(
            "{} is not an embedding model; use \"embed\"",
            req.model
        )));
    }
    let input = Zeroizing::new(
        serde_json::to_vec(&json!({"texts": texts}))
            .map_err(|_| GatewayError::bad_request("input"))?,
    );
    drop(texts);
    let key_id = ensure_key(&st, &headers).await?;
    let session = call_session(&st, &headers)?;
    let (_job, out) = session
        .run(w.id, &input, Some(&key_id), st.config.job_timeout)
        .await?;
    let v = out.json().unwrap_or(Value::Null);
    let embs = v
        .get("embeddings")
        .and_then(|e| e.as_array())
        .ok_or_else(|| {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "bad_output",
                "the enclave's output has no embeddings",
            )
        })?;
    let mut data = Vec::new();
    for (i, e) in embs.iter().enumerate() {
        let floats: Vec<f32> = e
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default();
        let embedding = if base64_out {
            let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            json!(floats)
        };
        data.push(json!({"object": "embedding", "index": i, "embedding": embedding}));
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": w.slug,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }))
    .into_response())
}
