//! Registry tables: accounts, API keys, workloads, client keys, enrollment
//! tokens, islands, attestation nonces and attested enclave keys.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::ledger::{post, Book, Entry};
use super::{Result, Store, StoreError};
use crate::util::{hash_token, now_ms, random_id, random_token};

#[derive(Debug, Clone)]
pub struct AccountRow {
    pub id: String,
    pub name: String,
    pub balance: i64,
    pub held: i64,
    pub is_admin: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub is_admin_account: bool,
}

#[derive(Debug, Clone)]
pub struct WorkloadRow {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub runtime: String,
    pub memory_mb: i64,
    pub price_per_second: i64,
    pub max_seconds: i64,
    pub plain: bool,
    pub confidential: bool,
    pub homomorphic: bool,
}

impl WorkloadRow {
    pub fn max_cost(&self) -> i64 {
        self.price_per_second.saturating_mul(self.max_seconds)
    }
}

#[derive(Debug, Clone)]
pub struct ClientKeyRow {
    pub account_id: String,
    pub key_id: String,
    pub kind: String,
    pub public_key: String,
    pub evaluation_keys: Option<String>,
    pub label: Option<String>,
    pub created_at: i64,
    /// HE parameter set name (`he-bfv` keys only).
    pub params: Option<String>,
}

#[derive(Debug, Clone)]
pub struct IslandRow {
    pub id: String,
    pub owner_account_id: String,
    pub name: String,
    pub tee_type: Option<String>,
    pub he_capable: bool,
    pub runtimes: Vec<String>,
    pub memory_mb: i64,
    pub capacity: i64,
    pub load_permille: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub expired: i64,
    pub last_heartbeat_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct EnclaveRow {
    pub key_id: String,
    pub island_id: String,
    pub public_key: String,
    pub tee_type: String,
    pub nonce: String,
    pub evidence: String,
    pub measurement: Option<String>,
    pub attested_at: i64,
    pub key_expires_at: i64,
    pub valid_until: i64,
}

/// An enclave key that passed verification and appraisal.
#[derive(Debug, Clone)]
pub struct NewEnclave {
    pub key_id: String,
    pub island_id: String,
    pub public_key: String,
    pub tee_type: String,
    pub nonce: String,
    pub evidence: String,
    pub measurement: Option<String>,
    /// Unix seconds.
    pub attested_at: i64,
    pub key_expires_at: i64,
    pub valid_until: i64,
}

fn b(v: i64) -> bool {
    v != 0
}

fn account_from(r: &AnyRow) -> Result<AccountRow> {
    Ok(AccountRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        balance: r.try_get("balance")?,
        held: r.try_get("held")?,
        is_admin: b(r.try_get("is_admin")?),
        created_at: r.try_get("created_at")?,
    })
}

fn workload_from(r: &AnyRow) -> Result<WorkloadRow> {
    Ok(WorkloadRow {
        id: r.try_get("id")?,
        slug: r.try_get("slug")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        runtime: r.try_get("runtime")?,
        memory_mb: r.try_get("memory_mb")?,
        price_per_second: r.try_get("price_per_second")?,
        max_seconds: r.try_get("max_seconds")?,
        plain: b(r.try_get("plain")?),
        confidential: b(r.try_get("confidential")?),
        homomorphic: b(r.try_get("homomorphic")?),
    })
}

fn key_from(r: &AnyRow) -> Result<ClientKeyRow> {
    Ok(ClientKeyRow {
        account_id: r.try_get("account_id")?,
        key_id: r.try_get("key_id")?,
        kind: r.try_get("kind")?,
        public_key: r.try_get("public_key")?,
        evaluation_keys: r.try_get("evaluation_keys")?,
        label: r.try_get("label")?,
        created_at: r.try_get("created_at")?,
        params: r.try_get("params")?,
    })
}

pub(super) fn island_from(r: &AnyRow) -> Result<IslandRow> {
    let runtimes: String = r.try_get("runtimes")?;
    Ok(IslandRow {
        id: r.try_get("id")?,
        owner_account_id: r.try_get("owner_account_id")?,
        name: r.try_get("name")?,
        tee_type: r.try_get("tee_type")?,
        he_capable: b(r.try_get("he_capable")?),
        runtimes: serde_json::from_str(&runtimes)
            .map_err(|e| StoreError::Corrupt(format!("islands.runtimes: {e}")))?,
        memory_mb: r.try_get("memory_mb")?,
        capacity: r.try_get("capacity")?,
        load_permille: r.try_get("load_permille")?,
        succeeded: r.try_get("succeeded")?,
        failed: r.try_get("failed")?,
        expired: r.try_get("expired")?,
        last_heartbeat_at: r.try_get("last_heartbeat_at")?,
    })
}

fn enclave_from(r: &AnyRow) -> Result<EnclaveRow> {
    Ok(EnclaveRow {
        key_id: r.try_get("key_id")?,
        island_id: r.try_get("island_id")?,
        public_key: r.try_get("public_key")?,
        tee_type: r.try_get("tee_type")?,
        nonce: r.try_get("nonce")?,
        evidence: r.try_get("evidence")?,
        measurement: r.try_get("measurement")?,
        attested_at: r.try_get("attested_at")?,
        key_expires_at: r.try_get("key_expires_at")?,
        valid_until: r.try_get("valid_until")?,
    })
}

const ISLAND_COLS: &str = "id, owner_account_id, name, tee_type, he_capable, runtimes, memory_mb, \
     capacity, load_permille, succeeded, failed, expired, last_heartbeat_at";
const ENCLAVE_COLS: &str =
    "key_id, island_id, public_key, tee_type, nonce, evidence, measurement, \
     attested_at, key_expires_at, valid_until";

/// The default workloads (stable ids; other crates rely on them).
pub fn default_workloads() -> Vec<WorkloadRow> {
    let w = |id: i64,
             slug: &str,
             name: &str,
             description: &str,
             runtime: &str,
             memory_mb: i64,
             price_per_second: i64,
             max_seconds: i64,
             (plain, confidential, homomorphic): (bool, bool, bool)| WorkloadRow {
        id,
        slug: slug.into(),
        name: name.into(),
        description: description.into(),
        runtime: runtime.into(),
        memory_mb,
        price_per_second,
        max_seconds,
        plain,
        confidential,
        homomorphic,
    };
    vec![
        w(
            1,
            "chat",
            "SmolLM2-135M-Instruct",
            "Chat completion with SmolLM2-135M-Instruct",
            "candle",
            1024,
            10,
            120,
            (true, true, false),
        ),
        w(
            2,
            "embed",
            "all-MiniLM-L6-v2",
            "Sentence embeddings (384 dimensions) with all-MiniLM-L6-v2",
            "candle",
            512,
            2,
            60,
            (true, true, false),
        ),
        w(
            3,
            "classify",
            "MiniLM + linear head",
            "Text classification: MiniLM features and a linear head; homomorphic as he-classify input (encrypted features)",
            "candle",
            512,
            2,
            120,
            (true, true, true),
        ),
        w(
            4,
            "he-aggregate",
            "Encrypted aggregation",
            "Sum, mean and histogram over BFV-encrypted vectors (homomorphic only)",
            "he",
            256,
            1,
            300,
            (false, false, true),
        ),
        w(
            5,
            "echo",
            "Echo",
            "Returns its input (text echo/transform), for tests",
            "echo",
            16,
            1,
            10,
            (true, true, false),
        ),
    ]
}

impl Store {
    // ------------------------------------------------------------ accounts

    /// Creates an account with an optional opening grant.
    pub async fn create_account(&self, name: &str, is_admin: bool, credits: i64) -> Result<String> {
        let id = random_id("acct");
        let now = now_ms();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO accounts (id, name, balance, held, is_admin, created_at) VALUES ($1, $2, 0, 0, $3, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(is_admin as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if credits > 0 {
            grant_in(&mut self.sql(&mut tx), &id, credits, now).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Issues `credits` to an account (issuance → available).
    pub async fn grant(&self, account_id: &str, credits: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT id FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !exists {
            return Ok(false);
        }
        grant_in(&mut self.sql(&mut tx), account_id, credits, now_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn account(&self, id: &str) -> Result<Option<AccountRow>> {
        sqlx::query(
            "SELECT id, name, balance, held, is_admin, created_at FROM accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(account_from)
        .transpose()
    }

    pub async fn accounts(&self) -> Result<Vec<AccountRow>> {
        sqlx::query("SELECT id, name, balance, held, is_admin, created_at FROM accounts ORDER BY created_at")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(account_from)
            .collect()
    }

    // ------------------------------------------------------------ api keys

    /// Creates an API key; returns `(id, secret)`. The secret is not stored.
    pub async fn create_api_key(
        &self,
        account_id: &str,
        name: &str,
        scopes: &[String],
    ) -> Result<(String, String)> {
        let id = random_id("key");
        let token = random_token("ak");
        sqlx::query(
            "INSERT INTO api_keys (id, account_id, token_hash, name, scopes, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(account_id)
        .bind(hash_token(&token))
        .bind(name)
        .bind(scopes.join(","))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok((id, token))
    }

    /// Finds a live API key by the hash of its secret.
    pub async fn api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRow>> {
        let row = sqlx::query(
            "SELECT k.id, k.account_id, k.name, k.scopes, k.created_at, a.is_admin FROM api_keys k \
             JOIN accounts a ON a.id = k.account_id WHERE k.token_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from).transpose()
    }

    pub async fn api_keys(&self, account_id: &str) -> Result<Vec<ApiKeyRow>> {
        sqlx::query(
            "SELECT k.id, k.account_id, k.name, k.scopes, k.created_at, a.is_admin FROM api_keys k \
             JOIN accounts a ON a.id = k.account_id WHERE k.account_id = $1 AND k.revoked_at IS NULL ORDER BY k.created_at",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_key_from)
        .collect()
    }

    /// Revokes an API key of the account; returns its hash when it existed.
    pub async fn revoke_api_key(&self, account_id: &str, id: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND account_id = $3 AND revoked_at IS NULL RETURNING token_hash",
        )
        .bind(now_ms())
        .bind(id)
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("token_hash")?),
            None => None,
        })
    }

    // ------------------------------------------------------------ workloads

    /// Inserts the default workloads that are missing.
    pub async fn ensure_default_workloads(&self) -> Result<()> {
        for w in default_workloads() {
            self.upsert_workload(&w, false).await?;
        }
        Ok(())
    }

    /// Inserts a workload; with `replace`, overwrites an existing one.
    pub async fn upsert_workload(&self, w: &WorkloadRow, replace: bool) -> Result<()> {
        let conflict = if replace {
            "ON CONFLICT (id) DO UPDATE SET slug = excluded.slug, name = excluded.name, \
             description = excluded.description, runtime = excluded.runtime, memory_mb = excluded.memory_mb, \
             price_per_second = excluded.price_per_second, max_seconds = excluded.max_seconds, \
             plain = excluded.plain, confidential = excluded.confidential, homomorphic = excluded.homomorphic"
        } else {
            "ON CONFLICT DO NOTHING"
        };
        let sql = format!(
            "INSERT INTO workloads (id, slug, name, description, runtime, memory_mb, price_per_second, max_seconds, \
             plain, confidential, homomorphic, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) {conflict}"
        );
        sqlx::query(&sql)
            .bind(w.id)
            .bind(&w.slug)
            .bind(&w.name)
            .bind(&w.description)
            .bind(&w.runtime)
            .bind(w.memory_mb)
            .bind(w.price_per_second)
            .bind(w.max_seconds)
            .bind(w.plain as i64)
            .bind(w.confidential as i64)
            .bind(w.homomorphic as i64)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn workloads(&self) -> Result<Vec<WorkloadRow>> {
        sqlx::query("SELECT * FROM workloads ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(workload_from)
            .collect()
    }

    // ------------------------------------------------------------ client keys

    /// Registers a client key; returns false when the account already has it.
    pub async fn register_key(&self, k: &ClientKeyRow) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO client_keys (account_id, key_id, kind, public_key, evaluation_keys, label, created_at, params) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&k.account_id)
        .bind(&k.key_id)
        .bind(&k.kind)
        .bind(&k.public_key)
        .bind(k.evaluation_keys.clone())
        .bind(k.label.clone())
        .bind(k.created_at)
        .bind(k.params.clone())
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn client_keys(&self, account_id: &str) -> Result<Vec<ClientKeyRow>> {
        sqlx::query(
            "SELECT account_id, key_id, kind, public_key, NULL AS evaluation_keys, label, created_at, params \
             FROM client_keys WHERE account_id = $1 ORDER BY created_at, key_id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(key_from)
        .collect()
    }

    pub async fn client_key(&self, account_id: &str, key_id: &str) -> Result<Option<ClientKeyRow>> {
        sqlx::query("SELECT * FROM client_keys WHERE account_id = $1 AND key_id = $2")
            .bind(account_id)
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(key_from)
            .transpose()
    }

    /// Any account's registration of a key (public material, for islands
    /// evaluating HE jobs).
    pub async fn client_key_any(&self, key_id: &str) -> Result<Option<ClientKeyRow>> {
        sqlx::query("SELECT * FROM client_keys WHERE key_id = $1 LIMIT 1")
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(key_from)
            .transpose()
    }

    /// Confidential jobs counted by (mode, state), for
    /// `/confidential/stats` (plain jobs are not counted).
    pub async fn job_counts_by_mode(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT mode, state, COUNT(*) AS n FROM jobs WHERE mode <> 'plain' GROUP BY mode, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| -> Result<(String, String, i64)> {
                Ok((r.try_get("mode")?, r.try_get("state")?, r.try_get("n")?))
            })
            .collect()
    }

    pub async fn delete_client_key(&self, account_id: &str, key_id: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM client_keys WHERE account_id = $1 AND key_id = $2")
            .bind(account_id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() == 1)
    }

    // ------------------------------------------------------------ enrollment

    /// Creates an enrollment token for islands owned by `owner`.
    pub async fn create_enrollment_token(
        &self,
        owner: &str,
        max_uses: Option<i64>,
    ) -> Result<String> {
        let token = random_token("et");
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, token_hash, owner_account_id, uses_remaining, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(random_id("enr"))
        .bind(hash_token(&token))
        .bind(owner)
        .bind(max_uses)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Spends one use of an enrollment token and creates the island.
    /// Returns `(island_id, island_token)`, or None for an unknown or spent token.
    #[allow(clippy::too_many_arguments)]
    pub async fn enroll_island(
        &self,
        enrollment_token: &str,
        name: &str,
        tee_type: Option<&str>,
        he_capable: bool,
        runtimes: &[String],
        memory_mb: i64,
        capacity: i64,
    ) -> Result<Option<(String, String)>> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET uses_remaining = uses_remaining - 1 \
             WHERE token_hash = $1 AND (uses_remaining IS NULL OR uses_remaining > 0) RETURNING owner_account_id",
        )
        .bind(hash_token(enrollment_token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let owner: String = row.try_get("owner_account_id")?;
        let id = random_id("isl");
        let token = random_token("it");
        let runtimes = serde_json::to_string(runtimes)
            .map_err(|e| StoreError::Corrupt(format!("runtimes: {e}")))?;
        sqlx::query(
            "INSERT INTO islands (id, owner_account_id, name, token_hash, tee_type, he_capable, runtimes, memory_mb, capacity, enrolled_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&id)
        .bind(&owner)
        .bind(name)
        .bind(hash_token(&token))
        .bind(tee_type.map(str::to_string))
        .bind(he_capable as i64)
        .bind(runtimes)
        .bind(memory_mb)
        .bind(capacity)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((id, token)))
    }

    pub async fn island_by_token_hash(&self, token_hash: &str) -> Result<Option<IslandRow>> {
        sqlx::query(&format!(
            "SELECT {ISLAND_COLS} FROM islands WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(island_from)
        .transpose()
    }

    pub async fn island(&self, id: &str) -> Result<Option<IslandRow>> {
        sqlx::query(&format!("SELECT {ISLAND_COLS} FROM islands WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(island_from)
            .transpose()
    }

    pub async fn islands(&self) -> Result<Vec<IslandRow>> {
        sqlx::query(&format!(
            "SELECT {ISLAND_COLS} FROM islands ORDER BY enrolled_at, id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(island_from)
        .collect()
    }

    /// Records a heartbeat and the capabilities it reports.
    #[allow(clippy::too_many_arguments)]
    pub async fn heartbeat(
        &self,
        island_id: &str,
        load_permille: i64,
        tee_type: Option<&str>,
        he_capable: bool,
        runtimes: &[String],
        memory_mb: i64,
        capacity: i64,
    ) -> Result<()> {
        let runtimes = serde_json::to_string(runtimes)
            .map_err(|e| StoreError::Corrupt(format!("runtimes: {e}")))?;
        sqlx::query(
            "UPDATE islands SET load_permille = $1, tee_type = $2, he_capable = $3, runtimes = $4, memory_mb = $5, \
             capacity = $6, last_heartbeat_at = $7 WHERE id = $8",
        )
        .bind(load_permille)
        .bind(tee_type.map(str::to_string))
        .bind(he_capable as i64)
        .bind(runtimes)
        .bind(memory_mb)
        .bind(capacity)
        .bind(now_ms())
        .bind(island_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ------------------------------------------------------------ attestation

    /// Stores a single-use nonce for the island.
    pub async fn create_nonce(
        &self,
        island_id: &str,
        nonce_b64: &str,
        expires_at_secs: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO attestation_nonces (nonce, island_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(nonce_b64)
        .bind(island_id)
        .bind(expires_at_secs)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Consumes a nonce issued to this island and not yet expired.
    pub async fn take_nonce(
        &self,
        island_id: &str,
        nonce_b64: &str,
        now_secs: i64,
    ) -> Result<bool> {
        let res = sqlx::query(
            "DELETE FROM attestation_nonces WHERE nonce = $1 AND island_id = $2 AND expires_at >= $3",
        )
        .bind(nonce_b64)
        .bind(island_id)
        .bind(now_secs)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Records (or refreshes) an attested enclave key. Refuses to move a key
    /// between islands: returns false if another island holds it.
    pub async fn record_enclave(&self, e: &NewEnclave) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO enclaves (key_id, island_id, public_key, tee_type, nonce, evidence, measurement, attested_at, key_expires_at, valid_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (key_id) DO UPDATE SET tee_type = excluded.tee_type, nonce = excluded.nonce, \
             evidence = excluded.evidence, measurement = excluded.measurement, attested_at = excluded.attested_at, \
             key_expires_at = excluded.key_expires_at, valid_until = excluded.valid_until \
             WHERE enclaves.island_id = excluded.island_id",
        )
        .bind(&e.key_id)
        .bind(&e.island_id)
        .bind(&e.public_key)
        .bind(&e.tee_type)
        .bind(&e.nonce)
        .bind(&e.evidence)
        .bind(e.measurement.clone())
        .bind(e.attested_at)
        .bind(e.key_expires_at)
        .bind(e.valid_until)
        .execute(&self.pool)
        .await?;
        if res.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("UPDATE islands SET tee_type = $1 WHERE id = $2")
            .bind(&e.tee_type)
            .bind(&e.island_id)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// Enclave keys routable at `now_secs`, of islands online since
    /// `online_since_ms`. `accept_sim` decides whether `sim` keys count.
    pub async fn live_enclaves(
        &self,
        now_secs: i64,
        online_since_ms: i64,
        accept_sim: bool,
    ) -> Result<Vec<EnclaveRow>> {
        let sim = if accept_sim {
            ""
        } else {
            " AND e.tee_type <> 'sim'"
        };
        let cols = ENCLAVE_COLS
            .split(", ")
            .map(|c| format!("e.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "SELECT {cols} FROM enclaves e JOIN islands i ON i.id = e.island_id \
             WHERE e.valid_until > $1 AND i.last_heartbeat_at >= $2{sim} ORDER BY e.attested_at DESC, e.key_id"
        ))
        .bind(now_secs)
        .bind(online_since_ms)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(enclave_from)
        .collect()
    }

    /// Valid enclave key ids of one island.
    pub async fn island_enclave_keys(
        &self,
        island_id: &str,
        now_secs: i64,
        accept_sim: bool,
    ) -> Result<Vec<String>> {
        let sim = if accept_sim {
            ""
        } else {
            " AND tee_type <> 'sim'"
        };
        let rows = sqlx::query(&format!(
            "SELECT key_id FROM enclaves WHERE island_id = $1 AND valid_until > $2{sim}"
        ))
        .bind(island_id)
        .bind(now_secs)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("key_id").map_err(Into::into))
            .collect()
    }

    /// Latest attestation time of an island's enclaves (unix seconds).
    pub async fn last_attested(&self, island_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(attested_at) AS t FROM enclaves WHERE island_id = $1")
            .bind(island_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("t")?)
    }

    /// Drops nonces past their expiry.
    pub async fn purge_nonces(&self, now_secs: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM attestation_nonces WHERE expires_at < $1")
            .bind(now_secs)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected())
    }
}

fn api_key_from(r: &AnyRow) -> Result<ApiKeyRow> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ApiKeyRow {
        id: r.try_get("id")?,
        account_id: r.try_get("account_id")?,
        name: r.try_get("name")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: r.try_get("created_at")?,
        is_admin_account: b(r.try_get("is_admin")?),
    })
}

async fn grant_in(
    conn: &mut dyn super::sql::Sql,
    account_id: &str,
    credits: i64,
    now: i64,
) -> Result<()> {
    post(
        conn,
        &[
            Entry::new(Book::Issuance, None, None, "grant", -credits),
            Entry::new(Book::Available, Some(account_id), None, "grant", credits),
        ],
        now,
    )
    .await
}
