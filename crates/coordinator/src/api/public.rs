//! User-facing handlers (`Authorization: Bearer ak_…`): health, workloads,
//! account and ledger, API keys, administration, the confidential key
//! registry, attested enclaves, stats, jobs and their SSE stream, islands.
//!
//! Confidential inputs are only ever inspected as far as the envelope
//! header (recipients, workload id, client key id); the body stays sealed.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use archipelago_proto::api::{self, EncryptedPayload, SubmitJobRequest};
use archipelago_proto::{b64, KeyId, KeyPrefix};

use super::views;
use crate::app::{ApiJson, AppState, Auth};
use crate::error::{ApiError, ApiResult};
use crate::store::{ClientKeyRow, JobRow, NewJob, SubmitOutcome};
use crate::util::{now_ms, now_secs};

/// The runtime HE-capable islands report and HE jobs require.
pub const HE_RUNTIME: &str = "he";

/// Largest HE public material accepted, base64 characters (the decoded
/// limit is `archipelago_he::MAX_PUBLIC_MATERIAL_BYTES`; padding and
/// whitespace slack on top).
const MAX_HE_PUBLIC_B64: usize = archipelago_he::MAX_PUBLIC_MATERIAL_BYTES.div_ceil(3) * 4 + 8;

/// Checks an `he-bfv` registration: the public material parses under a
/// known parameter set (strictly, every coefficient reduced), is within the
/// size limit (413 beyond it), and gives the key id (sha256 over the whole
/// message, header with kind and parameter set included).
fn he_public_material(req: &api::RegisterKeyRequest) -> ApiResult<(KeyId, String, String)> {
    if req.evaluation_keys.is_some() {
        return Err(ApiError::field(
            "evaluation_keys",
            "he-bfv keys of this build need no separate evaluation keys: the public material in public_key is all an island uses (one plaintext x ciphertext product, no relinearisation or rotation keys); omit the field",
        ));
    }
    let too_large = |len: usize| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the he-bfv public material is {len} bytes; the limit is {} (parameter set {} needs {})",
                archipelago_he::MAX_PUBLIC_MATERIAL_BYTES,
                archipelago_he::ParamSet::DEFAULT.name(),
                archipelago_he::keys::public_material_len(archipelago_he::ParamSet::DEFAULT)
            ),
        )
    };
    let pk = b64::decode_any(&req.public_key, MAX_HE_PUBLIC_B64).map_err(|e| match e {
        b64::B64Error::TooLong { len, .. } => too_large(len / 4 * 3),
        e => ApiError::field("public_key", format!("he-bfv public material: {e}")),
    })?;
    if pk.len() > archipelago_he::MAX_PUBLIC_MATERIAL_BYTES {
        return Err(too_large(pk.len()));
    }
    let pm = archipelago_he::HePublicMaterial::from_bytes(&pk).map_err(|e| {
        let hint = if pk.len() == 32 {
            " (32 bytes looks like an X25519 key: send \"kind\": \"x25519\")"
        } else {
            ""
        };
        ApiError::field(
            "public_key",
            format!("not usable he-bfv public material: {e}{hint}"),
        )
    })?;
    let id = KeyId::parse(pm.key_id()).map_err(|_| ApiError::internal())?;
    debug_assert_eq!(id, KeyId::for_material(KeyPrefix::Client, &pk));
    Ok((id, b64::encode_std(&pk), pm.param_set().name().to_string()))
}

#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, body = api::Health)))]
pub async fn health(State(st): State<AppState>) -> ApiResult<Json<api::Health>> {
    st.store
        .ping()
        .await
        .map_err(|_| ApiError::unavailable("the database does not answer"))?;
    Ok(Json(api::Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        database: st.store.kind().as_str().into(),
    }))
}

#[utoipa::path(get, path = "/api/v1/workloads", responses((status = 200, body = api::WorkloadList)))]
pub async fn workloads(
    State(st): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<api::WorkloadList>> {
    auth.require("read")?;
    let list = st.workloads().await?;
    Ok(Json(api::WorkloadList {
        workloads: list.iter().map(views::workload).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/workloads/{id}", responses((status = 200, body = api::Workload), (status = 404, body = api::ErrorBody)))]
pub async fn workload(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<i64>,
) -> ApiResult<Json<api::Workload>> {
    auth.require("read")?;
    let w = st
        .workload(id)
        .await?
        .ok_or_else(|| ApiError::not_found("workload"))?;
    Ok(Json(views::workload(&w)))
}

#[utoipa::path(get, path = "/api/v1/account", responses((status = 200, body = api::AccountView)))]
pub async fn account(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<api::AccountView>> {
    auth.require("read")?;
    let a = st
        .store
        .account(auth.account_id())
        .await?
        .ok_or_else(|| ApiError::not_found("account"))?;
    let ledger = st.store.ledger_for(&a.id, 50).await?;
    Ok(Json(api::AccountView {
        id: a.id,
        name: a.name,
        balance: a.balance,
        held: a.held,
        admin: a.is_admin,
        ledger,
    }))
}

// ------------------------------------------------------------ api keys

fn check_scopes(auth: &Auth, scopes: &[String]) -> ApiResult<Vec<String>> {
    let scopes: Vec<String> = if scopes.is_empty() {
        vec!["read".into(), "write".into()]
    } else {
        scopes.to_vec()
    };
    for s in &scopes {
        match s.as_str() {
            "read" | "write" => {}
            "admin" => auth.require_admin()?,
            _ => {
                return Err(ApiError::field(
                    "scopes",
                    "each scope is `read`, `write` or `admin`",
                ))
            }
        }
    }
    Ok(scopes
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect())
}

#[utoipa::path(post, path = "/api/v1/api-keys", request_body = api::CreateApiKeyRequest, responses((status = 201, body = api::ApiKeyInfo)))]
pub async fn create_api_key(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<api::CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<api::ApiKeyInfo>)> {
    auth.require("write")?;
    if req.name.len() > 128 {
        return Err(ApiError::field("name", "at most 128 characters"));
    }
    let scopes = check_scopes(&auth, &req.scopes)?;
    let (id, token) = st
        .store
        .create_api_key(auth.account_id(), &req.name, &scopes)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::ApiKeyInfo {
            id,
            name: req.name,
            scopes,
            created_at: now_ms(),
            api_key: Some(token),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/api-keys", responses((status = 200, body = api::ApiKeyList)))]
pub async fn list_api_keys(
    State(st): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<api::ApiKeyList>> {
    auth.require("read")?;
    let keys = st.store.api_keys(auth.account_id()).await?;
    Ok(Json(api::ApiKeyList {
        api_keys: keys
            .into_iter()
            .map(|k| api::ApiKeyInfo {
                id: k.id,
                name: k.name,
                scopes: k.scopes,
                created_at: k.created_at,
                api_key: None,
            })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub async fn delete_api_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require("write")?;
    let hash = st
        .store
        .revoke_api_key(auth.account_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("API key"))?;
    st.forget_api_key(&hash);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------ admin

#[utoipa::path(post, path = "/api/v1/admin/accounts", request_body = api::CreateAccountRequest, responses((status = 201, body = api::CreatedAccount)))]
pub async fn admin_create_account(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<api::CreateAccountRequest>,
) -> ApiResult<(StatusCode, Json<api::CreatedAccount>)> {
    auth.require_admin()?;
    if req.name.is_empty() || req.name.len() > 128 {
        return Err(ApiError::field("name", "1 to 128 characters"));
    }
    if req.credits < 0 {
        return Err(ApiError::field("credits", "must not be negative"));
    }
    let id = st
        .store
        .create_account(&req.name, false, req.credits)
        .await?;
    let (_, key) = st
        .store
        .create_api_key(&id, "default", &["read".into(), "write".into()])
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::CreatedAccount {
            account_id: id,
            api_key: key,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/admin/accounts/{id}/grant", request_body = api::GrantRequest, responses((status = 204)))]
pub async fn admin_grant(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<api::GrantRequest>,
) -> ApiResult<StatusCode> {
    auth.require_admin()?;
    if req.credits <= 0 {
        return Err(ApiError::field("credits", "must be positive"));
    }
    if !st.store.grant(&id, req.credits).await? {
        return Err(ApiError::not_found("account"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/enrollment-tokens", request_body = api::CreateEnrollmentTokenRequest, responses((status = 201, body = api::EnrollmentToken)))]
pub async fn admin_enrollment_token(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<api::CreateEnrollmentTokenRequest>,
) -> ApiResult<(StatusCode, Json<api::EnrollmentToken>)> {
    auth.require_admin()?;
    let owner = req
        .owner_account_id
        .unwrap_or_else(|| auth.account_id().to_string());
    if st.store.account(&owner).await?.is_none() {
        return Err(ApiError::field("owner_account_id", "no such account"));
    }
    if matches!(req.max_uses, Some(n) if n < 1) {
        return Err(ApiError::field("max_uses", "must be at least 1"));
    }
    let token = st
        .store
        .create_enrollment_token(&owner, req.max_uses)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::EnrollmentToken {
            enrollment_token: token,
        }),
    ))
}

// ------------------------------------------------------------ confidential keys

fn key_info(k: ClientKeyRow) -> api::KeyInfo {
    api::KeyInfo {
        key_id: k.key_id,
        public_key: k.public_key,
        kind: k.kind,
        label: k.label,
        created_at: k.created_at / 1000,
        params: k.params,
    }
}

#[utoipa::path(post, path = "/api/v1/confidential/keys", request_body = api::RegisterKeyRequest,
    responses((status = 201, body = api::KeyInfo), (status = 200, body = api::KeyInfo, description = "already registered"), (status = 422, body = api::ErrorBody)))]
pub async fn register_key(
    State(st): State<AppState>,
    auth: Auth,
    ApiJson(req): ApiJson<api::RegisterKeyRequest>,
) -> ApiResult<(StatusCode, Json<api::KeyInfo>)> {
    auth.require("write")?;
    let kind = req.kind.as_deref().unwrap_or(api::KEY_KIND_X25519);
    let (key_id, public_key, params) = match kind {
        api::KEY_KIND_X25519 => {
            if req.evaluation_keys.is_some() {
                return Err(ApiError::field(
                    "evaluation_keys",
                    "x25519 keys have no evaluation keys; omit the field",
                ));
            }
            let pk = b64::decode_key32(&req.public_key).map_err(|_| {
                ApiError::field(
                    "public_key",
                    "must be a 32-byte X25519 public key in base64 (for a homomorphic key send \"kind\": \"he-bfv\" with its public material)",
                )
            })?;
            (KeyId::client(&pk), b64::encode_std(&pk), None)
        }
        api::KEY_KIND_HE_BFV => {
            let (id, material, params) = he_public_material(&req)?;
            (id, material, Some(params))
        }
        _ => return Err(ApiError::field("kind", "must be `x25519` or `he-bfv`")),
    };
    if let Some(claimed) = &req.key_id {
        if claimed != key_id.as_str() {
            return Err(ApiError::field(
                "key_id",
                format!(
                    "does not match the public key (the key's id is {})",
                    key_id.as_str()
                ),
            ));
        }
    }
    if matches!(&req.label, Some(l) if l.len() > 128) {
        return Err(ApiError::field("label", "at most 128 characters"));
    }
    let row = ClientKeyRow {
        account_id: auth.account_id().into(),
        key_id: key_id.as_str().into(),
        kind: kind.into(),
        public_key,
        evaluation_keys: None,
        label: req.label.clone(),
        created_at: now_ms(),
        params,
    };
    let created = st.store.register_key(&row).await?;
    let stored = if created {
        row
    } else {
        st.store
            .client_key(auth.account_id(), key_id.as_str())
            .await?
            .ok_or_else(ApiError::internal)?
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(key_info(stored))))
}

#[utoipa::path(get, path = "/api/v1/confidential/keys", responses((status = 200, body = api::KeyList)))]
pub async fn list_keys(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<api::KeyList>> {
    auth.require("read")?;
    let keys = st.store.client_keys(auth.account_id()).await?;
    Ok(Json(api::KeyList {
        keys: keys.into_iter().map(key_info).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/confidential/keys/{key_id}", responses((status = 204), (status = 404, body = api::ErrorBody)))]
pub async fn delete_key(
    State(st): State<AppState>,
    auth: Auth,
    Path(key_id): Path<String>,
) -> ApiResult<StatusCode> {
    auth.require("write")?;
    let deleted = st
        .store
        .delete_client_key(auth.account_id(), &key_id)
        .await?;
    st.forget_client_key(auth.account_id(), &key_id);
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("key"))
    }
}

const CLIENT_SIDE: &str = "encryption and decryption happen on your machine, never on the coordinator: \
     use the SDK, or run `archipelago gateway`, which serves POST /api/v1/confidential/encrypt and /decrypt \
     locally with keys that never leave your machine";

#[utoipa::path(post, path = "/api/v1/confidential/encrypt", responses((status = 400, body = api::ErrorBody)))]
pub async fn encrypt() -> ApiError {
    ApiError::bad_request("client_side_only", CLIENT_SIDE)
}

#[utoipa::path(post, path = "/api/v1/confidential/decrypt", responses((status = 400, body = api::ErrorBody)))]
pub async fn decrypt() -> ApiError {
    ApiError::bad_request("client_side_only", CLIENT_SIDE)
}

// ------------------------------------------------------------ enclaves and stats

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct EnclaveQuery {
    pub workload_id: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/confidential/enclaves", params(EnclaveQuery), responses((status = 200, body = api::EnclaveList)))]
pub async fn enclaves(
    State(st): State<AppState>,
    auth: Auth,
    Query(q): Query<EnclaveQuery>,
) -> ApiResult<Json<api::EnclaveList>> {
    auth.require("read")?;
    let workloads = st.workloads().await?;
    let wanted = match q.workload_id {
        Some(id) => Some(
            workloads
                .iter()
                .find(|w| w.id == id)
                .ok_or_else(|| ApiError::not_found("workload"))?
                .clone(),
        ),
        None => None,
    };
    if matches!(&wanted, Some(w) if !w.confidential) {
        return Ok(Json(api::EnclaveList { enclaves: vec![] }));
    }
    let online_since = now_ms() - (st.config.offline_after_secs as i64) * 1000;
    let rows = st
        .store
        .live_enclaves(now_secs(), online_since, st.accept_sim())
        .await?;
    let islands = st.store.islands().await?;
    let mut out = Vec::new();
    for e in rows {
        let Some(island) = islands.iter().find(|i| i.id == e.island_id) else {
            continue;
        };
        let ids = views::island_workloads(island, &workloads);
        if let Some(w) = &wanted {
            if !ids.contains(&w.id) {
                continue;
            }
        }
        let evidence = serde_json::from_str(&e.evidence).unwrap_or(serde_json::Value::Null);
        out.push(api::EnclaveInfo {
            key_id: e.key_id,
            public_key: e.public_key,
            tee_type: e.tee_type,
            island_id: e.island_id,
            key_expires_at: e.key_expires_at,
            nonce: e.nonce,
            attested_at: e.attested_at,
            valid_until: e.valid_until,
            evidence,
            measurement: e.measurement,
            workload_ids: ids,
        });
    }
    Ok(Json(api::EnclaveList { enclaves: out }))
}

/// Stats shared by the API and `/metrics`.
pub async fn compute_stats(st: &AppState) -> ApiResult<api::ConfidentialStats> {
    let online_since = now_ms() - (st.config.offline_after_secs as i64) * 1000;
    let rows = st
        .store
        .live_enclaves(now_secs(), online_since, st.accept_sim())
        .await?;
    let mut hosts: BTreeMap<String, String> = BTreeMap::new();
    for e in &rows {
        hosts
            .entry(e.island_id.clone())
            .or_insert_with(|| e.tee_type.clone());
    }
    let mut tee_types: BTreeMap<String, u64> = BTreeMap::new();
    for t in hosts.values() {
        *tee_types.entry(t.clone()).or_default() += 1;
    }
    let he = st
        .store
        .islands()
        .await?
        .iter()
        .filter(|i| i.he_capable && i.last_heartbeat_at.unwrap_or(0) >= online_since)
        .count() as u64;
    let by_state = |mode: &str, counts: &[(String, String, i64)]| -> BTreeMap<String, u64> {
        let mut m: BTreeMap<String, u64> =
            api::JOB_STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for (md, state, n) in counts {
            if md == mode {
                *m.entry(state.clone()).or_default() += (*n).max(0) as u64;
            }
        }
        m
    };
    let counts = st.store.job_counts_by_mode().await?;
    Ok(api::ConfidentialStats {
        tee_types,
        attested_hosts: hosts.len() as u64,
        he_capable_hosts: he,
        attested_enclave_keys: rows.len() as u64,
        he_jobs: by_state(api::MODE_HE, &counts),
        tee_jobs: by_state(api::MODE_TEE, &counts),
    })
}

#[utoipa::path(get, path = "/api/v1/confidential/stats", responses((status = 200, body = api::ConfidentialStats)))]
pub async fn stats(
    State(st): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<api::ConfidentialStats>> {
    auth.require("read")?;
    Ok(Json(compute_stats(&st).await?))
}

// ------------------------------------------------------------ jobs

fn decode_ciphertext(text: &str, max: usize) -> ApiResult<Vec<u8>> {
    b64::decode_any(text, max).map_err(|e| ApiError::field("input.ciphertext", e.to_string()))
}

/// Early refusal of an HE job's ciphertext: only the header and key id
/// are read (the island parses the rest strictly). The message kind must
/// be the workload's request, the parameter set the key's, the key id the
/// job's key, and the size within the kind's limit.
fn check_he_input(
    slug: &str,
    key_id: &str,
    key_params: Option<&str>,
    bytes: &[u8],
) -> ApiResult<()> {
    use archipelago_he::MessageKind;
    let (kind, max) = match slug {
        "classify" => (
            MessageKind::ClassifyRequest,
            archipelago_he::classify::MAX_CLASSIFY_REQUEST_BYTES,
        ),
        "he-aggregate" => (
            MessageKind::AggregateRequest,
            archipelago_he::aggregate::MAX_AGGREGATE_REQUEST_BYTES,
        ),
        other => {
            return Err(ApiError::field(
                "workload_id",
                format!("workload {other} has no homomorphic evaluator"),
            ))
        }
    };
    if bytes.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the {} is {} bytes; the limit is {max}",
                kind.name(),
                bytes.len()
            ),
        ));
    }
    let (info, msg_key) = archipelago_he::peek_key_id(bytes).map_err(|e| {
        ApiError::field(
            "input.ciphertext",
            format!("not an he-bfv {}: {e}", kind.name()),
        )
    })?;
    if info.kind != kind {
        return Err(ApiError::field(
            "input.ciphertext",
            format!(
                "workload {slug} takes an {}, but the ciphertext is an {}",
                kind.name(),
                info.kind.name()
            ),
        ));
    }
    if key_params.is_some_and(|p| p != info.param_set.name()) {
        return Err(ApiError::field(
            "input.ciphertext",
            format!(
                "the ciphertext uses parameter set {}, but key {key_id} was registered with {}; encrypt with the registered key",
                info.param_set.name(),
                key_params.unwrap_or_default()
            ),
        ));
    }
    if msg_key != key_id {
        return Err(ApiError::field(
            "input.ciphertext",
            format!("the ciphertext is for key {msg_key}, not encryption_key_id {key_id}"),
        ));
    }
    Ok(())
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| {
        ApiError::bad_request(
            "bad_idempotency_key",
            "Idempotency-Key must be visible ASCII",
        )
    })?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(ApiError::bad_request(
            "bad_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(s.to_string()))
}

#[utoipa::path(post, path = "/api/v1/jobs", request_body = api::SubmitJobRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 201, body = api::Job), (status = 200, body = api::Job, description = "idempotent replay"),
      (status = 402, body = api::ErrorBody), (status = 409, body = api::ErrorBody), (status = 422, body = api::ErrorBody)))]
pub async fn submit_job(
    State(st): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SubmitJobRequest>,
) -> ApiResult<(StatusCode, Json<api::Job>)> {
    auth.require("write")?;
    let idem = idempotency_key(&headers)?;
    let w = st.workload(req.workload_id).await?.ok_or_else(|| {
        ApiError::field(
            "workload_id",
            format!("no workload {}; see GET /api/v1/workloads", req.workload_id),
        )
    })?;
    let max_payload = st.config.max_payload_bytes;
    let mut recipients = Vec::new();
    let (mode, input_text) = if req.confidential {
        let key_id = req.encryption_key_id.as_deref().ok_or_else(|| {
            ApiError::field("encryption_key_id", "required for a confidential job")
        })?;
        let key = st
            .client_key_facts(auth.account_id(), key_id)
            .await?
            .ok_or_else(|| {
                ApiError::field(
                    "encryption_key_id",
                    "not a key registered by this account (POST /api/v1/confidential/keys)",
                )
            })?;
        let mode = if key.kind == api::KEY_KIND_HE_BFV {
            api::MODE_HE
        } else {
            api::MODE_TEE
        };
        if let Some(m) = &req.mode {
            if m != mode {
                return Err(ApiError::field(
                    "mode",
                    format!(
                        "the key {key_id} is a {} key, so the mode is {mode}",
                        key.kind
                    ),
                ));
            }
        }
        let input: EncryptedPayload = serde_json::from_value(req.input.clone()).map_err(|_| {
            ApiError::field(
                "input",
                "a confidential job's input is {\"encrypted\": true, \"key_id\", \"ciphertext\"}",
            )
        })?;
        if !input.encrypted {
            return Err(ApiError::field(
                "input.encrypted",
                "must be true for a confidential job",
            ));
        }
        if input.key_id != key_id {
            return Err(ApiError::field(
                "input.key_id",
                "must equal encryption_key_id",
            ));
        }
        let bytes = decode_ciphertext(&input.ciphertext, max_payload)?;
        if mode == api::MODE_TEE {
            if !w.confidential {
                return Err(ApiError::field(
                    "workload_id",
                    "this workload does not run in TEE enclaves",
                ));
            }
            let header = archipelago_proto::peek_header(&bytes).map_err(|e| {
                ApiError::field("input.ciphertext", format!("not a sealed envelope: {e}"))
            })?;
            if header.workload_id != req.workload_id as u64 {
                return Err(ApiError::field(
                    "input.ciphertext",
                    format!(
                        "the envelope is sealed for workload {}, not {}",
                        header.workload_id, req.workload_id
                    ),
                ));
            }
            if header.client_key_id.as_str() != key_id {
                return Err(ApiError::field(
                    "input.ciphertext",
                    "the envelope names a different client key than encryption_key_id",
                ));
            }
            recipients = header
                .recipients
                .iter()
                .map(|k| k.as_str().to_string())
                .collect();
            recipients.sort();
            recipients.dedup();
            if recipients.iter().any(|r| !r.starts_with("ek_")) || recipients.is_empty() {
                return Err(ApiError::field(
                    "input.ciphertext",
                    "envelope recipients must be enclave keys (ek_…)",
                ));
            }
        } else if !w.homomorphic {
            return Err(ApiError::field(
                "workload_id",
                "this workload has no homomorphic mode",
            ));
        } else {
            check_he_input(&w.slug, key_id, key.params.as_deref(), &bytes)?;
        }
        let canonical = EncryptedPayload {
            encrypted: true,
            key_id: key_id.to_string(),
            ciphertext: input.ciphertext,
            enclave_key_id: None,
        };
        (
            mode,
            serde_json::to_string(&canonical).map_err(|_| ApiError::internal())?,
        )
    } else {
        if req.mode.as_deref().is_some_and(|m| m != api::MODE_PLAIN) {
            return Err(ApiError::field(
                "confidential",
                "set confidential: true for tee or he jobs",
            ));
        }
        if req.input.get("encrypted").and_then(|v| v.as_bool()) == Some(true) {
            return Err(ApiError::field(
                "confidential",
                "the input is encrypted: set confidential: true",
            ));
        }
        if !w.plain {
            return Err(ApiError::field(
                "workload_id",
                "this workload runs only on encrypted input (confidential: true)",
            ));
        }
        let text = serde_json::to_string(&req.input).map_err(|_| ApiError::internal())?;
        if text.len() > max_payload {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "input is too large",
            ));
        }
        (api::MODE_PLAIN, text)
    };
    let timeout = match req.timeout_seconds {
        Some(t) if t < 1 || t as u64 > st.config.max_job_timeout_secs => {
            return Err(ApiError::field(
                "timeout_seconds",
                format!("must be 1..={}", st.config.max_job_timeout_secs),
            ))
        }
        Some(t) => t,
        None => st.config.default_job_timeout_secs as i64,
    };
    let idempotency = idem.map(|k| {
        let canon = serde_json::to_vec(&req).unwrap_or_default();
        (k, hex::encode(Sha256::digest(&canon)))
    });
    let new = NewJob {
        account_id: auth.account_id().into(),
        workload_id: w.id,
        mode,
        // HE jobs run in the island agent's own evaluator (runtime `he`),
        // whatever the workload's plaintext runtime is: no model files and
        // no TEE needed, only the linear head compiled into the island.
        runtime: if mode == api::MODE_HE {
            HE_RUNTIME.to_string()
        } else {
            w.runtime.clone()
        },
        memory_mb: w.memory_mb,
        max_seconds: w.max_seconds,
        price_per_second: w.price_per_second,
        encryption_key_id: req.encryption_key_id.clone().filter(|_| req.confidential),
        input: input_text,
        recipients,
        hold: w.max_cost(),
        deadline_at: now_ms() + timeout * 1000,
        idempotency,
    };
    match st.store.submit_job(&new).await? {
        SubmitOutcome::Created(job) => {
            st.counters
                .jobs_submitted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Other replicas were notified in the submission's transaction.
            st.dispatcher.job_queued(&views::needs(&job));
            tracing::debug!(job_id = %job.id, mode = %job.mode, workload_id = job.workload_id, input_len = job.input.len(), "job queued");
            Ok((StatusCode::CREATED, Json(views::job(&job))))
        }
        SubmitOutcome::Replayed(job) => Ok((StatusCode::OK, Json(views::job(&job)))),
        SubmitOutcome::IdempotencyConflict => Err(ApiError::conflict(
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request; use a new key",
        )),
        SubmitOutcome::InsufficientCredits { needed, balance } => Err(ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            format!("the job holds up to {needed} credits (the workload's maximum cost) but the balance is {balance}"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", responses((status = 200, body = api::Job), (status = 404, body = api::ErrorBody)))]
pub async fn get_job(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Job>> {
    auth.require("read")?;
    let job = st
        .store
        .job(auth.account_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(views::job(&job)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/jobs", params(JobsQuery), responses((status = 200, body = api::JobList)))]
pub async fn list_jobs(
    State(st): State<AppState>,
    auth: Auth,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<api::JobList>> {
    auth.require("read")?;
    if let Some(s) = &q.state {
        if !api::JOB_STATES.contains(&s.as_str()) {
            return Err(ApiError::field(
                "state",
                format!("one of {}", api::JOB_STATES.join(", ")),
            ));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::field("limit", "1..=200"));
    }
    let jobs = st
        .store
        .jobs(auth.account_id(), q.state.as_deref(), limit)
        .await?;
    Ok(Json(api::JobList {
        jobs: jobs.iter().map(views::job).collect(),
    }))
}

#[utoipa::path(delete, path = "/api/v1/jobs/{id}", responses((status = 200, body = api::Job), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
pub async fn cancel_job(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Job>> {
    auth.require("write")?;
    let (job, changed) = st
        .store
        .cancel_job(auth.account_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if !changed {
        return Err(ApiError::conflict(
            "job_finished",
            format!(
                "the job already finished ({}); nothing to cancel",
                job.state
            ),
        ));
    }
    st.job_changed(&job.id).await;
    Ok(Json(views::job(&job)))
}

struct StreamState {
    st: AppState,
    account: String,
    job_id: String,
    rx: tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    last_state: String,
    last_seq: i64,
    /// The lease attempt whose chunks were sent (-1: none seen yet).
    attempts: i64,
    done: bool,
    /// The row the stream's opening read got, until the first round uses
    /// it instead of reading the job again (so `Some` means "first round").
    opened: Option<JobRow>,
}

async fn stream_round(mut s: StreamState) -> Option<(Vec<Result<Event, Infallible>>, StreamState)> {
    if s.done {
        return None;
    }
    if s.opened.is_none() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, s.rx.recv()).await {
                Ok(Ok(id)) if *id == *s.job_id => break,
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    let mut events = Vec::new();
    let read = match s.opened.take() {
        Some(j) => Ok(Some(j)),
        None => s.st.store.job(&s.account, &s.job_id).await,
    };
    let job = match read {
        Ok(Some(j)) => j,
        _ => {
            s.done = true;
            return Some((
                vec![Ok(Event::default().event("error").data("job unavailable"))],
                s,
            ));
        }
    };
    // A requeued job's next attempt (its claim counts one more) streams its
    // own response from seq 0, the old chunks deleted: start over. A
    // follower that already took the old attempt's pieces sees them fail
    // to continue and waits for the whole output, as the SDK does.
    if s.attempts >= 0 && job.attempts != s.attempts {
        s.last_seq = -1;
    }
    s.attempts = job.attempts;
    // Only a leased attempt posts chunks (a requeue deletes the old
    // attempt's), and the lease, which takes the job out of `queued`,
    // wakes the stream again: a queued job has none to read.
    let chunks = if job.state == "queued" {
        Ok(Vec::new())
    } else {
        s.st.store.chunks_after(&s.job_id, s.last_seq).await
    };
    if let Ok(chunks) = chunks {
        for (seq, data) in chunks {
            s.last_seq = seq;
            let c = api::JobChunk { seq, data };
            if let Ok(ev) = Event::default().event("chunk").json_data(&c) {
                events.push(Ok(ev));
            }
        }
    }
    if job.state != s.last_state {
        s.last_state = job.state.clone();
        let kind = if job.is_terminal() { "done" } else { "state" };
        if let Ok(ev) = Event::default().event(kind).json_data(views::job(&job)) {
            events.push(Ok(ev));
        }
        if job.is_terminal() {
            s.done = true;
        }
    }
    Some((events, s))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/stream", responses((status = 200, description = "text/event-stream: `state`, `chunk` and a final `done` event")))]
pub async fn stream_job(
    State(st): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    auth.require("read")?;
    // Subscribed before the read, so a change after it wakes the stream.
    let rx = st.job_events.subscribe();
    let job = st
        .store
        .job(auth.account_id(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    let s = StreamState {
        rx,
        st: st.clone(),
        account: auth.account_id().into(),
        job_id: id,
        last_state: String::new(),
        last_seq: -1,
        attempts: -1,
        done: false,
        opened: Some(job),
    };
    let stream = stream::unfold(s, stream_round).flat_map(stream::iter);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

// ------------------------------------------------------------ islands

#[utoipa::path(get, path = "/api/v1/islands", responses((status = 200, body = api::IslandList)))]
pub async fn islands(State(st): State<AppState>, auth: Auth) -> ApiResult<Json<api::IslandList>> {
    auth.require("read")?;
    let online_since = now_ms() - (st.config.offline_after_secs as i64) * 1000;
    let live = st
        .store
        .live_enclaves(now_secs(), online_since, st.accept_sim())
        .await?;
    let list = st.store.islands().await?;
    Ok(Json(api::IslandList {
        islands: list
            .into_iter()
            .map(|i| {
                let online = i.last_heartbeat_at.unwrap_or(0) >= online_since;
                api::IslandInfo {
                    attested: live.iter().any(|e| e.island_id == i.id),
                    status: if online { "online" } else { "offline" }.into(),
                    id: i.id,
                    name: i.name,
                    tee_type: i.tee_type,
                    he_capable: i.he_capable,
                    runtimes: i.runtimes,
                    memory_mb: i.memory_mb,
                    capacity: i.capacity,
                    load: i.load_permille as f64 / 1000.0,
                    last_heartbeat_at: i.last_heartbeat_at,
                }
            })
            .collect(),
    }))
}

/// Fallback for unknown routes.
pub async fn not_found() -> impl IntoResponse {
    ApiError::not_found("route")
}
