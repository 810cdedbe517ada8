//! The workloads the enclave runs on opened requests: `echo` (id 5, built
//! in, for tests and benchmarks) and the real models of
//! `archipelago_inference` (chat = 1, embed = 2, classify = 3) when their
//! model files are installed.
//!
//! Inputs and outputs here are plaintext. Errors carry a [`ErrorCode`] for
//! the channel and a message that is only ever sealed to the client; the
//! messages come from the inference crate, which never quotes its input.

use std::path::{Path, PathBuf};

use archipelago_inference::{InferenceError, Runtime, WorkloadKind};
use archipelago_proto::channel::ErrorCode;
use zeroize::Zeroizing;

/// Workload id of `echo`.
pub const ECHO_WORKLOAD_ID: u64 = 5;
/// Largest echo input.
pub const MAX_ECHO_INPUT: usize = 1024 * 1024;

/// A workload refused its input or failed. `message` is for the client
/// only (sealed); the channel sees `code`.
pub struct WorkloadError {
    pub code: ErrorCode,
    message: Zeroizing<String>,
}

impl WorkloadError {
    fn new(code: ErrorCode, message: impl Into<String>) -> WorkloadError {
        WorkloadError {
            code,
            message: Zeroizing::new(message.into()),
        }
    }

    /// The detailed message, to seal to the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Debug for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkloadError({})", self.code.as_str())
    }
}

impl From<InferenceError> for WorkloadError {
    fn from(e: InferenceError) -> WorkloadError {
        let code = match e {
            InferenceError::InvalidInput(_) => ErrorCode::BadInput,
            InferenceError::Models(_)
            | InferenceError::ModelHash { .. }
            | InferenceError::Load { .. } => ErrorCode::ModelUnavailable,
            InferenceError::Engine { .. } => ErrorCode::WorkloadFailed,
        };
        WorkloadError::new(code, e.to_string())
    }
}

/// The workloads of this enclave.
pub struct Workloads {
    runtime: Runtime,
    real: Vec<WorkloadKind>,
}

impl std::fmt::Debug for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workloads")
            .field("models_dir", &self.runtime.dir())
            .field("real", &self.real)
            .finish()
    }
}

impl Workloads {
    /// Workloads with models from `models_dir`: a real workload is offered
    /// when every file of its manifest is present (the runtime checks each
    /// file's pinned hash when it loads it).
    pub fn new(models_dir: Option<&Path>) -> Workloads {
        let dir = models_dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/nonexistent-archipelago-models"));
        let real = match models_dir {
            Some(d) => installed_kinds(d),
            None => Vec::new(),
        };
        Workloads {
            runtime: Runtime::new(dir),
            real,
        }
    }

    /// Ids of the workloads offered now (echo first).
    pub fn ids(&self) -> Vec<u64> {
        std::iter::once(ECHO_WORKLOAD_ID)
            .chain(self.real.iter().map(|k| u64::from(k.id())))
            .collect()
    }

    /// Model files measured into the sim enclave's measurement: the files
    /// of every offered real workload, deduplicated, in workload order.
    pub fn measured_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for k in &self.real {
            for p in k.manifest().files_paths(self.runtime.dir()) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Whether a thread that ran workload `id` must end with the job
    /// ([`WorkloadKind::binds_its_thread`]; echo leaves nothing; an
    /// unknown id is treated as binding, to be safe).
    pub fn binds_its_thread(&self, id: u64) -> bool {
        if id == ECHO_WORKLOAD_ID {
            return false;
        }
        u32::try_from(id)
            .ok()
            .and_then(WorkloadKind::from_id)
            .is_none_or(WorkloadKind::binds_its_thread)
    }

    /// Runs workload `id` on `input`. `sink` receives streamed pieces
    /// (plaintext, to be sealed at once).
    pub fn run(
        &self,
        id: u64,
        input: &[u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<Zeroizing<Vec<u8>>, WorkloadError> {
        if id == ECHO_WORKLOAD_ID {
            return echo(input, sink);
        }
        let kind = u32::try_from(id)
            .ok()
            .and_then(WorkloadKind::from_id)
            .ok_or_else(|| {
                WorkloadError::new(
                    ErrorCode::UnknownWorkload,
                    format!("this enclave does not run workload {id}"),
                )
            })?;
        if !self.real.contains(&kind) {
            return Err(WorkloadError::new(
                ErrorCode::ModelUnavailable,
                format!("the model files of workload {kind} are not installed in this enclave; run scripts/fetch-models.sh on the island"),
            ));
        }
        Ok(Zeroizing::new(self.runtime.run(kind, input, sink)?))
    }
}

fn installed_kinds(dir: &Path) -> Vec<WorkloadKind> {
    WorkloadKind::ALL
        .into_iter()
        .filter(|k| k.manifest().files_paths(dir).iter().all(|p| p.is_file()))
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoInput {
    prompt: String,
}

impl Drop for EchoInput {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.prompt);
    }
}

/// `echo`: `{"prompt": s}` → `{"text": uppercase(s), "chars": n}`; streams
/// one `{"delta": word}\n` line per whitespace-separated word.
fn echo(input: &[u8], sink: &mut dyn FnMut(&[u8])) -> Result<Zeroizing<Vec<u8>>, WorkloadError> {
    if input.len() > MAX_ECHO_INPUT {
        return Err(WorkloadError::new(
            ErrorCode::BadInput,
            format!(
                "echo input is {} bytes; the limit is {MAX_ECHO_INPUT}",
                input.len()
            ),
        ));
    }
    let req: EchoInput = serde_json::from_slice(input).map_err(|e| {
        // serde's message can quote the input; report only the position.
        WorkloadError::new(
            ErrorCode::BadInput,
            format!(
                "echo input must be {{\"prompt\": string}} (error at line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let upper = Zeroizing::new(req.prompt.to_uppercase());
    let mut line = Zeroizing::new(Vec::new());
    for word in upper.split_whitespace() {
        line.clear();
        serde_json::to_writer(&mut *line, &serde_json::json!({ "delta": word }))
            .map_err(|_| WorkloadError::new(ErrorCode::Internal, "echo output encoding failed"))?;
        line.push(b'\n');
        sink(&line);
    }
    let out = serde_json::to_vec(&serde_json::json!({
        "text": &*upper,
        "chars": upper.chars().count(),
    }))
    .map_err(|_| WorkloadError::new(ErrorCode::Internal, "echo output encoding failed"))?;
    Ok(Zeroizing::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_uppercases_and_streams_words() {
        let w = Workloads::new(None);
        let mut pieces = Vec::new();
        let out = w
            .run(5, br#"{"prompt":"hello big world"}"#, &mut |p| {
                pieces.push(p.to_vec())
            })
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["text"], "HELLO BIG WORLD");
        assert_eq!(v["chars"], 15);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces[0], b"{\"delta\":\"HELLO\"}\n");
    }

    #[test]
    fn refusals_have_codes_and_never_quote_input() {
        let w = Workloads::new(None);
        let secret = "SECRET-PATIENT-7";
        for input in [
            format!("{{\"prompt\": 1, \"x\": \"{secret}\"}}"),
            format!("{{\"{secret}\": 1}}"),
            format!("not json {secret}"),
        ] {
            let e = w.run(5, input.as_bytes(), &mut |_| {}).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadInput);
            assert!(!e.message().contains(secret), "{}", e.message());
            assert!(!format!("{e:?}").contains(secret));
        }
        let big = vec![b' '; MAX_ECHO_INPUT + 1];
        assert_eq!(
            w.run(5, &big, &mut |_| {}).unwrap_err().code,
            ErrorCode::BadInput
        );
        assert_eq!(
            w.run(99, b"{}", &mut |_| {}).unwrap_err().code,
            ErrorCode::UnknownWorkload
        );
        assert_eq!(
            w.run(1, br#"{"prompt":"hi"}"#, &mut |_| {})
                .unwrap_err()
                .code,
            ErrorCode::ModelUnavailable
        );
        assert_eq!(w.ids(), vec![5]);
        // Only chat (llama.cpp's OpenMP) and unknown ids keep their thread.
        assert!(!w.binds_its_thread(5) && !w.binds_its_thread(2) && !w.binds_its_thread(3));
        assert!(w.binds_its_thread(1) && w.binds_its_thread(99) && w.binds_its_thread(u64::MAX));
        assert!(w.measured_files().is_empty());
    }
}
