//! `archipelago gateway`: the local gateway on this machine (127.0.0.1 by
//! default). It serves the product page's API — key creation, `/encrypt`
//! and `/decrypt` done here with your keystore and your policy, the rest
//! proxied — and an OpenAI-compatible API whose calls run as confidential
//! jobs. See `archipelago_client::gateway`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use archipelago_client::gateway::{self, GatewayConfig, GatewayState};
use archipelago_client::records::RequestRecords;
use archipelago_client::ClientError;

use super::client_opts::{finish, runtime, ClientOpts};

/// Default gateway address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    opts: ClientOpts,
    /// Address to listen on (loopback unless --allow-remote).
    #[arg(long, env = "ARCHIPELAGO_GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Allow a non-loopback address; requires --token.
    #[arg(long)]
    allow_remote: bool,
    /// Token every request must present as `Authorization: Bearer …`.
    #[arg(long, env = "ARCHIPELAGO_GATEWAY_TOKEN")]
    token: Option<String>,
    /// State directory (request records; no plaintext, no secret keys).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Longest time one OpenAI-compatible call may take, seconds.
    #[arg(long, default_value_t = 600)]
    job_timeout: u64,
}

/// Run `archipelago gateway`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.opts.json;
    let rt = runtime()?;
    finish(rt.block_on(inner(args)), json)
}

async fn inner(args: Args) -> Result<i32, ClientError> {
    let config = GatewayConfig {
        listen: args.listen,
        allow_remote: args.allow_remote,
        token: args.token.clone(),
        job_timeout: Duration::from_secs(args.job_timeout),
    };
    config.check()?;
    let mut session = args.opts.session(false)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| archipelago_client::config::data_home().join("gateway"));
    session = session.with_records(RequestRecords::open(dir.join("requests"))?);
    if session.api().api_key().is_none() {
        tracing::warn!("no API key configured: callers must send `Authorization: Bearer ak_…`");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| ClientError::Config(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ClientError::Config(e.to_string()))?;
    eprintln!(
        "gateway on http://{addr} → coordinator {} (keystore {}, policy {})",
        session.api().base(),
        session.keystore().dir().display(),
        args.opts
            .config()
            .ok()
            .and_then(|c| c.policy_file)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "production default".into())
    );
    let state = GatewayState::new(session, config);
    gateway::serve(state, listener, super::signal::shutdown_signal()).await?;
    Ok(0)
}
