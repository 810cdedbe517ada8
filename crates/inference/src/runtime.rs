//! The runtime the enclave (confidential jobs) and the island agent (plain
//! jobs) call: one entry point, JSON in, JSON out, streamed chunks to a sink.
//!
//! Models load lazily on first use and are shared across jobs and threads.
//! Input JSON is untrusted: it is size-checked, UTF-8-checked and parsed into
//! strict types, and every refusal names the field and limit but never
//! echoes the content (serde's own messages can quote input, so they are
//! replaced by positions).
//!
//! Input and output shapes (also in `crates/inference/README.md`):
//!
//! | workload | input | output |
//! | --- | --- | --- |
//! | `chat` (1) | `{"prompt": s}` or `{"messages": [{"role", "content"}]}`, optional `temperature`, `top_p`, `max_tokens`, `seed` | `{"text", "tokens", "finish_reason"}`; sink gets `{"delta": s}\n` lines |
//! | `embed` (2) | `{"texts": [s, …]}` or `{"text": s}` | `{"embeddings": [[f32; 384]], "dim": 384}` |
//! | `classify` (3) | `{"text": s}`, optional `top_k` | `{"labels": [{"label", "score"}]}` |

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use zeroize::Zeroize;

use crate::chat::{ChatModel, Message, SamplingParams, DEFAULT_MAX_TOKENS, MAX_NEW_TOKENS};
use crate::classify::LinearHead;
use crate::embed::{Embedder, EMBED_DIM};
use crate::{InferenceError, ModelStore, WorkloadKind};

/// Largest input JSON accepted.
pub const MAX_INPUT_BYTES: usize = 512 * 1024;
/// Longest single text (bytes) for chat messages, embed and classify.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;
/// Most texts in one embed batch.
pub const MAX_BATCH: usize = 64;
/// Most chat messages.
pub const MAX_MESSAGES: usize = 64;

fn lazy<T>(
    slot: &Mutex<Option<Arc<T>>>,
    load: impl FnOnce() -> Result<T, InferenceError>,
) -> Result<Arc<T>, InferenceError> {
    let mut g = slot.lock().map_err(|_| {
        InferenceError::engine("runtime", "model slot poisoned by an earlier panic")
    })?;
    if let Some(m) = g.as_ref() {
        return Ok(m.clone());
    }
    let m = Arc::new(load()?);
    *g = Some(m.clone());
    Ok(m)
}

/// Loads models lazily and runs jobs. Thread-safe; reuse one per process.
pub struct Runtime {
    dir: PathBuf,
    embedder: Mutex<Option<Arc<Embedder>>>,
    chat: Mutex<Option<Arc<ChatModel>>>,
    head: Mutex<Option<Arc<LinearHead>>>,
}

impl Runtime {
    /// A runtime reading model files from `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            embedder: Mutex::new(None),
            chat: Mutex::new(None),
            head: Mutex::new(None),
        }
    }

    /// A runtime on [`crate::models_dir`], failing with a how-to-fetch
    /// message when the required packages are absent.
    pub fn from_env() -> Result<Self, InferenceError> {
        let store = ModelStore::from_env()?;
        store.check()?;
        Ok(Self::new(store.dir()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shared MiniLM embedder (loaded on first call).
    pub fn embedder(&self) -> Result<Arc<Embedder>, InferenceError> {
        lazy(&self.embedder, || Embedder::load(&self.dir))
    }

    /// The shared SmolLM2 model (loaded on first call).
    pub fn chat_model(&self) -> Result<Arc<ChatModel>, InferenceError> {
        lazy(&self.chat, || ChatModel::load(&self.dir))
    }

    /// The committed classify head.
    pub fn classify_head(&self) -> Result<Arc<LinearHead>, InferenceError> {
        lazy(&self.head, LinearHead::builtin)
    }

    /// Loads a workload's models now rather than on its first job.
    pub fn preload(&self, kind: WorkloadKind) -> Result<(), InferenceError> {
        match kind {
            WorkloadKind::Chat => self.chat_model().map(drop),
            WorkloadKind::Embed => self.embedder().map(drop),
            WorkloadKind::Classify => self.embedder().and_then(|_| self.classify_head()).map(drop),
        }
    }

    /// Runs one job: `input_json` in, output JSON back; `sink` receives
    /// streamed chunks (chat: one `{"delta": …}` JSON line per piece).
    pub fn run(
        &self,
        kind: WorkloadKind,
        input_json: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Vec<u8>, InferenceError> {
        check_json_bytes(input_json)?;
        match kind {
            WorkloadKind::Chat => self.run_chat(input_json, sink),
            WorkloadKind::Embed => self.run_embed(input_json),
            WorkloadKind::Classify => self.run_classify(input_json),
        }
    }

    fn run_chat(
        &self,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Vec<u8>, InferenceError> {
        let req: ChatInput = parse(input, "chat")?;
        let messages = req.messages()?;
        let params = req.params()?;
        let model = self.chat_model()?;
        let mut line = Vec::new();
        let gen = model.generate(&messages, &params, &mut |piece| {
            line.clear();
            // Serialising a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut line, &serde_json::json!({ "delta": piece }));
            line.push(b'\n');
            sink(&line);
            line.zeroize();
        })?;
        let out = serde_json::json!({
            "text": gen.text,
            "tokens": gen.tokens,
            "finish_reason": gen.finish_reason.as_str(),
        });
        to_vec(&out)
    }

    fn run_embed(&self, input: &[u8]) -> Result<Vec<u8>, InferenceError> {
        let req: EmbedInput = parse(input, "embed")?;
        let texts: Vec<&str> = match (&req.texts, &req.text) {
            (Some(t), None) => t.iter().map(String::as_str).collect(),
            (None, Some(t)) => vec![t.as_str()],
            _ => {
                return Err(InferenceError::input(
                    "embed input needs exactly one of \"texts\" (array) or \"text\"",
                ))
            }
        };
        if texts.is_empty() || texts.len() > MAX_BATCH {
            return Err(InferenceError::input(format!(
                "texts must hold 1..={MAX_BATCH} strings, got {}",
                texts.len()
            )));
        }
        for (i, t) in texts.iter().enumerate() {
            check_text(t, &format!("texts[{i}]"))?;
        }
        let embs = self.embedder()?.embed(&texts)?;
        to_vec(&serde_json::json!({ "embeddings": embs, "dim": EMBED_DIM }))
    }

    fn run_classify(&self, input: &[u8]) -> Result<Vec<u8>, InferenceError> {
        let req: ClassifyInput = parse(input, "classify")?;
        check_text(&req.text, "text")?;
        let head = self.classify_head()?;
        let k = req.top_k.unwrap_or(3);
        if k == 0 || k > head.labels.len() {
            return Err(InferenceError::input(format!(
                "top_k must be 1..={}",
                head.labels.len()
            )));
        }
        let emb = self.embedder()?.embed(&[req.text.as_str()])?;
        let emb = emb
            .into_iter()
            .next()
            .ok_or_else(|| InferenceError::engine("classify", "no embedding"))?;
        let labels: Vec<serde_json::Value> = head
            .top_k(&emb, k)
            .into_iter()
            .map(|(label, score)| serde_json::json!({ "label": label, "score": score }))
            .collect();
        to_vec(&serde_json::json!({ "labels": labels }))
    }
}

fn to_vec(v: &serde_json::Value) -> Result<Vec<u8>, InferenceError> {
    serde_json::to_vec(v).map_err(|e| InferenceError::engine("output encoding", e))
}

fn check_json_bytes(input: &[u8]) -> Result<(), InferenceError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(InferenceError::input(format!(
            "input is {} bytes; the limit is {MAX_INPUT_BYTES}",
            input.len()
        )));
    }
    std::str::from_utf8(input).map_err(|e| {
        InferenceError::input(format!(
            "input is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    Ok(())
}

fn check_text(t: &str, field: &str) -> Result<(), InferenceError> {
    if t.trim().is_empty() {
        return Err(InferenceError::input(format!("{field} is empty")));
    }
    if t.len() > MAX_TEXT_BYTES {
        return Err(InferenceError::input(format!(
            "{field} is {} bytes; the limit is {MAX_TEXT_BYTES}",
            t.len()
        )));
    }
    Ok(())
}

/// Parses strictly, replacing serde's message (which can quote the input)
/// by its category and position.
fn parse<T: for<'de> Deserialize<'de>>(input: &[u8], what: &str) -> Result<T, InferenceError> {
    serde_json::from_slice(input).map_err(|e| {
        let kind = match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                "is not valid JSON"
            }
            serde_json::error::Category::Data => "does not match the expected fields and types",
            serde_json::error::Category::Io => "could not be read",
        };
        InferenceError::input(format!(
            "{what} input {kind} (line {}, column {}); see crates/inference/README.md",
            e.line(),
            e.column()
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatInput {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<usize>,
    seed: Option<u64>,
}

impl Drop for ChatInput {
    fn drop(&mut self) {
        if let Some(p) = self.prompt.as_mut() {
            p.zeroize();
        }
        for m in self.messages.iter_mut().flatten() {
            m.content.zeroize();
        }
    }
}

impl ChatInput {
    fn messages(&self) -> Result<Vec<Message>, InferenceError> {
        match (&self.prompt, &self.messages) {
            (Some(p), None) => {
                check_text(p, "prompt")?;
                Ok(vec![Message {
                    role: "user".into(),
                    content: p.clone(),
                }])
            }
            (None, Some(ms)) => {
                if ms.is_empty() || ms.len() > MAX_MESSAGES {
                    return Err(InferenceError::input(format!(
                        "messages must hold 1..={MAX_MESSAGES} entries, got {}",
                        ms.len()
                    )));
                }
                let total: usize = ms.iter().map(|m| m.content.len()).sum();
                if total > MAX_TEXT_BYTES {
                    return Err(InferenceError::input(format!(
                        "messages total {total} bytes; the limit is {MAX_TEXT_BYTES}"
                    )));
                }
                for (i, m) in ms.iter().enumerate() {
                    if m.content.is_empty() {
                        return Err(InferenceError::input(format!(
                            "messages[{i}].content is empty"
                        )));
                    }
                }
                Ok(ms.clone())
            }
            _ => Err(InferenceError::input(
                "chat input needs exactly one of \"prompt\" or \"messages\"",
            )),
        }
    }

    fn params(&self) -> Result<SamplingParams, InferenceError> {
        let d = SamplingParams::default();
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(InferenceError::input("temperature must be within 0..=2"));
        }
        let top_p = match self.top_p {
            Some(p) if !(p > 0.0 && p <= 1.0) => {
                return Err(InferenceError::input("top_p must be within (0, 1]"))
            }
            Some(p) => Some(p),
            None => d.top_p,
        };
        let max_tokens = self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        if max_tokens == 0 || max_tokens > MAX_NEW_TOKENS {
            return Err(InferenceError::input(format!(
                "max_tokens must be 1..={MAX_NEW_TOKENS}"
            )));
        }
        let seed = match self.seed {
            Some(s) => s,
            None => rand::random(),
        };
        Ok(SamplingParams {
            temperature,
            top_p,
            max_tokens,
            seed,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedInput {
    texts: Option<Vec<String>>,
    text: Option<String>,
}

impl Drop for EmbedInput {
    fn drop(&mut self) {
        self.texts.iter_mut().flatten().for_each(Zeroize::zeroize);
        if let Some(t) = self.text.as_mut() {
            t.zeroize();
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyInput {
    text: String,
    top_k: Option<usize>,
}

impl Drop for ClassifyInput {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SECRET-PATIENT-42";

    fn rt() -> Runtime {
        // These tests stop before any model is needed.
        Runtime::new("/nonexistent-archipelago-models")
    }

    fn refuse(kind: WorkloadKind, input: &[u8]) -> String {
        let e = rt()
            .run(kind, input, &mut |_| {})
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.starts_with("invalid input"),
            "{kind}: expected an input refusal, got {e:?}"
        );
        assert!(!e.contains(SECRET), "error leaks input: {e}");
        e
    }

    #[test]
    fn refusals_never_echo_input() {
        let s = SECRET;
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\"").as_bytes(),
        );
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": 5, \"x\": \"{s}\"}}").as_bytes(),
        );
        refuse(WorkloadKind::Chat, format!("{{\"{s}\": 1}}").as_bytes());
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\", \"messages\": []}}").as_bytes(),
        );
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\", \"temperature\": 9}}").as_bytes(),
        );
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\", \"top_p\": 0}}").as_bytes(),
        );
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\", \"max_tokens\": 0}}").as_bytes(),
        );
        refuse(
            WorkloadKind::Chat,
            format!("{{\"prompt\": \"{s}\", \"max_tokens\": 100000}}").as_bytes(),
        );
        refuse(WorkloadKind::Chat, b"{\"messages\": []}");
        refuse(
            WorkloadKind::Chat,
            format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"{s}\", \"x\": 1}}]}}")
                .as_bytes(),
        );
        refuse(WorkloadKind::Embed, b"{\"texts\": []}");
        refuse(
            WorkloadKind::Embed,
            format!("{{\"texts\": [\"{s}\"], \"text\": \"{s}\"}}").as_bytes(),
        );
        refuse(WorkloadKind::Embed, b"{\"texts\": [\"  \"]}");
        let many =
            serde_json::to_vec(&serde_json::json!({ "texts": vec![s; MAX_BATCH + 1] })).unwrap();
        refuse(WorkloadKind::Embed, &many);
        refuse(
            WorkloadKind::Classify,
            format!("{{\"text\": [\"{s}\"]}}").as_bytes(),
        );
    }

    #[test]
    fn size_and_encoding_limits() {
        let big =
            serde_json::to_vec(&serde_json::json!({ "text": "a".repeat(MAX_TEXT_BYTES + 1) }))
                .unwrap();
        let e = refuse(WorkloadKind::Classify, &big);
        assert!(e.contains("limit"), "{e}");
        let huge = vec![b' '; MAX_INPUT_BYTES + 1];
        assert!(refuse(WorkloadKind::Embed, &huge).contains("limit"));
        let e = refuse(WorkloadKind::Embed, b"{\"text\": \"\xff\xfe\"}");
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn missing_models_say_how_to_fetch() {
        let e = rt()
            .run(WorkloadKind::Embed, b"{\"text\": \"hello\"}", &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("fetch-models.sh"), "{e}");
    }
}
