//! Trust anchors the relying party supplies. Vendor roots (Intel SGX Root CA,
//! AMD ARK for Milan/Genoa/Turin, AWS Nitro root G1) are pinned in code; what
//! differs per operator is configured here: the sim root public keys and the
//! Arm CCA platform attestation keys (CPAKs), which for CCA come from the
//! operator's endorsement list rather than a single vendor root.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Largest CCA trust-anchor list accepted.
pub const MAX_CCA_ANCHORS_JSON: usize = 256 * 1024;

/// Anchors for the TEEs whose roots are operator-supplied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustAnchors {
    /// Ed25519 public keys of accepted sim roots.
    pub sim_roots: Vec<[u8; 32]>,
    /// Arm CCA platform attestation keys.
    pub cca: Vec<CcaTrustAnchor>,
}

/// Elliptic curve of a CCA platform key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcaCurve {
    /// NIST P-256 (ES256).
    P256,
    /// NIST P-384 (ES384).
    P384,
}

/// One CCA platform attestation key, matched by instance id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcaTrustAnchor {
    /// The platform instance id (0x01 ‖ hash of the key, 33 bytes).
    pub instance_id: Vec<u8>,
    /// Implementation id, if pinned.
    pub implementation_id: Option<Vec<u8>>,
    /// Curve of the key.
    pub curve: CcaCurve,
    /// SEC1 uncompressed point (0x04 ‖ x ‖ y).
    pub public_key: Vec<u8>,
}

/// The JSON/TOML form of a CCA trust anchor (as in veraison's test data):
/// `{"instance-id": hex, "implementation-id": hex, "pkey": {JWK}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CcaTrustAnchorSpec {
    /// Hex instance id.
    #[serde(rename = "instance-id")]
    pub instance_id: String,
    /// Hex implementation id.
    #[serde(rename = "implementation-id", default)]
    pub implementation_id: Option<String>,
    /// JWK public key.
    pub pkey: Jwk,
}

/// A JWK EC public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Must be "EC".
    pub kty: String,
    /// "P-256" or "P-384".
    pub crv: String,
    /// base64url x coordinate.
    pub x: String,
    /// base64url y coordinate.
    pub y: String,
}

/// A trust anchor could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("trust anchor: {0}")]
pub struct AnchorError(pub String);

impl CcaTrustAnchorSpec {
    /// Convert to a checked anchor.
    pub fn to_anchor(&self) -> Result<CcaTrustAnchor, AnchorError> {
        if self.pkey.kty != "EC" {
            return Err(AnchorError(format!(
                "pkey.kty {:?}, expected \"EC\"",
                self.pkey.kty
            )));
        }
        let (curve, len) = match self.pkey.crv.as_str() {
            "P-256" => (CcaCurve::P256, 32),
            "P-384" => (CcaCurve::P384, 48),
            other => {
                return Err(AnchorError(format!(
                    "pkey.crv {other:?}, expected P-256 or P-384"
                )))
            }
        };
        let dec = |name: &str, s: &str| {
            let v = URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|e| AnchorError(format!("pkey.{name} is not base64url: {e}")))?;
            if v.len() != len {
                return Err(AnchorError(format!(
                    "pkey.{name} is {} bytes, expected {len}",
                    v.len()
                )));
            }
            Ok(v)
        };
        let mut public_key = vec![4u8];
        public_key.extend(dec("x", &self.pkey.x)?);
        public_key.extend(dec("y", &self.pkey.y)?);
        let instance_id = hex::decode(&self.instance_id)
            .map_err(|e| AnchorError(format!("instance-id is not hex: {e}")))?;
        let implementation_id = self
            .implementation_id
            .as_deref()
            .map(hex::decode)
            .transpose()
            .map_err(|e| AnchorError(format!("implementation-id is not hex: {e}")))?;
        Ok(CcaTrustAnchor {
            instance_id,
            implementation_id,
            curve,
            public_key,
        })
    }
}

impl TrustAnchors {
    /// Parse a sim root public key (32 bytes, standard or URL-safe base64).
    pub fn sim_root_from_b64(text: &str) -> Result<[u8; 32], AnchorError> {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        let t = text.trim();
        let b = STANDARD
            .decode(t)
            .or_else(|_| URL_SAFE.decode(t))
            .map_err(|_| AnchorError("sim root public key is not base64".into()))?;
        b.try_into()
            .map_err(|_| AnchorError("sim root public key is not 32 bytes".into()))
    }

    /// Parse a CCA trust-anchor list (a JSON array of anchor specs).
    pub fn cca_from_json(bytes: &[u8]) -> Result<Vec<CcaTrustAnchor>, AnchorError> {
        if bytes.len() > MAX_CCA_ANCHORS_JSON {
            return Err(AnchorError(format!(
                "trust-anchor file is {} bytes, more than {MAX_CCA_ANCHORS_JSON}",
                bytes.len()
            )));
        }
        let specs: Vec<CcaTrustAnchorSpec> = serde_json::from_slice(bytes)
            .map_err(|e| AnchorError(format!("not a JSON anchor list: {e}")))?;
        specs.iter().map(CcaTrustAnchorSpec::to_anchor).collect()
    }
}
