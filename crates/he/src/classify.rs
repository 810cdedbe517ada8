//! `he-classify`: a linear head (logistic regression) evaluated on encrypted
//! features with one plaintext × ciphertext polynomial product.
//!
//! The client quantises its L2-normalised embedding `x` (dimension d) and
//! encrypts it as the coefficients `X(y) = Σ x_i y^i`. The island packs all C
//! class weight vectors, each reversed, into one plaintext
//! `P(y) = Σ_c Σ_i w_{c,i} y^{c·d + (d−1−i)}`. In `X·P` the coefficient at
//! `c·d + d − 1` is exactly `Σ_i x_i w_{c,i}`: a term `x_i·w_{c',j}` lands at
//! `i + c'·d + d − 1 − j`, which equals `c·d + d − 1` only for `c' = c, i = j`
//! because `|i − j| < d`. With `C·d ≤ N` the product has degree < N + d − 1 and
//! the negacyclic wrap-around (indices ≥ N come back negated at index − N < d − 1)
//! lands below the first score position, so no rotations and no wrap-around
//! corrupt the scores. The island adds the quantised bias at the score
//! positions, masks everything else and floods the noise
//! ([`crate::sanitize`]); the client decrypts C integers and takes the argmax.
//!
//! Quantisation (exact integer arithmetic modulo t, no wrap-around):
//! features `round(x·2^16)`, weights `round(w·s_w)` with `s_w = 4096 / max|w|`,
//! bias `round(b·2^16·s_w)`; [`LinearHead::quantise`] proves
//! `|score| < t/2` for every input with `‖x‖₂ ≤ 1.001` before accepting a head.

use fhe_math::rq::{traits::TryConvertFrom, Poly, Representation};
use fhe_traits::{FheDecoder, FheDecrypter};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::wire::{self, MessageKind};
use crate::{sanitize, HeEncryptor, HeError, HePublicMaterial, HeSecretKey, ParamSet};

/// Feature quantisation scale: `q = round(x · 2^16)`.
pub const FEATURE_SCALE: f64 = 65536.0;

/// Largest quantised weight magnitude (the largest |w| of a head maps to it).
pub const WEIGHT_QMAX: f64 = 4096.0;

/// Largest accepted L2 norm of a feature vector (unit norm plus rounding slack).
pub const MAX_FEATURE_NORM: f64 = 1.001;

/// Size limit of a classify request (the real size is fixed by the parameter set).
pub const MAX_CLASSIFY_REQUEST_BYTES: usize = 512 * 1024;

/// Size limit of a classify response.
pub const MAX_CLASSIFY_RESPONSE_BYTES: usize = 512 * 1024;

/// A float linear classification head: `scores = W·x + b`, argmax = label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    /// Class labels, one per row of `weights`.
    pub labels: Vec<String>,
    /// Weights, `[class][dim]`.
    pub weights: Vec<Vec<f32>>,
    /// Bias per class.
    pub bias: Vec<f32>,
}

impl LinearHead {
    /// Float scores `W·x + b` (reference for tests and accuracy reports).
    pub fn float_scores(&self, features: &[f32]) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| {
                w.iter()
                    .zip(features)
                    .map(|(wi, xi)| *wi as f64 * *xi as f64)
                    .sum::<f64>()
                    + *b as f64
            })
            .collect()
    }

    /// Quantise for the default parameter set, proving no overflow is possible.
    pub fn quantise(&self) -> Result<LinearHeadQuantised, HeError> {
        self.quantise_for(ParamSet::DEFAULT)
    }

    /// Quantise for a given parameter set.
    pub fn quantise_for(&self, param_set: ParamSet) -> Result<LinearHeadQuantised, HeError> {
        let classes = self.weights.len();
        if classes == 0 {
            return Err(HeError::InvalidHead("the head has no classes".into()));
        }
        if self.labels.len() != classes || self.bias.len() != classes {
            return Err(HeError::InvalidHead(format!(
                "{} labels, {} weight rows and {} biases must all be equal",
                self.labels.len(),
                classes,
                self.bias.len()
            )));
        }
        let dim = self.weights[0].len();
        if dim == 0 || self.weights.iter().any(|r| r.len() != dim) {
            return Err(HeError::InvalidHead(
                "weight rows must all have the same nonzero length".into(),
            ));
        }
        let n = param_set.degree();
        if classes * dim > n {
            return Err(HeError::InvalidHead(format!(
                "classes × dim = {classes} × {dim} exceeds the polynomial degree {n}"
            )));
        }
        let all = self.weights.iter().flatten().chain(self.bias.iter());
        if all.clone().any(|v| !v.is_finite()) {
            return Err(HeError::InvalidHead(
                "weights and biases must be finite".into(),
            ));
        }
        let max_w = self
            .weights
            .iter()
            .flatten()
            .fold(0f64, |m, w| m.max((*w as f64).abs()));
        let weight_scale = if max_w > 0.0 {
            WEIGHT_QMAX / max_w
        } else {
            1.0
        };
        let weights: Vec<i64> = self
            .weights
            .iter()
            .flatten()
            .map(|w| (*w as f64 * weight_scale).round() as i64)
            .collect();
        let bias_scale = FEATURE_SCALE * weight_scale;
        let half = param_set.plaintext_half() as f64;
        let mut bias = Vec::with_capacity(classes);
        // Worst case over all features with ‖x‖₂ ≤ MAX_FEATURE_NORM:
        // ‖q(x)‖₂ ≤ 2^16·1.001 + 0.5·√d (rounding), and |⟨q(x), q(w_c)⟩| ≤ ‖q(x)‖₂‖q(w_c)‖₂.
        let qx_norm = FEATURE_SCALE * MAX_FEATURE_NORM + 0.5 * (dim as f64).sqrt();
        for (c, b) in self.bias.iter().enumerate() {
            let qb = (*b as f64 * bias_scale).round();
            let row = &weights[c * dim..(c + 1) * dim];
            let w_norm = row.iter().map(|w| (*w as f64).powi(2)).sum::<f64>().sqrt();
            let bound = qx_norm * w_norm + qb.abs() + 1.0;
            // 2^-20 relative slack absorbs floating-point error in the bound itself.
            if bound * (1.0 + 1e-6) >= half {
                return Err(HeError::InvalidHead(format!(
                    "class {c}: worst-case score magnitude {bound:.3e} reaches t/2 = {half:.3e} \
                     (bias too large relative to the weights); rescale the head"
                )));
            }
            bias.push(qb as i64);
        }

        // P(y) = Σ_c Σ_i w_{c,i} y^{c·d + d − 1 − i}, centered lift (small coefficients).
        let mut coeffs: Zeroizing<Vec<i64>> = Zeroizing::new(vec![0i64; n]);
        for c in 0..classes {
            for i in 0..dim {
                coeffs[c * dim + dim - 1 - i] = weights[c * dim + i];
            }
        }
        let par = param_set.bfv()?;
        let ctx = par
            .context_at_level(0)
            .map_err(HeError::backend("context lookup"))?;
        let mut p =
            Poly::try_convert_from(coeffs.as_slice(), ctx, false, Representation::PowerBasis)
                .map_err(HeError::backend_math("weight packing"))?;
        p.change_representation(Representation::Ntt);

        Ok(LinearHeadQuantised {
            param_set,
            labels: self.labels.clone(),
            dim,
            weights,
            bias,
            weight_scale,
            packed: p,
        })
    }
}

/// A linear head quantised and packed for one parameter set; what an island
/// holds for `he-classify`. Build once per model and reuse.
#[derive(Clone)]
pub struct LinearHeadQuantised {
    param_set: ParamSet,
    labels: Vec<String>,
    dim: usize,
    weights: Vec<i64>,
    bias: Vec<i64>,
    weight_scale: f64,
    packed: Poly,
}

impl std::fmt::Debug for LinearHeadQuantised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinearHeadQuantised")
            .field("param_set", &self.param_set.name())
            .field("classes", &self.labels.len())
            .field("dim", &self.dim)
            .field("weight_scale", &self.weight_scale)
            .finish()
    }
}

impl LinearHeadQuantised {
    /// Class labels.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Number of classes.
    pub fn n_classes(&self) -> usize {
        self.labels.len()
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Parameter set the head was packed for.
    pub fn param_set(&self) -> ParamSet {
        self.param_set
    }

    /// Divide a quantised score by this to get the float logit.
    pub fn score_scale(&self) -> f64 {
        FEATURE_SCALE * self.weight_scale
    }

    /// Quantised weights `[class][dim]` (row-major) and biases.
    pub fn quantised_weights(&self) -> (&[i64], &[i64]) {
        (&self.weights, &self.bias)
    }

    /// The exact integer scores the HE evaluation must reproduce, computed in
    /// the clear from the same feature quantisation the client uses.
    pub fn plaintext_scores(&self, features: &[f32]) -> Result<Vec<i64>, HeError> {
        let qx = quantise_features(features)?;
        if qx.len() != self.dim {
            return Err(HeError::DimensionMismatch {
                what: "feature dimension",
                expected: self.dim,
                found: qx.len(),
            });
        }
        Ok((0..self.n_classes())
            .map(|c| {
                let row = &self.weights[c * self.dim..(c + 1) * self.dim];
                row.iter().zip(qx.iter()).map(|(w, x)| w * x).sum::<i64>() + self.bias[c]
            })
            .collect())
    }
}

/// Quantise an L2-normalised feature vector: `round(x · 2^16)`.
pub fn quantise_features(features: &[f32]) -> Result<Zeroizing<Vec<i64>>, HeError> {
    if features.is_empty() {
        return Err(HeError::InvalidInput("the feature vector is empty".into()));
    }
    if features.iter().any(|v| !v.is_finite()) {
        return Err(HeError::InvalidInput(
            "features must be finite numbers".into(),
        ));
    }
    let norm = features
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    if norm > MAX_FEATURE_NORM {
        return Err(HeError::InvalidInput(format!(
            "features must be L2-normalised (norm ≤ {MAX_FEATURE_NORM}); normalise the embedding first"
        )));
    }
    Ok(Zeroizing::new(
        features
            .iter()
            .map(|v| (*v as f64 * FEATURE_SCALE).round() as i64)
            .collect(),
    ))
}

/// Client: quantise and encrypt an L2-normalised feature vector into an
/// `he-classify` request. With the secret key the ciphertext is seeded
/// (half size); with public material it is a full public-key ciphertext.
pub fn encrypt_features<K: HeEncryptor + ?Sized>(
    key: &K,
    features: &[f32],
) -> Result<Vec<u8>, HeError> {
    let param_set = key.params();
    let qx = quantise_features(features)?;
    if qx.len() > param_set.degree() {
        return Err(HeError::InvalidInput(format!(
            "{} features exceed the polynomial degree {}",
            qx.len(),
            param_set.degree()
        )));
    }
    let mut out = Vec::with_capacity(
        wire::HEADER_LEN + wire::KEY_ID_LEN + 4 + wire::full_ciphertext_len(param_set),
    );
    wire::write_header(&mut out, MessageKind::ClassifyRequest, param_set);
    out.extend_from_slice(key.key_id_str().as_bytes());
    out.extend_from_slice(&(qx.len() as u32).to_le_bytes());
    key.encrypt_coeffs(&qx, &mut out)?;
    Ok(out)
}

/// Island: evaluate the head on an encrypted request. Needs only the user's
/// public material; returns the response bytes (masked, re-randomised,
/// noise-flooded scores).
pub fn evaluate_classify(
    public: &HePublicMaterial,
    head: &LinearHeadQuantised,
    request: &[u8],
) -> Result<Vec<u8>, HeError> {
    evaluate_classify_with_rng(public, head, request, &mut rand::rng())
}

pub(crate) fn evaluate_classify_with_rng<R: rand::RngCore + rand::CryptoRng>(
    public: &HePublicMaterial,
    head: &LinearHeadQuantised,
    request: &[u8],
    rng: &mut R,
) -> Result<Vec<u8>, HeError> {
    let (param_set, mut r) = wire::open(
        request,
        MessageKind::ClassifyRequest,
        MAX_CLASSIFY_REQUEST_BYTES,
    )?;
    check_params(public.param_set(), param_set)?;
    check_params(head.param_set, param_set)?;
    let key_id = r.key_id()?;
    if key_id != public.key_id() {
        return Err(HeError::KeyMismatch {
            expected: public.key_id().to_string(),
            found: key_id,
        });
    }
    let dim = r.u32()? as usize;
    if dim != head.dim {
        return Err(HeError::DimensionMismatch {
            what: "feature dimension",
            expected: head.dim,
            found: dim,
        });
    }
    let [mut c0, mut c1] = wire::read_ciphertext(&mut r, param_set)?;
    r.finish()?;

    c0 *= &head.packed;
    c1 *= &head.packed;

    let t = param_set.plaintext_modulus() as i64;
    let keep: Vec<(usize, u64)> = head
        .bias
        .iter()
        .enumerate()
        .map(|(c, b)| (c * head.dim + head.dim - 1, b.rem_euclid(t) as u64))
        .collect();
    let [c0, c1] = sanitize::sanitize(public, c0, c1, &keep, rng)?;

    let mut out = Vec::with_capacity(
        MAX_CLASSIFY_RESPONSE_BYTES.min(wire::full_ciphertext_len(param_set) + 64),
    );
    wire::write_header(&mut out, MessageKind::ClassifyResponse, param_set);
    out.extend_from_slice(public.key_id().as_bytes());
    out.extend_from_slice(&(head.n_classes() as u32).to_le_bytes());
    out.extend_from_slice(&(head.dim as u32).to_le_bytes());
    out.extend_from_slice(&head.score_scale().to_le_bytes());
    wire::write_ciphertext(&mut out, &c0, &c1, param_set);
    tracing::debug!(
        classes = head.n_classes(),
        dim = head.dim,
        bytes = out.len(),
        "he-classify evaluated"
    );
    Ok(out)
}

pub(crate) fn check_params(expected: ParamSet, found: ParamSet) -> Result<(), HeError> {
    if expected != found {
        return Err(HeError::ParameterMismatch {
            expected: expected.name(),
            found: found.name(),
        });
    }
    Ok(())
}

/// Decrypted classification scores (plaintext of the user: zeroized on drop,
/// never printed).
pub struct ClassifyScores {
    quantised: Vec<i64>,
    scale: f64,
}

impl Drop for ClassifyScores {
    fn drop(&mut self) {
        self.quantised.zeroize();
    }
}

impl std::fmt::Debug for ClassifyScores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifyScores")
            .field("classes", &self.quantised.len())
            .field("scores", &"<redacted>")
            .finish()
    }
}

impl ClassifyScores {
    /// Exact quantised scores (`logit · scale`).
    pub fn quantised(&self) -> &[i64] {
        &self.quantised
    }

    /// Scale between quantised scores and float logits.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Float logits `W·x + b` (up to quantisation error).
    pub fn logits(&self) -> Vec<f32> {
        self.quantised
            .iter()
            .map(|s| (*s as f64 / self.scale) as f32)
            .collect()
    }

    /// Index of the highest score (the first one on exact ties).
    pub fn argmax(&self) -> usize {
        let mut best = 0;
        for (i, s) in self.quantised.iter().enumerate() {
            if *s > self.quantised[best] {
                best = i;
            }
        }
        best
    }
}

/// Client: decrypt an `he-classify` response to its `n_classes` scores.
pub fn decrypt_scores(
    key: &HeSecretKey,
    response: &[u8],
    n_classes: usize,
) -> Result<ClassifyScores, HeError> {
    let (param_set, mut r) = wire::open(
        response,
        MessageKind::ClassifyResponse,
        MAX_CLASSIFY_RESPONSE_BYTES,
    )?;
    check_params(key.param_set(), param_set)?;
    let key_id = r.key_id()?;
    if key_id != key.key_id() {
        return Err(HeError::KeyMismatch {
            expected: key.key_id().to_string(),
            found: key_id,
        });
    }
    let classes = r.u32()? as usize;
    let dim = r.u32()? as usize;
    let scale = r.f64()?;
    let ct = wire::to_fhe_ciphertext(wire::read_ciphertext(&mut r, param_set)?, param_set)?;
    r.finish()?;
    if classes != n_classes {
        return Err(HeError::DimensionMismatch {
            what: "class count",
            expected: n_classes,
            found: classes,
        });
    }
    if classes == 0 || dim == 0 || classes.saturating_mul(dim) > param_set.degree() {
        return Err(HeError::Malformed {
            what: MessageKind::ClassifyResponse.name(),
            reason: "class count × dimension is zero or exceeds the polynomial degree",
        });
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(HeError::Malformed {
            what: MessageKind::ClassifyResponse.name(),
            reason: "score scale is not a positive finite number",
        });
    }
    let pt = key
        .inner()
        .try_decrypt(&ct)
        .map_err(HeError::backend("decryption"))?;
    let values: Zeroizing<Vec<i64>> = Zeroizing::new(
        Vec::<i64>::try_decode(&pt, fhe::bfv::Encoding::poly())
            .map_err(HeError::backend("decoding"))?,
    );
    let quantised = (0..classes).map(|c| values[c * dim + dim - 1]).collect();
    Ok(ClassifyScores { quantised, scale })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_keypair;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A random head shaped like the real one: 384-dim, weights ~ N(0, 1)-ish, small biases.
    pub(crate) fn random_head(rng: &mut ChaCha8Rng, classes: usize, dim: usize) -> LinearHead {
        LinearHead {
            labels: (0..classes).map(|c| format!("class-{c}")).collect(),
            weights: (0..classes)
                .map(|_| (0..dim).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect(),
            bias: (0..classes)
                .map(|_| rng.random_range(-0.5f32..0.5))
                .collect(),
        }
    }

    pub(crate) fn random_unit(rng: &mut ChaCha8Rng, dim: usize) -> Vec<f32> {
        let v: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0f64..1.0)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter().map(|x| (x / norm) as f32).collect()
    }

    #[test]
    fn he_scores_match_plaintext_quantised_scores_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (sk, pm) = generate_keypair().unwrap();
        for classes in [2usize, 5, 11, 21] {
            let head = random_head(&mut rng, classes, 384);
            let q = head.quantise().unwrap();
            for round in 0..2 {
                let x = random_unit(&mut rng, 384);
                let expected = q.plaintext_scores(&x).unwrap();
                // Alternate secret-key (seeded) and public-key requests.
                let req = if round == 0 {
                    encrypt_features(&sk, &x).unwrap()
                } else {
                    encrypt_features(&pm, &x).unwrap()
                };
                let resp = evaluate_classify(&pm, &q, &req).unwrap();
                let scores = decrypt_scores(&sk, &resp, classes).unwrap();
                assert_eq!(scores.quantised(), expected.as_slice(), "classes {classes}");

                // Float argmax agrees except near-ties.
                let float = head.float_scores(&x);
                let fmax = float
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, s)| if *s > float[b] { i } else { b });
                let he_max = scores.argmax();
                if he_max != fmax {
                    let gap = (float[fmax] - float[he_max]).abs();
                    assert!(gap < 1e-2, "argmax differs with gap {gap}");
                }
                let logits = scores.logits();
                for (l, f) in logits.iter().zip(&float) {
                    assert!((*l as f64 - f).abs() < 1e-2, "logit {l} vs {f}");
                }
            }
        }
    }

    #[test]
    fn argmax_matches_float_argmax_on_many_inputs() {
        // Plaintext-quantised argmax vs float argmax over many inputs (the
        // HE path is proven equal to the quantised one above).
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let head = random_head(&mut rng, 11, 384);
        let q = head.quantise().unwrap();
        let mut disagreements = 0;
        for _ in 0..500 {
            let x = random_unit(&mut rng, 384);
            let s = q.plaintext_scores(&x).unwrap();
            let qmax = s
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > s[b] { i } else { b });
            let f = head.float_scores(&x);
            let fmax = f
                .iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > f[b] { i } else { b });
            if qmax != fmax {
                disagreements += 1;
                assert!((f[qmax] - f[fmax]).abs() < 1e-3, "not a near-tie");
            }
        }
        assert!(disagreements <= 2, "{disagreements} disagreements");
    }

    #[test]
    fn response_hides_everything_but_the_scores() {
        // Coefficients other than the score positions decrypt to uniform
        // garbage, not to partial products of the weights.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (sk, pm) = generate_keypair().unwrap();
        let head = random_head(&mut rng, 3, 384);
        let q = head.quantise().unwrap();
        let x = random_unit(&mut rng, 384);
        let resp = evaluate_classify(&pm, &q, &encrypt_features(&sk, &x).unwrap()).unwrap();
        let (_, mut r) = wire::open(&resp, MessageKind::ClassifyResponse, usize::MAX).unwrap();
        r.key_id().unwrap();
        r.take(16).unwrap();
        let ct = wire::to_fhe_ciphertext(
            wire::read_ciphertext(&mut r, ParamSet::DEFAULT).unwrap(),
            ParamSet::DEFAULT,
        )
        .unwrap();
        let pt = sk.inner().try_decrypt(&ct).unwrap();
        let v = Vec::<i64>::try_decode(&pt, fhe::bfv::Encoding::poly()).unwrap();
        let half = ParamSet::DEFAULT.plaintext_half();
        // The product's non-score coefficients are < 2^33 in magnitude; after
        // masking, most must be large (uniform over ±t/2).
        let big = v
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % 384 != 0 || *i >= 3 * 384)
            .filter(|(_, x)| x.abs() > half / 1024)
            .count();
        assert!(big > 8000, "only {big} masked coefficients look uniform");
        // Two evaluations of the same request differ everywhere (re-randomised).
        let req = encrypt_features(&sk, &x).unwrap();
        let a = evaluate_classify(&pm, &q, &req).unwrap();
        let b = evaluate_classify(&pm, &q, &req).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn head_refusals() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut h = random_head(&mut rng, 3, 384);
        assert!(h.quantise().is_ok());
        h.bias.pop();
        assert!(matches!(h.quantise(), Err(HeError::InvalidHead(_))));
        let mut h = random_head(&mut rng, 22, 384); // 22·384 > 8192
        assert!(matches!(h.quantise(), Err(HeError::InvalidHead(_))));
        h = random_head(&mut rng, 2, 384);
        h.weights[1][7] = f32::NAN;
        assert!(matches!(h.quantise(), Err(HeError::InvalidHead(_))));
        h = random_head(&mut rng, 2, 384);
        h.weights[1].pop();
        assert!(matches!(h.quantise(), Err(HeError::InvalidHead(_))));
        h = random_head(&mut rng, 2, 384);
        h.bias[0] = 1e9; // would wrap modulo t
        assert!(matches!(h.quantise(), Err(HeError::InvalidHead(_))));
        let empty = LinearHead {
            labels: vec![],
            weights: vec![],
            bias: vec![],
        };
        assert!(matches!(empty.quantise(), Err(HeError::InvalidHead(_))));
    }

    #[test]
    fn request_refusals() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (sk, pm) = generate_keypair().unwrap();
        let (_, other_pm) = generate_keypair().unwrap();
        let q = random_head(&mut rng, 3, 384).quantise().unwrap();
        let x = random_unit(&mut rng, 384);
        let req = encrypt_features(&sk, &x).unwrap();

        // Features: not normalised, wrong length, non-finite, empty.
        let mut big = x.clone();
        big[0] = 2.0;
        assert!(matches!(
            encrypt_features(&sk, &big),
            Err(HeError::InvalidInput(_))
        ));
        assert!(matches!(
            encrypt_features(&sk, &[f32::NAN]),
            Err(HeError::InvalidInput(_))
        ));
        assert!(matches!(
            encrypt_features(&sk, &[]),
            Err(HeError::InvalidInput(_))
        ));
        let short = encrypt_features(&sk, &x[..100]).unwrap();
        assert!(matches!(
            evaluate_classify(&pm, &q, &short),
            Err(HeError::DimensionMismatch { .. })
        ));
        // Another user's key.
        assert!(matches!(
            evaluate_classify(&other_pm, &q, &req),
            Err(HeError::KeyMismatch { .. })
        ));
        // Wrong kind: public material as a request; a request as a response.
        assert!(matches!(
            evaluate_classify(&pm, &q, pm.to_bytes()),
            Err(HeError::WrongKind { .. })
        ));
        assert!(matches!(
            decrypt_scores(&sk, &req, 3),
            Err(HeError::WrongKind { .. })
        ));
        // Truncated, trailing, oversized, corrupted coefficient.
        assert!(matches!(
            evaluate_classify(&pm, &q, &req[..req.len() - 1]),
            Err(HeError::Truncated { .. })
        ));
        let mut long = req.clone();
        long.push(0);
        assert!(matches!(
            evaluate_classify(&pm, &q, &long),
            Err(HeError::TrailingBytes { .. })
        ));
        let huge = vec![0u8; MAX_CLASSIFY_REQUEST_BYTES + 1];
        assert!(matches!(
            evaluate_classify(&pm, &q, &huge),
            Err(HeError::TooLarge { .. })
        ));
        let mut bad = req.clone();
        let body = wire::HEADER_LEN + wire::KEY_ID_LEN + 4 + 1;
        bad[body..body + 7].fill(0xff);
        assert!(matches!(
            evaluate_classify(&pm, &q, &bad),
            Err(HeError::Malformed { .. })
        ));
        let mut form = req.clone();
        form[body - 1] = 9;
        assert!(matches!(
            evaluate_classify(&pm, &q, &form),
            Err(HeError::Malformed { .. })
        ));
        // Wrong class count on decryption.
        let resp = evaluate_classify(&pm, &q, &req).unwrap();
        assert!(matches!(
            decrypt_scores(&sk, &resp, 4),
            Err(HeError::DimensionMismatch { .. })
        ));
        // Scores never show in Debug.
        let s = decrypt_scores(&sk, &resp, 3).unwrap();
        assert!(format!("{s:?}").contains("<redacted>"));
    }
}
