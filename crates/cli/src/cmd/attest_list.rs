//! `archipelago attest list`: every enclave the coordinator offers, its TEE
//! and measurement, and the verdict of *your* policy on its evidence
//! (verified here, never taken from the coordinator).

use archipelago_client::verify::appraise_enclaves;
use archipelago_client::ClientError;

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    opts: ClientOpts,
    /// Only enclaves able to run this workload id.
    #[arg(long)]
    workload: Option<i64>,
}

/// Run `archipelago attest list`.
pub fn run(args: ListArgs) -> anyhow::Result<i32> {
    let json = args.opts.json;
    let rt = runtime()?;
    finish(rt.block_on(inner(args)), json)
}

async fn inner(args: ListArgs) -> Result<i32, ClientError> {
    let session = args.opts.session(true)?;
    let list = session.api().enclaves(args.workload).await?;
    let now = archipelago_client::verify::now_secs();
    let a = appraise_enclaves(&list.enclaves, session.policy(), now);
    if args.opts.json {
        print_json(&a);
        return Ok(0);
    }
    if list.enclaves.is_empty() {
        eprintln!(
            "the coordinator offers no attested enclave{}",
            args.workload
                .map(|w| format!(" for workload {w}"))
                .unwrap_or_default()
        );
        return Ok(0);
    }
    println!(
        "{:<30} {:<6} {:<20} {:<18} VERDICT (your policy)",
        "ENCLAVE KEY", "TEE", "ISLAND", "MEASUREMENT"
    );
    let short = |m: Option<&String>| {
        m.map(|m| m.chars().take(16).collect::<String>() + "…")
            .unwrap_or_else(|| "-".into())
    };
    for e in &a.accepted {
        println!(
            "{:<30} {:<6} {:<20} {:<18} accepted (workloads {:?})",
            e.key_id.as_str(),
            e.tee.as_str(),
            e.island_id,
            short(e.measurement.as_ref()),
            e.workload_ids
        );
    }
    for r in &a.refused {
        println!(
            "{:<30} {:<6} {:<20} {:<18} REFUSED: {}",
            r.key_id,
            r.tee_type,
            r.island_id,
            short(r.measurement.as_ref()),
            r.detail
        );
    }
    Ok(0)
}
