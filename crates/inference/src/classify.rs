//! The `classify` workload: MiniLM sentence embeddings followed by a linear
//! (multinomial logistic regression) head.
//!
//! The head is trained by `train-classify` on the drug-review data (label:
//! the patient's condition, the most frequent conditions plus `other`) and
//! committed as `assets/classify_head.json`, with its held-out accuracy. The
//! same [`LinearHead`] is what the homomorphic-encryption evaluator runs on
//! ciphertexts, so it is a plain public struct with a loader.

use serde::{Deserialize, Serialize};

use crate::embed::EMBED_DIM;
use crate::InferenceError;

/// The committed head, compiled in (its hash is in the classify manifest).
pub const HEAD_JSON: &[u8] = include_bytes!("../assets/classify_head.json");
/// Format tag of the head file.
pub const HEAD_FORMAT: &str = "archipelago-linear-head-v1";
/// Largest head file accepted.
const MAX_HEAD_BYTES: usize = 4 * 1024 * 1024;
const MAX_CLASSES: usize = 1024;

/// A linear classifier over embeddings: `logits = weights · x + bias`,
/// probabilities by softmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub labels: Vec<String>,
    /// `[class][dim]`.
    pub weights: Vec<Vec<f32>>,
    pub bias: Vec<f32>,
}

/// Held-out figures recorded by the training command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadMetrics {
    pub train_examples: usize,
    pub test_examples: usize,
    /// Top-1 accuracy on the test split.
    pub test_accuracy: f64,
    pub test_top3_accuracy: f64,
    /// Accuracy of always answering the most frequent training label.
    pub majority_baseline: f64,
}

/// The committed file: the head plus how it was made and how well it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadFile {
    pub format: String,
    pub task: String,
    pub embedding: String,
    pub dataset: String,
    pub training: String,
    pub metrics: HeadMetrics,
    #[serde(flatten)]
    pub head: LinearHead,
}

impl HeadFile {
    /// Parses and validates a head file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InferenceError> {
        let bad = |m: String| InferenceError::load("classify head", m);
        if bytes.len() > MAX_HEAD_BYTES {
            return Err(bad(format!(
                "{} bytes exceeds the {MAX_HEAD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let f: HeadFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if f.format != HEAD_FORMAT {
            return Err(bad(format!("format must be {HEAD_FORMAT:?}")));
        }
        f.head.validate(EMBED_DIM)?;
        Ok(f)
    }

    /// The committed head file.
    pub fn builtin() -> Result<Self, InferenceError> {
        Self::from_json(HEAD_JSON)
    }
}

impl LinearHead {
    /// The committed head (what the `classify` workload and the HE
    /// evaluator use).
    pub fn builtin() -> Result<Self, InferenceError> {
        Ok(HeadFile::builtin()?.head)
    }

    /// Loads a head from a head file's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InferenceError> {
        Ok(HeadFile::from_json(bytes)?.head)
    }

    /// Checks shapes and values.
    pub fn validate(&self, dim: usize) -> Result<(), InferenceError> {
        let bad = |m: String| InferenceError::load("classify head", m);
        let n = self.labels.len();
        if !(2..=MAX_CLASSES).contains(&n) {
            return Err(bad(format!("{n} classes; need 2..={MAX_CLASSES}")));
        }
        if self.weights.len() != n || self.bias.len() != n {
            return Err(bad(format!(
                "{n} labels but {} weight rows and {} biases",
                self.weights.len(),
                self.bias.len()
            )));
        }
        if let Some(r) = self.weights.iter().position(|r| r.len() != dim) {
            return Err(bad(format!(
                "weight row {r} has {} values, expected {dim}",
                self.weights[r].len()
            )));
        }
        if !self
            .weights
            .iter()
            .flatten()
            .chain(&self.bias)
            .all(|v| v.is_finite())
        {
            return Err(bad("non-finite weight".into()));
        }
        Ok(())
    }

    pub fn dim(&self) -> usize {
        self.weights.first().map_or(0, Vec::len)
    }

    /// `weights · x + bias`.
    pub fn logits(&self, x: &[f32]) -> Vec<f32> {
        self.weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>() + b)
            .collect()
    }

    /// Softmax of the logits.
    pub fn probabilities(&self, x: &[f32]) -> Vec<f32> {
        softmax(&self.logits(x))
    }

    /// The `k` most probable labels, best first.
    pub fn top_k(&self, x: &[f32], k: usize) -> Vec<(String, f32)> {
        let p = self.probabilities(x);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        idx.into_iter()
            .take(k)
            .map(|i| (self.labels[i].clone(), p[i]))
            .collect()
    }
}

/// Numerically stable softmax.
pub fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Options of [`train_logistic`].
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub epochs: usize,
    pub learning_rate: f32,
    /// L2 penalty on the weights (not the bias).
    pub l2: f32,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 3000,
            learning_rate: 0.05,
            l2: 1e-4,
        }
    }
}

/// Multinomial logistic regression by full-batch Adam on the mean
/// cross-entropy plus an L2 penalty. Deterministic (zero init, fixed order).
pub fn train_logistic(
    x: &[Vec<f32>],
    y: &[usize],
    labels: Vec<String>,
    opts: TrainOptions,
) -> LinearHead {
    let k = labels.len();
    let d = x.first().map_or(0, Vec::len);
    let n = x.len().max(1) as f32;
    let mut w = vec![vec![0f32; d]; k];
    let mut b = vec![0f32; k];
    let (mut mw, mut vw) = (vec![vec![0f32; d]; k], vec![vec![0f32; d]; k]);
    let (mut mb, mut vb) = (vec![0f32; k], vec![0f32; k]);
    let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut head = LinearHead {
        labels,
        weights: w.clone(),
        bias: b.clone(),
    };
    for t in 1..=opts.epochs {
        head.weights.clone_from(&w);
        head.bias.clone_from(&b);
        let mut gw = vec![vec![0f32; d]; k];
        let mut gb = vec![0f32; k];
        for (xi, &yi) in x.iter().zip(y) {
            let p = head.probabilities(xi);
            for c in 0..k {
                let g = p[c] - if c == yi { 1.0 } else { 0.0 };
                gb[c] += g / n;
                for (gwj, xj) in gw[c].iter_mut().zip(xi) {
                    *gwj += g * xj / n;
                }
            }
        }
        let lr_t =
            opts.learning_rate * (1.0 - b2.powi(t as i32)).sqrt() / (1.0 - b1.powi(t as i32));
        for c in 0..k {
            for j in 0..d {
                let g = gw[c][j] + opts.l2 * w[c][j];
                mw[c][j] = b1 * mw[c][j] + (1.0 - b1) * g;
                vw[c][j] = b2 * vw[c][j] + (1.0 - b2) * g * g;
                w[c][j] -= lr_t * mw[c][j] / (vw[c][j].sqrt() + eps);
            }
            let g = gb[c];
            mb[c] = b1 * mb[c] + (1.0 - b1) * g;
            vb[c] = b2 * vb[c] + (1.0 - b2) * g * g;
            b[c] -= lr_t * mb[c] / (vb[c].sqrt() + eps);
        }
    }
    head.weights = w;
    head.bias = b;
    head
}

/// Top-1 and top-3 accuracy of `head` on labelled embeddings.
pub fn accuracy(head: &LinearHead, x: &[Vec<f32>], y: &[usize]) -> (f64, f64) {
    let mut top1 = 0usize;
    let mut top3 = 0usize;
    for (xi, &yi) in x.iter().zip(y) {
        let p = head.probabilities(xi);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        top1 += usize::from(idx[0] == yi);
        top3 += usize::from(idx.iter().take(3).any(|&i| i == yi));
    }
    let n = x.len().max(1) as f64;
    (top1 as f64 / n, top3 as f64 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_head_loads_with_recorded_metrics() {
        let f = HeadFile::builtin().unwrap();
        assert_eq!(f.head.dim(), EMBED_DIM);
        assert!(f.head.labels.iter().any(|l| l == "other"));
        assert!(
            f.metrics.test_accuracy > f.metrics.majority_baseline,
            "head is no better than the majority label"
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        let good = LinearHead {
            labels: vec!["a".into(), "b".into()],
            weights: vec![vec![0.0; 3]; 2],
            bias: vec![0.0; 2],
        };
        assert!(good.validate(3).is_ok());
        let mut h = good.clone();
        h.bias.pop();
        assert!(h.validate(3).is_err());
        let mut h = good.clone();
        h.weights[1].push(1.0);
        assert!(h.validate(3).is_err());
        let mut h = good.clone();
        h.weights[0][0] = f32::NAN;
        assert!(h.validate(3).is_err());
        let mut h = good;
        h.labels.truncate(1);
        h.weights.truncate(1);
        h.bias.truncate(1);
        assert!(h.validate(3).is_err());
        assert!(LinearHead::from_json(b"{}").is_err());
        assert!(LinearHead::from_json(&vec![b' '; MAX_HEAD_BYTES + 1]).is_err());
    }

    #[test]
    fn logistic_regression_separates_separable_data() {
        let x = vec![
            vec![1.0, 0.0],
            vec![0.9, 0.1],
            vec![0.0, 1.0],
            vec![0.1, 0.9],
        ];
        let y = vec![0, 0, 1, 1];
        let head = train_logistic(
            &x,
            &y,
            vec!["a".into(), "b".into()],
            TrainOptions {
                epochs: 200,
                ..Default::default()
            },
        );
        assert_eq!(accuracy(&head, &x, &y).0, 1.0);
        let top = head.top_k(&[1.0, 0.0], 2);
        assert_eq!(top[0].0, "a");
        assert!(top[0].1 > 0.5 && (top[0].1 + top[1].1 - 1.0).abs() < 1e-5);
    }
}
