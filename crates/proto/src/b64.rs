//! The two base64 alphabets of the JSON API.
//!
//! Public keys appear as standard base64, as on the product page; we accept
//! the URL-safe alphabet and missing padding on input, since users paste keys
//! from many tools. Envelopes travel as base64url without padding. Decoders
//! check the encoded length against a caller-given limit before allocating.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;

const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_encode_padding(true)
    .with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Why a base64 field could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum B64Error {
    #[error("base64 text is {len} characters, more than the {max} allowed here")]
    TooLong { len: usize, max: usize },
    #[error("not valid base64 (standard or URL-safe alphabet expected)")]
    Invalid,
}

/// Standard base64 with padding (public keys, evidence).
pub fn encode_std(bytes: &[u8]) -> String {
    STANDARD_LENIENT.encode(bytes)
}

/// base64url without padding (envelopes).
pub fn encode_url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes standard or URL-safe base64, padded or not, of at most
/// `max_encoded_len` characters.
pub fn decode_any(text: &str, max_encoded_len: usize) -> Result<Vec<u8>, B64Error> {
    let text = text.trim();
    if text.len() > max_encoded_len {
        return Err(B64Error::TooLong {
            len: text.len(),
            max: max_encoded_len,
        });
    }
    if text.bytes().any(|b| b == b'-' || b == b'_') {
        URL_LENIENT.decode(text).map_err(|_| B64Error::Invalid)
    } else {
        STANDARD_LENIENT.decode(text).map_err(|_| B64Error::Invalid)
    }
}

/// Decodes a 32-byte X25519 public key from base64 (either alphabet).
pub fn decode_key32(text: &str) -> Result<[u8; 32], B64Error> {
    let bytes = decode_any(text, 64)?;
    bytes.try_into().map_err(|_| B64Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_alphabets_and_padding_are_accepted() {
        let bytes: Vec<u8> = (0u8..=255).collect();
        let std = encode_std(&bytes);
        let url = encode_url(&bytes);
        assert_eq!(decode_any(&std, 1000).unwrap(), bytes);
        assert_eq!(decode_any(&url, 1000).unwrap(), bytes);
        assert_eq!(decode_any(std.trim_end_matches('='), 1000).unwrap(), bytes);
    }

    #[test]
    fn refusals() {
        assert_eq!(
            decode_any("QUJD", 3),
            Err(B64Error::TooLong { len: 4, max: 3 })
        );
        assert_eq!(decode_any("Q!JD", 10), Err(B64Error::Invalid));
        assert_eq!(decode_key32("QUJD"), Err(B64Error::Invalid));
    }
}
