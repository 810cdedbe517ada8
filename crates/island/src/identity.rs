//! The island's identity: the id and `it_…` token the coordinator handed
//! out at enrollment, kept in `<data-dir>/island.json` (mode 0600) so a
//! restarted agent resumes as the same island instead of enrolling again.
//!
//! The token is a bearer secret: it never prints (`Debug` redacts it) and
//! the file is written atomically so a crash cannot leave half a token.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::IslandError;

/// File name inside the data directory.
pub const IDENTITY_FILE: &str = "island.json";
const MAX_IDENTITY_BYTES: u64 = 16 * 1024;

/// An enrolled island.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// `isl_…`
    pub island_id: String,
    /// `it_…`, the bearer token of every island-side call.
    pub island_token: String,
    /// The coordinator it enrolled with (a different one means enroll anew).
    pub coordinator: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("island_id", &self.island_id)
            .field("island_token", &"<redacted>")
            .field("coordinator", &self.coordinator)
            .finish()
    }
}

fn path_in(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_FILE)
}

impl Identity {
    /// Loads the identity from `dir`; `Ok(None)` when the island has not
    /// enrolled yet.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IslandError> {
        let path = path_in(dir);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IslandError::io(&path, e)),
        };
        if meta.len() > MAX_IDENTITY_BYTES {
            return Err(IslandError::Identity {
                path: path.display().to_string(),
                detail: format!("larger than {MAX_IDENTITY_BYTES} bytes"),
            });
        }
        let text = std::fs::read(&path).map_err(|e| IslandError::io(&path, e))?;
        let id: Identity = serde_json::from_slice(&text).map_err(|e| IslandError::Identity {
            path: path.display().to_string(),
            detail: format!(
                "not an island identity ({}); delete it to enroll again",
                e.classify_name()
            ),
        })?;
        if !id.island_token.starts_with("it_") || id.island_id.is_empty() {
            return Err(IslandError::Identity {
                path: path.display().to_string(),
                detail: "island_token must start with it_ and island_id must be set; delete it to enroll again".into(),
            });
        }
        Ok(Some(id))
    }

    /// Writes the identity to `dir` (created if needed) with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), IslandError> {
        std::fs::create_dir_all(dir).map_err(|e| IslandError::io(dir, e))?;
        let path = path_in(dir);
        let tmp = dir.join(format!(".{IDENTITY_FILE}.tmp"));
        let body = serde_json::to_vec_pretty(self).map_err(|_| IslandError::Identity {
            path: path.display().to_string(),
            detail: "cannot serialise".into(),
        })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| IslandError::io(&tmp, e))?;
        f.write_all(&body).map_err(|e| IslandError::io(&tmp, e))?;
        f.sync_all().map_err(|e| IslandError::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| IslandError::io(&path, e))
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "JSON syntax error",
            serde_json::error::Category::Data => "wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_is_private_and_debug_redacts() {
        let dir = std::env::temp_dir().join(format!("island-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Identity::load(&dir).unwrap(), None);
        let id = Identity {
            island_id: "isl_1".into(),
            island_token: "it_secret".into(),
            coordinator: "http://127.0.0.1:1".into(),
        };
        id.save(&dir).unwrap();
        assert_eq!(Identity::load(&dir).unwrap(), Some(id.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{id:?}").contains("it_secret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_and_oversized_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("island-identity-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(IDENTITY_FILE), b"{not json").unwrap();
        assert!(matches!(
            Identity::load(&dir),
            Err(IslandError::Identity { .. })
        ));
        std::fs::write(
            dir.join(IDENTITY_FILE),
            br#"{"island_id":"i","island_token":"x","coordinator":"c"}"#,
        )
        .unwrap();
        assert!(matches!(
            Identity::load(&dir),
            Err(IslandError::Identity { .. })
        ));
        std::fs::write(dir.join(IDENTITY_FILE), vec![b' '; 20_000]).unwrap();
        assert!(matches!(
            Identity::load(&dir),
            Err(IslandError::Identity { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
