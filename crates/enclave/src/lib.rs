//! The trusted enclave runtime: the only Archipelago process that holds
//! enclave secret keys and the plaintext of confidential jobs.
//!
//! It is small on purpose (it is the trusted computing base): no networking,
//! no disk writes, no plaintext in logs, errors or `Debug` output. The
//! untrusted island agent starts it and talks to it only over the framed
//! channel of [`archipelago_proto::channel`] on stdin/stdout.
//!
//! - [`keyring`]: enclave keys generated inside, rotated, zeroized after grace.
//! - [`freshness`]: the skew window and the bounded replay cache.
//! - [`workload`]: `echo` and the real models of `archipelago_inference`.
//! - [`shares`]: each client's response Diffie-Hellman, kept per enclave key.
//! - [`decaps`]: decapsulations made between jobs for announced `enc`s.
//!   Both keep their secrets in a bounded map (`bounded`).
//! - [`enclave`]: the logic — evidence, job handling — with no I/O.
//! - [`serve`]: the channel loop and its threads.
//! - [`measure`]: the sim enclave's measurement (binary + model files).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(unsafe_code)]

mod bounded;
pub mod decaps;
pub mod enclave;
pub mod freshness;
pub mod keyring;
pub mod measure;
pub mod serve;
pub mod shares;
pub mod workload;

pub use enclave::{Config, Enclave};
pub use serve::{serve, ServeOptions};
pub use workload::{Workloads, ECHO_WORKLOAD_ID};
