//! Archipelago CPU inference: the `chat`, `embed` and `classify` workloads,
//! their manifests, and fetching of the pinned model files.
//!
//! The enclave runs these for confidential jobs and the island agent for
//! plain ones, through one [`Runtime`]. Inputs and outputs are plaintext of
//! users' jobs: nothing here logs them or puts them in an error.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod chat;
pub mod classify;
pub mod data;
pub mod embed;
pub mod error;
pub mod manifest;
pub mod minilm;
pub mod models;
pub mod runtime;
mod team;

pub use error::InferenceError;
pub use manifest::{Manifest, WorkloadKind};
pub use models::{fetch_all, models_dir, FetchError, FetchEvent, FetchReport, ModelStore};
pub use runtime::Runtime;
