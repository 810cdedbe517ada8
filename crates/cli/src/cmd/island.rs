//! `archipelago island`: run the untrusted island agent (crate
//! `archipelago-island`), which enrolls with a coordinator, supervises the
//! `archipelago-enclave` process and relays opaque job bytes.
//! `archipelago island detect` only reports the host's TEE.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use archipelago_island::{AgentConfig, Backoff, EnclaveCommand, PlainRunner, TeeChoice, TeeMode};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<IslandCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum IslandCommand {
    /// Print the TEE this host offers (JSON) and exit.
    Detect {
        /// Root under which /dev and /sys are looked up (tests).
        #[arg(long, default_value = "/")]
        tee_root: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Coordinator base URL, e.g. https://coordinator.example:8080.
    #[arg(long, env = "ARCHIPELAGO_COORDINATOR_URL")]
    coordinator: Option<String>,
    /// Directory holding the island identity (island.json, mode 0600).
    #[arg(long, env = "ARCHIPELAGO_ISLAND_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// One-time enrollment token from the coordinator's operator (needed
    /// only for the first start).
    #[arg(long, env = "ARCHIPELAGO_ENROLLMENT_TOKEN", hide_env_values = true)]
    enrollment_token: Option<String>,
    /// Name shown to the operator.
    #[arg(long, default_value = "island")]
    name: String,
    /// TEE: auto (detect), none, sim (software, development only), or
    /// force sgx, tdx, sev, nitro, trustzone.
    #[arg(long, default_value = "auto")]
    tee: TeeMode,
    /// Root under which /dev and /sys are looked up for detection (tests).
    #[arg(long, default_value = "/")]
    tee_root: PathBuf,
    /// Sim root key file (required with --tee sim).
    #[arg(long, env = "ARCHIPELAGO_SIM_ROOT")]
    sim_root: Option<PathBuf>,
    /// The enclave binary (default: archipelago-enclave next to this binary).
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_BIN")]
    enclave_bin: Option<PathBuf>,
    /// Extra argument for `archipelago-enclave run` (repeatable), e.g.
    /// --enclave-arg=--rotate-secs=3600.
    #[arg(long = "enclave-arg", allow_hyphen_values = true)]
    enclave_args: Vec<OsString>,
    /// Model files directory (default: the fetched models, if complete).
    #[arg(long, env = "ARCHIPELAGO_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Run without model files (echo workload only).
    #[arg(long)]
    no_models: bool,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    capacity: usize,
    /// Memory offered to workloads, MiB.
    #[arg(long, default_value_t = 4096)]
    memory_mb: i64,
    /// Long-poll wait per lease request, ms.
    #[arg(long, default_value_t = 25_000)]
    lease_wait_ms: u64,
    /// Seconds running jobs may take to finish on shutdown before they are
    /// released back to the coordinator.
    #[arg(long, default_value_t = 30)]
    drain_timeout_secs: u64,
    /// First delay before restarting a crashed enclave, ms (doubles up to 30 s).
    #[arg(long, default_value_t = 500)]
    restart_backoff_ms: u64,
}

fn default_enclave_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("archipelago-enclave")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("archipelago-enclave"))
}

fn models_dir(args: &RunArgs) -> Option<PathBuf> {
    if args.no_models {
        return None;
    }
    if let Some(d) = &args.models_dir {
        return Some(d.clone());
    }
    let store = archipelago_inference::ModelStore::from_env().ok()?;
    store.check().ok()?;
    Some(store.dir().to_path_buf())
}

fn enclave_command(
    args: &RunArgs,
    tee: &TeeChoice,
    models: Option<&Path>,
) -> anyhow::Result<Option<EnclaveCommand>> {
    let Some(t) = tee.tee_type() else {
        return Ok(None);
    };
    let mut a: Vec<OsString> = vec!["run".into(), "--tee".into(), t.as_str().into()];
    if *tee == TeeChoice::Sim {
        let root = args
            .sim_root
            .as_ref()
            .context("--tee sim needs --sim-root FILE (the operator's sim root key)")?;
        a.push("--sim-root".into());
        a.push(root.into());
    }
    if let Some(m) = models {
        a.push("--models-dir".into());
        a.push(m.into());
    }
    a.extend(args.enclave_args.iter().cloned());
    Ok(Some(EnclaveCommand {
        program: args.enclave_bin.clone().unwrap_or_else(default_enclave_bin),
        args: a,
    }))
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    if let Some(IslandCommand::Detect { tee_root }) = args.command {
        let d = archipelago_island::detect(&tee_root);
        // Every value is a fixed ASCII name or a probe path from a fixed list.
        match d {
            Some(d) => println!(
                "{{\"tee_type\":\"{}\",\"interface\":\"{}\",\"path\":\"{}\"}}",
                d.tee.as_str(),
                d.interface,
                d.path.display()
            ),
            None => println!("{{\"tee_type\":null}}"),
        }
        return Ok(0);
    }
    let args = args.run;
    let coordinator = args
        .coordinator
        .clone()
        .context("--coordinator URL is required (or ARCHIPELAGO_COORDINATOR_URL)")?;
    let data_dir = args
        .data_dir
        .clone()
        .context("--data-dir DIR is required (or ARCHIPELAGO_ISLAND_DATA_DIR)")?;
    let tee = archipelago_island::choose(args.tee, &args.tee_root);
    match (args.tee, archipelago_island::detect(&args.tee_root)) {
        (TeeMode::Auto, Some(d)) => {
            tracing::info!(tee = %d.tee, interface = d.interface, path = %d.path.display(), "TEE detected")
        }
        (TeeMode::Auto, None) => tracing::info!("no TEE detected: plain jobs only"),
        _ => tracing::info!(tee = %tee, "TEE chosen by --tee"),
    }
    let models = models_dir(&args);
    let plain = match &models {
        Some(d) => PlainRunner::new(Some(d.clone())),
        None => PlainRunner::echo_only(),
    };
    let mut config = AgentConfig::new(&coordinator, data_dir, tee.clone(), plain);
    config.enclave = enclave_command(&args, &tee, models.as_deref())?;
    config.enrollment_token = args.enrollment_token.clone();
    config.name = args.name.clone();
    config.capacity = args.capacity;
    config.memory_mb = args.memory_mb;
    config.lease_wait = Duration::from_millis(args.lease_wait_ms);
    config.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    config.backoff = Backoff {
        initial: Duration::from_millis(args.restart_backoff_ms.max(10)),
        ..Backoff::default()
    };
    archipelago_island::run_blocking(config, super::signal::shutdown_signal())?;
    Ok(0)
}
