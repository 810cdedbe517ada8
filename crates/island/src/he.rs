//! Homomorphic jobs (`mode: "he"`), evaluated by the agent itself: no TEE
//! and no model files are needed, so every island is HE-capable.
//!
//! The island never holds anything that decrypts: it fetches the user's
//! `he-bfv` public material from the coordinator
//! (`GET /island/he-keys/{key_id}`), evaluates `he-classify` (the same
//! linear head as the plaintext `classify` workload, quantised) or
//! `he-aggregate` on the BFV ciphertext with `archipelago-he`, and posts
//! the masked, re-randomised, noise-flooded response as
//! `{"encrypted": true, "key_id", "ciphertext"}`.
//!
//! Every refusal is a failed job with an `he_…` code and a message naming
//! the field, size or id — never a panic, never payload bytes in a log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use archipelago_he::aggregate::MAX_AGGREGATE_REQUEST_BYTES;
use archipelago_he::classify::MAX_CLASSIFY_REQUEST_BYTES;
use archipelago_he::{HeError, HePublicMaterial, LinearHeadQuantised, MessageKind};
use archipelago_proto::api::EncryptedPayload;
use archipelago_proto::b64;

use crate::client::{ClientError, CoordinatorClient};

/// The coordinator's `classify` workload (its HE mode is `he-classify`).
pub const CLASSIFY_WORKLOAD_ID: i64 = 3;
/// The coordinator's `he-aggregate` workload.
pub const AGGREGATE_WORKLOAD_ID: i64 = 4;
/// The runtime an HE-capable island reports (HE jobs require it).
pub const HE_RUNTIME: &str = "he";
/// Public materials kept parsed between jobs (each ≈ 0.4 MiB in memory).
pub const KEY_CACHE_ENTRIES: usize = 32;

/// Why an HE job failed. `code()` is the job's `error.code`; the message
/// carries sizes, names and ids only.
#[derive(Debug, thiserror::Error)]
pub enum HeJobError {
    /// The workload has no homomorphic evaluator here.
    #[error("workload {0} has no homomorphic evaluator (he-classify is workload 3, he-aggregate workload 4)")]
    UnsupportedWorkload(i64),
    /// The job input is not `{"encrypted": true, "key_id", "ciphertext"}`
    /// with base64 ciphertext.
    #[error("{0}")]
    BadPayload(String),
    /// The ciphertext is larger than the workload's limit.
    #[error("the {what} is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Message kind.
        what: &'static str,
        /// Size found (decoded, or estimated from the base64 length).
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The coordinator has no such key.
    #[error("HE key {0} is not registered (or was deleted); register it with POST /api/v1/confidential/keys and resubmit")]
    UnknownKey(String),
    /// The key exists but is not an `he-bfv` key.
    #[error("key {0} is not an he-bfv key; encrypt with a homomorphic key (archipelago keys create --he)")]
    WrongKeyKind(String),
    /// The coordinator's copy of the key is unusable.
    #[error("the registered HE key {key_id} is unusable: {detail}")]
    BadKey {
        /// The key.
        key_id: String,
        /// What is wrong.
        detail: String,
    },
    /// The coordinator could not be asked for the key (transient).
    #[error("could not fetch the HE key: {0}")]
    KeyFetch(ClientError),
    /// `archipelago-he` refused the request.
    #[error("{0}")]
    He(#[from] HeError),
    /// The linear head could not be loaded or quantised.
    #[error("the classification head is not available on this island: {0}")]
    NoHead(String),
    /// The evaluation task died.
    #[error("the homomorphic evaluation stopped unexpectedly")]
    Internal,
}

impl HeJobError {
    /// The `error.code` posted to the coordinator.
    pub fn code(&self) -> &'static str {
        match self {
            HeJobError::UnsupportedWorkload(_) => "unsupported_workload",
            HeJobError::BadPayload(_) => "he_bad_payload",
            HeJobError::TooLarge { .. } => "he_too_large",
            HeJobError::UnknownKey(_) => "he_unknown_key",
            HeJobError::WrongKeyKind(_) => "he_wrong_key_kind",
            HeJobError::BadKey { .. } => "he_bad_key",
            HeJobError::KeyFetch(_) => "he_key_unavailable",
            HeJobError::NoHead(_) => "he_head_unavailable",
            HeJobError::Internal => "internal",
            HeJobError::He(e) => match e {
                HeError::TooLarge { .. } => "he_too_large",
                HeError::WrongKind { .. } => "he_wrong_kind",
                HeError::UnknownParameterSet(_) | HeError::ParameterMismatch { .. } => {
                    "he_wrong_params"
                }
                HeError::KeyMismatch { .. } => "he_key_mismatch",
                HeError::DimensionMismatch { .. } => "he_dimension_mismatch",
                HeError::BadMagic
                | HeError::UnsupportedVersion { .. }
                | HeError::Truncated { .. }
                | HeError::TrailingBytes { .. }
                | HeError::Malformed { .. } => "he_malformed",
                HeError::InvalidInput(_) => "invalid_input",
                HeError::InvalidHead(_) => "he_head_unavailable",
                _ => "he_failed",
            },
        }
    }

    /// Transient: the job should be released (lease lapses, requeued),
    /// not failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, HeJobError::KeyFetch(_))
    }
}

/// A finished evaluation: the output to post and the measured time.
pub struct HeOutput {
    /// `{"encrypted": true, "key_id", "ciphertext"}` (base64url response).
    pub output: serde_json::Value,
    /// Response size, bytes (for logs).
    pub response_len: usize,
    /// Parse + evaluation time (what the job is billed for), ms ≥ 1.
    pub execution_ms: i64,
}

/// The island's homomorphic evaluator: the quantised classify head and a
/// small cache of parsed public materials.
pub struct HeEvaluator {
    head: Result<Arc<LinearHeadQuantised>, String>,
    keys: Mutex<KeyCache>,
}

impl std::fmt::Debug for HeEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeEvaluator")
            .field("head", &self.head.is_ok())
            .finish()
    }
}

#[derive(Default)]
struct KeyCache {
    map: HashMap<String, Arc<HePublicMaterial>>,
    order: VecDeque<String>,
}

impl KeyCache {
    fn get(&self, key_id: &str) -> Option<Arc<HePublicMaterial>> {
        self.map.get(key_id).cloned()
    }

    fn put(&mut self, pm: Arc<HePublicMaterial>) {
        let id = pm.key_id().to_string();
        if self.map.insert(id.clone(), pm).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > KEY_CACHE_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// The head the plaintext `classify` workload uses, as `archipelago-he`
/// takes it.
pub fn builtin_head() -> Result<archipelago_he::LinearHead, String> {
    let h = archipelago_inference::classify::LinearHead::builtin().map_err(|e| e.to_string())?;
    Ok(archipelago_he::LinearHead {
        labels: h.labels,
        weights: h.weights,
        bias: h.bias,
    })
}

impl HeEvaluator {
    /// An evaluator with the committed `classify` head (the same file the
    /// plaintext workload and the enclave use).
    pub fn builtin() -> HeEvaluator {
        let head = builtin_head().and_then(|h| h.quantise().map_err(|e| e.to_string()));
        if let Err(e) = &head {
            tracing::warn!(reason = %e, "he-classify disabled on this island (he-aggregate still runs)");
        }
        HeEvaluator {
            head: head.map(Arc::new),
            keys: Mutex::new(KeyCache::default()),
        }
    }

    /// An evaluator with a given head (tests, benchmarks).
    pub fn with_head(head: &archipelago_he::LinearHead) -> Result<HeEvaluator, HeError> {
        Ok(HeEvaluator {
            head: Ok(Arc::new(head.quantise()?)),
            keys: Mutex::new(KeyCache::default()),
        })
    }

    /// Number of classes of the classify head, when it loaded.
    pub fn classes(&self) -> Option<usize> {
        self.head.as_ref().ok().map(|h| h.n_classes())
    }

    /// The request kind and size limit of an HE workload.
    pub fn request_kind(workload_id: i64) -> Result<(MessageKind, usize), HeJobError> {
        match workload_id {
            CLASSIFY_WORKLOAD_ID => Ok((MessageKind::ClassifyRequest, MAX_CLASSIFY_REQUEST_BYTES)),
            AGGREGATE_WORKLOAD_ID => {
                Ok((MessageKind::AggregateRequest, MAX_AGGREGATE_REQUEST_BYTES))
            }
            w => Err(HeJobError::UnsupportedWorkload(w)),
        }
    }

    /// Decodes a job's input: the encrypted payload's key id and request
    /// bytes, with the workload's size limit applied before decoding.
    pub fn decode_input(
        workload_id: i64,
        job_key_id: Option<&str>,
        input: &serde_json::Value,
    ) -> Result<(String, Vec<u8>), HeJobError> {
        let (kind, max) = Self::request_kind(workload_id)?;
        let payload: EncryptedPayload = serde_json::from_value(input.clone()).map_err(|_| {
            HeJobError::BadPayload(
                "the job input is not {\"encrypted\": true, \"key_id\", \"ciphertext\"}".into(),
            )
        })?;
        if !payload.encrypted {
            return Err(HeJobError::BadPayload(
                "the job input is not marked encrypted".into(),
            ));
        }
        if let Some(k) = job_key_id {
            if k != payload.key_id {
                return Err(HeJobError::BadPayload(
                    "the input's key_id differs from the job's encryption_key_id".into(),
                ));
            }
        }
        let max_b64 = max.div_ceil(3) * 4 + 8;
        let bytes = b64::decode_any(&payload.ciphertext, max_b64).map_err(|e| match e {
            b64::B64Error::TooLong { len, .. } => HeJobError::TooLarge {
                what: kind.name(),
                len: len / 4 * 3,
                max,
            },
            _ => HeJobError::BadPayload("the ciphertext is not base64".into()),
        })?;
        if bytes.len() > max {
            return Err(HeJobError::TooLarge {
                what: kind.name(),
                len: bytes.len(),
                max,
            });
        }
        Ok((payload.key_id, bytes))
    }

    /// Parses the coordinator's copy of a key and checks it is the key
    /// asked for (ids are self-certifying: sha256 of the material).
    pub fn parse_key(
        key_id: &str,
        material: &archipelago_proto::island::HeKeyMaterial,
    ) -> Result<HePublicMaterial, HeJobError> {
        let bad = |detail: String| HeJobError::BadKey {
            key_id: key_id.to_string(),
            detail,
        };
        let max_b64 = archipelago_he::MAX_PUBLIC_MATERIAL_BYTES.div_ceil(3) * 4 + 8;
        let bytes = b64::decode_any(&material.public_key, max_b64)
            .map_err(|e| bad(format!("public material: {e}")))?;
        let pm = HePublicMaterial::from_bytes(&bytes).map_err(|e| match e {
            HeError::WrongKind { .. } => HeJobError::WrongKeyKind(key_id.to_string()),
            e => bad(e.to_string()),
        })?;
        if pm.key_id() != key_id {
            return Err(bad(format!(
                "the material's id is {}, not {key_id}",
                pm.key_id()
            )));
        }
        Ok(pm)
    }

    /// Evaluates one request (blocking, CPU-bound: call from
    /// `spawn_blocking`). Returns the response bytes.
    pub fn evaluate(
        &self,
        workload_id: i64,
        key: &HePublicMaterial,
        request: &[u8],
    ) -> Result<Vec<u8>, HeJobError> {
        let (kind, _) = Self::request_kind(workload_id)?;
        // Kind first, so a wrong message gets a clear error whatever its body.
        let info = archipelago_he::peek_header(request)?;
        if info.kind != kind {
            return Err(HeError::WrongKind {
                expected: kind.name(),
                found: info.kind.name().to_string(),
            }
            .into());
        }
        match workload_id {
            CLASSIFY_WORKLOAD_ID => {
                let head = self
                    .head
                    .as_ref()
                    .map_err(|e| HeJobError::NoHead(e.clone()))?;
                Ok(archipelago_he::evaluate_classify(key, head, request)?)
            }
            _ => Ok(archipelago_he::evaluate_aggregate(key, request)?),
        }
    }

    async fn key(
        &self,
        client: &CoordinatorClient,
        key_id: &str,
    ) -> Result<Arc<HePublicMaterial>, HeJobError> {
        if let Some(pm) = self.keys.lock().ok().and_then(|c| c.get(key_id)) {
            return Ok(pm);
        }
        let material = client.he_key(key_id).await.map_err(|e| match e.status() {
            Some(404) => HeJobError::UnknownKey(key_id.to_string()),
            Some(422) if e.code() == Some("wrong_key_kind") => {
                HeJobError::WrongKeyKind(key_id.to_string())
            }
            Some(s) if (400..500).contains(&s) => HeJobError::BadKey {
                key_id: key_id.to_string(),
                detail: e.to_string(),
            },
            _ => HeJobError::KeyFetch(e),
        })?;
        let key_id_owned = key_id.to_string();
        let pm = tokio::task::spawn_blocking(move || Self::parse_key(&key_id_owned, &material))
            .await
            .map_err(|_| HeJobError::Internal)??;
        let pm = Arc::new(pm);
        if let Ok(mut c) = self.keys.lock() {
            c.put(pm.clone());
        }
        Ok(pm)
    }

    /// Runs one leased HE job end to end: decode, fetch the key, evaluate.
    pub async fn run(
        self: &Arc<Self>,
        client: &CoordinatorClient,
        workload_id: i64,
        job_key_id: Option<&str>,
        input: &serde_json::Value,
    ) -> Result<HeOutput, HeJobError> {
        let (key_id, request) = Self::decode_input(workload_id, job_key_id, input)?;
        let key = self.key(client, &key_id).await?;
        let me = self.clone();
        let started = Instant::now();
        let response =
            tokio::task::spawn_blocking(move || me.evaluate(workload_id, &key, &request))
                .await
                .map_err(|_| HeJobError::Internal)??;
        let execution_ms = (started.elapsed().as_millis() as i64).max(1);
        let output = serde_json::to_value(EncryptedPayload {
            encrypted: true,
            key_id,
            ciphertext: b64::encode_url(&response),
            enclave_key_id: None,
        })
        .map_err(|_| HeJobError::Internal)?;
        Ok(HeOutput {
            output,
            response_len: response.len(),
            execution_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archipelago_he::{encrypt_features, generate_keypair, AggregateColumn, AggregateSchema};
    use archipelago_proto::island::HeKeyMaterial;
    use serde_json::json;

    fn unit(dim: usize, seed: u64) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn payload(key_id: &str, bytes: &[u8]) -> serde_json::Value {
        json!({"encrypted": true, "key_id": key_id, "ciphertext": b64::encode_url(bytes)})
    }

    fn material(pm: &HePublicMaterial) -> HeKeyMaterial {
        HeKeyMaterial {
            key_id: pm.key_id().into(),
            public_key: b64::encode_std(pm.to_bytes()),
            evaluation_keys: None,
        }
    }

    #[test]
    fn classify_with_the_builtin_head_matches_the_plaintext_head() {
        let ev = HeEvaluator::builtin();
        let head = builtin_head().unwrap();
        assert_eq!(ev.classes(), Some(head.labels.len()));
        let (sk, pm) = generate_keypair().unwrap();
        let pm2 = HeEvaluator::parse_key(pm.key_id(), &material(&pm)).unwrap();
        for seed in 0..3 {
            let x = unit(384, seed);
            let req = encrypt_features(&sk, &x).unwrap();
            let input = payload(sk.key_id(), &req);
            let (kid, bytes) =
                HeEvaluator::decode_input(CLASSIFY_WORKLOAD_ID, Some(sk.key_id()), &input).unwrap();
            assert_eq!(kid, sk.key_id());
            let resp = ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm2, &bytes).unwrap();
            let scores = archipelago_he::decrypt_scores(&sk, &resp, head.labels.len()).unwrap();
            let plain = archipelago_inference::classify::LinearHead::builtin()
                .unwrap()
                .logits(&x);
            let best = plain
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0;
            assert_eq!(scores.argmax(), best);
        }
    }

    #[test]
    fn aggregate_runs_on_the_island() {
        let ev = HeEvaluator::builtin();
        let (sk, pm) = generate_keypair().unwrap();
        let schema = AggregateSchema {
            columns: vec![AggregateColumn::Value {
                name: "v".into(),
                scale: 10.0,
                min: 0.0,
                max: 100.0,
            }],
        };
        let recs = vec![vec![1.5], vec![2.5], vec![6.0]];
        let req = archipelago_he::encrypt_records(&sk, &schema, &recs).unwrap();
        let resp = ev.evaluate(AGGREGATE_WORKLOAD_ID, &pm, &req).unwrap();
        let out = archipelago_he::decrypt_aggregate(&sk, &schema, &resp).unwrap();
        assert_eq!(out.count, 3);
    }

    #[test]
    fn bad_inputs_fail_with_codes_and_no_payload_in_messages() {
        let ev = HeEvaluator::builtin();
        let (sk, pm) = generate_keypair().unwrap();
        let (other_sk, other_pm) = generate_keypair().unwrap();
        let x = unit(384, 9);
        let req = encrypt_features(&sk, &x).unwrap();
        let code = |r: Result<Vec<u8>, HeJobError>| r.unwrap_err().code();

        // Workload without an HE evaluator.
        assert_eq!(
            HeEvaluator::decode_input(1, None, &payload(sk.key_id(), &req))
                .unwrap_err()
                .code(),
            "unsupported_workload"
        );
        // Not an encrypted payload / not base64 / key id differs.
        for bad in [
            json!({"text": "secret words"}),
            json!({"encrypted": false, "key_id": sk.key_id(), "ciphertext": "AAAA"}),
            json!({"encrypted": true, "key_id": sk.key_id(), "ciphertext": "***"}),
        ] {
            let e = HeEvaluator::decode_input(CLASSIFY_WORKLOAD_ID, None, &bad).unwrap_err();
            assert_eq!(e.code(), "he_bad_payload", "{e}");
            assert!(!e.to_string().contains("secret"));
        }
        let e = HeEvaluator::decode_input(
            CLASSIFY_WORKLOAD_ID,
            Some(other_sk.key_id()),
            &payload(sk.key_id(), &req),
        )
        .unwrap_err();
        assert_eq!(e.code(), "he_bad_payload");
        // Oversized: refused from the base64 length, before decoding.
        let big = vec![0u8; MAX_CLASSIFY_REQUEST_BYTES + 1024];
        let e = HeEvaluator::decode_input(CLASSIFY_WORKLOAD_ID, None, &payload(sk.key_id(), &big))
            .unwrap_err();
        assert_eq!(e.code(), "he_too_large", "{e}");
        // Oversized bytes handed straight to the evaluator.
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &big)),
            "he_malformed"
        );
        let mut big_valid_header = req.clone();
        big_valid_header.resize(MAX_CLASSIFY_REQUEST_BYTES + 1, 0);
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &big_valid_header)),
            "he_too_large"
        );
        // Malformed: truncated, trailing bytes, bad magic, garbage, empty.
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &req[..req.len() - 7])),
            "he_malformed"
        );
        let mut trailing = req.clone();
        trailing.push(0);
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &trailing)),
            "he_malformed"
        );
        let mut magic = req.clone();
        magic[0] = b'X';
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &magic)),
            "he_malformed"
        );
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, b"")),
            "he_malformed"
        );
        // A coefficient not reduced modulo q (all-ones bytes in the body).
        let mut unreduced = req.clone();
        let n = unreduced.len();
        unreduced[n - 2000..n - 100].fill(0xff);
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &unreduced)),
            "he_malformed"
        );
        // Wrong parameters: unknown parameter-set id in the header.
        let mut params = req.clone();
        params[6] = 0x77;
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &params)),
            "he_wrong_params"
        );
        // Wrong kind: public material or an aggregate request as a classify request.
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, pm.to_bytes())),
            "he_wrong_kind"
        );
        assert_eq!(
            code(ev.evaluate(AGGREGATE_WORKLOAD_ID, &pm, &req)),
            "he_wrong_kind"
        );
        // Encrypted to another key than the job's.
        assert_eq!(
            code(ev.evaluate(CLASSIFY_WORKLOAD_ID, &other_pm, &req)),
            "he_key_mismatch"
        );
        // Key material: not ARHE, a secret key (wrong kind), another key's material.
        let mut m = material(&pm);
        m.public_key = b64::encode_std(&[7u8; 32]);
        assert_eq!(
            HeEvaluator::parse_key(pm.key_id(), &m).unwrap_err().code(),
            "he_bad_key"
        );
        m.public_key = b64::encode_std(&sk.to_bytes());
        assert_eq!(
            HeEvaluator::parse_key(pm.key_id(), &m).unwrap_err().code(),
            "he_wrong_key_kind"
        );
        let e = HeEvaluator::parse_key(pm.key_id(), &material(&other_pm)).unwrap_err();
        assert_eq!(e.code(), "he_bad_key");
        assert!(e.to_string().contains(other_pm.key_id()));
    }

    #[test]
    fn the_key_cache_is_bounded() {
        let mut c = KeyCache::default();
        let (_, pm) = generate_keypair().unwrap();
        let pm = Arc::new(pm);
        c.put(pm.clone());
        c.put(pm.clone());
        assert_eq!(c.order.len(), 1);
        assert!(c.get(pm.key_id()).is_some());
        assert!(c.get("ck_nope").is_none());
    }
}
