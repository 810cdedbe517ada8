//! Verifiers: one per TEE, each checking the vendor signature chain to a
//! pinned root, validity times at an explicit `now`, and the report fields,
//! and each producing the common [`AttestationResult`](crate::AttestationResult).

mod cache;
pub mod cca;
pub mod cose;
pub mod dcap;
pub mod nitro;
pub mod sev;
pub mod sim;
pub mod x509;
