//! Running a coordinator: opening storage and the attestation policy,
//! `init` (first admin key and enrollment token), the background tasks
//! (reaper, nonce purge, PostgreSQL `LISTEN`) and serving with graceful
//! shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use archipelago_attest::Policy;
use axum::serve::ListenerExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::config::{Config, ConfigError};
use crate::store::{DbKind, Store, StoreError};
use crate::util::{now_ms, now_secs};

/// Credits granted to the admin account at `init` (credits are virtual
/// during the beta).
pub const INITIAL_ADMIN_CREDITS: i64 = 1_000_000;

/// Start-up and serving errors.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("attestation policy: {0}")]
    Policy(String),
    #[error("the coordinator is already initialised (an admin account exists); create more keys through the API")]
    AlreadyInitialised,
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// What `init` prints once.
#[derive(Debug, Clone, Serialize)]
pub struct InitOutput {
    pub api_key: String,
    pub enrollment_token: String,
    pub account_id: String,
}

fn load_policy(config: &Config) -> Result<Option<Policy>, CoordinatorError> {
    if let Some(path) = &config.policy_file {
        let p = Policy::load(path).map_err(|e| CoordinatorError::Policy(e.to_string()))?;
        if p.accept_sim {
            tracing::warn!(
                "ATTESTATION POLICY ACCEPTS SIM EVIDENCE: development only, no hardware protection"
            );
        }
        return Ok(Some(p));
    }
    if let Some(hex_root) = &config.dev_sim_root {
        let bytes = hex::decode(hex_root.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                CoordinatorError::Policy(
                    "dev_sim_root must be 64 hex characters (Ed25519 public key)".into(),
                )
            })?;
        tracing::warn!("DEVELOPMENT POLICY: sim evidence is accepted as attested; never use this in production");
        return Ok(Some(Policy::dev_sim(bytes)));
    }
    tracing::warn!("no attestation policy configured (policy_file): enclaves cannot attest, confidential TEE jobs will not run");
    Ok(None)
}

async fn open_store(config: &Config) -> Result<Store, CoordinatorError> {
    if config.database_url.is_none() {
        if let Some(dir) = &config.data_dir {
            std::fs::create_dir_all(dir).map_err(|source| CoordinatorError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
    }
    let store = Store::connect(&config.db_config()).await?;
    store.ensure_default_workloads().await?;
    Ok(store)
}

/// Creates the database, the default workloads, an admin account with an
/// API key and an enrollment token. Refuses to run twice.
pub async fn init(config: &Config) -> Result<InitOutput, CoordinatorError> {
    config.validate()?;
    let store = open_store(config).await?;
    if store.accounts().await?.iter().any(|a| a.is_admin) {
        store.close().await;
        return Err(CoordinatorError::AlreadyInitialised);
    }
    let account_id = store
        .create_account("admin", true, INITIAL_ADMIN_CREDITS)
        .await?;
    let (_, api_key) = store
        .create_api_key(
            &account_id,
            "admin",
            &["read".into(), "write".into(), "admin".into()],
        )
        .await?;
    let enrollment_token = store.create_enrollment_token(&account_id, None).await?;
    store.close().await;
    Ok(InitOutput {
        api_key,
        enrollment_token,
        account_id,
    })
}

/// A running coordinator's state plus its background tasks.
pub struct Coordinator {
    state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    /// Opens storage and policy and starts the background tasks.
    pub async fn open(config: Config) -> Result<Coordinator, CoordinatorError> {
        config.validate()?;
        let policy = load_policy(&config)?;
        let store = open_store(&config).await?;
        Ok(Coordinator::with_store(store, config, policy))
    }

    /// Builds a coordinator on an existing store (tests, embedding).
    pub fn with_store(store: Store, config: Config, policy: Option<Policy>) -> Coordinator {
        let state = AppState::new(store, config, policy);
        let (stop, rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(reaper(state.clone(), rx.clone()))];
        if state.store.kind() == DbKind::Postgres {
            tasks.push(tokio::spawn(listener(state.clone(), rx)));
        }
        Coordinator { state, stop, tasks }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn router(&self) -> axum::Router {
        crate::api::router(self.state.clone())
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and
    /// stops the background tasks.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CoordinatorError> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, database = self.state.store.kind().as_str(), "coordinator listening");
        let app = self.router();
        // Small responses and SSE events must leave at once: with Nagle's
        // algorithm on, an event written while the previous one is still
        // unacknowledged waits for the peer's delayed ACK (~40 ms on Linux),
        // which showed up as tens of milliseconds on every job.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        self.shutdown().await;
        Ok(())
    }

    /// Stops background tasks and closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.state.store.close().await;
        tracing::info!("coordinator stopped");
    }
}

/// How long a finished job's stream chunks stay stored: long enough for a
/// follower still reading the stream to finish, after which the job's
/// result (which carries the whole output) is all a reader needs.
const CHUNK_RETENTION_MS: i64 = 10 * 60 * 1000;

async fn reaper(st: AppState, mut stop: watch::Receiver<bool>) {
    let period = Duration::from_millis(st.config.reap_interval_ms.max(10));
    let mut last_purge = now_secs();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        match st.store.reap(st.config.max_attempts).await {
            Ok(r) => {
                st.counters
                    .lease_expiries
                    .fetch_add(r.lease_expiries, Ordering::Relaxed);
                if !r.requeued.is_empty() {
                    st.dispatcher.wake_all();
                    let _ = st
                        .store
                        .notify(&format!("{}:q:requeue", st.replica_id))
                        .await;
                }
                for id in r.requeued.iter().chain(r.failed.iter()) {
                    st.job_changed(id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
        }
        if now_secs() - last_purge >= 60 {
            last_purge = now_secs();
            if let Err(e) = st.store.purge_nonces(last_purge).await {
                tracing::warn!(error = %e, "nonce purge failed");
            }
            match st.store.purge_chunks(now_ms() - CHUNK_RETENTION_MS).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(chunks = n, "purged the stream chunks of finished jobs"),
                Err(e) => tracing::warn!(error = %e, "chunk purge failed"),
            }
        }
    }
}

/// PostgreSQL: wake-ups from other replicas.
async fn listener(st: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        let mut l = match sqlx::postgres::PgListener::connect(st.store.url()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN connection failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        if let Err(e) = l.listen(&st.store.channel()).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        loop {
            tokio::select! {
                n = l.recv() => match n {
                    Ok(n) => {
                        let mut parts = n.payload().splitn(3, ':');
                        let (Some(rep), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
                        if rep == st.replica_id {
                            continue;
                        }
                        match kind {
                            "q" => st.dispatcher.wake_all(),
                            _ => { let _ = st.job_events.send(std::sync::Arc::from(id)); }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

impl InitOutput {
    /// `{"api_key": …, "enrollment_token": …}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"api_key": self.api_key, "enrollment_token": self.enrollment_token})
            .to_string()
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CoordinatorError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// [`init`] on its own runtime (for the CLI).
pub fn init_blocking(config: &Config) -> Result<InitOutput, CoordinatorError> {
    runtime()?.block_on(init(config))
}

/// Binds `config.listen` and serves until `shutdown` resolves (the CLI
/// passes its SIGINT/SIGTERM future), then drains requests.
pub fn serve_blocking(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    runtime()?.block_on(async move {
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            CoordinatorError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.listen),
            ))
        })?;
        let coordinator = Coordinator::open(config).await?;
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests");
        };
        coordinator.serve(listener, shutdown).await
    })
}
