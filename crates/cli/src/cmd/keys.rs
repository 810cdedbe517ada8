//! `archipelago keys create|list|delete`: client X25519 keys and, with
//! `--he`, homomorphic `he-bfv` keys. The secret half stays in the local
//! keystore (mode 0600, optionally sealed under a passphrase); the public
//! half (for HE keys: the public material islands evaluate with) is
//! registered with the coordinator.

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
        /// A homomorphic (he-bfv) key for `archipelago run --he`.
        #[arg(long)]
        he: bool,
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
            he,
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
            if he {
                return finish(rt.block_on(create_he(opts, label, pass, no_register)), json);
            }
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

async fn create_he(
    opts: ClientOpts,
    label: Option<String>,
    pass: Option<Passphrase>,
    no_register: bool,
) -> Result<i32, ClientError> {
    let session = opts.session(!no_register)?;
    let (stored, _sk, _pm) = session
        .keystore()
        .create_he(label.as_deref(), pass.as_ref())?;
    if !no_register {
        if let Err(e) = session.register_he(&stored).await {
            let _ = session.keystore().delete_he(&stored.key_id);
            return Err(e);
        }
    }
    if opts.json {
        print_json(&serde_json::json!({
            "key_id": stored.key_id,
            "kind": stored.kind,
            "params": stored.params,
            "registered": !no_register,
            "passphrase_protected": stored.passphrase_protected,
            "path": stored.path,
            "public_path": stored.public_path,
        }));
    } else {
        println!("{}", stored.key_id);
        eprintln!(
            "he-bfv key ({}) stored in {}{}",
            stored.params,
            stored.path.display(),
            if no_register {
                "; not registered"
            } else {
                "; public material registered with the coordinator"
            }
        );
    }
    Ok(0)
}

async fn list(opts: ClientOpts) -> Result<i32, ClientError> {
    let session = opts.session(false)?;
    let local = session.keystore().list()?;
    let local_he = session.keystore().list_he()?;
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
        let he_keys: Vec<_> = local_he
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.key_id, "kind": k.kind, "params": k.params, "label": k.label,
                    "created_at": k.created_at, "passphrase_protected": k.passphrase_protected,
                    "registered": registered(&k.key_id),
                })
            })
            .collect();
        print_json(
            &serde_json::json!({"keys": keys, "he_keys": he_keys, "keystore": session.keystore().dir()}),
        );
        return Ok(0);
    }
    if local.is_empty() && local_he.is_empty() {
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
    for k in &local_he {
        let reg = match registered(&k.key_id) {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        println!(
            "{:<30} {:<10} {:<11} {} (he-bfv)",
            k.key_id,
            if k.passphrase_protected { "yes" } else { "no" },
            reg,
            k.label.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

async fn delete(opts: ClientOpts, key_id: String) -> Result<i32, ClientError> {
    let session = opts.session(false)?;
    let he = session.keystore().is_he_key(&key_id);
    let local = if he {
        session.keystore().get_he(&key_id).map(drop)
    } else {
        session.keystore().get(&key_id).map(drop)
    };
    if session.api().api_key().is_some() {
        match session.api().delete_key(&key_id).await {
            Ok(()) | Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    match local {
        Ok(()) if he => {
            session.keystore().delete_he(&key_id)?;
        }
        Ok(()) => {
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
