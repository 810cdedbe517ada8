//! Public HTTP API types (`/api/v1`), shared by the coordinator, the SDK and
//! the gateway so both ends of every request agree on one definition.
//!
//! The JSON shapes of the product page are a contract: `POST /jobs` with
//! `{"workload_id", "confidential", "encryption_key_id", "input": {"encrypted",
//! "key_id", "ciphertext"}}`, `POST /confidential/keys` answering
//! `{"key_id", "public_key"}` and `GET /confidential/stats` answering
//! `{"tee_types": {...}, "attested_hosts": n}`. Fields may be added, never
//! renamed. Ids travel as strings (`ck_…`, `ek_…`, `job_…`, `isl_…`); the
//! receiving side parses them with [`crate::ids::KeyId::parse`] where they are
//! key ids. Public keys are standard base64, envelopes and other ciphertext
//! base64url without padding (see [`crate::b64`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A machine-readable `code` (snake_case, stable) and a human `message` that
/// says what failed and what to do. `fields` lists per-field problems (422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

/// One invalid request field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Health {
    /// `"ok"` when the database answers.
    pub status: String,
    pub version: String,
    /// `"sqlite"` or `"postgres"`.
    pub database: String,
}

// ---------------------------------------------------------------- keys

/// Key kinds the registry accepts.
pub const KEY_KIND_X25519: &str = "x25519";
/// BFV homomorphic key: `public_key` is the BFV public key, evaluation keys
/// go in `evaluation_keys`.
pub const KEY_KIND_HE_BFV: &str = "he-bfv";

/// `POST /confidential/keys`: register the public half of a key made on the
/// user's machine. `key_id` is optional; when given it must match the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RegisterKeyRequest {
    /// Standard base64 (URL-safe accepted). 32 bytes for `x25519`.
    pub public_key: String,
    /// `"x25519"` (default) or `"he-bfv"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The id the client computed; checked against the key when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// HE evaluation keys (base64), `he-bfv` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_keys: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// A registered key: `{key_id, public_key}` as on the product page, plus
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyInfo {
    pub key_id: String,
    /// Standard base64.
    pub public_key: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// HE parameter set (`he-bfv` keys only), e.g. `bfv-n8192-q150-t40-v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

/// `GET /confidential/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

// ---------------------------------------------------------------- enclaves

/// One attested enclave key, with everything a client needs to verify it
/// for itself (never trust the coordinator's verdict).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnclaveInfo {
    /// `ek_…`, self-certifying over `public_key`.
    pub key_id: String,
    /// X25519 public key, standard base64.
    pub public_key: String,
    /// `sgx`, `tdx`, `sev`, `nitro`, `trustzone` or `sim`.
    pub tee_type: String,
    pub island_id: String,
    /// Unix seconds after which the enclave stops using this key.
    pub key_expires_at: i64,
    /// The coordinator's nonce the evidence binds (standard base64).
    pub nonce: String,
    /// Unix seconds of the coordinator's last successful verification.
    pub attested_at: i64,
    /// The coordinator routes to this key until then (re-attestation
    /// interval with one missed round tolerated, capped by key expiry).
    pub valid_until: i64,
    /// The evidence exactly as the enclave produced it:
    /// `{"tee", "evidence", "endorsements"}` (archipelago-attest JSON).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub evidence: serde_json::Value,
    /// Primary measurement (hex) the coordinator saw, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Workloads this island can run.
    pub workload_ids: Vec<i64>,
}

/// `GET /confidential/enclaves?workload_id=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnclaveList {
    pub enclaves: Vec<EnclaveInfo>,
}

/// `GET /confidential/stats`: the product page's shape, plus counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConfidentialStats {
    /// Attested hosts per TEE type (`sim` only when the policy accepts it).
    pub tee_types: BTreeMap<String, u64>,
    pub attested_hosts: u64,
    /// Online islands able to evaluate homomorphic workloads.
    #[serde(default)]
    pub he_capable_hosts: u64,
    /// Attested enclave keys currently routable.
    #[serde(default)]
    pub attested_enclave_keys: u64,
    /// Homomorphic jobs by state (`queued`, `assigned`, `running`,
    /// `succeeded`, `failed`, `cancelled`), counted apart from TEE jobs.
    #[serde(default)]
    pub he_jobs: BTreeMap<String, u64>,
    /// TEE jobs by state.
    #[serde(default)]
    pub tee_jobs: BTreeMap<String, u64>,
}

// ---------------------------------------------------------------- workloads

/// A workload (model + runtime) with its price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Workload {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    /// Runtime an island must offer (`candle`, `echo`, `he`).
    pub runtime: String,
    /// Memory the workload needs, MiB.
    pub memory_mb: i64,
    /// Credits per second of measured execution time.
    pub price_per_second: i64,
    /// Longest execution billed; the hold at submission is
    /// `price_per_second * max_seconds`.
    pub max_seconds: i64,
    pub max_cost: i64,
    /// Runs as a plain (unencrypted) job.
    pub plain: bool,
    /// Runs confidentially in an attested TEE enclave.
    pub confidential: bool,
    /// Runs on homomorphically encrypted input on any HE-capable island.
    pub homomorphic: bool,
}

/// `GET /workloads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WorkloadList {
    pub workloads: Vec<Workload>,
}

// ---------------------------------------------------------------- jobs

/// Job modes.
pub const MODE_PLAIN: &str = "plain";
/// Confidential, TEE enclave.
pub const MODE_TEE: &str = "tee";
/// Confidential, homomorphic encryption.
pub const MODE_HE: &str = "he";

/// `POST /jobs`. Confidential (product page shape):
/// `{"workload_id", "confidential": true, "encryption_key_id",
/// "input": {"encrypted": true, "key_id", "ciphertext"}}` where `ciphertext`
/// is the sealed envelope (base64url) for TEE jobs or the BFV ciphertext for
/// HE jobs (the mode follows the registered key's kind). Plain:
/// `{"workload_id", "input": <any JSON>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SubmitJobRequest {
    pub workload_id: i64,
    #[serde(default)]
    pub confidential: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
    /// `"tee"` or `"he"`; inferred from the key kind when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input: serde_json::Value,
    /// Seconds the job may wait for an island before it fails (default from
    /// the coordinator's configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// The encrypted input or output object: `{"encrypted": true, "key_id",
/// "ciphertext"}` (+ `enclave_key_id` on outputs of TEE jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EncryptedPayload {
    pub encrypted: bool,
    pub key_id: String,
    /// base64url without padding.
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enclave_key_id: Option<String>,
}

/// Job states.
pub const JOB_STATES: [&str; 6] = [
    "queued",
    "assigned",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

/// A job as its owner sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Job {
    pub id: String,
    pub workload_id: i64,
    /// `queued`, `assigned`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    pub confidential: bool,
    /// `plain`, `tee` or `he`.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key_id: Option<String>,
    /// Enclave keys the envelope is sealed to (TEE jobs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub island_id: Option<String>,
    /// Plain jobs: the workload's JSON output. Confidential jobs: an
    /// [`EncryptedPayload`] sealed inside the enclave to the client key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Credits held at submission (the workload's maximum cost).
    pub hold: i64,
    /// Credits charged at settlement (0 when refunded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_ms: Option<i64>,
    pub attempts: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Unix milliseconds after which a job still queued fails.
    pub deadline_at: i64,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// `GET /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// An output chunk as streamed on `GET /jobs/{id}/stream` (event `chunk`).
/// For confidential jobs `data` is a sealed chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct JobChunk {
    pub seq: i64,
    pub data: String,
}

// ---------------------------------------------------------------- account

/// `GET /account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AccountView {
    pub id: String,
    pub name: String,
    /// Credits available to spend.
    pub balance: i64,
    /// Credits held for unfinished jobs.
    pub held: i64,
    pub admin: bool,
    /// Most recent ledger entries of this account, newest first.
    pub ledger: Vec<LedgerEntry>,
}

/// One line of the append-only double-entry ledger. Entries of one
/// `txn_id` sum to zero over all books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LedgerEntry {
    pub id: String,
    pub txn_id: String,
    /// `available`, `held` (the account's books) or `platform`, `issuance`.
    pub book: String,
    /// `grant`, `hold`, `charge`, `earning`, `platform_fee`, `release`, `refund`.
    pub kind: String,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// `POST /admin/accounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateAccountRequest {
    pub name: String,
    #[serde(default)]
    pub credits: i64,
}

/// Answer to `POST /admin/accounts`: the account and its first API key
/// (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreatedAccount {
    pub account_id: String,
    pub api_key: String,
}

/// `POST /admin/accounts/{id}/grant`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct GrantRequest {
    pub credits: i64,
}

/// `POST /admin/enrollment-tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateEnrollmentTokenRequest {
    /// Account credited with the islands' earnings (default: the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_account_id: Option<String>,
    /// How many islands may enroll with it (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<i64>,
}

/// An enrollment token (shown once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnrollmentToken {
    pub enrollment_token: String,
}

// ---------------------------------------------------------------- api keys

/// `POST /api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct CreateApiKeyRequest {
    #[serde(default)]
    pub name: String,
    /// Subset of `read`, `write` (default both). `admin` only from an admin.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// An API key's metadata; `api_key` (the secret) only in the creation answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiKeyInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// `GET /api-keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

// ---------------------------------------------------------------- islands

/// `GET /islands`: the public view of an island (no owner, no token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct IslandInfo {
    pub id: String,
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tee_type: Option<String>,
    /// Holds a currently attested, routable enclave key.
    pub attested: bool,
    pub he_capable: bool,
    pub runtimes: Vec<String>,
    pub memory_mb: i64,
    pub capacity: i64,
    /// 0.0 ..= 1.0 as last reported.
    pub load: f64,
    /// Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<i64>,
}

/// `GET /islands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct IslandList {
    pub islands: Vec<IslandInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_job_request_parses() {
        let body = r#"{
          "workload_id": 42,
          "confidential": true,
          "encryption_key_id": "ck_a1b2c3",
          "input": {"encrypted": true, "key_id": "ck_a1b2c3", "ciphertext": "AAAA"}
        }"#;
        let r: SubmitJobRequest = serde_json::from_str(body).unwrap();
        assert_eq!(r.workload_id, 42);
        assert!(r.confidential);
        let input: EncryptedPayload = serde_json::from_value(r.input).unwrap();
        assert!(input.encrypted);
        assert_eq!(input.key_id, "ck_a1b2c3");
    }

    #[test]
    fn stats_keep_the_seed_field_names() {
        let s = ConfidentialStats {
            tee_types: [("sgx".to_string(), 12u64)].into_iter().collect(),
            attested_hosts: 12,
            he_capable_hosts: 3,
            attested_enclave_keys: 12,
            he_jobs: [("running".to_string(), 2u64)].into_iter().collect(),
            tee_jobs: Default::default(),
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["tee_types"]["sgx"], 12);
        assert_eq!(v["attested_hosts"], 12);
        assert_eq!(v["he_capable_hosts"], 3);
        assert_eq!(v["he_jobs"]["running"], 2);
        // The seed's two-field shape still parses.
        let seed: ConfidentialStats =
            serde_json::from_str(r#"{"tee_types": {"sgx": 12, "sev": 5}, "attested_hosts": 17}"#)
                .unwrap();
        assert_eq!(seed.attested_hosts, 17);
        assert!(seed.he_jobs.is_empty());
    }
}
