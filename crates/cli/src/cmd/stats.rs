//! `archipelago stats`: TEE availability (`GET /confidential/stats`, the
//! product page's shape).

use archipelago_client::ClientError;

use super::client_opts::{finish, print_json, runtime, ClientOpts};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    opts: ClientOpts,
}

/// Run `archipelago stats`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let json = args.opts.json;
    let rt = runtime()?;
    finish(rt.block_on(inner(args)), json)
}

async fn inner(args: Args) -> Result<i32, ClientError> {
    let s = args.opts.session(true)?.api().stats().await?;
    if args.opts.json {
        print_json(&s);
        return Ok(0);
    }
    println!("attested hosts: {}", s.attested_hosts);
    for (t, n) in &s.tee_types {
        println!("  {t}: {n}");
    }
    println!("attested enclave keys: {}", s.attested_enclave_keys);
    println!("HE-capable hosts: {}", s.he_capable_hosts);
    Ok(0)
}
