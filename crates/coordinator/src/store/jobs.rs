//! The job queue: submission with its hold, claims (leases), renewals,
//! results with settlement, cancellation, and the reaper that requeues
//! lapsed leases and fails jobs past their deadline.
//!
//! Each state change is one database transaction guarded by the state it
//! expects (`WHERE state IN (…) AND lease_id = …`); settlement inserts the
//! job's row in `settlements`, whose primary key makes a second settlement
//! impossible even if two replicas race.

use sqlx::Row;

use std::sync::Arc;

use super::ledger::{hold, post, posting, Book, Entry, LEDGER_COLS};
use super::sql::{Args, Columns, Sql, Val};
use super::writer::Txn;
use super::{DbKind, Result, Store, StoreError};
use crate::util::{now_ms, ordered_id, random_id};

/// The guard of every statement that acts on a lease: this job, leased to
/// this island under this lease, still in hand. The island is compared with
/// `IS NOT DISTINCT FROM` (the same as `=` for the non-null ids given here),
/// which no index serves, so the job is found by its primary key. With `=`,
/// a PostgreSQL planner without statistics (a new table, or autovacuum off)
/// prefers the small `jobs_active` index and walks every job the island
/// holds, and every dead entry not yet vacuumed, on each renewal, chunk and
/// settlement.
fn leased(id: &str, island: &str, lease: &str) -> String {
    format!(
        "id = {id} AND island_id IS NOT DISTINCT FROM {island} AND lease_id = {lease} \
         AND state IN ('assigned', 'running')"
    )
}

/// Everything needed to enqueue a job (validated by the API layer).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub account_id: String,
    pub workload_id: i64,
    pub mode: &'static str,
    pub runtime: String,
    pub memory_mb: i64,
    pub max_seconds: i64,
    pub price_per_second: i64,
    pub encryption_key_id: Option<String>,
    /// JSON text: the plain input, or the `{"encrypted": …}` object.
    pub input: String,
    pub recipients: Vec<String>,
    pub hold: i64,
    pub deadline_at: i64,
    /// `(Idempotency-Key, hash of the request)`.
    pub idempotency: Option<(String, String)>,
}

#[derive(Debug, Clone)]
pub enum SubmitOutcome {
    Created(JobRow),
    /// Same Idempotency-Key and same request: the earlier job.
    Replayed(JobRow),
    /// Same Idempotency-Key, different request.
    IdempotencyConflict,
    InsufficientCredits {
        needed: i64,
        balance: i64,
    },
}

/// How the submission's transaction ended.
enum Submitted {
    Created,
    /// The Idempotency-Key is already stored (rolled back).
    KeyTaken,
    /// The balance does not cover the hold (rolled back).
    Short,
}

/// A job row.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    pub account_id: String,
    pub workload_id: i64,
    pub mode: String,
    pub state: String,
    pub runtime: String,
    pub memory_mb: i64,
    pub max_seconds: i64,
    pub price_per_second: i64,
    pub encryption_key_id: Option<String>,
    pub input: String,
    pub output: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub island_id: Option<String>,
    pub lease_id: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub leased_at: Option<i64>,
    pub attempts: i64,
    pub hold_amount: i64,
    pub cost: Option<i64>,
    pub execution_ms: Option<i64>,
    pub deadline_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub recipients: Vec<String>,
    /// Claims only: the island's enclave key, among the job's recipients,
    /// that the claim picked for it (TEE jobs).
    pub claimed_key_id: Option<String>,
}

impl JobRow {
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

const JOB_COLS: &str = "id, account_id, workload_id, mode, state, runtime, memory_mb, max_seconds, \
    price_per_second, encryption_key_id, input, output, error_code, error_message, island_id, lease_id, \
    lease_expires_at, leased_at, attempts, hold_amount, cost, execution_ms, deadline_at, created_at, updated_at";

/// Decodes a row of [`JOB_COLS`] (from either driver).
pub(crate) fn job_from<R: Columns + ?Sized>(r: &R) -> Result<JobRow> {
    Ok(JobRow {
        id: r.text("id")?,
        account_id: r.text("account_id")?,
        workload_id: r.int("workload_id")?,
        mode: r.text("mode")?,
        state: r.text("state")?,
        runtime: r.text("runtime")?,
        memory_mb: r.int("memory_mb")?,
        max_seconds: r.int("max_seconds")?,
        price_per_second: r.int("price_per_second")?,
        encryption_key_id: r.opt_text("encryption_key_id")?,
        input: r.text("input")?,
        output: r.opt_text("output")?,
        error_code: r.opt_text("error_code")?,
        error_message: r.opt_text("error_message")?,
        island_id: r.opt_text("island_id")?,
        lease_id: r.opt_text("lease_id")?,
        lease_expires_at: r.opt_int("lease_expires_at")?,
        leased_at: r.opt_int("leased_at")?,
        attempts: r.int("attempts")?,
        hold_amount: r.int("hold_amount")?,
        cost: r.opt_int("cost")?,
        execution_ms: r.opt_int("execution_ms")?,
        deadline_at: r.int("deadline_at")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        recipients: Vec::new(),
        claimed_key_id: if r.has("claimed_key_id") {
            r.opt_text("claimed_key_id")?
        } else {
            None
        },
    })
}

/// Key ids (`ek_…`, never with a space) from a space-joined list, sorted
/// as [`Store::job`] reports them.
fn recipient_list(list: Option<String>) -> Vec<String> {
    let mut keys: Vec<String> = list
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

/// What a leasing island offers, as the claim query needs it.
#[derive(Debug, Clone)]
pub struct IslandSnapshot {
    pub id: String,
    pub runtimes: Vec<String>,
    pub memory_mb: i64,
    pub capacity: i64,
    pub he_capable: bool,
    /// Whether the island holds at least one routable enclave key.
    pub has_enclave: bool,
}

/// A successful claim.
#[derive(Debug, Clone)]
pub struct Claim {
    pub job: JobRow,
    /// TEE jobs: the island's enclave key the envelope names.
    pub enclave_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompleteOutcome {
    /// Recorded and settled now.
    Settled {
        state: String,
        cost: i64,
        earned: i64,
    },
    /// The same result was already recorded (a retry).
    AlreadySettled {
        state: String,
        cost: i64,
        earned: i64,
    },
    /// The job was cancelled meanwhile; nothing charged.
    Cancelled,
    /// Not this island's lease (expired, requeued or never held).
    LeaseLost,
    NotFound,
}

/// What one reaper pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub requeued: Vec<String>,
    pub failed: Vec<String>,
    pub lease_expiries: u64,
}

/// Failure codes and messages the reaper and lease expiry produce.
pub const NO_ENCLAVE_CODE: &str = "no_enclave_available";
pub const NO_ISLAND_CODE: &str = "no_island_available";

fn no_enclave_message(recipients: &[String], workload_id: i64) -> String {
    format!(
        "none of the enclaves this job was encrypted for ({}) became available before the deadline; \
         fetch GET /api/v1/confidential/enclaves?workload_id={workload_id}, verify them and re-encrypt \
         the input for enclaves that are live, then submit again",
        recipients.join(", ")
    )
}

impl Store {
    /// Enqueues a job, holding its maximum cost. One transaction.
    pub async fn submit_job(&self, j: &NewJob) -> Result<SubmitOutcome> {
        let now = now_ms();
        let id = random_id("job");
        let job = Arc::new(j.clone());
        let (store, jid) = (self.clone(), id.clone());
        let outcome = self
            .writer
            .write(move |conn| {
                let (store, j, id) = (store.clone(), job.clone(), jid.clone());
                Box::pin(async move { store.submit_tx(conn, &j, &id, now).await })
            })
            .await?;
        match outcome {
            Submitted::Created => {}
            Submitted::KeyTaken => {
                let Some((key, hash)) = &j.idempotency else {
                    return Err(StoreError::Corrupt(
                        "idempotency outcome without a key".into(),
                    ));
                };
                let row = sqlx::query(
                    "SELECT request_hash, job_id FROM idempotency_keys WHERE account_id = $1 AND idem_key = $2",
                )
                .bind(&j.account_id)
                .bind(key)
                .fetch_one(&self.pool)
                .await?;
                let stored: String = row.try_get("request_hash")?;
                let job_id: String = row.try_get("job_id")?;
                if &stored != hash {
                    return Ok(SubmitOutcome::IdempotencyConflict);
                }
                return match self.job(&j.account_id, &job_id).await? {
                    Some(job) => Ok(SubmitOutcome::Replayed(job)),
                    None => Ok(SubmitOutcome::IdempotencyConflict),
                };
            }
            Submitted::Short => {
                let balance = self
                    .account(&j.account_id)
                    .await?
                    .map(|a| a.balance)
                    .unwrap_or(0);
                return Ok(SubmitOutcome::InsufficientCredits {
                    needed: j.hold,
                    balance,
                });
            }
        }
        Ok(SubmitOutcome::Created(JobRow {
            id,
            account_id: j.account_id.clone(),
            workload_id: j.workload_id,
            mode: j.mode.to_string(),
            state: "queued".into(),
            runtime: j.runtime.clone(),
            memory_mb: j.memory_mb,
            max_seconds: j.max_seconds,
            price_per_second: j.price_per_second,
            encryption_key_id: j.encryption_key_id.clone(),
            input: j.input.clone(),
            output: None,
            error_code: None,
            error_message: None,
            island_id: None,
            lease_id: None,
            lease_expires_at: None,
            leased_at: None,
            attempts: 0,
            hold_amount: j.hold,
            cost: None,
            execution_ms: None,
            deadline_at: j.deadline_at,
            created_at: now,
            updated_at: now,
            recipients: j.recipients.clone(),
            claimed_key_id: None,
        }))
    }

    /// The submission's writes: idempotency key, job, hold, recipients.
    /// Statement by statement on SQLite; one statement on PostgreSQL
    /// ([`Store::submit_pg`], which also sends the replicas' wake-up).
    async fn submit_tx(
        &self,
        conn: &mut dyn Sql,
        j: &NewJob,
        id: &str,
        now: i64,
    ) -> Result<Txn<Submitted>> {
        if conn.is_postgres() {
            return self.submit_pg(conn, j, id, now).await;
        }
        if let Some((key, hash)) = &j.idempotency {
            let inserted = conn
                .exec(
                    "INSERT INTO idempotency_keys (account_id, idem_key, request_hash, job_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        Val::T(&j.account_id),
                        Val::T(key),
                        Val::T(hash),
                        Val::T(id),
                        Val::I(now),
                    ],
                )
                .await?;
            if inserted == 0 {
                return Ok(Txn::Rollback(Submitted::KeyTaken));
            }
        }
        conn.exec(
            "INSERT INTO jobs (id, account_id, workload_id, mode, state, runtime, memory_mb, max_seconds, price_per_second, \
             encryption_key_id, input, attempts, hold_amount, deadline_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10, 0, $11, $12, $13, $13)",
            &[
                Val::T(id),
                Val::T(&j.account_id),
                Val::I(j.workload_id),
                Val::T(j.mode),
                Val::T(&j.runtime),
                Val::I(j.memory_mb),
                Val::I(j.max_seconds),
                Val::I(j.price_per_second),
                j.encryption_key_id.as_deref().into(),
                Val::T(&j.input),
                Val::I(j.hold),
                Val::I(j.deadline_at),
                Val::I(now),
            ],
        )
        .await?;
        if !hold(&mut *conn, &j.account_id, id, j.hold, now).await? {
            return Ok(Txn::Rollback(Submitted::Short));
        }
        if !j.recipients.is_empty() {
            let mut sql =
                String::from("INSERT INTO job_recipients (job_id, key_id, excluded) VALUES ");
            let mut args = vec![Val::T(id)];
            for (i, r) in j.recipients.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("($1, ${}, 0)", i + 2));
                args.push(Val::T(r));
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            conn.exec(&sql, &args).await?;
        }
        Ok(Txn::Commit(Submitted::Created))
    }

    /// [`Store::submit_tx`] on PostgreSQL: the same writes, guards and
    /// answers in ONE statement (data-modifying `WITH` clauses), since
    /// there every statement is a round trip to the server and the writer
    /// runs them one after another.
    async fn submit_pg(
        &self,
        conn: &mut dyn Sql,
        j: &NewJob,
        id: &str,
        now: i64,
    ) -> Result<Txn<Submitted>> {
        let mut a = Args::default();
        let (p_id, p_acct, p_now) = (a.push(id), a.push(&j.account_id), a.push(now));
        let hold = j.hold.max(0);
        let p_hold = a.push(hold);
        let mut with = Vec::new();
        let (idem_guard, idem_count) = match &j.idempotency {
            Some((key, hash)) => {
                with.push(format!(
                    "i AS (INSERT INTO idempotency_keys (account_id, idem_key, request_hash, job_id, created_at) \
                     VALUES ({p_acct}, {}, {}, {p_id}, {p_now}) ON CONFLICT DO NOTHING RETURNING 1 AS x)",
                    a.push(key.as_str()),
                    a.push(hash.as_str())
                ));
                (" AND EXISTS (SELECT 1 FROM i)", "(SELECT COUNT(*) FROM i)")
            }
            None => ("", "CAST(1 AS BIGINT)"),
        };
        with.push(format!(
            "h AS (UPDATE accounts SET balance = balance - {p_hold}, held = held + {p_hold} \
             WHERE id = {p_acct} AND balance >= {p_hold}{idem_guard} RETURNING id)"
        ));
        with.push(format!(
            "j AS (INSERT INTO jobs (id, account_id, workload_id, mode, state, runtime, memory_mb, max_seconds, \
             price_per_second, encryption_key_id, input, attempts, hold_amount, deadline_at, created_at, updated_at) \
             SELECT {p_id}, {p_acct}, {}, {}, 'queued', {}, {}, {}, {}, {}, {}, 0, {}, {}, {p_now}, {p_now} FROM h RETURNING id)",
            a.push(j.workload_id),
            a.push(j.mode),
            a.push(j.runtime.as_str()),
            a.push(j.memory_mb),
            a.push(j.max_seconds),
            a.push(j.price_per_second),
            a.push(j.encryption_key_id.as_deref()),
            a.push(j.input.as_str()),
            a.push(j.hold),
            a.push(j.deadline_at),
        ));
        if hold > 0 {
            let txn = ordered_id("txn");
            let p_txn = a.push(txn);
            with.push(format!(
                "l AS (INSERT INTO ledger_entries (id, txn_id, book, account_id, job_id, kind, amount, created_at) \
                 SELECT v.* FROM (VALUES ({}, {p_txn}, 'available', {p_acct}, {p_id}, 'hold', {}, {p_now}), \
                 ({}, {p_txn}, 'held', {p_acct}, {p_id}, 'hold', {p_hold}, {p_now})) \
                 AS v(id, txn_id, book, account_id, job_id, kind, amount, created_at) WHERE EXISTS (SELECT 1 FROM j))",
                a.push(ordered_id("le")),
                a.push(-hold),
                a.push(ordered_id("le")),
            ));
        }
        if !j.recipients.is_empty() {
            let keys: Vec<String> = j
                .recipients
                .iter()
                .map(|r| format!("({})", a.push(r.as_str())))
                .collect();
            with.push(format!(
                "r AS (INSERT INTO job_recipients (job_id, key_id, excluded) SELECT j.id, v.k, 0 FROM j \
                 CROSS JOIN (VALUES {}) AS v(k) ON CONFLICT DO NOTHING)",
                keys.join(", ")
            ));
        }
        with.push(format!(
            "n AS MATERIALIZED (SELECT pg_notify({}, {}) FROM j)",
            a.push(self.channel()),
            a.push(self.notify_payload("q", id))
        ));
        let sql = format!(
            "WITH {} SELECT {idem_count}, (SELECT COUNT(*) FROM j), (SELECT COUNT(*) FROM n)",
            with.join(", ")
        );
        let got = conn.ints(&sql, &a.vals).await?;
        Ok(match got.as_slice() {
            [0, _, _] => Txn::Rollback(Submitted::KeyTaken),
            [_, 0, _] => Txn::Rollback(Submitted::Short),
            [_, _, _] => Txn::Commit(Submitted::Created),
            _ => {
                return Err(StoreError::Corrupt(
                    "submission statement answered oddly".into(),
                ))
            }
        })
    }

    /// A job of this account (None for other accounts' jobs), with its
    /// recipients, in ONE query: a job's stream reads it at every state
    /// change, and through sqlx on SQLite every query (and every row it
    /// returns) is a round of thread hand-overs.
    pub async fn job(&self, account_id: &str, id: &str) -> Result<Option<JobRow>> {
        let list = match self.kind {
            DbKind::Postgres => "string_agg(r.key_id, ' ')",
            DbKind::Sqlite => "group_concat(r.key_id, ' ')",
        };
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLS}, (SELECT {list} FROM job_recipients r WHERE r.job_id = jobs.id) AS recipient_list \
             FROM jobs WHERE id = $1 AND account_id = $2"
        ))
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => {
                let mut j = job_from(&r)?;
                j.recipients = recipient_list(r.try_get("recipient_list")?);
                Ok(Some(j))
            }
            None => Ok(None),
        }
    }

    /// A job by id regardless of owner (island side).
    pub async fn job_any(&self, id: &str) -> Result<Option<JobRow>> {
        sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(job_from)
            .transpose()
    }

    async fn recipients(&self, job_id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT key_id FROM job_recipients WHERE job_id = $1 ORDER BY key_id")
                .bind(job_id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("key_id").map_err(Into::into))
            .collect()
    }

    /// Jobs of an account, newest first.
    pub async fn jobs(
        &self,
        account_id: &str,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobRow>> {
        let rows = match state {
            Some(s) => {
                sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE account_id = $1 AND state = $2 ORDER BY created_at DESC, id DESC LIMIT $3"
                ))
                .bind(account_id)
                .bind(s)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {JOB_COLS} FROM jobs WHERE account_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(account_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(job_from).collect()
    }

    /// Claims the oldest queued job this island may run: plain jobs, HE
    /// jobs if it is HE-capable, TEE jobs only when one of its routable
    /// enclave keys is a (not excluded) recipient.
    pub async fn claim_job(
        &self,
        island: &IslandSnapshot,
        lease_ms: i64,
        accept_sim: bool,
    ) -> Result<Option<Claim>> {
        Ok(self
            .claim_jobs(island, lease_ms, accept_sim, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Claims up to `max` of the oldest queued jobs this island may run
    /// (see [`Store::claim_job`]), never more than its free capacity, in
    /// one statement. Oldest first. The jobs share one lease id: a lease is
    /// always named by job id and lease id together.
    pub async fn claim_jobs(
        &self,
        island: &IslandSnapshot,
        lease_ms: i64,
        accept_sim: bool,
        max: i64,
    ) -> Result<Vec<Claim>> {
        if island.runtimes.is_empty() || island.capacity <= 0 || max <= 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let now_secs = now / 1000;
        let lease_id = random_id("lease");
        // $1 island, $2 lease, $3 lease expiry, $4 now, $5 memory, $6 capacity,
        // $7 now_secs, $8 max, $9.. runtimes
        let mut runtimes = String::new();
        for i in 0..island.runtimes.len() {
            if i > 0 {
                runtimes.push_str(", ");
            }
            runtimes.push_str(&format!("${}", i + 9));
        }
        let mut modes = vec!["j.mode = 'plain'".to_string()];
        if island.he_capable {
            modes.push("j.mode = 'he'".into());
        }
        // For a TEE job the claim also returns the island's enclave key it
        // may use (its newest routable recipient), so leasing costs no
        // second query.
        let mut claimed_key = String::new();
        if island.has_enclave {
            let sim = if accept_sim {
                ""
            } else {
                " AND e.tee_type <> 'sim'"
            };
            // This island's routable enclave keys among the recipients of
            // the job row named `job`.
            let routable = |job: &str| {
                format!(
                    "FROM job_recipients r JOIN enclaves e ON e.key_id = r.key_id \
                     WHERE r.job_id = {job}.id AND r.excluded = 0 AND e.island_id = $1 AND e.valid_until > $7{sim}"
                )
            };
            modes.push(format!(
                "(j.mode = 'tee' AND EXISTS (SELECT 1 {}))",
                routable("j")
            ));
            claimed_key = format!(
                ", CASE WHEN jobs.mode = 'tee' THEN (SELECT r.key_id {} ORDER BY e.valid_until DESC LIMIT 1) END \
                 AS claimed_key_id",
                routable("jobs")
            );
        }
        // The picked ids are materialised once: as an `IN (subquery)` with
        // `SKIP LOCKED`, PostgreSQL may rescan the subquery per row and skip
        // the rows this statement already updated, taking more than LIMIT.
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT j.id FROM jobs j WHERE j.state = 'queued' AND j.deadline_at > $4 \
               AND j.memory_mb <= $5 AND j.runtime IN ({runtimes}) \
               AND NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = j.id AND x.island_id = $1) \
               AND ({modes}) ORDER BY j.created_at, j.id \
               LIMIT (SELECT CASE WHEN COUNT(*) >= $6 THEN 0 WHEN $6 - COUNT(*) < $8 THEN $6 - COUNT(*) ELSE $8 END \
                      FROM jobs k WHERE k.island_id = $1 AND k.state IN ('assigned', 'running')){skip}) \
             UPDATE jobs SET state = 'assigned', island_id = $1, lease_id = $2, lease_expires_at = $3, leased_at = $4, \
             attempts = attempts + 1, updated_at = $4 \
             WHERE state = 'queued' AND id IN (SELECT id FROM picked) \
             AND (SELECT COUNT(*) FROM jobs k WHERE k.island_id = $1 AND k.state IN ('assigned', 'running')) < $6 \
             RETURNING {JOB_COLS}{claimed_key}",
            modes = modes.join(" OR "),
            skip = self.skip_locked(),
        );
        let args = ClaimArgs {
            sql,
            island: island.clone(),
            lease_id,
            lease_expires_at: now + lease_ms,
            now,
            now_secs,
            max,
        };
        let args = Arc::new(args);
        let mut jobs = self
            .writer
            .write_one(move |conn| {
                let args = args.clone();
                Box::pin(async move { Ok(Txn::Commit(claim_tx(conn, &args).await?)) })
            })
            .await?;
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(jobs
            .into_iter()
            .map(|mut job| Claim {
                enclave_key_id: job.claimed_key_id.take(),
                job,
            })
            .collect())
    }

    /// Extends a lease; optionally marks the job running. Returns the job
    /// row after the change, or None when the lease is not this island's.
    pub async fn renew_lease(
        &self,
        island_id: &str,
        job_id: &str,
        lease_id: &str,
        lease_ms: i64,
        running: bool,
    ) -> Result<Option<JobRow>> {
        let now = now_ms();
        let state = if running { "'running'" } else { "state" };
        let row = sqlx::query(&format!(
            "UPDATE jobs SET lease_expires_at = $1, updated_at = $2, state = {state} \
             WHERE {} RETURNING {JOB_COLS}",
            leased("$3", "$4", "$5")
        ))
        .bind(now + lease_ms)
        .bind(now)
        .bind(job_id)
        .bind(island_id)
        .bind(lease_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(job_from).transpose()
    }

    /// Appends a streamed output chunk (idempotent per `seq`).
    pub async fn add_chunk(
        &self,
        island_id: &str,
        job_id: &str,
        lease_id: &str,
        seq: i64,
        data: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let ok = sqlx::query(&format!(
            "SELECT id FROM jobs WHERE {}",
            leased("$1", "$2", "$3")
        ))
        .bind(job_id)
        .bind(island_id)
        .bind(lease_id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
        if !ok {
            return Ok(false);
        }
        sqlx::query("INSERT INTO job_chunks (job_id, seq, data, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(job_id)
            .bind(seq)
            .bind(data)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes the stored stream chunks of jobs that ended before
    /// `ended_before_ms` (their result carries the whole output, which a
    /// late follower of the stream gets in its `done` event); at most a
    /// thousand jobs' chunks per call. Returns the chunks deleted.
    pub async fn purge_chunks(&self, ended_before_ms: i64) -> Result<u64> {
        let res = sqlx::query(
            "DELETE FROM job_chunks WHERE job_id IN (SELECT DISTINCT c.job_id FROM job_chunks c \
             JOIN jobs j ON j.id = c.job_id WHERE j.state IN ('succeeded', 'failed', 'cancelled') \
             AND j.updated_at < $1 LIMIT 1000)",
        )
        .bind(ended_before_ms)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected())
    }

    /// Chunks after `after_seq`, in order.
    pub async fn chunks_after(&self, job_id: &str, after_seq: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT seq, data FROM job_chunks WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT 256")
            .bind(job_id)
            .bind(after_seq)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("seq")?, r.try_get("data")?)))
            .collect()
    }

    /// Records an island's result and settles the job, exactly once.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_job(
        &self,
        island_id: &str,
        owner_account_id: &str,
        job_id: &str,
        lease_id: &str,
        succeeded: bool,
        reported_ms: i64,
        output: Option<&str>,
        error: Option<(&str, &str)>,
        island_share_percent: i64,
    ) -> Result<CompleteOutcome> {
        let Some(job) = self.job_any(job_id).await? else {
            return Ok(CompleteOutcome::NotFound);
        };
        self.complete_read_job(
            &job,
            island_id,
            owner_account_id,
            lease_id,
            succeeded,
            reported_ms,
            output,
            error,
            island_share_percent,
        )
        .await
    }

    /// [`Store::complete_job`] for a job row the caller has just read (the
    /// result handler reads it to check the output's shape): saves reading
    /// it again. The write is still guarded by the state and lease, so a
    /// stale row can only lose, never settle twice.
    #[allow(clippy::too_many_arguments)]
    pub async fn complete_read_job(
        &self,
        job: &JobRow,
        island_id: &str,
        owner_account_id: &str,
        lease_id: &str,
        succeeded: bool,
        reported_ms: i64,
        output: Option<&str>,
        error: Option<(&str, &str)>,
        island_share_percent: i64,
    ) -> Result<CompleteOutcome> {
        let job_id = job.id.as_str();
        if job.island_id.as_deref() != Some(island_id) || job.lease_id.as_deref() != Some(lease_id)
        {
            return Ok(CompleteOutcome::LeaseLost);
        }
        if job.is_terminal() {
            return Ok(self.already(job, owner_account_id, island_share_percent));
        }
        let now = now_ms();
        let (cost, exec_ms) = if succeeded {
            bill(job, reported_ms, now)
        } else {
            (
                0,
                reported_ms.clamp(0, job.max_seconds.saturating_mul(1000)),
            )
        };
        let earned = share(cost, island_share_percent);
        let new_state = if succeeded { "succeeded" } else { "failed" };
        let settle = Arc::new(Settle {
            job_id: job_id.to_string(),
            account_id: job.account_id.clone(),
            island_id: island_id.to_string(),
            owner_account_id: owner_account_id.to_string(),
            lease_id: lease_id.to_string(),
            succeeded,
            output: output.map(str::to_string),
            error: error.map(|(c, m)| (c.to_string(), m.to_string())),
            hold: job.hold_amount,
            cost,
            earned,
            exec_ms,
            now,
        });
        let store = self.clone();
        let settled = self
            .writer
            .write(move |conn| {
                let (store, settle) = (store.clone(), settle.clone());
                Box::pin(async move { store.settle_tx(conn, &settle).await })
            })
            .await?;
        if !settled {
            return match self.job_any(job_id).await? {
                Some(j) if j.is_terminal() && j.lease_id.as_deref() == Some(lease_id) => {
                    Ok(self.already(&j, owner_account_id, island_share_percent))
                }
                Some(_) => Ok(CompleteOutcome::LeaseLost),
                None => Ok(CompleteOutcome::NotFound),
            };
        }
        Ok(CompleteOutcome::Settled {
            state: new_state.into(),
            cost,
            earned,
        })
    }

    /// The settlement's writes: the job's final state (guarded by its
    /// lease), the settlement row, the ledger transaction, the island's
    /// counters. Rolled back (false) when the guard does not hold.
    /// Statement by statement on SQLite; one statement on PostgreSQL
    /// ([`Store::settle_pg`]).
    async fn settle_tx(&self, conn: &mut dyn Sql, s: &Settle) -> Result<Txn<bool>> {
        if conn.is_postgres() {
            return self.settle_pg(conn, s).await;
        }
        let new_state = if s.succeeded { "succeeded" } else { "failed" };
        let (code, message) = match &s.error {
            Some((c, m)) => (Val::T(c), Val::T(m)),
            None => (Val::Null, Val::Null),
        };
        let changed = conn
            .exec(
                &format!(
                    "UPDATE jobs SET state = $1, output = $2, error_code = $3, error_message = $4, cost = $5, execution_ms = $6, \
                     lease_expires_at = NULL, updated_at = $7 WHERE {}",
                    leased("$8", "$9", "$10")
                ),
                &[
                    Val::T(new_state),
                    s.output.as_deref().into(),
                    code,
                    message,
                    Val::I(s.cost),
                    Val::I(s.exec_ms),
                    Val::I(s.now),
                    Val::T(&s.job_id),
                    Val::T(&s.island_id),
                    Val::T(&s.lease_id),
                ],
            )
            .await?;
        if changed != 1 || !insert_settlement(conn, &s.job_id, new_state, s.cost, s.now).await? {
            return Ok(Txn::Rollback(false));
        }
        post(conn, &s.entries(), s.now).await?;
        let sql = if s.succeeded {
            "UPDATE islands SET succeeded = succeeded + 1 WHERE id = $1"
        } else {
            "UPDATE islands SET failed = failed + 1 WHERE id = $1"
        };
        conn.exec(sql, &[Val::T(&s.island_id)]).await?;
        Ok(Txn::Commit(true))
    }

    /// [`Store::settle_tx`] on PostgreSQL in one statement (see
    /// [`Store::submit_pg`] for why): every later write depends on the
    /// guarded job update and the settlement insert through `EXISTS`, so
    /// nothing is written unless both happened.
    async fn settle_pg(&self, conn: &mut dyn Sql, s: &Settle) -> Result<Txn<bool>> {
        let new_state = if s.succeeded { "succeeded" } else { "failed" };
        let mut a = Args::default();
        let (code, message) = match &s.error {
            Some((c, m)) => (Val::T(c), Val::T(m)),
            None => (Val::Null, Val::Null),
        };
        let (p_state, p_cost, p_now) = (a.push(new_state), a.push(s.cost), a.push(s.now));
        let p_island = a.push(s.island_id.as_str());
        let mut with = vec![
            format!(
                "u AS (UPDATE jobs SET state = {p_state}, output = {}, error_code = {}, error_message = {}, cost = {p_cost}, \
                 execution_ms = {}, lease_expires_at = NULL, updated_at = {p_now} \
                 WHERE {} RETURNING id)",
                a.push(s.output.as_deref()),
                a.push(code),
                a.push(message),
                a.push(s.exec_ms),
                leased(&a.push(s.job_id.as_str()), &p_island, &a.push(s.lease_id.as_str())),
            ),
            format!(
                "s AS (INSERT INTO settlements (job_id, outcome, cost, created_at) SELECT id, {p_state}, {p_cost}, {p_now} FROM u \
                 ON CONFLICT DO NOTHING RETURNING job_id)"
            ),
        ];
        if let Some(p) = posting(&mut a, &s.entries(), s.now)? {
            with.push(format!(
                "l AS (INSERT INTO ledger_entries ({LEDGER_COLS}) SELECT v.* FROM (VALUES {}) AS v({LEDGER_COLS}) \
                 WHERE EXISTS (SELECT 1 FROM s))",
                p.rows
            ));
            if let Some(update) = p.accounts_update(&mut a) {
                with.push(format!(
                    "b AS (UPDATE accounts {update} AND EXISTS (SELECT 1 FROM s))"
                ));
            }
        }
        let counter = if s.succeeded { "succeeded" } else { "failed" };
        with.push(format!(
            "k AS (UPDATE islands SET {counter} = {counter} + 1 WHERE id = {p_island} AND EXISTS (SELECT 1 FROM s))"
        ));
        with.push(format!(
            "n AS MATERIALIZED (SELECT pg_notify({}, {}) FROM s)",
            a.push(self.channel()),
            a.push(self.notify_payload("u", &s.job_id))
        ));
        let sql = format!(
            "WITH {} SELECT (SELECT COUNT(*) FROM s), (SELECT COUNT(*) FROM n)",
            with.join(", ")
        );
        let got = conn.ints(&sql, &a.vals).await?;
        Ok(match got.first() {
            Some(1) => Txn::Commit(true),
            _ => Txn::Rollback(false),
        })
    }

    fn already(&self, job: &JobRow, _owner: &str, pct: i64) -> CompleteOutcome {
        if job.state == "cancelled" {
            return CompleteOutcome::Cancelled;
        }
        let cost = job.cost.unwrap_or(0);
        CompleteOutcome::AlreadySettled {
            state: job.state.clone(),
            cost,
            earned: share(cost, pct),
        }
    }

    /// Cancels a job of this account and refunds its hold. Returns the job
    /// after the change, or the unchanged job if it had already finished.
    pub async fn cancel_job(
        &self,
        account_id: &str,
        job_id: &str,
    ) -> Result<Option<(JobRow, bool)>> {
        let Some(job) = self.job(account_id, job_id).await? else {
            return Ok(None);
        };
        if job.is_terminal() {
            return Ok(Some((job, false)));
        }
        let done = self
            .fail_and_refund(
                job_id,
                "cancelled",
                "cancelled",
                "cancelled by the client; the hold was refunded in full",
            )
            .await?;
        let job = self.job(account_id, job_id).await?;
        Ok(job.map(|j| (j, done)))
    }

    /// Moves a non-terminal job to `state` (`failed` or `cancelled`) and
    /// refunds its hold. False when it was already terminal.
    pub async fn fail_and_refund(
        &self,
        job_id: &str,
        state: &str,
        code: &str,
        message: &str,
    ) -> Result<bool> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE jobs SET state = $1, error_code = $2, error_message = $3, cost = 0, lease_expires_at = NULL, updated_at = $4 \
             WHERE id = $5 AND state IN ('queued', 'assigned', 'running') RETURNING account_id, hold_amount",
        )
        .bind(state)
        .bind(code)
        .bind(message)
        .bind(now)
        .bind(job_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        if !insert_settlement(&mut self.sql(&mut tx), job_id, state, 0, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        let acct: String = row.try_get("account_id")?;
        let hold: i64 = row.try_get("hold_amount")?;
        post(
            &mut self.sql(&mut tx),
            &[
                Entry::new(Book::Held, Some(&acct), Some(job_id), "refund", -hold),
                Entry::new(Book::Available, Some(&acct), Some(job_id), "refund", hold),
            ],
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Job ids among `ids` leased to this island that it must stop.
    pub async fn stale_jobs(&self, island_id: &str, ids: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for id in ids.iter().take(256) {
            match self.job_any(id).await? {
                Some(j)
                    if j.island_id.as_deref() == Some(island_id)
                        && matches!(j.state.as_str(), "assigned" | "running") => {}
                _ => out.push(id.clone()),
            }
        }
        Ok(out)
    }

    /// One reaper pass: requeue jobs whose lease lapsed (excluding the
    /// island that lost it), fail those out of attempts or recipients, and
    /// fail queued jobs past their deadline. Safe to run on every replica.
    pub async fn reap(&self, max_attempts: i64) -> Result<ReapReport> {
        let now = now_ms();
        let mut report = ReapReport::default();
        let expired = sqlx::query(
            "SELECT id, island_id, lease_id, mode, attempts, workload_id FROM jobs \
             WHERE state IN ('assigned', 'running') AND lease_expires_at < $1 LIMIT 200",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in expired {
            let id: String = r.try_get("id")?;
            let island: Option<String> = r.try_get("island_id")?;
            let lease: Option<String> = r.try_get("lease_id")?;
            let mode: String = r.try_get("mode")?;
            let attempts: i64 = r.try_get("attempts")?;
            let workload_id: i64 = r.try_get("workload_id")?;
            let (Some(island), Some(lease)) = (island, lease) else {
                continue;
            };
            let mut tx = self.begin().await?;
            let res = sqlx::query(
                "UPDATE jobs SET state = 'queued', island_id = NULL, lease_id = NULL, lease_expires_at = NULL, \
                 leased_at = NULL, updated_at = $1 WHERE id = $2 AND lease_id = $3 AND state IN ('assigned', 'running')",
            )
            .bind(now)
            .bind(&id)
            .bind(&lease)
            .execute(&mut *tx)
            .await?;
            if res.rows_affected() != 1 {
                tx.rollback().await?;
                continue;
            }
            sqlx::query("INSERT INTO job_exclusions (job_id, island_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&id)
                .bind(&island)
                .execute(&mut *tx)
                .await?;
            drop_chunks(&mut tx, &id).await?;
            sqlx::query(
                "UPDATE job_recipients SET excluded = 1 WHERE job_id = $1 AND key_id IN (SELECT key_id FROM enclaves WHERE island_id = $2)",
            )
            .bind(&id)
            .bind(&island)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE islands SET expired = expired + 1 WHERE id = $1")
                .bind(&island)
                .execute(&mut *tx)
                .await?;
            let remaining: i64 = if mode == "tee" {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM job_recipients WHERE job_id = $1 AND excluded = 0",
                )
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?
            } else {
                1
            };
            tx.commit().await?;
            report.lease_expiries += 1;
            tracing::info!(job_id = %id, island_id = %island, "lease lapsed; job requeued");
            if remaining == 0 {
                let recips = self.recipients(&id).await?;
                if self
                    .fail_and_refund(
                        &id,
                        "failed",
                        NO_ENCLAVE_CODE,
                        &no_enclave_message(&recips, workload_id),
                    )
                    .await?
                {
                    report.failed.push(id);
                }
            } else if attempts >= max_attempts {
                if self
                    .fail_and_refund(
                        &id,
                        "failed",
                        "lease_expired",
                        &format!("the job's lease lapsed {attempts} times (islands went away); the hold was refunded, submit it again"),
                    )
                    .await?
                {
                    report.failed.push(id);
                }
            } else {
                report.requeued.push(id);
            }
        }
        let overdue = sqlx::query(
            "SELECT id, mode, workload_id FROM jobs WHERE state = 'queued' AND deadline_at <= $1 LIMIT 200",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        for r in overdue {
            let id: String = r.try_get("id")?;
            let mode: String = r.try_get("mode")?;
            let workload_id: i64 = r.try_get("workload_id")?;
            let (code, msg) = if mode == "tee" {
                (
                    NO_ENCLAVE_CODE,
                    no_enclave_message(&self.recipients(&id).await?, workload_id),
                )
            } else {
                (
                    NO_ISLAND_CODE,
                    format!(
                        "no island able to run workload {workload_id} leased the job before its deadline; the hold was refunded"
                    ),
                )
            };
            if self.fail_and_refund(&id, "failed", code, &msg).await? {
                report.failed.push(id);
            }
        }
        Ok(report)
    }

    /// Job counts per state.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// Requirements of a queued job for the dispatcher's wake-up choice.
    pub async fn active_leases(&self, island_id: &str) -> Result<i64> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE island_id = $1 AND state IN ('assigned', 'running')")
            .bind(island_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("n")?)
    }
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Back in the queue for the other recipients / islands.
    Requeued,
    /// No recipient (or attempt) is left: failed and refunded.
    Failed,
    /// The job is not leased to this island (unknown, or another's).
    NotYours,
    /// This island held it once, but not under this lease any more.
    LeaseLost,
}

impl Store {
    /// An island gives a leased job back unfinished: exactly what a lapsed
    /// lease does (requeue excluding this island and its enclave keys, fail
    /// with the re-encrypt error when no recipient is left, fail after
    /// `max_attempts`), but now, and without counting a lease expiry.
    /// Nothing is charged.
    pub async fn release_job(
        &self,
        island_id: &str,
        job_id: &str,
        lease_id: &str,
        max_attempts: i64,
    ) -> Result<ReleaseOutcome> {
        let Some(job) = self.job_any(job_id).await? else {
            return Ok(ReleaseOutcome::NotYours);
        };
        if job.island_id.as_deref() != Some(island_id) {
            return Ok(ReleaseOutcome::NotYours);
        }
        let now = now_ms();
        let mut tx = self.begin().await?;
        let res = sqlx::query(&format!(
            "UPDATE jobs SET state = 'queued', island_id = NULL, lease_id = NULL, lease_expires_at = NULL, \
             leased_at = NULL, updated_at = $1 WHERE {}",
            leased("$2", "$3", "$4")
        ))
        .bind(now)
        .bind(job_id)
        .bind(island_id)
        .bind(lease_id)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(ReleaseOutcome::LeaseLost);
        }
        sqlx::query(
            "INSERT INTO job_exclusions (job_id, island_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(job_id)
        .bind(island_id)
        .execute(&mut *tx)
        .await?;
        drop_chunks(&mut tx, job_id).await?;
        sqlx::query(
            "UPDATE job_recipients SET excluded = 1 WHERE job_id = $1 AND key_id IN (SELECT key_id FROM enclaves WHERE island_id = $2)",
        )
        .bind(job_id)
        .bind(island_id)
        .execute(&mut *tx)
        .await?;
        let remaining: i64 = if job.mode == "tee" {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM job_recipients WHERE job_id = $1 AND excluded = 0",
            )
            .bind(job_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?
        } else {
            1
        };
        tx.commit().await?;
        if remaining == 0 {
            let recips = self.recipients(job_id).await?;
            self.fail_and_refund(
                job_id,
                "failed",
                NO_ENCLAVE_CODE,
                &no_enclave_message(&recips, job.workload_id),
            )
            .await?;
            return Ok(ReleaseOutcome::Failed);
        }
        if job.attempts >= max_attempts {
            self.fail_and_refund(
                job_id,
                "failed",
                "lease_expired",
                &format!("the job was given back by {} islands (they went away or could not run it); the hold was refunded, submit it again", job.attempts),
            )
            .await?;
            return Ok(ReleaseOutcome::Failed);
        }
        Ok(ReleaseOutcome::Requeued)
    }
}

/// Cost of a successful job: the smaller of the island's measurement and
/// the time since the lease, capped at `max_seconds`, at the job's rate,
/// rounded up to whole credits, never above the hold.
pub fn bill(job: &JobRow, reported_ms: i64, now: i64) -> (i64, i64) {
    let wall = job.leased_at.map(|t| (now - t).max(0)).unwrap_or(0);
    let ms = reported_ms
        .max(0)
        .min(wall)
        .min(job.max_seconds.saturating_mul(1000));
    let cost = (ms.saturating_mul(job.price_per_second) + 999) / 1000;
    (cost.min(job.hold_amount), ms)
}

/// The island owner's share of a charge (rounded down).
pub fn share(cost: i64, percent: i64) -> i64 {
    cost.saturating_mul(percent.clamp(0, 100)) / 100
}

/// Everything a settlement writes, owned (the write may run again).
struct Settle {
    job_id: String,
    account_id: String,
    island_id: String,
    owner_account_id: String,
    lease_id: String,
    succeeded: bool,
    output: Option<String>,
    error: Option<(String, String)>,
    hold: i64,
    cost: i64,
    earned: i64,
    exec_ms: i64,
    now: i64,
}

impl Settle {
    /// The settlement's ledger transaction: the hold is released, the cost
    /// charged, the island owner's share earned and the rest the
    /// platform's (on failure: all refunded).
    fn entries(&self) -> [Entry<'_>; 4] {
        let acct = Some(self.account_id.as_str());
        let jid = Some(self.job_id.as_str());
        let ok = self.succeeded;
        [
            Entry::new(
                Book::Held,
                acct,
                jid,
                if ok { "charge" } else { "refund" },
                -self.hold,
            ),
            Entry::new(
                Book::Available,
                acct,
                jid,
                if ok { "release" } else { "refund" },
                self.hold - self.cost,
            ),
            Entry::new(
                Book::Available,
                Some(&self.owner_account_id),
                jid,
                "earning",
                self.earned,
            ),
            Entry::new(
                Book::Platform,
                None,
                jid,
                "platform_fee",
                self.cost - self.earned,
            ),
        ]
    }
}

/// A prepared claim: the statement and its arguments.
struct ClaimArgs {
    sql: String,
    island: IslandSnapshot,
    lease_id: String,
    lease_expires_at: i64,
    now: i64,
    now_secs: i64,
    max: i64,
}

async fn claim_tx(conn: &mut dyn Sql, a: &ClaimArgs) -> Result<Vec<JobRow>> {
    let mut args = vec![
        Val::T(&a.island.id),
        Val::T(&a.lease_id),
        Val::I(a.lease_expires_at),
        Val::I(a.now),
        Val::I(a.island.memory_mb),
        Val::I(a.island.capacity),
        Val::I(a.now_secs),
        Val::I(a.max),
    ];
    args.extend(a.island.runtimes.iter().map(Val::from));
    conn.jobs(&a.sql, &args).await
}

/// Deletes a requeued job's streamed chunks: the next attempt streams its
/// own response from `seq` 0, which the old chunks (kept by `ON CONFLICT DO
/// NOTHING`) would otherwise shadow.
async fn drop_chunks(conn: &mut sqlx::AnyConnection, job_id: &str) -> Result<()> {
    sqlx::query("DELETE FROM job_chunks WHERE job_id = $1")
        .bind(job_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The job's one settlement row; false when it already has one.
async fn insert_settlement(
    conn: &mut dyn Sql,
    job_id: &str,
    outcome: &str,
    cost: i64,
    now: i64,
) -> Result<bool> {
    let inserted = conn
        .exec(
            "INSERT INTO settlements (job_id, outcome, cost, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[Val::T(job_id), Val::T(outcome), Val::I(cost), Val::I(now)],
        )
        .await?;
    Ok(inserted == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(price: i64, max_s: i64, hold: i64, leased_at: i64) -> JobRow {
        JobRow {
            id: "job_x".into(),
            account_id: "a".into(),
            workload_id: 1,
            mode: "plain".into(),
            state: "running".into(),
            runtime: "echo".into(),
            memory_mb: 1,
            max_seconds: max_s,
            price_per_second: price,
            encryption_key_id: None,
            input: "{}".into(),
            output: None,
            error_code: None,
            error_message: None,
            island_id: None,
            lease_id: None,
            lease_expires_at: None,
            leased_at: Some(leased_at),
            attempts: 1,
            hold_amount: hold,
            cost: None,
            execution_ms: None,
            deadline_at: 0,
            created_at: 0,
            updated_at: 0,
            recipients: vec![],
            claimed_key_id: None,
        }
    }

    #[test]
    fn billing_uses_the_smaller_measurement_and_caps() {
        let j = job(10, 5, 50, 1_000);
        // island says 1.5 s, wall clock 3 s → 1.5 s → 15 credits
        assert_eq!(bill(&j, 1_500, 4_000), (15, 1_500));
        // island claims 100 s but only 2 s passed → 20 credits
        assert_eq!(bill(&j, 100_000, 3_000), (20, 2_000));
        // capped at max_seconds
        assert_eq!(bill(&j, 100_000, 1_000_000), (50, 5_000));
        // a partial credit rounds up, negative reports bill nothing
        assert_eq!(bill(&j, 1, 10_000), (1, 1));
        assert_eq!(bill(&j, -5, 10_000), (0, 0));
    }

    async fn plan(store: &Store, sql: &str) -> String {
        let rows = sqlx::query(&format!("EXPLAIN {sql}"))
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// On a new PostgreSQL table (no statistics, as with autovacuum off)
    /// a lease-guarded statement finds its job by primary key, and an
    /// island's capacity count reads only its jobs in hand (`jobs_active`):
    /// the planner once chose an index over the island's whole history for
    /// both, which made each settlement and claim slower with every job.
    #[tokio::test]
    async fn lease_lookups_and_capacity_counts_do_not_walk_an_islands_history() {
        let url = std::env::var("ARCHIPELAGO_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!(
            "t_{}",
            random_id("p")
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "")
        );
        let cfg = crate::store::DbConfig {
            url: url.clone(),
            schema: Some(schema.clone()),
            max_connections: 2,
            synchronous_commit: false,
        };
        let store = Store::connect(&cfg)
            .await
            .expect("PostgreSQL for the store test (scripts/ensure-postgres.sh)");
        let guard = plan(
            &store,
            &format!("SELECT id FROM jobs WHERE {}", leased("'j'", "'i'", "'l'")),
        )
        .await;
        let count = plan(
            &store,
            "SELECT COUNT(*) FROM jobs k WHERE k.island_id = 'i' AND k.state IN ('assigned', 'running')",
        )
        .await;
        Store::drop_schema(&url, &schema).await.unwrap();
        assert!(guard.contains("jobs_pkey"), "{guard}");
        assert!(count.contains("jobs_active"), "{count}");
    }

    #[test]
    fn share_rounds_down_and_clamps() {
        assert_eq!(share(100, 85), 85);
        assert_eq!(share(7, 85), 5);
        assert_eq!(share(7, 150), 7);
        assert_eq!(share(7, -1), 0);
    }
}
