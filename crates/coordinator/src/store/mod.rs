//! Storage: one schema, one migration set, two databases.
//!
//! SQLite (one file, WAL) is the zero-setup default; PostgreSQL lets several
//! coordinator replicas share one database. Most of the store is driven
//! through sqlx's `Any` driver with SQL both accept (`$n` placeholders,
//! `RETURNING`, `ON CONFLICT`), so those queries exist once; job claims add
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL. The job path (submit, claim,
//! settle) is the exception, for speed: it runs in a group-commit writer
//! per replica ([`writer`]) through a small trait ([`sql::Sql`]) that a
//! synchronous SQLite connection on a thread of its own and a pipelining
//! PostgreSQL connection implement, and on PostgreSQL submission and
//! settlement are one statement each (`submit_pg`, `settle_pg`). On SQLite
//! the store's other write transactions are `BEGIN IMMEDIATE`, so its two
//! connections queue on the write lock instead of failing with
//! `SQLITE_BUSY`.
//!
//! Every state change of a job and its ledger entries commit in one
//! transaction, guarded by the state the change expects, so a job settles
//! exactly once however often a result is posted or a replica crashes. On
//! PostgreSQL replica wake-ups (`NOTIFY`) ride in the change's own
//! transaction instead of costing a commit of their own.

mod jobs;
mod ledger;
mod registry;
mod sql;
mod writer;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor};

pub use jobs::{
    Claim, CompleteOutcome, IslandSnapshot, JobRow, NewJob, ReapReport, ReleaseOutcome,
    SubmitOutcome,
};
pub use ledger::{Book, LedgerTotals};
pub use registry::{
    AccountRow, ApiKeyRow, ClientKeyRow, EnclaveRow, IslandRow, NewEnclave, WorkloadRow,
};

/// Storage failures. Database messages are logged, never returned to API
/// clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database error (SQLite writer): {0}")]
    Sqlite(String),
    #[error("database error (PostgreSQL writer): {0}")]
    Postgres(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database has migration {0} applied, which this build of archipelago does not know: it was migrated by a newer (or another) build. Run that build, or point the coordinator at another database or schema")]
    UnknownMigration(i64),
    #[error("invalid database url: {0}")]
    BadUrl(String),
    #[error("ledger transaction does not balance (sum {0}); refusing to write it")]
    Unbalanced(i64),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("the database writer has stopped (the coordinator is shutting down); retry against a running coordinator")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
        }
    }
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `sqlite://path`, `sqlite::memory:` or `postgres://…`.
    pub url: String,
    /// PostgreSQL only: schema to create and use (test isolation, or
    /// several deployments in one database).
    pub schema: Option<String>,
    /// PostgreSQL pool size.
    pub max_connections: u32,
    /// PostgreSQL `synchronous_commit`. Off trades the last few hundred ms of
    /// commits on a database crash (never consistency: every job change and
    /// its ledger entries still commit atomically) for throughput.
    pub synchronous_commit: bool,
}

impl DbConfig {
    /// SQLite database file `coordinator.db` in `dir`.
    pub fn sqlite_in(dir: &std::path::Path) -> DbConfig {
        DbConfig {
            url: format!("sqlite://{}?mode=rwc", dir.join("coordinator.db").display()),
            schema: None,
            max_connections: 1,
            synchronous_commit: true,
        }
    }

    pub fn sqlite_memory() -> DbConfig {
        DbConfig {
            url: "sqlite::memory:".into(),
            schema: None,
            max_connections: 1,
            synchronous_commit: true,
        }
    }

    pub fn postgres(url: &str) -> DbConfig {
        DbConfig {
            url: url.into(),
            schema: None,
            max_connections: 16,
            synchronous_commit: true,
        }
    }
}

/// The migration set, embedded in the binary.
pub fn migrator() -> Migrator {
    Migrator {
        migrations: Cow::Owned(vec![
            Migration::new(
                1,
                Cow::Borrowed("initial"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/0001_initial.sql")),
                false,
            ),
            Migration::new(
                2,
                Cow::Borrowed("he keys"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/0002_he_keys.sql")),
                false,
            ),
            Migration::new(
                3,
                Cow::Borrowed("queued index"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/0003_queued_index.sql")),
                false,
            ),
            Migration::new(
                4,
                Cow::Borrowed("active job indexes"),
                MigrationType::Simple,
                Cow::Borrowed(include_str!("../../migrations/0004_active_job_indexes.sql")),
                false,
            ),
        ]),
        ..Migrator::DEFAULT
    }
}

/// A schema name that is safe to splice into SQL, or a clear error.
fn check_schema_name(s: &str) -> Result<()> {
    if valid_schema_name(s) {
        Ok(())
    } else {
        Err(StoreError::BadUrl(format!(
            "schema name must be [a-z_][a-z0-9_]*, got {s:?}"
        )))
    }
}

fn connect_options(url: &str) -> Result<AnyConnectOptions> {
    url.parse()
        .map_err(|e: sqlx::Error| StoreError::BadUrl(format!("cannot parse database url: {e}")))
}

/// The file of a SQLite URL, or None for an in-memory database (which a
/// second connection could not see).
fn sqlite_file(url: &str) -> Result<Option<std::path::PathBuf>> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let opts: sqlx::sqlite::SqliteConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| StoreError::BadUrl(format!("cannot parse database url: {e}")))?;
    Ok(Some(opts.get_filename().to_path_buf()))
}

fn valid_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// The coordinator's database handle. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: DbKind,
    url: String,
    schema: Option<String>,
    /// Identifies this replica in NOTIFY payloads (its own are ignored).
    replica_id: String,
    /// The job path's write transactions (group commit on SQLite).
    writer: writer::Writer,
}

impl Store {
    /// Connects, creating the SQLite file if needed, and runs migrations.
    pub async fn connect(cfg: &DbConfig) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let kind = if cfg.url.starts_with("sqlite:") {
            DbKind::Sqlite
        } else if cfg.url.starts_with("postgres://") || cfg.url.starts_with("postgresql://") {
            DbKind::Postgres
        } else {
            return Err(StoreError::BadUrl(
                "expected sqlite://PATH, sqlite::memory: or postgres://…".into(),
            ));
        };
        if let Some(s) = &cfg.schema {
            check_schema_name(s)?;
        }
        let opts = connect_options(&cfg.url)?;
        let file_path = sqlite_file(&cfg.url)?;
        let file = file_path.is_some();
        let pool = match kind {
            DbKind::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    // The database is a local file: there is no far end to
                    // hang up, and the default ping before every acquire
                    // costs a round trip to the connection's worker thread.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            // A file's checkpoints run on the writer's
                            // checkpoint thread (store/writer.rs), never
                            // inside a request's commit.
                            if file {
                                conn.execute("PRAGMA wal_autocheckpoint = 0").await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            DbKind::Postgres => {
                if let Some(schema) = &cfg.schema {
                    let mut c =
                        <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts).await?;
                    c.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
                        .await?;
                }
                let schema = cfg.schema.clone();
                let sync = cfg.synchronous_commit;
                AnyPoolOptions::new()
                    .max_connections(cfg.max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        let schema = schema.clone();
                        Box::pin(async move {
                            if !sync {
                                conn.execute("SET synchronous_commit = off").await?;
                            }
                            if let Some(schema) = schema {
                                conn.execute(format!("SET search_path TO {schema}").as_str())
                                    .await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
        };
        migrator().run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::UnknownMigration(v),
            e => StoreError::Migrate(e),
        })?;
        let writer = match (kind, file_path) {
            (DbKind::Sqlite, Some(path)) => writer::Writer::spawn_sqlite_thread(&path)?,
            (DbKind::Sqlite, None) => writer::Writer::spawn(pool.clone(), false),
            (DbKind::Postgres, _) => {
                writer::Writer::spawn_postgres(writer::PgTarget {
                    url: cfg.url.clone(),
                    schema: cfg.schema.clone(),
                    synchronous_commit: cfg.synchronous_commit,
                })
                .await?
            }
        };
        Ok(Store {
            writer,
            pool,
            kind,
            url: cfg.url.clone(),
            schema: cfg.schema.clone(),
            replica_id: crate::util::random_id("rep"),
        })
    }

    /// PostgreSQL only: drops `schema` (and everything in it) over a plain
    /// connection to `url`, without touching or migrating any other schema.
    /// For test and benchmark isolation schemas.
    pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
        check_schema_name(schema)?;
        sqlx::any::install_default_drivers();
        let opts = connect_options(url)?;
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect_with(&opts).await?;
        c.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await?;
        <sqlx::AnyConnection as sqlx::Connection>::close(c).await?;
        Ok(())
    }

    pub fn kind(&self) -> DbKind {
        self.kind
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Connection string (for the PostgreSQL listener).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// NOTIFY channel name (per schema, so test schemas don't cross-talk).
    pub fn channel(&self) -> String {
        match &self.schema {
            Some(s) => format!("archipelago_{s}"),
            None => "archipelago".into(),
        }
    }

    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL, nothing on SQLite.
    fn skip_locked(&self) -> &'static str {
        match self.kind {
            DbKind::Postgres => " FOR UPDATE SKIP LOCKED",
            DbKind::Sqlite => "",
        }
    }

    /// Answers when the database does.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// This replica's id, the first field of its NOTIFY payloads.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The payload `{replica}:{kind}:{id}` of a NOTIFY that the job path's
    /// PostgreSQL statements send inside their own transaction, so it goes
    /// out with the commit instead of costing a commit of its own (SQLite
    /// has one process and sends none).
    fn notify_payload(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.replica_id)
    }

    /// The job path's [`sql::Sql`] view of a sqlx connection or transaction.
    fn sql<'c>(&self, conn: &'c mut sqlx::AnyConnection) -> sql::AnySql<'c> {
        sql::AnySql {
            conn,
            postgres: self.kind == DbKind::Postgres,
        }
    }

    /// A write transaction outside the writer. On SQLite it is `BEGIN
    /// IMMEDIATE`: it takes the write lock up front, waiting for the writer
    /// thread's connection (`busy_timeout`), where a deferred `BEGIN` that
    /// reads first could fail on a snapshot that connection made stale.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.kind {
            DbKind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            DbKind::Postgres => self.pool.begin().await?,
        })
    }

    /// Publishes a wake-up to other replicas (PostgreSQL `NOTIFY`).
    pub async fn notify(&self, payload: &str) -> Result<()> {
        if self.kind == DbKind::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(self.channel())
                .bind(payload.to_string())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema_name("t_abc123"));
        assert!(!valid_schema_name("1abc"));
        assert!(!valid_schema_name("a;drop"));
        assert!(!valid_schema_name(""));
    }
}
