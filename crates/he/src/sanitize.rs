//! Circuit privacy for island responses: mask, re-randomise, flood.
//!
//! After the island multiplies the user's ciphertext by its plaintext weights,
//! the result still carries information beyond the answer: the coefficients
//! that are not scores hold partial products of the weights, and the noise
//! term `e·P` depends on the weights too (the user, who holds the secret key,
//! sees the whole phase `Δ·m + e` on decryption). Before returning, the
//! island therefore
//!
//! 1. adds a plaintext that is uniform modulo t on every coefficient except
//!    the result positions (there it adds the quantised bias, or zero), so
//!    every other decrypted coefficient is uniform;
//! 2. adds a fresh public-key encryption of zero, so both ciphertext
//!    polynomials are re-randomised (the user cannot divide `c1·P` by the
//!    `c1` they sent);
//! 3. adds flooding noise, uniform in [−2^101, 2^101), to `c0`. For an honestly
//!    generated input the post-product noise is at most 2^48 per coefficient
//!    (worst case, `docs/he.md`), so the statistical distance between
//!    responses for any two weight vectors with equal scores is
//!    ≤ N·2^48 / 2^101 = 2^-40, while the total noise stays below Δ/2 ≈ 2^109.

use fhe_math::rq::Poly;
use rand::{CryptoRng, Rng, RngCore};
use zeroize::Zeroizing;

use crate::{scaled, HeError, HePublicMaterial};

/// log2 of the flooding bound.
pub const FLOOD_BITS: u32 = 101;

/// Sanitize the product `(c0, c1)`; `keep` lists `(coefficient, value mod t)`
/// pairs that are left readable (every other coefficient is masked). Returns
/// the response ciphertext's two polynomials.
///
/// Steps 1–3 are fused into one fresh public-key encryption whose message is
/// the mask and whose `c0` error is the flooding noise:
/// `c0' = c0 + u·pk0 + Δ·mask + flood`, `c1' = c1 + u·pk1 + e2`.
pub(crate) fn sanitize<R: RngCore + CryptoRng>(
    public: &HePublicMaterial,
    mut c0: Poly,
    mut c1: Poly,
    keep: &[(usize, u64)],
    rng: &mut R,
) -> Result<[Poly; 2], HeError> {
    let param_set = public.param_set();
    let n = param_set.degree();
    let t = param_set.plaintext_modulus();

    let mut mask: Zeroizing<Vec<u64>> =
        Zeroizing::new((0..n).map(|_| rng.random_range(0..t)).collect());
    for &(pos, value) in keep {
        if pos >= n || value >= t {
            return Err(HeError::Backend {
                operation: "sanitize (kept position out of range)",
            });
        }
        mask[pos] = value;
    }
    let (pk0, pk1) = public.public_polys();
    let u = Zeroizing::new(scaled::small(param_set, rng)?);
    let e2 = Zeroizing::new(scaled::small(param_set, rng)?);
    let masked_flood = scaled::scaled_with_flood(param_set, &mask, rng)?;
    c0 += &(&*u * pk0);
    c0 += &masked_flood;
    c1 += &(&*u * pk1);
    c1 += &*e2;
    Ok([c0, c1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_keypair, wire, ParamSet};
    use fhe_math::rq::Representation;
    use num_bigint::BigUint;

    /// With every coefficient kept at 0 the response encrypts zero, so its
    /// phase `c0 + c1·s` is pure noise: it must be flooded to ≈ 2^101 and stay
    /// far below Δ/2 ≈ 2^109.
    #[test]
    fn flood_noise_has_the_documented_magnitude() {
        let ps = ParamSet::DEFAULT;
        let (sk, pm) = generate_keypair().unwrap();
        let (c0, seed) = sk.encrypt_seeded(&[]).unwrap();
        let c1 = wire::expand_seed(seed, ps.bfv().unwrap()).unwrap();
        let keep: Vec<(usize, u64)> = (0..ps.degree()).map(|j| (j, 0)).collect();
        let [d0, d1] = sanitize(&pm, c0, c1, &keep, &mut rand::rng()).unwrap();
        let mut phase = &d1 * sk.s_ntt();
        phase += &d0;
        phase.change_representation(Representation::PowerBasis);
        let q: BigUint = ps.moduli().iter().map(|m| BigUint::from(*m)).product();
        let coeffs: Vec<BigUint> = (&phase).into();
        let bits: Vec<u64> = coeffs
            .iter()
            .map(|c| {
                let neg = &q - c;
                if *c < neg {
                    c.bits()
                } else {
                    neg.bits()
                }
            })
            .collect();
        let max = *bits.iter().max().unwrap();
        assert!((100..=102).contains(&max), "max noise bits {max}");
        // Most coefficients are within a few bits of the bound (uniform, not small).
        let large = bits.iter().filter(|b| **b >= 95).count();
        assert!(large > ps.degree() * 9 / 10, "{large} coefficients ≥ 2^95");
        let log_half_delta = (q.bits() - 1) - 40;
        assert!(
            max + 6 < log_half_delta,
            "noise {max} bits too close to Δ/2 (2^{log_half_delta})"
        );
    }
}
