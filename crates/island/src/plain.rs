//! Plain (unencrypted) jobs run in the agent itself, with the same
//! inference runtime the enclave uses for confidential ones: chat (1),
//! embed (2), classify (3) through `archipelago_inference`, and the echo
//! test workload (5).
//!
//! A plain job's input is not secret by the user's own choice, but it is
//! still not logged: only sizes and ids are.

use std::path::PathBuf;
use std::sync::Arc;

use archipelago_inference::{Runtime, WorkloadKind};

/// The echo test workload's id (coordinator workload `echo`).
pub const ECHO_WORKLOAD_ID: i64 = 5;
/// Largest echo input (serialised JSON).
pub const MAX_ECHO_INPUT: usize = 1024 * 1024;

/// A plain job failed; the message names the field or limit, never content.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// The workload id is not one this island runs.
    #[error("workload {0} is not supported by this island")]
    UnknownWorkload(i64),
    /// The model runtime is not available here.
    #[error("the model runtime is not available on this island: {0}")]
    NoRuntime(String),
    /// The input does not fit the workload.
    #[error("invalid input: {0}")]
    Input(String),
    /// The workload failed.
    #[error("{0}")]
    Inference(#[from] archipelago_inference::InferenceError),
}

impl PlainError {
    /// The `error.code` posted to the coordinator.
    pub fn code(&self) -> &'static str {
        match self {
            PlainError::UnknownWorkload(_) => "unsupported_workload",
            PlainError::NoRuntime(_) => "runtime_unavailable",
            PlainError::Input(_)
            | PlainError::Inference(archipelago_inference::InferenceError::InvalidInput(_)) => {
                "invalid_input"
            }
            PlainError::Inference(_) => "inference_failed",
        }
    }
}

/// Runs plain jobs.
#[derive(Clone)]
pub struct PlainRunner {
    runtime: Result<Arc<Runtime>, String>,
}

impl std::fmt::Debug for PlainRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainRunner")
            .field("models", &self.runtime.is_ok())
            .finish()
    }
}

impl PlainRunner {
    /// A runner reading models from `models_dir`, or from the inference
    /// crate's default location (`ARCHIPELAGO_MODELS_DIR`) when `None`.
    /// Missing models only disable the model workloads.
    pub fn new(models_dir: Option<PathBuf>) -> PlainRunner {
        let runtime = match models_dir {
            Some(d) => Ok(Arc::new(Runtime::new(d))),
            None => Runtime::from_env().map(Arc::new).map_err(|e| e.to_string()),
        };
        if let Err(e) = &runtime {
            tracing::warn!(reason = %e, "model workloads disabled on this island (echo only)");
        }
        PlainRunner { runtime }
    }

    /// An echo-only runner (no model files).
    pub fn echo_only() -> PlainRunner {
        PlainRunner {
            runtime: Err("started without models".into()),
        }
    }

    /// Runtimes to report: `echo`, plus `candle` when models are present.
    pub fn runtimes(&self) -> Vec<String> {
        let mut r = vec!["echo".to_string()];
        if self.runtime.is_ok() {
            r.push("candle".to_string());
        }
        r
    }

    /// Runs one job (blocking: the agent calls it on a thread of its own).
    pub fn run(
        &self,
        workload_id: i64,
        input: &serde_json::Value,
    ) -> Result<serde_json::Value, PlainError> {
        self.run_streaming(workload_id, input, &mut |_| {})
    }

    /// Runs one job, handing each streamed piece (chat: one `{"delta": …}`
    /// line per token) to `sink` as it is produced (blocking).
    pub fn run_streaming(
        &self,
        workload_id: i64,
        input: &serde_json::Value,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<serde_json::Value, PlainError> {
        if workload_id == ECHO_WORKLOAD_ID {
            return echo(input);
        }
        let kind = u32::try_from(workload_id)
            .ok()
            .and_then(WorkloadKind::from_id)
            .ok_or(PlainError::UnknownWorkload(workload_id))?;
        let rt = self
            .runtime
            .as_ref()
            .map_err(|e| PlainError::NoRuntime(e.clone()))?;
        let bytes =
            serde_json::to_vec(input).map_err(|_| PlainError::Input("not serialisable".into()))?;
        let out = rt.run(kind, &bytes, sink)?;
        serde_json::from_slice(&out)
            .map_err(|_| PlainError::Input("workload output is not JSON".into()))
    }
}

/// The echo workload, identical to the enclave's: `{"prompt": s}` →
/// `{"text": uppercase(s), "chars": n}` (n counts characters of the
/// uppercased text), so plain and confidential runs of it are comparable.
pub fn echo(input: &serde_json::Value) -> Result<serde_json::Value, PlainError> {
    let obj = input
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| PlainError::Input("echo input must be {\"prompt\": string}".into()))?;
    let prompt = obj
        .get("prompt")
        .and_then(|p| p.as_str())
        .ok_or_else(|| PlainError::Input("echo input must be {\"prompt\": string}".into()))?;
    if prompt.len() > MAX_ECHO_INPUT {
        return Err(PlainError::Input(format!(
            "echo input is {} bytes; the limit is {MAX_ECHO_INPUT}",
            prompt.len()
        )));
    }
    let upper = prompt.to_uppercase();
    let chars = upper.chars().count();
    Ok(serde_json::json!({ "text": upper, "chars": chars }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_matches_the_enclave_workload_and_refuses_other_shapes() {
        let r = PlainRunner::echo_only();
        let out = r
            .run(5, &serde_json::json!({"prompt": "héllo wörld"}))
            .unwrap();
        assert_eq!(out, serde_json::json!({"text": "HÉLLO WÖRLD", "chars": 11}));
        for bad in [
            serde_json::json!([1, 2]),
            serde_json::json!({"prompt": 1}),
            serde_json::json!({"prompt": "a", "x": 1}),
        ] {
            assert_eq!(r.run(5, &bad).unwrap_err().code(), "invalid_input");
        }
    }

    #[test]
    fn refusals_have_codes_and_no_content() {
        let r = PlainRunner::echo_only();
        let e = r.run(99, &serde_json::json!({})).unwrap_err();
        assert_eq!(e.code(), "unsupported_workload");
        let e = r
            .run(3, &serde_json::json!({"text": "secret words"}))
            .unwrap_err();
        assert_eq!(e.code(), "runtime_unavailable");
        assert!(!e.to_string().contains("secret"));
        let big = serde_json::json!({"prompt": "x".repeat(MAX_ECHO_INPUT + 1)});
        let e = r.run(5, &big).unwrap_err();
        assert_eq!(e.code(), "invalid_input");
        assert_eq!(r.runtimes(), vec!["echo".to_string()]);
    }
}
