//! Archipelago attestation (IETF RATS vocabulary).
//!
//! An enclave produces **evidence** ([`Evidence`], via an [`EvidenceSource`])
//! whose report data binds its enclave key ([`key_binding`]). A **verifier**
//! ([`verify`]) checks the evidence against pinned vendor roots and
//! **endorsements** (VCEK, DCAP collateral, CCA trust anchors) and yields an
//! **attestation result** ([`AttestationResult`]). A **relying party**
//! (coordinator, client) appraises that result against its **policy**
//! ([`Policy`], reference values) and checks the key binding
//! ([`check_key_binding`]). [`verify_and_appraise`] does the first two in one
//! call; the coordinator and the client both use it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod anchors;
mod binding;
mod error;
mod evidence;
pub mod policy;
mod result;
pub mod source;
mod tee;
pub mod verify;

pub use anchors::{CcaTrustAnchor, TrustAnchors};
pub use binding::{check_key_binding, key_binding, BindingError, BINDING_DOMAIN};
pub use error::{AttestError, VerifyError};
pub use evidence::{Evidence, EvidenceFormatError};
pub use policy::{Policy, PolicyError, PolicyRefusal, TeePolicy};
pub use result::{refusal_json, result_json, result_text, AttestationResult, NitroFields, TcbInfo};
#[cfg(feature = "nsm")]
pub use source::NitroNsmSource;
pub use source::{
    measure_files, ConfigFsTsmSource, EvidenceError, EvidenceSource, GramineSgxSource,
    SimEvidenceSource, DEFAULT_GRAMINE_ROOT, DEFAULT_TSM_ROOT,
};
pub use tee::{TeeType, UnknownTeeType};
pub use verify::sim::{SimClaims, SimRoot, SimRootError};

/// Verify evidence for authenticity only: signatures, certificate chains to
/// the pinned vendor roots (or the operator anchors for sim and CCA),
/// validity times at `now` (unix seconds) and report-field sanity. No policy
/// is applied; use [`Policy::appraise`] or [`verify_and_appraise`].
pub fn verify(
    evidence: &Evidence,
    anchors: &TrustAnchors,
    now: u64,
) -> Result<AttestationResult, VerifyError> {
    evidence
        .check_limits()
        .map_err(|e| VerifyError::Malformed {
            tee: evidence.tee,
            field: "evidence".into(),
            detail: e.to_string(),
        })?;
    let result = match evidence.tee {
        TeeType::Sim => verify::sim::verify_sim(&evidence.evidence, &anchors.sim_roots, now),
        TeeType::Sgx | TeeType::Tdx => verify::dcap::verify_dcap(
            evidence.tee,
            &evidence.evidence,
            &evidence.endorsements,
            now,
        ),
        TeeType::Nitro => verify::nitro::verify_nitro(&evidence.evidence, now),
        TeeType::Sev => verify::sev::verify_sev(&evidence.evidence, &evidence.endorsements, now),
        TeeType::Trustzone => verify::cca::verify_cca(&evidence.evidence, &anchors.cca),
    };
    match &result {
        Ok(r) => {
            tracing::debug!(tee = %r.tee, evidence_len = evidence.evidence.len(), "evidence verified")
        }
        Err(e) => tracing::debug!(tee = %evidence.tee, field = e.field(), "evidence refused"),
    }
    result
}

/// Verify evidence and appraise it against `policy` (using the policy's
/// trust anchors). What coordinator and client call.
pub fn verify_and_appraise(
    evidence: &Evidence,
    policy: &Policy,
    now: u64,
) -> Result<AttestationResult, AttestError> {
    if evidence.tee == TeeType::Sim && !policy.accept_sim {
        return Err(PolicyRefusal {
            field: "tee".into(),
            expected: "a hardware TEE (accept_sim = false)".into(),
            found: "sim".into(),
        }
        .into());
    }
    let r = verify(evidence, &policy.anchors, now)?;
    policy.appraise(&r, now)?;
    Ok(r)
}
