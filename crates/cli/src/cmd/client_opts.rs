//! Options and helpers shared by the user-facing subcommands (`keys`, `run`,
//! `jobs`, `attest list`, `stats`, `account`, `gateway`): where the
//! coordinator is, the API key, the keystore, the user's policy, `--json`,
//! and one way to print errors (`error: …` on stderr, or a JSON error
//! object on stdout with `--json`) so scripts and golden tests can rely on it.

use std::io::IsTerminal;
use std::path::PathBuf;

use archipelago_client::keystore::Passphrase;
use archipelago_client::{ClientConfig, ClientError, Session};

/// `--url`, `--api-key`, `--policy`, `--keystore`, `--json`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClientOpts {
    /// Coordinator (or gateway) URL [env: ARCHIPELAGO_URL; default http://127.0.0.1:8080].
    #[arg(long)]
    pub url: Option<String>,
    /// API key `ak_…` [env: ARCHIPELAGO_API_KEY].
    #[arg(long)]
    pub api_key: Option<String>,
    /// Your attestation policy (TOML, docs/policy.md) [env: ARCHIPELAGO_POLICY;
    /// default: hardware TEEs only].
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Keystore directory [env: ARCHIPELAGO_KEYSTORE].
    #[arg(long)]
    pub keystore: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long)]
    pub json: bool,
}

impl ClientOpts {
    /// Config file + environment + these flags.
    pub fn config(&self) -> Result<ClientConfig, ClientError> {
        let mut c = ClientConfig::load()?;
        if let Some(u) = &self.url {
            c.url = u.clone();
        }
        if let Some(k) = &self.api_key {
            c.api_key = Some(k.clone());
        }
        if let Some(p) = &self.policy {
            c.policy_file = Some(p.clone());
        }
        if let Some(k) = &self.keystore {
            c.keystore_dir = k.clone();
        }
        c.check()?;
        Ok(c)
    }

    /// A session; refuses to start without an API key when `need_key`.
    pub fn session(&self, need_key: bool) -> Result<Session, ClientError> {
        let c = self.config()?;
        if need_key && c.api_key.is_none() {
            return Err(ClientError::NoApiKey {
                config: c.source.display().to_string(),
            });
        }
        let session = Session::from_config(&c)?;
        Ok(if std::io::stdin().is_terminal() {
            session.with_passphrase_prompt(Some(Box::new(|key_id: &str| {
                read_passphrase(&format!("passphrase for key {key_id}: ")).ok()
            })))
        } else {
            session
        })
    }
}

/// Reads a passphrase from the terminal without echo. Errors when there is
/// no terminal, so scripts get the "set ARCHIPELAGO_KEY_PASSPHRASE" error
/// instead of a hang.
pub fn read_passphrase(prompt: &str) -> std::io::Result<Passphrase> {
    if !std::io::stdin().is_terminal() {
        return Err(std::io::Error::other("no terminal to ask for a passphrase"));
    }
    Ok(Passphrase::new(rpassword::prompt_password(prompt)?))
}

/// A current-thread tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints an error the way every client subcommand does; returns exit code 1.
pub fn fail(e: &ClientError, json: bool) -> i32 {
    if json {
        println!(
            "{}",
            serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}})
        );
    } else {
        eprintln!("error: {e}");
    }
    1
}

/// Prints a value as pretty JSON.
pub fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// Runs `f` and maps its error through [`fail`].
pub fn finish(r: Result<i32, ClientError>, json: bool) -> anyhow::Result<i32> {
    Ok(match r {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    })
}
