//! `archipelago account`: balance, held credits and recent ledger entries.

use archipelago_client::ClientError;

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    opts: ClientOpts,
}

/// Run `archipelago account`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.opts.json;
    let rt = runtime()?;
    finish(rt.block_on(inner(args)), json)
}

async fn inner(args: Args) -> Result<i32, ClientError> {
    let a = args.opts.session(true)?.api().account().await?;
    if args.opts.json {
        print_json(&a);
        return Ok(0);
    }
    println!(
        "account {} ({}){}",
        a.id,
        a.name,
        if a.admin { ", admin" } else { "" }
    );
    println!("balance: {} credits available, {} held", a.balance, a.held);
    for e in a.ledger.iter().take(10) {
        println!(
            "  {:<10} {:<13} {:>10} {}",
            e.book,
            e.kind,
            e.amount,
            e.job_id.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}
