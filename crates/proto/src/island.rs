//! Island-side wire types (enrollment, attestation, heartbeat, lease, result),
//! shared by the coordinator and the island agent.
//!
//! The protocol, all under `/api/v1/island`, JSON, `Authorization: Bearer
//! it_…` except enrollment (documented in `docs/api.md`):
//!
//! 1. `POST /island/enroll` [`EnrollRequest`] → [`EnrollResponse`]: an
//!    operator-issued enrollment token buys an island id and token.
//! 2. `POST /island/attest/challenge` → [`AttestChallenge`]: a fresh nonce.
//! 3. `POST /island/attest` [`AttestRequest`] → [`AttestResponse`]: evidence
//!    whose report data is `key_binding(ek_public, key_expires_at, nonce)`.
//!    Repeat every `reattest_interval_secs` (one missed round tolerated).
//! 4. `POST /island/heartbeat` [`Heartbeat`] → [`HeartbeatResponse`].
//! 5. `POST /island/lease` [`LeaseRequest`] → 200 [`LeasedJob`] (or
//!    [`LeasedJobs`] when `max_jobs` is given) or 204 when nothing arrived
//!    within `wait_ms` (long poll).
//! 6. `POST /island/jobs/{id}/renew` [`RenewRequest`] → [`RenewResponse`]
//!    (409 `lease_lost` / `job_cancelled` tells the island to stop).
//! 7. `POST /island/jobs/{id}/chunks` [`ChunkPost`] (optional streaming).
//! 8. `POST /island/jobs/{id}/result` [`ResultPost`] → [`ResultResponse`].
//! 9. `POST /island/jobs/{id}/release` [`ReleaseRequest`] →
//!    [`ReleaseResponse`]: give a leased job back unfinished (requeued for
//!    its other recipients, nothing charged).
//!
//! The island agent only ever relays ciphertext for confidential jobs: the
//! coordinator refuses a result of a confidential job that is not an
//! `{"encrypted": true, ...}` object.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Capabilities an island reports at enrollment and in every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Capabilities {
    /// TEE detected on the host (`sgx`, `tdx`, `sev`, `nitro`, `trustzone`,
    /// `sim`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee_type: Option<String>,
    /// Can evaluate homomorphic workloads.
    #[serde(default)]
    pub he_capable: bool,
    /// Runtimes offered (`candle`, `echo`, `he`, …).
    #[serde(default)]
    pub runtimes: Vec<String>,
    /// Memory available to workloads, MiB.
    #[serde(default)]
    pub memory_mb: i64,
    /// Jobs the island runs at once.
    #[serde(default = "one")]
    pub capacity: i64,
}

fn one() -> i64 {
    1
}

/// `POST /island/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnrollRequest {
    pub enrollment_token: String,
    pub name: String,
    #[serde(flatten)]
    pub capabilities: Capabilities,
}

/// The island's identity; `island_token` is shown once, keep it secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnrollResponse {
    pub island_id: String,
    /// `it_…`
    pub island_token: String,
    pub heartbeat_interval_secs: u64,
    pub reattest_interval_secs: u64,
}

/// `POST /island/attest/challenge` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AttestChallenge {
    /// 32 random bytes, standard base64. Single use.
    pub nonce: String,
    /// Unix seconds after which the nonce is refused.
    pub expires_at: i64,
}

/// `POST /island/attest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AttestRequest {
    /// The nonce from the challenge (standard base64).
    pub nonce: String,
    /// Enclave X25519 public key (standard base64).
    pub enclave_public_key: String,
    /// Unix seconds; bound into the evidence.
    pub key_expires_at: i64,
    /// archipelago-attest evidence JSON: `{"tee", "evidence", "endorsements"}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub evidence: serde_json::Value,
}

/// Attestation accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AttestResponse {
    /// `ek_…`
    pub enclave_key_id: String,
    pub tee_type: String,
    /// Routable until then unless re-attested.
    pub valid_until: i64,
    /// Unix seconds when the next attestation is due.
    pub next_attestation_at: i64,
}

/// `POST /island/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Heartbeat {
    /// 0.0 ..= 1.0.
    #[serde(default)]
    pub load: f64,
    #[serde(flatten)]
    pub capabilities: Capabilities,
    /// Jobs the island is working on.
    #[serde(default)]
    pub active_jobs: Vec<String>,
}

/// Heartbeat answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeartbeatResponse {
    pub heartbeat_interval_secs: u64,
    /// True when the island should run a new attestation round now.
    pub attestation_due: bool,
    /// Jobs among `active_jobs` the island must stop (cancelled, or lease lost).
    pub cancel_jobs: Vec<String>,
}

/// `POST /island/lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LeaseRequest {
    /// How long to wait for a job, ms (capped by the coordinator, 0 = don't).
    #[serde(default)]
    pub wait_ms: u64,
    /// Lease up to this many jobs in one call (1..=64, also bounded by the
    /// island's free capacity). Absent: one job, answered as a bare
    /// [`LeasedJob`] (the original shape). Present: answered as
    /// [`LeasedJobs`], even for 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u32>,
}

/// Most jobs one lease call may return.
pub const MAX_LEASE_BATCH: u32 = 64;

/// Answer to a lease with `max_jobs`: at least one job (204 when none
/// arrived within `wait_ms`), oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LeasedJobs {
    pub jobs: Vec<LeasedJob>,
}

/// A job leased to the island.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LeasedJob {
    pub job_id: String,
    /// Proves the lease in renew/chunk/result calls.
    pub lease_id: String,
    /// Unix milliseconds; renew before.
    pub lease_expires_at: i64,
    pub workload_id: i64,
    pub workload_slug: String,
    pub runtime: String,
    /// `plain`, `tee`, `he`.
    pub mode: String,
    pub max_seconds: i64,
    /// Plain: the job's JSON input. TEE/HE: `{"encrypted": true, "key_id",
    /// "ciphertext"}` exactly as submitted.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
    /// TEE: which of this island's enclave keys the envelope names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enclave_key_id: Option<String>,
}

/// `POST /island/jobs/{id}/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RenewRequest {
    pub lease_id: String,
    /// Marks the job `running` (first renewal after start).
    #[serde(default)]
    pub running: bool,
}

/// Renewal answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RenewResponse {
    pub lease_expires_at: i64,
    pub state: String,
}

/// `POST /island/jobs/{id}/chunks`: a streamed output piece (sealed chunk
/// for confidential jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ChunkPost {
    pub lease_id: String,
    pub seq: i64,
    pub data: String,
}

/// `POST /island/jobs/{id}/release`: give a leased job back without a
/// result (the island cannot run it, or is shutting down). The job is
/// requeued for its other recipients (never this island) and nothing is
/// charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReleaseRequest {
    pub lease_id: String,
    /// Why, for the coordinator's log (a short code, e.g. `draining`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Answer to a release: the job's state afterwards (`queued`, or `failed`
/// when no recipient or attempt is left).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReleaseResponse {
    pub state: String,
}

/// `POST /island/jobs/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResultPost {
    pub lease_id: String,
    /// `succeeded` or `failed`.
    pub outcome: String,
    /// Execution time the island measured, ms (the coordinator bills the
    /// smaller of this and the time since the lease).
    #[serde(default)]
    pub execution_ms: i64,
    /// Plain: any JSON. TEE/HE: `{"encrypted": true, "key_id",
    /// "ciphertext", "enclave_key_id"?}` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::api::JobError>,
}

/// Result accepted (or already recorded: posting twice is harmless).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ResultResponse {
    pub state: String,
    /// Credits charged to the client.
    pub cost: i64,
    /// Credits earned by the island's owner.
    pub earned: i64,
}

/// `GET /island/he-keys/{key_id}`: public HE material for evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HeKeyMaterial {
    pub key_id: String,
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_keys: Option<String>,
}
