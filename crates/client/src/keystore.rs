//! The keystore: client X25519 keys on the user's machine.
//!
//! The private half of a `ck_` key never leaves this directory. Each key is
//! one JSON file, `<key_id>.json`, created with mode 0600 in a directory of
//! mode 0700; a file readable by other users is refused (like ssh does).
//! With a passphrase, the 32 secret bytes are sealed with ChaCha20-Poly1305
//! under a key stretched from the passphrase with Argon2id (RFC 9106,
//! m = 19 MiB, t = 2, p = 1), the key id as associated data, so a file moved
//! onto another key id does not open.
//!
//! File format (version 1):
//! `{"version":1,"kind":"x25519","key_id","public_key","created_at","label"?,
//!   "secret":{"scheme":"plain","key"} | {"scheme":"argon2id-chacha20poly1305",
//!   "salt","m_cost","t_cost","p_cost","nonce","ciphertext"}}` (bytes in
//! standard base64).

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use archipelago_proto::b64;
use archipelago_proto::{KeyId, KeyPrefix, PublicKey, SecretKey};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::KeystoreError;

/// Largest key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;
const SCHEME_PLAIN: &str = "plain";
const SCHEME_SEALED: &str = "argon2id-chacha20poly1305";
/// Argon2id parameters for new files (OWASP minimum for Argon2id).
const M_COST_KIB: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
/// Upper bounds accepted when reading (a hostile file must not make us
/// allocate gigabytes).
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;

/// A passphrase. Zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    pub fn new(s: impl Into<String>) -> Passphrase {
        Passphrase(Zeroizing::new(s.into()))
    }
    /// True when nothing was typed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Compares two passphrases (e.g. a typed confirmation).
    pub fn same_as(&self, other: &Passphrase) -> bool {
        *self.0 == *other.0
    }
    /// From `ARCHIPELAGO_KEY_PASSPHRASE`, when set and non-empty.
    pub fn from_env() -> Option<Passphrase> {
        std::env::var("ARCHIPELAGO_KEY_PASSPHRASE")
            .ok()
            .filter(|s| !s.is_empty())
            .map(Passphrase::new)
    }
    /// The first line of a file.
    pub fn from_file(path: &Path) -> Result<Passphrase, KeystoreError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| KeystoreError::Io {
                    path: path.display().to_string(),
                    source,
                })?,
            );
        Ok(Passphrase::new(
            text.lines().next().unwrap_or("").to_string(),
        ))
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Public metadata of a stored key (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredKey {
    pub key_id: KeyId,
    /// Standard base64.
    pub public_key: String,
    pub created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Sealed under a passphrase.
    pub passphrase_protected: bool,
    pub path: PathBuf,
}

impl StoredKey {
    /// The X25519 public key.
    pub fn public(&self) -> Result<PublicKey, KeystoreError> {
        PublicKey::from_base64(&self.public_key).map_err(|_| KeystoreError::Corrupt {
            path: self.path.display().to_string(),
            reason: "public_key is not a 32-byte base64 key".into(),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    kind: String,
    key_id: String,
    public_key: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    secret: SecretField,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretField {
    pub(crate) scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ciphertext: Option<String>,
}

impl Drop for SecretField {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        if let Some(k) = self.key.as_mut() {
            k.zeroize();
        }
    }
}

/// A directory of client keys.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn stretch(
    pass: &Passphrase,
    salt: &[u8],
    m: u32,
    t: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, String> {
    let params = argon2::Params::new(m, t, p, Some(32)).map_err(|e| e.to_string())?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.0.as_bytes(), salt, &mut out[..])
        .map_err(|e| e.to_string())?;
    Ok(out)
}

impl Keystore {
    /// Opens (creating, mode 0700) the keystore directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Keystore, KeystoreError> {
        let dir = dir.into();
        let io = |source| KeystoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            set_mode(&dir, 0o700).map_err(io)?;
        }
        Ok(Keystore { dir })
    }

    /// `$ARCHIPELAGO_HOME/keys`, else `$XDG_DATA_HOME/archipelago/keys`,
    /// else `~/.local/share/archipelago/keys`.
    pub fn default_dir() -> PathBuf {
        crate::config::data_home().join("keys")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, key_id: &KeyId) -> PathBuf {
        self.dir.join(format!("{key_id}.json"))
    }

    /// Generates a key and stores it; sealed under `passphrase` when given.
    pub fn create(
        &self,
        label: Option<&str>,
        passphrase: Option<&Passphrase>,
    ) -> Result<(StoredKey, SecretKey), KeystoreError> {
        let sk = SecretKey::generate();
        let stored = self.import(&sk, label, passphrase)?;
        Ok((stored, sk))
    }

    /// Stores an existing secret key.
    pub fn import(
        &self,
        sk: &SecretKey,
        label: Option<&str>,
        passphrase: Option<&Passphrase>,
    ) -> Result<StoredKey, KeystoreError> {
        let key_id = sk.client_id();
        let path = self.path_of(&key_id);
        let secret = seal_secret(sk.to_bytes().as_ref(), passphrase, key_id.as_str(), &path)?;
        let file = KeyFile {
            version: 1,
            kind: "x25519".into(),
            key_id: key_id.to_string(),
            public_key: sk.public().to_base64(),
            created_at: now_secs(),
            label: label.map(str::to_string),
            secret,
        };
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| {
            KeystoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?);
        write_secret_file(&path, &text)?;
        tracing::info!(key_id = %key_id, protected = passphrase.is_some(), "client key stored");
        Ok(StoredKey {
            key_id,
            public_key: file.public_key.clone(),
            created_at: file.created_at,
            label: file.label.clone(),
            passphrase_protected: passphrase.is_some(),
            path,
        })
    }

    fn read_file(&self, path: &Path) -> Result<KeyFile, KeystoreError> {
        let corrupt = |reason: String| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        };
        let file: KeyFile = read_private_json(path, MAX_KEY_FILE_BYTES)?;
        if file.version != 1 || file.kind != "x25519" {
            return Err(corrupt(format!(
                "version {} kind {:?} is not supported (version 1, x25519)",
                file.version, file.kind
            )));
        }
        let id = KeyId::parse(&file.key_id).map_err(|e| corrupt(format!("key_id: {e}")))?;
        if id.prefix() != KeyPrefix::Client {
            return Err(corrupt("key_id is not a ck_ id".into()));
        }
        let pk = PublicKey::from_base64(&file.public_key)
            .map_err(|_| corrupt("public_key is not a 32-byte base64 key".into()))?;
        if !id.matches(&pk.0) {
            return Err(corrupt("key_id does not match public_key".into()));
        }
        Ok(file)
    }

    fn stored(&self, path: PathBuf, f: &KeyFile) -> Result<StoredKey, KeystoreError> {
        Ok(StoredKey {
            key_id: KeyId::parse(&f.key_id).map_err(|e| KeystoreError::BadKeyId(e.to_string()))?,
            public_key: f.public_key.clone(),
            created_at: f.created_at,
            label: f.label.clone(),
            passphrase_protected: f.secret.scheme != SCHEME_PLAIN,
            path,
        })
    }

    /// Every key, oldest first.
    pub fn list(&self) -> Result<Vec<StoredKey>, KeystoreError> {
        let io = |source| KeystoreError::Io {
            path: self.dir.display().to_string(),
            source,
        };
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(e)),
        };
        for entry in rd {
            let path = entry.map_err(io)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !(name.starts_with("ck_") && name.ends_with(".json")) {
                continue;
            }
            let f = self.read_file(&path)?;
            out.push(self.stored(path, &f)?);
        }
        out.sort_by(|a, b| {
            (a.created_at, a.key_id.as_str()).cmp(&(b.created_at, b.key_id.as_str()))
        });
        Ok(out)
    }

    /// Metadata of one key.
    pub fn get(&self, key_id: &str) -> Result<StoredKey, KeystoreError> {
        let id = self.parse_id(key_id)?;
        let path = self.path_of(&id);
        if !path.exists() {
            return Err(self.not_found(key_id));
        }
        let f = self.read_file(&path)?;
        self.stored(path, &f)
    }

    /// The key to use when none is named: the only key, or the newest.
    pub fn default_key(&self) -> Result<StoredKey, KeystoreError> {
        self.list()?.pop().ok_or_else(|| KeystoreError::Empty {
            dir: self.dir.display().to_string(),
        })
    }

    fn parse_id(&self, key_id: &str) -> Result<KeyId, KeystoreError> {
        let id = KeyId::parse(key_id).map_err(|_| self.not_found(key_id))?;
        if id.prefix() != KeyPrefix::Client {
            return Err(self.not_found(key_id));
        }
        Ok(id)
    }

    fn not_found(&self, key_id: &str) -> KeystoreError {
        KeystoreError::NotFound {
            key_id: key_id.chars().take(64).collect(),
            dir: self.dir.display().to_string(),
        }
    }

    /// Loads the secret key, opening it with `passphrase` if it is sealed.
    pub fn load(
        &self,
        key_id: &str,
        passphrase: Option<&Passphrase>,
    ) -> Result<SecretKey, KeystoreError> {
        let id = self.parse_id(key_id)?;
        let path = self.path_of(&id);
        if !path.exists() {
            return Err(self.not_found(key_id));
        }
        let f = self.read_file(&path)?;
        let corrupt = |reason: &str| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let secret = open_secret(&f.secret, passphrase, id.as_str(), &path, 4096)?;
        let bytes: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("the secret key is not 32 bytes"))?;
        let bytes = Zeroizing::new(bytes);
        let sk =
            SecretKey::from_bytes(&bytes).map_err(|_| corrupt("not a valid X25519 secret key"))?;
        if sk.client_id() != id {
            return Err(corrupt("the secret key does not belong to key_id"));
        }
        Ok(sk)
    }

    /// Deletes a key file (overwriting it first). The coordinator's copy of
    /// the public key is removed separately.
    pub fn delete(&self, key_id: &str) -> Result<StoredKey, KeystoreError> {
        let stored = self.get(key_id)?;
        let io = |source| KeystoreError::Io {
            path: stored.path.display().to_string(),
            source,
        };
        let len = std::fs::metadata(&stored.path).map_err(io)?.len() as usize;
        std::fs::write(&stored.path, vec![0u8; len]).map_err(io)?;
        std::fs::remove_file(&stored.path).map_err(io)?;
        Ok(stored)
    }
}

/// Seals (or stores plainly, without a passphrase) secret key bytes for a
/// key file; `aad` is the key id, so a file moved onto another id does not
/// open.
pub(crate) fn seal_secret(
    secret_bytes: &[u8],
    passphrase: Option<&Passphrase>,
    aad: &str,
    path: &Path,
) -> Result<SecretField, KeystoreError> {
    let Some(pass) = passphrase else {
        return Ok(SecretField {
            scheme: SCHEME_PLAIN.into(),
            key: Some(b64::encode_std(secret_bytes)),
            salt: None,
            m_cost: None,
            t_cost: None,
            p_cost: None,
            nonce: None,
            ciphertext: None,
        });
    };
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let k = stretch(pass, &salt, M_COST_KIB, T_COST, P_COST).map_err(|reason| {
        KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason,
        }
    })?;
    let kr: &[u8; 32] = &k;
    let cipher = ChaCha20Poly1305::new(kr.into());
    let ct = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: secret_bytes,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| KeystoreError::Corrupt {
            path: path.display().to_string(),
            reason: "sealing failed".into(),
        })?;
    Ok(SecretField {
        scheme: SCHEME_SEALED.into(),
        key: None,
        salt: Some(b64::encode_std(&salt)),
        m_cost: Some(M_COST_KIB),
        t_cost: Some(T_COST),
        p_cost: Some(P_COST),
        nonce: Some(b64::encode_std(&nonce)),
        ciphertext: Some(b64::encode_std(&ct)),
    })
}

/// Opens a key file's secret field (the inverse of [`seal_secret`]);
/// base64 fields longer than `max_b64` characters are refused.
pub(crate) fn open_secret(
    secret: &SecretField,
    passphrase: Option<&Passphrase>,
    aad: &str,
    path: &Path,
    max_b64: usize,
) -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
    let corrupt = |reason: &str| KeystoreError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    let d = |field: Option<&String>, what: &str| -> Result<Zeroizing<Vec<u8>>, KeystoreError> {
        let text = field.ok_or_else(|| corrupt(&format!("secret.{what} missing")))?;
        b64::decode_any(text, max_b64)
            .map(Zeroizing::new)
            .map_err(|_| corrupt(&format!("secret.{what} is not base64")))
    };
    match secret.scheme.as_str() {
        SCHEME_PLAIN => d(secret.key.as_ref(), "key"),
        SCHEME_SEALED => {
            let pass = passphrase.ok_or_else(|| KeystoreError::PassphraseRequired {
                key_id: aad.to_string(),
            })?;
            let salt = d(secret.salt.as_ref(), "salt")?;
            let nonce = d(secret.nonce.as_ref(), "nonce")?;
            let ct = d(secret.ciphertext.as_ref(), "ciphertext")?;
            let (m, t, p) = match (secret.m_cost, secret.t_cost, secret.p_cost) {
                (Some(m), Some(t), Some(p))
                    if m <= MAX_M_COST_KIB
                        && (1..=MAX_T_COST).contains(&t)
                        && (1..=16).contains(&p) =>
                {
                    (m, t, p)
                }
                _ => return Err(corrupt("argon2 parameters missing or out of range")),
            };
            let nonce: [u8; 12] = nonce
                .as_slice()
                .try_into()
                .map_err(|_| corrupt("secret.nonce is not 12 bytes"))?;
            let k = stretch(pass, &salt, m, t, p).map_err(|e| corrupt(&e))?;
            let kr: &[u8; 32] = &k;
            let cipher = ChaCha20Poly1305::new(kr.into());
            Ok(Zeroizing::new(
                cipher
                    .decrypt(
                        (&nonce).into(),
                        Payload {
                            msg: &ct,
                            aad: aad.as_bytes(),
                        },
                    )
                    .map_err(|_| KeystoreError::WrongPassphrase {
                        key_id: aad.to_string(),
                    })?,
            ))
        }
        _ => Err(corrupt("unknown secret.scheme")),
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Reads and parses a private key file: mode 0600 (checked before
/// reading), at most `max` bytes, JSON of type `T`. The bytes read are
/// zeroized.
pub(crate) fn read_private_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    max: u64,
) -> Result<T, KeystoreError> {
    let corrupt = |reason: String| KeystoreError::Corrupt {
        path: path.display().to_string(),
        reason,
    };
    let io = |source| KeystoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    check_private_mode(path, &meta)?;
    if meta.len() > max {
        return Err(corrupt(format!("{} bytes, more than {max}", meta.len())));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
    serde_json::from_slice(&bytes).map_err(|e| {
        corrupt(format!(
            "invalid JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(unix)]
pub(crate) fn check_private_mode(
    path: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), KeystoreError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeystoreError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn check_private_mode(
    _path: &Path,
    _meta: &std::fs::Metadata,
) -> Result<(), KeystoreError> {
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600 from the first byte on: a
/// temporary file created 0600 in the same directory, then renamed.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    let io = |source| KeystoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    let mut suffix = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    tmp_name.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = PathBuf::from(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_list_load_delete_plain() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::open(d.path().join("keys")).unwrap();
        assert!(matches!(ks.default_key(), Err(KeystoreError::Empty { .. })));
        let (stored, sk) = ks.create(Some("laptop"), None).unwrap();
        assert_eq!(stored.key_id, sk.client_id());
        assert!(!stored.passphrase_protected);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(&stored.path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, 0o600);
            let m = std::fs::metadata(ks.dir()).unwrap().permissions().mode() & 0o777;
            assert_eq!(m, 0o700);
        }
        let list = ks.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].label.as_deref(), Some("laptop"));
        let back = ks.load(stored.key_id.as_str(), None).unwrap();
        assert_eq!(back.public(), sk.public());
        assert_eq!(ks.default_key().unwrap().key_id, stored.key_id);
        ks.delete(stored.key_id.as_str()).unwrap();
        assert!(matches!(
            ks.load(stored.key_id.as_str(), None),
            Err(KeystoreError::NotFound { .. })
        ));
    }

    #[test]
    fn passphrase_seals_the_secret() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::open(d.path()).unwrap();
        let pass = Passphrase::new("correct horse");
        let (stored, sk) = ks.create(None, Some(&pass)).unwrap();
        assert!(stored.passphrase_protected);
        let text = std::fs::read_to_string(&stored.path).unwrap();
        assert!(!text.contains(&b64::encode_std(sk.to_bytes().as_ref())));
        assert!(matches!(
            ks.load(stored.key_id.as_str(), None),
            Err(KeystoreError::PassphraseRequired { .. })
        ));
        assert!(matches!(
            ks.load(stored.key_id.as_str(), Some(&Passphrase::new("wrong"))),
            Err(KeystoreError::WrongPassphrase { .. })
        ));
        let back = ks.load(stored.key_id.as_str(), Some(&pass)).unwrap();
        assert_eq!(back.public(), sk.public());
        assert_eq!(format!("{pass:?}"), "Passphrase(<redacted>)");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::open(d.path()).unwrap();
        let (stored, _) = ks.create(None, None).unwrap();
        set_mode(&stored.path, 0o644).unwrap();
        let err = ks.load(stored.key_id.as_str(), None).unwrap_err();
        assert!(matches!(err, KeystoreError::InsecurePermissions { .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn altered_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::open(d.path()).unwrap();
        let (a, _) = ks.create(None, None).unwrap();
        let (b, _) = ks.create(None, None).unwrap();
        // b's secret under a's name: the id check catches the swap.
        let mut fa: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&a.path).unwrap()).unwrap();
        let fb: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&b.path).unwrap()).unwrap();
        fa["secret"] = fb["secret"].clone();
        write_secret_file(&a.path, fa.to_string().as_bytes()).unwrap();
        assert!(matches!(
            ks.load(a.key_id.as_str(), None),
            Err(KeystoreError::Corrupt { .. })
        ));
        // Garbage, oversized and unknown fields.
        write_secret_file(&a.path, b"{not json").unwrap();
        assert!(matches!(ks.list(), Err(KeystoreError::Corrupt { .. })));
        write_secret_file(&a.path, &vec![b' '; MAX_KEY_FILE_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            ks.get(a.key_id.as_str()),
            Err(KeystoreError::Corrupt { .. })
        ));
        assert!(matches!(
            ks.load("ek_xscb3oh6upx5qrkvu74o5ojfam", None),
            Err(KeystoreError::NotFound { .. })
        ));
        assert!(matches!(
            ks.load("../../etc/passwd", None),
            Err(KeystoreError::NotFound { .. })
        ));
    }

    #[test]
    fn sealed_file_with_hostile_argon2_params_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ks = Keystore::open(d.path()).unwrap();
        let pass = Passphrase::new("p");
        let (a, _) = ks.create(None, Some(&pass)).unwrap();
        let mut f: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&a.path).unwrap()).unwrap();
        f["secret"]["m_cost"] = serde_json::json!(u32::MAX);
        write_secret_file(&a.path, f.to_string().as_bytes()).unwrap();
        let err = ks.load(a.key_id.as_str(), Some(&pass)).unwrap_err();
        assert!(err.to_string().contains("argon2 parameters"), "{err}");
    }
}
