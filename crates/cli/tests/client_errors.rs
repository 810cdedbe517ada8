//! Golden tests of the user-facing commands' error output: each failure is
//! one `error: …` line on stderr that says what to do, exit code 1, and the
//! same as `{"error": {"code", "message"}}` on stdout with `--json`.

use std::path::Path;
use std::process::{Command, Output};

fn archipelago(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_archipelago"));
    c.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ARCHIPELAGO_CONFIG", home.join("config.toml"))
        .env("ARCHIPELAGO_HOME", home.join("data"))
        .env("ARCHIPELAGO_LOG", "off");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run archipelago")
}

fn stderr(o: &Output, home: &Path) -> String {
    String::from_utf8_lossy(&o.stderr).replace(&home.display().to_string(), "$HOME")
}

#[test]
fn he_mode_for_a_workload_without_it_is_refused_with_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(
        home.path(),
        &["run", "--workload", "chat", "--he", "text"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o, home.path()),
        "error: homomorphic mode (--he) runs only the classify workload (he-classify) and he-aggregate; run other workloads with --confidential (TEE)\n"
    );
    let o = archipelago(home.path(), &["run", "--he", "--json", "text"], &[]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["error"]["code"], "he_unavailable");
}

#[test]
fn missing_api_key() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(home.path(), &["stats"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o, home.path()),
        "error: no API key: set ARCHIPELAGO_API_KEY or `api_key` in the config file ($HOME/config.toml)\n"
    );
}

#[test]
fn unreachable_coordinator() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(
        home.path(),
        &["account"],
        &[
            ("ARCHIPELAGO_URL", "http://127.0.0.1:9"),
            ("ARCHIPELAGO_API_KEY", "ak_test"),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o, home.path());
    assert!(
        e.starts_with("error: cannot reach the coordinator at http://127.0.0.1:9: "),
        "{e}"
    );
    assert!(
        e.ends_with("; is it running? (`archipelago dev` starts a local network)\n"),
        "{e}"
    );
}

#[test]
fn unknown_key_and_bad_config() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(
        home.path(),
        &["keys", "delete", "ck_vkup75ydwufsff7u63qtkchxeq"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o, home.path()),
        "error: no key ck_vkup75ydwufsff7u63qtkchxeq in the keystore $HOME/data/keys; see `archipelago keys list` or create one with `archipelago keys create`\n"
    );
    std::fs::write(home.path().join("config.toml"), "recipients = 99\n").unwrap();
    let o = archipelago(home.path(), &["keys", "list"], &[]);
    assert_eq!(
        stderr(&o, home.path()),
        "error: configuration: recipients must be 1..=16 (got 99)\n"
    );
    std::fs::write(home.path().join("config.toml"), "colour = \"blue\"\n").unwrap();
    let o = archipelago(home.path(), &["keys", "list"], &[]);
    let e = stderr(&o, home.path());
    assert!(
        e.starts_with("error: configuration: $HOME/config.toml is invalid: "),
        "{e}"
    );
}

#[test]
fn keys_are_created_locally_with_mode_0600() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(
        home.path(),
        &[
            "keys",
            "create",
            "--no-register",
            "--json",
            "--label",
            "laptop",
        ],
        &[],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = v["key_id"].as_str().unwrap();
    assert!(id.starts_with("ck_"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(v["path"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o600);
    }
    let o = archipelago(home.path(), &["keys", "list"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(id) && out.contains("laptop") && out.contains("unknown"),
        "{out}"
    );
}

#[test]
fn gateway_refuses_non_loopback_without_flag_and_token() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(home.path(), &["gateway", "--listen", "0.0.0.0:8099"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o, home.path()),
        "error: configuration: refusing to listen on 0.0.0.0:8099: the gateway decrypts with your keys, so it binds to loopback (127.0.0.1) only; to expose it anyway pass --allow-remote and --token <secret of at least 16 characters>\n"
    );
    let o = archipelago(
        home.path(),
        &[
            "gateway",
            "--listen",
            "0.0.0.0:8099",
            "--allow-remote",
            "--token",
            "short",
        ],
        &[],
    );
    assert_eq!(
        stderr(&o, home.path()),
        "error: configuration: refusing to listen on 0.0.0.0:8099 without a token: pass --token <secret of at least 16 characters>\n"
    );
}

#[test]
fn passphrase_prompt_needs_a_terminal() {
    let home = tempfile::tempdir().unwrap();
    let o = archipelago(
        home.path(),
        &["keys", "create", "--no-register", "--passphrase"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o, home.path()),
        "error: invalid input: --passphrase needs a terminal (no terminal to ask for a passphrase); in scripts use --passphrase-file or ARCHIPELAGO_KEY_PASSPHRASE\n"
    );
    // Nothing was created.
    let o = archipelago(home.path(), &["keys", "list", "--json"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o, home.path()));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(0), "{v}");

    // Scripts seal keys with a passphrase file instead.
    let pass = home.path().join("pass.txt");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let o = archipelago(
        home.path(),
        &[
            "keys",
            "create",
            "--no-register",
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o, home.path()));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["passphrase_protected"], true);
}
