//! The `embed` workload: all-MiniLM-L6-v2 sentence embeddings.
//!
//! BERT forward pass in candle, mean pooling over real tokens (the attention
//! mask), L2 normalisation: the sentence-transformers recipe. The model's
//! tokenizer.json pads every input to 128 tokens; padding is switched off
//! and a batch is grouped by length, so a short sentence costs only its own
//! tokens (padding to 128 costs about 3x).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::manifest::{read_verified, WorkloadKind};
use crate::InferenceError;

/// Embedding width of all-MiniLM-L6-v2.
pub const EMBED_DIM: usize = 384;
/// Tokens per text kept (sentence-transformers' `max_seq_length`); longer
/// texts are truncated, as the reference implementation does.
pub const MAX_SEQ_TOKENS: usize = 256;
/// Largest group run through the model at once.
const MAX_GROUP: usize = 16;

/// A loaded MiniLM model and tokenizer. `Send + Sync`: share one per process.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl Embedder {
    /// Loads the pinned model files from `dir`, verifying their hashes.
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        let m = WorkloadKind::Embed.manifest();
        let file = |i: usize| read_verified(dir, &m.files[i].0, &m.files[i].1);
        let (cfg, weights, tok) = (file(0)?, file(1)?, file(2)?);
        let config: Config = serde_json::from_slice(&cfg)
            .map_err(|e| InferenceError::load("MiniLM config.json", e))?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| InferenceError::load("MiniLM model.safetensors", e))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| InferenceError::load("MiniLM weights", e))?;
        let mut tokenizer = Tokenizer::from_bytes(&tok)
            .map_err(|e| InferenceError::load("MiniLM tokenizer.json", e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| InferenceError::load("MiniLM tokenizer truncation", e))?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
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

    /// Embeddings of already tokenised texts.
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); ids.len()];
        let mut start = 0;
        while start < order.len() {
            // Grow the group while padding stays under ~20% of its tokens.
            let min_len = ids[order[start]].len().max(1);
            let mut end = start + 1;
            while end < order.len()
                && end - start < MAX_GROUP
                && ids[order[end]].len() * 5 <= min_len * 6
            {
                end += 1;
            }
            let group: Vec<&[u32]> = order[start..end]
                .iter()
                .map(|&i| ids[i].as_slice())
                .collect();
            let embs = self.forward_group(&group)?;
            for (k, e) in order[start..end].iter().zip(embs) {
                out[*k] = e;
            }
            start = end;
        }
        Ok(out)
    }

    fn forward_group(&self, group: &[&[u32]]) -> Result<Vec<Vec<f32>>, InferenceError> {
        let err = |e: candle_core::Error| InferenceError::engine("embed forward", e);
        let b = group.len();
        let len = group.iter().map(|g| g.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, g) in group.iter().enumerate() {
            flat[r * len..r * len + g.len()].copy_from_slice(g);
            mask[r * len..r * len + g.len()]
                .iter_mut()
                .for_each(|m| *m = 1.0);
        }
        let input = Tensor::from_vec(flat, (b, len), &self.device).map_err(err)?;
        let types = input.zeros_like().map_err(err)?;
        let mask_t = Tensor::from_vec(mask, (b, len), &self.device).map_err(err)?;
        let attn = if group.iter().all(|g| g.len() == len) {
            None
        } else {
            Some(&mask_t)
        };
        let hidden = self.model.forward(&input, &types, attn).map_err(err)?; // (b, len, dim)
        let summed = hidden
            .broadcast_mul(&mask_t.unsqueeze(2).map_err(err)?)
            .map_err(err)?
            .sum(1)
            .map_err(err)?;
        let rows: Vec<Vec<f32>> = summed.to_vec2().map_err(err)?;
        Ok(rows
            .into_iter()
            .zip(group)
            .map(|(mut v, g)| {
                let n = g.len().max(1) as f32;
                v.iter_mut().for_each(|x| *x /= n);
                l2_normalize(&mut v);
                v
            })
            .collect())
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
