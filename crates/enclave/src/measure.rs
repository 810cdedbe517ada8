//! The sim enclave's measurement: SHA-384 (`archipelago_attest::measure_files`)
//! over the enclave binary itself and the model files of the workloads it
//! offers, so a policy can pin it exactly as it pins a hardware measurement.
//! `archipelago-enclave measure` prints the same value without starting.

use std::path::PathBuf;

use crate::workload::Workloads;

/// The files measured, in order: this executable, then the model files.
pub fn measured_files(workloads: &Workloads) -> std::io::Result<Vec<PathBuf>> {
    let exe = std::env::current_exe()?;
    Ok(std::iter::once(exe)
        .chain(workloads.measured_files())
        .collect())
}

/// The measurement, lowercase hex (96 characters).
pub fn measurement_hex(workloads: &Workloads) -> std::io::Result<String> {
    let files = measured_files(workloads)?;
    let m = archipelago_attest::measure_files(&files)?;
    Ok(hex::encode(m))
}
