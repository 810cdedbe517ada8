//! The relying-party step on the user's machine: every enclave the
//! coordinator offers is verified and appraised with the **user's** policy.
//! The coordinator's own verdict (`attested_at`, `measurement`) is only
//! displayed, never trusted: the evidence is verified to the vendor root
//! (or the user's sim roots), appraised, and its report data must bind the
//! offered public key, its expiry and the nonce.
//!
//! Recipients are then drawn at random among the accepted enclaves,
//! preferring distinct islands, so the coordinator can route the job only
//! among them and cannot steer it to one island of its choosing.

use archipelago_attest::{
    check_key_binding, verify_and_appraise, AttestError, Evidence, Policy, TeeType,
};
use archipelago_proto::api::EnclaveInfo;
use archipelago_proto::{b64, KeyId, KeyPrefix, PublicKey};
use rand::seq::SliceRandom;
use serde::Serialize;

/// An enclave key the user's policy accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedEnclave {
    pub key_id: KeyId,
    #[serde(serialize_with = "ser_pk")]
    pub public_key: PublicKey,
    pub tee: TeeType,
    pub island_id: String,
    /// Primary measurement as verified (hex).
    pub measurement: Option<String>,
    pub key_expires_at: i64,
    pub valid_until: i64,
    pub workload_ids: Vec<i64>,
}

fn ser_pk<S: serde::Serializer>(pk: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&pk.to_base64())
}

/// Why an enclave was refused (for grouping in messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefusalReason {
    /// The key id or public key offered is malformed or inconsistent.
    BadKey,
    /// The key is past its expiry (or the coordinator stopped routing it).
    Expired,
    /// The evidence JSON could not be parsed.
    MalformedEvidence,
    /// Signature, certificate chain or report format check failed.
    Verification,
    /// Authentic evidence that the policy refuses; `field` names the rule.
    Policy { field: String },
    /// The evidence does not bind this key, expiry and nonce.
    Binding,
}

impl RefusalReason {
    /// Human summary, e.g. "measurement not in allow-list".
    pub fn summary(&self) -> String {
        match self {
            RefusalReason::BadKey => "its key id does not match its key".into(),
            RefusalReason::Expired => "its key expired".into(),
            RefusalReason::MalformedEvidence => "its evidence is malformed".into(),
            RefusalReason::Verification => "its evidence failed verification".into(),
            RefusalReason::Policy { field } if field.starts_with("measurement") => {
                "measurement not in allow-list".into()
            }
            RefusalReason::Policy { field } if field == "tee" => {
                "TEE type not accepted by your policy".into()
            }
            RefusalReason::Policy { field } => format!("policy rule {field} failed"),
            RefusalReason::Binding => "its evidence does not bind its key".into(),
        }
    }
}

/// A refused enclave and the full reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub key_id: String,
    pub tee_type: String,
    pub island_id: String,
    /// Measurement the coordinator reported (informational, unverified).
    pub measurement: Option<String>,
    pub reason: RefusalReason,
    pub detail: String,
}

/// The verdict on a list of enclaves.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Appraisal {
    pub accepted: Vec<VerifiedEnclave>,
    pub refused: Vec<Refusal>,
}

/// Verifies one enclave.
pub fn appraise_enclave(
    e: &EnclaveInfo,
    policy: &Policy,
    now: u64,
) -> Result<VerifiedEnclave, Box<Refusal>> {
    let refuse = |reason: RefusalReason, detail: String| {
        Box::new(Refusal {
            key_id: e.key_id.chars().take(64).collect(),
            tee_type: e.tee_type.chars().take(16).collect(),
            island_id: e.island_id.chars().take(64).collect(),
            measurement: e
                .measurement
                .as_ref()
                .map(|m| m.chars().take(128).collect()),
            reason,
            detail,
        })
    };
    let pk = PublicKey::from_base64(&e.public_key)
        .map_err(|err| refuse(RefusalReason::BadKey, format!("public_key: {err}")))?;
    let id = KeyId::parse(&e.key_id)
        .map_err(|err| refuse(RefusalReason::BadKey, format!("key_id: {err}")))?;
    if id.prefix() != KeyPrefix::Enclave || !id.matches(&pk.0) {
        return Err(refuse(
            RefusalReason::BadKey,
            format!(
                "key_id is not the ek_ id of public_key (that is {})",
                KeyId::enclave(&pk.0)
            ),
        ));
    }
    if e.key_expires_at <= now as i64 {
        return Err(refuse(
            RefusalReason::Expired,
            format!("key expired at {} (now {now})", e.key_expires_at),
        ));
    }
    let nonce = b64::decode_any(&e.nonce, 1024)
        .map_err(|err| refuse(RefusalReason::MalformedEvidence, format!("nonce: {err}")))?;
    let evidence: Evidence = serde_json::from_value(e.evidence.clone())
        .map_err(|err| refuse(RefusalReason::MalformedEvidence, err.to_string()))?;
    let result = verify_and_appraise(&evidence, policy, now).map_err(|err| match &err {
        AttestError::Policy(p) => refuse(
            RefusalReason::Policy {
                field: p.field.clone(),
            },
            err.to_string(),
        ),
        _ => refuse(RefusalReason::Verification, err.to_string()),
    })?;
    check_key_binding(&result, &pk.0, e.key_expires_at as u64, &nonce)
        .map_err(|err| refuse(RefusalReason::Binding, err.to_string()))?;
    Ok(VerifiedEnclave {
        key_id: id,
        public_key: pk,
        tee: result.tee,
        island_id: e.island_id.clone(),
        measurement: result.primary_measurement_hex().map(str::to_string),
        key_expires_at: e.key_expires_at,
        valid_until: e.valid_until,
        workload_ids: e.workload_ids.clone(),
    })
}

/// Verifies every enclave of a list with the user's policy at `now`.
pub fn appraise_enclaves(list: &[EnclaveInfo], policy: &Policy, now: u64) -> Appraisal {
    let mut a = Appraisal::default();
    for e in list {
        match appraise_enclave(e, policy, now) {
            Ok(v) => {
                if !a.accepted.iter().any(|x| x.key_id == v.key_id) {
                    a.accepted.push(v);
                }
            }
            Err(r) => {
                let r = *r;
                tracing::debug!(key_id = %r.key_id, reason = ?r.reason, "enclave refused by the user's policy");
                a.refused.push(r);
            }
        }
    }
    a
}

/// Picks up to `k` recipients at random, one per island first, then more
/// keys of islands already chosen.
pub fn pick_recipients(accepted: &[VerifiedEnclave], k: usize) -> Vec<VerifiedEnclave> {
    let mut pool: Vec<&VerifiedEnclave> = accepted.iter().collect();
    pool.shuffle(&mut rand::rngs::OsRng);
    let mut chosen: Vec<VerifiedEnclave> = Vec::new();
    for e in &pool {
        if chosen.len() < k && !chosen.iter().any(|c| c.island_id == e.island_id) {
            chosen.push((*e).clone());
        }
    }
    for e in &pool {
        if chosen.len() < k && !chosen.iter().any(|c| c.key_id == e.key_id) {
            chosen.push((*e).clone());
        }
    }
    chosen
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use archipelago_attest::{key_binding, SimEvidenceSource, SimRoot};
    use archipelago_proto::SecretKey;

    /// A sim enclave offer, evidence made with `root` for `measurement`.
    pub(crate) fn offer(
        root: &[u8; 32],
        measurement: [u8; 48],
        island: &str,
        now: u64,
    ) -> (SecretKey, EnclaveInfo) {
        let ek = SecretKey::generate();
        let expires = now + 3600;
        let nonce = [9u8; 32];
        let src = SimEvidenceSource::new(SimRoot::from_seed(root), measurement);
        let ev = src.collect_at(&key_binding(&ek.public().0, expires, &nonce), now);
        let info = EnclaveInfo {
            key_id: ek.enclave_id().to_string(),
            public_key: ek.public().to_base64(),
            tee_type: "sim".into(),
            island_id: island.into(),
            key_expires_at: expires as i64,
            nonce: b64::encode_std(&nonce),
            attested_at: now as i64,
            valid_until: now as i64 + 1200,
            evidence: serde_json::to_value(&ev).unwrap(),
            measurement: Some(hex::encode(measurement)),
            workload_ids: vec![1, 5],
        };
        (ek, info)
    }

    pub(crate) fn sim_root() -> [u8; 32] {
        let mut seed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
        seed
    }

    pub(crate) fn policy_for(root: &[u8; 32]) -> Policy {
        Policy::from_toml_str(&crate::config::dev_sim_policy_toml(
            &SimRoot::from_seed(root).public_key(),
        ))
        .unwrap()
    }

    #[test]
    fn accepts_good_sim_evidence_under_a_sim_policy_only() {
        let root = sim_root();
        let now = now_secs();
        let (ek, info) = offer(&root, [1; 48], "isl_a", now);
        let a = appraise_enclaves(std::slice::from_ref(&info), &policy_for(&root), now);
        assert_eq!(a.accepted.len(), 1, "{:?}", a.refused);
        assert_eq!(a.accepted[0].public_key, ek.public());
        // The production policy refuses sim.
        let a = appraise_enclaves(&[info], &Policy::production(), now);
        assert!(a.accepted.is_empty());
        assert_eq!(
            a.refused[0].reason,
            RefusalReason::Policy {
                field: "tee".into()
            }
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let root = sim_root();
        let now = now_secs();
        let policy = policy_for(&root);
        // Another root: verification fails.
        let (_, foreign) = offer(&sim_root(), [1; 48], "isl_b", now);
        // Key swapped: binding fails.
        let (_, mut swapped) = offer(&root, [1; 48], "isl_c", now);
        let other = SecretKey::generate();
        swapped.public_key = other.public().to_base64();
        swapped.key_id = other.enclave_id().to_string();
        // Id not matching the key.
        let (_, mut bad_id) = offer(&root, [1; 48], "isl_d", now);
        bad_id.key_id = other.enclave_id().to_string();
        // Expired.
        let (_, mut expired) = offer(&root, [1; 48], "isl_e", now);
        expired.key_expires_at = now as i64 - 1;
        // Garbage evidence.
        let (_, mut garbage) = offer(&root, [1; 48], "isl_f", now);
        garbage.evidence = serde_json::json!({"tee": "sim", "evidence": "!!"});
        // Measurement outside the allow-list.
        let mut pinned = policy.clone();
        pinned.tees.get_mut(&TeeType::Sim).unwrap().measurements =
            Some(vec![hex::encode([2u8; 48])]);
        let (_, good) = offer(&root, [1; 48], "isl_g", now);
        let a = appraise_enclaves(&[foreign, swapped, bad_id, expired, garbage], &policy, now);
        let reasons: Vec<_> = a.refused.iter().map(|r| r.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![
                RefusalReason::Verification,
                RefusalReason::Binding,
                RefusalReason::BadKey,
                RefusalReason::Expired,
                RefusalReason::MalformedEvidence
            ]
        );
        let a = appraise_enclaves(&[good], &pinned, now);
        assert_eq!(
            a.refused[0].reason.summary(),
            "measurement not in allow-list"
        );
    }

    #[test]
    fn picks_distinct_islands_first() {
        let root = sim_root();
        let now = now_secs();
        let p = policy_for(&root);
        let infos: Vec<_> = ["a", "a", "a", "b", "c"]
            .iter()
            .map(|i| offer(&root, [1; 48], i, now).1)
            .collect();
        let a = appraise_enclaves(&infos, &p, now);
        for _ in 0..10 {
            let r = pick_recipients(&a.accepted, 3);
            let mut islands: Vec<_> = r.iter().map(|e| e.island_id.clone()).collect();
            islands.sort();
            assert_eq!(islands, vec!["a", "b", "c"]);
        }
        assert_eq!(pick_recipients(&a.accepted, 16).len(), 5);
    }
}
