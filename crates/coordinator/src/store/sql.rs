//! The job path's statements, written once for three ways of running them.
//!
//! Submission, claim and settlement (and the ledger postings they make)
//! run inside the group-commit writer ([`super::writer`]). On a SQLite file
//! it drives a synchronous `rusqlite` connection on a thread of its own
//! ([`LiteSql`]): sqlx runs SQLite on a worker thread and hands every
//! statement over a channel and back, two thread wake-ups per statement,
//! which profiles showed to be most of the coordinator's CPU. On
//! PostgreSQL it drives a `tokio-postgres` connection that pipelines
//! ([`PgSql`]); an in-memory SQLite keeps sqlx ([`AnySql`]), as do the
//! store's other transactions that post to the ledger.
//!
//! So the operations take `&mut dyn Sql`: the same SQL text (`$n`
//! placeholders, which SQLite reads as named parameters `$1`, `$2`, …) and
//! the same guards whichever runs them. [`Sql::exec`] answers rows
//! affected, [`Sql::jobs`] job rows, [`Sql::ints`] one row of counts.

use futures_util::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::Column as _;
use sqlx::{AnyConnection, Row};

use super::{Result, StoreError};

/// A statement argument. Text NULLs only: no operation binds a NULL of
/// another type (PostgreSQL would refuse a text NULL for an integer). No
/// `Debug`: a value may be a job's input or output.
pub(crate) enum Val<'a> {
    I(i64),
    T(&'a str),
    /// Text made for this statement (a fresh id, say).
    Owned(String),
    Null,
}

/// Arguments of a statement built in pieces: each [`Args::push`] answers
/// the placeholder (`$n`) its value gets, so fragments can be combined
/// without counting by hand.
#[derive(Default)]
pub(crate) struct Args<'a> {
    pub vals: Vec<Val<'a>>,
}

impl<'a> Args<'a> {
    pub fn push(&mut self, v: impl Into<Val<'a>>) -> String {
        self.vals.push(v.into());
        format!("${}", self.vals.len())
    }
}

impl From<String> for Val<'_> {
    fn from(v: String) -> Self {
        Val::Owned(v)
    }
}

impl<'a> From<i64> for Val<'a> {
    fn from(v: i64) -> Self {
        Val::I(v)
    }
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::T(v)
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::T(v)
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Val::Null, Val::T)
    }
}

/// A connection (usually inside a transaction) the job path writes through.
pub(crate) trait Sql: Send {
    /// Runs one statement; the number of rows it changed.
    fn exec<'a>(&'a mut self, sql: &'a str, args: &'a [Val<'a>]) -> BoxFuture<'a, Result<u64>>;

    /// Runs one statement that returns job rows (`RETURNING` the job
    /// columns); the rows, decoded.
    fn jobs<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<super::JobRow>>>;

    /// Runs one statement returning one row of integers (counts); its
    /// columns in order.
    fn ints<'a>(&'a mut self, sql: &'a str, args: &'a [Val<'a>])
        -> BoxFuture<'a, Result<Vec<i64>>>;

    /// Which database this is (PostgreSQL-only statements are skipped on
    /// SQLite).
    fn is_postgres(&self) -> bool;
}

/// Typed access to a row's columns by name, for decoders shared by both
/// drivers.
pub(crate) trait Columns {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    /// Whether the row has this column (for decoders of optional extras).
    fn has(&self, col: &str) -> bool;
}

/// [`Columns`] for a driver row type with a `try_get(column name)`.
macro_rules! columns_by_try_get {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, col: &str) -> Result<i64> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                Ok(self.try_get(col)?)
            }
            fn text(&self, col: &str) -> Result<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn has(&self, col: &str) -> bool {
                self.columns().iter().any(|c| c.name() == col)
            }
        }
    };
}

columns_by_try_get!(AnyRow);
columns_by_try_get!(tokio_postgres::Row);

/// [`Sql`] over a sqlx connection (PostgreSQL, or SQLite through sqlx).
pub(crate) struct AnySql<'c> {
    pub conn: &'c mut AnyConnection,
    pub postgres: bool,
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Val<'q>],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for a in args {
        q = match a {
            Val::I(v) => q.bind(*v),
            Val::T(v) => q.bind(*v),
            Val::Owned(v) => q.bind(v.as_str()),
            Val::Null => q.bind(None::<String>),
        };
    }
    q
}

impl Sql for AnySql<'_> {
    fn exec<'a>(&'a mut self, sql: &'a str, args: &'a [Val<'a>]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let res = bind_all(sqlx::query(sql), args)
                .execute(&mut *self.conn)
                .await?;
            Ok(res.rows_affected())
        })
    }

    fn jobs<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<super::JobRow>>> {
        Box::pin(async move {
            bind_all(sqlx::query(sql), args)
                .fetch_all(&mut *self.conn)
                .await?
                .iter()
                .map(super::jobs::job_from)
                .collect()
        })
    }

    fn ints<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            let row = bind_all(sqlx::query(sql), args)
                .fetch_one(&mut *self.conn)
                .await?;
            (0..row.len())
                .map(|i| Ok(row.try_get::<i64, _>(i)?))
                .collect()
        })
    }

    fn is_postgres(&self) -> bool {
        self.postgres
    }
}

/// [`Sql`] over the PostgreSQL writer's own `tokio-postgres` connection,
/// which pipelines: statements of several operations polled together go
/// out back to back and the server answers them in order, so a batch costs
/// about one round trip instead of one per statement. A statement runs
/// prepared once the writer has prepared it, and until then typed and
/// unnamed (`query_typed`: parse, bind and execute in one message).
pub(crate) struct PgSql<'c> {
    pub client: &'c tokio_postgres::Client,
    /// Statements this handle may still send; a batched operation gets one,
    /// since a second statement would go out after later operations'
    /// statements and so run out of order.
    pub budget: Option<u32>,
    /// Prepared statements by SQL text (the server plans each once). A
    /// statement not prepared yet is sent unnamed (`query_typed`, which
    /// keeps its place in the pipeline) and noted in `unprepared`, for the
    /// writer to prepare between batches.
    pub prepared: &'c PgStatements,
    pub unprepared: Vec<(String, Vec<tokio_postgres::types::Type>)>,
}

/// The PostgreSQL writer's prepared statements, by SQL text.
#[derive(Default)]
pub(crate) struct PgStatements {
    map: std::collections::HashMap<String, tokio_postgres::Statement>,
}

/// Distinct statements kept prepared (the job path has a few dozen).
const MAX_PREPARED: usize = 256;

impl PgStatements {
    pub fn get(&self, sql: &str) -> Option<&tokio_postgres::Statement> {
        self.map.get(sql)
    }

    /// Prepares `sql` with its parameter types (one round trip).
    pub async fn prepare(
        &mut self,
        client: &tokio_postgres::Client,
        sql: String,
        types: &[tokio_postgres::types::Type],
    ) -> Result<()> {
        if self.map.len() >= MAX_PREPARED {
            self.map.clear();
        }
        let stmt = client.prepare_typed(&sql, types).await?;
        self.map.insert(sql, stmt);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

const NULL_TEXT: Option<&str> = None;

fn pg_params<'a>(
    args: &'a [Val<'a>],
) -> Vec<(
    &'a (dyn tokio_postgres::types::ToSql + Sync),
    tokio_postgres::types::Type,
)> {
    use tokio_postgres::types::Type;
    args.iter()
        .map(
            |a| -> (&'a (dyn tokio_postgres::types::ToSql + Sync), Type) {
                match a {
                    Val::I(v) => (v, Type::INT8),
                    Val::T(v) => (v, Type::TEXT),
                    Val::Owned(v) => (v, Type::TEXT),
                    Val::Null => (&NULL_TEXT, Type::TEXT),
                }
            },
        )
        .collect()
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Postgres(e.to_string())
    }
}

impl PgSql<'_> {
    /// Runs `sql`: prepared if it is, else unnamed (and noted).
    async fn run(&mut self, sql: &str, args: &[Val<'_>]) -> Result<tokio_postgres::RowStream> {
        self.spend()?;
        let params = pg_params(args);
        if let Some(stmt) = self.prepared.get(sql) {
            let values = params.iter().map(|(v, _)| *v);
            return Ok(self.client.query_raw(stmt, values).await?);
        }
        if !self.unprepared.iter().any(|(s, _)| s == sql) {
            self.unprepared.push((
                sql.to_string(),
                params.iter().map(|(_, t)| t.clone()).collect(),
            ));
        }
        Ok(self.client.query_typed_raw(sql, params).await?)
    }

    async fn rows(&mut self, sql: &str, args: &[Val<'_>]) -> Result<Vec<tokio_postgres::Row>> {
        let stream = self.run(sql, args).await?;
        Ok(futures_util::TryStreamExt::try_collect(stream).await?)
    }

    fn spend(&mut self) -> Result<()> {
        match &mut self.budget {
            None => Ok(()),
            Some(0) => Err(StoreError::Postgres(
                "a batched writer operation sent a second statement; on PostgreSQL each must be one statement (it is re-run alone)".into(),
            )),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
        }
    }
}

impl Sql for PgSql<'_> {
    fn exec<'a>(&'a mut self, sql: &'a str, args: &'a [Val<'a>]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let stream = self.run(sql, args).await?;
            let mut stream = std::pin::pin!(stream);
            while futures_util::TryStreamExt::try_next(&mut stream)
                .await?
                .is_some()
            {}
            Ok(stream.rows_affected().unwrap_or(0))
        })
    }

    fn jobs<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<super::JobRow>>> {
        Box::pin(async move {
            self.rows(sql, args)
                .await?
                .iter()
                .map(super::jobs::job_from)
                .collect()
        })
    }

    fn ints<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            let rows = self.rows(sql, args).await?;
            let row = rows
                .first()
                .ok_or_else(|| StoreError::Postgres("statement returned no row".into()))?;
            (0..row.len())
                .map(|i| Ok(row.try_get::<_, i64>(i)?))
                .collect()
        })
    }

    fn is_postgres(&self) -> bool {
        true
    }
}

/// [`Sql`] over a synchronous SQLite connection: its futures are ready at
/// once (the writer thread polls each exactly once).
pub(crate) struct LiteSql<'c> {
    /// `&mut`: a `Connection` is `Send` but not `Sync`.
    pub conn: &'c mut rusqlite::Connection,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

/// Binds `$n` (or `?n`) parameters of `stmt` from `args` by number, as
/// sqlx does, so one SQL text serves both drivers.
fn bind_lite(stmt: &mut rusqlite::Statement<'_>, args: &[Val<'_>]) -> Result<()> {
    for idx in 1..=stmt.parameter_count() {
        let n = stmt
            .parameter_name(idx)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .and_then(|num| num.parse::<usize>().ok())
            .unwrap_or(idx);
        let Some(v) = n.checked_sub(1).and_then(|i| args.get(i)) else {
            return Err(StoreError::Sqlite(format!(
                "statement parameter ${n} has no argument ({} given)",
                args.len()
            )));
        };
        match v {
            Val::I(x) => stmt.raw_bind_parameter(idx, *x)?,
            Val::T(x) => stmt.raw_bind_parameter(idx, *x)?,
            Val::Owned(x) => stmt.raw_bind_parameter(idx, x.as_str())?,
            Val::Null => stmt.raw_bind_parameter(idx, rusqlite::types::Null)?,
        }
    }
    Ok(())
}

struct LiteRow<'r, 's> {
    row: &'r rusqlite::Row<'s>,
}

impl Columns for LiteRow<'_, '_> {
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.row.get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.row.get(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.row.get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.row.get(col)?)
    }
    fn has(&self, col: &str) -> bool {
        self.row.as_ref().column_index(col).is_ok()
    }
}

impl LiteSql<'_> {
    fn exec_now(&self, sql: &str, args: &[Val<'_>]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        bind_lite(&mut stmt, args)?;
        Ok(stmt.raw_execute()? as u64)
    }

    fn jobs_now(&self, sql: &str, args: &[Val<'_>]) -> Result<Vec<super::JobRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        bind_lite(&mut stmt, args)?;
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(super::jobs::job_from(&LiteRow { row })?);
        }
        Ok(out)
    }

    fn ints_now(&self, sql: &str, args: &[Val<'_>]) -> Result<Vec<i64>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        bind_lite(&mut stmt, args)?;
        let n = stmt.column_count();
        let mut rows = stmt.raw_query();
        let Some(row) = rows.next()? else {
            return Err(StoreError::Sqlite("statement returned no row".into()));
        };
        (0..n).map(|i| Ok(row.get::<_, i64>(i)?)).collect()
    }
}

impl Sql for LiteSql<'_> {
    fn exec<'a>(&'a mut self, sql: &'a str, args: &'a [Val<'a>]) -> BoxFuture<'a, Result<u64>> {
        let r = self.exec_now(sql, args);
        Box::pin(std::future::ready(r))
    }

    fn jobs<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<super::JobRow>>> {
        let r = self.jobs_now(sql, args);
        Box::pin(std::future::ready(r))
    }

    fn ints<'a>(
        &'a mut self,
        sql: &'a str,
        args: &'a [Val<'a>],
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        let r = self.ints_now(sql, args);
        Box::pin(std::future::ready(r))
    }

    fn is_postgres(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite() -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (a INTEGER, b TEXT)")
            .unwrap();
        c
    }

    #[test]
    fn parameters_bind_by_number_in_any_order() {
        let mut c = lite();
        let s = LiteSql { conn: &mut c };
        // $2 appears before $1, and $1 twice.
        let n = s
            .exec_now(
                "INSERT INTO t (b, a) SELECT $2, $1 UNION ALL SELECT $2 || 'x', $1 + 1",
                &[Val::I(7), Val::T("seven")],
            )
            .unwrap();
        assert_eq!(n, 2);
        let (a, b): (i64, String) = c
            .query_row("SELECT a, b FROM t WHERE a = 8", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((a, b.as_str()), (8, "sevenx"));
    }

    #[test]
    fn a_missing_argument_is_an_error_not_a_panic() {
        let mut c = lite();
        let s = LiteSql { conn: &mut c };
        let e = s
            .exec_now("INSERT INTO t (a, b) VALUES ($1, $3)", &[Val::I(1)])
            .unwrap_err();
        assert!(e.to_string().contains("$3"), "{e}");
        let e = s
            .exec_now("INSERT INTO t (a, b) VALUES ($1, $2)", &[Val::I(1)])
            .unwrap_err();
        assert!(e.to_string().contains("$2"), "{e}");
    }

    #[test]
    fn args_number_their_placeholders() {
        let mut a = Args::default();
        assert_eq!(a.push(5i64), "$1");
        assert_eq!(a.push("x"), "$2");
        assert_eq!(a.push(String::from("y")), "$3");
        let mut c = lite();
        let s = LiteSql { conn: &mut c };
        assert_eq!(
            s.ints_now("SELECT $1 + 1, length($2 || $3)", &a.vals)
                .unwrap(),
            vec![6, 2]
        );
    }

    #[test]
    fn null_binds_as_null() {
        let mut c = lite();
        let s = LiteSql { conn: &mut c };
        s.exec_now(
            "INSERT INTO t (a, b) VALUES ($1, $2)",
            &[Val::I(1), Val::Null],
        )
        .unwrap();
        let b: Option<String> = c.query_row("SELECT b FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(b, None);
    }
}
