//! The versioned binary wire format of every HE message (keys, requests,
//! responses) and its strict, panic-free parser.
//!
//! The `fhe` crate's own protobuf deserialisers trust their input (they can
//! panic or accept unreduced coefficients), so untrusted bytes never reach
//! them: this module reads fixed-layout fields, checks every length against
//! the parameter set before allocating, checks every coefficient is reduced
//! modulo its prime, and only then builds `fhe` polynomials from the
//! validated numbers. Layout: `docs/he.md` ("Wire format").
//!
//! Every message starts with an 8-byte header:
//! `magic "ARHE" | version u8 | kind u8 | parameter set u16 LE`.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, Ciphertext};
use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};

use crate::{HeError, ParamSet};

/// Magic bytes opening every message.
pub const MAGIC: [u8; 4] = *b"ARHE";
/// Wire format version written and accepted by this build.
pub const VERSION: u8 = 1;
/// Length of the common header.
pub const HEADER_LEN: usize = 8;
/// Length of a key id on the wire (`ck_` + 26 base32 characters).
pub const KEY_ID_LEN: usize = 29;
/// Length of the seed from which a seeded ciphertext's second polynomial is expanded.
pub const SEED_LEN: usize = 32;

const FORM_FULL: u8 = 0;
const FORM_SEEDED: u8 = 1;

/// The kind of an HE message, from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// Public evaluation material (uploaded with the key registration).
    PublicMaterial,
    /// Secret key (keystore only; never leaves the user's machine).
    SecretKey,
    /// `he-classify` request: encrypted features.
    ClassifyRequest,
    /// `he-classify` response: encrypted, masked scores.
    ClassifyResponse,
    /// `he-aggregate` request: encrypted records.
    AggregateRequest,
    /// `he-aggregate` response: encrypted, masked column totals.
    AggregateResponse,
}

impl MessageKind {
    /// Wire byte.
    pub const fn code(self) -> u8 {
        match self {
            MessageKind::PublicMaterial => 1,
            MessageKind::SecretKey => 2,
            MessageKind::ClassifyRequest => 3,
            MessageKind::ClassifyResponse => 4,
            MessageKind::AggregateRequest => 5,
            MessageKind::AggregateResponse => 6,
        }
    }

    /// Name used in errors.
    pub const fn name(self) -> &'static str {
        match self {
            MessageKind::PublicMaterial => "he-bfv public material",
            MessageKind::SecretKey => "he-bfv secret key",
            MessageKind::ClassifyRequest => "he-classify request",
            MessageKind::ClassifyResponse => "he-classify response",
            MessageKind::AggregateRequest => "he-aggregate request",
            MessageKind::AggregateResponse => "he-aggregate response",
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => MessageKind::PublicMaterial,
            2 => MessageKind::SecretKey,
            3 => MessageKind::ClassifyRequest,
            4 => MessageKind::ClassifyResponse,
            5 => MessageKind::AggregateRequest,
            6 => MessageKind::AggregateResponse,
            _ => return None,
        })
    }
}

/// What the header of an HE message says, without parsing the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderInfo {
    /// Message kind.
    pub kind: MessageKind,
    /// Parameter set.
    pub param_set: ParamSet,
}

/// Read only the 8-byte header of an HE message (for routing and early
/// refusal by the coordinator or island).
pub fn peek_header(bytes: &[u8]) -> Result<HeaderInfo, HeError> {
    let mut r = Reader::new(bytes, "header");
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(HeError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(HeError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    let code = r.u8()?;
    let kind = MessageKind::from_code(code).ok_or_else(|| HeError::WrongKind {
        expected: "a known HE message kind",
        found: format!("unknown({code})"),
    })?;
    let param_set = ParamSet::from_id(r.u16()?)?;
    Ok(HeaderInfo { kind, param_set })
}

/// Header and key id of an HE request or response (every kind but the
/// secret key and public material carries the key id right after the
/// header), for early refusal by the coordinator and the island without
/// parsing the ciphertext.
pub fn peek_key_id(bytes: &[u8]) -> Result<(HeaderInfo, String), HeError> {
    let info = peek_header(bytes)?;
    if matches!(
        info.kind,
        MessageKind::PublicMaterial | MessageKind::SecretKey
    ) {
        return Err(HeError::WrongKind {
            expected: "an HE request or response",
            found: info.kind.name().to_string(),
        });
    }
    let mut r = Reader::new(bytes, info.kind.name());
    r.pos = HEADER_LEN;
    Ok((info, r.key_id()?))
}

/// Check the header is `kind` and return a reader positioned after it.
pub(crate) fn open(
    bytes: &[u8],
    kind: MessageKind,
    max_len: usize,
) -> Result<(ParamSet, Reader<'_>), HeError> {
    if bytes.len() > max_len {
        return Err(HeError::TooLarge {
            what: kind.name(),
            len: bytes.len(),
            max: max_len,
        });
    }
    let info = peek_header(bytes)?;
    if info.kind != kind {
        return Err(HeError::WrongKind {
            expected: kind.name(),
            found: info.kind.name().to_string(),
        });
    }
    let mut r = Reader::new(bytes, kind.name());
    r.pos = HEADER_LEN;
    Ok((info.param_set, r))
}

pub(crate) fn write_header(out: &mut Vec<u8>, kind: MessageKind, param_set: ParamSet) {
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind.code());
    out.extend_from_slice(&param_set.id().to_le_bytes());
}

/// A bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], HeError> {
        let available = self.remaining();
        if n > available {
            return Err(HeError::Truncated {
                what: self.what,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..start + n])
    }

    pub(crate) fn u8(&mut self) -> Result<u8, HeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, HeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, HeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn f64(&mut self) -> Result<f64, HeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(f64::from_le_bytes(a))
    }

    /// A key id: `ck_` followed by 26 lowercase RFC 4648 base32 characters.
    pub(crate) fn key_id(&mut self) -> Result<String, HeError> {
        let b = self.take(KEY_ID_LEN)?;
        let ok = b.starts_with(b"ck_")
            && b[3..]
                .iter()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c));
        if !ok {
            return Err(HeError::Malformed {
                what: self.what,
                reason: "key id is not ck_ followed by 26 lowercase base32 characters",
            });
        }
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    pub(crate) fn finish(self) -> Result<(), HeError> {
        let extra = self.remaining();
        if extra != 0 {
            return Err(HeError::TrailingBytes {
                what: self.what,
                extra,
            });
        }
        Ok(())
    }

    pub(crate) fn what(&self) -> &'static str {
        self.what
    }
}

/// Bytes taken by one packed polynomial (all RNS rows) under `param_set`.
pub(crate) fn packed_poly_len(param_set: ParamSet) -> usize {
    let per_row = (param_set.degree() * bits_of(param_set)).div_ceil(8);
    per_row * param_set.moduli().len()
}

fn bits_of(param_set: ParamSet) -> usize {
    let max = param_set.moduli().iter().copied().max().unwrap_or(1);
    (64 - max.leading_zeros()) as usize
}

/// Pack the NTT-domain coefficients of `poly` (row by row, least significant
/// bit first, each coefficient in `bits` bits).
pub(crate) fn write_poly(out: &mut Vec<u8>, poly: &Poly, param_set: ParamSet) {
    let bits = bits_of(param_set) as u32;
    let moduli = param_set.moduli();
    let coeffs = poly.coefficients();
    for (row, q) in coeffs.outer_iter().zip(moduli.iter()) {
        let mut acc: u128 = 0;
        let mut n: u32 = 0;
        for &v in row.iter() {
            // Coefficients are always reduced; `% q` is a cheap guarantee that
            // a lazily reduced value can never break the canonical encoding.
            let v = if v >= *q { v % q } else { v };
            acc |= (v as u128) << n;
            n += bits;
            while n >= 8 {
                out.push(acc as u8);
                acc >>= 8;
                n -= 8;
            }
        }
        if n > 0 {
            out.push(acc as u8);
        }
    }
}

/// Read a packed polynomial, refusing unreduced coefficients and nonzero padding.
pub(crate) fn read_poly(
    r: &mut Reader<'_>,
    param_set: ParamSet,
    par: &Arc<BfvParameters>,
) -> Result<Poly, HeError> {
    let what = r.what();
    let n = param_set.degree();
    let bits = bits_of(param_set);
    let row_len = (n * bits).div_ceil(8);
    let moduli = param_set.moduli();
    let mut values = Vec::with_capacity(n * moduli.len());
    let mask: u128 = (1u128 << bits) - 1;
    for q in moduli {
        let row = r.take(row_len)?;
        let mut acc: u128 = 0;
        let mut have: usize = 0;
        let mut bytes = row.iter();
        for _ in 0..n {
            while have < bits {
                // `row_len` bytes hold at least n·bits bits, so this never runs dry.
                let b = bytes.next().copied().unwrap_or(0);
                acc |= (b as u128) << have;
                have += 8;
            }
            let v = (acc & mask) as u64;
            acc >>= bits;
            have -= bits;
            if v >= *q {
                return Err(HeError::Malformed {
                    what,
                    reason: "ciphertext coefficient is not reduced modulo its prime",
                });
            }
            values.push(v);
        }
        if acc != 0 || bytes.next().is_some() {
            return Err(HeError::Malformed {
                what,
                reason: "nonzero padding bits after packed coefficients",
            });
        }
    }
    let ctx = par
        .context_at_level(0)
        .map_err(HeError::backend("context lookup"))?;
    Poly::try_convert_from(values, ctx, false, Representation::Ntt)
        .map_err(HeError::backend_math("polynomial import"))
}

/// Write a ciphertext in full form (both polynomials, NTT form).
pub(crate) fn write_ciphertext(out: &mut Vec<u8>, c0: &Poly, c1: &Poly, param_set: ParamSet) {
    out.push(FORM_FULL);
    for p in [c0, c1] {
        if *p.representation() != Representation::Ntt {
            let mut q = p.clone();
            q.change_representation(Representation::Ntt);
            write_poly(out, &q, param_set);
        } else {
            write_poly(out, p, param_set);
        }
    }
}

/// Write a seeded ciphertext: c0 and the seed c1 is expanded from.
pub(crate) fn write_seeded_ciphertext(
    out: &mut Vec<u8>,
    c0: &Poly,
    seed: &[u8; SEED_LEN],
    param_set: ParamSet,
) {
    out.push(FORM_SEEDED);
    write_poly(out, c0, param_set);
    out.extend_from_slice(seed);
}

/// Wire size of a ciphertext in full form.
pub fn full_ciphertext_len(param_set: ParamSet) -> usize {
    1 + 2 * packed_poly_len(param_set)
}

/// Wire size of a seeded ciphertext.
pub fn seeded_ciphertext_len(param_set: ParamSet) -> usize {
    1 + packed_poly_len(param_set) + SEED_LEN
}

/// Read a ciphertext (either form) as its two NTT-form polynomials.
pub(crate) fn read_ciphertext(
    r: &mut Reader<'_>,
    param_set: ParamSet,
) -> Result<[Poly; 2], HeError> {
    let par = param_set.bfv()?;
    let form = r.u8()?;
    let c0 = match form {
        FORM_FULL | FORM_SEEDED => read_poly(r, param_set, par)?,
        _ => {
            return Err(HeError::Malformed {
                what: r.what(),
                reason: "unknown ciphertext form (expected 0 = full or 1 = seeded)",
            })
        }
    };
    let c1 = if form == FORM_FULL {
        read_poly(r, param_set, par)?
    } else {
        let seed = read_seed(r)?;
        expand_seed(seed, par)?
    };
    Ok([c0, c1])
}

/// An `fhe` ciphertext (for decryption) from two NTT-form polynomials.
pub(crate) fn to_fhe_ciphertext(
    polys: [Poly; 2],
    param_set: ParamSet,
) -> Result<Ciphertext, HeError> {
    let par = param_set.bfv()?;
    Ciphertext::new(polys.into(), par).map_err(HeError::backend("ciphertext import"))
}

pub(crate) fn read_seed(r: &mut Reader<'_>) -> Result<[u8; SEED_LEN], HeError> {
    let b = r.take(SEED_LEN)?;
    let mut seed = [0u8; SEED_LEN];
    seed.copy_from_slice(b);
    Ok(seed)
}

/// The uniform polynomial `a` of a seeded ciphertext, exactly as `fhe` expands it.
pub(crate) fn expand_seed(seed: [u8; SEED_LEN], par: &Arc<BfvParameters>) -> Result<Poly, HeError> {
    let ctx = par
        .context_at_level(0)
        .map_err(HeError::backend("context lookup"))?;
    let mut p = Poly::random_from_seed(ctx, Representation::Ntt, seed);
    // `fhe` marks seeded polynomials as public (variable time allowed); the
    // operations here are constant time either way.
    p.disallow_variable_time_computations();
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_refusals() {
        assert_eq!(
            peek_header(b""),
            Err(HeError::Truncated {
                what: "header",
                offset: 0,
                needed: 4,
                available: 0
            })
        );
        assert_eq!(peek_header(b"XXXX\x01\x01\x01\x00"), Err(HeError::BadMagic));
        assert!(matches!(
            peek_header(b"ARHE\x02\x01\x01\x00"),
            Err(HeError::UnsupportedVersion { found: 2, .. })
        ));
        assert!(matches!(
            peek_header(b"ARHE\x01\x09\x01\x00"),
            Err(HeError::WrongKind { .. })
        ));
        assert_eq!(
            peek_header(b"ARHE\x01\x01\x05\x00"),
            Err(HeError::UnknownParameterSet(5))
        );
        let info = peek_header(b"ARHE\x01\x03\x01\x00").unwrap();
        assert_eq!(info.kind, MessageKind::ClassifyRequest);
        assert_eq!(info.param_set, ParamSet::Bfv8192V1);
    }

    #[test]
    fn poly_pack_round_trip_and_refuses_unreduced() {
        let ps = ParamSet::DEFAULT;
        let par = ps.bfv().unwrap();
        let ctx = par.context_at_level(0).unwrap();
        let mut rng = rand::rng();
        let p = Poly::random(ctx, Representation::Ntt, &mut rng);
        let mut out = Vec::new();
        write_poly(&mut out, &p, ps);
        assert_eq!(out.len(), packed_poly_len(ps));
        let mut r = Reader::new(&out, "test");
        let back = read_poly(&mut r, ps, par).unwrap();
        r.finish().unwrap();
        assert_eq!(back, p);

        // All-ones bits: every coefficient is 2^50 − 1 ≥ q.
        let bad = vec![0xffu8; packed_poly_len(ps)];
        let mut r = Reader::new(&bad, "test");
        assert!(matches!(
            read_poly(&mut r, ps, par),
            Err(HeError::Malformed { .. })
        ));
        let short = &out[..out.len() - 1];
        let mut r = Reader::new(short, "test");
        assert!(matches!(
            read_poly(&mut r, ps, par),
            Err(HeError::Truncated { .. })
        ));
    }
}
