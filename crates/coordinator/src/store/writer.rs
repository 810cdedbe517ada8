//! Group commit: the job path's write transactions (submit, claim,
//! settle) go through one task per replica that runs whatever has queued
//! up meanwhile in a single database transaction.
//!
//! On SQLite there is one writer at a time anyway, so many small
//! transactions queue on its lock, each paying a `BEGIN`, a `COMMIT` (a WAL
//! append) and the round trips to the connection's worker thread. On
//! PostgreSQL each commit waits for a WAL flush (`synchronous_commit` on),
//! which bounds a stream of small transactions far below what the
//! statements themselves cost. Batching keeps the semantics (each
//! operation sees every earlier one, in order; its writes commit
//! atomically with the batch) and pays those costs once per batch.
//!
//! An operation answers [`Txn::Commit`] or [`Txn::Rollback`]. A batch
//! commits only when every operation in it wanted to commit; otherwise (or
//! on any error, such as a PostgreSQL deadlock with another replica's
//! batch) the whole batch is rolled back and each operation runs again in a
//! transaction of its own, which then commits or rolls back as that
//! operation asks. Operations are therefore re-runnable closures that only
//! touch the database and the slot their answer goes to.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{mpsc, oneshot};

use super::{Result, StoreError};

/// Most operations in one batch.
const MAX_BATCH: usize = 128;

/// What an operation wants done with its transaction.
pub enum Txn<T> {
    Commit(T),
    /// Nothing of this operation may persist (a guard did not hold).
    Rollback(T),
}

type ErasedOp = Box<dyn for<'c> FnMut(&'c mut AnyConnection) -> BoxFuture<'c, Result<bool>> + Send>;

struct Request {
    op: ErasedOp,
    /// One statement, always committing: alone it runs in autocommit mode
    /// (no `BEGIN`/`COMMIT` round trips).
    single: bool,
    done: oneshot::Sender<Result<()>>,
}

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Writer {
    /// A group-committing writer task on `pool`. It ends when the last
    /// handle is dropped.
    pub fn spawn(pool: AnyPool) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Writer { tx }
    }

    /// Runs `op` in a write transaction and returns its answer once that
    /// transaction has committed (or, for [`Txn::Rollback`], rolled back).
    pub async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut AnyConnection) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
    {
        self.submit(op, false).await
    }

    /// [`Writer::write`] for an operation that is a single statement and
    /// always commits (a claim): batched like the others, but run alone it
    /// needs no explicit transaction.
    pub async fn write_one<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut AnyConnection) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
    {
        self.submit(op, true).await
    }

    async fn submit<T, F>(&self, mut op: F, single: bool) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnMut(&'c mut AnyConnection) -> BoxFuture<'c, Result<Txn<T>>> + Send + 'static,
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
        self.tx
            .send(Request {
                op: erased,
                single,
                done,
            })
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)??;
        let value = out.lock().ok().and_then(|mut s| s.take());
        value.ok_or(StoreError::Closed)
    }
}

async fn run(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut batch: Vec<Request> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if batch.len() > 1 && run_batch(&pool, &mut batch).await {
            for r in batch.drain(..) {
                let _ = r.done.send(Ok(()));
            }
            continue;
        }
        for mut r in batch.drain(..) {
            let res = if r.single {
                run_autocommit(&pool, &mut r.op).await
            } else {
                run_alone(&pool, &mut r.op).await
            };
            let _ = r.done.send(res);
        }
    }
}

/// All of `batch` in one transaction; false (rolled back) unless every
/// operation asked to commit and the commit succeeded.
async fn run_batch(pool: &AnyPool, batch: &mut [Request]) -> bool {
    let Ok(mut tx) = pool.begin().await else {
        return false;
    };
    for r in batch.iter_mut() {
        match (r.op)(&mut tx).await {
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

async fn run_alone(pool: &AnyPool, op: &mut ErasedOp) -> Result<()> {
    let mut tx = pool.begin().await?;
    match op(&mut tx).await {
        Ok(true) => tx.commit().await?,
        Ok(false) => tx.rollback().await?,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(e);
        }
    }
    Ok(())
}

async fn run_autocommit(pool: &AnyPool, op: &mut ErasedOp) -> Result<()> {
    let mut conn = pool.acquire().await?;
    op(&mut conn).await?;
    Ok(())
}
