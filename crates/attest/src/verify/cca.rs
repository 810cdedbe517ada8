//! Arm CCA verifier. The evidence is a CCA attestation token: a CBOR
//! collection (tag 399) holding a platform token signed by the platform's
//! CPAK and a realm token signed by the realm attestation key (RAK). There
//! is no single vendor root: the CPAKs come from the operator's endorsement
//! list ([`TrustAnchors::cca`](crate::TrustAnchors)), matched by instance id.
//! We verify the platform token with the anchor, the realm token with the
//! RAK it carries, and that the platform challenge is the hash of that RAK
//! (binding the two), then report the realm measurements (RIM, REMs), the
//! platform software components, the lifecycle and the realm challenge as
//! the 64-byte report data.

use std::collections::BTreeMap;

use ciborium::Value;
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::cose::{alg, get_int, parse_sign1, payload_map, verify_sign1, Es};
use crate::anchors::{CcaCurve, CcaTrustAnchor};
use crate::{AttestationResult, TcbInfo, TeeType, VerifyError};

const T: TeeType = TeeType::Trustzone;
const TAG_CCA_TOKEN: u64 = 399;
const KEY_PLATFORM: i64 = 44234;
const KEY_REALM: i64 = 44241;
const CHALLENGE: i64 = 10;
const INSTANCE_ID: i64 = 256;
const PROFILE: i64 = 265;
const IMPLEMENTATION_ID: i64 = 2396;
const LIFECYCLE: i64 = 2395;
const SW_COMPONENTS: i64 = 2399;
const PLATFORM_CONFIG: i64 = 2401;
const REALM_PERSONALIZATION: i64 = 44235;
const REALM_HASH_ALG: i64 = 44236;
const REALM_PUBKEY: i64 = 44237;
const REALM_RIM: i64 = 44238;
const REALM_REMS: i64 = 44239;
const REALM_PUBKEY_HASH_ALG: i64 = 44240;

fn bytes<'a>(m: &'a [(Value, Value)], key: i64, name: &str) -> Result<&'a [u8], VerifyError> {
    match get_int(m, key) {
        Some(Value::Bytes(b)) => Ok(b),
        Some(_) => Err(VerifyError::malformed(T, name, "not a byte string")),
        None => Err(VerifyError::malformed(T, name, "missing")),
    }
}

fn text(m: &[(Value, Value)], key: i64) -> Option<&str> {
    get_int(m, key).and_then(Value::as_text)
}

fn hash(alg: &str, data: &[u8]) -> Result<Vec<u8>, VerifyError> {
    Ok(match alg {
        "sha-256" => Sha256::digest(data).to_vec(),
        "sha-384" => Sha384::digest(data).to_vec(),
        "sha-512" => Sha512::digest(data).to_vec(),
        other => {
            return Err(VerifyError::mismatch(
                T,
                "realm.public_key_hash_algo",
                "sha-256, sha-384 or sha-512",
                other,
            ));
        }
    })
}

/// The RAK as a SEC1 point: raw (0x04 ‖ x ‖ y) or a COSE_Key (EC2 P-384).
fn rak_sec1(raw: &[u8]) -> Result<Vec<u8>, VerifyError> {
    if raw.len() == 97 && raw[0] == 4 {
        return Ok(raw.to_vec());
    }
    use coset::CborSerializable as _;
    let k = coset::CoseKey::from_slice(raw).map_err(|e| {
        VerifyError::malformed(
            T,
            "realm.public_key",
            format!("neither SEC1 nor COSE_Key: {e}"),
        )
    })?;
    let mut x = None;
    let mut y = None;
    for (l, v) in &k.params {
        match (l, v) {
            (coset::Label::Int(-2), Value::Bytes(b)) => x = Some(b.clone()),
            (coset::Label::Int(-3), Value::Bytes(b)) => y = Some(b.clone()),
            _ => {}
        }
    }
    match (x, y) {
        (Some(x), Some(y)) if x.len() == 48 && y.len() == 48 => Ok([&[4u8][..], &x, &y].concat()),
        _ => Err(VerifyError::malformed(
            T,
            "realm.public_key",
            "COSE_Key is not an EC2 P-384 key",
        )),
    }
}

/// Verify a CCA token against the operator's platform trust anchors.
pub fn verify_cca(
    token: &[u8],
    anchors: &[CcaTrustAnchor],
) -> Result<AttestationResult, VerifyError> {
    let v: Value = ciborium::from_reader(token)
        .map_err(|e| VerifyError::malformed(T, "token", format!("not CBOR: {e}")))?;
    let coll = match v {
        Value::Tag(TAG_CCA_TOKEN, inner) => match *inner {
            Value::Map(m) => m,
            _ => {
                return Err(VerifyError::malformed(
                    T,
                    "token",
                    "tag 399 does not hold a map",
                ))
            }
        },
        _ => {
            return Err(VerifyError::malformed(
                T,
                "token",
                "not a CCA token collection (CBOR tag 399)",
            ))
        }
    };
    let ptok = parse_sign1(
        T,
        "platform_token",
        bytes(&coll, KEY_PLATFORM, "platform_token")?,
    )?;
    let rtok = parse_sign1(T, "realm_token", bytes(&coll, KEY_REALM, "realm_token")?)?;
    let p = payload_map(T, "platform_token", &ptok)?;
    let r = payload_map(T, "realm_token", &rtok)?;

    // Platform token: find the CPAK by instance id, then verify.
    let instance_id = bytes(&p, INSTANCE_ID, "platform.instance_id")?;
    let implementation_id = bytes(&p, IMPLEMENTATION_ID, "platform.implementation_id")?;
    if anchors.is_empty() {
        return Err(VerifyError::NoTrustAnchor {
            tee: T,
            detail: "no CCA platform trust anchors configured (--endorsement trust-anchors.json or [trustzone] trust_anchors)".into(),
        });
    }
    let anchor = anchors
        .iter()
        .find(|a| a.instance_id == instance_id)
        .ok_or_else(|| VerifyError::NoTrustAnchor {
            tee: T,
            detail: format!(
                "no trust anchor for platform instance id {}",
                hex::encode(instance_id)
            ),
        })?;
    if let Some(impl_id) = &anchor.implementation_id {
        if impl_id.as_slice() != implementation_id {
            return Err(VerifyError::mismatch(
                T,
                "platform.implementation_id",
                hex::encode(impl_id),
                hex::encode(implementation_id),
            ));
        }
    }
    let p_alg = alg(T, "platform_token", &ptok)?;
    let expected_alg = match anchor.curve {
        CcaCurve::P256 => Es::Es256,
        CcaCurve::P384 => Es::Es384,
    };
    if p_alg != expected_alg {
        return Err(VerifyError::mismatch(
            T,
            "platform_token.alg",
            format!("{expected_alg:?}"),
            format!("{p_alg:?}"),
        ));
    }
    verify_sign1(T, "platform_token", &ptok, p_alg, &anchor.public_key)?;

    // Realm token: signed by the RAK it carries, which the platform vouches
    // for through its challenge.
    let rak_raw = bytes(&r, REALM_PUBKEY, "realm.public_key")?;
    let rak = rak_sec1(rak_raw)?;
    let r_alg = alg(T, "realm_token", &rtok)?;
    if r_alg != Es::Es384 {
        return Err(VerifyError::mismatch(
            T,
            "realm_token.alg",
            "ES384",
            "ES256",
        ));
    }
    verify_sign1(T, "realm_token", &rtok, r_alg, &rak)?;
    let hash_alg = text(&r, REALM_PUBKEY_HASH_ALG).unwrap_or("sha-256");
    let rak_hash = hash(hash_alg, rak_raw)?;
    let p_challenge = bytes(&p, CHALLENGE, "platform.challenge")?;
    if p_challenge != rak_hash.as_slice() {
        return Err(VerifyError::mismatch(
            T,
            "platform.challenge",
            format!("{hash_alg}(realm public key) = {}", hex::encode(&rak_hash)),
            hex::encode(p_challenge),
        ));
    }

    let challenge = bytes(&r, CHALLENGE, "realm.challenge")?;
    let report_data: [u8; 64] = challenge.try_into().map_err(|_| {
        VerifyError::malformed(
            T,
            "realm.challenge",
            format!("{} bytes, expected 64", challenge.len()),
        )
    })?;
    let mut measurements = BTreeMap::new();
    measurements.insert(
        "rim".to_string(),
        hex::encode(bytes(&r, REALM_RIM, "realm.initial_measurement")?),
    );
    if let Ok(rpv) = bytes(&r, REALM_PERSONALIZATION, "realm.personalization_value") {
        measurements.insert("personalization_value".into(), hex::encode(rpv));
    }
    match get_int(&r, REALM_REMS) {
        Some(Value::Array(rems)) if rems.len() == 4 => {
            for (i, rem) in rems.iter().enumerate() {
                let b = rem.as_bytes().ok_or_else(|| {
                    VerifyError::malformed(T, format!("realm.rem{i}"), "not a byte string")
                })?;
                measurements.insert(format!("rem{i}"), hex::encode(b));
            }
        }
        _ => {
            return Err(VerifyError::malformed(
                T,
                "realm.extensible_measurements",
                "missing or not 4 entries",
            ))
        }
    }
    if let Some(Value::Array(sw)) = get_int(&p, SW_COMPONENTS) {
        for (i, c) in sw.iter().enumerate() {
            let Value::Map(cm) = c else {
                return Err(VerifyError::malformed(
                    T,
                    format!("platform.sw_components[{i}]"),
                    "not a map",
                ));
            };
            if let Some(Value::Bytes(mv)) = get_int(cm, 2) {
                let name = text(cm, 1)
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string());
                measurements.insert(format!("platform.sw.{name}"), hex::encode(mv));
            }
        }
    }
    let lifecycle = get_int(&p, LIFECYCLE)
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| VerifyError::malformed(T, "platform.security_lifecycle", "missing"))?;
    let mut claims = BTreeMap::new();
    claims.insert("security_lifecycle".into(), format!("{lifecycle:#06x}"));
    claims.insert("instance_id".into(), hex::encode(instance_id));
    claims.insert("implementation_id".into(), hex::encode(implementation_id));
    if let Some(prof) = text(&p, PROFILE) {
        claims.insert("platform_profile".into(), prof.to_string());
    }
    if let Some(h) = text(&r, REALM_HASH_ALG) {
        claims.insert("realm_hash_algo".into(), h.to_string());
    }
    if let Ok(cfg) = bytes(&p, PLATFORM_CONFIG, "platform.config") {
        claims.insert("platform_config".into(), hex::encode(cfg));
    }
    Ok(AttestationResult {
        tee: T,
        primary_measurement: "rim",
        measurements,
        tcb: TcbInfo::default(),
        // Only the "secured" lifecycle range 0x3000..=0x30ff is production.
        debug: !(0x3000..=0x30ff).contains(&lifecycle),
        report_data: Some(report_data),
        nitro: None,
        evidence_time: None,
        claims,
    })
}
