//! Verifier errors. Every refusal names the field that failed and, where it
//! makes sense, the expected and found values, so an operator can tell a
//! tampered report from an expired certificate from a missing endorsement.

use crate::TeeType;

/// Evidence could not be shown authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The evidence or an endorsement could not be parsed.
    #[error("{tee} evidence: {field} is malformed: {detail}")]
    Malformed {
        /// TEE type.
        tee: TeeType,
        /// The part that failed to parse.
        field: String,
        /// What was wrong.
        detail: String,
    },
    /// A signature did not verify.
    #[error("{tee} evidence: signature over {field} does not verify: {detail}")]
    BadSignature {
        /// TEE type.
        tee: TeeType,
        /// What was signed (e.g. `report`, `tcb_info`, `pck_certificate`).
        field: String,
        /// Details.
        detail: String,
    },
    /// A certificate chain does not lead to the pinned root.
    #[error("{tee} evidence: certificate chain at {field} is not trusted: {detail}")]
    Chain {
        /// TEE type.
        tee: TeeType,
        /// Which certificate (e.g. `vcek`, `ask`, `leaf`).
        field: String,
        /// Details.
        detail: String,
    },
    /// Something is outside its validity window at `now`.
    #[error(
        "{tee} evidence: {field} is not valid at {now}: valid from {not_before} to {not_after} \
         (unix seconds); verify with a time inside the window or fetch fresh evidence/collateral"
    )]
    OutsideValidity {
        /// TEE type.
        tee: TeeType,
        /// The certificate / collateral item.
        field: String,
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
        /// The time checked.
        now: u64,
    },
    /// A reported field has a value the verifier cannot accept.
    #[error("{tee} evidence: {field}: expected {expected}, found {found}")]
    Mismatch {
        /// TEE type.
        tee: TeeType,
        /// The field.
        field: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A required endorsement is missing.
    #[error("{tee} evidence: missing endorsement: {detail}")]
    MissingEndorsement {
        /// TEE type.
        tee: TeeType,
        /// What to supply.
        detail: String,
    },
    /// No trust anchor configured for this TEE.
    #[error("{tee} evidence: trust_anchor missing: {detail}")]
    NoTrustAnchor {
        /// TEE type.
        tee: TeeType,
        /// What to configure.
        detail: String,
    },
}

impl VerifyError {
    /// The name of the field that failed.
    pub fn field(&self) -> &str {
        match self {
            VerifyError::Malformed { field, .. }
            | VerifyError::BadSignature { field, .. }
            | VerifyError::Chain { field, .. }
            | VerifyError::OutsideValidity { field, .. }
            | VerifyError::Mismatch { field, .. } => field,
            VerifyError::MissingEndorsement { .. } => "endorsement",
            VerifyError::NoTrustAnchor { .. } => "trust_anchor",
        }
    }

    pub(crate) fn malformed(tee: TeeType, field: impl Into<String>, detail: impl ToString) -> Self {
        VerifyError::Malformed {
            tee,
            field: field.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn signature(tee: TeeType, field: impl Into<String>, detail: impl ToString) -> Self {
        VerifyError::BadSignature {
            tee,
            field: field.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn chain(tee: TeeType, field: impl Into<String>, detail: impl ToString) -> Self {
        VerifyError::Chain {
            tee,
            field: field.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn mismatch(
        tee: TeeType,
        field: impl Into<String>,
        expected: impl ToString,
        found: impl ToString,
    ) -> Self {
        VerifyError::Mismatch {
            tee,
            field: field.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// Verification or appraisal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The evidence is not authentic.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The evidence is authentic but the policy refuses it.
    #[error(transparent)]
    Policy(#[from] crate::PolicyRefusal),
}

impl AttestError {
    /// The name of the field that failed.
    pub fn field(&self) -> &str {
        match self {
            AttestError::Verify(e) => e.field(),
            AttestError::Policy(p) => &p.field,
        }
    }
}
