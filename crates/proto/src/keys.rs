//! X25519 key pairs for clients and enclaves.
//!
//! The secret half lives in a zeroize-on-drop buffer and its `Debug` prints
//! only the key id, so a stray `{:?}` in a log cannot leak it. The public half
//! is computed once at creation: every open needs it (HPKE's `kem_context`),
//! and recomputing it would cost a scalar multiplication each time (as
//! `hpke`'s own `decap` does, which is why the envelope's opens do their
//! decapsulation themselves).

use std::fmt;

use hpke::kem::{Kem as _, X25519HkdfSha256};
use hpke::rand_core::CryptoRng;
use hpke::{Deserializable, Serializable};
use zeroize::Zeroizing;

use crate::ids::KeyId;

pub(crate) type KemPrivate = <X25519HkdfSha256 as hpke::Kem>::PrivateKey;
pub(crate) type KemPublic = <X25519HkdfSha256 as hpke::Kem>::PublicKey;

/// An X25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Standard base64, as the JSON API carries it.
    pub fn to_base64(&self) -> String {
        crate::b64::encode_std(&self.0)
    }
    /// Parses standard or URL-safe base64.
    pub fn from_base64(text: &str) -> Result<PublicKey, crate::b64::B64Error> {
        crate::b64::decode_key32(text).map(PublicKey)
    }
    pub(crate) fn to_kem(self) -> Result<KemPublic, hpke::HpkeError> {
        KemPublic::from_bytes(&self.0)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// An X25519 secret key with its public key. Zeroized on drop; never printed.
pub struct SecretKey {
    secret: Zeroizing<[u8; 32]>,
    public: PublicKey,
}

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> SecretKey {
        SecretKey::generate_with_rng(&mut crate::envelope::os_rng())
    }

    /// A fresh key from `rng` (RFC 9180 `DeriveKeyPair` over 32 random bytes).
    pub fn generate_with_rng(rng: &mut impl CryptoRng) -> SecretKey {
        let (sk, pk) = X25519HkdfSha256::gen_keypair_with_rng(rng);
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&sk.to_bytes());
        SecretKey {
            secret,
            public: PublicKey(pk.to_bytes().into()),
        }
    }

    /// Rebuilds a key from its 32 secret bytes (e.g. from a keystore).
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<SecretKey, hpke::HpkeError> {
        let sk = KemPrivate::from_bytes(bytes)?;
        let pk = X25519HkdfSha256::sk_to_pk(&sk);
        Ok(SecretKey {
            secret: Zeroizing::new(*bytes),
            public: PublicKey(pk.to_bytes().into()),
        })
    }

    /// The secret bytes, for writing to a keystore. Handle with care.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret)
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// `ck_` id of this key.
    pub fn client_id(&self) -> KeyId {
        KeyId::client(&self.public.0)
    }

    /// `ek_` id of this key.
    pub fn enclave_id(&self) -> KeyId {
        KeyId::enclave(&self.public.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretKey(<redacted>, public {})",
            self.public.to_base64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_redaction() {
        let k = SecretKey::generate();
        let back = SecretKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(back.public(), k.public());
        let dbg = format!("{k:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&crate::b64::encode_std(k.to_bytes().as_ref())));
        assert_eq!(
            PublicKey::from_base64(&k.public().to_base64()).unwrap(),
            k.public()
        );
    }
}
