//! Archipelago homomorphic mode: confidential inference on islands without a
//! TEE.
//!
//! The user's data stays encrypted under BFV (the pure-Rust `fhe` crate)
//! from the user's machine, through the coordinator and the island, and
//! back: the island computes on ciphertexts with its plaintext model and
//! never holds a key that decrypts them.
//!
//! - [`keys`]: `he-bfv` keys. [`HeSecretKey`] stays in the user's keystore;
//!   [`HePublicMaterial`] is registered with the coordinator; the id
//!   `ck_…` is self-certifying ([`key_id_for`]).
//! - [`classify`]: `he-classify`, a linear head on encrypted embeddings in
//!   one plaintext × ciphertext product.
//! - [`aggregate`]: `he-aggregate`, count / sum / mean / histogram over many
//!   encrypted records.
//! - [`sanitize`]: masking, re-randomisation and noise flooding, so responses
//!   reveal the answer and nothing more about the island's weights or other
//!   contributors' records.
//! - [`wire`]: the versioned binary format and its strict parser.
//! - [`params`]: the parameter set and its security level.
//!
//! Client calls: [`generate_keypair`], [`encrypt_features`],
//! [`decrypt_scores`], [`encrypt_records`], [`decrypt_aggregate`]. Island
//! calls (no secret): [`evaluate_classify`], [`evaluate_aggregate`].
//! Design, parameters, quantisation and security: `docs/he.md`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod aggregate;
pub mod classify;
mod error;
pub mod keys;
pub mod params;
pub mod sanitize;
mod scaled;
pub mod wire;

pub use aggregate::{
    decrypt_aggregate, encrypt_records, evaluate_aggregate, merge_aggregate_requests,
    AggregateColumn, AggregateResult, AggregateSchema, ColumnResult,
};
pub use classify::{
    decrypt_scores, encrypt_features, evaluate_classify, ClassifyScores, LinearHead,
    LinearHeadQuantised,
};
pub use error::HeError;
pub use keys::{
    generate_keypair, key_id_for, HeEncryptor, HePublicMaterial, HeSecretKey, KEY_KIND,
    MAX_PUBLIC_MATERIAL_BYTES,
};
pub use params::ParamSet;
pub use wire::{peek_header, peek_key_id, HeaderInfo, MessageKind};
