//! The Archipelago island agent: the untrusted host-side process of an
//! island (`archipelago island`).
//!
//! It detects the host's TEE ([`tee`]), enrolls with the coordinator and
//! keeps its identity ([`identity`]), heartbeats, launches and supervises the
//! trusted `archipelago-enclave` process ([`enclave`]), answers attestation
//! challenges with the enclave's fresh evidence, leases jobs by long poll,
//! hands confidential envelopes to the enclave and relays its sealed
//! responses, renews leases, runs plain jobs itself ([`plain`]) and
//! homomorphic jobs on ciphertext ([`he`]), and drains on shutdown
//! ([`agent`]). All coordinator calls go through [`client`].
//!
//! By design this process never holds plaintext of a confidential job: it
//! sees envelope headers, ciphertext, public keys, evidence, ids, sizes and
//! error codes, and logs only ids and sizes.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod client;
pub mod enclave;
pub mod he;
pub mod identity;
pub mod plain;
pub mod tee;

use std::path::Path;

pub use agent::{run, AgentConfig};
pub use client::{ClientError, CoordinatorClient};
pub use enclave::{Backoff, Enclave, EnclaveCommand, EnclaveError};
pub use identity::Identity;
pub use plain::PlainRunner;
pub use tee::{choose, detect, Detected, TeeChoice, TeeMode};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum IslandError {
    /// A file or directory could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The identity file is unusable.
    #[error("island identity {path} is unusable: {detail}")]
    Identity {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        detail: String,
    },
    /// The island has not enrolled and has no token to do so.
    #[error("this island is not enrolled (no {file} in {dir}); pass --enrollment-token (ask the coordinator's operator for one)")]
    NotEnrolled {
        /// The identity file name.
        file: &'static str,
        /// The data directory.
        dir: String,
    },
    /// A configuration value is wrong.
    #[error("invalid island configuration: {0}")]
    Config(String),
    /// A coordinator call that must succeed failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The enclave could not be used.
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
}

/// Runs the agent on its own multi-threaded runtime until `shutdown`
/// resolves (the CLI passes its SIGINT/SIGTERM future), then drains.
pub fn run_blocking(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), IslandError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| IslandError::Io {
            path: "tokio runtime".into(),
            source: e,
        })?;
    rt.block_on(run(config, shutdown))
}

impl IslandError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> IslandError {
        IslandError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
