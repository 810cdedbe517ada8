//! Request records: what a client must remember between sealing a request
//! and opening its response. A response header names the request id and
//! the enclave key that wrote it; the client accepts it only if it sent
//! that request id and chose that enclave key, after verifying its
//! evidence. Records hold ids and public keys only — never plaintext, never
//! secret keys — one JSON file per request, mode 0600, so the gateway and
//! `archipelago jobs get` can decrypt outputs of earlier runs.

use std::path::{Path, PathBuf};

use archipelago_proto::envelope::RequestId;
use serde::{Deserialize, Serialize};

use crate::error::KeystoreError;
use crate::keystore::write_secret_file;

/// Largest record file read.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// One enclave a request was sealed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRecipient {
    pub key_id: String,
    /// Standard base64.
    pub public_key: String,
}

/// What was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Hex of the 16-byte request id.
    pub request_id: String,
    pub workload_id: u64,
    pub client_key_id: String,
    pub recipients: Vec<RecordedRecipient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub created_at: i64,
}

impl RequestRecord {
    /// The request id bytes.
    pub fn request_id_bytes(&self) -> Option<RequestId> {
        hex::decode(&self.request_id).ok()?.try_into().ok()
    }
}

/// A directory of request records.
#[derive(Debug, Clone)]
pub struct RequestRecords {
    dir: PathBuf,
}

impl RequestRecords {
    pub fn open(dir: impl Into<PathBuf>) -> Result<RequestRecords, KeystoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| KeystoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(RequestRecords { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, request_id_hex: &str) -> Option<PathBuf> {
        if request_id_hex.len() == 32 && request_id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some(
                self.dir
                    .join(format!("{}.json", request_id_hex.to_ascii_lowercase())),
            )
        } else {
            None
        }
    }

    pub fn save(&self, r: &RequestRecord) -> Result<(), KeystoreError> {
        let path = self
            .path(&r.request_id)
            .ok_or_else(|| KeystoreError::Corrupt {
                path: self.dir.display().to_string(),
                reason: "request id is not 32 hex digits".into(),
            })?;
        let text = serde_json::to_vec_pretty(r).map_err(|e| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        write_secret_file(&path, &text)
    }

    pub fn get(&self, request_id: &RequestId) -> Result<Option<RequestRecord>, KeystoreError> {
        let Some(path) = self.path(&hex::encode(request_id)) else {
            return Ok(None);
        };
        self.read(&path)
    }

    fn read(&self, path: &Path) -> Result<Option<RequestRecord>, KeystoreError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(KeystoreError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        if meta.len() > MAX_RECORD_BYTES {
            return Err(corrupt("record file too large".into()));
        }
        let bytes = std::fs::read(path).map_err(|source| KeystoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// The record of the request submitted as `job_id`.
    pub fn by_job(&self, job_id: &str) -> Result<Option<RequestRecord>, KeystoreError> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Ok(None);
        };
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            if let Ok(Some(r)) = self.read(&path) {
                if r.job_id.as_deref() == Some(job_id) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_get_by_job() {
        let d = tempfile::tempdir().unwrap();
        let rr = RequestRecords::open(d.path()).unwrap();
        let id = [7u8; 16];
        let r = RequestRecord {
            request_id: hex::encode(id),
            workload_id: 5,
            client_key_id: "ck_x".into(),
            recipients: vec![],
            job_id: Some("job_1".into()),
            created_at: 0,
        };
        rr.save(&r).unwrap();
        assert_eq!(rr.get(&id).unwrap(), Some(r.clone()));
        assert_eq!(rr.by_job("job_1").unwrap(), Some(r));
        assert_eq!(rr.get(&[8u8; 16]).unwrap(), None);
        let bad = RequestRecord {
            request_id: "../x".into(),
            ..rr.get(&id).unwrap().unwrap()
        };
        assert!(rr.save(&bad).is_err());
    }
}
