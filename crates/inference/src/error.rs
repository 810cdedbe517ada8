//! The library's error type.
//!
//! Inputs and outputs of confidential jobs are plaintext that must never
//! leave the enclave, so no variant here carries job data: invalid inputs are
//! described by sizes, limits and field names only, and engine failures keep
//! the engine's own message (shapes, dtypes), never tensors or text.

use crate::models::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The input JSON is malformed or breaks a limit. The message names the
    /// field and the limit, never the content.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Model files are absent or could not be fetched.
    #[error(transparent)]
    Models(#[from] FetchError),
    /// A model file on disk is not the one pinned in the workload manifest.
    #[error("model file {file} does not match its manifest: expected sha256 {expected}, got {actual}; run scripts/fetch-models.sh again")]
    ModelHash {
        file: String,
        expected: String,
        actual: String,
    },
    /// A model file could not be read or parsed.
    #[error("cannot load {what}: {reason}")]
    Load { what: String, reason: String },
    /// The engine failed while running a job.
    #[error("inference failed in {stage}: {reason}")]
    Engine { stage: &'static str, reason: String },
}

impl InferenceError {
    pub(crate) fn input(msg: impl Into<String>) -> Self {
        Self::InvalidInput(msg.into())
    }

    pub(crate) fn engine(stage: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Engine {
            stage,
            reason: e.to_string(),
        }
    }

    pub(crate) fn load(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Load {
            what: what.into(),
            reason: e.to_string(),
        }
    }
}
