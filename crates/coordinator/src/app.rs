//! Shared state of the HTTP service and the extractors every handler uses:
//! API-key and island-token authentication (hashed lookups with a short
//! cache), per-key rate limiting, and JSON bodies whose rejections become
//! API errors (400 for malformed JSON, 422 naming the field, 413 too large).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use archipelago_attest::Policy;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::store::{ApiKeyRow, IslandRow, Store, WorkloadRow};
use crate::util::hash_token;

/// How long a verified token stays cached. Revocation on this replica is
/// immediate; on other replicas it takes at most this long.
const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// Island tokens are cached for less, since a revoked island must stop
/// leasing soon.
const ISLAND_CACHE_TTL: Duration = Duration::from_secs(2);

/// Entries past this many are dropped all at once.
const MAX_CACHED: usize = 100_000;

/// A map whose entries are good for `ttl` after they were put; bounded
/// (cleared when it grows past [`MAX_CACHED`]).
struct TtlCache<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K) -> Option<V> {
        let m = self.map.lock().ok()?;
        m.get(k)
            .filter(|(t, _)| t.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&self, k: K, v: V) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() > MAX_CACHED {
                m.clear();
            }
            m.insert(k, (Instant::now(), v));
        }
    }

    fn remove(&self, k: &K) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(k);
        }
    }

    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        if let Ok(mut m) = self.map.lock() {
            m.retain(|_, (_, v)| keep(v));
        }
    }
}

/// What a job submission checks of a registered client key.
#[derive(Debug, Clone)]
pub struct ClientKeyFacts {
    /// `x25519` or `he-bfv`.
    pub kind: String,
    /// HE parameter set name (`he-bfv` keys only).
    pub params: Option<String>,
}

/// In-process counters exported on `/metrics`.
#[derive(Default)]
pub struct Counters {
    pub jobs_submitted: AtomicU64,
    pub jobs_settled: AtomicU64,
    pub lease_expiries: AtomicU64,
    pub attestations_accepted: AtomicU64,
    pub attestations_refused: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// Everything handlers share.
pub struct Inner {
    pub store: Store,
    pub config: Config,
    pub policy: Option<Policy>,
    pub dispatcher: Dispatcher,
    /// Ids of jobs that changed (SSE subscribers filter on them).
    pub job_events: broadcast::Sender<Arc<str>>,
    pub counters: Counters,
    /// Identifies this replica in NOTIFY payloads.
    pub replica_id: String,
    workloads: Mutex<(Instant, Arc<Vec<WorkloadRow>>)>,
    api_keys: TtlCache<String, ApiKeyRow>,
    /// (account id, key id) → what a submission checks of a registered
    /// client key; cached like tokens (deletion on this replica is
    /// immediate, on others it takes at most [`AUTH_CACHE_TTL`]).
    client_keys: TtlCache<(String, String), ClientKeyFacts>,
    islands: TtlCache<String, IslandRow>,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Cheap to clone handle.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(store: Store, config: Config, policy: Option<Policy>) -> AppState {
        let (tx, _) = broadcast::channel(4096);
        let replica_id = store.replica_id().to_string();
        AppState(Arc::new(Inner {
            store,
            config,
            policy,
            dispatcher: Dispatcher::new(),
            job_events: tx,
            counters: Counters::default(),
            replica_id,
            workloads: Mutex::new((
                Instant::now() - Duration::from_secs(3600),
                Arc::new(Vec::new()),
            )),
            api_keys: TtlCache::new(AUTH_CACHE_TTL),
            client_keys: TtlCache::new(AUTH_CACHE_TTL),
            islands: TtlCache::new(ISLAND_CACHE_TTL),
            buckets: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether sim evidence counts as attested (policy says so).
    pub fn accept_sim(&self) -> bool {
        self.policy.as_ref().map(|p| p.accept_sim).unwrap_or(false)
    }

    /// Workloads, cached for a few seconds.
    pub async fn workloads(&self) -> Result<Arc<Vec<WorkloadRow>>, ApiError> {
        if let Ok(w) = self.workloads.lock() {
            if w.0.elapsed() < Duration::from_secs(5) && !w.1.is_empty() {
                return Ok(w.1.clone());
            }
        }
        let list = Arc::new(self.store.workloads().await?);
        if let Ok(mut w) = self.workloads.lock() {
            *w = (Instant::now(), list.clone());
        }
        Ok(list)
    }

    pub async fn workload(&self, id: i64) -> Result<Option<WorkloadRow>, ApiError> {
        Ok(self.workloads().await?.iter().find(|w| w.id == id).cloned())
    }

    /// The kind and HE parameters of the client key `key_id` registered by
    /// `account_id` (`None`: not registered), from a cache of
    /// [`AUTH_CACHE_TTL`] (not the key material: HE evaluation keys are
    /// large).
    pub async fn client_key_facts(
        &self,
        account_id: &str,
        key_id: &str,
    ) -> Result<Option<ClientKeyFacts>, ApiError> {
        let k = (account_id.to_string(), key_id.to_string());
        if let Some(f) = self.client_keys.get(&k) {
            return Ok(Some(f));
        }
        let Some(row) = self.store.client_key(account_id, key_id).await? else {
            return Ok(None);
        };
        let facts = ClientKeyFacts {
            kind: row.kind,
            params: row.params,
        };
        self.client_keys.put(k, facts.clone());
        Ok(Some(facts))
    }

    pub fn forget_client_key(&self, account_id: &str, key_id: &str) {
        self.client_keys
            .remove(&(account_id.to_string(), key_id.to_string()));
    }

    pub fn forget_api_key(&self, token_hash: &str) {
        self.api_keys.remove(&token_hash.to_string());
    }

    pub fn forget_island(&self, island_id: &str) {
        self.islands.retain(|i| i.id != island_id);
    }

    /// Publishes a job change to local SSE subscribers only (the store
    /// already told other replicas, in the change's own transaction).
    pub fn job_changed_locally(&self, job_id: &str) {
        let _ = self.job_events.send(Arc::from(job_id));
    }

    /// Publishes a job change to local SSE subscribers and other replicas.
    pub async fn job_changed(&self, job_id: &str) {
        let _ = self.job_events.send(Arc::from(job_id));
        if let Err(e) = self
            .store
            .notify(&format!("{}:u:{job_id}", self.replica_id))
            .await
        {
            tracing::warn!(error = %e, "NOTIFY failed");
        }
    }

    /// Token bucket per key; Err(seconds to wait) when empty.
    fn rate_check(&self, key: &str) -> Result<(), u64> {
        let rate = self.config.rate_limit_per_sec;
        let burst = self.config.rate_limit_burst;
        let Ok(mut m) = self.buckets.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(60));
        }
        let slot = m.entry(key.to_string()).or_insert((burst, now));
        let refill = now.duration_since(slot.1).as_secs_f64() * rate;
        slot.0 = (slot.0 + refill).min(burst);
        slot.1 = now;
        if slot.0 >= 1.0 {
            slot.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - slot.0) / rate).ceil().max(1.0) as u64)
        }
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(t.trim())
}

/// An authenticated user request (`Authorization: Bearer ak_…`).
#[derive(Debug, Clone)]
pub struct Auth {
    pub key: ApiKeyRow,
}

impl Auth {
    pub fn account_id(&self) -> &str {
        &self.key.account_id
    }

    /// Refuses with 403 unless the key carries `scope` (`admin` implies all).
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        let has = |s: &str| self.key.scopes.iter().any(|x| x == s);
        if has(scope) || (has("admin") && self.key.is_admin_account) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this API key lacks the `{scope}` scope; create a key with it (POST /api/v1/api-keys)"
            )))
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.key.is_admin_account && self.key.scopes.iter().any(|s| s == "admin") {
            Ok(())
        } else {
            Err(ApiError::forbidden("this endpoint needs an admin API key"))
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer ak_…` header; create an API key with `archipelago coordinator init`")
        })?;
        if !token.starts_with("ak_") || token.len() > 128 {
            return Err(ApiError::unauthorized("malformed API key (expected ak_…)"));
        }
        let hash = hash_token(token);
        let key = match state.api_keys.get(&hash) {
            Some(k) => k,
            None => {
                let k = state
                    .store
                    .api_key_by_hash(&hash)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("unknown or revoked API key"))?;
                state.api_keys.put(hash, k.clone());
                k
            }
        };
        if let Err(secs) = state.rate_check(&key.id) {
            state
                .counters
                .rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests for this API key; retry after {secs} s"),
            );
            e.retry_after = Some(secs);
            return Err(e);
        }
        Ok(Auth { key })
    }
}

/// An authenticated island (`Authorization: Bearer it_…`).
#[derive(Debug, Clone)]
pub struct IslandAuth {
    pub island: IslandRow,
}

impl FromRequestParts<AppState> for IslandAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<IslandAuth, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer it_…` header; enroll the island first (POST /api/v1/island/enroll)")
        })?;
        if !token.starts_with("it_") || token.len() > 128 {
            return Err(ApiError::unauthorized(
                "malformed island token (expected it_…)",
            ));
        }
        let hash = hash_token(token);
        let island = match state.islands.get(&hash) {
            Some(i) => i,
            None => {
                let i = state
                    .store
                    .island_by_token_hash(&hash)
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("unknown island token"))?;
                state.islands.put(hash, i.clone());
                i
            }
        };
        Ok(IslandAuth { island })
    }
}

/// JSON body extractor with API-shaped rejections.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::JsonDataError(e) => {
            // serde's message names the path and the problem, not the value.
            let detail = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            let detail = redact_quoted(&detail);
            let field = detail
                .split(':')
                .next()
                .unwrap_or("body")
                .trim()
                .to_string();
            let field = if field.contains(' ') {
                "body".to_string()
            } else {
                field
            };
            let mut err = ApiError::field(&field, detail.clone());
            err.message = format!("request body does not match the schema: {detail}");
            err
        }
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", "request body is not valid JSON")
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(b) => {
            if b.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is larger than this endpoint accepts",
                )
            } else {
                ApiError::bad_request("bad_body", "could not read the request body")
            }
        }
        _ => ApiError::bad_request("bad_body", "could not read the request body"),
    }
}

/// serde quotes offending string values in its messages; an error message
/// must never echo a payload, so quoted text is replaced.
pub fn redact_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut inside = false;
    for ch in msg.chars() {
        if ch == '"' {
            if inside {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            inside = !inside;
        } else if !inside {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            redact_quoted("input: invalid type: string \"secret text\", expected i64"),
            "input: invalid type: string \"…\", expected i64"
        );
        assert_eq!(redact_quoted("missing field `x`"), "missing field `x`");
    }
}
