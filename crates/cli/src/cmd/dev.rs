//! `archipelago dev`: one command for a whole local network on this
//! machine — a coordinator (SQLite), two sim-TEE islands, one island
//! without TEE (HE-capable) and a gateway — each a child process with its
//! own folder (`coordinator/`, `island-…/`, `gateway/`) holding its state
//! and log file under the data directory, so what each party stored can be
//! inspected. It fetches the models if missing, waits until the enclaves
//! are attested, runs a self-check confidential job, writes `DIR/dev.env`
//! and prints copy-paste examples. Ctrl-C stops everything.
//!
//! Development only: the islands' enclaves are *simulated* (sim evidence
//! signed by a root generated here); the coordinator and the client policy
//! written here accept sim evidence, which production policies refuse.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use archipelago_client::records::RequestRecords;
use archipelago_client::{ApiClient, Keystore, Session};

#[derive(clap::Args)]
pub struct Args {
    /// Keep all state here (default: a new temporary directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Coordinator port (default 8080, or a free one if taken; 0 = any free).
    #[arg(long)]
    coordinator_port: Option<u16>,
    /// Gateway port (default 8090, or a free one if taken; 0 = any free).
    #[arg(long)]
    gateway_port: Option<u16>,
    /// Do not fetch models; islands then run only the echo workload.
    #[arg(long)]
    no_models: bool,
    /// Start, self-check, print, then stop (for scripts and tests).
    #[arg(long)]
    exit_after_check: bool,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

struct Procs(Vec<Proc>);

impl Procs {
    fn spawn(&mut self, name: &str, dir: &Path, args: &[String]) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let log = dir.join(format!("{}.log", name.split('-').next().unwrap_or(name)));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let exe = std::env::current_exe().context("cannot find the archipelago binary")?;
        let child = Command::new(exe)
            .args(args)
            .env(
                "ARCHIPELAGO_LOG",
                std::env::var("ARCHIPELAGO_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.0.push(Proc {
            name: name.to_string(),
            child,
            log,
        });
        Ok(())
    }

    /// Fails with the log tail of a process that exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.0 {
            if let Some(status) = p.child.try_wait()? {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// SIGTERM everything (islands first), wait, then kill stragglers.
    fn stop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(p.child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for p in self.0.iter_mut().rev() {
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(100))
                    }
                    _ => {
                        let _ = p.child.kill();
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
            eprintln!("stopped {}", p.name);
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pick_port(wanted: Option<u16>, default: u16) -> anyhow::Result<u16> {
    if let Some(p) = wanted.filter(|p| *p != 0) {
        return Ok(p);
    }
    if wanted.is_none() && TcpListener::bind(("127.0.0.1", default)).is_ok() {
        return Ok(default);
    }
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

/// Run `archipelago dev`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("archipelago-dev-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    eprintln!("archipelago dev: state in {}", dir.display());
    eprintln!("DEVELOPMENT NETWORK: enclaves are SIMULATED (sim TEE), no hardware protection");

    // The islands launch `archipelago-enclave` from beside this binary; say
    // so now rather than letting their supervisors retry a missing file.
    let exe = std::env::current_exe().context("cannot find the archipelago binary")?;
    let enclave = exe.with_file_name("archipelago-enclave");
    if !enclave.exists() {
        anyhow::bail!(
            "the enclave binary {} is missing; build both binaries with \
             `cargo build --release -p archipelago -p archipelago-enclave` \
             (scripts/dev.sh does this and then runs `archipelago dev`)",
            enclave.display()
        );
    }

    // Models (with progress from `models fetch`).
    let mut have_models = false;
    if !args.no_models {
        let ok = archipelago_inference::ModelStore::from_env()
            .map(|s| s.check().is_ok())
            .unwrap_or(false);
        if !ok {
            eprintln!("fetching models (once; verified by sha256)…");
            let st = Command::new(std::env::current_exe()?)
                .args(["models", "fetch"])
                .status()?;
            if !st.success() {
                eprintln!("model fetch failed; continuing with the echo workload only");
            }
        }
        have_models = archipelago_inference::ModelStore::from_env()
            .map(|s| s.check().is_ok())
            .unwrap_or(false);
    }

    // The sim root all simulated enclaves sign with, and the client policy.
    let sim_root_path = dir.join("sim-root.key");
    let root = if sim_root_path.exists() {
        archipelago_attest::SimRoot::load(&sim_root_path)?
    } else {
        let r = archipelago_attest::SimRoot::generate();
        r.save(&sim_root_path)?;
        r
    };
    let policy_path = dir.join("client-policy.toml");
    std::fs::write(
        &policy_path,
        archipelago_client::config::dev_sim_policy_toml(&root.public_key()),
    )?;

    // Coordinator.
    let cdir = dir.join("coordinator");
    std::fs::create_dir_all(&cdir)?;
    let init_path = cdir.join("init.json");
    let init: serde_json::Value = if init_path.exists() {
        serde_json::from_str(&std::fs::read_to_string(&init_path)?)?
    } else {
        let out = Command::new(std::env::current_exe()?)
            .args(["coordinator", "init", "--data-dir", &s(&cdir), "--json"])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("coordinator init failed");
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("coordinator init did not print JSON")?;
        archipelago_client::keystore::write_secret_file(
            &init_path,
            &serde_json::to_vec_pretty(&v)?,
        )?;
        v
    };
    let api_key = init["api_key"]
        .as_str()
        .context("init.json has no api_key")?
        .to_string();
    let token = init["enrollment_token"]
        .as_str()
        .context("init.json has no enrollment_token")?
        .to_string();
    let cport = pick_port(args.coordinator_port, 8080)?;
    let gport = pick_port(args.gateway_port, 8090)?;
    let url = format!("http://127.0.0.1:{cport}");
    let gateway_url = format!("http://127.0.0.1:{gport}");

    let mut procs = Procs(Vec::new());
    procs.spawn(
        "coordinator",
        &cdir,
        &[
            "coordinator".into(),
            "serve".into(),
            "--data-dir".into(),
            s(&cdir),
            "--listen".into(),
            format!("127.0.0.1:{cport}"),
            "--dev-sim-root".into(),
            hex::encode(root.public_key()),
        ],
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let api = ApiClient::new(&url, Some(api_key.clone()))?;
    wait_until(
        &mut procs,
        "the coordinator",
        Duration::from_secs(60),
        || rt.block_on(async { api.workloads().await.is_ok() }),
    )?;

    // Islands.
    let mut island = |name: &str, tee: &str| -> anyhow::Result<()> {
        let idir = dir.join(format!("island-{name}"));
        let mut a = vec![
            "island".into(),
            "--coordinator".into(),
            url.clone(),
            "--data-dir".into(),
            s(&idir),
            "--enrollment-token".into(),
            token.clone(),
            "--name".into(),
            name.to_string(),
            "--tee".into(),
            tee.into(),
        ];
        if tee == "sim" {
            a.push("--sim-root".into());
            a.push(s(&sim_root_path));
        }
        if !have_models {
            a.push("--no-models".into());
        }
        procs.spawn(&format!("island-{name}"), &idir, &a)
    };
    island("sim-1", "sim")?;
    island("sim-2", "sim")?;
    island("plain-1", "none")?;

    // Gateway: its own keystore and records, the dev client policy.
    let gdir = dir.join("gateway");
    procs.spawn(
        "gateway",
        &gdir,
        &[
            "gateway".into(),
            "--url".into(),
            url.clone(),
            "--api-key".into(),
            api_key.clone(),
            "--policy".into(),
            s(&policy_path),
            "--keystore".into(),
            s(gdir.join("keys")),
            "--data-dir".into(),
            s(&gdir),
            "--listen".into(),
            format!("127.0.0.1:{gport}"),
        ],
    )?;
    eprintln!("waiting for the two sim enclaves to attest…");
    wait_until(
        &mut procs,
        "two attested enclaves",
        Duration::from_secs(180),
        || {
            rt.block_on(async {
                api.stats()
                    .await
                    .map(|s| s.attested_hosts >= 2)
                    .unwrap_or(false)
            })
        },
    )?;
    let http = reqwest_health(&rt, &gateway_url);
    wait_until(&mut procs, "the gateway", Duration::from_secs(30), http)?;

    // Self-check: a confidential job from a client keystore under DIR/client.
    let client_dir = dir.join("client");
    let keystore = Keystore::open(client_dir.join("keys"))?;
    let policy = archipelago_client::config::load_policy(&policy_path)?;
    let session = Session::new(api.clone(), keystore, policy).with_records(RequestRecords::open(
        client_dir.join("keys").join("requests"),
    )?);
    let (workload, input) = if have_models {
        (
            1,
            serde_json::json!({"prompt": "Say hello in five words.", "max_tokens": 12}),
        )
    } else {
        (
            5,
            serde_json::json!({"prompt": "hello from the self-check"}),
        )
    };
    let check = rt.block_on(async {
        if session.keystore().list()?.is_empty() {
            session.create_key(Some("dev")).await?;
        }
        let input = serde_json::to_vec(&input).unwrap_or_default();
        session
            .run(workload, &input, None, Duration::from_secs(300))
            .await
    });
    let (job, out) = check.context("the self-check confidential job failed")?;
    let text = out
        .json()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    eprintln!(
        "self-check ok: job {} ran confidentially on enclave {} and decrypted here: {:?}",
        job.id, out.enclave_key_id, text
    );
    // Homomorphic self-check: he-aggregate needs no model files and runs on
    // any island, the TEE-less one included.
    let schema = archipelago_he::AggregateSchema {
        columns: vec![archipelago_he::AggregateColumn::Value {
            name: "value".into(),
            scale: 10.0,
            min: 0.0,
            max: 100.0,
        }],
    };
    let he_check = rt.block_on(session.run_he_aggregate(
        4,
        &schema,
        &[vec![4.5], vec![5.5], vec![8.0]],
        None,
        Duration::from_secs(120),
    ));
    let (he_job, he_out) = he_check.context("the homomorphic self-check job failed")?;
    let he_sum = match he_out.columns.first() {
        Some(archipelago_he::ColumnResult::Value { sum, .. }) => *sum,
        _ => f64::NAN,
    };
    if he_out.count != 3 || (he_sum - 18.0).abs() > 1e-9 {
        bail!("the homomorphic self-check decrypted a wrong total");
    }
    eprintln!(
        "self-check ok: job {} summed 3 encrypted records on island {} (HE, no TEE needed) and decrypted here: count 3, sum 18",
        he_job.id,
        he_job.island_id.as_deref().unwrap_or("?")
    );

    // dev.env, once everything is ready.
    let env = format!(
        "ARCHIPELAGO_URL={url}\nARCHIPELAGO_GATEWAY_URL={gateway_url}\nARCHIPELAGO_API_KEY={api_key}\n\
         ARCHIPELAGO_POLICY={}\nARCHIPELAGO_KEYSTORE={}\n",
        policy_path.display(),
        client_dir.join("keys").display()
    );
    archipelago_client::keystore::write_secret_file(&dir.join("dev.env"), env.as_bytes())?;
    let wl = if have_models { "chat" } else { "echo" };
    println!(
        "\nArchipelago dev network is up (simulated TEEs; development only).\n\n\
         coordinator  {url}\n\
         gateway      {gateway_url}   (product-page API + OpenAI-compatible /v1)\n\
         API key      {api_key}\n\
         state        {dir}   (coordinator/, island-*/, gateway/, client/; logs inside)\n\n\
         # load the settings\n\
         set -a; . {dir}/dev.env; set +a\n\n\
         # CLI: a confidential job, sealed and decrypted on this machine\n\
         archipelago run --workload {wl} --confidential \"Why is the sky blue?\"\n\
         archipelago attest list\n\n\
         # CLI: homomorphic jobs on ciphertext, on any island (no TEE needed)\n\
         {he_example}\n\
         archipelago run --workload he-aggregate --he --input-json '{{\"schema\": {{\"columns\": [{{\"kind\": \"value\", \"name\": \"ldl\", \"scale\": 10, \"min\": 0, \"max\": 400}}]}}, \"records\": [[130.5], [162.0], [98.4]]}}'\n\n\
         # curl, the product page's Quick Start against the gateway\n\
         KEY=$(curl -s -X POST $ARCHIPELAGO_GATEWAY_URL/api/v1/confidential/keys -H \"Authorization: Bearer $ARCHIPELAGO_API_KEY\" | jq -r .key_id)\n\
         CT=$(curl -s $ARCHIPELAGO_GATEWAY_URL/api/v1/confidential/encrypt -H \"Authorization: Bearer $ARCHIPELAGO_API_KEY\" -H 'Content-Type: application/json' \\\n\
           -d \"{{\\\"input\\\": {{\\\"prompt\\\": \\\"Classify this patient record...\\\"}}, \\\"key_id\\\": \\\"$KEY\\\", \\\"workload_id\\\": {workload}}}\" | jq -r .ciphertext)\n\
         JOB=$(curl -s $ARCHIPELAGO_GATEWAY_URL/api/v1/jobs -H \"Authorization: Bearer $ARCHIPELAGO_API_KEY\" -H 'Content-Type: application/json' \\\n\
           -d \"{{\\\"workload_id\\\": {workload}, \\\"confidential\\\": true, \\\"encryption_key_id\\\": \\\"$KEY\\\", \\\"input\\\": {{\\\"encrypted\\\": true, \\\"key_id\\\": \\\"$KEY\\\", \\\"ciphertext\\\": \\\"$CT\\\"}}}}\" | jq -r .id)\n\
         sleep 5; OUT=$(curl -s $ARCHIPELAGO_GATEWAY_URL/api/v1/jobs/$JOB -H \"Authorization: Bearer $ARCHIPELAGO_API_KEY\" | jq -c .output)\n\
         curl -s $ARCHIPELAGO_GATEWAY_URL/api/v1/confidential/decrypt -H 'Content-Type: application/json' -d \"{{\\\"output\\\": $OUT, \\\"key_id\\\": \\\"$KEY\\\"}}\"\n\n\
         # openai (pip install openai)\n\
         python3 -c 'import openai,os; c=openai.OpenAI(base_url=os.environ[\"ARCHIPELAGO_GATEWAY_URL\"]+\"/v1\", api_key=os.environ[\"ARCHIPELAGO_API_KEY\"]); print(c.chat.completions.create(model=\"{wl}\", messages=[{{\"role\":\"user\",\"content\":\"Hello!\"}}]).choices[0].message.content)'\n\n\
         Ctrl-C stops everything.",
        dir = dir.display(),
        he_example = if have_models {
            "archipelago run --workload classify --he \"I started this pill three months ago and my periods became irregular.\""
        } else {
            "# (classify --he needs the models: run without --no-models)"
        }
    );
    if args.exit_after_check {
        procs.stop();
        return Ok(0);
    }
    let stop = rt.block_on(async {
        tokio::select! {
            _ = super::signal::shutdown_signal() => None,
            e = watch(&mut procs) => Some(e),
        }
    });
    eprintln!("\nstopping…");
    procs.stop();
    match stop {
        Some(e) => Err(e),
        None => Ok(0),
    }
}

async fn watch(procs: &mut Procs) -> anyhow::Error {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(e) = procs.check_alive() {
            return e;
        }
    }
}

fn reqwest_health<'a>(
    rt: &'a tokio::runtime::Runtime,
    gateway_url: &str,
) -> impl FnMut() -> bool + 'a {
    let url = format!("{gateway_url}/health");
    move || {
        rt.block_on(async {
            let c = ApiClient::new(&url, None).ok();
            match c {
                Some(c) => c
                    .http()
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false),
                None => false,
            }
        })
    }
}

fn wait_until(
    procs: &mut Procs,
    what: &str,
    max: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + max;
    loop {
        procs.check_alive()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} after {} s; see the logs under the data directory",
                max.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
