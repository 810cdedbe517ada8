//! The `archipelago` binary. It only wires library crates together: every
//! subcommand lives in `cmd/` and delegates to the crate that owns the work,
//! so the logic stays testable without a process and this file stays small.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "archipelago",
    version,
    about = "Archipelago confidential inference network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // One variant per subcommand module in `cmd/`, e.g.
    // `Attest(cmd::attest::Args)`; dispatch it in `main` below.
    /// Verify TEE evidence (attestation) from files.
    Attest(cmd::attest::Args),
    /// Fetch, verify and run the inference models.
    Models(cmd::models::Args),
    /// Run the control plane: `init` once, then `serve`.
    Coordinator(cmd::coordinator::Args),
    /// Run an island agent: enroll, supervise the enclave, relay jobs.
    Island(cmd::island::Args),
    /// Client keys: create, list, delete (secret halves stay on this machine).
    Keys(cmd::keys::Args),
    /// Run a job: `run --workload chat --confidential "prompt"`.
    Run(cmd::run::Args),
    /// Your jobs: get (decrypting locally), list, cancel.
    Jobs(cmd::jobs::Args),
    /// TEE availability (`/confidential/stats`).
    Stats(cmd::stats::Args),
    /// Balance and recent ledger entries.
    Account(cmd::account::Args),
    /// The local gateway: the product page's API and an OpenAI-compatible API.
    Gateway(cmd::gateway::Args),
    /// One command for a whole local network: coordinator, islands, gateway.
    Dev(cmd::dev::Args),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ARCHIPELAGO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        Command::Attest(args) => cmd::attest::run(args)?,
        Command::Models(args) => cmd::models::run(args)?,
        Command::Coordinator(args) => cmd::coordinator::run(args)?,
        Command::Island(args) => cmd::island::run(args)?,
        Command::Keys(args) => cmd::keys::run(args)?,
        Command::Run(args) => cmd::run::run(args)?,
        Command::Jobs(args) => cmd::jobs::run(args)?,
        Command::Stats(args) => cmd::stats::run(args)?,
        Command::Account(args) => cmd::account::run(args)?,
        Command::Gateway(args) => cmd::gateway::run(args)?,
        Command::Dev(args) => cmd::dev::run(args)?,
    };
    #[allow(unreachable_code)]
    std::process::exit(code)
}
