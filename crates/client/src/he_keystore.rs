//! Homomorphic (`he-bfv`) keys in the keystore.
//!
//! An HE key has a secret (8 KiB, it decrypts the user's HE results) and
//! public material (≈ 150 KiB, registered with the coordinator so islands
//! can evaluate on ciphertexts encrypted to it). Both live under
//! `<keystore>/he/`: `<key_id>.json` holds the secret in the same file
//! format and sealing as X25519 keys (`"kind": "he-bfv"`, plus `"params"`),
//! mode 0600; `<key_id>.pub` holds the public material bytes. A separate
//! directory keeps `archipelago keys list`/the default X25519 key unchanged.
//! On load the secret is checked against the key id and the public material.

use std::path::{Path, PathBuf};

use archipelago_he::{HePublicMaterial, HeSecretKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KeystoreError;
use crate::keystore::{open_secret, seal_secret, write_secret_file, Keystore, Passphrase};

/// Largest HE key file read (the secret is 8,229 bytes, ≈ 11 KiB base64).
pub const MAX_HE_KEY_FILE_BYTES: u64 = 64 * 1024;
/// Key kind in files and on the API.
pub const HE_KIND: &str = archipelago_he::KEY_KIND;

/// Public metadata of a stored HE key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredHeKey {
    pub key_id: String,
    /// Always `he-bfv`.
    pub kind: &'static str,
    /// Parameter set, e.g. `bfv-n8192-q150-t40-v1`.
    pub params: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub passphrase_protected: bool,
    pub path: PathBuf,
    /// The public material file.
    pub public_path: PathBuf,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeKeyFile {
    version: u32,
    kind: String,
    key_id: String,
    params: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    secret: crate::keystore::SecretField,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn valid_id(key_id: &str) -> bool {
    key_id.len() == 29
        && key_id.starts_with("ck_")
        && key_id[3..]
            .bytes()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
}

impl Keystore {
    fn he_dir(&self) -> PathBuf {
        self.dir().join("he")
    }

    fn he_paths(&self, key_id: &str) -> Result<(PathBuf, PathBuf), KeystoreError> {
        if !valid_id(key_id) {
            return Err(self.he_not_found(key_id));
        }
        let d = self.he_dir();
        Ok((
            d.join(format!("{key_id}.json")),
            d.join(format!("{key_id}.pub")),
        ))
    }

    fn he_not_found(&self, key_id: &str) -> KeystoreError {
        KeystoreError::NotFound {
            key_id: key_id.chars().take(64).collect(),
            dir: self.he_dir().display().to_string(),
        }
    }

    /// Whether the keystore holds an HE key with this id.
    pub fn is_he_key(&self, key_id: &str) -> bool {
        self.he_paths(key_id).is_ok_and(|(p, _)| p.exists())
    }

    /// Generates an `he-bfv` key pair and stores it (secret sealed under
    /// `passphrase` when given).
    pub fn create_he(
        &self,
        label: Option<&str>,
        passphrase: Option<&Passphrase>,
    ) -> Result<(StoredHeKey, HeSecretKey, HePublicMaterial), KeystoreError> {
        let (sk, pm) = archipelago_he::generate_keypair().map_err(|e| KeystoreError::Corrupt {
            path: self.he_dir().display().to_string(),
            reason: format!("HE key generation failed: {e}"),
        })?;
        let stored = self.import_he(&sk, &pm, label, passphrase)?;
        Ok((stored, sk, pm))
    }

    /// Stores an existing HE key pair.
    pub fn import_he(
        &self,
        sk: &HeSecretKey,
        pm: &HePublicMaterial,
        label: Option<&str>,
        passphrase: Option<&Passphrase>,
    ) -> Result<StoredHeKey, KeystoreError> {
        let key_id = pm.key_id().to_string();
        let (path, public_path) = self.he_paths(&key_id)?;
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        sk.verify_public_material(pm)
            .map_err(|e| corrupt(format!("the secret and public material differ: {e}")))?;
        let dir = self.he_dir();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|source| KeystoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let secret = seal_secret(&sk.to_bytes(), passphrase, &key_id, &path)?;
        let file = HeKeyFile {
            version: 1,
            kind: HE_KIND.into(),
            key_id: key_id.clone(),
            params: pm.param_set().name().into(),
            created_at: now_secs(),
            label: label.map(str::to_string),
            secret,
        };
        let text =
            Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| corrupt(e.to_string()))?);
        write_secret_file(&public_path, pm.to_bytes())?;
        write_secret_file(&path, &text)?;
        tracing::info!(key_id = %key_id, protected = passphrase.is_some(), "HE key stored");
        Ok(self.he_stored(path, public_path, &file))
    }

    fn he_stored(&self, path: PathBuf, public_path: PathBuf, f: &HeKeyFile) -> StoredHeKey {
        StoredHeKey {
            key_id: f.key_id.clone(),
            kind: HE_KIND,
            params: f.params.clone(),
            created_at: f.created_at,
            label: f.label.clone(),
            passphrase_protected: f.secret.scheme != "plain",
            path,
            public_path,
        }
    }

    fn read_he_file(&self, path: &Path) -> Result<HeKeyFile, KeystoreError> {
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let file: HeKeyFile = crate::keystore::read_private_json(path, MAX_HE_KEY_FILE_BYTES)?;
        if file.version != 1 || file.kind != HE_KIND {
            return Err(corrupt(format!(
                "version {} kind {:?} is not supported (version 1, {HE_KIND})",
                file.version, file.kind
            )));
        }
        if !valid_id(&file.key_id) {
            return Err(corrupt("key_id is not a ck_ id".into()));
        }
        Ok(file)
    }

    /// Metadata of one HE key.
    pub fn get_he(&self, key_id: &str) -> Result<StoredHeKey, KeystoreError> {
        let (path, public_path) = self.he_paths(key_id)?;
        if !path.exists() {
            return Err(self.he_not_found(key_id));
        }
        let f = self.read_he_file(&path)?;
        if f.key_id != key_id {
            return Err(KeystoreError::Corrupt {
                path: path.display().to_string(),
                reason: "key_id does not match the file name".into(),
            });
        }
        Ok(self.he_stored(path, public_path, &f))
    }

    /// Every HE key, oldest first.
    pub fn list_he(&self) -> Result<Vec<StoredHeKey>, KeystoreError> {
        let dir = self.he_dir();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(KeystoreError::Io {
                    path: dir.display().to_string(),
                    source,
                })
            }
        };
        let mut out = Vec::new();
        for entry in rd {
            let path = entry
                .map_err(|source| KeystoreError::Io {
                    path: dir.display().to_string(),
                    source,
                })?
                .path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if valid_id(id) {
                out.push(self.get_he(id)?);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(out)
    }

    /// The HE key to use when none is named: the newest.
    pub fn default_he_key(&self) -> Result<StoredHeKey, KeystoreError> {
        self.list_he()?.pop().ok_or_else(|| KeystoreError::Empty {
            dir: self.he_dir().display().to_string(),
        })
    }

    /// The public material of an HE key (checked against its id).
    pub fn load_he_public(&self, key_id: &str) -> Result<HePublicMaterial, KeystoreError> {
        let stored = self.get_he(key_id)?;
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: stored.public_path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(&stored.public_path).map_err(|source| KeystoreError::Io {
            path: stored.public_path.display().to_string(),
            source,
        })?;
        if meta.len() > archipelago_he::MAX_PUBLIC_MATERIAL_BYTES as u64 {
            return Err(corrupt(format!("{} bytes is too large", meta.len())));
        }
        let bytes = std::fs::read(&stored.public_path).map_err(|source| KeystoreError::Io {
            path: stored.public_path.display().to_string(),
            source,
        })?;
        let pm = HePublicMaterial::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?;
        if pm.key_id() != key_id {
            return Err(corrupt(
                "the public material does not belong to key_id".into(),
            ));
        }
        Ok(pm)
    }

    /// Loads the HE secret key, opening it with `passphrase` if sealed, and
    /// checks it against the key id's public material.
    pub fn load_he(
        &self,
        key_id: &str,
        passphrase: Option<&Passphrase>,
    ) -> Result<HeSecretKey, KeystoreError> {
        let stored = self.get_he(key_id)?;
        let f = self.read_he_file(&stored.path)?;
        let secret = open_secret(&f.secret, passphrase, key_id, &stored.path, 16 * 1024)?;
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: stored.path.display().to_string(),
            reason,
        };
        let sk = HeSecretKey::from_bytes(&secret).map_err(|e| corrupt(e.to_string()))?;
        if sk.key_id() != key_id {
            return Err(corrupt("the secret key does not belong to key_id".into()));
        }
        let pm = self.load_he_public(key_id)?;
        sk.verify_public_material(&pm)
            .map_err(|e| corrupt(format!("secret and public material differ: {e}")))?;
        Ok(sk)
    }

    /// Deletes an HE key (overwriting the secret file first).
    pub fn delete_he(&self, key_id: &str) -> Result<StoredHeKey, KeystoreError> {
        let stored = self.get_he(key_id)?;
        let io = |p: &Path, source| KeystoreError::Io {
            path: p.display().to_string(),
            source,
        };
        let len = std::fs::metadata(&stored.path)
            .map_err(|e| io(&stored.path, e))?
            .len() as usize;
        std::fs::write(&stored.path, vec![0u8; len]).map_err(|e| io(&stored.path, e))?;
        std::fs::remove_file(&stored.path).map_err(|e| io(&stored.path, e))?;
        let _ = std::fs::remove_file(&stored.public_path);
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_list_delete_with_and_without_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(dir.path().join("keys")).unwrap();
        let (stored, sk, pm) = ks.create_he(Some("he"), None).unwrap();
        assert_eq!(stored.key_id, pm.key_id());
        assert_eq!(stored.params, "bfv-n8192-q150-t40-v1");
        assert!(ks.is_he_key(&stored.key_id));
        // X25519 listing is unaffected.
        assert!(ks.list().unwrap().is_empty());
        let sk2 = ks.load_he(&stored.key_id, None).unwrap();
        assert_eq!(*sk2.to_bytes(), *sk.to_bytes());
        assert_eq!(ks.load_he_public(&stored.key_id).unwrap(), pm);
        let pass = Passphrase::new("correct horse");
        let (sealed, _, _) = ks.create_he(None, Some(&pass)).unwrap();
        assert!(sealed.passphrase_protected);
        assert!(matches!(
            ks.load_he(&sealed.key_id, None),
            Err(KeystoreError::PassphraseRequired { .. })
        ));
        assert!(matches!(
            ks.load_he(&sealed.key_id, Some(&Passphrase::new("wrong"))),
            Err(KeystoreError::WrongPassphrase { .. })
        ));
        ks.load_he(&sealed.key_id, Some(&pass)).unwrap();
        assert_eq!(ks.list_he().unwrap().len(), 2);
        ks.delete_he(&stored.key_id).unwrap();
        assert!(!stored.path.exists() && !stored.public_path.exists());
        assert_eq!(ks.list_he().unwrap().len(), 1);
        assert!(matches!(
            ks.get_he("ck_nope"),
            Err(KeystoreError::NotFound { .. })
        ));
        assert!(matches!(
            ks.get_he("../../etc/passwd"),
            Err(KeystoreError::NotFound { .. })
        ));
    }

    #[test]
    fn swapped_or_altered_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = Keystore::open(dir.path().join("keys")).unwrap();
        let (a, _, _) = ks.create_he(None, None).unwrap();
        let (b, _, _) = ks.create_he(None, None).unwrap();
        // Another key's public material under a's name.
        std::fs::copy(&b.public_path, &a.public_path).unwrap();
        let e = ks.load_he(&a.key_id, None).unwrap_err();
        assert!(matches!(e, KeystoreError::Corrupt { .. }), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&b.path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                ks.load_he(&b.key_id, None),
                Err(KeystoreError::InsecurePermissions { .. })
            ));
        }
    }
}
