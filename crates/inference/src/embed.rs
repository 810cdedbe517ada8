//! The `embed` workload: all-MiniLM-L6-v2 sentence embeddings.
//!
//! BERT forward pass ([`crate::minilm`], fused CPU kernels), mean pooling
//! over each sentence's own tokens, L2 normalisation: the
//! sentence-transformers recipe. The model's tokenizer.json pads every input
//! to 128 tokens; padding is switched off and every sentence of a batch is
//! run at its true length (padding to 128 costs about 3x).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::manifest::{read_verified, WorkloadKind};
use crate::minilm::MiniLm;
use crate::InferenceError;

/// Embedding width of all-MiniLM-L6-v2.
pub const EMBED_DIM: usize = 384;
/// Tokens per text kept (sentence-transformers' `max_seq_length`); longer
/// texts are truncated, as the reference implementation does.
pub const MAX_SEQ_TOKENS: usize = 256;
/// Most sentences run through the model at once (bounds the activations'
/// memory: 16 × 256 tokens × 1536 floats for the widest layer).
const MAX_GROUP: usize = 16;

/// A loaded MiniLM model and tokenizer. `Send + Sync`: share one per process.
pub struct Embedder {
    model: MiniLm,
    tokenizer: Tokenizer,
}

impl Embedder {
    /// Loads the pinned model files from `dir`, verifying their hashes.
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        let m = WorkloadKind::Embed.manifest();
        let file = |i: usize| read_verified(dir, &m.files[i].0, &m.files[i].1);
        let (cfg, weights, tok) = (file(0)?, file(1)?, file(2)?);
        let model = MiniLm::from_bytes(&cfg, &weights)
            .map_err(|e| InferenceError::load("MiniLM model", e))?;
        if model.hidden_size() != EMBED_DIM || model.max_positions() < MAX_SEQ_TOKENS {
            return Err(InferenceError::load(
                "MiniLM model",
                "dimensions differ from all-MiniLM-L6-v2",
            ));
        }
        let mut tokenizer = Tokenizer::from_bytes(&tok)
            .map_err(|e| InferenceError::load("MiniLM tokenizer.json", e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| InferenceError::load("MiniLM tokenizer truncation", e))?;
        Ok(Self { model, tokenizer })
    }

    /// Token ids of one text (with `[CLS]`/`[SEP]`, truncated).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        // The tokenizer's error could quote the input: report a fixed message.
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|_| InferenceError::engine("embed tokenizer", "tokenization failed"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// L2-normalised embeddings, one per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<_, _>>()?;
        self.embed_ids(&ids)
    }

    /// Embeddings of already tokenised texts (each 1..=[`MAX_SEQ_TOKENS`]
    /// ids from this model's vocabulary).
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InferenceError> {
        for (i, s) in ids.iter().enumerate() {
            if s.is_empty() || s.len() > MAX_SEQ_TOKENS {
                return Err(InferenceError::input(format!(
                    "sequence {i} has {} tokens; 1..={MAX_SEQ_TOKENS} allowed",
                    s.len()
                )));
            }
            if s.iter().any(|&t| t as usize >= self.model.vocab_size()) {
                return Err(InferenceError::input(format!(
                    "sequence {i} has a token id outside the vocabulary"
                )));
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for group in ids.chunks(MAX_GROUP) {
            let seqs: Vec<&[u32]> = group.iter().map(Vec::as_slice).collect();
            for mut v in self.model.mean_pooled(&seqs) {
                l2_normalize(&mut v);
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// Scales `v` to unit L2 norm (a zero vector stays zero).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}
