//! HE keys of kind `he-bfv`: the secret key that stays in the user's keystore
//! and the public evaluation material registered with the coordinator.
//!
//! The island needs only the public key: evaluation is one plaintext ×
//! ciphertext product plus a re-randomising encryption, so there are no
//! relinearisation or rotation keys to upload. The key id is
//! self-certifying, exactly like X25519 client keys:
//! `"ck_" + base32(sha256(public material bytes))[..26]` (RFC 4648 base32,
//! lowercase, no padding), so anyone can check an id against its material.

use data_encoding::BASE32_NOPAD;
use fhe::bfv::{Encoding, SecretKey};
use fhe::proto::bfv::SecretKey as SecretKeyProto;
use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};
use fhe_traits::{DeserializeParametrized, FheDecoder, FheDecrypter};
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::params::SECRET_COEFF_BOUND;
use crate::wire::{self, MessageKind, KEY_ID_LEN, SEED_LEN};
use crate::{scaled, HeError, ParamSet};

/// Key kind string used in key registrations (`POST /confidential/keys {kind}`).
pub const KEY_KIND: &str = "he-bfv";

/// Upper bound on the size of serialised public material (the coordinator's
/// registration limit). The real size is [`public_material_len`].
pub const MAX_PUBLIC_MATERIAL_BYTES: usize = 256 * 1024;

/// Upper bound on the size of a serialised secret key.
pub const MAX_SECRET_KEY_BYTES: usize = 64 * 1024;

/// Exact wire size of public material under `param_set`.
pub fn public_material_len(param_set: ParamSet) -> usize {
    wire::HEADER_LEN + wire::packed_poly_len(param_set) + SEED_LEN
}

/// The self-certifying id of serialised public material.
pub fn key_id_for(public_material_bytes: &[u8]) -> String {
    let digest = Sha256::digest(public_material_bytes);
    let b32 = BASE32_NOPAD.encode(&digest).to_ascii_lowercase();
    format!("ck_{}", &b32[..KEY_ID_LEN - 3])
}

/// Generate a fresh `he-bfv` key pair under the default parameter set.
///
/// The secret key goes to the user's keystore ([`HeSecretKey::to_bytes`]);
/// the public material is registered with the coordinator
/// ([`HePublicMaterial::to_bytes`], kind [`KEY_KIND`]).
pub fn generate_keypair() -> Result<(HeSecretKey, HePublicMaterial), HeError> {
    generate_keypair_for(ParamSet::DEFAULT)
}

/// Generate a fresh key pair under a given parameter set.
pub fn generate_keypair_for(
    param_set: ParamSet,
) -> Result<(HeSecretKey, HePublicMaterial), HeError> {
    let par = param_set.bfv()?;
    let sk = SecretKey::random(par, &mut rand::rng());
    let mut secret = HeSecretKey::from_fhe(param_set, sk, String::new())?;
    // A BFV public key is a seeded secret-key encryption of zero (what
    // `fhe::bfv::PublicKey::new` builds): (pk0, pk1) = (e − a·s, a).
    let (c0, seed) = secret.encrypt_seeded(&[])?;
    let mut bytes = Vec::with_capacity(public_material_len(param_set));
    wire::write_header(&mut bytes, MessageKind::PublicMaterial, param_set);
    wire::write_poly(&mut bytes, &c0, param_set);
    bytes.extend_from_slice(&seed);
    let public = HePublicMaterial::from_parts(param_set, c0, seed, bytes)?;
    secret.key_id = public.key_id.clone();
    Ok((secret, public))
}

/// The user's `he-bfv` secret key. Zeroized on drop, never printed,
/// serialised only for the keystore.
pub struct HeSecretKey {
    param_set: ParamSet,
    /// `fhe`'s key (used for decryption; wipes itself on drop).
    inner: SecretKey,
    /// The secret polynomial in NTT form (used for encryption).
    s_ntt: Poly,
    key_id: String,
}

impl Drop for HeSecretKey {
    fn drop(&mut self) {
        self.s_ntt.zeroize();
    }
}

impl std::fmt::Debug for HeSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeSecretKey")
            .field("key_id", &self.key_id)
            .field("param_set", &self.param_set.name())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl HeSecretKey {
    fn from_fhe(param_set: ParamSet, inner: SecretKey, key_id: String) -> Result<Self, HeError> {
        let mut coeffs = SecretKeyProto::from(&inner).coeffs;
        let imported = Poly::try_convert_from(
            coeffs.as_slice(),
            scaled::context(param_set)?,
            false,
            Representation::PowerBasis,
        );
        coeffs.zeroize();
        let mut s_ntt = imported.map_err(HeError::backend_math("secret key import"))?;
        s_ntt.change_representation(Representation::Ntt);
        Ok(Self {
            param_set,
            inner,
            s_ntt,
            key_id,
        })
    }

    /// Seeded secret-key encryption of `m` (values mod t): returns c0 and the
    /// seed that c1 = a is expanded from; c0 = Δ·m + e − a·s.
    pub(crate) fn encrypt_seeded(&self, m: &[u64]) -> Result<(Poly, [u8; SEED_LEN]), HeError> {
        let par = self.param_set.bfv()?;
        let mut rng = rand::rng();
        let mut seed = [0u8; SEED_LEN];
        rng.fill_bytes(&mut seed);
        let a = wire::expand_seed(seed, par)?;
        let mut c0 = scaled::scaled_with_error(self.param_set, m, &mut rng)?;
        c0 -= &(&a * &self.s_ntt);
        Ok((c0, seed))
    }

    /// Id of the public material this key belongs to.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Parameter set.
    pub fn param_set(&self) -> ParamSet {
        self.param_set
    }

    pub(crate) fn inner(&self) -> &SecretKey {
        &self.inner
    }

    #[cfg(test)]
    pub(crate) fn s_ntt(&self) -> &Poly {
        &self.s_ntt
    }

    /// Keystore form: header, key id, then one signed byte per coefficient.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut coeffs = SecretKeyProto::from(&self.inner).coeffs;
        let mut out = Zeroizing::new(Vec::with_capacity(
            wire::HEADER_LEN + KEY_ID_LEN + coeffs.len(),
        ));
        wire::write_header(&mut out, MessageKind::SecretKey, self.param_set);
        out.extend_from_slice(self.key_id.as_bytes());
        // |c| ≤ 20 always (checked on load), so the cast is exact.
        out.extend(coeffs.iter().map(|c| *c as i8 as u8));
        coeffs.zeroize();
        out
    }

    /// Load a secret key from its keystore form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let (param_set, mut r) = wire::open(bytes, MessageKind::SecretKey, MAX_SECRET_KEY_BYTES)?;
        let key_id = r.key_id()?;
        let n = param_set.degree();
        let raw = r.take(n)?;
        r.finish()?;
        let mut coeffs: Zeroizing<Vec<i64>> =
            Zeroizing::new(raw.iter().map(|b| *b as i8 as i64).collect());
        if coeffs.iter().any(|c| c.abs() > SECRET_COEFF_BOUND) {
            return Err(HeError::Malformed {
                what: MessageKind::SecretKey.name(),
                reason: "secret coefficient outside the error distribution's support",
            });
        }
        let par = param_set.bfv()?;
        let mut proto = SecretKeyProto {
            coeffs: std::mem::take(&mut *coeffs),
        };
        let encoded = Zeroizing::new(proto.encode_to_vec());
        proto.coeffs.zeroize();
        let inner =
            SecretKey::from_bytes(&encoded, par).map_err(HeError::backend("secret key import"))?;
        Self::from_fhe(param_set, inner, key_id)
    }

    /// Check that `public` was derived from this secret key (same id, and its
    /// public key decrypts to zero). Run it when loading a key pair from a
    /// keystore.
    pub fn verify_public_material(&self, public: &HePublicMaterial) -> Result<(), HeError> {
        if public.key_id != self.key_id {
            return Err(HeError::KeyMismatch {
                expected: self.key_id.clone(),
                found: public.key_id.clone(),
            });
        }
        if public.param_set != self.param_set {
            return Err(HeError::ParameterMismatch {
                expected: self.param_set.name(),
                found: public.param_set.name(),
            });
        }
        let ct = wire::to_fhe_ciphertext([public.pk0.clone(), public.pk1.clone()], self.param_set)?;
        let pt = self
            .inner
            .try_decrypt(&ct)
            .map_err(HeError::backend("public key check"))?;
        let v = Vec::<u64>::try_decode(&pt, Encoding::poly())
            .map_err(HeError::backend("public key check"))?;
        if v.iter().any(|x| *x != 0) {
            return Err(HeError::KeyMismatch {
                expected: self.key_id.clone(),
                found: "public material of another secret key with the same id".into(),
            });
        }
        Ok(())
    }
}

/// Public evaluation material of an `he-bfv` key: the BFV public key, stored
/// with the key registration and handed to islands with each HE job.
#[derive(Clone)]
pub struct HePublicMaterial {
    param_set: ParamSet,
    /// pk0 = e − a·s (NTT form).
    pk0: Poly,
    /// pk1 = a, expanded from the seed (NTT form).
    pk1: Poly,
    bytes: Vec<u8>,
    key_id: String,
}

impl std::fmt::Debug for HePublicMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HePublicMaterial")
            .field("key_id", &self.key_id)
            .field("param_set", &self.param_set.name())
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl PartialEq for HePublicMaterial {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for HePublicMaterial {}

impl HePublicMaterial {
    fn from_parts(
        param_set: ParamSet,
        pk0: Poly,
        seed: [u8; SEED_LEN],
        bytes: Vec<u8>,
    ) -> Result<Self, HeError> {
        let pk1 = wire::expand_seed(seed, param_set.bfv()?)?;
        let key_id = key_id_for(&bytes);
        Ok(Self {
            param_set,
            pk0,
            pk1,
            bytes,
            key_id,
        })
    }

    /// Parse and validate public material (size limit, header, parameter set,
    /// exact length, every coefficient reduced, no trailing bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HeError> {
        let (param_set, mut r) = wire::open(
            bytes,
            MessageKind::PublicMaterial,
            MAX_PUBLIC_MATERIAL_BYTES,
        )?;
        let expected = public_material_len(param_set);
        if bytes.len() != expected {
            return Err(HeError::DimensionMismatch {
                what: "he-bfv public material length",
                expected,
                found: bytes.len(),
            });
        }
        let par = param_set.bfv()?;
        let c0 = wire::read_poly(&mut r, param_set, par)?;
        let seed = wire::read_seed(&mut r)?;
        r.finish()?;
        Self::from_parts(param_set, c0, seed, bytes.to_vec())
    }

    /// Parse public material and insist on a parameter set (an island that
    /// only supports some sets calls this).
    pub fn from_bytes_expecting(bytes: &[u8], param_set: ParamSet) -> Result<Self, HeError> {
        let pm = Self::from_bytes(bytes)?;
        if pm.param_set != param_set {
            return Err(HeError::ParameterMismatch {
                expected: param_set.name(),
                found: pm.param_set.name(),
            });
        }
        Ok(pm)
    }

    /// Canonical serialised form (what is uploaded and hashed into the id).
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The self-certifying key id `ck_…`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Parameter set.
    pub fn param_set(&self) -> ParamSet {
        self.param_set
    }

    pub(crate) fn public_polys(&self) -> (&Poly, &Poly) {
        (&self.pk0, &self.pk1)
    }

    /// Public-key encryption of `m` (values mod t): (u·pk0 + Δ·m + e1, u·pk1 + e2).
    fn encrypt_full(&self, m: &[u64]) -> Result<[Poly; 2], HeError> {
        let mut rng = rand::rng();
        let u = Zeroizing::new(scaled::small(self.param_set, &mut rng)?);
        let e2 = Zeroizing::new(scaled::small(self.param_set, &mut rng)?);
        let mut c0 = scaled::scaled_with_error(self.param_set, m, &mut rng)?;
        c0 += &(&*u * &self.pk0);
        let mut c1 = &*u * &self.pk1;
        c1 += &*e2;
        Ok([c0, c1])
    }
}

/// Something that can encrypt for an `he-bfv` key: the secret key (seeded,
/// half-size ciphertexts, lowest noise — use it for your own data) or the
/// public material (anyone can contribute records to an aggregate).
pub trait HeEncryptor: sealed::Sealed {}

impl HeEncryptor for HeSecretKey {}
impl HeEncryptor for HePublicMaterial {}

pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {
        fn key_id_str(&self) -> &str;
        fn params(&self) -> ParamSet;
        /// Encrypt `values` (centered, |v| < t/2) as polynomial coefficients
        /// 0..len and append the ciphertext's wire form to `out`.
        fn encrypt_coeffs(&self, values: &[i64], out: &mut Vec<u8>) -> Result<(), HeError>;
    }

    fn to_mod_t(values: &[i64], param_set: ParamSet) -> Result<Zeroizing<Vec<u64>>, HeError> {
        if values.len() > param_set.degree() {
            return Err(HeError::DimensionMismatch {
                what: "plaintext coefficient count",
                expected: param_set.degree(),
                found: values.len(),
            });
        }
        let t = param_set.plaintext_modulus() as i64;
        Ok(Zeroizing::new(
            values.iter().map(|v| v.rem_euclid(t) as u64).collect(),
        ))
    }

    impl Sealed for HeSecretKey {
        fn key_id_str(&self) -> &str {
            &self.key_id
        }
        fn params(&self) -> ParamSet {
            self.param_set
        }
        fn encrypt_coeffs(&self, values: &[i64], out: &mut Vec<u8>) -> Result<(), HeError> {
            let m = to_mod_t(values, self.param_set)?;
            let (c0, seed) = self.encrypt_seeded(&m)?;
            wire::write_seeded_ciphertext(out, &c0, &seed, self.param_set);
            Ok(())
        }
    }

    impl Sealed for HePublicMaterial {
        fn key_id_str(&self) -> &str {
            &self.key_id
        }
        fn params(&self) -> ParamSet {
            self.param_set
        }
        fn encrypt_coeffs(&self, values: &[i64], out: &mut Vec<u8>) -> Result<(), HeError> {
            let m = to_mod_t(values, self.param_set)?;
            let [c0, c1] = self.encrypt_full(&m)?;
            wire::write_ciphertext(out, &c0, &c1, self.param_set);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_round_trips_and_id_is_self_certifying() {
        let (sk, pm) = generate_keypair().unwrap();
        assert_eq!(pm.to_bytes().len(), public_material_len(ParamSet::DEFAULT));
        assert_eq!(pm.key_id(), key_id_for(pm.to_bytes()));
        assert_eq!(pm.key_id().len(), KEY_ID_LEN);
        assert!(pm.key_id().starts_with("ck_"));
        assert_eq!(sk.key_id(), pm.key_id());

        let pm2 = HePublicMaterial::from_bytes(pm.to_bytes()).unwrap();
        assert_eq!(pm2, pm);
        assert_eq!(pm2.key_id(), pm.key_id());

        let sk_bytes = sk.to_bytes();
        let sk2 = HeSecretKey::from_bytes(&sk_bytes).unwrap();
        assert_eq!(sk2.key_id(), sk.key_id());
        assert_eq!(*sk2.to_bytes(), *sk_bytes);
        sk2.verify_public_material(&pm).unwrap();

        let (_, other) = generate_keypair().unwrap();
        assert!(matches!(
            sk.verify_public_material(&other),
            Err(HeError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn key_id_known_answers() {
        // Computed independently: "ck_" + base32(sha256(m)).lower()[:26].
        assert_eq!(key_id_for(b""), "ck_4oymiquy7qobjgx36tejs35zeq");
        assert_eq!(key_id_for(b"archipelago"), "ck_eappukcoqojctra3r3ndy5hy2o");
    }

    #[test]
    fn debug_is_redacted() {
        let (sk, pm) = generate_keypair().unwrap();
        let s = format!("{sk:?}");
        assert!(s.contains("<redacted>"));
        assert!(s.len() < 200);
        assert!(format!("{pm:?}").len() < 200);
    }

    #[test]
    fn refusals() {
        let (sk, pm) = generate_keypair().unwrap();
        // Secret key where public material is expected and vice versa.
        assert!(matches!(
            HePublicMaterial::from_bytes(&sk.to_bytes()),
            Err(HeError::WrongKind { .. })
        ));
        assert!(matches!(
            HeSecretKey::from_bytes(pm.to_bytes()),
            Err(HeError::TooLarge { .. })
        ));
        // An X25519 public key is not HE material.
        assert_eq!(
            HePublicMaterial::from_bytes(&[7u8; 32]).unwrap_err(),
            HeError::BadMagic
        );
        // Oversized.
        let big = vec![0u8; MAX_PUBLIC_MATERIAL_BYTES + 1];
        assert!(matches!(
            HePublicMaterial::from_bytes(&big),
            Err(HeError::TooLarge { .. })
        ));
        // Truncated and padded.
        let b = pm.to_bytes();
        assert!(matches!(
            HePublicMaterial::from_bytes(&b[..b.len() - 1]),
            Err(HeError::DimensionMismatch { .. })
        ));
        let mut longer = b.to_vec();
        longer.push(0);
        assert!(matches!(
            HePublicMaterial::from_bytes(&longer),
            Err(HeError::DimensionMismatch { .. })
        ));
        // Secret coefficient out of range.
        let mut skb = sk.to_bytes().to_vec();
        let last = skb.len() - 1;
        skb[last] = 100;
        assert!(matches!(
            HeSecretKey::from_bytes(&skb),
            Err(HeError::Malformed { .. })
        ));
        // Bad key id characters.
        let mut skb = sk.to_bytes().to_vec();
        skb[wire::HEADER_LEN + 5] = b'!';
        assert!(matches!(
            HeSecretKey::from_bytes(&skb),
            Err(HeError::Malformed { .. })
        ));
    }
}
