//! The sim evidence source: signs sim claims with the operator's software
//! root, and the helper that computes a sim enclave's measurement.

use std::io::Read as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha384};

use super::{EvidenceError, EvidenceSource};
use crate::verify::sim::{SimClaims, SimRoot};
use crate::{Evidence, TeeType};

/// Produces sim evidence for a fixed measurement.
#[derive(Debug)]
pub struct SimEvidenceSource {
    root: SimRoot,
    measurement: [u8; 48],
    svn: u32,
    debug: bool,
}

impl SimEvidenceSource {
    /// A source signing with `root` for an enclave measured as `measurement`.
    pub fn new(root: SimRoot, measurement: [u8; 48]) -> Self {
        SimEvidenceSource {
            root,
            measurement,
            svn: 0,
            debug: false,
        }
    }

    /// Set the reported SVN.
    pub fn with_svn(mut self, svn: u32) -> Self {
        self.svn = svn;
        self
    }

    /// Set the reported debug flag (for tests of refusal).
    pub fn with_debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// The root's public key.
    pub fn root_public_key(&self) -> [u8; 32] {
        self.root.public_key()
    }

    /// Produce evidence with an explicit timestamp.
    pub fn collect_at(&self, report_data: &[u8; 64], timestamp: u64) -> Evidence {
        let blob = self.root.sign(&SimClaims {
            measurement: self.measurement,
            report_data: *report_data,
            svn: self.svn,
            debug: self.debug,
            timestamp,
        });
        Evidence {
            tee: TeeType::Sim,
            evidence: blob,
            endorsements: Vec::new(),
        }
    }
}

impl EvidenceSource for SimEvidenceSource {
    fn tee_type(&self) -> TeeType {
        TeeType::Sim
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(self.collect_at(report_data, now))
    }
}

/// SHA-384 over the given files in order: for each, its length (u64 BE)
/// then its bytes, after the domain `"archipelago-measure-v1"`. Used as the
/// sim enclave's measurement of its binary, shared libraries and model files.
pub fn measure_files<P: AsRef<Path>>(paths: &[P]) -> std::io::Result<[u8; 48]> {
    let mut h = Sha384::new();
    h.update(b"archipelago-measure-v1");
    let mut buf = vec![0u8; 1 << 16];
    for p in paths {
        let mut f = std::fs::File::open(p.as_ref())?;
        h.update(f.metadata()?.len().to_be_bytes());
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{verify, TrustAnchors};

    #[test]
    fn sim_source_round_trip() {
        let src = SimEvidenceSource::new(SimRoot::from_seed(&[1; 32]), [5; 48]).with_svn(2);
        let ev = src.collect(&[3; 64]).unwrap();
        let anchors = TrustAnchors {
            sim_roots: vec![src.root_public_key()],
            ..Default::default()
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let r = verify(&ev, &anchors, now).unwrap();
        assert_eq!(r.measurements["measurement"], hex::encode([5u8; 48]));
    }

    #[test]
    fn measure_files_depends_on_content_and_order() {
        let d = std::env::temp_dir().join(format!("attest-measure-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("a"), b"ab").unwrap();
        std::fs::write(d.join("b"), b"c").unwrap();
        std::fs::write(d.join("c"), b"a").unwrap();
        std::fs::write(d.join("e"), b"bc").unwrap();
        let ab = measure_files(&[d.join("a"), d.join("b")]).unwrap();
        let ba = measure_files(&[d.join("b"), d.join("a")]).unwrap();
        let split = measure_files(&[d.join("c"), d.join("e")]).unwrap();
        assert_ne!(ab, ba);
        assert_ne!(ab, split);
        assert!(measure_files(&[d.join("missing")]).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
