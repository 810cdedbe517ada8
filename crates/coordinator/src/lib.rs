//! The Archipelago coordinator: the control plane of the network.
//!
//! It keeps accounts, API keys, workloads, the registry of client keys and
//! islands, attests islands' enclaves, places jobs, runs the job queue and
//! the billing ledger, and serves it all as a JSON HTTP API (`/api/v1`). It
//! never holds plaintext of a confidential job: it sees sealed envelopes
//! (from whose header it reads only the recipient enclave key ids) and
//! sealed outputs.
//!
//! Entry points: [`server::init`] (first admin key + enrollment token),
//! [`server::Coordinator`] (open, serve, shut down), [`store::Store`] (the
//! database, SQLite or PostgreSQL), [`api::router`].
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod app;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod placement;
pub mod server;
pub mod store;
pub mod util;

pub use config::Config;
pub use server::{init, Coordinator, CoordinatorError, InitOutput};
pub use store::{DbConfig, DbKind, Store};
