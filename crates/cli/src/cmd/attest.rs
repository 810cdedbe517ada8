//! `archipelago attest`: verify TEE evidence from files with the same code
//! the coordinator and clients run. Without `--policy` it checks
//! authenticity only (signatures, chains to the pinned vendor roots,
//! validity times) and prints every claim; with `--policy` it also appraises
//! the result. Exit code 0 = accepted, 1 = refused.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use archipelago_attest::{verify, AttestError, Evidence, Policy, TeeType, TrustAnchors};
use clap::Subcommand;

/// Largest file read as evidence or endorsement.
const MAX_FILE: u64 = 1024 * 1024;

/// `archipelago attest ...`
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AttestCommand,
}

#[derive(Subcommand)]
enum AttestCommand {
    /// Verify evidence (and optionally appraise it against a policy).
    Verify(VerifyArgs),
    /// Enclaves the coordinator offers and your policy's verdict on each.
    List(super::attest_list::ListArgs),
    /// Generate a sim root (development only) and print its public key.
    SimRoot {
        /// Where to write the secret (mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct VerifyArgs {
    /// TEE type: sgx, tdx, sev, nitro, trustzone or sim.
    #[arg(long)]
    tee: TeeType,
    /// The raw evidence file (quote, report, COSE document, CCA token, sim blob).
    #[arg(long)]
    evidence: PathBuf,
    /// Endorsements: the VCEK (sev), the DCAP collateral JSON (sgx/tdx), the
    /// CCA trust anchors JSON (trustzone), a sim root public key in base64 (sim).
    #[arg(long)]
    endorsement: Vec<PathBuf>,
    /// Verification time, unix seconds (default: now).
    #[arg(long)]
    at: Option<u64>,
    /// Appraisal policy (TOML, see docs/policy.md).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn read_limited(p: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(p)
        .with_context(|| format!("cannot read {}", p.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE,
        "{} is {len} bytes, more than {MAX_FILE}",
        p.display()
    );
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Run `archipelago attest`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        AttestCommand::Verify(v) => run_verify(v),
        AttestCommand::List(a) => super::attest_list::run(a),
        AttestCommand::SimRoot { out } => {
            let root = archipelago_attest::SimRoot::generate();
            root.save(&out)?;
            println!("{}", root.public_key_b64());
            eprintln!(
                "wrote sim root to {} (development only: sim evidence is refused unless a policy sets accept_sim = true)",
                out.display()
            );
            Ok(0)
        }
    }
}

fn run_verify(a: VerifyArgs) -> anyhow::Result<i32> {
    let now = match a.at {
        Some(t) => t,
        None => SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    };
    let raw = read_limited(&a.evidence)?;
    let mut endorsements = Vec::new();
    for p in &a.endorsement {
        endorsements.push(read_limited(p)?);
    }
    let policy = a
        .policy
        .as_ref()
        .map(Policy::load)
        .transpose()
        .context("cannot load the policy")?;
    let mut anchors = policy
        .as_ref()
        .map(|p| p.anchors.clone())
        .unwrap_or_default();
    let mut evidence_endorsements = Vec::new();
    match a.tee {
        TeeType::Trustzone => {
            for e in &endorsements {
                anchors.cca.extend(
                    TrustAnchors::cca_from_json(e).context("cannot parse the CCA trust anchors")?,
                );
            }
        }
        TeeType::Sim => {
            for e in &endorsements {
                let key = TrustAnchors::sim_root_from_b64(&String::from_utf8_lossy(e))
                    .context("the sim endorsement must be the sim root public key in base64")?;
                anchors.sim_roots.push(key);
            }
        }
        _ => evidence_endorsements = endorsements,
    }
    let evidence = Evidence::new(a.tee, raw, evidence_endorsements)?;
    let outcome: Result<_, AttestError> = verify(&evidence, &anchors, now)
        .map_err(AttestError::from)
        .and_then(|r| match &policy {
            Some(p) => p.appraise(&r, now).map(|()| r).map_err(AttestError::from),
            None => Ok(r),
        });
    let mode = if policy.is_some() {
        "authentic and accepted by the policy"
    } else {
        "authentic (no policy applied)"
    };
    match outcome {
        Ok(r) => {
            if a.json {
                println!("{}", archipelago_attest::result_json(&r, policy.is_some()));
            } else {
                println!("ACCEPTED: {} evidence is {mode} at {now}", r.tee);
                print!("{}", archipelago_attest::result_text(&r));
            }
            Ok(0)
        }
        Err(e) => {
            if a.json {
                println!("{}", archipelago_attest::refusal_json(&e));
            } else {
                println!("REFUSED: {e}");
                println!("field: {}", e.field());
            }
            Ok(1)
        }
    }
}
