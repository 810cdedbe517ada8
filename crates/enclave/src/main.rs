//! `archipelago-enclave`: the trusted enclave process.
//!
//! `run` serves the island ↔ enclave channel on stdin/stdout (stdout carries
//! only channel frames; the log goes to stderr and never holds plaintext).
//! `measure` prints the sim enclave's measurement for a policy to pin.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use archipelago_attest::{
    ConfigFsTsmSource, EvidenceSource, GramineSgxSource, NitroNsmSource, SimEvidenceSource,
    SimRoot, TeeType, DEFAULT_GRAMINE_ROOT, DEFAULT_TSM_ROOT,
};
use archipelago_enclave::enclave::unix_now;
use archipelago_enclave::{measure, serve, Config, Enclave, ServeOptions, Workloads};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "archipelago-enclave",
    version,
    about = "Archipelago trusted enclave runtime"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the island channel on stdin/stdout.
    Run(RunArgs),
    /// Print the sim measurement (SHA-384 of this binary, the shared libraries it runs with and the model files, hex).
    Measure {
        /// Models directory (the same one `run` gets).
        #[arg(long, env = "ARCHIPELAGO_MODELS_DIR")]
        models_dir: Option<PathBuf>,
    },
}

#[derive(Parser)]
struct RunArgs {
    /// TEE whose evidence source to use: sim (software), or a hardware TEE.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_TEE", default_value = "sim")]
    tee: TeeType,
    /// Sim root key file (archipelago-sim-root-v1), required for --tee sim.
    #[arg(long, env = "ARCHIPELAGO_SIM_ROOT")]
    sim_root: Option<PathBuf>,
    /// Models directory; without it only the echo workload runs.
    #[arg(long, env = "ARCHIPELAGO_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// Seconds between enclave key rotations.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_ROTATE_SECS", default_value_t = 3600)]
    rotate_secs: u64,
    /// Seconds an old key still opens envelopes after its rotation.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_GRACE_SECS", default_value_t = 3600)]
    grace_secs: u64,
    /// Accepted distance of a request's issued_at from the enclave clock.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_SKEW_SECS", default_value_t = 300)]
    skew_secs: u64,
    /// Request ids remembered by the replay cache.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_REPLAY_CAPACITY", default_value_t = 1 << 20)]
    replay_capacity: usize,
    /// (Enclave key, client key) pairs whose Diffie-Hellman is kept for the
    /// client's next responses (0: keep none; each response then does one
    /// X25519 on the job's critical path).
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_SHARE_CAPACITY", default_value_t = archipelago_enclave::shares::DEFAULT_SHARE_CAPACITY)]
    share_capacity: usize,
    /// Decapsulations of the `enc`s clients announce for their next
    /// request, made between jobs and kept until used (0: keep none; each
    /// open then does its X25519 on the job's critical path).
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_DECAP_CAPACITY", default_value_t = archipelago_enclave::decaps::DEFAULT_DECAP_CAPACITY)]
    decap_capacity: usize,
    /// Jobs run at once.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_MAX_JOBS", default_value_t = 2)]
    max_jobs: usize,
    /// Milliseconds between checks of the rotation schedule.
    #[arg(long, env = "ARCHIPELAGO_ENCLAVE_TICK_MS", default_value_t = 1000)]
    tick_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Measure { models_dir } => {
            let workloads = Workloads::new(models_dir.as_deref());
            println!(
                "{}",
                measure::measurement_hex(&workloads).context(
                    "measuring the enclave binary, its shared libraries and the model files"
                )?
            );
            Ok(())
        }
        Cmd::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let workloads = Workloads::new(args.models_dir.as_deref());
    let (source, measurement): (Box<dyn EvidenceSource>, String) = match args.tee {
        TeeType::Sim => {
            let path = args
                .sim_root
                .as_deref()
                .context("--tee sim needs --sim-root FILE (or ARCHIPELAGO_SIM_ROOT)")?;
            let root = SimRoot::load(path)?;
            let hex = measure::measurement_hex(&workloads).context(
                "measuring the enclave binary, its shared libraries and the model files",
            )?;
            let mut m = [0u8; 48];
            hex::decode_to_slice(&hex, &mut m).context("measurement is not 48 bytes")?;
            (Box::new(SimEvidenceSource::new(root, m)), hex)
        }
        // Hardware TEEs: the platform measures the enclave; its evidence
        // carries the measurement, so none is computed here.
        tee @ (TeeType::Sev | TeeType::Tdx) => (
            Box::new(
                ConfigFsTsmSource::new(DEFAULT_TSM_ROOT, tee)
                    .context("configfs-tsm evidence source")?,
            ),
            String::new(),
        ),
        TeeType::Sgx => (
            Box::new(GramineSgxSource::new(DEFAULT_GRAMINE_ROOT)),
            String::new(),
        ),
        TeeType::Nitro => (
            Box::new(NitroNsmSource::open().context("Nitro NSM evidence source")?),
            String::new(),
        ),
        other => bail!(
            "no evidence source for {other} is built into this enclave; \
             supported: sev and tdx (configfs-tsm), sgx (Gramine), nitro (NSM), sim"
        ),
    };
    let config = Config {
        rotate_secs: args.rotate_secs.max(1),
        grace_secs: args.grace_secs,
        skew_secs: args.skew_secs,
        replay_capacity: args.replay_capacity.max(1),
        share_capacity: args.share_capacity,
        decap_capacity: args.decap_capacity,
    };
    tracing::info!(
        tee = %source.tee_type(),
        measurement = %measurement,
        workloads = ?workloads.ids(),
        rotate_secs = config.rotate_secs,
        grace_secs = config.grace_secs,
        skew_secs = config.skew_secs,
        share_capacity = config.share_capacity,
        decap_capacity = config.decap_capacity,
        "enclave starting"
    );
    let enclave = Arc::new(Enclave::new(
        source,
        measurement,
        workloads,
        config,
        unix_now(),
    ));
    let opts = ServeOptions {
        max_jobs: args.max_jobs.max(1),
        tick: Duration::from_millis(args.tick_ms.max(10)),
    };
    serve(enclave, std::io::stdin(), std::io::stdout(), opts)?;
    tracing::info!("enclave stopped; keys zeroized");
    Ok(())
}
