//! The HTTP API: routes, body limits, the OpenAPI 3.1 document and the
//! Prometheus exposition.

pub mod island;
pub mod public;
pub mod views;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

use crate::app::AppState;
use crate::error::ApiResult;

/// The OpenAPI document (served at `/api/v1/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    info(title = "Archipelago coordinator API", description = "Control plane of the Archipelago confidential inference network. It never holds plaintext of a confidential job."),
    paths(
        public::health, public::workloads, public::workload, public::account,
        public::create_api_key, public::list_api_keys, public::delete_api_key,
        public::admin_create_account, public::admin_grant, public::admin_enrollment_token,
        public::register_key, public::list_keys, public::delete_key, public::encrypt, public::decrypt,
        public::enclaves, public::stats,
        public::submit_job, public::get_job, public::list_jobs, public::cancel_job, public::stream_job,
        public::islands,
        island::enroll, island::challenge, island::attest, island::heartbeat, island::lease,
        island::renew, island::chunk, island::result, island::release, island::he_key,
    ),
    components(schemas(archipelago_proto::island::LeasedJobs)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// Prometheus text exposition. Labels are states and TEE types only, never
/// ids or payloads.
async fn metrics(State(st): State<AppState>) -> ApiResult<impl IntoResponse> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let counts = st.store.job_counts().await?;
    let _ = writeln!(
        out,
        "# HELP archipelago_jobs Jobs by state.\n# TYPE archipelago_jobs gauge"
    );
    for s in archipelago_proto::api::JOB_STATES {
        let n = counts
            .iter()
            .find(|(k, _)| k == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "archipelago_jobs{{state=\"{s}\"}} {n}");
    }
    let queued = counts
        .iter()
        .find(|(k, _)| k == "queued")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    let _ = writeln!(out, "# HELP archipelago_queue_depth Jobs waiting for an island.\n# TYPE archipelago_queue_depth gauge\narchipelago_queue_depth {queued}");
    let stats = public::compute_stats(&st).await?;
    let _ = writeln!(out, "# HELP archipelago_attested_enclaves Attested hosts by TEE type.\n# TYPE archipelago_attested_enclaves gauge");
    for t in archipelago_attest::TeeType::ALL {
        let n = stats.tee_types.get(t.as_str()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "archipelago_attested_enclaves{{tee_type=\"{}\"}} {n}",
            t.as_str()
        );
    }
    let _ = writeln!(out, "# HELP archipelago_waiting_lease_requests Long polls waiting on this replica.\n# TYPE archipelago_waiting_lease_requests gauge\narchipelago_waiting_lease_requests {}", st.dispatcher.waiting());
    let c = &st.counters;
    for (name, help, v) in [
        (
            "archipelago_lease_expiries_total",
            "Leases that lapsed (reaped by this replica).",
            c.lease_expiries.load(Relaxed),
        ),
        (
            "archipelago_jobs_submitted_total",
            "Jobs submitted to this replica.",
            c.jobs_submitted.load(Relaxed),
        ),
        (
            "archipelago_jobs_settled_total",
            "Results settled by this replica.",
            c.jobs_settled.load(Relaxed),
        ),
        (
            "archipelago_attestations_accepted_total",
            "Evidence accepted.",
            c.attestations_accepted.load(Relaxed),
        ),
        (
            "archipelago_attestations_refused_total",
            "Evidence refused.",
            c.attestations_refused.load(Relaxed),
        ),
        (
            "archipelago_rate_limited_total",
            "Requests refused with 429.",
            c.rate_limited.load(Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let t = st.store.ledger_totals().await?;
    let _ = writeln!(out, "# HELP archipelago_ledger_credits Credits per ledger book.\n# TYPE archipelago_ledger_credits gauge");
    for (book, v) in [
        ("available", t.available),
        ("held", t.held),
        ("platform", t.platform),
        ("issued", t.issued),
    ] {
        let _ = writeln!(out, "archipelago_ledger_credits{{book=\"{book}\"}} {v}");
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// The whole router.
pub fn router(state: AppState) -> Router {
    let small = DefaultBodyLimit::max(state.config.max_body_bytes);
    let large = DefaultBodyLimit::max(state.config.max_payload_bytes);
    let payload_routes = Router::new()
        .route("/jobs", post(public::submit_job).get(public::list_jobs))
        .route(
            "/confidential/keys",
            post(public::register_key).get(public::list_keys),
        )
        .route("/island/jobs/{id}/result", post(island::result))
        .route("/island/jobs/{id}/chunks", post(island::chunk))
        .route("/island/jobs/{id}/release", post(island::release))
        .layer(large);
    let v1 = Router::new()
        .route("/health", get(public::health))
        .route("/openapi.json", get(openapi))
        .route("/workloads", get(public::workloads))
        .route("/workloads/{id}", get(public::workload))
        .route("/account", get(public::account))
        .route(
            "/api-keys",
            post(public::create_api_key).get(public::list_api_keys),
        )
        .route("/api-keys/{id}", delete(public::delete_api_key))
        .route("/admin/accounts", post(public::admin_create_account))
        .route("/admin/accounts/{id}/grant", post(public::admin_grant))
        .route(
            "/admin/enrollment-tokens",
            post(public::admin_enrollment_token),
        )
        .route("/confidential/keys/{key_id}", delete(public::delete_key))
        .route("/confidential/encrypt", post(public::encrypt))
        .route("/confidential/decrypt", post(public::decrypt))
        .route("/confidential/enclaves", get(public::enclaves))
        .route("/confidential/stats", get(public::stats))
        .route(
            "/jobs/{id}",
            get(public::get_job).delete(public::cancel_job),
        )
        .route("/jobs/{id}/stream", get(public::stream_job))
        .route("/islands", get(public::islands))
        .route("/island/enroll", post(island::enroll))
        .route("/island/attest/challenge", post(island::challenge))
        .route("/island/attest", post(island::attest))
        .route("/island/heartbeat", post(island::heartbeat))
        .route("/island/lease", post(island::lease))
        .route("/island/jobs/{id}/renew", post(island::renew))
        .route("/island/he-keys/{key_id}", get(island::he_key))
        .layer(small)
        .merge(payload_routes);
    Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics))
        .fallback(public::not_found)
        .with_state(state)
}
