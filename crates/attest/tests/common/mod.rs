//! Shared helpers for the real-evidence tests: locate `../shared/testdata/
//! attestation` (relative to the repository root) and fail loudly if absent.
#![allow(dead_code)]

use std::path::PathBuf;

/// The attestation test-data folder. Panics with a clear message if missing.
pub fn testdata() -> PathBuf {
    let dir = std::env::var_os("ARCHIPELAGO_ATTESTATION_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/attestation")
        });
    assert!(
        dir.join("README.md").is_file(),
        "real attestation evidence not found at {} — these tests need the shared folder \
         `../shared/testdata/attestation/` next to the repository (or set \
         ARCHIPELAGO_ATTESTATION_TESTDATA); refusing to pass without it",
        dir.display()
    );
    dir
}

/// Read one sample file.
pub fn read(rel: &str) -> Vec<u8> {
    let p = testdata().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read test evidence {}: {e}", p.display()))
}
