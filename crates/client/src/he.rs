//! Homomorphic jobs from the user's side (`mode: "he"`).
//!
//! `he-classify`: the MiniLM embedding of the text is computed **here**
//! (`archipelago-inference`, the same model and pooling as the `classify`
//! workload), quantised and encrypted under the user's `he-bfv` secret key
//! (`archipelago-he`), submitted as `{"encrypted": true, "key_id",
//! "ciphertext"}`; any HE-capable island (no TEE needed) evaluates the
//! classify head on the ciphertext; the response is decrypted here, the
//! argmax taken and mapped to the head's labels. Neither the text, the
//! embedding nor the scores leave this machine in the clear.
//!
//! `he-aggregate`: records are encrypted here under a schema only this
//! machine knows; the island sums them; the totals are decrypted here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use archipelago_he::{AggregateResult, AggregateSchema, ColumnResult, HeSecretKey, MessageKind};
use archipelago_inference::classify::LinearHead;
use archipelago_inference::embed::Embedder;
use archipelago_proto::api::{EncryptedPayload, Job, SubmitJobRequest, MODE_HE};
use archipelago_proto::b64;
use serde_json::{json, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::error::ClientError;
use crate::he_keystore::StoredHeKey;
use crate::session::Session;

/// Labels returned with scores (like the plaintext `classify` default).
pub const DEFAULT_TOP_K: usize = 3;

static EMBEDDER: Mutex<Option<Arc<Embedder>>> = Mutex::new(None);

/// (coordinator, key id) pairs registered by this process, so the 150 KiB
/// public material is uploaded once per process, not with every job.
static REGISTERED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// The local MiniLM embedder (loaded once per process from
/// `ARCHIPELAGO_MODELS_DIR` / the default models directory).
pub fn local_embedder() -> Result<Arc<Embedder>, ClientError> {
    let mut g = EMBEDDER
        .lock()
        .map_err(|_| ClientError::LocalModel("embedder lock poisoned".into()))?;
    if let Some(e) = g.as_ref() {
        return Ok(e.clone());
    }
    let store = archipelago_inference::ModelStore::from_env()
        .map_err(|e| ClientError::LocalModel(e.to_string()))?;
    store
        .check()
        .map_err(|e| ClientError::LocalModel(e.to_string()))?;
    let e =
        Arc::new(Embedder::load(store.dir()).map_err(|e| ClientError::LocalModel(e.to_string()))?);
    *g = Some(e.clone());
    Ok(e)
}

/// The classify head (labels and weights) this build shares with the
/// islands: the committed `classify_head.json` (parsed once).
pub fn classify_head() -> Result<LinearHead, ClientError> {
    static HEAD: std::sync::OnceLock<LinearHead> = std::sync::OnceLock::new();
    if let Some(h) = HEAD.get() {
        return Ok(h.clone());
    }
    let h = LinearHead::builtin().map_err(|e| ClientError::He(e.to_string()))?;
    Ok(HEAD.get_or_init(|| h).clone())
}

/// HE secret keys a session keeps loaded at most.
const MAX_CACHED_HE_KEYS: usize = 8;

/// An HE secret key a session loaded, with the stamp (length, modification
/// time) of its key file then. Dropping the last reference zeroizes it.
pub(crate) struct CachedHeKey {
    key_id: String,
    stamp: (u64, std::time::SystemTime),
    key: Arc<HeSecretKey>,
}

fn file_stamp(path: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// The embedding of one text (blocking; the user's plaintext, zeroized on
/// drop).
pub fn embed_text(embedder: &Embedder, text: &str) -> Result<Zeroizing<Vec<f32>>, ClientError> {
    if text.is_empty() || text.len() > archipelago_inference::runtime::MAX_TEXT_BYTES {
        return Err(ClientError::InvalidInput(format!(
            "the text must be 1..={} bytes",
            archipelago_inference::runtime::MAX_TEXT_BYTES
        )));
    }
    let v = embedder
        .embed(&[text])
        .map_err(|e| ClientError::LocalModel(e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| ClientError::LocalModel("no embedding returned".into()))?;
    Ok(Zeroizing::new(v))
}

/// A decrypted `he-classify` answer. The user's plaintext: no `Debug`
/// output of its values, zeroized on drop.
pub struct HeClassification {
    labels: Vec<String>,
    logits: Vec<f32>,
    best: usize,
}

impl std::fmt::Debug for HeClassification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeClassification")
            .field("classes", &self.labels.len())
            .field("values", &"<redacted>")
            .finish()
    }
}

impl Drop for HeClassification {
    fn drop(&mut self) {
        self.logits.zeroize();
        self.best.zeroize();
        for l in &mut self.labels {
            l.zeroize();
        }
    }
}

impl HeClassification {
    /// The top-1 label.
    pub fn label(&self) -> &str {
        &self.labels[self.best]
    }

    /// Index of the top-1 label in the head's label list.
    pub fn index(&self) -> usize {
        self.best
    }

    /// Logits as decrypted (exact quantised scores / scale).
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// `{"labels": [{"label", "score"}…]}`: the plaintext `classify`
    /// output shape (softmax of the decrypted logits, best first; ties
    /// resolved like the argmax, lowest index first).
    pub fn to_json(&self, top_k: usize) -> Value {
        let p = archipelago_inference::classify::softmax(&self.logits);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        // The argmax over exact integer scores decides the first place.
        idx.retain(|&i| i != self.best);
        idx.insert(0, self.best);
        let labels: Vec<Value> = idx
            .into_iter()
            .take(top_k.clamp(1, self.labels.len()))
            .map(|i| json!({"label": self.labels[i], "score": p[i]}))
            .collect();
        json!({ "labels": labels })
    }
}

/// Decrypts an `he-classify` response with the head's labels.
pub fn decrypt_classification(
    key: &HeSecretKey,
    response: &[u8],
    head: &LinearHead,
) -> Result<HeClassification, ClientError> {
    let scores = archipelago_he::decrypt_scores(key, response, head.labels.len())
        .map_err(|e| ClientError::He(e.to_string()))?;
    Ok(HeClassification {
        labels: head.labels.clone(),
        logits: scores.logits(),
        best: scores.argmax(),
    })
}

/// The aggregate result as JSON: `{"count", "columns": [{"name", "sum",
/// "mean"} | {"name", "edges", "counts"}]}`.
pub fn aggregate_json(r: &AggregateResult) -> Value {
    let cols: Vec<Value> = r
        .columns
        .iter()
        .map(|c| match c {
            ColumnResult::Value { name, sum, mean } => {
                json!({"name": name, "sum": sum, "mean": mean})
            }
            ColumnResult::Histogram {
                name,
                edges,
                counts,
            } => json!({"name": name, "edges": edges, "counts": counts}),
            _ => json!({}),
        })
        .collect();
    json!({"count": r.count, "columns": cols})
}

/// Decodes the ciphertext of an HE job's output to response bytes.
pub fn response_bytes(output: &Value, key_id: &str) -> Result<Vec<u8>, ClientError> {
    let p: EncryptedPayload =
        serde_json::from_value(output.clone()).map_err(|_| ClientError::Protocol {
            what: "HE job output".into(),
            detail: "not {\"encrypted\": true, \"key_id\", \"ciphertext\"}".into(),
        })?;
    if p.key_id != key_id {
        return Err(ClientError::He(format!(
            "the output is for key {}, not {key_id}",
            p.key_id
        )));
    }
    b64::decode_any(
        &p.ciphertext,
        archipelago_he::aggregate::MAX_AGGREGATE_RESPONSE_BYTES
            .max(archipelago_he::classify::MAX_CLASSIFY_RESPONSE_BYTES)
            * 4
            / 3
            + 8,
    )
    .map_err(|e| ClientError::Protocol {
        what: "HE job output".into(),
        detail: e.to_string(),
    })
}

/// Whether base64 ciphertext decodes to an `ARHE` message, and which kind.
pub fn he_message_kind(bytes: &[u8]) -> Option<MessageKind> {
    archipelago_he::peek_header(bytes).ok().map(|h| h.kind)
}

impl Session {
    /// The HE key to use: `key_id` if it names one, else the configured
    /// key if it is an HE key, else the newest HE key in the keystore.
    pub fn he_key_meta(&self, key_id: Option<&str>) -> Result<StoredHeKey, ClientError> {
        if let Some(id) = key_id {
            return Ok(self.keystore().get_he(id)?);
        }
        if let Some(id) = self.default_key_id() {
            if self.keystore().is_he_key(id) {
                return Ok(self.keystore().get_he(id)?);
            }
        }
        Ok(self.keystore().default_he_key()?)
    }

    /// Creates an `he-bfv` key in the keystore and registers its public
    /// material with the coordinator.
    pub async fn create_he_key(&self, label: Option<&str>) -> Result<StoredHeKey, ClientError> {
        let (stored, _sk, _pm) = self.keystore().create_he(label, self.passphrase_ref())?;
        if let Err(e) = self.register_he(&stored).await {
            let _ = self.keystore().delete_he(&stored.key_id);
            return Err(e);
        }
        Ok(stored)
    }

    /// The HE key named, or the newest one, creating and registering one
    /// when the keystore holds none (and none was named).
    pub async fn ensure_he_key(&self, key_id: Option<&str>) -> Result<StoredHeKey, ClientError> {
        match self.he_key_meta(key_id) {
            Ok(k) => Ok(k),
            Err(ClientError::Keystore(crate::error::KeystoreError::Empty { .. }))
                if key_id.is_none() =>
            {
                self.create_he_key(Some("he")).await
            }
            Err(e) => Err(e),
        }
    }

    /// Registers the key unless this process already did.
    async fn register_he_once(&self, stored: &StoredHeKey) -> Result<(), ClientError> {
        let entry = (self.api().base().to_string(), stored.key_id.clone());
        if REGISTERED.lock().is_ok_and(|r| r.contains(&entry)) {
            return Ok(());
        }
        self.register_he(stored).await?;
        if let Ok(mut r) = REGISTERED.lock() {
            if r.len() < 1024 {
                r.push(entry);
            }
        }
        Ok(())
    }

    /// Registers a stored HE key's public material (idempotent).
    pub async fn register_he(&self, stored: &StoredHeKey) -> Result<(), ClientError> {
        let pm = self.keystore().load_he_public(&stored.key_id)?;
        let req = archipelago_proto::api::RegisterKeyRequest {
            public_key: b64::encode_std(pm.to_bytes()),
            kind: Some(archipelago_proto::api::KEY_KIND_HE_BFV.into()),
            key_id: Some(stored.key_id.clone()),
            evaluation_keys: None,
            label: stored.label.clone(),
        };
        self.api().register_key(&req).await.map(drop)
    }

    /// Loads an HE secret key (once per session while its file is
    /// unchanged: see [`CachedHeKey`]).
    pub fn load_he_key(&self, key_id: &str) -> Result<Arc<HeSecretKey>, ClientError> {
        let stored = self.keystore().get_he(key_id)?;
        let stamp = file_stamp(&stored.path);
        if let Some(stamp) = &stamp {
            if let Ok(cache) = self.he_secrets.lock() {
                if let Some(c) = cache
                    .iter()
                    .find(|c| c.key_id == key_id && &c.stamp == stamp)
                {
                    return Ok(c.key.clone());
                }
            }
        }
        let key =
            Arc::new(self.with_key_passphrase(key_id, |p| self.keystore().load_he(key_id, p))?);
        if let (Some(stamp), Ok(mut cache)) = (stamp, self.he_secrets.lock()) {
            cache.retain(|c| c.key_id != key_id);
            if cache.len() >= MAX_CACHED_HE_KEYS {
                cache.remove(0);
            }
            cache.push(CachedHeKey {
                key_id: key_id.to_string(),
                stamp,
                key: key.clone(),
            });
        }
        Ok(key)
    }

    /// Submits an HE request (`ARHE` bytes) for `workload_id`.
    pub async fn submit_he(
        &self,
        workload_id: i64,
        key_id: &str,
        request: &[u8],
    ) -> Result<Job, ClientError> {
        let payload = EncryptedPayload {
            encrypted: true,
            key_id: key_id.to_string(),
            ciphertext: b64::encode_url(request),
            enclave_key_id: None,
        };
        let req = SubmitJobRequest {
            workload_id,
            confidential: true,
            encryption_key_id: Some(key_id.to_string()),
            mode: Some(MODE_HE.into()),
            input: serde_json::to_value(&payload).map_err(|e| ClientError::He(e.to_string()))?,
            timeout_seconds: None,
        };
        let idem = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(request));
        self.api().submit_job(&req, Some(&idem)).await
    }

    /// The response bytes of a finished HE job (errors for failed or
    /// cancelled jobs).
    pub fn he_response(&self, job: &Job, key_id: &str) -> Result<Vec<u8>, ClientError> {
        response_bytes(crate::session::finished_output(job)?, key_id)
    }

    /// `he-classify` end to end: embed `text` here, encrypt under the HE
    /// key (made and registered on first use), submit to `workload_id`
    /// (the `classify` workload), wait, decrypt, argmax, label.
    pub async fn run_he_classify(
        &self,
        workload_id: i64,
        text: &str,
        key_id: Option<&str>,
        timeout: Duration,
    ) -> Result<(Job, HeClassification), ClientError> {
        let stored = self.ensure_he_key(key_id).await?;
        let sk = self.load_he_key(&stored.key_id)?;
        self.register_he_once(&stored).await?;
        let head = classify_head()?;
        let text = Zeroizing::new(text.to_string());
        let sk2 = sk.clone();
        let request = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ClientError> {
            let embedder = local_embedder()?;
            let x = embed_text(&embedder, &text)?;
            archipelago_he::encrypt_features(sk2.as_ref(), &x)
                .map_err(|e| ClientError::He(e.to_string()))
        })
        .await
        .map_err(|_| ClientError::He("the local encryption task stopped".into()))??;
        let job = self
            .submit_he(workload_id, &stored.key_id, &request)
            .await?;
        let job = self.wait(&job.id, timeout).await?;
        let response = self.he_response(&job, &stored.key_id)?;
        let result = decrypt_classification(&sk, &response, &head)?;
        Ok((job, result))
    }

    /// `he-aggregate` end to end: encrypt `records` under `schema` here,
    /// submit, wait, decrypt.
    pub async fn run_he_aggregate(
        &self,
        workload_id: i64,
        schema: &AggregateSchema,
        records: &[Vec<f64>],
        key_id: Option<&str>,
        timeout: Duration,
    ) -> Result<(Job, AggregateResult), ClientError> {
        let stored = self.ensure_he_key(key_id).await?;
        let sk = self.load_he_key(&stored.key_id)?;
        self.register_he_once(&stored).await?;
        let request = archipelago_he::encrypt_records(&*sk, schema, records)
            .map_err(|e| ClientError::He(e.to_string()))?;
        let job = self
            .submit_he(workload_id, &stored.key_id, &request)
            .await?;
        let job = self.wait(&job.id, timeout).await?;
        let response = self.he_response(&job, &stored.key_id)?;
        let result = archipelago_he::decrypt_aggregate(&sk, schema, &response)
            .map_err(|e| ClientError::He(e.to_string()))?;
        Ok((job, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_json_puts_the_exact_argmax_first_and_redacts_debug() {
        let c = HeClassification {
            labels: vec!["a".into(), "b".into(), "c".into()],
            logits: vec![0.1, 2.0, 2.0],
            best: 1,
        };
        let v = c.to_json(2);
        assert_eq!(v["labels"][0]["label"], "b");
        assert_eq!(v["labels"][1]["label"], "c");
        assert_eq!(v["labels"].as_array().unwrap().len(), 2);
        assert_eq!(c.label(), "b");
        assert!(!format!("{c:?}").contains("2.0"));
    }

    #[test]
    fn outputs_for_another_key_or_not_encrypted_are_refused() {
        let out = json!({"encrypted": true, "key_id": "ck_a", "ciphertext": "AAAA"});
        assert!(matches!(
            response_bytes(&out, "ck_b"),
            Err(ClientError::He(_))
        ));
        assert!(response_bytes(&json!({"text": "x"}), "ck_a").is_err());
        assert_eq!(response_bytes(&out, "ck_a").unwrap(), vec![0, 0, 0]);
    }
}
