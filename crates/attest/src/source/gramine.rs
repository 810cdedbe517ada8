//! Gramine SGX evidence source: Gramine exposes DCAP quotes through its
//! `/dev/attestation` pseudo-files — write the 64-byte report data to
//! `user_report_data`, read the quote from `quote`. The root is configurable
//! so tests can run against a fake tree. Collateral is not available inside
//! the enclave; the host attaches it from a PCCS.

use std::path::PathBuf;

use super::{EvidenceError, EvidenceSource};
use crate::{Evidence, TeeType};

/// Gramine's attestation directory.
pub const DEFAULT_GRAMINE_ROOT: &str = "/dev/attestation";
const MAX_QUOTE: u64 = 64 * 1024;

/// SGX quotes through Gramine.
#[derive(Debug, Clone)]
pub struct GramineSgxSource {
    root: PathBuf,
}

impl GramineSgxSource {
    /// A source under `root` (normally [`DEFAULT_GRAMINE_ROOT`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        GramineSgxSource { root: root.into() }
    }

    fn io(&self, file: &str, e: impl std::fmt::Display) -> EvidenceError {
        EvidenceError::Io {
            tee: TeeType::Sgx,
            path: self.root.join(file).display().to_string(),
            detail: e.to_string(),
        }
    }
}

impl EvidenceSource for GramineSgxSource {
    fn tee_type(&self) -> TeeType {
        TeeType::Sgx
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        use std::io::Read as _;
        if let Ok(kind) = std::fs::read_to_string(self.root.join("attestation_type")) {
            if kind.trim() != "dcap" {
                return Err(self.io(
                    "attestation_type",
                    format!("{:?}, expected \"dcap\"", kind.trim()),
                ));
            }
        }
        std::fs::write(self.root.join("user_report_data"), report_data)
            .map_err(|e| self.io("user_report_data", e))?;
        let f = std::fs::File::open(self.root.join("quote")).map_err(|e| self.io("quote", e))?;
        let mut quote = Vec::new();
        f.take(MAX_QUOTE + 1)
            .read_to_end(&mut quote)
            .map_err(|e| self.io("quote", e))?;
        if quote.len() as u64 > MAX_QUOTE || quote.is_empty() {
            return Err(self.io(
                "quote",
                format!("{} bytes, expected 1..={MAX_QUOTE}", quote.len()),
            ));
        }
        Evidence::new(TeeType::Sgx, quote, Vec::new()).map_err(|source| EvidenceError::Invalid {
            tee: TeeType::Sgx,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_dev_attestation() {
        let d = std::env::temp_dir().join(format!("attest-gramine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let src = GramineSgxSource::new(&d);
        assert_eq!(src.tee_type(), TeeType::Sgx);
        // No quote file: a clear I/O error naming the path.
        let e = src.collect(&[1; 64]).unwrap_err();
        assert!(e.to_string().contains("quote"), "{e}");
        std::fs::write(d.join("quote"), vec![4u8; 4600]).unwrap();
        std::fs::write(d.join("attestation_type"), "dcap\n").unwrap();
        let ev = src.collect(&[2; 64]).unwrap();
        assert_eq!(
            std::fs::read(d.join("user_report_data")).unwrap(),
            vec![2u8; 64]
        );
        assert_eq!(ev.evidence.len(), 4600);
        std::fs::write(d.join("attestation_type"), "epid").unwrap();
        assert!(src.collect(&[2; 64]).is_err());
        std::fs::write(d.join("attestation_type"), "dcap").unwrap();
        std::fs::write(d.join("quote"), vec![0u8; (MAX_QUOTE + 1) as usize]).unwrap();
        assert!(src.collect(&[2; 64]).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
