//! Wire formats shared by every Archipelago component.
//!
//! Everything that crosses a process boundary is defined here once, so the
//! client, coordinator, island agent and enclave cannot drift apart:
//!
//! - [`ids`]: self-certifying key ids (`ck_…`, `ek_…`) anyone can check
//!   against the key they name.
//! - [`keys`]: X25519 key pairs; secret halves zeroize and never print.
//! - [`envelope`]: the sealed request (multi-recipient HPKE) and the sealed,
//!   optionally streamed, response. Byte layout: `docs/envelope.md`.
//! - [`b64`]: the two base64 alphabets the JSON API uses.
//! - [`api`], [`island`]: JSON types of the public and island-side APIs.
//! - [`channel`]: the framed island ↔ enclave channel (codes, never contents).
//!
//! This crate is linked into the enclave, so it stays small, does no I/O and
//! has no networking dependency.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod b64;
pub mod channel;
pub mod envelope;
pub mod ids;
pub mod island;
pub mod keys;

pub use envelope::{peek_header, EnvelopeError, HeaderView};
pub use ids::{IdError, KeyId, KeyPrefix};
pub use keys::{PublicKey, SecretKey};
