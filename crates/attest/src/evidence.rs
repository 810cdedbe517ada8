//! The evidence envelope: what an enclave emits, what the coordinator stores
//! and serves, and what every relying party verifies for itself. It is
//! untrusted input everywhere, so parsing is size-limited before anything is
//! decoded.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::TeeType;

/// Largest raw evidence blob accepted (a DCAP quote with its certification
/// chain is about 5 KiB, a Nitro document about 5 KiB).
pub const MAX_EVIDENCE_BYTES: usize = 64 * 1024;
/// Largest single endorsement (DCAP collateral JSON is about 16 KiB).
pub const MAX_ENDORSEMENT_BYTES: usize = 256 * 1024;
/// Most endorsements carried with one piece of evidence.
pub const MAX_ENDORSEMENTS: usize = 8;
/// Largest JSON document `Evidence::from_json` will look at.
pub const MAX_EVIDENCE_JSON_BYTES: usize = 2 * 1024 * 1024;

/// TEE evidence plus the endorsements needed to check it (the VCEK for SEV,
/// the DCAP collateral JSON for SGX/TDX). Bytes are standard base64 in JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EvidenceWire")]
pub struct Evidence {
    /// Which TEE produced it.
    pub tee: TeeType,
    /// The raw evidence (quote, report, COSE document, token, sim blob).
    #[serde(with = "b64")]
    pub evidence: Vec<u8>,
    /// Endorsements shipped with the evidence.
    #[serde(with = "b64_vec", default)]
    pub endorsements: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct EvidenceWire {
    tee: TeeType,
    #[serde(with = "b64")]
    evidence: Vec<u8>,
    #[serde(with = "b64_vec", default)]
    endorsements: Vec<Vec<u8>>,
}

/// Evidence that cannot even be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceFormatError {
    /// The JSON document is larger than allowed.
    #[error("evidence JSON is {found} bytes, more than the {max}-byte limit")]
    TooLarge {
        /// Bytes found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A field is larger than allowed.
    #[error("evidence field {field} is {found} bytes/items, more than the limit of {max}")]
    FieldTooLarge {
        /// Which field.
        field: &'static str,
        /// Size found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid evidence JSON.
    #[error(
        "evidence is not valid JSON of the form {{\"tee\",\"evidence\",\"endorsements\"}}: {0}"
    )]
    Json(String),
}

impl TryFrom<EvidenceWire> for Evidence {
    type Error = EvidenceFormatError;

    fn try_from(w: EvidenceWire) -> Result<Self, Self::Error> {
        let e = Evidence {
            tee: w.tee,
            evidence: w.evidence,
            endorsements: w.endorsements,
        };
        e.check_limits()?;
        Ok(e)
    }
}

impl Evidence {
    /// Build evidence and check the size limits.
    pub fn new(
        tee: TeeType,
        evidence: Vec<u8>,
        endorsements: Vec<Vec<u8>>,
    ) -> Result<Self, EvidenceFormatError> {
        let e = Evidence {
            tee,
            evidence,
            endorsements,
        };
        e.check_limits()?;
        Ok(e)
    }

    /// Check every size limit.
    pub fn check_limits(&self) -> Result<(), EvidenceFormatError> {
        if self.evidence.len() > MAX_EVIDENCE_BYTES {
            return Err(EvidenceFormatError::FieldTooLarge {
                field: "evidence",
                found: self.evidence.len(),
                max: MAX_EVIDENCE_BYTES,
            });
        }
        if self.endorsements.len() > MAX_ENDORSEMENTS {
            return Err(EvidenceFormatError::FieldTooLarge {
                field: "endorsements",
                found: self.endorsements.len(),
                max: MAX_ENDORSEMENTS,
            });
        }
        if let Some(e) = self
            .endorsements
            .iter()
            .find(|e| e.len() > MAX_ENDORSEMENT_BYTES)
        {
            return Err(EvidenceFormatError::FieldTooLarge {
                field: "endorsement",
                found: e.len(),
                max: MAX_ENDORSEMENT_BYTES,
            });
        }
        Ok(())
    }

    /// Parse evidence JSON, refusing oversized documents before decoding.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EvidenceFormatError> {
        if bytes.len() > MAX_EVIDENCE_JSON_BYTES {
            return Err(EvidenceFormatError::TooLarge {
                found: bytes.len(),
                max: MAX_EVIDENCE_JSON_BYTES,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| EvidenceFormatError::Json(e.to_string()))
    }

    /// Serialize to JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn decode_limited<E: serde::de::Error>(s: &str, max: usize) -> Result<Vec<u8>, E> {
    if s.len() > max.div_ceil(3) * 4 + 4 {
        return Err(E::custom(format!(
            "base64 field of {} chars exceeds the {max}-byte limit",
            s.len()
        )));
    }
    STANDARD
        .decode(s)
        .map_err(|e| E::custom(format!("invalid standard base64: {e}")))
}

mod b64 {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
        decode_limited(&s, MAX_EVIDENCE_BYTES)
    }
}

mod b64_vec {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for e in v {
            seq.serialize_element(&STANDARD.encode(e))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v: Vec<std::borrow::Cow<'de, str>> = Deserialize::deserialize(d)?;
        if v.len() > MAX_ENDORSEMENTS {
            return Err(serde::de::Error::custom(format!(
                "{} endorsements, more than the limit of {MAX_ENDORSEMENTS}",
                v.len()
            )));
        }
        v.iter()
            .map(|s| decode_limited(s, MAX_ENDORSEMENT_BYTES))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_uses_base64() {
        let e = Evidence::new(TeeType::Sev, vec![1, 2, 3], vec![vec![4, 5]]).unwrap();
        let j = e.to_json();
        assert_eq!(
            j,
            r#"{"tee":"sev","evidence":"AQID","endorsements":["BAU="]}"#
        );
        assert_eq!(Evidence::from_json(j.as_bytes()).unwrap(), e);
    }

    #[test]
    fn refuses_oversized_and_malformed() {
        let big = STANDARD.encode(vec![0u8; MAX_EVIDENCE_BYTES + 1]);
        let j = format!(r#"{{"tee":"sgx","evidence":"{big}","endorsements":[]}}"#);
        assert!(Evidence::from_json(j.as_bytes()).is_err());
        let many = ["\"AA==\""; MAX_ENDORSEMENTS + 1].join(",");
        let j = format!(r#"{{"tee":"sgx","evidence":"","endorsements":[{many}]}}"#);
        assert!(Evidence::from_json(j.as_bytes()).is_err());
        assert!(Evidence::from_json(br#"{"tee":"x","evidence":""}"#).is_err());
        assert!(Evidence::from_json(br#"{"tee":"sgx","evidence":"!!"}"#).is_err());
        let huge = vec![b' '; MAX_EVIDENCE_JSON_BYTES + 1];
        assert!(matches!(
            Evidence::from_json(&huge),
            Err(EvidenceFormatError::TooLarge { .. })
        ));
    }
}
