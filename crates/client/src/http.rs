//! A typed client of the coordinator's public API (`/api/v1`). It carries
//! only what the coordinator may see: public keys, sealed envelopes, ids.
//! Non-2xx answers become [`ClientError::Api`] with the coordinator's own
//! `{"error": {"code", "message"}}`.

use std::time::Duration;

use archipelago_proto::api::{
    AccountView, ConfidentialStats, EnclaveList, ErrorBody, IslandList, Job, JobList, KeyInfo,
    KeyList, RegisterKeyRequest, SubmitJobRequest, WorkloadList,
};
use futures_util::Stream;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ClientError;
use crate::sse::{SseEvent, SseParser};

/// Largest JSON answer read (a job output may be a 16 MiB envelope in
/// base64url).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// The coordinator API client. Cheap to clone.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `http://host:port[/api/v1][/]` → `http://host:port`.
pub fn normalize_base(url: &str) -> String {
    let mut u = url.trim().trim_end_matches('/').to_string();
    if u.ends_with("/api/v1") {
        u.truncate(u.len() - "/api/v1".len());
    }
    u
}

impl ApiClient {
    pub fn new(url: &str, api_key: Option<String>) -> Result<ApiClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(ApiClient {
            base: normalize_base(url),
            api_key,
            http,
        })
    }

    /// The coordinator's base URL (no `/api/v1`).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    /// The underlying HTTP client (the gateway proxies with it).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.base, path)
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            detail: e.without_url().to_string(),
        }
    }

    /// A request with the API key attached.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(k) = &self.api_key {
            rb = rb.bearer_auth(k);
        }
        rb
    }

    async fn send<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<T, ClientError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let body = read_limited(resp, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| self.unreachable(e))?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            what: what.into(),
            detail: e.to_string(),
        })
    }

    async fn send_empty(&self, rb: reqwest::RequestBuilder) -> Result<(), ClientError> {
        let resp = rb.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_limited(resp, 1024 * 1024).await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        Ok(())
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(self.request(Method::GET, path), path).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(self.request(Method::POST, path).json(body), path)
            .await
    }

    pub async fn register_key(&self, req: &RegisterKeyRequest) -> Result<KeyInfo, ClientError> {
        self.post("/confidential/keys", req).await
    }

    pub async fn list_keys(&self) -> Result<KeyList, ClientError> {
        self.get("/confidential/keys").await
    }

    pub async fn delete_key(&self, key_id: &str) -> Result<(), ClientError> {
        self.send_empty(self.request(
            Method::DELETE,
            &format!("/confidential/keys/{}", path_seg(key_id)),
        ))
        .await
    }

    /// Attested enclaves, with evidence, able to run `workload_id` (all when
    /// `None`).
    pub async fn enclaves(&self, workload_id: Option<i64>) -> Result<EnclaveList, ClientError> {
        match workload_id {
            Some(w) => {
                self.get(&format!("/confidential/enclaves?workload_id={w}"))
                    .await
            }
            None => self.get("/confidential/enclaves").await,
        }
    }

    pub async fn stats(&self) -> Result<ConfidentialStats, ClientError> {
        self.get("/confidential/stats").await
    }

    pub async fn workloads(&self) -> Result<WorkloadList, ClientError> {
        self.get("/workloads").await
    }

    pub async fn account(&self) -> Result<AccountView, ClientError> {
        self.get("/account").await
    }

    pub async fn islands(&self) -> Result<IslandList, ClientError> {
        self.get("/islands").await
    }

    pub async fn submit_job(
        &self,
        req: &SubmitJobRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Job, ClientError> {
        let mut rb = self.request(Method::POST, "/jobs").json(req);
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        self.send(rb, "/jobs").await
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ClientError> {
        self.get(&format!("/jobs/{}", path_seg(id))).await
    }

    pub async fn list_jobs(
        &self,
        state: Option<&str>,
        limit: Option<i64>,
    ) -> Result<JobList, ClientError> {
        let mut q = Vec::new();
        if let Some(s) = state {
            q.push(("state", s.to_string()));
        }
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.send(self.request(Method::GET, "/jobs").query(&q), "/jobs")
            .await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job, ClientError> {
        self.send(
            self.request(Method::DELETE, &format!("/jobs/{}", path_seg(id))),
            "/jobs/{id}",
        )
        .await
    }

    /// `GET /jobs/{id}/stream` as server-sent events.
    pub async fn stream_job(
        &self,
        id: &str,
    ) -> Result<impl Stream<Item = Result<SseEvent, ClientError>> + Send + 'static, ClientError>
    {
        let resp = self
            .request(Method::GET, &format!("/jobs/{}/stream", path_seg(id)))
            .header("Accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_limited(resp, 1024 * 1024).await.unwrap_or_default();
            return Err(api_error(status, &body));
        }
        let base = self.base.clone();
        Ok(SseParser::stream(resp.bytes_stream(), move |e| {
            ClientError::Unreachable {
                url: base.clone(),
                detail: e,
            }
        }))
    }
}

/// Percent-encodes one path segment (ids are ASCII; anything else is
/// escaped so it cannot change the route).
pub fn path_seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads at most `max` bytes of a body.
pub async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Vec<u8>, reqwest::Error> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > max {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Turns an error answer into [`ClientError::Api`].
pub fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => {
            let mut message = e.error.message;
            for f in &e.error.fields {
                message.push_str(&format!("; {}: {}", f.field, f.message));
            }
            ClientError::Api {
                status: status.as_u16(),
                code: e.error.code,
                message,
            }
        }
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http_error".into(),
            message: format!(
                "HTTP {} ({} bytes of non-JSON body); is the URL a coordinator?",
                status,
                body.len()
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_segments() {
        assert_eq!(normalize_base("http://h:1/api/v1/"), "http://h:1");
        assert_eq!(normalize_base("http://h:1/"), "http://h:1");
        assert_eq!(path_seg("job_ab-1"), "job_ab-1");
        assert_eq!(path_seg("../x?y"), "..%2Fx%3Fy");
    }

    #[test]
    fn error_bodies_are_parsed() {
        let e = api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":{"code":"invalid","message":"bad","fields":[{"field":"workload_id","message":"no workload 9"}]}}"#,
        );
        let s = e.to_string();
        assert!(
            s.contains("422 invalid") && s.contains("workload_id: no workload 9"),
            "{s}"
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>");
        assert!(e.to_string().contains("non-JSON"));
    }
}
