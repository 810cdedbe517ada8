//! The BFV parameter sets this crate speaks, and their single shared instance.
//!
//! A parameter set is named on the wire by a 16-bit id so that an island can
//! refuse a ciphertext made under other parameters before touching it. The
//! moduli are fixed constants (not generated at run time) so every build and
//! every language agrees on them; `docs/he.md` explains the choice and the
//! security level.
//!
//! The `fhe` crate compares parameters by `Arc` identity and asserts on
//! mismatch, so this module builds each parameter set exactly once per process
//! and every key, plaintext and ciphertext in this crate shares that `Arc`.

use std::sync::{Arc, OnceLock};

use fhe::bfv::{BfvParameters, BfvParametersBuilder};

use crate::HeError;

/// Polynomial degree N of [`ParamSet::Bfv8192V1`].
pub const DEGREE: usize = 8192;

/// Ciphertext moduli q_i of [`ParamSet::Bfv8192V1`]: three 50-bit NTT-friendly
/// primes (q_i ≡ 1 mod 2N), q ≈ 2^150.
pub const MODULI: [u64; 3] = [0x3ffffffffc001, 0x3fffffffcc001, 0x3ffffffef4001];

/// Bit length of each ciphertext modulus (the packed wire width of a coefficient).
pub const MODULUS_BITS: u32 = 50;

/// Plaintext modulus t of [`ParamSet::Bfv8192V1`]: a 40-bit prime, t ≡ 1 mod 2N
/// (so SIMD batching is available too).
pub const PLAINTEXT_MODULUS: u64 = 0xfffffdc001;

/// Variance of the centered binomial error and secret distribution (σ ≈ 3.16).
pub const ERROR_VARIANCE: usize = 10;

/// Largest absolute value of a secret-key or error coefficient (CBD bound 2·variance).
pub const SECRET_COEFF_BOUND: i64 = 2 * ERROR_VARIANCE as i64;

/// A named BFV parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParamSet {
    /// N = 8192, q = three 50-bit primes (150 bits), t = 40-bit prime.
    /// ≥ 192-bit classical security per the HomomorphicEncryption.org
    /// standard tables (N = 8192 allows log q ≤ 152 at 192 bits).
    Bfv8192V1,
}

impl ParamSet {
    /// The default (and currently only) parameter set.
    pub const DEFAULT: ParamSet = ParamSet::Bfv8192V1;

    /// Wire id.
    pub const fn id(self) -> u16 {
        match self {
            ParamSet::Bfv8192V1 => 1,
        }
    }

    /// Human-readable name, used in errors and docs.
    pub const fn name(self) -> &'static str {
        match self {
            ParamSet::Bfv8192V1 => "bfv-n8192-q150-t40-v1",
        }
    }

    /// Parse a wire id.
    pub fn from_id(id: u16) -> Result<Self, HeError> {
        match id {
            1 => Ok(ParamSet::Bfv8192V1),
            other => Err(HeError::UnknownParameterSet(other)),
        }
    }

    /// Polynomial degree N (number of plaintext coefficients).
    pub const fn degree(self) -> usize {
        match self {
            ParamSet::Bfv8192V1 => DEGREE,
        }
    }

    /// Ciphertext moduli.
    pub const fn moduli(self) -> &'static [u64] {
        match self {
            ParamSet::Bfv8192V1 => &MODULI,
        }
    }

    /// Plaintext modulus t.
    pub const fn plaintext_modulus(self) -> u64 {
        match self {
            ParamSet::Bfv8192V1 => PLAINTEXT_MODULUS,
        }
    }

    /// Largest magnitude of a centered plaintext value: (t − 1) / 2.
    pub const fn plaintext_half(self) -> i64 {
        (self.plaintext_modulus() / 2) as i64
    }

    /// The shared `fhe` parameters (built once per process).
    pub(crate) fn bfv(self) -> Result<&'static Arc<BfvParameters>, HeError> {
        static BFV_8192_V1: OnceLock<Arc<BfvParameters>> = OnceLock::new();
        let cell = match self {
            ParamSet::Bfv8192V1 => &BFV_8192_V1,
        };
        if let Some(p) = cell.get() {
            return Ok(p);
        }
        let built = BfvParametersBuilder::new()
            .set_degree(self.degree())
            .set_moduli(self.moduli())
            .set_plaintext_modulus(self.plaintext_modulus())
            .set_variance(ERROR_VARIANCE)
            .build_arc()
            .map_err(HeError::backend("parameter setup"))?;
        // If another thread won the race, everyone uses the winner's Arc.
        let _ = cell.set(built);
        cell.get().ok_or(HeError::Backend {
            operation: "parameter setup",
        })
    }
}

impl std::fmt::Display for ParamSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_ntt_friendly_primes() {
        let two_n = 2 * DEGREE as u64;
        for q in MODULI {
            assert!(miller_rabin(q), "{q:#x} not prime");
            assert_eq!(q % two_n, 1, "{q:#x} not 1 mod 2N");
            assert_eq!(64 - q.leading_zeros(), MODULUS_BITS);
        }
        assert!(miller_rabin(PLAINTEXT_MODULUS));
        assert_eq!(PLAINTEXT_MODULUS % two_n, 1);
        assert!(miller_rabin(65537) && !miller_rabin(65535));
        let log_q: f64 = MODULI.iter().map(|q| (*q as f64).log2()).sum();
        assert!(
            log_q <= 152.0,
            "log q {log_q} exceeds the 192-bit table entry"
        );
    }

    fn miller_rabin(p: u64) -> bool {
        // Miller-Rabin with the deterministic base set for 64-bit integers.
        fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
            ((a as u128 * b as u128) % m as u128) as u64
        }
        fn pow_mod(mut b: u64, mut e: u64, m: u64) -> u64 {
            let mut r = 1u64;
            b %= m;
            while e > 0 {
                if e & 1 == 1 {
                    r = mul_mod(r, b, m);
                }
                b = mul_mod(b, b, m);
                e >>= 1;
            }
            r
        }
        if p < 4 {
            return p >= 2;
        }
        let mut d = p - 1;
        let mut s = 0;
        while d.is_multiple_of(2) {
            d /= 2;
            s += 1;
        }
        'outer: for a in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37] {
            let mut x = pow_mod(a, d, p);
            if x == 1 || x == p - 1 {
                continue;
            }
            for _ in 0..s - 1 {
                x = mul_mod(x, x, p);
                if x == p - 1 {
                    continue 'outer;
                }
            }
            return false;
        }
        true
    }

    #[test]
    fn ids_round_trip_and_unknown_is_refused() {
        assert_eq!(ParamSet::from_id(1), Ok(ParamSet::Bfv8192V1));
        assert_eq!(ParamSet::from_id(7), Err(HeError::UnknownParameterSet(7)));
        assert_eq!(ParamSet::DEFAULT.id(), 1);
    }

    #[test]
    fn parameters_build_once() {
        let a = ParamSet::DEFAULT.bfv().unwrap();
        let b = ParamSet::DEFAULT.bfv().unwrap();
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(a.degree(), DEGREE);
        assert_eq!(a.moduli(), &MODULI);
        assert_eq!(a.plaintext(), PLAINTEXT_MODULUS);
    }
}
