//! The `chat` workload: SmolLM2-135M-Instruct from its Q4_1 GGUF.
//!
//! Everything comes from the one GGUF file in the manifest: weights, the
//! byte-level BPE tokenizer (vocabulary, merges and control tokens are in the
//! GGUF metadata) and the ChatML chat template. candle has no fast Q4_1
//! kernel, so at load the Q4_1 tensors are dequantised once to f32 (exact),
//! which candle multiplies with its multi-threaded gemm. Q8_0 re-encoding is
//! kept for comparison: candle's quantized CPU matmul is single-threaded, and
//! measured slower here on 2 cores (see [`WeightFormat`]). Sampling is
//! temperature / top-p with an explicit seed, so a job is reproducible.

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::ModelWeights;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::manifest::{read_verified, WorkloadKind};
use crate::InferenceError;

/// Most tokens a job may ask for.
pub const MAX_NEW_TOKENS: usize = 1024;
/// Default `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most prompt tokens (after the chat template).
pub const MAX_PROMPT_TOKENS: usize = 2048;

/// How Q4_1 weights are held in memory after loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Dequantise Q4_1 to f32 (exact; multi-threaded gemm; default).
    #[default]
    F32,
    /// Re-encode Q4_1 to Q8_0 (AVX2 dot products, but candle runs quantized
    /// CPU matmuls on one thread; for comparison).
    Q8_0,
    /// Keep Q4_1 (candle's generic kernel; for comparison).
    Original,
}

/// One chat message. Holds job plaintext: no `Debug`, zeroised on drop.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Drop for Message {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.content);
    }
}

/// Sampling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: Some(0.9),
            max_tokens: DEFAULT_MAX_TOKENS,
            seed: 0,
        }
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model emitted an end-of-turn token.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Result of one generation. Holds job plaintext: no `Debug`, zeroised on drop.
pub struct Generation {
    pub text: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
}

impl Drop for Generation {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.text);
    }
}

/// SmolLM2 loaded for generation. `Send + Sync`; each generation works on
/// its own cheap clone of the weights (tensors are shared), so concurrent
/// jobs do not contend.
pub struct ChatModel {
    weights: ModelWeights,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    control_tokens: Vec<String>,
    default_system: Option<String>,
    device: Device,
}

fn md_str<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a String, InferenceError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| InferenceError::load("SmolLM2 GGUF", format!("metadata {key} missing")))?
        .to_string()
        .map_err(|e| InferenceError::load("SmolLM2 GGUF", format!("metadata {key}: {e}")))
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Result<u32, InferenceError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| InferenceError::load("SmolLM2 GGUF", format!("metadata {key} missing")))?
        .to_u32()
        .map_err(|e| InferenceError::load("SmolLM2 GGUF", format!("metadata {key}: {e}")))
}

fn md_strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>, InferenceError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| InferenceError::load("SmolLM2 GGUF", format!("metadata {key} missing")))?
        .to_vec()
        .map_err(|e| InferenceError::load("SmolLM2 GGUF", format!("metadata {key}: {e}")))?;
    v.iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|e| InferenceError::load("SmolLM2 GGUF", format!("metadata {key}: {e}")))
        })
        .collect()
}

impl ChatModel {
    /// Loads the pinned GGUF from `dir` (hash-checked) with f32 weights.
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        Self::load_with(dir, WeightFormat::default())
    }

    /// Loads with an explicit in-memory weight format.
    pub fn load_with(dir: &Path, format: WeightFormat) -> Result<Self, InferenceError> {
        let m = WorkloadKind::Chat.manifest();
        let bytes = read_verified(dir, &m.files[0].0, &m.files[0].1)?;
        Self::from_gguf_bytes(bytes, format)
    }

    fn from_gguf_bytes(bytes: Vec<u8>, format: WeightFormat) -> Result<Self, InferenceError> {
        let lerr = |e: candle_core::Error| InferenceError::load("SmolLM2 GGUF", e);
        let device = Device::Cpu;
        let mut reader = Cursor::new(bytes);
        let ct = gguf_file::Content::read(&mut reader).map_err(lerr)?;
        let tokenizer_parts = tokenizer_from_gguf(&ct)?;
        let template = md_str(&ct, "tokenizer.chat_template")?.clone();
        let default_system = chatml_default_system(&template)?;

        let weights = if format == WeightFormat::Original {
            ModelWeights::from_gguf(ct, &mut reader, &device).map_err(lerr)?
        } else {
            // Re-encode the Q4_1 tensors, write an in-memory GGUF with the
            // same metadata, and load that.
            let target = if format == WeightFormat::F32 {
                GgmlDType::F32
            } else {
                GgmlDType::Q8_0
            };
            let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
            names.sort();
            let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
            for name in names {
                let qt = ct.tensor(&mut reader, name, &device).map_err(lerr)?;
                // f32 mode converts every quantized tensor (the tied
                // Q8_0 embedding/output matrix too: candle would run it on
                // one thread); Q8_0 mode re-encodes only Q4_1.
                let convert = match format {
                    WeightFormat::Q8_0 => qt.dtype() == GgmlDType::Q4_1,
                    _ => qt.dtype() != GgmlDType::F32,
                };
                let qt = if convert {
                    let t = qt.dequantize(&device).map_err(lerr)?;
                    QTensor::quantize(&t, target).map_err(lerr)?
                } else {
                    qt
                };
                tensors.push((name.clone(), qt));
            }
            let md: Vec<(&str, &gguf_file::Value)> =
                ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
            let mut buf = Cursor::new(Vec::new());
            gguf_file::write(&mut buf, &md, &ts).map_err(lerr)?;
            drop(tensors);
            buf.set_position(0);
            let ct2 = gguf_file::Content::read(&mut buf).map_err(lerr)?;
            ModelWeights::from_gguf(ct2, &mut buf, &device).map_err(lerr)?
        };
        let (tokenizer, stop_ids, control_tokens) = tokenizer_parts;
        Ok(Self {
            weights,
            tokenizer,
            stop_ids,
            control_tokens,
            default_system,
            device,
        })
    }

    /// Renders messages with the model's ChatML template (adding its
    /// default system prompt when the first message is not a system one)
    /// and the assistant generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String, InferenceError> {
        let mut out = String::new();
        for (i, msg) in messages.iter().enumerate() {
            if !matches!(msg.role.as_str(), "system" | "user" | "assistant") {
                return Err(InferenceError::input(format!(
                    "messages[{i}].role must be system, user or assistant"
                )));
            }
            if self
                .control_tokens
                .iter()
                .any(|t| msg.content.contains(t.as_str()))
            {
                return Err(InferenceError::input(format!(
                    "messages[{i}].content contains a reserved control token"
                )));
            }
            if i == 0 && msg.role != "system" {
                if let Some(sys) = &self.default_system {
                    out.push_str("<|im_start|>system\n");
                    out.push_str(sys);
                    out.push_str("<|im_end|>\n");
                }
            }
            out.push_str("<|im_start|>");
            out.push_str(&msg.role);
            out.push('\n');
            out.push_str(&msg.content);
            out.push_str("<|im_end|>\n");
        }
        out.push_str("<|im_start|>assistant\n");
        Ok(out)
    }

    /// Token ids of text (control tokens recognised).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|_| InferenceError::engine("chat tokenizer", "tokenization failed"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text (control tokens dropped).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, InferenceError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|_| InferenceError::engine("chat detokenizer", "decoding failed"))
    }

    /// Generates a reply to `messages`; `on_text` receives each new piece of
    /// text as soon as it decodes to whole characters.
    pub fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, InferenceError> {
        let prompt = self.render(messages)?;
        let ids = self.tokenize(&prompt)?;
        self.generate_ids(&ids, params, on_text)
    }

    /// Generation from prompt token ids.
    pub fn generate_ids(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, InferenceError> {
        if prompt.is_empty() {
            return Err(InferenceError::input("prompt is empty"));
        }
        if prompt.len() > MAX_PROMPT_TOKENS {
            return Err(InferenceError::input(format!(
                "prompt is {} tokens after the chat template; the limit is {MAX_PROMPT_TOKENS}",
                prompt.len()
            )));
        }
        if params.max_tokens == 0 || params.max_tokens > MAX_NEW_TOKENS {
            return Err(InferenceError::input(format!(
                "max_tokens must be 1..={MAX_NEW_TOKENS}"
            )));
        }
        let err = |e: candle_core::Error| InferenceError::engine("chat forward", e);
        let mut model = self.weights.clone();
        model.clear_kv_cache();
        let temperature = if params.temperature <= 0.0 {
            None
        } else {
            Some(params.temperature)
        };
        let mut sampler = LogitsProcessor::new(params.seed, temperature, params.top_p);

        let input = Tensor::new(prompt, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(err)?;
        let mut logits = model.forward(&input, 0).map_err(err)?;
        let mut generated: Vec<u32> = Vec::new();
        let mut emitted = 0usize;
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        for step in 0..params.max_tokens {
            let l = logits.squeeze(0).map_err(err)?;
            let next = sampler.sample(&l).map_err(err)?;
            if self.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            generated.push(next);
            text = self.detokenize(&generated)?;
            // Emit only whole characters: a byte-level token can end inside
            // a multi-byte character, which decodes to U+FFFD until complete.
            if !text.ends_with('\u{FFFD}') && text.len() > emitted && text.is_char_boundary(emitted)
            {
                on_text(&text[emitted..]);
                emitted = text.len();
            }
            if step + 1 == params.max_tokens {
                break;
            }
            let input = Tensor::new(&[next], &self.device)
                .and_then(|t| t.unsqueeze(0))
                .map_err(err)?;
            logits = model.forward(&input, prompt.len() + step).map_err(err)?;
        }
        if text.len() > emitted && text.is_char_boundary(emitted) {
            on_text(&text[emitted..]);
        }
        Ok(Generation {
            text,
            tokens: generated.len(),
            prompt_tokens: prompt.len(),
            finish_reason: finish,
        })
    }
}

type TokenizerParts = (Tokenizer, Vec<u32>, Vec<String>);

/// Builds SmolLM2's byte-level BPE tokenizer from the GGUF metadata: the
/// vocabulary, merges, control tokens (token type 3), and the pre-tokenizer
/// of its `smollm` family (individual digits, then GPT-2 byte-level split).
fn tokenizer_from_gguf(ct: &gguf_file::Content) -> Result<TokenizerParts, InferenceError> {
    let model = md_str(ct, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(InferenceError::load(
            "SmolLM2 GGUF",
            format!("tokenizer model {model:?} is not gpt2 (byte-level BPE)"),
        ));
    }
    let tokens = md_strings(ct, "tokenizer.ggml.tokens")?;
    let merges = md_strings(ct, "tokenizer.ggml.merges")?;
    let types: Vec<u32> = ct
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|t| {
                    t.to_i32()
                        .map(|x| x as u32)
                        .or_else(|_| t.to_u32())
                        .unwrap_or(1)
                })
                .collect()
        })
        .unwrap_or_default();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| InferenceError::load("SmolLM2 GGUF", "malformed merge"))
        })
        .collect::<Result<_, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| InferenceError::load("SmolLM2 tokenizer", e))?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk.with_decoder(Some(ByteLevel::default()));
    let control: Vec<String> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| s.clone())
        .collect();
    let added: Vec<AddedToken> = control
        .iter()
        .map(|c| AddedToken::from(c.clone(), true))
        .collect();
    tk.add_special_tokens(&added);
    let eos = md_u32(ct, "tokenizer.ggml.eos_token_id")?;
    let mut stop = vec![eos];
    for name in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(i) = tokens.iter().position(|t| t == name) {
            if !stop.contains(&(i as u32)) {
                stop.push(i as u32);
            }
        }
    }
    Ok((tk, stop, control))
}

/// Checks the GGUF's chat template is ChatML and extracts the default system
/// prompt it inserts when a conversation has none.
fn chatml_default_system(template: &str) -> Result<Option<String>, InferenceError> {
    if !(template.contains("<|im_start|>")
        && template.contains("<|im_end|>")
        && template.contains("message['role']"))
    {
        return Err(InferenceError::load(
            "SmolLM2 GGUF",
            "chat template is not ChatML; this runtime renders ChatML only",
        ));
    }
    const OPEN: &str = "'<|im_start|>system\n";
    Ok(template.find(OPEN).and_then(|s| {
        let rest = &template[s + OPEN.len()..];
        rest.find("<|im_end|>").map(|e| rest[..e].to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_system_prompt_is_extracted() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are X<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(
            chatml_default_system(t).unwrap().as_deref(),
            Some("You are X")
        );
        assert!(chatml_default_system("{{ bos_token }}[INST]").is_err());
    }
}
