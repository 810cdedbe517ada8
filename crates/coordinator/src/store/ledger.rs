//! The append-only double-entry ledger.
//!
//! Every movement of credits is one ledger transaction whose entries sum to
//! zero. Books: each account's `available` and `held`, the `platform`'s
//! earnings and `issuance` (where granted credits come from, so it goes
//! negative by exactly the credits granted). `accounts.balance` and
//! `accounts.held` are projections of the two account books, updated in the
//! same database transaction; the platform and issuance books are not
//! projected (they would be one hot row for every job) and are summed on
//! demand.

use sqlx::Row;

use super::sql::{Args, Sql, Val};

use super::{Result, Store, StoreError};
use crate::util::ordered_id;

/// A ledger book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Book {
    Available,
    Held,
    Platform,
    Issuance,
}

impl Book {
    pub fn as_str(self) -> &'static str {
        match self {
            Book::Available => "available",
            Book::Held => "held",
            Book::Platform => "platform",
            Book::Issuance => "issuance",
        }
    }
}

/// One entry of a ledger transaction.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub book: Book,
    pub account_id: Option<&'a str>,
    pub job_id: Option<&'a str>,
    pub kind: &'static str,
    pub amount: i64,
}

impl<'a> Entry<'a> {
    pub fn new(
        book: Book,
        account_id: Option<&'a str>,
        job_id: Option<&'a str>,
        kind: &'static str,
        amount: i64,
    ) -> Entry<'a> {
        Entry {
            book,
            account_id,
            job_id,
            kind,
            amount,
        }
    }
}

/// A ledger transaction as SQL fragments: the `VALUES` rows of its
/// entries, and (from [`Posting::accounts_update`]) the `SET`/`WHERE` of
/// the one statement that moves the account projections. Placeholders are
/// numbered in the caller's [`Args`], so the fragments can stand alone
/// ([`post`]) or inside a larger statement (a PostgreSQL settlement).
pub(crate) struct Posting<'a> {
    /// `(…), (…)` rows for [`LEDGER_COLS`].
    pub rows: String,
    /// Per account: change to its available balance and to held.
    per_account: Vec<(&'a str, i64, i64)>,
}

pub(crate) const LEDGER_COLS: &str =
    "id, txn_id, book, account_id, job_id, kind, amount, created_at";

/// Builds a balanced ledger transaction; None when every entry is zero.
/// Zero-amount entries are skipped; an unbalanced set is refused.
pub(crate) fn posting<'a>(
    args: &mut Args<'a>,
    entries: &[Entry<'a>],
    now: i64,
) -> Result<Option<Posting<'a>>> {
    let sum: i64 = entries.iter().map(|e| e.amount).sum();
    if sum != 0 {
        return Err(StoreError::Unbalanced(sum));
    }
    let entries: Vec<&Entry<'a>> = entries.iter().filter(|e| e.amount != 0).collect();
    if entries.is_empty() {
        return Ok(None);
    }
    let txn_id = ordered_id("txn");
    let mut values = Vec::with_capacity(entries.len());
    for e in &entries {
        values.push(format!(
            "({}, {}, {}, {}, {}, {}, {}, {})",
            args.push(ordered_id("le")),
            args.push(txn_id.clone()),
            args.push(e.book.as_str()),
            args.push(e.account_id),
            args.push(e.job_id),
            args.push(e.kind),
            args.push(e.amount),
            args.push(now),
        ));
    }
    let mut per_account: Vec<(&'a str, i64, i64)> = Vec::new();
    for e in &entries {
        let Some(acct) = e.account_id else { continue };
        let (da, dh) = match e.book {
            Book::Available => (e.amount, 0),
            Book::Held => (0, e.amount),
            _ => continue,
        };
        match per_account.iter_mut().find(|(a, _, _)| *a == acct) {
            Some(slot) => {
                slot.1 += da;
                slot.2 += dh;
            }
            None => per_account.push((acct, da, dh)),
        }
    }
    per_account.retain(|(_, da, dh)| *da != 0 || *dh != 0);
    Ok(Some(Posting {
        rows: values.join(", "),
        per_account,
    }))
}

impl<'a> Posting<'a> {
    /// `SET … WHERE id IN (…)` for one `UPDATE accounts` covering every
    /// account touched, its placeholders numbered in `args`; None when no
    /// account balance moves.
    pub fn accounts_update(&self, args: &mut Args<'a>) -> Option<String> {
        if self.per_account.is_empty() {
            return None;
        }
        let (mut bal, mut held, mut ids) = (String::new(), String::new(), Vec::new());
        for (acct, da, dh) in &self.per_account {
            let id = args.push(*acct);
            bal.push_str(&format!(" WHEN {id} THEN {}", args.push(*da)));
            held.push_str(&format!(" WHEN {id} THEN {}", args.push(*dh)));
            ids.push(id);
        }
        Some(format!(
            "SET balance = balance + CASE id{bal} ELSE 0 END, held = held + CASE id{held} ELSE 0 END \
             WHERE id IN ({})",
            ids.join(", ")
        ))
    }
}

/// Writes one balanced ledger transaction and updates the projections.
/// Zero-amount entries are skipped. The caller owns the database transaction.
pub async fn post(conn: &mut dyn Sql, entries: &[Entry<'_>], now: i64) -> Result<()> {
    let mut rows = Args::default();
    let Some(p) = posting(&mut rows, entries, now)? else {
        return Ok(());
    };
    conn.exec(
        &format!(
            "INSERT INTO ledger_entries ({LEDGER_COLS}) VALUES {}",
            p.rows
        ),
        &rows.vals,
    )
    .await?;
    let mut accounts = Args::default();
    if let Some(update) = p.accounts_update(&mut accounts) {
        conn.exec(&format!("UPDATE accounts {update}"), &accounts.vals)
            .await?;
    }
    Ok(())
}

/// Moves `amount` from the account's available balance to held, if the
/// balance covers it (false otherwise; nothing is written).
pub async fn hold(
    conn: &mut dyn Sql,
    account_id: &str,
    job_id: &str,
    amount: i64,
    now: i64,
) -> Result<bool> {
    if amount <= 0 {
        return Ok(true);
    }
    let changed = conn
        .exec(
            "UPDATE accounts SET balance = balance - $1, held = held + $1 WHERE id = $2 AND balance >= $1",
            &[Val::I(amount), Val::T(account_id)],
        )
        .await?;
    if changed != 1 {
        return Ok(false);
    }
    let (le1, txn, le2) = (ordered_id("le"), ordered_id("txn"), ordered_id("le"));
    conn.exec(
        "INSERT INTO ledger_entries (id, txn_id, book, account_id, job_id, kind, amount, created_at) \
         VALUES ($1, $2, 'available', $3, $4, 'hold', $5, $6), ($7, $2, 'held', $3, $4, 'hold', $8, $6)",
        &[
            Val::T(&le1),
            Val::T(&txn),
            Val::T(account_id),
            Val::T(job_id),
            Val::I(-amount),
            Val::I(now),
            Val::T(&le2),
            Val::I(amount),
        ],
    )
    .await?;
    Ok(true)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerTotals {
    pub available: i64,
    pub held: i64,
    pub platform: i64,
    /// Credits ever granted (minus the issuance book).
    pub issued: i64,
    /// Sum of all entries: always 0.
    pub sum: i64,
    /// Sum of the `balance` / `held` projections over all accounts.
    pub projected_available: i64,
    pub projected_held: i64,
}

impl Store {
    /// Ledger totals per book, and the projections to compare them with.
    pub async fn ledger_totals(&self) -> Result<LedgerTotals> {
        let rows = sqlx::query(
            "SELECT book, CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total FROM ledger_entries GROUP BY book",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut t = LedgerTotals::default();
        for r in rows {
            let book: String = r.try_get("book")?;
            let total: i64 = r.try_get("total")?;
            t.sum += total;
            match book.as_str() {
                "available" => t.available = total,
                "held" => t.held = total,
                "platform" => t.platform = total,
                "issuance" => t.issued = -total,
                other => return Err(StoreError::Corrupt(format!("unknown ledger book {other}"))),
            }
        }
        let r = sqlx::query(
            "SELECT CAST(COALESCE(SUM(balance), 0) AS BIGINT) AS a, CAST(COALESCE(SUM(held), 0) AS BIGINT) AS h FROM accounts",
        )
        .fetch_one(&self.pool)
        .await?;
        t.projected_available = r.try_get("a")?;
        t.projected_held = r.try_get("h")?;
        Ok(t)
    }

    /// Recent entries of an account, newest first.
    pub async fn ledger_for(
        &self,
        account_id: &str,
        limit: i64,
    ) -> Result<Vec<archipelago_proto::api::LedgerEntry>> {
        let rows = sqlx::query(
            "SELECT id, txn_id, book, kind, amount, job_id, created_at FROM ledger_entries \
             WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(archipelago_proto::api::LedgerEntry {
                    id: r.try_get("id")?,
                    txn_id: r.try_get("txn_id")?,
                    book: r.try_get("book")?,
                    kind: r.try_get("kind")?,
                    amount: r.try_get("amount")?,
                    job_id: r.try_get("job_id")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }
}
