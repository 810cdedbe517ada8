//! Self-certifying key ids.
//!
//! A key id is `prefix + base32(sha256(public_key))[..26]` (RFC 4648 base32,
//! lowercase, no padding), e.g. `ck_…` for client keys and `ek_…` for enclave
//! keys. Because the id is derived from the key, a party that is handed a key
//! and an id checks the pair locally ([`KeyId::matches`]) and no registry can
//! substitute another key under the same name. 26 base32 characters carry 130
//! bits of the digest, far beyond what a second-preimage search can reach.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Number of base32 characters after the prefix.
pub const ID_DIGEST_CHARS: usize = 26;
/// Total length of an id: a 3-character prefix and the digest characters.
pub const ID_LEN: usize = 3 + ID_DIGEST_CHARS;

/// What kind of key an id names; the prefix is part of the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyPrefix {
    /// `ck_`: a key made on the user's machine (X25519, or HE public material).
    Client,
    /// `ek_`: a key generated inside an enclave.
    Enclave,
}

impl KeyPrefix {
    /// The literal prefix, underscore included.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPrefix::Client => "ck_",
            KeyPrefix::Enclave => "ek_",
        }
    }
}

/// Why a string is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "key id must be {ID_LEN} characters (e.g. ck_ followed by 26 base32 characters), got {0}"
    )]
    Length(usize),
    #[error("key id must start with ck_ or ek_")]
    Prefix,
    #[error("key id must use lowercase base32 characters a-z and 2-7 after its prefix")]
    Alphabet,
    #[error("key id {id} is not the id of the given key (expected {expected}); the id is derived from the key, so one of the two was altered")]
    Mismatch { id: String, expected: String },
}

/// A validated, self-certifying key id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    /// The id of arbitrary public material (X25519 key bytes or serialized HE
    /// public material) under `prefix`.
    pub fn for_material(prefix: KeyPrefix, material: &[u8]) -> KeyId {
        let digest = Sha256::digest(material);
        let mut encoded = data_encoding::BASE32_NOPAD.encode(&digest);
        encoded.truncate(ID_DIGEST_CHARS);
        encoded.make_ascii_lowercase();
        KeyId(format!("{}{}", prefix.as_str(), encoded))
    }

    /// The `ck_` id of a client X25519 public key.
    pub fn client(public: &[u8; 32]) -> KeyId {
        KeyId::for_material(KeyPrefix::Client, public)
    }

    /// The `ek_` id of an enclave X25519 public key.
    pub fn enclave(public: &[u8; 32]) -> KeyId {
        KeyId::for_material(KeyPrefix::Enclave, public)
    }

    /// Parses and validates the syntax of an id (not which key it names).
    pub fn parse(s: &str) -> Result<KeyId, IdError> {
        if s.len() != ID_LEN {
            return Err(IdError::Length(s.len()));
        }
        if !(s.starts_with("ck_") || s.starts_with("ek_")) {
            return Err(IdError::Prefix);
        }
        if !s.as_bytes()[3..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b))
        {
            return Err(IdError::Alphabet);
        }
        Ok(KeyId(s.to_owned()))
    }

    /// The prefix of this id.
    pub fn prefix(&self) -> KeyPrefix {
        if self.0.starts_with("ek_") {
            KeyPrefix::Enclave
        } else {
            KeyPrefix::Client
        }
    }

    /// Whether this id is the id of `material` (under this id's own prefix).
    pub fn matches(&self, material: &[u8]) -> bool {
        KeyId::for_material(self.prefix(), material) == *self
    }

    /// Like [`KeyId::matches`], as a `Result` whose error explains the mismatch.
    pub fn check(&self, material: &[u8]) -> Result<(), IdError> {
        let expected = KeyId::for_material(self.prefix(), material);
        if expected == *self {
            Ok(())
        } else {
            Err(IdError::Mismatch {
                id: self.0.clone(),
                expected: expected.0,
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl FromStr for KeyId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyId::parse(s)
    }
}

impl AsRef<str> for KeyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_derived_from_the_key() {
        let id = KeyId::client(&[7u8; 32]);
        assert!(id.as_str().starts_with("ck_"));
        assert_eq!(id.as_str().len(), ID_LEN);
        assert!(id.matches(&[7u8; 32]));
        assert!(!id.matches(&[8u8; 32]));
        assert_eq!(KeyId::parse(id.as_str()), Ok(id.clone()));
        let ek = KeyId::enclave(&[7u8; 32]);
        assert_eq!(&ek.as_str()[3..], &id.as_str()[3..]);
        assert_eq!(ek.prefix(), KeyPrefix::Enclave);
    }

    #[test]
    fn known_answer() {
        // Independently: python3 -c "import hashlib,base64; print('ck_' +
        //   base64.b32encode(hashlib.sha256(bytes(32)).digest()).decode().lower()[:26])"
        let id = KeyId::client(&[0u8; 32]);
        assert_eq!(id.as_str(), "ck_mzuhvlpymk6xo3epygfy5h4oea");
    }

    #[test]
    fn refusals_are_typed() {
        assert_eq!(KeyId::parse("ck_short"), Err(IdError::Length(8)));
        assert_eq!(
            KeyId::parse("xk_mzuhvlpymk6xo3epygfy5h4oea"),
            Err(IdError::Prefix)
        );
        assert_eq!(
            KeyId::parse("ck_MZUHVLPYMK6XO3EPYGFY5H4OEA"),
            Err(IdError::Alphabet)
        );
        assert_eq!(
            KeyId::parse("ck_mzuhvlpymk6xo3epygfy5h4o1a"),
            Err(IdError::Alphabet)
        );
        let id = KeyId::client(&[0u8; 32]);
        assert!(matches!(
            id.check(&[1u8; 32]),
            Err(IdError::Mismatch { .. })
        ));
    }

    #[test]
    fn serde_validates() {
        let id = KeyId::client(&[3u8; 32]);
        let json = serde_json::to_string(&id).unwrap();
        let back: KeyId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<KeyId>("\"ck_nope\"").is_err());
    }
}
