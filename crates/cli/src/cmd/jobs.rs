//! `archipelago jobs get|list|cancel`: jobs of your account. `get` decrypts
//! a confidential output when this machine sealed the job's input (the
//! request record and the key are local).

use archipelago_client::ClientError;
use archipelago_proto::api::Job;
use clap::Subcommand;

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// One job; a confidential output is decrypted locally when possible.
    Get {
        #[command(flatten)]
        opts: ClientOpts,
        job_id: String,
        /// Do not try to decrypt.
        #[arg(long)]
        no_decrypt: bool,
    },
    /// Recent jobs.
    List {
        #[command(flatten)]
        opts: ClientOpts,
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Cancel a queued or running job (its hold is refunded).
    Cancel {
        #[command(flatten)]
        opts: ClientOpts,
        job_id: String,
    },
}

/// Run `archipelago jobs`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let rt = runtime()?;
    match args.command {
        JobsCommand::Get {
            opts,
            job_id,
            no_decrypt,
        } => {
            let json = opts.json;
            finish(rt.block_on(get(opts, job_id, no_decrypt)), json)
        }
        JobsCommand::List { opts, state, limit } => {
            let json = opts.json;
            finish(rt.block_on(list(opts, state, limit)), json)
        }
        JobsCommand::Cancel { opts, job_id } => {
            let json = opts.json;
            finish(rt.block_on(cancel(opts, job_id)), json)
        }
    }
}

fn line(j: &Job) -> String {
    format!(
        "{:<28} {:>3} {:<10} {:<5} {:>6} {}",
        j.id,
        j.workload_id,
        j.state,
        j.mode,
        j.cost.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        j.error.as_ref().map(|e| e.message.as_str()).unwrap_or("")
    )
}

async fn get(opts: ClientOpts, job_id: String, no_decrypt: bool) -> Result<i32, ClientError> {
    let session = opts.session(true)?;
    let job = session.api().get_job(&job_id).await?;
    let decrypted = if job.confidential && job.state == "succeeded" && !no_decrypt {
        Some(session.decrypt_job(&job).await)
    } else {
        None
    };
    if opts.json {
        let mut v = serde_json::to_value(&job).unwrap_or_default();
        match &decrypted {
            Some(Ok(out)) => {
                v["decrypted_output"] = out.json().unwrap_or_else(|| {
                    serde_json::Value::String(String::from_utf8_lossy(out.data()).into_owned())
                });
            }
            Some(Err(e)) => v["decrypt_error"] = serde_json::Value::String(e.to_string()),
            None => {}
        }
        print_json(&v);
        return Ok(0);
    }
    println!("{}", line(&job));
    match decrypted {
        Some(Ok(out)) => {
            println!("decrypted output (sealed by {}):", out.enclave_key_id);
            match out.json() {
                Some(v) => print_json(&v),
                None => println!("{}", String::from_utf8_lossy(out.data())),
            }
        }
        Some(Err(e)) => eprintln!("output not decrypted: {e}"),
        None => {
            if let Some(o) = &job.output {
                print_json(o);
            }
        }
    }
    Ok(0)
}

async fn list(opts: ClientOpts, state: Option<String>, limit: i64) -> Result<i32, ClientError> {
    let session = opts.session(true)?;
    let jobs = session
        .api()
        .list_jobs(state.as_deref(), Some(limit))
        .await?;
    if opts.json {
        print_json(&jobs);
        return Ok(0);
    }
    println!(
        "{:<28} {:>3} {:<10} {:<5} {:>6} ERROR",
        "JOB", "WL", "STATE", "MODE", "COST"
    );
    for j in &jobs.jobs {
        println!("{}", line(j));
    }
    Ok(0)
}

async fn cancel(opts: ClientOpts, job_id: String) -> Result<i32, ClientError> {
    let session = opts.session(true)?;
    let job = session.api().cancel_job(&job_id).await?;
    if opts.json {
        print_json(&job);
    } else {
        println!("{}", line(&job));
    }
    Ok(0)
}
