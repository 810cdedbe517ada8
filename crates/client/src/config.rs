//! Client configuration: which coordinator, which API key, which keystore
//! and, above all, which attestation policy the *user* applies to enclaves.
//!
//! Sources, later ones winning: built-in defaults, the config file
//! (`$ARCHIPELAGO_CONFIG`, else `$XDG_CONFIG_HOME/archipelago/config.toml`,
//! else `~/.config/archipelago/config.toml`), then the environment
//! (`ARCHIPELAGO_URL`, `ARCHIPELAGO_API_KEY`, `ARCHIPELAGO_POLICY`,
//! `ARCHIPELAGO_KEYSTORE`, `ARCHIPELAGO_KEY_ID`), then command-line flags
//! (applied by the CLI). Without a policy file the production policy is
//! used: hardware TEEs only, sim refused.

use std::path::{Path, PathBuf};

use archipelago_attest::Policy;
use serde::Deserialize;

use crate::error::ClientError;

/// Default coordinator URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// Default number of enclaves a request is sealed to.
pub const DEFAULT_RECIPIENTS: usize = 3;

/// Everything the SDK needs to talk to a coordinator.
#[derive(Clone)]
pub struct ClientConfig {
    /// Coordinator base URL (with or without `/api/v1`).
    pub url: String,
    pub api_key: Option<String>,
    /// The user's attestation policy file (archipelago-attest TOML).
    pub policy_file: Option<PathBuf>,
    pub keystore_dir: PathBuf,
    /// Key used when none is named.
    pub key_id: Option<String>,
    /// K, the number of enclaves a request is sealed to (1..=16).
    pub recipients: usize,
    /// Where the config was read from (for error messages).
    pub source: PathBuf,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("policy_file", &self.policy_file)
            .field("keystore_dir", &self.keystore_dir)
            .field("key_id", &self.key_id)
            .field("recipients", &self.recipients)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    api_key: Option<String>,
    policy_file: Option<PathBuf>,
    keystore_dir: Option<PathBuf>,
    key_id: Option<String>,
    recipients: Option<usize>,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$ARCHIPELAGO_HOME`, else `$XDG_DATA_HOME/archipelago`, else
/// `~/.local/share/archipelago`.
pub fn data_home() -> PathBuf {
    if let Some(h) = std::env::var_os("ARCHIPELAGO_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("archipelago");
    }
    home().join(".local/share/archipelago")
}

/// The config file path.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("ARCHIPELAGO_CONFIG") {
        return PathBuf::from(p);
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(x).join("archipelago/config.toml");
    }
    home().join(".config/archipelago/config.toml")
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

impl ClientConfig {
    /// Defaults, then the config file, then the environment.
    pub fn load() -> Result<ClientConfig, ClientError> {
        let path = config_path();
        let file = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
            if text.len() > 1024 * 1024 {
                return Err(ClientError::Config(format!(
                    "{} is larger than 1 MiB",
                    path.display()
                )));
            }
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| ClientError::Config(format!("{} is invalid: {e}", path.display())))?
        } else {
            FileConfig::default()
        };
        let mut c = ClientConfig {
            url: file.url.unwrap_or_else(|| DEFAULT_URL.into()),
            api_key: file.api_key,
            policy_file: file.policy_file,
            keystore_dir: file
                .keystore_dir
                .unwrap_or_else(crate::keystore::Keystore::default_dir),
            key_id: file.key_id,
            recipients: file.recipients.unwrap_or(DEFAULT_RECIPIENTS),
            source: path,
        };
        if let Some(u) = env("ARCHIPELAGO_URL") {
            c.url = u;
        }
        if let Some(k) = env("ARCHIPELAGO_API_KEY") {
            c.api_key = Some(k);
        }
        if let Some(p) = env("ARCHIPELAGO_POLICY") {
            c.policy_file = Some(PathBuf::from(p));
        }
        if let Some(p) = env("ARCHIPELAGO_KEYSTORE") {
            c.keystore_dir = PathBuf::from(p);
        }
        if let Some(k) = env("ARCHIPELAGO_KEY_ID") {
            c.key_id = Some(k);
        }
        c.check()?;
        Ok(c)
    }

    /// A configuration for `url` with defaults (tests, embedding).
    pub fn new(
        url: impl Into<String>,
        api_key: Option<String>,
        keystore_dir: impl Into<PathBuf>,
    ) -> Self {
        ClientConfig {
            url: url.into(),
            api_key,
            policy_file: None,
            keystore_dir: keystore_dir.into(),
            key_id: None,
            recipients: DEFAULT_RECIPIENTS,
            source: PathBuf::from("(built in)"),
        }
    }

    /// Range checks.
    pub fn check(&self) -> Result<(), ClientError> {
        if !(1..=archipelago_proto::envelope::MAX_RECIPIENTS).contains(&self.recipients) {
            return Err(ClientError::Config(format!(
                "recipients must be 1..={} (got {})",
                archipelago_proto::envelope::MAX_RECIPIENTS,
                self.recipients
            )));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "url {:?} must start with http:// or https://",
                self.url
            )));
        }
        Ok(())
    }

    /// The user's policy: the policy file, else [`Policy::production`].
    pub fn policy(&self) -> Result<Policy, ClientError> {
        match &self.policy_file {
            Some(p) => load_policy(p),
            None => Ok(Policy::production()),
        }
    }
}

/// Reads a policy file, with an error that names it.
pub fn load_policy(path: &Path) -> Result<Policy, ClientError> {
    Policy::load(path).map_err(|e| ClientError::Policy(format!("{e} (file {})", path.display())))
}

/// A development policy TOML accepting sim evidence signed by `root`
/// (Ed25519 public key): what `archipelago dev` writes for its clients.
pub fn dev_sim_policy_toml(root: &[u8; 32]) -> String {
    format!(
        "# Development only: accepts SIMULATED enclaves (no hardware protection).\n\
         accepted_tees = [\"sim\"]\naccept_sim = true\n\n[sim]\nroots = [\"{}\"]\n",
        archipelago_proto::b64::encode_std(root)
    )
}
