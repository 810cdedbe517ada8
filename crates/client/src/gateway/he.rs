//! The gateway's homomorphic (`he-bfv`) paths, called from [`super::seed`]:
//!
//! - `POST /confidential/keys` `{"kind": "he-bfv", "label"?}` (no
//!   `public_key`): makes an HE key here and registers its public material.
//! - `POST /confidential/encrypt` with an HE `key_id`: `{"input": {"text"}}`
//!   (embedded here with MiniLM, for `he-classify`), `{"input":
//!   {"features": [384 floats, L2-normalised]}}`, or `{"input": {"schema",
//!   "records"}}` (`he-aggregate`) → `{"encrypted": true, "key_id",
//!   "ciphertext", "mode": "he", "workload_id", "kind"}`.
//! - `POST /confidential/decrypt` of an HE job output (detected by its
//!   `ARHE` header): a classify response → `{"output": {"labels": [{"label",
//!   "score"}…], "label"}, "key_id", "mode": "he"}`; an aggregate response
//!   needs the `"schema"` it was encrypted with → `{"output": {"count",
//!   "columns"}, …}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{GatewayError, GatewayState};
use crate::error::ClientError;
use crate::he::{
    aggregate_json, classify_head, decrypt_classification, embed_text, local_embedder,
};
use archipelago_he::{AggregateSchema, MessageKind};
use archipelago_proto::b64;

/// The coordinator's `classify` workload id (its HE mode is he-classify).
pub const CLASSIFY_WORKLOAD_ID: i64 = 3;
/// The coordinator's `he-aggregate` workload id.
pub const AGGREGATE_WORKLOAD_ID: i64 = 4;

fn unprocessable(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
}

/// Makes and registers an HE key.
pub async fn create_key(
    st: &GatewayState,
    api: &crate::http::ApiClient,
    label: Option<String>,
) -> Result<Response, GatewayError> {
    let ks = st.session.keystore();
    let (stored, _sk, pm) = ks
        .create_he(label.as_deref(), st.session.passphrase_ref())
        .map_err(ClientError::from)?;
    let req = archipelago_proto::api::RegisterKeyRequest {
        public_key: b64::encode_std(pm.to_bytes()),
        kind: Some(archipelago_proto::api::KEY_KIND_HE_BFV.into()),
        key_id: Some(stored.key_id.clone()),
        evaluation_keys: None,
        label,
    };
    match api.register_key(&req).await {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(e) => {
            let _ = ks.delete_he(&stored.key_id);
            Err(e.into())
        }
    }
}

/// Encrypts an input to an HE key.
pub async fn encrypt(
    st: &GatewayState,
    key_id: &str,
    input: &Value,
    workload_id: Option<i64>,
) -> Result<Response, GatewayError> {
    let sk = st.session.load_he_key(key_id)?;
    let obj = input.as_object().ok_or_else(|| {
        unprocessable(
            "invalid_input",
            "an HE input is {\"text\"}, {\"features\": [...]} or {\"schema\", \"records\"}",
        )
    })?;
    let (request, workload, kind) = if let Some(text) = obj.get("text") {
        let text = Zeroizing::new(
            text.as_str()
                .ok_or_else(|| unprocessable("invalid_input", "input.text must be a string"))?
                .to_string(),
        );
        let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ClientError> {
            let e = local_embedder()?;
            let x = embed_text(&e, &text)?;
            archipelago_he::encrypt_features(&*sk, &x).map_err(|e| ClientError::He(e.to_string()))
        })
        .await
        .map_err(|_| ClientError::He("the encryption task stopped".into()))??;
        (bytes, CLASSIFY_WORKLOAD_ID, "he-classify")
    } else if let Some(f) = obj.get("features") {
        let x: Zeroizing<Vec<f32>> = Zeroizing::new(
            serde_json::from_value(f.clone())
                .map_err(|_| unprocessable("invalid_input", "input.features must be numbers"))?,
        );
        let bytes = archipelago_he::encrypt_features(&*sk, &x)
            .map_err(|e| ClientError::He(e.to_string()))?;
        (bytes, CLASSIFY_WORKLOAD_ID, "he-classify")
    } else if let (Some(schema), Some(records)) = (obj.get("schema"), obj.get("records")) {
        let schema: AggregateSchema = serde_json::from_value(schema.clone())
            .map_err(|e| unprocessable("invalid_input", format!("input.schema: {e}")))?;
        let records: Vec<Vec<f64>> = serde_json::from_value(records.clone()).map_err(|_| {
            unprocessable("invalid_input", "input.records must be arrays of numbers")
        })?;
        let bytes = archipelago_he::encrypt_records(&*sk, &schema, &records)
            .map_err(|e| ClientError::He(e.to_string()))?;
        (bytes, AGGREGATE_WORKLOAD_ID, "he-aggregate")
    } else {
        return Err(unprocessable(
            "invalid_input",
            "an HE input is {\"text\"}, {\"features\": [...]} or {\"schema\", \"records\"}",
        ));
    };
    if let Some(w) = workload_id {
        if w != workload {
            return Err(unprocessable(
                "invalid_input",
                format!("this input is for {kind} (workload {workload}), not workload {w}"),
            ));
        }
    }
    Ok(Json(json!({
        "encrypted": true,
        "key_id": key_id,
        "ciphertext": b64::encode_url(&request),
        "mode": "he",
        "kind": kind,
        "workload_id": workload,
        "workload_bound": true,
    }))
    .into_response())
}

/// Decrypts an HE job output (`bytes` is its decoded ciphertext).
pub fn decrypt(
    st: &GatewayState,
    key_id: &str,
    bytes: &[u8],
    schema: Option<&Value>,
) -> Result<Response, GatewayError> {
    let kind = archipelago_he::peek_header(bytes)
        .map_err(|e| ClientError::He(e.to_string()))?
        .kind;
    let sk = st.session.load_he_key(key_id)?;
    let output = match kind {
        MessageKind::ClassifyResponse => {
            let head = classify_head()?;
            let c = decrypt_classification(&sk, bytes, &head)?;
            let mut v = c.to_json(crate::he::DEFAULT_TOP_K);
            v["label"] = Value::String(c.label().to_string());
            v
        }
        MessageKind::AggregateResponse => {
            let schema = schema.ok_or_else(|| {
                unprocessable(
                    "schema_required",
                    "an he-aggregate output decrypts only with the \"schema\" its records were encrypted with",
                )
            })?;
            let schema: AggregateSchema = serde_json::from_value(schema.clone())
                .map_err(|e| unprocessable("invalid_body", format!("schema: {e}")))?;
            let r = archipelago_he::decrypt_aggregate(&sk, &schema, bytes)
                .map_err(|e| ClientError::He(e.to_string()))?;
            aggregate_json(&r)
        }
        other => {
            return Err(unprocessable(
                "invalid_output",
                format!("an {} is not a job output", other.name()),
            ))
        }
    };
    Ok(Json(json!({"output": output, "key_id": key_id, "mode": "he"})).into_response())
}
