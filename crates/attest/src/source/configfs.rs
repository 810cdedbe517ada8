//! Linux configfs-tsm evidence source (`/sys/kernel/config/tsm/report`),
//! the kernel's common interface for SEV-SNP and TDX guests: make a report
//! directory, write the 64-byte report data to `inblob`, read `provider`,
//! `outblob` (the SNP report or TDX quote), `auxblob` (SEV: the certificate
//! table, which may carry the VCEK) and `generation` (to detect a concurrent
//! writer), then remove the directory. The root is configurable so tests can
//! run against a fake tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{EvidenceError, EvidenceSource};
use crate::{Evidence, TeeType};

/// The default configfs-tsm report root.
pub const DEFAULT_TSM_ROOT: &str = "/sys/kernel/config/tsm/report";
/// GUID of the VCEK entry in the SEV-SNP certificate table.
const VCEK_GUID: [u8; 16] = [
    0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
const MAX_BLOB: u64 = 64 * 1024;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Evidence from configfs-tsm for an SEV-SNP or TDX guest.
#[derive(Debug, Clone)]
pub struct ConfigFsTsmSource {
    root: PathBuf,
    tee: TeeType,
}

impl ConfigFsTsmSource {
    /// A source for `tee` (`Sev` or `Tdx`) under `root`
    /// (normally [`DEFAULT_TSM_ROOT`]).
    pub fn new(root: impl Into<PathBuf>, tee: TeeType) -> Result<Self, EvidenceError> {
        if !matches!(tee, TeeType::Sev | TeeType::Tdx) {
            return Err(EvidenceError::Unavailable {
                tee,
                detail: "configfs-tsm serves SEV-SNP and TDX guests only".into(),
            });
        }
        Ok(ConfigFsTsmSource {
            root: root.into(),
            tee,
        })
    }

    fn io(&self, path: &Path, e: impl std::fmt::Display) -> EvidenceError {
        EvidenceError::Io {
            tee: self.tee,
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }

    fn read_limited(&self, path: &Path) -> Result<Vec<u8>, EvidenceError> {
        use std::io::Read as _;
        let f = std::fs::File::open(path).map_err(|e| self.io(path, e))?;
        let mut out = Vec::new();
        f.take(MAX_BLOB + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.io(path, e))?;
        if out.len() as u64 > MAX_BLOB {
            return Err(self.io(path, format!("more than {MAX_BLOB} bytes")));
        }
        Ok(out)
    }

    fn read_text(&self, path: &Path) -> Result<String, EvidenceError> {
        Ok(String::from_utf8_lossy(&self.read_limited(path)?)
            .trim()
            .to_string())
    }

    fn collect_in(&self, dir: &Path, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let inblob = dir.join("inblob");
        std::fs::write(&inblob, report_data).map_err(|e| self.io(&inblob, e))?;
        let provider = self.read_text(&dir.join("provider"))?;
        let expected = match self.tee {
            TeeType::Sev => "sev_guest",
            _ => "tdx_guest",
        };
        if provider != expected {
            return Err(self.io(
                &dir.join("provider"),
                format!("provider is {provider:?}, expected {expected:?}"),
            ));
        }
        let gen_before = self.read_text(&dir.join("generation"))?;
        let out = self.read_limited(&dir.join("outblob"))?;
        let gen_after = self.read_text(&dir.join("generation"))?;
        if gen_before != gen_after {
            return Err(self.io(
                dir,
                "another writer changed the request while reading (generation moved); retry",
            ));
        }
        let mut endorsements = Vec::new();
        if self.tee == TeeType::Sev {
            if let Ok(aux) = self.read_limited(&dir.join("auxblob")) {
                if let Some(vcek) = vcek_from_cert_table(&aux) {
                    endorsements.push(vcek);
                }
            }
        }
        Evidence::new(self.tee, out, endorsements).map_err(|source| EvidenceError::Invalid {
            tee: self.tee,
            source,
        })
    }
}

/// Find the VCEK in an SEV-SNP certificate table (GUID, offset, length
/// entries terminated by an all-zero entry).
pub fn vcek_from_cert_table(table: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    while at + 24 <= table.len() {
        let e = &table[at..at + 24];
        if e.iter().all(|b| *b == 0) {
            return None;
        }
        let off = u32::from_le_bytes(e[16..20].try_into().ok()?) as usize;
        let len = u32::from_le_bytes(e[20..24].try_into().ok()?) as usize;
        if e[..16] == VCEK_GUID {
            return table.get(off..off.checked_add(len)?).map(<[u8]>::to_vec);
        }
        at += 24;
    }
    None
}

impl EvidenceSource for ConfigFsTsmSource {
    fn tee_type(&self) -> TeeType {
        self.tee
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let name = format!(
            "archipelago-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.root.join(name);
        std::fs::create_dir(&dir).map_err(|e| self.io(&dir, e))?;
        let r = self.collect_in(&dir, report_data);
        // configfs removes the attribute files itself; in a fake tree they
        // are plain files, so clear them first.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for f in rd.flatten() {
                let _ = std::fs::remove_file(f.path());
            }
        }
        let _ = std::fs::remove_dir(&dir);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake kernel: creating a report directory makes its attribute files
    /// appear, the way configfs does.
    fn fake_kernel(
        root: PathBuf,
        provider: &'static str,
        out: Vec<u8>,
        aux: Option<Vec<u8>>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for _ in 0..2000 {
                if let Some(Ok(d)) = std::fs::read_dir(&root).ok().and_then(|mut r| r.next()) {
                    let p = d.path();
                    std::fs::write(p.join("outblob.tmp"), &out).unwrap();
                    std::fs::write(p.join("provider"), provider).unwrap();
                    std::fs::write(p.join("generation"), "1\n").unwrap();
                    if let Some(a) = &aux {
                        std::fs::write(p.join("auxblob"), a).unwrap();
                    }
                    std::fs::rename(p.join("outblob.tmp"), p.join("outblob")).unwrap();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("attest-tsm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn collect_when_ready(
        src: &ConfigFsTsmSource,
        root: &Path,
        rd: &[u8; 64],
    ) -> Result<Evidence, EvidenceError> {
        // Create the directory ourselves so the fake kernel can populate it
        // before the read, as configfs would synchronously.
        let dir = root.join("archipelago-test");
        std::fs::create_dir(&dir).unwrap();
        for _ in 0..2000 {
            if dir.join("outblob").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let r = src.collect_in(&dir, rd);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn sev_report_with_vcek_from_cert_table() {
        let root = tmp("sev");
        let vcek = b"fake-vcek-der".to_vec();
        let mut table = Vec::new();
        table.extend_from_slice(&VCEK_GUID);
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
        table.extend_from_slice(&[0u8; 24]);
        table.extend_from_slice(&vcek);
        let k = fake_kernel(root.clone(), "sev_guest\n", vec![7u8; 1184], Some(table));
        let src = ConfigFsTsmSource::new(&root, TeeType::Sev).unwrap();
        let ev = collect_when_ready(&src, &root, &[3; 64]).unwrap();
        k.join().unwrap();
        assert_eq!(ev.tee, TeeType::Sev);
        assert_eq!(ev.evidence, vec![7u8; 1184]);
        assert_eq!(ev.endorsements, vec![vcek]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn tdx_quote_and_inblob_written() {
        let root = tmp("tdx");
        let k = fake_kernel(root.clone(), "tdx_guest", vec![9u8; 5000], None);
        let src = ConfigFsTsmSource::new(&root, TeeType::Tdx).unwrap();
        let dir = root.join("archipelago-test");
        std::fs::create_dir(&dir).unwrap();
        k.join().unwrap();
        let ev = src.collect_in(&dir, &[5; 64]).unwrap();
        assert_eq!(std::fs::read(dir.join("inblob")).unwrap(), vec![5u8; 64]);
        assert_eq!(ev.evidence.len(), 5000);
        assert!(ev.endorsements.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn refusals() {
        assert!(ConfigFsTsmSource::new("/x", TeeType::Sgx).is_err());
        // Wrong provider.
        let root = tmp("wrong");
        let k = fake_kernel(root.clone(), "sev_guest", vec![1; 10], None);
        let src = ConfigFsTsmSource::new(&root, TeeType::Tdx).unwrap();
        let e = collect_when_ready(&src, &root, &[0; 64]).unwrap_err();
        k.join().unwrap();
        assert!(e.to_string().contains("provider"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
        // Missing root.
        let src = ConfigFsTsmSource::new("/nonexistent/tsm/report", TeeType::Sev).unwrap();
        assert!(src.collect(&[0; 64]).is_err());
        // Certificate table without a VCEK, or truncated.
        assert_eq!(vcek_from_cert_table(&[0u8; 24]), None);
        assert_eq!(vcek_from_cert_table(&[1u8; 30]), None);
    }
}
