//! Intel SGX and TDX verifier: DCAP quotes (v3 for SGX, v4/v5 for TDX) with
//! their collateral (PCK CRL, root CA CRL, TCB info, QE identity and their
//! issuer chains), checked by `dcap-qvl` against the pinned Intel SGX Root
//! CA at an explicit `now`. Before calling it we check the collateral and
//! certificate validity windows ourselves so a refusal names the item and
//! the window; after, we report the TCB status and advisories and read the
//! debug bit ourselves (dcap-qvl is told to allow debug so that we can report
//! it and let policy refuse it).

use std::collections::BTreeMap;

use dcap_qvl::configs::RingConfig;
use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::QuoteCollateralV3;
use x509_cert::der::Decode as _;

use super::x509::check_validity;
use crate::{AttestationResult, TcbInfo, TeeType, VerifyError};

/// Largest quote accepted.
pub const MAX_QUOTE_BYTES: usize = 32 * 1024;

/// Parse "YYYY-MM-DDTHH:MM:SSZ" (optionally with fractional seconds).
fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !s.ends_with('Z') || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

fn check_json_window(tee: TeeType, field: &str, body: &str, now: u64) -> Result<(), VerifyError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Dates {
        issue_date: String,
        next_update: String,
    }
    let d: Dates = serde_json::from_str(body).map_err(|e| VerifyError::malformed(tee, field, e))?;
    let nb = parse_rfc3339(&d.issue_date)
        .ok_or_else(|| VerifyError::malformed(tee, field, "bad issueDate"))?;
    let na = parse_rfc3339(&d.next_update)
        .ok_or_else(|| VerifyError::malformed(tee, field, "bad nextUpdate"))?;
    if now < nb || now > na {
        return Err(VerifyError::OutsideValidity {
            tee,
            field: field.into(),
            not_before: nb,
            not_after: na,
            now,
        });
    }
    Ok(())
}

fn check_pem_chain(tee: TeeType, field: &str, pem: &[u8], now: u64) -> Result<(), VerifyError> {
    // Quotes carry the chain NUL-terminated.
    let end = pem
        .iter()
        .rposition(|b| !matches!(b, 0 | b'\n' | b'\r' | b' '))
        .map_or(0, |i| i + 1);
    let mut pem = pem[..end].to_vec();
    pem.push(b'\n');
    let pem = &pem[..];
    let certs = x509_cert::Certificate::load_pem_chain(pem)
        .map_err(|e| VerifyError::malformed(tee, field, e))?;
    if certs.is_empty() {
        return Err(VerifyError::malformed(
            tee,
            field,
            "empty certificate chain",
        ));
    }
    for (i, c) in certs.iter().enumerate() {
        check_validity(tee, &format!("{field}[{i}]"), c, now)?;
    }
    Ok(())
}

fn check_crl(tee: TeeType, field: &str, der: &[u8], now: u64) -> Result<(), VerifyError> {
    let crl = x509_cert::crl::CertificateList::from_der(der)
        .map_err(|e| VerifyError::malformed(tee, field, e))?;
    let nb = crl.tbs_cert_list.this_update.to_unix_duration().as_secs();
    let na = crl
        .tbs_cert_list
        .next_update
        .map(|t| t.to_unix_duration().as_secs())
        .unwrap_or(u64::MAX);
    if now < nb || now > na {
        return Err(VerifyError::OutsideValidity {
            tee,
            field: field.into(),
            not_before: nb,
            not_after: na,
            now,
        });
    }
    Ok(())
}

/// Turn a dcap-qvl error chain into a refusal naming the failing part.
fn classify(tee: TeeType, e: &anyhow::Error) -> VerifyError {
    let msg = format!("{e:#}");
    let has = |s: &str| msg.contains(s);
    let field = if has("ISV enclave report signature") {
        return VerifyError::signature(
            tee,
            "quote_body",
            format!("{msg} (a quote field or the attestation-key signature was altered)"),
        );
    } else if has("qe_report") || has("QE report hash") {
        return VerifyError::signature(tee, "qe_report", msg);
    } else if has("tcb_info") || has("TCBInfo") || has("TCB Info") || has("TCB info") {
        "collateral.tcb_info"
    } else if has("qe_identity") || has("QE Identity") || has("QEIdentity") || has("QE ISVSVN") {
        "collateral.qe_identity"
    } else if has("CRL") {
        "collateral.crl"
    } else if has("PCK") || has("certificate chain") || has("Certificate chain") {
        return VerifyError::chain(tee, "pck_certificate_chain", msg);
    } else if has("Fmspc") {
        "fmspc"
    } else if has("Revoked") {
        "tcb_status"
    } else if has("TDX module") || has("TDX TCB") || has("tdxModule") {
        "tdx_module"
    } else {
        "quote"
    };
    if has("Signature is invalid") {
        return VerifyError::signature(tee, field, msg);
    }
    VerifyError::malformed(tee, field, msg)
}

/// Verify a DCAP quote (SGX when `tee` is `Sgx`, TDX when `Tdx`).
pub fn verify_dcap(
    tee: TeeType,
    quote: &[u8],
    endorsements: &[Vec<u8>],
    now: u64,
) -> Result<AttestationResult, VerifyError> {
    if quote.len() > MAX_QUOTE_BYTES {
        return Err(VerifyError::malformed(
            tee,
            "quote",
            format!("{} bytes, more than {MAX_QUOTE_BYTES}", quote.len()),
        ));
    }
    let coll_json = endorsements.first().ok_or_else(|| VerifyError::MissingEndorsement {
        tee,
        detail: "the DCAP collateral JSON (PCK CRL, TCB info, QE identity and their issuer chains) from a PCCS".into(),
    })?;
    let collateral: QuoteCollateralV3 = serde_json::from_slice(coll_json)
        .map_err(|e| VerifyError::malformed(tee, "collateral", e))?;
    let parsed =
        Quote::parse(quote).map_err(|e| VerifyError::malformed(tee, "quote", format!("{e:#}")))?;
    let is_sgx = parsed.header.tee_type == 0;
    let expected = if tee == TeeType::Sgx {
        "SGX (tee_type 0)"
    } else {
        "TDX (tee_type 0x81)"
    };
    if is_sgx != (tee == TeeType::Sgx) {
        return Err(VerifyError::mismatch(
            tee,
            "quote.tee_type",
            expected,
            format!("{:#x}", parsed.header.tee_type),
        ));
    }

    // Validity windows, named precisely.
    check_json_window(tee, "collateral.tcb_info", &collateral.tcb_info, now)?;
    check_json_window(tee, "collateral.qe_identity", &collateral.qe_identity, now)?;
    check_crl(tee, "collateral.pck_crl", &collateral.pck_crl, now)?;
    check_crl(tee, "collateral.root_ca_crl", &collateral.root_ca_crl, now)?;
    check_pem_chain(
        tee,
        "collateral.tcb_info_issuer_chain",
        collateral.tcb_info_issuer_chain.as_bytes(),
        now,
    )?;
    check_pem_chain(
        tee,
        "collateral.qe_identity_issuer_chain",
        collateral.qe_identity_issuer_chain.as_bytes(),
        now,
    )?;
    check_pem_chain(
        tee,
        "collateral.pck_crl_issuer_chain",
        collateral.pck_crl_issuer_chain.as_bytes(),
        now,
    )?;
    if let Ok(chain) = parsed.raw_cert_chain() {
        check_pem_chain(tee, "pck_certificate_chain", chain, now)?;
    }

    let verified = QuoteVerifier::new_prod()
        .with_config::<RingConfig>()
        .allow_debug(true)
        .verify(quote, &collateral, now)
        .map_err(|e| classify(tee, &e))?;

    let mut measurements = BTreeMap::new();
    let mut svns = BTreeMap::new();
    let mut claims = BTreeMap::new();
    let (primary, debug, report_data) = match &verified.report {
        Report::SgxEnclave(r) => {
            measurements.insert("mr_enclave".into(), hex::encode(r.mr_enclave));
            measurements.insert("mr_signer".into(), hex::encode(r.mr_signer));
            svns.insert("isv_svn".into(), u64::from(r.isv_svn));
            svns.insert("isv_prod_id".into(), u64::from(r.isv_prod_id));
            claims.insert("cpu_svn".into(), hex::encode(r.cpu_svn));
            claims.insert("attributes".into(), hex::encode(r.attributes));
            // SGX ATTRIBUTES.DEBUG is bit 1 of the flags.
            ("mr_enclave", r.attributes[0] & 0x02 != 0, r.report_data)
        }
        other => {
            let Some(td) = other.as_td10() else {
                return Err(VerifyError::malformed(tee, "quote", "unknown report body"));
            };
            measurements.insert("mr_td".into(), hex::encode(td.mr_td));
            measurements.insert("mr_config_id".into(), hex::encode(td.mr_config_id));
            measurements.insert("mr_owner".into(), hex::encode(td.mr_owner));
            measurements.insert("mr_owner_config".into(), hex::encode(td.mr_owner_config));
            measurements.insert("mr_seam".into(), hex::encode(td.mr_seam));
            measurements.insert("rtmr0".into(), hex::encode(td.rt_mr0));
            measurements.insert("rtmr1".into(), hex::encode(td.rt_mr1));
            measurements.insert("rtmr2".into(), hex::encode(td.rt_mr2));
            measurements.insert("rtmr3".into(), hex::encode(td.rt_mr3));
            claims.insert("tee_tcb_svn".into(), hex::encode(td.tee_tcb_svn));
            claims.insert("td_attributes".into(), hex::encode(td.td_attributes));
            // TDX TD_ATTRIBUTES.TUD.DEBUG is bit 0.
            ("mr_td", td.td_attributes[0] & 0x01 != 0, td.report_data)
        }
    };
    claims.insert("quote_version".into(), parsed.header.version.to_string());
    claims.insert("qe_status".into(), verified.qe_status.status.to_string());
    claims.insert(
        "platform_status".into(),
        verified.platform_status.status.to_string(),
    );
    Ok(AttestationResult {
        tee,
        primary_measurement: primary,
        measurements,
        tcb: TcbInfo {
            status: Some(verified.status.clone()),
            advisory_ids: verified.advisory_ids.clone(),
            svns,
        },
        debug,
        report_data: Some(report_data),
        nitro: None,
        evidence_time: None,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-06-19T10:56:11Z"), Some(1_750_330_571));
        assert_eq!(
            parse_rfc3339("2025-06-19T10:56:11.123Z"),
            Some(1_750_330_571)
        );
        assert_eq!(parse_rfc3339("2025-13-19T10:56:11Z"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
