//! The `chat` workload: SmolLM2-135M-Instruct from its Q4_1 GGUF, run by
//! llama.cpp (through the `llama-cpp-2` crate).
//!
//! llama.cpp runs the Q4_1 weights as they are, with its AVX2 quantised
//! kernels on a thread pool: on an idle machine it generates about 4x
//! faster than candle did with the weights dequantised to f32 (issue 6,
//! BENCHMARKS.md), which is why this workload uses it (embeddings and
//! classification run on [`crate::minilm`]). Everything comes from the one GGUF file
//! in the manifest, which the enclave measurement covers: weights, the
//! byte-level BPE tokenizer (llama.cpp builds it from the GGUF metadata) and
//! the ChatML chat template. The file is hash-checked through an open handle
//! and llama.cpp reads it through that handle.
//!
//! Sampling is done here, not by llama.cpp: greedy (temperature 0) or
//! temperature / top-p with an explicit seed, so a job is reproducible.
//! llama.cpp's own logging is switched off: it can print prompt fragments.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rand::{Rng, SeedableRng};
use zeroize::Zeroize;

use crate::manifest::{open_verified, WorkloadKind};
use crate::InferenceError;

/// Most tokens a job may ask for.
pub const MAX_NEW_TOKENS: usize = 1024;
/// Default `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most prompt tokens (after the chat template).
pub const MAX_PROMPT_TOKENS: usize = 2048;
/// Most llama.cpp threads by default: a 135M-parameter model gains nothing
/// beyond this, and more threads only spin.
pub const MAX_DEFAULT_THREADS: usize = 8;

/// One chat message. Holds job plaintext: no `Debug`, zeroised on drop.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Drop for Message {
    fn drop(&mut self) {
        self.content.zeroize();
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
        self.text.zeroize();
    }
}

/// llama.cpp's process-wide backend: initialised once, logging off.
fn backend() -> Result<&'static LlamaBackend, InferenceError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(
                llama_cpp_2::LogOptions::default().with_logs_enabled(false),
            );
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| InferenceError::load("llama.cpp backend", e))
}

/// SmolLM2 loaded for generation. `Send + Sync`: the weights are shared and
/// read-only; each generation gets its own llama.cpp context (KV cache), so
/// concurrent jobs do not contend except while a context is created.
pub struct ChatModel {
    model: LlamaModel,
    threads: i32,
    stop_ids: Vec<LlamaToken>,
    control_tokens: Vec<String>,
    default_system: Option<String>,
    /// llama.cpp's context constructor is not safe to call concurrently on
    /// one model (it can adjust model fields).
    new_context: Mutex<()>,
}

impl ChatModel {
    /// Loads the pinned GGUF from `dir` (hash-checked), with one llama.cpp
    /// thread per available core (at most [`MAX_DEFAULT_THREADS`]).
    pub fn load(dir: &Path) -> Result<Self, InferenceError> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_DEFAULT_THREADS);
        Self::load_with_threads(dir, threads)
    }

    /// Loads with an explicit llama.cpp thread count (benchmarks).
    pub fn load_with_threads(dir: &Path, threads: usize) -> Result<Self, InferenceError> {
        let lerr = |e: &dyn std::fmt::Display| InferenceError::load("SmolLM2 GGUF", e);
        let threads = i32::try_from(threads.clamp(1, 256)).unwrap_or(1);
        let m = WorkloadKind::Chat.manifest();
        let (name, sha) = &m.files[0];
        let file = open_verified(dir, name, sha)?;
        let backend = backend()?;
        // Read through the checked handle where /proc exposes it.
        let path = proc_fd_path(&file).unwrap_or_else(|| dir.join(name));
        // No mmap: the weights are read once into memory, so later writes
        // to the file cannot change what runs.
        let params = LlamaModelParams::default().with_use_mmap(false);
        let model = LlamaModel::load_from_file(backend, &path, &params).map_err(|e| lerr(&e))?;
        drop(file);

        let template = model
            .chat_template(None)
            .map_err(|e| lerr(&e))?
            .to_string()
            .map_err(|e| lerr(&e))?;
        let default_system = chatml_default_system(&template)?;

        let vocab = model.vocab();
        let mut control_tokens = Vec::new();
        let mut stop_ids = vec![vocab.eos()];
        for t in vocab.tokens() {
            let text = vocab
                .text(t)
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            if vocab.is_control(t) && !text.is_empty() {
                control_tokens.push(text.clone());
            }
            if (vocab.is_eog(t) || text == "<|im_end|>" || text == "<|endoftext|>")
                && !stop_ids.contains(&t)
            {
                stop_ids.push(t);
            }
        }
        if !control_tokens.iter().any(|t| t == "<|im_start|>") {
            return Err(lerr(&"vocabulary has no <|im_start|> control token"));
        }
        Ok(Self {
            model,
            threads,
            stop_ids,
            control_tokens,
            default_system,
            new_context: Mutex::new(()),
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

    /// Token ids of text (control tokens recognised, no BOS added).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        if text.len() > i32::MAX as usize / 2 {
            return Err(InferenceError::input("text too long to tokenize"));
        }
        Ok(self
            .model
            .vocab()
            .tokenize(text.as_bytes(), false, true)
            .into_iter()
            .map(|t| t.0 as u32)
            .collect())
    }

    /// Decodes ids to text (control tokens dropped, invalid UTF-8 replaced).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, InferenceError> {
        let vocab = self.model.vocab();
        let mut bytes = Vec::new();
        for &id in ids {
            vocab.token_to_piece_into(self.token(id)?, &mut bytes, false, None);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        bytes.zeroize();
        Ok(text)
    }

    fn token(&self, id: u32) -> Result<LlamaToken, InferenceError> {
        match i32::try_from(id) {
            Ok(i) if i < self.model.n_vocab() => Ok(LlamaToken(i)),
            _ => Err(InferenceError::input(format!(
                "token id {id} is outside the vocabulary"
            ))),
        }
    }

    /// Generates a reply to `messages`; `on_text` receives each new piece of
    /// text as soon as it decodes to whole characters.
    ///
    /// Call it from a thread that ends with the job, not from a long-lived
    /// pool thread (such as tokio's blocking pool): llama.cpp's OpenMP keeps
    /// a team of worker threads for every thread that calls it, for that
    /// thread's life, and once there are more such workers than CPUs it
    /// stops spinning at its barriers, which made generation 2.2x slower
    /// (BENCHMARKS.md, issue 5). The island agent and the enclave run each
    /// job on a fresh thread for this reason.
    pub fn generate(
        &self,
        messages: &[Message],
        params: &SamplingParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation, InferenceError> {
        let mut prompt = self.render(messages)?;
        let ids = self.tokenize(&prompt);
        prompt.zeroize();
        self.generate_ids(&ids?, params, on_text)
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
        let prompt: Vec<LlamaToken> = prompt
            .iter()
            .map(|&id| self.token(id))
            .collect::<Result<_, _>>()?;

        // A context (KV cache) sized for this job: prompt + new tokens.
        let n_ctx = (prompt.len() + params.max_tokens) as u32;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(n_ctx)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_no_perf(true);
        let mut ctx = {
            let _guard = self.new_context.lock().map_err(|_| {
                InferenceError::engine("chat context", "lock poisoned by an earlier panic")
            })?;
            self.model
                .new_context(backend()?, ctx_params)
                .map_err(|e| InferenceError::engine("chat context", e))?
        };

        let mut batch = LlamaBatch::new(prompt.len(), 1);
        let last = prompt.len() - 1;
        for (i, &t) in prompt.iter().enumerate() {
            batch
                .add(t, i as i32, &[0], i == last)
                .map_err(|e| InferenceError::engine("chat prompt batch", e))?;
        }
        ctx.decode(&mut batch)
            .map_err(|e| InferenceError::engine("chat prompt decode", e))?;
        let mut logits_at = batch.n_tokens() - 1;

        let mut sampler = Sampler::new(params);
        let vocab = self.model.vocab();
        let mut stream = Utf8Stream::default();
        let mut text = String::new();
        let mut tokens = 0usize;
        let mut finish = FinishReason::Length;
        let mut pos = prompt.len() as i32;
        let mut piece = Vec::new();
        loop {
            let next = LlamaToken(sampler.sample(ctx.get_logits_ith(logits_at)) as i32);
            if self.stop_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            tokens += 1;
            piece.clear();
            vocab.token_to_piece_into(next, &mut piece, false, None);
            stream.push(&piece, &mut |s| {
                text.push_str(s);
                on_text(s);
            });
            if tokens == params.max_tokens {
                break;
            }
            batch.clear();
            batch
                .add(next, pos, &[0], true)
                .map_err(|e| InferenceError::engine("chat batch", e))?;
            ctx.decode(&mut batch)
                .map_err(|e| InferenceError::engine("chat decode", e))?;
            logits_at = 0;
            pos += 1;
        }
        piece.zeroize();
        stream.finish(&mut |s| {
            text.push_str(s);
            on_text(s);
        });
        Ok(Generation {
            text,
            tokens,
            prompt_tokens: prompt.len(),
            finish_reason: finish,
        })
    }
}

/// `/proc/self/fd/N` for an open file, where the platform has it.
fn proc_fd_path(file: &std::fs::File) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    let p = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    p.exists().then_some(p)
}

/// Turns token bytes into text pieces of whole characters: a byte-level
/// token can end inside a multi-byte character, which waits for the next
/// token; bytes that can never be valid become U+FFFD (as
/// `String::from_utf8_lossy` would). Zeroises its buffer on drop.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8], out: &mut dyn FnMut(&str)) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    if !s.is_empty() {
                        out(s);
                    }
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    if valid > 0 {
                        // Valid by the check above.
                        out(&String::from_utf8_lossy(
                            &self.pending[start..start + valid],
                        ));
                    }
                    start += valid;
                    match e.error_len() {
                        Some(n) => {
                            out("\u{FFFD}");
                            start += n;
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending[..start].zeroize();
        self.pending.drain(..start);
    }

    fn finish(&mut self, out: &mut dyn FnMut(&str)) {
        if !self.pending.is_empty() {
            out(&String::from_utf8_lossy(&self.pending));
            self.pending.zeroize();
            self.pending.clear();
        }
    }
}

impl Drop for Utf8Stream {
    fn drop(&mut self) {
        self.pending.zeroize();
    }
}

/// Greedy or seeded temperature / top-p sampling over llama.cpp's logits.
struct Sampler {
    temperature: Option<f64>,
    top_p: Option<f64>,
    rng: rand::rngs::StdRng,
    probs: Vec<(f64, u32)>,
}

impl Sampler {
    fn new(p: &SamplingParams) -> Self {
        Self {
            temperature: (p.temperature > 0.0).then_some(p.temperature),
            top_p: p.top_p.filter(|&t| t > 0.0 && t < 1.0),
            rng: rand::rngs::StdRng::seed_from_u64(p.seed),
            probs: Vec::new(),
        }
    }

    fn sample(&mut self, logits: &[f32]) -> u32 {
        let Some(temp) = self.temperature else {
            return argmax(logits);
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        self.probs.clear();
        let mut sum = 0.0;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l as f64 - max) / temp).exp();
            sum += p;
            self.probs.push((p, i as u32));
        }
        if !(sum.is_finite() && sum > 0.0) {
            return argmax(logits);
        }
        // Most likely first (ties by id, so the order is deterministic).
        self.probs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut keep = self.probs.len();
        if let Some(top_p) = self.top_p {
            let mut cum = 0.0;
            for (i, (p, _)) in self.probs.iter().enumerate() {
                cum += p / sum;
                if cum >= top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f64 = self.probs[..keep].iter().map(|(p, _)| p).sum();
        let mut r = self.rng.gen::<f64>() * kept;
        for &(p, id) in &self.probs[..keep] {
            if r < p {
                return id;
            }
            r -= p;
        }
        self.probs[keep - 1].1
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
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

    fn stream(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut s = Utf8Stream::default();
        let mut pieces = Vec::new();
        for c in chunks {
            s.push(c, &mut |p| pieces.push(p.to_string()));
        }
        s.finish(&mut |p| pieces.push(p.to_string()));
        let all = pieces.concat();
        (pieces, all)
    }

    #[test]
    fn utf8_stream_waits_for_whole_characters() {
        let e = "é".as_bytes();
        let (pieces, all) = stream(&[b"caf", &e[..1], &e[1..], b"!"]);
        assert_eq!(pieces, ["caf", "é", "!"]);
        assert_eq!(all, "café!");
        // Invalid bytes and a truncated tail become U+FFFD, as lossy decoding does.
        let bytes: &[u8] = &[b'a', 0xff, b'b', 0xe2, 0x82];
        let (_, all) = stream(&[bytes]);
        assert_eq!(all, String::from_utf8_lossy(bytes));
    }

    #[test]
    fn sampler_is_greedy_at_zero_and_seeded_otherwise() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        let greedy = SamplingParams {
            temperature: 0.0,
            top_p: None,
            max_tokens: 1,
            seed: 3,
        };
        assert_eq!(Sampler::new(&greedy).sample(&logits), 1);
        let hot = SamplingParams {
            temperature: 1.0,
            top_p: Some(0.9),
            ..greedy
        };
        let draw = |seed| {
            let mut s = Sampler::new(&SamplingParams { seed, ..hot });
            (0..32).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        // top-p 0.9 cuts the least likely token (p ≈ 0.03).
        assert!(draw(5).iter().all(|&t| t != 3));
        let narrow = SamplingParams {
            top_p: Some(0.3),
            ..hot
        };
        let mut s = Sampler::new(&narrow);
        assert!((0..32).all(|_| s.sample(&logits) == 1));
    }
}
