//! The attestation result: the one shape every verifier produces, whatever
//! the TEE. Relying parties (coordinator, client) appraise this against their
//! policy and check the key binding in it; they never look at raw evidence.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::TeeType;

/// Claims a verifier established from authentic evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttestationResult {
    /// The TEE that produced the evidence.
    pub tee: TeeType,
    /// Name of the measurement that policy `measurements` lists are matched
    /// against (e.g. `mr_enclave`, `mr_td`, `measurement`, `pcr0`, `rim`).
    pub primary_measurement: &'static str,
    /// Every measurement register reported, lowercase hex by name.
    pub measurements: BTreeMap<String, String>,
    /// TCB / security-version information.
    pub tcb: TcbInfo,
    /// Whether the TEE reports debug mode (memory readable by the host).
    pub debug: bool,
    /// The 64-byte report data (SGX/TDX/SEV/CCA challenge/sim), as hex.
    #[serde(serialize_with = "ser_opt_hex64")]
    pub report_data: Option<[u8; 64]>,
    /// Nitro-specific fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nitro: Option<NitroFields>,
    /// When the evidence was produced (unix seconds), where the TEE says.
    pub evidence_time: Option<u64>,
    /// Other reported facts (VMPL, product, signer ids...) for display.
    pub claims: BTreeMap<String, String>,
}

impl AttestationResult {
    /// The primary measurement's hex value, if reported.
    pub fn primary_measurement_hex(&self) -> Option<&str> {
        self.measurements
            .get(self.primary_measurement)
            .map(String::as_str)
    }
}

/// TCB information: vendor status (DCAP), advisories and numeric SVNs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcbInfo {
    /// Vendor TCB status (DCAP: `UpToDate`, `SWHardeningNeeded`, ...).
    pub status: Option<String>,
    /// Security advisory ids that apply (DCAP).
    pub advisory_ids: Vec<String>,
    /// Security version numbers by component (SEV: bootloader, tee, snp,
    /// microcode, fmc; SGX: isv_svn; sim: svn).
    pub svns: BTreeMap<String, u64>,
}

/// The user-controlled fields of a Nitro attestation document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NitroFields {
    /// Enclave module id.
    pub module_id: String,
    /// PCR digest algorithm (SHA384).
    pub digest: String,
    /// `public_key` (the binding puts ek_public here).
    #[serde(serialize_with = "ser_opt_hex")]
    pub public_key: Option<Vec<u8>>,
    /// `user_data` (the binding puts the 64-byte binding hash here).
    #[serde(serialize_with = "ser_opt_hex")]
    pub user_data: Option<Vec<u8>>,
    /// `nonce` (the binding puts the verifier's nonce here).
    #[serde(serialize_with = "ser_opt_hex")]
    pub nonce: Option<Vec<u8>>,
}

fn ser_opt_hex64<S: Serializer>(v: &Option<[u8; 64]>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

fn ser_opt_hex<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_str(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

/// JSON for an accepted result: `{"accepted":true,"policy_applied":…,"result":{…}}`.
pub fn result_json(r: &AttestationResult, policy_applied: bool) -> String {
    serde_json::json!({"accepted": true, "policy_applied": policy_applied, "result": r}).to_string()
}

/// JSON for a refusal: `{"accepted":false,"field":…,"error":…}`.
pub fn refusal_json(e: &crate::AttestError) -> String {
    serde_json::json!({"accepted": false, "field": e.field(), "error": e.to_string()}).to_string()
}

/// Human-readable listing of every claim in a result.
pub fn result_text(r: &AttestationResult) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "tee: {}", r.tee);
    let _ = writeln!(s, "primary measurement: {}", r.primary_measurement);
    for (k, v) in &r.measurements {
        let _ = writeln!(s, "measurement.{k}: {v}");
    }
    let _ = writeln!(
        s,
        "tcb.status: {}",
        r.tcb
            .status
            .as_deref()
            .unwrap_or("(not reported by this TEE)")
    );
    if !r.tcb.advisory_ids.is_empty() {
        let _ = writeln!(s, "tcb.advisory_ids: {}", r.tcb.advisory_ids.join(", "));
    }
    for (k, v) in &r.tcb.svns {
        let _ = writeln!(s, "svn.{k}: {v}");
    }
    let _ = writeln!(s, "debug: {}", r.debug);
    if let Some(rd) = &r.report_data {
        let _ = writeln!(s, "report_data: {}", hex::encode(rd));
    }
    if let Some(n) = &r.nitro {
        let _ = writeln!(s, "nitro.module_id: {}", n.module_id);
        let _ = writeln!(s, "nitro.digest: {}", n.digest);
        for (k, v) in [
            ("public_key", &n.public_key),
            ("user_data", &n.user_data),
            ("nonce", &n.nonce),
        ] {
            let _ = writeln!(
                s,
                "nitro.{k}: {}",
                v.as_ref()
                    .map(hex::encode)
                    .unwrap_or_else(|| "(absent)".into())
            );
        }
    }
    match r.evidence_time {
        Some(t) => {
            let _ = writeln!(s, "evidence_time: {t}");
        }
        None => {
            let _ = writeln!(s, "evidence_time: (not reported by this TEE)");
        }
    }
    for (k, v) in &r.claims {
        let _ = writeln!(s, "{k}: {v}");
    }
    s
}
