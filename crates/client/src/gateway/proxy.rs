//! Pass-through of every other `/api/v1/...` request to the coordinator:
//! method, path, query, body and the headers that matter (authorization,
//! content type, idempotency key, accept), with the answer — status,
//! content type and body, streamed (so `GET /jobs/{id}/stream` stays a live
//! event stream). These requests carry no plaintext: keys are public,
//! envelopes and outputs sealed.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;

use super::{GatewayError, GatewayState};
use crate::error::ClientError;

/// The catch-all handler.
pub async fn proxy(
    State(st): State<GatewayState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    forward(&st, method, uri.path(), uri.query(), &headers, body).await
}

/// Forwards one request upstream.
pub async fn forward(
    st: &GatewayState,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, GatewayError> {
    if !path.starts_with("/api/v1/") || path.contains("..") {
        return Err(GatewayError::bad_request("only /api/v1/... is proxied"));
    }
    let base = st.session.api().base();
    let mut url = format!("{base}{path}");
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| GatewayError::bad_request("unsupported method"))?;
    let mut rb = st.session.api().http().request(m, &url);
    if let Some(k) = st.upstream_key(headers) {
        rb = rb.bearer_auth(k);
    }
    for name in ["content-type", "idempotency-key", "accept"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            rb = rb.header(name, v);
        }
    }
    if !body.is_empty() {
        rb = rb.body(body.to_vec());
    }
    let resp = rb.send().await.map_err(|e| ClientError::Unreachable {
        url: base.to_string(),
        detail: e.without_url().to_string(),
    })?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = Response::builder().status(status);
    for name in ["content-type", "cache-control"] {
        if let Some(v) = resp.headers().get(name).and_then(|v| v.to_str().ok()) {
            out = out.header(name, v);
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .map_err(|_| {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "could not relay the answer",
            )
        })
}
