//! AWS Nitro Enclaves evidence from the Nitro Secure Module (`/dev/nsm`).
//!
//! Nitro's attestation document has separate fields where other TEEs have one
//! 64-byte report-data field, so this source implements
//! [`EvidenceSource::collect_for_key`]: `user_data` carries the key binding,
//! `public_key` the enclave key, `nonce` the verifier's nonce — exactly what
//! [`crate::check_key_binding`] checks. The ioctl itself lives in
//! `aws-nitro-enclaves-nsm-api`, which keeps `unsafe` out of this crate. The
//! document that comes back is verified like any other Nitro evidence (COSE
//! signature, certificate chain to the AWS Nitro root G1).

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use super::{EvidenceError, EvidenceSource};
use crate::binding::key_binding;
use crate::{Evidence, TeeType};

/// Evidence from the Nitro Secure Module of the enclave this process runs in.
#[derive(Debug, Clone, Copy, Default)]
pub struct NitroNsmSource;

impl NitroNsmSource {
    /// A source for the NSM device; checks it can be opened.
    pub fn open() -> Result<NitroNsmSource, EvidenceError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(unavailable(
                "cannot open /dev/nsm; run inside an AWS Nitro Enclave (or use --tee sim for development)",
            ));
        }
        nsm_exit(fd);
        Ok(NitroNsmSource)
    }

    fn attest(
        &self,
        user_data: &[u8],
        public_key: Option<&[u8]>,
        nonce: Option<&[u8]>,
    ) -> Result<Evidence, EvidenceError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(unavailable("cannot open /dev/nsm"));
        }
        let response = nsm_process_request(
            fd,
            Request::Attestation {
                user_data: Some(ByteBuf::from(user_data.to_vec())),
                nonce: nonce.map(|n| ByteBuf::from(n.to_vec())),
                public_key: public_key.map(|k| ByteBuf::from(k.to_vec())),
            },
        );
        nsm_exit(fd);
        match response {
            Response::Attestation { document } => Evidence::new(TeeType::Nitro, document, vec![])
                .map_err(|source| EvidenceError::Invalid {
                    tee: TeeType::Nitro,
                    source,
                }),
            Response::Error(code) => Err(unavailable(&format!(
                "the NSM refused the attestation request ({code:?})"
            ))),
            _ => Err(unavailable("the NSM answered with an unexpected response")),
        }
    }
}

fn unavailable(detail: &str) -> EvidenceError {
    EvidenceError::Unavailable {
        tee: TeeType::Nitro,
        detail: detail.into(),
    }
}

impl EvidenceSource for NitroNsmSource {
    fn tee_type(&self) -> TeeType {
        TeeType::Nitro
    }

    /// Report data alone goes into `user_data` (no key or nonce fields).
    fn collect(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        self.attest(report_data, None, None)
    }

    fn collect_for_key(
        &self,
        ek_public: &[u8; 32],
        expires_at: u64,
        nonce: &[u8],
    ) -> Result<Evidence, EvidenceError> {
        let binding = key_binding(ek_public, expires_at, nonce);
        self.attest(&binding, Some(ek_public), Some(nonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_nitro_enclave_the_source_is_unavailable() {
        if std::path::Path::new("/dev/nsm").exists() {
            return; // on real Nitro hardware this refusal does not apply
        }
        match NitroNsmSource::open() {
            Err(EvidenceError::Unavailable { tee, detail }) => {
                assert_eq!(tee, TeeType::Nitro);
                assert!(detail.contains("/dev/nsm"), "{detail}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
