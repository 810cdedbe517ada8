//! Group commit: the job path's write transactions (submit, claim, settle)
//! go through one writer per replica that runs whatever has queued up
//! meanwhile in a single database transaction.
//!
//! On SQLite there is one writer at a time anyway, so many small
//! transactions queue on its lock, each paying a `BEGIN`, a `COMMIT` (a WAL
//! append) and, through sqlx, a round trip to the connection's worker
//! thread per statement. On PostgreSQL each commit waits for a WAL flush
//! (`synchronous_commit` on), which bounds a stream of small transactions
//! far below what the statements themselves cost. Batching keeps the
//! semantics (each operation sees every earlier one, in order; its writes
//! commit atomically with the batch) and pays those costs once per batch.
//!
//! Three engines run the batches, behind the same [`Writer`]:
//! - a SQLite file: a thread of its own holding a synchronous `rusqlite`
//!   connection to the same file. A batch costs one hand-over to that
//!   thread and one answer per operation, however many statements it runs
//!   (sqlx would cost two thread wake-ups per statement). Its transactions
//!   are `BEGIN IMMEDIATE`, and so are the store's other SQLite write
//!   transactions ([`super::Store::begin`]), so the two connections queue
//!   on the write lock (`busy_timeout`) instead of failing on a stale read
//!   snapshot.
//!   Checkpoints (copying the WAL back into the database file, the only
//!   step that waits for the disk with `synchronous = NORMAL`) run on a
//!   second thread with its own connection, every [`CHECKPOINT_EVERY`], so
//!   no commit on the job path ever waits for an fsync; SQLite's automatic
//!   checkpoint is off on the store's connections.
//! - PostgreSQL: a tokio task with a `tokio-postgres` connection of its
//!   own, which pipelines. A batch's `BEGIN` and its operations' statements
//!   go out back to back and the server runs them in order, then one
//!   `COMMIT`: about two round trips per batch, where sqlx (which cannot
//!   pipeline) costs one per statement. So that pipelining cannot reorder
//!   anything, every job-path operation is ONE statement on PostgreSQL
//!   (`submit_pg`, `settle_pg`, the claim); a batched operation that sends a
//!   second statement fails the batch, and runs alone.
//! - An in-memory SQLite (which a second connection cannot see): a tokio
//!   task driving the sqlx connection.
//!
//! An operation answers [`Txn::Commit`] or [`Txn::Rollback`]. A batch
//! commits only when every operation in it wanted to commit; otherwise (or
//! on any error, such as a PostgreSQL deadlock with another replica's
//! batch) the whole batch is rolled back and each operation runs again in a
//! transaction of its own, which then commits or rolls back as that
//! operation asks. Operations are therefore re-runnable closures that only
//! touch the database (through [`Sql`]) and the slot their answer goes to.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::sql::{AnySql, LiteSql, PgSql, PgStatements, Sql};
use super::{Result, StoreError};

/// Most operations in one batch.
const MAX_BATCH: usize = 128;

/// How often the checkpoint thread folds the WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// What an operation wants done with its transaction.
pub enum Txn<T> {
    Commit(T),
    /// Nothing of this operation may persist (a guard did not hold).
    Rollback(T),
}

type ErasedOp = Box<dyn for<'c> FnMut(&'c mut dyn Sql) -> BoxFuture<'c, Result<bool>> + Send>;

struct Request {
    op: ErasedOp,
    /// One statement, always committing: alone it runs in autocommit mode
    /// (no `BEGIN`/`COMMIT` round trips).
    single: bool,
    done: oneshot::Sender<Result<()>>,
}

/// Where requests go: a tokio task (sqlx or the PostgreSQL pipeline) or
/// the SQLite writer thread.
#[derive(Clone)]
enum Engine {
    Task(mpsc::UnboundedSender<Request>),
    Thread(std::sync::mpsc::Sender<Request>),
}

/// Where the PostgreSQL writer connects, and how it sets up its session.
#[derive(Clone)]
pub struct PgTarget {
    pub url: String,
    /// Spliced into `SET search_path`, so checked again at each connect
    /// ([`super::check_schema_name`]).
    pub schema: Option<String>,
    pub synchronous_commit: bool,
}

/// Handle to the writer.
#[derive(Clone)]
pub struct Writer {
    engine: Engine,
}

impl Writer {
    /// A group-committing writer task on `pool`. It ends when the last
    /// handle is dropped.
    pub fn spawn(pool: AnyPool, postgres: bool) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_task(pool, postgres, rx));
        Writer {
            engine: Engine::Task(tx),
        }
    }

    /// A group-committing, pipelining writer task on its own PostgreSQL
    /// connection (made now, so a bad URL fails here; remade after a loss).
    pub async fn spawn_postgres(target: PgTarget) -> Result<Writer> {
        let client = pg_connect(&target).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_pipeline(target, client, rx));
        Ok(Writer {
            engine: Engine::Task(tx),
        })
    }

    /// A group-committing writer thread on its own connection to the
    /// SQLite file at `path` (already created and migrated). It ends when
    /// the last handle is dropped.
    pub fn spawn_sqlite_thread(path: &Path) -> Result<Writer> {
        let conn = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // journal_mode is a property of the file (set by the first
        // connection); these two are per connection.
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
        )?;
        conn.set_prepared_statement_cache_capacity(64);
        let checkpointer = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        checkpointer.busy_timeout(Duration::from_secs(5))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                run_thread(conn, rx);
                drop(stop_tx);
            })
            .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))?;
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || run_checkpoints(checkpointer, stop_rx))
            .map_err(|e| StoreError::Sqlite(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Writer {
            engine: Engine::Thread(tx),
        })
    }

    /// Runs `op` in a write transaction and returns its answer once that
    /// transaction has committed (or, for [`Txn::Rollback`], rolled back).
    pub async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut dyn Sql) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
    {
        self.submit(op, false).await
    }

    /// [`Writer::write`] for an operation that is a single statement and
    /// always commits (a claim): batched like the others, but run alone it
    /// needs no explicit transaction.
    pub async fn write_one<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut dyn Sql) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
    {
        self.submit(op, true).await
    }

    async fn submit<T, F>(&self, mut op: F, single: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut dyn Sql) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
    {
        let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let out = slot.clone();
        let erased: ErasedOp = Box::new(move |conn| {
            let fut = op(conn);
            let slot = slot.clone();
            Box::pin(async move {
                let (value, commit) = match fut.await? {
                    Txn::Commit(v) => (v, true),
                    Txn::Rollback(v) => (v, false),
                };
                if let Ok(mut s) = slot.lock() {
                    *s = Some(value);
                }
                Ok(commit)
            })
        });
        let (done, wait) = oneshot::channel();
        let req = Request {
            op: erased,
            single,
            done,
        };
        let sent = match &self.engine {
            Engine::Task(tx) => tx.send(req).is_ok(),
            Engine::Thread(tx) => tx.send(req).is_ok(),
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        wait.await.map_err(|_| StoreError::Closed)??;
        let value = out.lock().ok().and_then(|mut s| s.take());
        value.ok_or(StoreError::Closed)
    }
}

/// Waits for a request, then takes whatever else has queued meanwhile (up
/// to [`MAX_BATCH`]) into `batch`; false once every handle is gone.
async fn next_batch(rx: &mut mpsc::UnboundedReceiver<Request>, batch: &mut Vec<Request>) -> bool {
    let Some(first) = rx.recv().await else {
        return false;
    };
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
    true
}

// ---- the task engine (sqlx)

async fn run_task(pool: AnyPool, postgres: bool, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while next_batch(&mut rx, &mut batch).await {
        if batch.len() > 1 && task_batch(&pool, postgres, &mut batch).await {
            for r in batch.drain(..) {
                let _ = r.done.send(Ok(()));
            }
            continue;
        }
        for mut r in batch.drain(..) {
            let res = if r.single {
                task_autocommit(&pool, postgres, &mut r.op).await
            } else {
                task_alone(&pool, postgres, &mut r.op).await
            };
            let _ = r.done.send(res);
        }
    }
}

/// All of `batch` in one transaction; false (rolled back) unless every
/// operation asked to commit and the commit succeeded.
async fn task_batch(pool: &AnyPool, postgres: bool, batch: &mut [Request]) -> bool {
    let Ok(mut tx) = pool.begin().await else {
        return false;
    };
    for r in batch.iter_mut() {
        match (r.op)(&mut AnySql {
            conn: &mut tx,
            postgres,
        })
        .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = tx.rollback().await;
                return false;
            }
        }
    }
    match tx.commit().await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "group commit failed; retrying one by one");
            false
        }
    }
}

async fn task_alone(pool: &AnyPool, postgres: bool, op: &mut ErasedOp) -> Result<()> {
    let mut tx = pool.begin().await?;
    match op(&mut AnySql {
        conn: &mut tx,
        postgres,
    })
    .await
    {
        Ok(true) => tx.commit().await?,
        Ok(false) => tx.rollback().await?,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    Ok(())
}

async fn task_autocommit(pool: &AnyPool, postgres: bool, op: &mut ErasedOp) -> Result<()> {
    let mut conn = pool.acquire().await?;
    op(&mut AnySql {
        conn: &mut conn,
        postgres,
    })
    .await?;
    Ok(())
}

// ---- the pipeline engine (tokio-postgres)

async fn pg_connect(t: &PgTarget) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = t
        .url
        .parse()
        .map_err(|e| StoreError::BadUrl(format!("cannot parse database url: {e}")))?;
    // So operators can tell the writer's session apart in pg_stat_activity.
    if config.get_application_name().is_none() {
        config.application_name("archipelago-writer");
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL writer connection lost; it reconnects on the next write");
        }
    });
    let mut setup = String::new();
    if !t.synchronous_commit {
        setup.push_str("SET synchronous_commit = off; ");
    }
    if let Some(schema) = &t.schema {
        super::check_schema_name(schema)?;
        setup.push_str(&format!("SET search_path TO {schema}; "));
    }
    if !setup.is_empty() {
        client.batch_execute(&setup).await?;
    }
    Ok(client)
}

async fn run_pipeline(
    target: PgTarget,
    client: tokio_postgres::Client,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut client = client;
    let mut prepared = PgStatements::default();
    let mut batch: Vec<Request> = Vec::new();
    while next_batch(&mut rx, &mut batch).await {
        if client.is_closed() {
            match pg_connect(&target).await {
                Ok(c) => {
                    client = c;
                    // Prepared statements die with their session.
                    prepared.clear();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL writer cannot connect; failing this batch");
                    for r in batch.drain(..) {
                        let _ = r.done.send(Err(StoreError::Postgres(format!(
                            "the coordinator cannot reach PostgreSQL ({e}); retry shortly"
                        ))));
                    }
                    continue;
                }
            }
        }
        let c = &client;
        let mut unprepared = Vec::new();
        let committed =
            batch.len() > 1 && pipe_batch(c, &prepared, &mut batch, &mut unprepared).await;
        if committed {
            for r in batch.drain(..) {
                let _ = r.done.send(Ok(()));
            }
        }
        for mut r in batch.drain(..) {
            let mut sql = PgSql {
                client: c,
                budget: None,
                prepared: &prepared,
                unprepared: Vec::new(),
            };
            let res = if r.single {
                (r.op)(&mut sql).await.map(|_| ())
            } else {
                pipe_alone(c, &mut sql, &mut r.op).await
            };
            unprepared.append(&mut sql.unprepared);
            let _ = r.done.send(res);
        }
        // Between batches: prepare what ran unnamed, so the server plans
        // each statement once rather than on every use.
        for (text, types) in unprepared {
            if prepared.get(&text).is_none() {
                if let Err(e) = prepared.prepare(c, text, &types).await {
                    tracing::warn!(error = %e, "preparing a writer statement failed; it keeps running unnamed");
                }
            }
        }
    }
}

/// Polls `first` and then each of `rest`, always in that order, until all
/// are done: the first poll sends each one's statement, so they reach the
/// server in batch order.
async fn in_order<'f>(
    first: impl Future<Output = Result<(), tokio_postgres::Error>>,
    rest: Vec<BoxFuture<'f, Result<bool>>>,
) -> (Result<()>, Vec<Result<bool>>) {
    let mut first = std::pin::pin!(first);
    let mut first_out: Option<Result<()>> = None;
    let mut rest: Vec<Option<BoxFuture<'f, Result<bool>>>> = rest.into_iter().map(Some).collect();
    let mut outs: Vec<Option<Result<bool>>> = (0..rest.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        if first_out.is_none() {
            if let Poll::Ready(v) = first.as_mut().poll(cx) {
                first_out = Some(v.map_err(StoreError::from));
            }
        }
        let mut pending = first_out.is_none();
        for (slot, out) in rest.iter_mut().zip(outs.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    let outs = outs
        .into_iter()
        .map(|o| o.unwrap_or(Err(StoreError::Closed)))
        .collect();
    (first_out.unwrap_or(Err(StoreError::Closed)), outs)
}

/// `BEGIN`, every operation's one statement, pipelined; then `COMMIT` if
/// all asked to commit, else `ROLLBACK` (false). Statements that ran
/// unnamed are added to `unprepared`.
async fn pipe_batch(
    c: &tokio_postgres::Client,
    prepared: &PgStatements,
    batch: &mut [Request],
    unprepared: &mut Vec<(String, Vec<tokio_postgres::types::Type>)>,
) -> bool {
    let mut handles: Vec<PgSql> = batch
        .iter()
        .map(|_| PgSql {
            client: c,
            budget: Some(1),
            prepared,
            unprepared: Vec::new(),
        })
        .collect();
    let ops: Vec<BoxFuture<'_, Result<bool>>> = batch
        .iter_mut()
        .zip(handles.iter_mut())
        .map(|(r, h)| (r.op)(h))
        .collect();
    let (begun, outs) = in_order(c.batch_execute("BEGIN"), ops).await;
    for h in &mut handles {
        unprepared.append(&mut h.unprepared);
    }
    let all = begun.is_ok() && outs.iter().all(|o| matches!(o, Ok(true)));
    if !all {
        let _ = c.batch_execute("ROLLBACK").await;
        return false;
    }
    match c.batch_execute("COMMIT").await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "group commit failed; retrying one by one");
            false
        }
    }
}

/// One operation in a transaction of its own (`BEGIN` pipelined with its
/// first statement).
async fn pipe_alone(
    c: &tokio_postgres::Client,
    sql: &mut PgSql<'_>,
    op: &mut ErasedOp,
) -> Result<()> {
    let (begun, mut outs) = in_order(c.batch_execute("BEGIN"), vec![op(sql)]).await;
    let out = outs.pop().unwrap_or(Err(StoreError::Closed));
    // BEGIN fails only on a broken connection, which the statement after
    // it could not have used either.
    begun?;
    match out {
        Ok(true) => c.batch_execute("COMMIT").await?,
        Ok(false) => c.batch_execute("ROLLBACK").await?,
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(())
}

// ---- the thread engine (rusqlite, SQLite file)

fn run_thread(mut conn: rusqlite::Connection, rx: std::sync::mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.len() > 1 && thread_batch(&mut conn, &mut batch) {
            for r in batch.drain(..) {
                let _ = r.done.send(Ok(()));
            }
            continue;
        }
        for mut r in batch.drain(..) {
            let res = if r.single {
                ready(&mut r.op, &mut conn).map(|_| ())
            } else {
                thread_alone(&mut conn, &mut r.op)
            };
            let _ = r.done.send(res);
        }
    }
}

/// Folds the WAL into the database file every [`CHECKPOINT_EVERY`] until
/// the writer thread ends, then once more. `PASSIVE`: it never blocks a
/// writer (or waits for one); what it cannot copy now it copies next time.
fn run_checkpoints(conn: rusqlite::Connection, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        let last = matches!(
            stop.recv_timeout(CHECKPOINT_EVERY),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) | Ok(())
        );
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "SQLite checkpoint failed; the WAL grows until the next one succeeds");
        }
        if last {
            return;
        }
    }
}

/// Runs `op` on the synchronous connection: its future is ready when
/// first polled, since every [`LiteSql`] call completes before it returns.
fn ready(op: &mut ErasedOp, conn: &mut rusqlite::Connection) -> Result<bool> {
    let mut sql = LiteSql { conn };
    let mut fut: Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>> = op(&mut sql);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(StoreError::Sqlite(
            "a writer operation waited on something other than the database; it was not run".into(),
        )),
    }
}

fn thread_batch(conn: &mut rusqlite::Connection, batch: &mut [Request]) -> bool {
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        return false;
    }
    for r in batch.iter_mut() {
        match ready(&mut r.op, conn) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                let _ = conn.execute_batch("ROLLBACK");
                return false;
            }
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => true,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            tracing::warn!(error = %e, size = batch.len(), "group commit failed; retrying one by one");
            false
        }
    }
}

fn thread_alone(conn: &mut rusqlite::Connection, op: &mut ErasedOp) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    match ready(op, conn) {
        Ok(true) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e.into());
            }
        }
        Ok(false) => conn.execute_batch("ROLLBACK")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sql::Val;
    use super::*;

    fn temp_db() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "archipelago-writer-{}-{}",
            std::process::id(),
            crate::util::random_id("t")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.db");
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
        )
        .unwrap();
        path
    }

    /// Inserts `k`; rolls back (after writing) when `v` is negative.
    async fn put(w: &Writer, k: &str, v: i64) -> Result<bool> {
        let k = k.to_string();
        w.write(move |conn| {
            let k = k.clone();
            Box::pin(async move {
                conn.exec(
                    "INSERT INTO t (k, v) VALUES ($1, $2)",
                    &[Val::T(&k), Val::I(v)],
                )
                .await?;
                Ok(if v < 0 {
                    Txn::Rollback(false)
                } else {
                    Txn::Commit(true)
                })
            })
        })
        .await
    }

    fn rows(path: &Path) -> Vec<(String, i64)> {
        let c = rusqlite::Connection::open(path).unwrap();
        let mut s = c.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
        let r = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        r
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thread_engine_commits_batches_and_isolates_a_rollback() {
        let path = temp_db();
        let w = Writer::spawn_sqlite_thread(&path).unwrap();
        // Many at once, so they batch; one asks for rollback and one fails
        // (duplicate key): neither may take the others down with it.
        let mut tasks = Vec::new();
        for i in 0..40i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let v = if i == 17 { -1 } else { i };
                put(&w, &format!("k{i:02}"), v).await
            }));
        }
        let dup = {
            let w = w.clone();
            tokio::spawn(async move { put(&w, "k03", 3).await })
        };
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let dup = dup.await.unwrap();
        let got = rows(&path);
        // k17 rolled back; the duplicate of k03 failed alone (whichever of
        // the two came second), everything else committed.
        assert!(!got.iter().any(|(k, _)| k == "k17"), "{got:?}");
        assert_eq!(got.len(), 39, "{got:?}");
        let failures = answers.iter().filter(|a| a.is_err()).count() + usize::from(dup.is_err());
        assert_eq!(failures, 1);
        assert!(matches!(answers[17], Ok(false)));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn thread_engine_refuses_an_operation_that_awaits_elsewhere() {
        let path = temp_db();
        let w = Writer::spawn_sqlite_thread(&path).unwrap();
        let e = w
            .write(|_conn| {
                Box::pin(async {
                    tokio::task::yield_now().await;
                    Ok(Txn::Commit(()))
                })
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("was not run"), "{e}");
        // The writer is still usable afterwards.
        assert!(put(&w, "a", 1).await.unwrap());
        assert_eq!(rows(&path), vec![("a".to_string(), 1)]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The PostgreSQL writer against the local server (as the API suite
    /// uses: `ARCHIPELAGO_TEST_DATABASE_URL`), in a schema of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipeline_engine_runs_each_op_once_and_reruns_a_two_statement_op_alone() {
        let url = std::env::var("ARCHIPELAGO_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "w_{}",
            crate::util::random_id("t")
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL for the writer test (scripts/ensure-postgres.sh)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)"
            ))
            .await
            .unwrap();
        let w = Writer::spawn_postgres(PgTarget {
            url: url.clone(),
            schema: Some(schema.clone()),
            synchronous_commit: false,
        })
        .await
        .unwrap();
        // Each op writes its own row; one sends two statements (allowed
        // only when it runs alone, so its batch is re-run op by op).
        let mut tasks = Vec::new();
        for i in 0..30i64 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                w.write(move |conn| {
                    Box::pin(async move {
                        let k = format!("k{i:02}");
                        conn.exec(
                            "INSERT INTO t (k, v) VALUES ($1, $2)",
                            &[Val::T(&k), Val::I(i)],
                        )
                        .await?;
                        if i == 7 {
                            conn.exec("INSERT INTO t (k, v) VALUES ('two', 2)", &[])
                                .await?;
                        }
                        Ok(Txn::Commit(()))
                    })
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let rows = admin
            .query(&format!("SELECT k, v FROM {schema}.t ORDER BY k"), &[])
            .await
            .unwrap();
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // Every op ran exactly once, the two-statement one included.
        assert_eq!(got.len(), 31, "{got:?}");
        assert_eq!(got[30], ("two".to_string(), 2));
        assert!(got[..30]
            .iter()
            .enumerate()
            .all(|(i, (k, v))| *k == format!("k{i:02}") && *v == i as i64));
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pipeline_engine_refuses_a_bad_url_at_start() {
        let e = match Writer::spawn_postgres(PgTarget {
            url: "postgres://nobody@127.0.0.1:1/none".into(),
            schema: None,
            synchronous_commit: true,
        })
        .await
        {
            Err(e) => e,
            Ok(_) => panic!("connected to port 1"),
        };
        assert!(e.to_string().contains("PostgreSQL"), "{e}");
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let e = match Writer::spawn_sqlite_thread(Path::new("/nonexistent/dir/x.db")) {
            Err(e) => e,
            Ok(_) => panic!("opened a missing file"),
        };
        assert!(e.to_string().contains("SQLite"), "{e}");
    }
}
