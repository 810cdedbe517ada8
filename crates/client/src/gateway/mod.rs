//! `archipelago gateway`: a local HTTP server on the user's machine that
//! serves the product page's API verbatim, so its four Quick Start requests
//! work unchanged with curl, while plaintext never leaves the machine.
//!
//! - `POST /api/v1/confidential/keys` (no body): makes a key in the local
//!   keystore and registers its public half; with a `public_key` body it
//!   is passed through.
//! - `POST /api/v1/confidential/encrypt` and `/decrypt`: done here, with
//!   the keystore and the user's own attestation policy ([`seed`]).
//! - `POST /api/v1/jobs`: passed through, except that an envelope sealed by
//!   `/encrypt` without a `workload_id` is re-sealed for the job's workload.
//! - every other `/api/v1/...` request: proxied to the coordinator.
//! - `/v1/chat/completions` (with `stream`), `/v1/embeddings`, `/v1/models`:
//!   OpenAI-compatible, each call a confidential job ([`openai`]).
//!
//! It binds to loopback by default; any other address needs
//! `allow_remote` and a token (at least 16 characters) that every request
//! must present as `Authorization: Bearer <token>`.

pub mod he;
pub mod openai;
pub mod proxy;
pub mod seed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use zeroize::Zeroizing;

use crate::error::{ClientError, KeystoreError};
use crate::session::Session;

/// Largest request body accepted (envelopes are up to 16 MiB, base64url).
pub const MAX_BODY_BYTES: usize = 24 * 1024 * 1024;
/// How long an input encrypted without a workload stays re-sealable.
pub const UNBOUND_TTL: Duration = Duration::from_secs(3600);
/// Most unbound inputs held at once.
pub const MAX_UNBOUND: usize = 256;
/// Default time a gateway-run job may take.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// Where and how the gateway listens.
#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Allow a non-loopback address (needs `token`).
    pub allow_remote: bool,
    pub token: Option<String>,
    pub job_timeout: Duration,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("allow_remote", &self.allow_remote)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl GatewayConfig {
    /// Refuses a non-loopback address without `allow_remote` and a token.
    pub fn check(&self) -> Result<(), ClientError> {
        if self.listen.ip().is_loopback() {
            return Ok(());
        }
        if !self.allow_remote {
            return Err(ClientError::Config(format!(
                "refusing to listen on {}: the gateway decrypts with your keys, so it binds to loopback (127.0.0.1) \
                 only; to expose it anyway pass --allow-remote and --token <secret of at least 16 characters>",
                self.listen
            )));
        }
        match &self.token {
            Some(t) if t.len() >= 16 => Ok(()),
            _ => Err(ClientError::Config(format!(
                "refusing to listen on {} without a token: pass --token <secret of at least 16 characters>",
                self.listen
            ))),
        }
    }
}

/// An input encrypted without a workload, kept in memory (never on disk)
/// so the gateway's `/jobs` can re-seal it for the job's workload.
pub(crate) struct Unbound {
    pub input: Zeroizing<Vec<u8>>,
    pub key_id: String,
    pub at: Instant,
}

/// Shared gateway state.
#[derive(Clone)]
pub struct GatewayState {
    pub(crate) session: Arc<Session>,
    pub(crate) config: Arc<GatewayConfig>,
    /// sha256(ciphertext text) → input.
    pub(crate) unbound: Arc<Mutex<HashMap<[u8; 32], Unbound>>>,
}

impl GatewayState {
    pub fn new(session: Session, config: GatewayConfig) -> GatewayState {
        GatewayState {
            session: Arc::new(session),
            config: Arc::new(config),
            unbound: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The API key to use upstream: the caller's `ak_…` bearer when it
    /// sent one (loopback mode), else the configured one.
    pub(crate) fn upstream_key(&self, headers: &HeaderMap) -> Option<String> {
        if self.config.token.is_none() {
            if let Some(b) = bearer(headers) {
                if b.starts_with("ak_") {
                    return Some(b.to_string());
                }
            }
        }
        self.session.api().api_key().map(str::to_string)
    }

    /// A session whose API client uses the caller's key.
    pub(crate) fn api_for(
        &self,
        headers: &HeaderMap,
    ) -> Result<crate::http::ApiClient, ClientError> {
        crate::http::ApiClient::new(self.session.api().base(), self.upstream_key(headers))
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// `{"error": {"code", "message"}}` with a status, as the coordinator answers.
pub struct GatewayError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl GatewayError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        GatewayError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        GatewayError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl From<ClientError> for GatewayError {
    fn from(e: ClientError) -> Self {
        let status = match &e {
            ClientError::Api { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            ClientError::NoApiKey { .. } => StatusCode::UNAUTHORIZED,
            ClientError::Unreachable { .. } | ClientError::Protocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ClientError::NoAcceptableEnclave { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::Keystore(KeystoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            ClientError::Keystore(KeystoreError::Empty { .. }) => StatusCode::NOT_FOUND,
            ClientError::Keystore(KeystoreError::PassphraseRequired { .. }) => {
                StatusCode::UNAUTHORIZED
            }
            ClientError::Keystore(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ClientError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ClientError::JobFailed { .. } | ClientError::EnclaveReported { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ClientError::JobCancelled { .. } => StatusCode::CONFLICT,
            ClientError::HeUnavailable => StatusCode::NOT_IMPLEMENTED,
            ClientError::He(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ClientError::LocalModel(_) => StatusCode::SERVICE_UNAVAILABLE,
            ClientError::UnknownRequest { .. } | ClientError::UnexpectedEnclave { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ClientError::Envelope(_) | ClientError::InvalidInput(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ClientError::Policy(_) | ClientError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match &e {
            ClientError::Api { code, .. } => code.clone(),
            other => other.code().to_string(),
        };
        let message = match &e {
            ClientError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        };
        GatewayError {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

async fn require_token(State(st): State<GatewayState>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.config.token {
        let ok = bearer(req.headers())
            .map(|b| {
                use subtle_eq::ct_eq;
                ct_eq(b.as_bytes(), token.as_bytes())
            })
            .unwrap_or(false);
        if !ok {
            return GatewayError::new(
                StatusCode::UNAUTHORIZED,
                "gateway_token_required",
                "this gateway requires `Authorization: Bearer <gateway token>`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

mod subtle_eq {
    /// Constant-time comparison of equal-length byte strings.
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The gateway's router.
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route(
            "/api/v1/confidential/keys",
            post(seed::create_key).get(proxy::proxy),
        )
        .route("/api/v1/confidential/keys/{key_id}", delete(seed::delete_key))
        .route("/api/v1/confidential/encrypt", post(seed::encrypt))
        .route("/api/v1/confidential/decrypt", post(seed::decrypt))
        .route("/api/v1/jobs", post(seed::submit_job).get(proxy::proxy))
        .route("/api/v1/{*rest}", axum::routing::any(proxy::proxy))
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/health", get(|| async { Json(serde_json::json!({"status": "ok", "component": "gateway"})) }))
        .fallback(|| async {
            GatewayError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route on the gateway: it serves /api/v1/... (the product page API) and /v1/... (OpenAI-compatible)",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    state: GatewayState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ClientError> {
    state.config.check()?;
    let addr = listener
        .local_addr()
        .map_err(|e| ClientError::Config(format!("listener: {e}")))?;
    tracing::info!(%addr, upstream = %state.session.api().base(), "gateway listening");
    // As in the coordinator: stream chunks must not wait for delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| ClientError::Config(format!("gateway server: {e}")))
}
