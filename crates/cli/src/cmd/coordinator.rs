//! `archipelago coordinator init|serve`: run the control plane. The work
//! lives in `archipelago-coordinator`; this module merges configuration
//! (file, then environment, then flags) and prints.

use std::path::PathBuf;

use anyhow::Context;
use archipelago_coordinator::Config;
use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CoordinatorCommand,
}

/// Options shared by `init` and `serve`.
#[derive(clap::Args, Clone)]
struct Common {
    /// Data directory (SQLite database `coordinator.db`, optional
    /// `coordinator.toml`).
    #[arg(long, env = "ARCHIPELAGO_COORDINATOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite: postgres://user@host:port/db.
    #[arg(long, env = "ARCHIPELAGO_DATABASE_URL")]
    database_url: Option<String>,
    /// Configuration file (default: DATA_DIR/coordinator.toml if present).
    #[arg(long, env = "ARCHIPELAGO_COORDINATOR_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CoordinatorCommand {
    /// Create the database, the default workloads, an admin API key and an
    /// enrollment token (printed once).
    Init {
        #[command(flatten)]
        common: Common,
        /// Print {"api_key": …, "enrollment_token": …} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the API until SIGINT/SIGTERM.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on.
        #[arg(long, env = "ARCHIPELAGO_COORDINATOR_LISTEN")]
        listen: Option<String>,
        /// Attestation policy (archipelago-attest TOML).
        #[arg(long, env = "ARCHIPELAGO_COORDINATOR_POLICY")]
        policy: Option<PathBuf>,
        /// Development only: accept sim evidence signed by this sim root
        /// (hex Ed25519 public key).
        #[arg(long, env = "ARCHIPELAGO_DEV_SIM_ROOT")]
        dev_sim_root: Option<String>,
    },
}

fn load_config(common: &Common) -> anyhow::Result<Config> {
    let file = match (&common.config, &common.data_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) if dir.join("coordinator.toml").exists() => {
            Some(dir.join("coordinator.toml"))
        }
        _ => None,
    };
    let mut config = match file {
        Some(path) => Config::from_file(&path)?,
        None => Config::default(),
    };
    if let Some(d) = &common.data_dir {
        config.data_dir = Some(d.clone());
    }
    if let Some(u) = &common.database_url {
        config.database_url = Some(u.clone());
    }
    Ok(config)
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        CoordinatorCommand::Init { common, json } => {
            let config = load_config(&common)?;
            let out = archipelago_coordinator::server::init_blocking(&config)?;
            if json {
                println!("{}", out.to_json());
            } else {
                println!("Coordinator initialised. These secrets are shown once; store them now.");
                println!("admin API key:     {}", out.api_key);
                println!("enrollment token:  {}", out.enrollment_token);
            }
            Ok(0)
        }
        CoordinatorCommand::Serve {
            common,
            listen,
            policy,
            dev_sim_root,
        } => {
            let mut config = load_config(&common)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(p) = policy {
                config.policy_file = Some(p);
            }
            if let Some(r) = dev_sim_root {
                config.dev_sim_root = Some(r);
            }
            archipelago_coordinator::server::serve_blocking(
                config,
                super::signal::shutdown_signal(),
            )
            .context("coordinator")?;
            Ok(0)
        }
    }
}
