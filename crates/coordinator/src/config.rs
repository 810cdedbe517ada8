//! Coordinator configuration: a TOML file (`coordinator.toml` in the data
//! directory, or `--config`), then environment and command-line flags on
//! top (the CLI applies those). Every field has a working default, so an
//! empty file, or none, runs a development coordinator on SQLite.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// All coordinator settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Directory holding `coordinator.db` (SQLite) and `coordinator.toml`.
    pub data_dir: Option<PathBuf>,
    /// `postgres://…` to use PostgreSQL instead of SQLite.
    pub database_url: Option<String>,
    /// PostgreSQL schema (default: the connection's `search_path`).
    pub database_schema: Option<String>,
    /// PostgreSQL pool size.
    pub database_max_connections: u32,
    /// PostgreSQL `synchronous_commit` (see [`crate::store::DbConfig`]).
    pub database_synchronous_commit: bool,
    /// Attestation appraisal policy (archipelago-attest TOML). Without it
    /// the coordinator refuses every attestation except when `dev_sim_root`
    /// is set.
    pub policy_file: Option<PathBuf>,
    /// Development only: accept `sim` evidence signed by this sim root
    /// (hex Ed25519 public key). Printed loudly at start-up.
    pub dev_sim_root: Option<String>,
    /// Island owner's share of each charge, percent.
    pub island_share_percent: i64,
    /// Lease length; islands renew before it lapses.
    pub lease_secs: u64,
    /// An island without a heartbeat for this long is offline.
    pub offline_after_secs: u64,
    /// Heartbeat interval suggested to islands.
    pub heartbeat_interval_secs: u64,
    /// Re-attestation interval; one missed round is tolerated.
    pub reattest_interval_secs: u64,
    /// Lifetime of an attestation nonce.
    pub nonce_ttl_secs: u64,
    /// Default time a job may wait in the queue.
    pub default_job_timeout_secs: u64,
    /// Longest allowed `timeout_seconds` on a job.
    pub max_job_timeout_secs: u64,
    /// Leases a job may lose before it fails.
    pub max_attempts: i64,
    /// Longest long poll on `/island/lease`, ms.
    pub max_lease_wait_ms: u64,
    /// Requests per second per API key (token bucket refill rate).
    pub rate_limit_per_sec: f64,
    /// Bucket size.
    pub rate_limit_burst: f64,
    /// Largest JSON body on ordinary routes.
    pub max_body_bytes: usize,
    /// Largest body on job submission, key registration and results
    /// (envelopes, HE keys, ciphertext outputs).
    pub max_payload_bytes: usize,
    /// Reaper period, ms.
    pub reap_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: None,
            database_url: None,
            database_schema: None,
            database_max_connections: 16,
            database_synchronous_commit: true,
            policy_file: None,
            dev_sim_root: None,
            island_share_percent: 85,
            lease_secs: 30,
            offline_after_secs: 30,
            heartbeat_interval_secs: 10,
            reattest_interval_secs: 600,
            nonce_ttl_secs: 300,
            default_job_timeout_secs: 600,
            max_job_timeout_secs: 86_400,
            max_attempts: 3,
            max_lease_wait_ms: 30_000,
            rate_limit_per_sec: 50.0,
            rate_limit_burst: 100.0,
            max_body_bytes: 1024 * 1024,
            max_payload_bytes: 24 * 1024 * 1024,
            reap_interval_ms: 1000,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(0..=100).contains(&self.island_share_percent) {
            return bad("island_share_percent must be 0..=100");
        }
        if self.lease_secs == 0 || self.offline_after_secs == 0 || self.reattest_interval_secs == 0
        {
            return bad("lease_secs, offline_after_secs and reattest_interval_secs must be > 0");
        }
        if self.rate_limit_per_sec <= 0.0 || self.rate_limit_burst < 1.0 {
            return bad("rate_limit_per_sec must be > 0 and rate_limit_burst >= 1");
        }
        if self.max_attempts < 1 {
            return bad("max_attempts must be >= 1");
        }
        if self.database_url.is_none() && self.data_dir.is_none() {
            return bad("give --data-dir (SQLite) or --database-url (PostgreSQL)");
        }
        Ok(())
    }

    /// The database this configuration names.
    pub fn db_config(&self) -> crate::store::DbConfig {
        match (&self.database_url, &self.data_dir) {
            (Some(url), _) if url.starts_with("sqlite:") => crate::store::DbConfig {
                url: url.clone(),
                schema: None,
                max_connections: 1,
                synchronous_commit: true,
            },
            (Some(url), _) => crate::store::DbConfig {
                url: url.clone(),
                schema: self.database_schema.clone(),
                max_connections: self.database_max_connections,
                synchronous_commit: self.database_synchronous_commit,
            },
            (None, Some(dir)) => crate::store::DbConfig::sqlite_in(dir),
            (None, None) => crate::store::DbConfig::sqlite_memory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults_and_unknown_keys_are_refused() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.island_share_percent, 85);
        assert_eq!(c.reattest_interval_secs, 600);
        assert!(Config::from_toml("lease_sec = 3").is_err());
        let c = Config::from_toml("island_share_percent = 101\ndata_dir = \"/tmp\"").unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_toml("data_dir = \"/tmp\"").unwrap();
        assert!(c.validate().is_ok());
        assert!(Config::default().validate().is_err(), "no database named");
    }
}
