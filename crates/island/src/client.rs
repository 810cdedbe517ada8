//! The island side of the coordinator's HTTP API (`/api/v1/island/…`,
//! wire types in `archipelago_proto::island`): enroll, attestation
//! challenge and answer, heartbeat, long-poll lease, renew, chunk, result.
//!
//! Answers are untrusted input: bodies are read up to a size limit before
//! parsing, and errors keep only the coordinator's `{"error": {code,
//! message}}`, never a request body (which may carry ciphertext).

use std::time::Duration;

use archipelago_proto::api::ErrorBody;
use archipelago_proto::island::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest answer read from the coordinator (a leased job carries an
/// envelope of up to 16 MiB as base64).
pub const MAX_ANSWER_BYTES: usize = 24 * 1024 * 1024;

/// A call to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network or HTTP-level failure (retry later).
    #[error("coordinator unreachable ({what}): {detail}")]
    Transport {
        /// The call.
        what: &'static str,
        /// reqwest's description (no bodies).
        detail: String,
    },
    /// The coordinator refused the call.
    #[error("coordinator refused {what}: HTTP {status} {code}: {message}")]
    Refused {
        /// The call.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// Machine-readable code (`lease_lost`, `attestation_refused`, …).
        code: String,
        /// The coordinator's explanation.
        message: String,
    },
    /// The answer was not what the protocol says.
    #[error("coordinator answer to {what} is malformed: {detail}")]
    Malformed {
        /// The call.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ClientError {
    /// HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Error code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The island should stop working on the job (lease lost, cancelled).
    pub fn is_lease_gone(&self) -> bool {
        matches!(self.code(), Some("lease_lost" | "job_cancelled")) || self.status() == Some(404)
    }
}

/// A client bound to one coordinator and, once enrolled, one island token.
#[derive(Clone)]
pub struct CoordinatorClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for CoordinatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl CoordinatorClient {
    /// A client for the coordinator at `base_url` (`http(s)://host:port`).
    pub fn new(base_url: &str) -> Result<CoordinatorClient, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("archipelago-island/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Transport {
                what: "client setup",
                detail: e.to_string(),
            })?;
        Ok(CoordinatorClient {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token: None,
        })
    }

    /// The same client authenticated with an `it_…` token.
    pub fn with_token(mut self, token: &str) -> CoordinatorClient {
        self.token = Some(token.to_string());
        self
    }

    /// The coordinator's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}/api/v1/island/{path}", self.base);
        self.exchange(what, self.http.post(url).json(body).timeout(timeout))
            .await
    }

    /// Sends `req` with the island token and reads the answer: `None` on
    /// 204, the parsed body on success, a `Refused` error carrying the
    /// coordinator's error code and (bounded) message otherwise.
    async fn exchange<T: DeserializeOwned>(
        &self,
        what: &'static str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, ClientError> {
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| ClientError::Transport {
            what,
            detail: describe(&e),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = read_limited(resp, what).await?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => (e.error.code, e.error.message.chars().take(512).collect()),
                Err(_) => (
                    "http_error".to_string(),
                    format!("{} bytes of non-JSON error body", bytes.len()),
                ),
            };
            return Err(ClientError::Refused {
                what,
                status: status.as_u16(),
                code: code.chars().take(64).collect(),
                message,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ClientError::Malformed {
                what,
                detail: format!("JSON at line {} column {}", e.line(), e.column()),
            })
    }

    async fn post_some<B: Serialize, T: DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        self.post(what, path, body, timeout)
            .await?
            .ok_or(ClientError::Malformed {
                what,
                detail: "empty answer (204)".into(),
            })
    }

    /// `POST /island/enroll`.
    pub async fn enroll(&self, req: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post_some("enroll", "enroll", req, SHORT).await
    }

    /// `POST /island/attest/challenge`.
    pub async fn challenge(&self) -> Result<AttestChallenge, ClientError> {
        self.post_some(
            "attestation challenge",
            "attest/challenge",
            &serde_json::json!({}),
            SHORT,
        )
        .await
    }

    /// `POST /island/attest`.
    pub async fn attest(&self, req: &AttestRequest) -> Result<AttestResponse, ClientError> {
        self.post_some("attestation", "attest", req, SHORT).await
    }

    /// `POST /island/heartbeat`.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        self.post_some("heartbeat", "heartbeat", hb, SHORT).await
    }

    /// `POST /island/lease`: `None` when nothing arrived within `wait_ms`.
    pub async fn lease(&self, wait_ms: u64) -> Result<Option<LeasedJob>, ClientError> {
        let timeout = SHORT + Duration::from_millis(wait_ms);
        let req = LeaseRequest {
            wait_ms,
            max_jobs: None,
        };
        self.post("lease", "lease", &req, timeout).await
    }

    /// `POST /island/lease` with `max_jobs`: up to `max_jobs` jobs in one
    /// call (empty when nothing arrived within `wait_ms`).
    pub async fn lease_many(
        &self,
        wait_ms: u64,
        max_jobs: u32,
    ) -> Result<Vec<LeasedJob>, ClientError> {
        let timeout = SHORT + Duration::from_millis(wait_ms);
        let req = LeaseRequest {
            wait_ms,
            max_jobs: Some(max_jobs),
        };
        let batch: Option<LeasedJobs> = self.post("lease", "lease", &req, timeout).await?;
        Ok(batch.map(|b| b.jobs).unwrap_or_default())
    }

    /// `POST /island/jobs/{id}/renew`.
    pub async fn renew(
        &self,
        job_id: &str,
        req: &RenewRequest,
    ) -> Result<RenewResponse, ClientError> {
        self.post_some(
            "lease renewal",
            &format!("jobs/{}/renew", path_seg(job_id)),
            req,
            SHORT,
        )
        .await
    }

    /// `POST /island/jobs/{id}/chunks`.
    pub async fn chunk(&self, job_id: &str, req: &ChunkPost) -> Result<(), ClientError> {
        self.post::<_, serde_json::Value>(
            "chunk",
            &format!("jobs/{}/chunks", path_seg(job_id)),
            req,
            SHORT,
        )
        .await
        .map(drop)
    }

    /// `POST /island/jobs/{id}/release`.
    pub async fn release(
        &self,
        job_id: &str,
        req: &ReleaseRequest,
    ) -> Result<ReleaseResponse, ClientError> {
        self.post_some(
            "release",
            &format!("jobs/{}/release", path_seg(job_id)),
            req,
            SHORT,
        )
        .await
    }

    /// `POST /island/jobs/{id}/result`.
    pub async fn result(
        &self,
        job_id: &str,
        req: &ResultPost,
    ) -> Result<ResultResponse, ClientError> {
        self.post_some(
            "result",
            &format!("jobs/{}/result", path_seg(job_id)),
            req,
            LONG,
        )
        .await
    }
}

impl CoordinatorClient {
    /// `GET /island/he-keys/{key_id}`: the public material of a user's
    /// `he-bfv` key (homomorphic jobs).
    pub async fn he_key(&self, key_id: &str) -> Result<HeKeyMaterial, ClientError> {
        let what = "HE key";
        let url = format!("{}/api/v1/island/he-keys/{}", self.base, path_seg(key_id));
        self.exchange(what, self.http.get(url).timeout(SHORT))
            .await?
            .ok_or(ClientError::Malformed {
                what,
                detail: "empty answer (204)".into(),
            })
    }
}

const SHORT: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(120);

/// Job ids come from the coordinator; keep them to a safe alphabet before
/// putting them in a path.
fn path_seg(id: &str) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .take(128)
        .collect()
}

fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    // reqwest's Display names the URL and cause, never the body.
    format!("{kind}: {e}")
}

async fn read_limited(
    mut resp: reqwest::Response,
    what: &'static str,
) -> Result<Vec<u8>, ClientError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(ClientError::Malformed {
            what,
            detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
        });
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ClientError::Transport {
        what,
        detail: describe(&e),
    })? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ClientError::Malformed {
                what,
                detail: format!("answer larger than {MAX_ANSWER_BYTES} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_sanitised() {
        assert_eq!(path_seg("job_abc-1"), "job_abc-1");
        assert_eq!(path_seg("../../admin?x=1"), "adminx1");
    }

    #[test]
    fn lease_gone_codes() {
        let e = |code: &str, status| ClientError::Refused {
            what: "x",
            status,
            code: code.into(),
            message: String::new(),
        };
        assert!(e("lease_lost", 409).is_lease_gone());
        assert!(e("job_cancelled", 409).is_lease_gone());
        assert!(!e("rate_limited", 429).is_lease_gone());
        assert!(!format!(
            "{:?}",
            CoordinatorClient::new("http://x")
                .unwrap()
                .with_token("it_s")
        )
        .contains("it_s"));
    }
}
