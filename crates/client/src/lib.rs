//! The Archipelago client SDK: everything that runs on the user's machine,
//! the only place besides an attested enclave where a confidential job's
//! plaintext may exist.
//!
//! - [`keystore`]: X25519 client keys (`ck_…`) in files of mode 0600,
//!   optionally sealed under a passphrase (Argon2id + ChaCha20-Poly1305).
//! - [`he_keystore`], [`he`]: homomorphic (`he-bfv`) keys and jobs: the
//!   MiniLM embedding is computed here, encrypted under BFV, evaluated by
//!   any island on ciphertext, and decrypted here.
//! - [`config`]: where the coordinator is, the API key, the user's own
//!   attestation policy (config file, then environment).
//! - [`http`]: a typed client of the coordinator's `/api/v1`.
//! - [`verify`]: the relying-party step: every enclave's evidence is verified
//!   and appraised with the *user's* policy, never the coordinator's verdict.
//! - [`session`]: seal an input to K verified enclaves, submit, wait or
//!   stream, open and authenticate the response, decrypt.
//! - [`records`]: what the client must remember between encrypting and
//!   decrypting (request id, chosen enclave keys); ids and public keys only.
//! - [`gateway`]: the local HTTP gateway serving the product page's API and
//!   an OpenAI-compatible API on 127.0.0.1.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod gateway;
pub mod he;
pub mod he_keystore;
pub mod http;
pub mod keystore;
pub mod records;
pub mod session;
pub mod sse;
pub mod verify;

pub use config::ClientConfig;
pub use error::{ClientError, KeystoreError};
pub use he_keystore::StoredHeKey;
pub use http::ApiClient;
pub use keystore::{Keystore, StoredKey};
pub use session::{ConfidentialOutput, Session, StreamEvent};
pub use verify::{appraise_enclaves, Appraisal, Refusal, VerifiedEnclave};
