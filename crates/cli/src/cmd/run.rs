//! `archipelago run --workload chat [--confidential|--he] "prompt"`: run a
//! job and print its output. With `--confidential` the prompt is sealed on
//! this machine to enclaves your policy accepts, tokens are decrypted
//! locally as they stream in, and the answer is checked to come from one of
//! those enclaves. With `--he` (workload `classify`) the text is embedded
//! with MiniLM on this machine, encrypted under your `he-bfv` key (made and
//! registered on first use), classified on ciphertext by any island (no TEE
//! needed) and decrypted here. Without either the job runs in plain text.

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use archipelago_client::{ClientError, StreamEvent};
use archipelago_proto::api::{SubmitJobRequest, Workload};
use serde_json::{json, Value};

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    opts: ClientOpts,
    /// Workload slug (chat, embed, classify, echo) or id.
    #[arg(long, short = 'w', default_value = "chat")]
    workload: String,
    /// Confidential TEE job: sealed to attested enclaves, decrypted here.
    #[arg(long, conflicts_with = "he")]
    confidential: bool,
    /// Confidential homomorphic job on any island, TEE or not
    /// (`--workload classify`: he-classify; `--workload he-aggregate` with
    /// `--input-json '{"schema": ..., "records": [...]}'`).
    #[arg(long)]
    he: bool,
    /// Client key to use (default: the newest in the keystore).
    #[arg(long)]
    key: Option<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The input as raw JSON instead of PROMPT.
    #[arg(long)]
    input_json: Option<String>,
    /// The prompt (chat) or text (embed, classify, echo).
    prompt: Option<String>,
}

/// Run `archipelago run`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.opts.json;
    let rt = runtime()?;
    finish(rt.block_on(run_inner(args)), json)
}

fn build_input(w: &Workload, args: &Args) -> Result<Value, ClientError> {
    if let Some(raw) = &args.input_json {
        return serde_json::from_str(raw)
            .map_err(|e| ClientError::InvalidInput(format!("--input-json is not JSON: {e}")));
    }
    let text = args
        .prompt
        .clone()
        .ok_or_else(|| ClientError::InvalidInput("give a PROMPT (or --input-json)".into()))?;
    Ok(match w.slug.as_str() {
        "chat" | "echo" => json!({"prompt": text}),
        _ => json!({"text": text}),
    })
}

fn resolve(list: &[Workload], name: &str) -> Result<Workload, ClientError> {
    list.iter()
        .find(|w| w.slug == name || w.id.to_string() == name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<String> = list
                .iter()
                .map(|w| format!("{} ({})", w.slug, w.id))
                .collect();
            ClientError::InvalidInput(format!("no workload {name:?}; known: {}", names.join(", ")))
        })
}

struct Spinner {
    on: bool,
    shown: bool,
}

impl Spinner {
    fn state(&mut self, s: &str) {
        if self.on {
            eprint!("\r\x1b[2K… job {s}");
            let _ = std::io::stderr().flush();
            self.shown = true;
        }
    }
    fn clear(&mut self) {
        if self.on && self.shown {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.shown = false;
        }
    }
}

async fn run_inner(args: Args) -> Result<i32, ClientError> {
    if args.he
        && !matches!(
            args.workload.as_str(),
            "classify" | "3" | "he-aggregate" | "4"
        )
    {
        return Err(ClientError::HeUnavailable);
    }
    let session = args.opts.session(true)?;
    let workloads = session.api().workloads().await?.workloads;
    let w = resolve(&workloads, &args.workload)?;
    if args.he {
        return run_he(&session, &w, &args).await;
    }
    let input = build_input(&w, &args)?;
    let timeout = Duration::from_secs(args.timeout);
    let json_out = args.opts.json;
    if !args.confidential {
        let req = SubmitJobRequest {
            workload_id: w.id,
            confidential: false,
            encryption_key_id: None,
            mode: None,
            input,
            timeout_seconds: None,
        };
        let job = session.api().submit_job(&req, None).await?;
        let job = session.wait(&job.id, timeout).await?;
        if json_out {
            print_json(&job);
        } else if job.state == "succeeded" {
            print_output(&w, job.output.as_ref().unwrap_or(&Value::Null), false);
        } else {
            let e = job
                .error
                .clone()
                .map(|e| (e.code, e.message))
                .unwrap_or_default();
            return Err(ClientError::JobFailed {
                job_id: job.id,
                code: e.0,
                message: e.1,
            });
        }
        return Ok(0);
    }
    let bytes = zeroize::Zeroizing::new(
        serde_json::to_vec(&input).map_err(|e| ClientError::InvalidInput(e.to_string()))?,
    );
    drop(input);
    let mut spinner = Spinner {
        on: std::io::stderr().is_terminal() && !json_out,
        shown: false,
    };
    let mut streamed = false;
    let chat = w.slug == "chat";
    let mut on_event = |ev: StreamEvent| match ev {
        StreamEvent::State(s) => {
            if !streamed {
                spinner.state(&s);
            }
        }
        StreamEvent::Data(d) => {
            if chat && !json_out {
                spinner.clear();
                for line in d.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if let Some(delta) = serde_json::from_slice::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("delta").and_then(|d| d.as_str()).map(str::to_string))
                    {
                        streamed = true;
                        print!("{delta}");
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        }
    };
    let result = session
        .run_streaming(w.id, &bytes, args.key.as_deref(), timeout, &mut on_event)
        .await;
    spinner.clear();
    let (job, out) = result?;
    if json_out {
        print_json(&json!({
            "job_id": job.id,
            "state": job.state,
            "enclave_key_id": out.enclave_key_id.as_str(),
            "output": out.json().unwrap_or_else(|| Value::String(String::from_utf8_lossy(out.data()).into_owned())),
        }));
    } else {
        let v = out
            .json()
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(out.data()).into_owned()));
        print_output(&w, &v, streamed);
        eprintln!(
            "(job {}, answered and sealed by attested enclave {})",
            job.id, out.enclave_key_id
        );
    }
    Ok(0)
}

async fn run_he(
    session: &archipelago_client::Session,
    w: &Workload,
    args: &Args,
) -> Result<i32, ClientError> {
    let timeout = Duration::from_secs(args.timeout);
    let (job, key_id, output) = match w.slug.as_str() {
        "classify" => {
            let text = match (&args.prompt, &args.input_json) {
                (Some(t), _) => zeroize::Zeroizing::new(t.clone()),
                (None, Some(raw)) => {
                    let v: Value = serde_json::from_str(raw).map_err(|e| {
                        ClientError::InvalidInput(format!("--input-json is not JSON: {e}"))
                    })?;
                    zeroize::Zeroizing::new(
                        v.get("text")
                            .and_then(|t| t.as_str())
                            .ok_or_else(|| {
                                ClientError::InvalidInput(
                                    "--input-json for classify is {\"text\": string}".into(),
                                )
                            })?
                            .to_string(),
                    )
                }
                (None, None) => {
                    return Err(ClientError::InvalidInput(
                        "give the TEXT to classify (or --input-json)".into(),
                    ))
                }
            };
            let (job, result) = session
                .run_he_classify(w.id, &text, args.key.as_deref(), timeout)
                .await?;
            let mut out = result.to_json(archipelago_client::he::DEFAULT_TOP_K);
            out["label"] = Value::String(result.label().to_string());
            let key = job.encryption_key_id.clone().unwrap_or_default();
            (job, key, out)
        }
        "he-aggregate" => {
            let raw = args.input_json.as_deref().ok_or_else(|| {
                ClientError::InvalidInput(
                    "he-aggregate takes --input-json '{\"schema\": {\"columns\": [...]}, \"records\": [[...], ...]}'"
                        .into(),
                )
            })?;
            #[derive(serde::Deserialize)]
            struct AggInput {
                schema: archipelago_he::AggregateSchema,
                records: Vec<Vec<f64>>,
            }
            let input: AggInput = serde_json::from_str(raw).map_err(|e| {
                ClientError::InvalidInput(format!("--input-json for he-aggregate: {e}"))
            })?;
            let (job, result) = session
                .run_he_aggregate(
                    w.id,
                    &input.schema,
                    &input.records,
                    args.key.as_deref(),
                    timeout,
                )
                .await?;
            let key = job.encryption_key_id.clone().unwrap_or_default();
            (job, key, archipelago_client::he::aggregate_json(&result))
        }
        _ => return Err(ClientError::HeUnavailable),
    };
    if args.opts.json {
        print_json(&json!({
            "job_id": job.id,
            "state": job.state,
            "mode": job.mode,
            "key_id": key_id,
            "island_id": job.island_id,
            "execution_ms": job.execution_ms,
            "cost": job.cost,
            "output": output,
        }));
    } else {
        print_json(&output);
        eprintln!(
            "(job {}, evaluated on ciphertext by island {} with HE key {key_id}; decrypted here)",
            job.id,
            job.island_id.as_deref().unwrap_or("?")
        );
    }
    Ok(0)
}

fn print_output(w: &Workload, v: &Value, streamed: bool) {
    match (w.slug.as_str(), v.get("text").and_then(|t| t.as_str())) {
        ("chat", Some(_)) if streamed => println!(),
        ("chat", Some(t)) => println!("{t}"),
        _ => print_json(v),
    }
}
