//! `archipelago keys create|list|delete`: client X25519 keys. The secret
//! half stays in the local keystore (mode 0600, optionally sealed under a
//! passphrase); the public half is registered with the coordinator.

use std::path::PathBuf;

use archipelago_client::keystore::Passphrase;
use archipelago_client::ClientError;
use clap::Subcommand;

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key, store it locally and register its public half.
    Create {
        #[command(flatten)]
        opts: ClientOpts,
        /// A label shown in `keys list`.
        #[arg(long)]
        label: Option<String>,
        /// Seal the key file under the passphrase in this file (first line);
        /// ARCHIPELAGO_KEY_PASSPHRASE works too.
        #[arg(long, conflicts_with = "passphrase")]
        passphrase_file: Option<PathBuf>,
        /// Seal the key file under a passphrase typed at the terminal (asked
        /// twice, not echoed).
        #[arg(long)]
        passphrase: bool,
        /// Only store it locally.
        #[arg(long)]
        no_register: bool,
    },
    /// Keys in the local keystore, and whether the coordinator knows them.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Delete a key at the coordinator and from the keystore.
    Delete {
        #[command(flatten)]
        opts: ClientOpts,
        key_id: String,
    },
}

/// Run `archipelago keys`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let rt = runtime()?;
    match args.command {
        KeysCommand::Create {
            opts,
            label,
            passphrase_file,
            passphrase,
            no_register,
        } => {
            let json = opts.json;
            let pass = match (passphrase_file, passphrase) {
                (Some(p), _) => Some(Passphrase::from_file(&p).map_err(ClientError::from)),
                (None, true) => Some(ask_new_passphrase()),
                (None, false) => Passphrase::from_env().map(Ok),
            };
            let pass = match pass.transpose() {
                Ok(p) => p,
                Err(e) => return finish(Err(e), json),
            };
            finish(rt.block_on(create(opts, label, pass, no_register)), json)
        }
        KeysCommand::List { opts } => {
            let json = opts.json;
            finish(rt.block_on(list(opts)), json)
        }
        KeysCommand::Delete { opts, key_id } => {
            let json = opts.json;
            finish(rt.block_on(delete(opts, key_id)), json)
        }
    }
}

async fn create(
    opts: ClientOpts,
    label: Option<String>,
    pass: Option<Passphrase>,
    no_register: bool,
) -> Result<i32, ClientError> {
    let session = opts.session(!no_register)?;
    let (stored, _sk) = session.keystore().create(label.as_deref(), pass.as_ref())?;
    if !no_register {
        if let Err(e) = session.register(&stored).await {
            let _ = session.keystore().delete(stored.key_id.as_str());
            return Err(e);
        }
    }
    if opts.json {
        print_json(&serde_json::json!({
            "key_id": stored.key_id.as_str(),
            "public_key": stored.public_key,
            "registered": !no_register,
            "passphrase_protected": stored.passphrase_protected,
            "path": stored.path,
        }));
    } else {
        println!("{}", stored.key_id);
        eprintln!(
            "public key {}\nstored in {}{}{}",
            stored.public_key,
            stored.path.display(),
            if stored.passphrase_protected {
                " (sealed under your passphrase)"
            } else {
                ""
            },
            if no_register {
                "; not registered (run `archipelago keys create` without --no-register, or register it through the gateway)"
            } else {
                "; registered with the coordinator"
            }
        );
    }
    Ok(0)
}

async fn list(opts: ClientOpts) -> Result<i32, ClientError> {
    let session = opts.session(false)?;
    let local = session.keystore().list()?;
    let remote = match session.api().api_key() {
        Some(_) => session.api().list_keys().await.ok().map(|l| l.keys),
        None => None,
    };
    let registered = |id: &str| remote.as_ref().map(|r| r.iter().any(|k| k.key_id == id));
    if opts.json {
        let keys: Vec<_> = local
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.key_id.as_str(), "public_key": k.public_key, "label": k.label,
                    "created_at": k.created_at, "passphrase_protected": k.passphrase_protected,
                    "registered": registered(k.key_id.as_str()),
                })
            })
            .collect();
        print_json(&serde_json::json!({"keys": keys, "keystore": session.keystore().dir()}));
        return Ok(0);
    }
    if local.is_empty() {
        eprintln!(
            "no keys in {}; create one with `archipelago keys create`",
            session.keystore().dir().display()
        );
        return Ok(0);
    }
    println!(
        "{:<30} {:<10} {:<11} LABEL",
        "KEY ID", "SEALED", "REGISTERED"
    );
    for k in &local {
        let reg = match registered(k.key_id.as_str()) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        println!(
            "{:<30} {:<10} {:<11} {}",
            k.key_id.as_str(),
            if k.passphrase_protected { "yes" } else { "no" },
            reg,
            k.label.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

async fn delete(opts: ClientOpts, key_id: String) -> Result<i32, ClientError> {
    let session = opts.session(false)?;
    let local = session.keystore().get(&key_id);
    if session.api().api_key().is_some() {
        match session.api().delete_key(&key_id).await {
            Ok(()) | Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match local {
        Ok(_) => {
            session.keystore().delete(&key_id)?;
        }
        Err(e) => return Err(e.into()),
    }
    if opts.json {
        print_json(&serde_json::json!({"deleted": key_id}));
    } else {
        eprintln!("deleted {key_id}");
    }
    Ok(0)
}

/// Asks for a new passphrase twice at the terminal.
fn ask_new_passphrase() -> Result<Passphrase, ClientError> {
    use super::client_opts::read_passphrase;
    let no_tty = |e: std::io::Error| {
        ClientError::InvalidInput(format!(
            "--passphrase needs a terminal ({e}); in scripts use --passphrase-file or ARCHIPELAGO_KEY_PASSPHRASE"
        ))
    };
    let first = read_passphrase("new passphrase: ").map_err(no_tty)?;
    if first.is_empty() {
        return Err(ClientError::InvalidInput(
            "an empty passphrase protects nothing; type one, or leave out --passphrase".into(),
        ));
    }
    let again = read_passphrase("same passphrase again: ").map_err(no_tty)?;
    if !first.same_as(&again) {
        return Err(ClientError::InvalidInput(
            "the two passphrases differ; nothing was created, try again".into(),
        ));
    }
    Ok(first)
}
