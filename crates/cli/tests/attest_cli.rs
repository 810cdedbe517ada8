//! `archipelago attest verify` as a user runs it: every real sample in
//! `../shared/testdata/attestation/` is accepted at its time (exit 0), and a
//! tampered copy, a time outside the validity window, a wrong endorsement and
//! a refusing policy each exit 1 with a reason that names the field.

use std::path::PathBuf;
use std::process::{Command, Output};

fn testdata() -> PathBuf {
    let dir = std::env::var_os("ARCHIPELAGO_ATTESTATION_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/attestation")
        });
    assert!(
        dir.is_dir(),
        "real attestation evidence not found at {} — these tests need the shared folder \
         ../shared/testdata/attestation/ beside the repository (or set ARCHIPELAGO_ATTESTATION_TESTDATA)",
        dir.display()
    );
    dir
}

fn verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archipelago"))
        .arg("attest")
        .arg("verify")
        .args(args)
        .output()
        .expect("run archipelago")
}

fn path(rel: &str) -> String {
    testdata().join(rel).display().to_string()
}

/// (tee, evidence, endorsements, a unix time inside the validity window)
fn samples() -> Vec<(&'static str, String, Vec<String>, &'static str)> {
    vec![
        (
            "sgx",
            path("sgx/quote.bin"),
            vec![path("sgx/collateral.json")],
            "1750420800",
        ),
        (
            "tdx",
            path("tdx/quote.bin"),
            vec![path("tdx/collateral.json")],
            "1750420800",
        ),
        (
            "sev",
            path("sev/report.bin"),
            vec![path("sev/vcek.der")],
            "1750420800",
        ),
        (
            "nitro",
            path("nitro/attestation.cose"),
            vec![],
            "1736179625",
        ),
        (
            "trustzone",
            path("cca/token.cbor"),
            vec![path("cca/trust-anchors.json")],
            "1750420800",
        ),
    ]
}

fn args<'a>(tee: &'a str, ev: &'a str, ends: &'a [String], at: &'a str) -> Vec<&'a str> {
    let mut a = vec!["--tee", tee, "--evidence", ev, "--at", at, "--json"];
    for e in ends {
        a.push("--endorsement");
        a.push(e);
    }
    a
}

#[test]
fn every_real_sample_verifies_at_its_time() {
    for (tee, ev, ends, at) in samples() {
        let out = verify(&args(tee, &ev, &ends, at));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{tee}: exit {:?}\nstdout: {stdout}\nstderr: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{tee}: --json output is not JSON ({e}): {stdout}"));
        assert!(
            json.to_string().contains(tee),
            "{tee}: result does not name its TEE: {stdout}"
        );
    }
}

#[test]
fn sgx_reports_its_tcb_status_and_advisories() {
    let out = verify(&args(
        "sgx",
        &path("sgx/quote.bin"),
        &[path("sgx/collateral.json")],
        "1750420800",
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ConfigurationAndSWHardeningNeeded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("INTEL-SA-00289") && stdout.contains("INTEL-SA-00615"),
        "{stdout}"
    );
}

fn assert_refused(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit 1, got {:?}: {text}",
        out.status.code()
    );
    text
}

#[test]
fn tampered_evidence_is_refused() {
    let dir = tempdir();
    for (tee, ev, ends, at) in samples() {
        let mut bytes = std::fs::read(&ev).unwrap();
        // Flip a byte in the middle of the evidence (signed content).
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let tampered = dir.join(format!("{tee}.tampered"));
        std::fs::write(&tampered, &bytes).unwrap();
        let t = tampered.display().to_string();
        let out = verify(&args(tee, &t, &ends, at));
        let text = assert_refused(&out, tee);
        assert!(!text.trim().is_empty(), "{tee}: refusal gives no reason");
    }
}

#[test]
fn time_outside_the_window_is_refused() {
    let out = verify(&args(
        "nitro",
        &path("nitro/attestation.cose"),
        &[],
        "1736199625",
    ));
    let text = assert_refused(&out, "nitro later");
    assert!(text.to_lowercase().contains("valid"), "{text}");
}

#[test]
fn wrong_endorsement_is_refused() {
    let out = verify(&args(
        "trustzone",
        &path("cca/token.cbor"),
        &[path("cca/trust-anchors-wrong.json")],
        "1750420800",
    ));
    let text = assert_refused(&out, "cca wrong anchors");
    assert!(text.contains("platform"), "{text}");
}

#[test]
fn policy_refusal_names_the_field() {
    let dir = tempdir();
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "accepted_tees = [\"sgx\"]\naccept_sim = false\n\n[sgx]\naccepted_tcb_status = [\"UpToDate\"]\n",
    )
    .unwrap();
    let p = policy.display().to_string();
    let quote = path("sgx/quote.bin");
    let mut a = args("sgx", &quote, &[], "1750420800");
    let coll = path("sgx/collateral.json");
    a.extend(["--endorsement", &coll, "--policy", &p]);
    let out = verify(&a);
    let text = assert_refused(&out, "sgx policy");
    assert!(text.contains("tcb_status"), "{text}");
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "archipelago-attest-cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}
