//! BFV encryption primitives on RNS residues: the scaled message `Δ·m` plus
//! noise, built in one pass and one NTT per polynomial.
//!
//! `fhe` converts and transforms the message, each error polynomial and the
//! flooding noise separately; summing them in the power basis first and
//! transforming once makes island evaluation several times cheaper (the NTT
//! dominates). The scaling is exactly `fhe`'s, so `fhe`'s decryption opens
//! what these functions encrypt: the message `m` (mod t) becomes
//! `[m · (q mod t)]_t · (−t)^{-1} mod q`, which equals `⌊q·m/t⌉` up to an
//! error below 1.

use std::sync::{Arc, OnceLock};

use fhe_math::rq::{traits::TryConvertFrom, Context, Poly, Representation};
use fhe_math::zq::Modulus;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::params::ERROR_VARIANCE;
use crate::{HeError, ParamSet};

/// Per-parameter-set constants for the scaling.
struct Scaling {
    q_mod_t: u64,
    t: Modulus,
    moduli: Vec<Modulus>,
    /// (−t)^{-1} mod q_i.
    delta: Vec<u64>,
    /// 2^FLOOD_BITS mod q_i.
    flood_offset: Vec<u64>,
}

fn scaling(param_set: ParamSet) -> Result<&'static Scaling, HeError> {
    static BFV_8192_V1: OnceLock<Scaling> = OnceLock::new();
    let cell = match param_set {
        ParamSet::Bfv8192V1 => &BFV_8192_V1,
    };
    if let Some(s) = cell.get() {
        return Ok(s);
    }
    let err = || HeError::Backend {
        operation: "scaling setup",
    };
    let t_raw = param_set.plaintext_modulus();
    let t = Modulus::new(t_raw).map_err(|_| err())?;
    let mut q_mod_t = 1u64;
    let mut moduli = Vec::new();
    let mut delta = Vec::new();
    let mut flood_offset = Vec::new();
    for q in param_set.moduli() {
        q_mod_t = ((q_mod_t as u128 * (*q % t_raw) as u128) % t_raw as u128) as u64;
        let m = Modulus::new(*q).map_err(|_| err())?;
        delta.push(m.inv(m.neg(t_raw % q)).ok_or_else(err)?);
        flood_offset.push(m.reduce_u128(1u128 << crate::sanitize::FLOOD_BITS));
        moduli.push(m);
    }
    let _ = cell.set(Scaling {
        q_mod_t,
        t,
        moduli,
        delta,
        flood_offset,
    });
    cell.get().ok_or_else(err)
}

pub(crate) fn context(param_set: ParamSet) -> Result<&'static Arc<Context>, HeError> {
    param_set
        .bfv()?
        .context_at_level(0)
        .map_err(HeError::backend("context lookup"))
}

/// Build `Δ·m + noise` in NTT form. `m` holds values mod t (at most N of
/// them; the rest are zero); `noise(i, j)` gives the residue mod q_i of the
/// noise at coefficient j.
fn scaled_plus(
    param_set: ParamSet,
    m: &[u64],
    mut noise: impl FnMut(usize, &Modulus, usize) -> u64,
) -> Result<Poly, HeError> {
    let n = param_set.degree();
    if m.len() > n {
        return Err(HeError::Backend {
            operation: "encoding (too many coefficients)",
        });
    }
    let s = scaling(param_set)?;
    let mv: Zeroizing<Vec<u64>> = Zeroizing::new(
        m.iter()
            .map(|v| s.t.mul(s.t.reduce(*v), s.q_mod_t))
            .collect(),
    );
    let mut residues: Zeroizing<Vec<u64>> = Zeroizing::new(Vec::with_capacity(n * s.moduli.len()));
    for (i, (q, d)) in s.moduli.iter().zip(&s.delta).enumerate() {
        for j in 0..n {
            let e = noise(i, q, j);
            let v = match mv.get(j) {
                Some(x) => q.add(q.mul(q.reduce(*x), *d), e),
                None => e,
            };
            residues.push(v);
        }
    }
    let mut p = Poly::try_convert_from(
        residues.to_vec(),
        context(param_set)?,
        false,
        Representation::PowerBasis,
    )
    .map_err(HeError::backend_math("encoding"))?;
    p.change_representation(Representation::Ntt);
    Ok(p)
}

/// `Δ·m + e` with e from the centered binomial error distribution.
pub(crate) fn scaled_with_error<R: RngCore + CryptoRng>(
    param_set: ParamSet,
    m: &[u64],
    rng: &mut R,
) -> Result<Poly, HeError> {
    let e: Zeroizing<Vec<i64>> = Zeroizing::new(fhe_util_cbd(param_set.degree(), rng)?);
    scaled_plus(param_set, m, |_, q, j| {
        let v = e[j];
        if v >= 0 {
            q.reduce(v as u64)
        } else {
            q.neg(q.reduce(v.unsigned_abs()))
        }
    })
}

/// `Δ·m + f` with f uniform in [−2^FLOOD_BITS, 2^FLOOD_BITS) (noise flooding).
pub(crate) fn scaled_with_flood<R: RngCore + CryptoRng>(
    param_set: ParamSet,
    m: &[u64],
    rng: &mut R,
) -> Result<Poly, HeError> {
    let s = scaling(param_set)?;
    let mask: u128 = (1u128 << (crate::sanitize::FLOOD_BITS + 1)) - 1;
    let r: Zeroizing<Vec<u128>> = Zeroizing::new(
        (0..param_set.degree())
            .map(|_| (((rng.next_u64() as u128) << 64) | rng.next_u64() as u128) & mask)
            .collect(),
    );
    scaled_plus(param_set, m, |i, q, j| {
        q.sub(q.reduce_u128(r[j]), s.flood_offset[i])
    })
}

/// A small polynomial (centered binomial, variance 10) in NTT form.
pub(crate) fn small<R: RngCore + CryptoRng>(
    param_set: ParamSet,
    rng: &mut R,
) -> Result<Poly, HeError> {
    Poly::small(
        context(param_set)?,
        Representation::Ntt,
        ERROR_VARIANCE,
        rng,
    )
    .map_err(HeError::backend_math("sampling"))
}

fn fhe_util_cbd<R: RngCore + CryptoRng>(n: usize, rng: &mut R) -> Result<Vec<i64>, HeError> {
    // The sampler `fhe` itself uses for errors and secrets.
    fhe_util::sample_vec_cbd(n, ERROR_VARIANCE, rng).map_err(|_| HeError::Backend {
        operation: "sampling",
    })
}
