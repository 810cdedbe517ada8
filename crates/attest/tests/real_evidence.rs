//! Real TEE evidence from `../shared/testdata/attestation/`: each sample
//! verifies at its time with the facts its README states, and at least 20
//! tampered variants of each are refused for the right reason (the refusal
//! names the field that failed).
mod common;

use archipelago_attest::{
    check_key_binding, verify, verify_and_appraise, AttestError, AttestationResult, Evidence,
    Policy, SimEvidenceSource, SimRoot, TeeType, TrustAnchors,
};

const SGX_AT: u64 = 1_750_420_800; // 2025-06-20T12:00:00Z
const SEV_AT: u64 = 1_750_420_800;
const NITRO_AT: u64 = 1_736_179_625; // 2025-01-06T16:07:05Z
const CCA_AT: u64 = 1_750_420_800;

fn ev(tee: TeeType, e: Vec<u8>, end: Vec<Vec<u8>>) -> Evidence {
    Evidence::new(tee, e, end).unwrap()
}

fn flip(mut b: Vec<u8>, at: usize) -> Vec<u8> {
    b[at] ^= 0x01;
    b
}

/// Change one base64 character inside the `n`th PEM certificate of `b`.
fn flip_pem(b: &[u8], n: usize, into: usize) -> Vec<u8> {
    let marker = b"-----BEGIN CERTIFICATE-----";
    let mut starts =
        (0..b.len().saturating_sub(marker.len())).filter(|i| &b[*i..*i + marker.len()] == marker);
    let start = starts.nth(n).expect("certificate present");
    let mut out = b.to_vec();
    let mut at = start + marker.len() + into;
    while !out[at].is_ascii_alphanumeric() {
        at += 1;
    }
    out[at] = if out[at] == b'A' { b'B' } else { b'A' };
    out
}

/// Change one hex digit of a JSON string field's value in DCAP collateral.
fn tamper_collateral(json: &[u8], field: &str, f: impl FnOnce(String) -> String) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
    let s = v[field].as_str().unwrap().to_string();
    v[field] = serde_json::Value::String(f(s));
    serde_json::to_vec(&v).unwrap()
}

fn flip_hex(s: String, at: usize) -> String {
    let mut c: Vec<char> = s.chars().collect();
    c[at] = if c[at] == '0' { '1' } else { '0' };
    c.into_iter().collect()
}

struct Case {
    name: &'static str,
    evidence: Evidence,
    anchors: TrustAnchors,
    now: u64,
    policy: Option<Policy>,
    /// The refusal's field must start with one of these.
    expect: &'static [&'static str],
}

fn case(name: &'static str, evidence: Evidence, now: u64, expect: &'static [&'static str]) -> Case {
    Case {
        name,
        evidence,
        anchors: TrustAnchors::default(),
        now,
        policy: None,
        expect,
    }
}

fn run_cases(sample: &str, cases: Vec<Case>) {
    assert!(
        cases.len() >= 20,
        "{sample}: only {} tampered variants",
        cases.len()
    );
    let mut failures = Vec::new();
    for c in &cases {
        let res: Result<AttestationResult, AttestError> = match &c.policy {
            Some(p) => verify(&c.evidence, &c.anchors, c.now)
                .map_err(AttestError::from)
                .and_then(|r| p.appraise(&r, c.now).map(|()| r).map_err(AttestError::from)),
            None => verify(&c.evidence, &c.anchors, c.now).map_err(AttestError::from),
        };
        match res {
            Ok(_) => failures.push(format!("{}: ACCEPTED but must be refused", c.name)),
            Err(e) => {
                let msg = e.to_string();
                if !c.expect.iter().any(|x| e.field().starts_with(x)) {
                    failures.push(format!(
                        "{}: refused for the wrong reason: field {:?} ({msg}); expected {:?}",
                        c.name,
                        e.field(),
                        c.expect
                    ));
                } else if !msg.contains(e.field()) {
                    failures.push(format!(
                        "{}: message does not name the field {:?}: {msg}",
                        c.name,
                        e.field()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{sample}:\n{}", failures.join("\n"));
}

fn policy(toml: &str) -> Option<Policy> {
    Some(Policy::from_toml_str(toml).unwrap())
}

fn appraise_refusal(
    policy: &Policy,
    mut r: AttestationResult,
    f: impl FnOnce(&mut AttestationResult),
    now: u64,
) -> String {
    f(&mut r);
    policy.appraise(&r, now).unwrap_err().field
}

// ---------------------------------------------------------------- SGX / TDX

fn dcap_sample(tee: TeeType) -> (Vec<u8>, Vec<u8>) {
    let d = tee.as_str();
    (
        common::read(&format!("{d}/quote.bin")),
        common::read(&format!("{d}/collateral.json")),
    )
}

#[test]
fn sgx_sample_verifies_with_reported_tcb() {
    let (q, c) = dcap_sample(TeeType::Sgx);
    let r = verify(
        &ev(TeeType::Sgx, q, vec![c]),
        &TrustAnchors::default(),
        SGX_AT,
    )
    .unwrap();
    assert_eq!(r.tee, TeeType::Sgx);
    assert_eq!(
        r.tcb.status.as_deref(),
        Some("ConfigurationAndSWHardeningNeeded")
    );
    assert_eq!(r.tcb.advisory_ids, vec!["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert!(!r.debug);
    assert_eq!(r.primary_measurement_hex().unwrap().len(), 64);
    assert!(r.report_data.is_some());
    // The default production policy refuses that TCB status.
    let e = Policy::production().appraise(&r, SGX_AT).unwrap_err();
    assert_eq!(e.field, "tcb_status");
    assert!(e.found.contains("INTEL-SA-00615"));
}

#[test]
fn tdx_sample_verifies_up_to_date() {
    let (q, c) = dcap_sample(TeeType::Tdx);
    let e = ev(TeeType::Tdx, q, vec![c]);
    let r = verify(&e, &TrustAnchors::default(), SGX_AT).unwrap();
    assert_eq!(r.tcb.status.as_deref(), Some("UpToDate"));
    assert_eq!(r.primary_measurement, "mr_td");
    assert!(r.measurements.contains_key("rtmr3"));
    verify_and_appraise(&e, &Policy::production(), SGX_AT).unwrap();
}

fn dcap_cases(tee: TeeType) -> Vec<Case> {
    let (q, c) = dcap_sample(tee);
    let t = tee;
    let sgx = tee == TeeType::Sgx;
    // Offsets in the quote (header 48 bytes, then the report body).
    let (measurement, report_data, debug_byte, sig) = if sgx {
        (112, 368, 96, 436)
    } else {
        (184, 568, 168, 636)
    };
    let other = if sgx { TeeType::Tdx } else { TeeType::Sgx };
    let (_, other_coll) = dcap_sample(other);
    let good = || ev(t, q.clone(), vec![c.clone()]);
    let with_q = |q2: Vec<u8>| ev(t, q2, vec![c.clone()]);
    let with_c = |c2: Vec<u8>| ev(t, q.clone(), vec![c2]);
    let r = verify(&good(), &TrustAnchors::default(), SGX_AT).unwrap();
    let m = r.primary_measurement_hex().unwrap().to_string();
    let mut v = vec![
        case(
            "measurement byte",
            with_q(flip(q.clone(), measurement)),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "measurement last byte",
            with_q(flip(q.clone(), measurement + 31)),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "report data",
            with_q(flip(q.clone(), report_data)),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "report data last byte",
            with_q(flip(q.clone(), report_data + 63)),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "debug bit",
            with_q({
                let mut b = q.clone();
                b[debug_byte] ^= if sgx { 0x02 } else { 0x01 };
                b
            }),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "svn / tcb svn",
            with_q(flip(q.clone(), if sgx { 306 } else { 48 })),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "header",
            with_q(flip(q.clone(), 30)),
            SGX_AT,
            &["quote_body", "quote"],
        ),
        case(
            "quote signature",
            with_q(flip(q.clone(), sig + 5)),
            SGX_AT,
            &["quote_body"],
        ),
        case(
            "attestation key",
            with_q(flip(q.clone(), sig + 64 + 5)),
            SGX_AT,
            &["quote_body", "qe_report"],
        ),
        case(
            "pck leaf certificate",
            with_q(flip_pem(&q, 0, 400)),
            SGX_AT,
            &["pck_certificate_chain"],
        ),
        case(
            "pck intermediate certificate",
            with_q(flip_pem(&q, 1, 400)),
            SGX_AT,
            &["pck_certificate_chain"],
        ),
        case(
            "pck root certificate",
            with_q(flip_pem(&q, 2, 400)),
            SGX_AT,
            &["pck_certificate_chain"],
        ),
        case(
            "truncated quote",
            with_q(q[..600].to_vec()),
            SGX_AT,
            &["quote"],
        ),
        case(
            "wrong tee type",
            ev(other, q.clone(), vec![c.clone()]),
            SGX_AT,
            &["quote.tee_type"],
        ),
        case(
            "tcb info body",
            with_c(tamper_collateral(&c, "tcb_info", |s| {
                s.replacen("\"version\":3", "\"version\":4", 1)
            })),
            SGX_AT,
            &["collateral.tcb_info"],
        ),
        case(
            "tcb info signature",
            with_c(tamper_collateral(&c, "tcb_info_signature", |s| {
                flip_hex(s, 10)
            })),
            SGX_AT,
            &["collateral.tcb_info"],
        ),
        case(
            "qe identity body",
            with_c(tamper_collateral(&c, "qe_identity", |s| {
                s.replacen("\"version\":2", "\"version\":3", 1)
            })),
            SGX_AT,
            &["collateral.qe_identity"],
        ),
        case(
            "qe identity signature",
            with_c(tamper_collateral(&c, "qe_identity_signature", |s| {
                flip_hex(s, 10)
            })),
            SGX_AT,
            &["collateral.qe_identity"],
        ),
        case(
            "pck crl",
            with_c(tamper_collateral(&c, "pck_crl", |s| {
                let n = s.len();
                flip_hex(s, n - 20)
            })),
            SGX_AT,
            &[
                "collateral.crl",
                "collateral.pck_crl",
                "pck_certificate_chain",
            ],
        ),
        case(
            "root ca crl",
            with_c(tamper_collateral(&c, "root_ca_crl", |s| {
                let n = s.len();
                flip_hex(s, n - 20)
            })),
            SGX_AT,
            &[
                "collateral.crl",
                "collateral.root_ca_crl",
                "pck_certificate_chain",
            ],
        ),
        case(
            "tcb info issuer certificate",
            with_c(tamper_collateral(&c, "tcb_info_issuer_chain", |s| {
                String::from_utf8(flip_pem(s.as_bytes(), 0, 400)).unwrap()
            })),
            SGX_AT,
            &["collateral.tcb_info"],
        ),
        case(
            "qe identity issuer certificate",
            with_c(tamper_collateral(&c, "qe_identity_issuer_chain", |s| {
                String::from_utf8(flip_pem(s.as_bytes(), 0, 400)).unwrap()
            })),
            SGX_AT,
            &["collateral.qe_identity"],
        ),
        case(
            "before collateral window",
            good(),
            1_750_200_000,
            &["collateral.tcb_info", "collateral.qe_identity"],
        ),
        case(
            "after collateral window",
            good(),
            1_753_000_000,
            &["collateral.tcb_info", "collateral.qe_identity"],
        ),
        case(
            "far future (certificates expired)",
            good(),
            2_600_000_000,
            &["collateral."],
        ),
        case(
            "wrong endorsement (other TEE's collateral)",
            with_c(other_coll),
            SGX_AT,
            &["collateral.tcb_info", "fmspc", "collateral.qe_identity"],
        ),
        case(
            "no endorsement",
            ev(t, q.clone(), vec![]),
            SGX_AT,
            &["endorsement"],
        ),
        case(
            "collateral not JSON",
            with_c(b"{}".to_vec()),
            SGX_AT,
            &["collateral"],
        ),
    ];
    let mut p = Case { policy: policy(&format!("accepted_tees = [\"{t}\"]\n[{t}]\naccepted_tcb_status = [\"UpToDate\"]\nmeasurements = [\"{}\"]\n", "00".repeat(m.len() / 2))), ..case("measurement not in policy", good(), SGX_AT, &["measurement."]) };
    if sgx {
        p.expect = &["tcb_status", "measurement."];
    }
    v.push(p);
    v.push(Case { policy: policy(&format!("accepted_tees = [\"{t}\"]\n[{t}]\naccepted_tcb_status = [\"UpToDate\"]\nmin_svn = {{ isv_svn = 1 }}\n")), ..case("tcb below minimum", good(), SGX_AT, if sgx { &["tcb_status"] } else { &["svn."] }) });
    v.push(Case {
        policy: policy(&format!("accepted_tees = [\"{other}\"]\n")),
        ..case("tee not accepted", good(), SGX_AT, &["tee"])
    });
    v
}

#[test]
fn sgx_tampered_variants_are_refused() {
    run_cases("sgx", dcap_cases(TeeType::Sgx));
}

#[test]
fn tdx_tampered_variants_are_refused() {
    run_cases("tdx", dcap_cases(TeeType::Tdx));
}

#[test]
fn dcap_debug_and_measurement_policy() {
    let (q, c) = dcap_sample(TeeType::Tdx);
    let r = verify(
        &ev(TeeType::Tdx, q, vec![c]),
        &TrustAnchors::default(),
        SGX_AT,
    )
    .unwrap();
    let p = Policy::production();
    assert_eq!(
        appraise_refusal(&p, r.clone(), |r| r.debug = true, SGX_AT),
        "debug"
    );
    assert_eq!(
        appraise_refusal(&p, r, |r| r.tcb.status = Some("OutOfDate".into()), SGX_AT),
        "tcb_status"
    );
}

// ---------------------------------------------------------------- SEV-SNP

fn sev_sample() -> (Vec<u8>, Vec<u8>) {
    (common::read("sev/report.bin"), common::read("sev/vcek.der"))
}

#[test]
fn sev_sample_verifies() {
    let (rep, vcek) = sev_sample();
    let e = ev(TeeType::Sev, rep, vec![vcek]);
    let r = verify(&e, &TrustAnchors::default(), SEV_AT).unwrap();
    assert_eq!(r.claims["generation"], "milan");
    assert_eq!(r.claims["vmpl"], "0");
    assert!(!r.debug);
    assert_eq!(r.tcb.svns["snp"], 8);
    assert_eq!(r.tcb.svns["microcode"], 115);
    verify_and_appraise(&e, &Policy::production(), SEV_AT).unwrap();
    // Valid over the VCEK's whole window.
    verify(&e, &TrustAnchors::default(), 1_674_700_000).unwrap();
    verify(&e, &TrustAnchors::default(), 1_895_000_000).unwrap();
}

#[test]
fn sev_tampered_variants_are_refused() {
    let (rep, vcek) = sev_sample();
    let good = || ev(TeeType::Sev, rep.clone(), vec![vcek.clone()]);
    let with_r = |r: Vec<u8>| ev(TeeType::Sev, r, vec![vcek.clone()]);
    let with_v = |v: Vec<u8>| ev(TeeType::Sev, rep.clone(), vec![v]);
    let n = vcek.len();
    let m = verify(&good(), &TrustAnchors::default(), SEV_AT)
        .unwrap()
        .primary_measurement_hex()
        .unwrap()
        .to_string();
    let cases = vec![
        case(
            "measurement",
            with_r(flip(rep.clone(), 0x90)),
            SEV_AT,
            &["report"],
        ),
        case(
            "measurement last byte",
            with_r(flip(rep.clone(), 0x90 + 47)),
            SEV_AT,
            &["report"],
        ),
        case(
            "report data",
            with_r(flip(rep.clone(), 0x50)),
            SEV_AT,
            &["report"],
        ),
        case(
            "report data last byte",
            with_r(flip(rep.clone(), 0x50 + 63)),
            SEV_AT,
            &["report"],
        ),
        case(
            "debug bit in guest policy",
            with_r({
                let mut b = rep.clone();
                b[0x0a] |= 0x08;
                b
            }),
            SEV_AT,
            &["report"],
        ),
        case("vmpl", with_r(flip(rep.clone(), 0x30)), SEV_AT, &["report"]),
        case(
            "guest svn",
            with_r(flip(rep.clone(), 0x04)),
            SEV_AT,
            &["report"],
        ),
        case(
            "reported tcb",
            with_r(flip(rep.clone(), 0x180 + 6)),
            SEV_AT,
            &["report"],
        ),
        case(
            "host data",
            with_r(flip(rep.clone(), 0xc0)),
            SEV_AT,
            &["report"],
        ),
        case(
            "chip id",
            with_r(flip(rep.clone(), 0x1a0)),
            SEV_AT,
            &["report"],
        ),
        case(
            "signature r",
            with_r(flip(rep.clone(), 0x2a0)),
            SEV_AT,
            &["report"],
        ),
        case(
            "signature s",
            with_r(flip(rep.clone(), 0x2e8 + 10)),
            SEV_AT,
            &["report"],
        ),
        case(
            "signature padding",
            with_r(flip(rep.clone(), 0x2a0 + 60)),
            SEV_AT,
            &["signature"],
        ),
        case(
            "signature algorithm",
            with_r(flip(rep.clone(), 0x34 + 1)),
            SEV_AT,
            &["sig_algo"],
        ),
        case(
            "signing key is VLEK",
            with_r({
                let mut b = rep.clone();
                b[0x48] |= 0x04;
                b
            }),
            SEV_AT,
            &["signing_key"],
        ),
        case(
            "truncated report",
            with_r(rep[..1000].to_vec()),
            SEV_AT,
            &["report"],
        ),
        case(
            "vcek signature",
            with_v(flip(vcek.clone(), n - 10)),
            SEV_AT,
            &["vcek"],
        ),
        case(
            "vcek public key",
            with_v(flip(vcek.clone(), n - 700)),
            SEV_AT,
            &["vcek"],
        ),
        case(
            "vcek truncated",
            with_v(vcek[..n - 100].to_vec()),
            SEV_AT,
            &["vcek"],
        ),
        case(
            "wrong endorsement (Genoa ASK as VCEK)",
            with_v(sev::certs::snp::builtin::genoa::ASK.to_vec()),
            SEV_AT,
            &["vcek"],
        ),
        case(
            "wrong endorsement (Milan ASK as VCEK)",
            with_v(sev::certs::snp::builtin::milan::ASK.to_vec()),
            SEV_AT,
            &["vcek"],
        ),
        case(
            "no endorsement",
            ev(TeeType::Sev, rep.clone(), vec![]),
            SEV_AT,
            &["endorsement"],
        ),
        case("before vcek validity", good(), 1_674_000_000, &["vcek"]),
        case("after vcek validity", good(), 1_896_000_000, &["vcek"]),
        case(
            "long after (ask/ark expired)",
            good(),
            2_600_000_000,
            &["ark", "ask", "vcek"],
        ),
        Case {
            policy: policy("accepted_tees = [\"sev\"]\n[sev]\nmin_svn = { snp = 9 }\n"),
            ..case("snp svn below minimum", good(), SEV_AT, &["svn.snp"])
        },
        Case {
            policy: policy(
                "accepted_tees = [\"sev\"]\n[sev]\nmin_svn = { microcode = 200, bootloader = 3 }\n",
            ),
            ..case(
                "microcode below minimum",
                good(),
                SEV_AT,
                &["svn.microcode"],
            )
        },
        Case {
            policy: policy(&format!(
                "accepted_tees = [\"sev\"]\n[sev]\nmeasurements = [\"{}\"]\n",
                m.replace('a', "b")
            )),
            ..case(
                "measurement not allowed",
                good(),
                SEV_AT,
                &["measurement.measurement"],
            )
        },
        Case {
            policy: policy("accepted_tees = [\"sev\"]\nrequire_evidence_time = true\n"),
            ..case("evidence time required", good(), SEV_AT, &["evidence_time"])
        },
        Case {
            policy: policy("accepted_tees = [\"nitro\"]\n"),
            ..case("tee not accepted", good(), SEV_AT, &["tee"])
        },
    ];
    run_cases("sev", cases);
}

#[test]
fn sev_policy_debug_vmpl_and_binding() {
    let (rep, vcek) = sev_sample();
    let r = verify(
        &ev(TeeType::Sev, rep, vec![vcek]),
        &TrustAnchors::default(),
        SEV_AT,
    )
    .unwrap();
    let p = Policy::production();
    assert_eq!(
        appraise_refusal(&p, r.clone(), |r| r.debug = true, SEV_AT),
        "debug"
    );
    assert_eq!(
        appraise_refusal(
            &p,
            r.clone(),
            |r| {
                r.claims.insert("vmpl".into(), "2".into());
            },
            SEV_AT
        ),
        "vmpl"
    );
    // The sample's report data is not an Archipelago key binding.
    let e = check_key_binding(&r, &[0; 32], 0, b"n").unwrap_err();
    assert!(e.to_string().contains("report_data"));
}

// ---------------------------------------------------------------- Nitro

#[test]
fn nitro_sample_verifies() {
    let d = common::read("nitro/attestation.cose");
    let e = ev(TeeType::Nitro, d, vec![]);
    let r = verify(&e, &TrustAnchors::default(), NITRO_AT).unwrap();
    assert_eq!(r.evidence_time, Some(NITRO_AT));
    let n = r.nitro.as_ref().unwrap();
    assert_eq!(n.digest, "SHA384");
    assert!(n.public_key.is_some());
    assert_eq!(r.measurements.len(), 16);
    assert!(!r.debug);
    verify_and_appraise(&e, &Policy::production(), NITRO_AT).unwrap();
    let b = check_key_binding(&r, &[0; 32], 0, b"").unwrap_err();
    assert!(b.to_string().contains("user_data"));
}

#[test]
fn nitro_tampered_variants_are_refused() {
    let d = common::read("nitro/attestation.cose");
    let good = || ev(TeeType::Nitro, d.clone(), vec![]);
    let with = |b: Vec<u8>| ev(TeeType::Nitro, b, vec![]);
    let pcr0 = verify(&good(), &TrustAnchors::default(), NITRO_AT)
        .unwrap()
        .measurements["pcr0"]
        .clone();
    // Offsets of the sample's fields (see tests/README in the crate docs).
    let cases = vec![
        case("pcr0", with(flip(d.clone(), 104)), NITRO_AT, &["document"]),
        case(
            "pcr0 last byte",
            with(flip(d.clone(), 104 + 47)),
            NITRO_AT,
            &["document"],
        ),
        case(
            "module id",
            with(flip(d.clone(), 23)),
            NITRO_AT,
            &["document"],
        ),
        case(
            "public key",
            with(flip(d.clone(), 4371 + 50)),
            NITRO_AT,
            &["document"],
        ),
        case(
            "timestamp",
            with({
                let mut b = d.clone();
                let i = b.windows(9).position(|w| w == b"timestamp").unwrap() + 11;
                b[i] ^= 1;
                b
            }),
            NITRO_AT,
            &["document"],
        ),
        case(
            "signature",
            with(flip(d.clone(), 4685)),
            NITRO_AT,
            &["document"],
        ),
        case(
            "signature last byte",
            with(flip(d.clone(), 4780)),
            NITRO_AT,
            &["document"],
        ),
        case(
            "algorithm header",
            with({
                let mut b = d.clone();
                b[5] = 0x26;
                b
            }),
            NITRO_AT,
            &["document"],
        ),
        case(
            "leaf certificate",
            with(flip(d.clone(), 932 + 300)),
            NITRO_AT,
            &["certificate"],
        ),
        case(
            "leaf certificate signature",
            with(flip(d.clone(), 932 + 620)),
            NITRO_AT,
            &["certificate"],
        ),
        case(
            "root certificate",
            with(flip(d.clone(), 1590 + 200)),
            NITRO_AT,
            &["cabundle[0]"],
        ),
        case(
            "intermediate 1",
            with(flip(d.clone(), 2126 + 300)),
            NITRO_AT,
            &["cabundle[1]"],
        ),
        case(
            "intermediate 2",
            with(flip(d.clone(), 2838 + 300)),
            NITRO_AT,
            &["cabundle[2]"],
        ),
        case(
            "intermediate 3",
            with(flip(d.clone(), 3645 + 300)),
            NITRO_AT,
            &["cabundle[3]"],
        ),
        case(
            "intermediate 3 signature",
            with(flip(d.clone(), 3645 + 700)),
            NITRO_AT,
            &["cabundle[3]"],
        ),
        case(
            "leaf expired (4 hours later)",
            good(),
            NITRO_AT + 4 * 3600,
            &["certificate"],
        ),
        case(
            "before leaf validity",
            good(),
            NITRO_AT - 600,
            &["certificate"],
        ),
        case(
            "intermediates expired (a year later)",
            good(),
            NITRO_AT + 365 * 86400,
            &["cabundle[", "certificate"],
        ),
        case("after root expiry", good(), 2_600_000_000, &["cabundle[0]"]),
        case(
            "truncated",
            with(d[..2000].to_vec()),
            NITRO_AT,
            &["document"],
        ),
        case("not COSE", with(b"hello".to_vec()), NITRO_AT, &["document"]),
        case(
            "wrong evidence kind (SEV report as Nitro)",
            with(common::read("sev/report.bin")),
            NITRO_AT,
            &["document"],
        ),
        Case {
            policy: policy(&format!(
                "accepted_tees = [\"nitro\"]\n[nitro]\nmeasurements = [\"{}\"]\n",
                pcr0.replace('4', "5")
            )),
            ..case("pcr0 not allowed", good(), NITRO_AT, &["measurement.pcr0"])
        },
        Case {
            policy: policy("accepted_tees = [\"nitro\"]\n[nitro]\nrequire = { pcr1 = \"00\" }\n"),
            ..case(
                "pcr1 required value",
                good(),
                NITRO_AT,
                &["measurement.pcr1"],
            )
        },
        Case {
            policy: policy("accepted_tees = [\"nitro\"]\nmax_evidence_age_secs = 0\n"),
            ..case("evidence too old", good(), NITRO_AT + 1, &["evidence_age"])
        },
    ];
    run_cases("nitro", cases);
}

#[test]
fn nitro_debug_is_refused_by_policy() {
    let r = verify(
        &ev(
            TeeType::Nitro,
            common::read("nitro/attestation.cose"),
            vec![],
        ),
        &TrustAnchors::default(),
        NITRO_AT,
    )
    .unwrap();
    assert_eq!(
        appraise_refusal(&Policy::production(), r, |r| r.debug = true, NITRO_AT),
        "debug"
    );
}

// ---------------------------------------------------------------- Arm CCA

fn cca_anchors(file: &str) -> TrustAnchors {
    TrustAnchors {
        cca: TrustAnchors::cca_from_json(&common::read(file)).unwrap(),
        ..Default::default()
    }
}

#[test]
fn cca_sample_verifies() {
    let e = ev(TeeType::Trustzone, common::read("cca/token.cbor"), vec![]);
    let r = verify(&e, &cca_anchors("cca/trust-anchors.json"), CCA_AT).unwrap();
    assert_eq!(r.primary_measurement, "rim");
    assert_eq!(r.claims["security_lifecycle"], "0x3000");
    assert!(!r.debug);
    assert_eq!(r.report_data.unwrap()[..4], *b"ABAB");
    // Through a policy that carries the anchors itself.
    let anchors = String::from_utf8(common::read("cca/trust-anchors.json")).unwrap();
    let v: Vec<serde_json::Value> = serde_json::from_str(&anchors).unwrap();
    let a = &v[0];
    let toml = format!(
        "accepted_tees = [\"trustzone\"]\n[[trustzone.trust_anchors]]\ninstance-id = \"{}\"\nimplementation-id = \"{}\"\npkey = {{ kty = \"EC\", crv = \"P-256\", x = \"{}\", y = \"{}\" }}\n",
        a["instance-id"].as_str().unwrap(),
        a["implementation-id"].as_str().unwrap(),
        a["pkey"]["x"].as_str().unwrap(),
        a["pkey"]["y"].as_str().unwrap()
    );
    verify_and_appraise(&e, &Policy::from_toml_str(&toml).unwrap(), CCA_AT).unwrap();
}

#[test]
fn cca_tampered_variants_are_refused() {
    let t = common::read("cca/token.cbor");
    let anchors = cca_anchors("cca/trust-anchors.json");
    let c = |name, b: Vec<u8>, expect| Case {
        anchors: anchors.clone(),
        ..case(name, ev(TeeType::Trustzone, b, vec![]), CCA_AT, expect)
    };
    let lifecycle_at = t[20..348]
        .windows(3)
        .position(|w| w == [0x19, 0x30, 0x00])
        .unwrap()
        + 20
        + 1;
    let rim = verify(&ev(TeeType::Trustzone, t.clone(), vec![]), &anchors, CCA_AT)
        .unwrap()
        .measurements["rim"]
        .clone();
    let cases = vec![
        c(
            "platform challenge",
            flip(t.clone(), 57),
            &["platform_token"],
        ),
        c(
            "implementation id",
            flip(t.clone(), 126),
            &["platform.implementation_id", "platform_token"],
        ),
        c("instance id", flip(t.clone(), 164), &["trust_anchor"]),
        c("platform config", flip(t.clone(), 200), &["platform_token"]),
        c(
            "security lifecycle (debug)",
            {
                let mut b = t.clone();
                b[lifecycle_at] = 0x50;
                b
            },
            &["platform_token"],
        ),
        c(
            "platform sw component measurement",
            {
                let mut b = t.clone();
                let i = b.windows(4).position(|w| w == [3, 3, 3, 3]).unwrap();
                b[i] ^= 1;
                b
            },
            &["platform_token"],
        ),
        c(
            "platform signature",
            flip(t.clone(), 348),
            &["platform_token"],
        ),
        c(
            "platform signature last byte",
            flip(t.clone(), 348 + 63),
            &["platform_token"],
        ),
        c(
            "realm challenge (report data)",
            flip(t.clone(), 433),
            &["realm_token"],
        ),
        c(
            "realm personalization value",
            flip(t.clone(), 502),
            &["realm_token"],
        ),
        c(
            "realm initial measurement",
            flip(t.clone(), 571),
            &["realm_token"],
        ),
        c(
            "realm extensible measurement",
            flip(t.clone(), 700),
            &["realm_token"],
        ),
        c(
            "realm public key",
            flip(t.clone(), 919 + 40),
            &["realm_token", "realm.public_key"],
        ),
        c("realm signature", flip(t.clone(), 1029), &["realm_token"]),
        c(
            "realm signature last byte",
            flip(t.clone(), 1029 + 95),
            &["realm_token"],
        ),
        c("collection tag", flip(t.clone(), 2), &["token"]),
        c("truncated", t[..600].to_vec(), &["token"]),
        c("not CBOR", vec![0xff; 10], &["token"]),
        Case {
            anchors: cca_anchors("cca/trust-anchors-wrong.json"),
            ..case(
                "wrong trust anchors",
                ev(TeeType::Trustzone, t.clone(), vec![]),
                CCA_AT,
                &["platform_token"],
            )
        },
        case(
            "no trust anchors",
            ev(TeeType::Trustzone, t.clone(), vec![]),
            CCA_AT,
            &["trust_anchor"],
        ),
        Case {
            anchors: anchors.clone(),
            policy: policy(&format!(
                "accepted_tees = [\"trustzone\"]\n[trustzone]\nmeasurements = [\"{}\"]\n",
                rim.replace('4', "5")
            )),
            ..case(
                "rim not allowed",
                ev(TeeType::Trustzone, t.clone(), vec![]),
                CCA_AT,
                &["measurement.rim"],
            )
        },
        Case {
            anchors: anchors.clone(),
            policy: policy("accepted_tees = [\"sev\"]\n"),
            ..case(
                "tee not accepted",
                ev(TeeType::Trustzone, t.clone(), vec![]),
                CCA_AT,
                &["tee"],
            )
        },
    ];
    run_cases("cca", cases);
}

#[test]
fn cca_debug_lifecycle_is_refused_by_policy() {
    let e = ev(TeeType::Trustzone, common::read("cca/token.cbor"), vec![]);
    let r = verify(&e, &cca_anchors("cca/trust-anchors.json"), CCA_AT).unwrap();
    assert_eq!(
        appraise_refusal(&Policy::production(), r, |r| r.debug = true, CCA_AT),
        "debug"
    );
}

// ---------------------------------------------------------------- sim

#[test]
fn sim_round_trip_binding_and_tampering() {
    let root = SimRoot::from_seed(&[42; 32]);
    let pk = root.public_key();
    let src = SimEvidenceSource::new(root, [7; 48]).with_svn(3);
    let ek = [9u8; 32];
    let binding = archipelago_attest::key_binding(&ek, 1_800_000_000, b"nonce");
    let e = src.collect_at(&binding, 1_750_000_000);
    let dev = Policy::dev_sim(pk);
    let r = verify_and_appraise(&e, &dev, 1_750_000_010).unwrap();
    check_key_binding(&r, &ek, 1_800_000_000, b"nonce").unwrap();
    assert!(check_key_binding(&r, &ek, 1_800_000_001, b"nonce").is_err());
    assert!(check_key_binding(&r, &[8; 32], 1_800_000_000, b"nonce").is_err());
    assert!(check_key_binding(&r, &ek, 1_800_000_000, b"nonc3").is_err());
    // Production refuses sim even when authentic.
    assert_eq!(
        verify_and_appraise(&e, &Policy::production(), 1_750_000_010)
            .unwrap_err()
            .field(),
        "tee"
    );

    let anchors = TrustAnchors {
        sim_roots: vec![pk],
        ..Default::default()
    };
    let with = |b: Vec<u8>| ev(TeeType::Sim, b, vec![]);
    let b = e.evidence.clone();
    let mut cases: Vec<Case> = (0..10)
        .map(|i| Case {
            anchors: anchors.clone(),
            ..case(
                "flipped byte",
                with(flip(b.clone(), 8 + i * 21)),
                1_750_000_010,
                &["evidence", "root_public_key", "flags", "magic"],
            )
        })
        .collect();
    let debug_src = SimEvidenceSource::new(SimRoot::from_seed(&[42; 32]), [7; 48]).with_debug(true);
    cases.extend([
        Case {
            anchors: anchors.clone(),
            ..case("magic", with(flip(b.clone(), 0)), 1_750_000_010, &["magic"])
        },
        Case {
            anchors: anchors.clone(),
            ..case(
                "measurement",
                with(flip(b.clone(), 8)),
                1_750_000_010,
                &["evidence"],
            )
        },
        Case {
            anchors: anchors.clone(),
            ..case(
                "report data",
                with(flip(b.clone(), 56)),
                1_750_000_010,
                &["evidence"],
            )
        },
        Case {
            anchors: anchors.clone(),
            ..case(
                "signature",
                with(flip(b.clone(), 228)),
                1_750_000_010,
                &["evidence"],
            )
        },
        Case {
            anchors: anchors.clone(),
            ..case(
                "root key",
                with(flip(b.clone(), 140)),
                1_750_000_010,
                &["root_public_key"],
            )
        },
        Case {
            anchors: anchors.clone(),
            ..case(
                "truncated",
                with(b[..100].to_vec()),
                1_750_000_010,
                &["evidence"],
            )
        },
        Case {
            anchors: anchors.clone(),
            ..case("from the future", e.clone(), 1_749_000_000, &["timestamp"])
        },
        case(
            "wrong root (no anchors)",
            e.clone(),
            1_750_000_010,
            &["trust_anchor"],
        ),
        Case {
            anchors: TrustAnchors {
                sim_roots: vec![[1; 32]],
                ..Default::default()
            },
            ..case("wrong root", e.clone(), 1_750_000_010, &["root_public_key"])
        },
        Case {
            anchors: anchors.clone(),
            policy: Some(dev.clone()),
            ..case(
                "debug",
                debug_src.collect_at(&binding, 1_750_000_000),
                1_750_000_010,
                &["debug"],
            )
        },
        Case {
            anchors: anchors.clone(),
            policy: Some(Policy::production()),
            ..case(
                "sim refused by production",
                e.clone(),
                1_750_000_010,
                &["tee"],
            )
        },
        Case {
            anchors: anchors.clone(),
            policy: policy("accepted_tees = []\naccept_sim = true\n[sim]\nmin_svn = { svn = 4 }\n"),
            ..case("svn below minimum", e.clone(), 1_750_000_010, &["svn.svn"])
        },
        Case {
            anchors: anchors.clone(),
            policy: policy(
                "accepted_tees = []\naccept_sim = true\n[sim]\nmeasurements = [\"00\"]\n",
            ),
            ..case(
                "measurement not allowed",
                e.clone(),
                1_750_000_010,
                &["measurement.measurement"],
            )
        },
        Case {
            anchors: anchors.clone(),
            policy: Some(dev.clone()),
            ..case(
                "too old",
                e.clone(),
                1_750_000_000 + 2 * 86400,
                &["evidence_age"],
            )
        },
    ]);
    run_cases("sim", cases);
}
