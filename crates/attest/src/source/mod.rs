//! Evidence production, used inside the enclave: ask the TEE for evidence
//! whose report data carries the key binding. One trait, one backend per way
//! a TEE exposes attestation to a guest (Linux configfs-tsm for SEV-SNP and
//! TDX, Gramine's `/dev/attestation` for SGX, sim).
//!
//! Left: the AWS Nitro NSM backend (`/dev/nsm`) needs an ioctl, i.e. unsafe
//! code, which the workspace denies; it would live behind a cargo feature
//! using `aws-nitro-enclaves-nsm-api` (request `Attestation { user_data =
//! binding, public_key = ek_public, nonce }`).

mod configfs;
mod gramine;
#[cfg(feature = "nsm")]
mod nitro;
mod sim;

pub use configfs::{vcek_from_cert_table, ConfigFsTsmSource, DEFAULT_TSM_ROOT};
pub use gramine::{GramineSgxSource, DEFAULT_GRAMINE_ROOT};
#[cfg(feature = "nsm")]
pub use nitro::NitroNsmSource;
pub use sim::{measure_files, SimEvidenceSource};

use crate::{Evidence, TeeType};

/// Evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The TEE interface is missing or failed.
    #[error("{tee} evidence source at {path}: {detail}")]
    Io {
        /// TEE type.
        tee: TeeType,
        /// Path used.
        path: String,
        /// What failed.
        detail: String,
    },
    /// The TEE returned something unexpected.
    #[error("{tee} evidence source returned invalid evidence: {source}")]
    Invalid {
        /// TEE type.
        tee: TeeType,
        /// What was wrong.
        #[source]
        source: crate::EvidenceFormatError,
    },
    /// The backend is not available in this build.
    #[error("{tee} evidence source is not available: {detail}")]
    Unavailable {
        /// TEE type.
        tee: TeeType,
        /// Why and what to do.
        detail: String,
    },
}

/// Something that can produce TEE evidence binding `report_data`.
pub trait EvidenceSource: Send + Sync {
    /// The TEE type this source produces.
    fn tee_type(&self) -> TeeType;
    /// Produce evidence whose report data is `report_data`.
    fn collect(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;
    /// Produce evidence binding an enclave key: by default report data =
    /// [`crate::key_binding`]`(ek_public, expires_at, nonce)`; TEEs with
    /// separate fields (Nitro) override this to fill them.
    fn collect_for_key(
        &self,
        ek_public: &[u8; 32],
        expires_at: u64,
        nonce: &[u8],
    ) -> Result<Evidence, EvidenceError> {
        self.collect(&crate::key_binding(ek_public, expires_at, nonce))
    }
}
