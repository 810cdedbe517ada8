//! Typed errors of the SDK. Each message says what failed and what to do
//! next; none contains plaintext of a job (enclave error reports are shown
//! to their owner only, on the user's machine, by the CLI or gateway).

use archipelago_proto::EnvelopeError;

use crate::verify::Refusal;

/// Keystore failures.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    #[error("keystore {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no key {key_id} in the keystore {dir}; see `archipelago keys list` or create one with `archipelago keys create`")]
    NotFound { key_id: String, dir: String },
    #[error("the keystore {dir} holds no key; create one with `archipelago keys create`")]
    Empty { dir: String },
    #[error("key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    InsecurePermissions { path: String, mode: u32 },
    #[error("key file {path} is not a valid Archipelago key file: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("key {key_id} is protected by a passphrase; set ARCHIPELAGO_KEY_PASSPHRASE (or give --passphrase-file)")]
    PassphraseRequired { key_id: String },
    #[error("wrong passphrase for key {key_id} (or the key file was altered)")]
    WrongPassphrase { key_id: String },
    #[error("not a key id: {0}")]
    BadKeyId(String),
}

/// SDK failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no API key: set ARCHIPELAGO_API_KEY or `api_key` in the config file ({config})")]
    NoApiKey { config: String },
    #[error("cannot reach the coordinator at {url}: {detail}; is it running? (`archipelago dev` starts a local network)")]
    Unreachable { url: String, detail: String },
    #[error("the coordinator refused the request ({status} {code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the coordinator ({what}): {detail}")]
    Protocol { what: String, detail: String },
    #[error("{}", no_enclave_message(.workload_id, .refused))]
    NoAcceptableEnclave {
        workload_id: Option<i64>,
        refused: Vec<Refusal>,
    },
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    #[error("sealed envelope: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("job {job_id} failed ({code}): {message}")]
    JobFailed {
        job_id: String,
        code: String,
        message: String,
    },
    #[error("job {job_id} was cancelled")]
    JobCancelled { job_id: String },
    #[error("the enclave reported an error for job {job_id}: {message}")]
    EnclaveReported { job_id: String, message: String },
    #[error("gave up after {secs} s waiting for job {job_id} (still {state}); check later with `archipelago jobs get {job_id}`")]
    Timeout {
        job_id: String,
        state: String,
        secs: u64,
    },
    #[error("the output was written by enclave key {found}, which is not one of the enclaves this request was sealed to ({expected}); refusing it")]
    UnexpectedEnclave { found: String, expected: String },
    #[error("no record of the request behind this output (request id {request_id}): only the SDK or gateway that encrypted the input can decrypt it")]
    UnknownRequest { request_id: String },
    #[error("homomorphic mode (--he) runs only the classify workload (he-classify) and he-aggregate; run other workloads with --confidential (TEE)")]
    HeUnavailable,
    #[error("homomorphic encryption: {0}")]
    He(String),
    #[error("the local MiniLM model (needed to embed the text on this machine before encrypting it) is not available: {0}")]
    LocalModel(String),
    #[error("attestation policy: {0}")]
    Policy(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// "no attested enclave for workload 42 matches your policy: 2 refused
/// because measurement not in allow-list; see `archipelago attest list`".
fn no_enclave_message(workload_id: &Option<i64>, refused: &[Refusal]) -> String {
    let what = match workload_id {
        Some(w) => format!("workload {w}"),
        None => "any workload".to_string(),
    };
    if refused.is_empty() {
        return format!(
            "no attested enclave for {what} is online at the coordinator; wait for an island with a TEE \
             to attest (`archipelago stats`), or check the workload id (`archipelago attest list`)"
        );
    }
    let mut groups: Vec<(String, usize)> = Vec::new();
    for r in refused {
        let reason = r.reason.summary();
        match groups.iter_mut().find(|(g, _)| *g == reason) {
            Some((_, n)) => *n += 1,
            None => groups.push((reason, 1)),
        }
    }
    let parts: Vec<String> = groups
        .iter()
        .map(|(g, n)| format!("{n} refused because {g}"))
        .collect();
    format!(
        "no attested enclave for {what} matches your policy: {}; see `archipelago attest list`",
        parts.join(", ")
    )
}

impl ClientError {
    /// A short stable code for scripts (`--json`) and gateway answers.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::NoApiKey { .. } => "no_api_key",
            ClientError::Unreachable { .. } => "coordinator_unreachable",
            ClientError::Api { .. } => "coordinator_error",
            ClientError::Protocol { .. } => "protocol_error",
            ClientError::NoAcceptableEnclave { .. } => "no_acceptable_enclave",
            ClientError::Keystore(KeystoreError::NotFound { .. }) => "unknown_key",
            ClientError::Keystore(KeystoreError::PassphraseRequired { .. }) => {
                "passphrase_required"
            }
            ClientError::Keystore(_) => "keystore_error",
            ClientError::Envelope(_) => "envelope_error",
            ClientError::JobFailed { .. } => "job_failed",
            ClientError::JobCancelled { .. } => "job_cancelled",
            ClientError::EnclaveReported { .. } => "enclave_error",
            ClientError::Timeout { .. } => "timeout",
            ClientError::UnexpectedEnclave { .. } => "unexpected_enclave",
            ClientError::UnknownRequest { .. } => "unknown_request",
            ClientError::HeUnavailable => "he_unavailable",
            ClientError::He(_) => "he_error",
            ClientError::LocalModel(_) => "local_model_unavailable",
            ClientError::Policy(_) => "policy_error",
            ClientError::Config(_) => "config_error",
            ClientError::InvalidInput(_) => "invalid_input",
        }
    }
}
