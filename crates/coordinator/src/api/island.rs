//! Island-side handlers (`Authorization: Bearer it_…`): enrollment,
//! attestation (nonce → evidence → verify and appraise with the
//! coordinator's policy → enclave key recorded), heartbeats, long-poll
//! leases, renewals, streamed chunks, results with settlement, and
//! releases (a job given back unfinished is requeued at once).
//!
//! For confidential jobs an island only ever posts ciphertext: results are
//! re-serialised from the `{"encrypted": true, …}` shape, so nothing else
//! can ride along into the database.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::RngCore;

use archipelago_attest::{check_key_binding, verify_and_appraise, Evidence, TeeType};
use archipelago_proto::api::{self, EncryptedPayload};
use archipelago_proto::island::*;
use archipelago_proto::{b64, KeyId};

use super::views;
use crate::app::{ApiJson, AppState, IslandAuth};
use crate::error::{ApiError, ApiResult};
use crate::store::{CompleteOutcome, IslandSnapshot, NewEnclave, ReleaseOutcome};
use crate::util::now_secs;

const MAX_RUNTIMES: usize = 16;

fn check_capabilities(c: &Capabilities) -> ApiResult<()> {
    if let Some(t) = &c.tee_type {
        serde_json::from_value::<TeeType>(serde_json::Value::String(t.clone())).map_err(|_| {
            ApiError::field("tee_type", "one of sgx, tdx, sev, nitro, trustzone, sim")
        })?;
    }
    if c.runtimes.len() > MAX_RUNTIMES {
        return Err(ApiError::field(
            "runtimes",
            format!("at most {MAX_RUNTIMES}"),
        ));
    }
    for r in &c.runtimes {
        if r.is_empty()
            || r.len() > 32
            || !r
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(ApiError::field(
                "runtimes",
                "names are 1..=32 of [a-z0-9_-]",
            ));
        }
    }
    if !(0..=16 * 1024 * 1024).contains(&c.memory_mb) {
        return Err(ApiError::field("memory_mb", "0..=16777216"));
    }
    if !(1..=1024).contains(&c.capacity) {
        return Err(ApiError::field("capacity", "1..=1024"));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/island/enroll", request_body = EnrollRequest,
    responses((status = 201, body = EnrollResponse), (status = 401, body = api::ErrorBody)))]
pub async fn enroll(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    if req.name.is_empty() || req.name.len() > 128 {
        return Err(ApiError::field("name", "1 to 128 characters"));
    }
    check_capabilities(&req.capabilities)?;
    if req.enrollment_token.len() > 128 {
        return Err(ApiError::unauthorized(
            "unknown or used-up enrollment token",
        ));
    }
    let c = &req.capabilities;
    let (island_id, island_token) = st
        .store
        .enroll_island(
            &req.enrollment_token,
            &req.name,
            c.tee_type.as_deref(),
            c.he_capable,
            &c.runtimes,
            c.memory_mb,
            c.capacity,
        )
        .await?
        .ok_or_else(|| {
            ApiError::unauthorized(
                "unknown or used-up enrollment token; ask the operator for a new one",
            )
        })?;
    tracing::info!(island_id = %island_id, tee = ?c.tee_type, "island enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            island_id,
            island_token,
            heartbeat_interval_secs: st.config.heartbeat_interval_secs,
            reattest_interval_secs: st.config.reattest_interval_secs,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/island/attest/challenge", responses((status = 200, body = AttestChallenge)))]
pub async fn challenge(
    State(st): State<AppState>,
    auth: IslandAuth,
) -> ApiResult<Json<AttestChallenge>> {
    let mut nonce = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let nonce = b64::encode_std(&nonce);
    let expires_at = now_secs() + st.config.nonce_ttl_secs as i64;
    st.store
        .create_nonce(&auth.island.id, &nonce, expires_at)
        .await?;
    Ok(Json(AttestChallenge { nonce, expires_at }))
}

#[utoipa::path(post, path = "/api/v1/island/attest", request_body = AttestRequest,
    responses((status = 200, body = AttestResponse), (status = 403, body = api::ErrorBody, description = "evidence refused"),
      (status = 409, body = api::ErrorBody, description = "nonce unknown, used or expired")))]
pub async fn attest(
    State(st): State<AppState>,
    auth: IslandAuth,
    ApiJson(req): ApiJson<AttestRequest>,
) -> ApiResult<Json<AttestResponse>> {
    let refused = |msg: String| {
        st.counters
            .attestations_refused
            .fetch_add(1, Ordering::Relaxed);
        ApiError::new(StatusCode::FORBIDDEN, "attestation_refused", msg)
    };
    let policy = st.policy.clone().ok_or_else(|| {
        ApiError::unavailable("this coordinator has no attestation policy configured (policy_file); it cannot attest enclaves")
    })?;
    let nonce = b64::decode_any(&req.nonce, 64)
        .map_err(|_| ApiError::field("nonce", "base64 nonce from /island/attest/challenge"))?;
    let ek = b64::decode_key32(&req.enclave_public_key).map_err(|_| {
        ApiError::field(
            "enclave_public_key",
            "a 32-byte X25519 public key in base64",
        )
    })?;
    let now = now_secs();
    if req.key_expires_at <= now || req.key_expires_at > now + 7 * 86_400 {
        return Err(ApiError::field(
            "key_expires_at",
            "must be in the future and at most 7 days ahead",
        ));
    }
    let evidence_text = serde_json::to_string(&req.evidence).map_err(|_| ApiError::internal())?;
    let evidence = Evidence::from_json(evidence_text.as_bytes())
        .map_err(|e| ApiError::field("evidence", e.to_string()))?;
    // The nonce is consumed before verification: one evidence per nonce.
    if !st
        .store
        .take_nonce(&auth.island.id, &b64::encode_std(&nonce), now)
        .await?
    {
        return Err(ApiError::conflict(
            "nonce_invalid",
            "the nonce is unknown, already used, expired or issued to another island; request a new challenge",
        ));
    }
    let key_expires_at = req.key_expires_at as u64;
    let nonce_for_check = nonce.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        let result =
            verify_and_appraise(&evidence, &policy, now as u64).map_err(|e| e.to_string())?;
        check_key_binding(&result, &ek, key_expires_at, &nonce_for_check)
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(result)
    })
    .await
    .map_err(|_| ApiError::internal())?;
    let result = match verdict {
        Ok(r) => r,
        Err(msg) => {
            tracing::info!(island_id = %auth.island.id, reason = %msg, "attestation refused");
            return Err(refused(format!("evidence refused: {msg}")));
        }
    };
    let key_id = KeyId::enclave(&ek);
    let interval = st.config.reattest_interval_secs as i64;
    // One missed re-attestation round is tolerated.
    let valid_until = (now + 2 * interval).min(req.key_expires_at);
    let rec = NewEnclave {
        key_id: key_id.as_str().into(),
        island_id: auth.island.id.clone(),
        public_key: b64::encode_std(&ek),
        tee_type: result.tee.as_str().into(),
        nonce: b64::encode_std(&nonce),
        evidence: evidence_text,
        measurement: result.primary_measurement_hex().map(str::to_string),
        attested_at: now,
        key_expires_at: req.key_expires_at,
        valid_until,
    };
    if !st.store.record_enclave(&rec).await? {
        return Err(ApiError::conflict(
            "enclave_key_taken",
            "this enclave key is registered to another island",
        ));
    }
    st.counters
        .attestations_accepted
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(island_id = %auth.island.id, enclave_key_id = %key_id.as_str(), tee = %result.tee.as_str(), "enclave attested");
    // Jobs waiting for this enclave may now be leased.
    st.dispatcher.wake_all();
    Ok(Json(AttestResponse {
        enclave_key_id: key_id.as_str().into(),
        tee_type: result.tee.as_str().into(),
        valid_until,
        next_attestation_at: now + interval,
    }))
}

#[utoipa::path(post, path = "/api/v1/island/heartbeat", request_body = Heartbeat, responses((status = 200, body = HeartbeatResponse)))]
pub async fn heartbeat(
    State(st): State<AppState>,
    auth: IslandAuth,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    check_capabilities(&hb.capabilities)?;
    if !(0.0..=1.0).contains(&hb.load) {
        return Err(ApiError::field("load", "0.0..=1.0"));
    }
    if hb.active_jobs.len() > 1024 {
        return Err(ApiError::field("active_jobs", "at most 1024"));
    }
    let c = &hb.capabilities;
    st.store
        .heartbeat(
            &auth.island.id,
            (hb.load * 1000.0).round() as i64,
            c.tee_type.as_deref(),
            c.he_capable,
            &c.runtimes,
            c.memory_mb,
            c.capacity,
        )
        .await?;
    st.forget_island(&auth.island.id);
    let attestation_due = match c.tee_type {
        Some(_) => match st.store.last_attested(&auth.island.id).await? {
            Some(t) => now_secs() - t >= st.config.reattest_interval_secs as i64,
            None => true,
        },
        None => false,
    };
    let cancel_jobs = st
        .store
        .stale_jobs(&auth.island.id, &hb.active_jobs)
        .await?;
    Ok(Json(HeartbeatResponse {
        heartbeat_interval_secs: st.config.heartbeat_interval_secs,
        attestation_due,
        cancel_jobs,
    }))
}

#[utoipa::path(post, path = "/api/v1/island/lease", request_body = LeaseRequest,
    responses((status = 200, body = LeasedJob, description = "one job (no `max_jobs` in the request); with `max_jobs` the body is a LeasedJobs"),
      (status = 204, description = "no job within wait_ms")))]
pub async fn lease(
    State(st): State<AppState>,
    auth: IslandAuth,
    ApiJson(req): ApiJson<LeaseRequest>,
) -> ApiResult<Response> {
    let island = auth.island;
    let wait = Duration::from_millis(req.wait_ms.min(st.config.max_lease_wait_ms));
    let deadline = tokio::time::Instant::now() + wait;
    let accept_sim = st.accept_sim();
    let keys = st
        .store
        .island_enclave_keys(&island.id, now_secs(), accept_sim)
        .await?;
    let snapshot = IslandSnapshot {
        id: island.id.clone(),
        runtimes: island.runtimes.clone(),
        memory_mb: island.memory_mb,
        capacity: island.capacity,
        he_capable: island.he_capable,
        has_enclave: !keys.is_empty(),
    };
    let lease_ms = st.config.lease_secs as i64 * 1000;
    let max_jobs = match req.max_jobs {
        None => 1,
        Some(n) if (1..=MAX_LEASE_BATCH).contains(&n) => i64::from(n),
        Some(_) => {
            return Err(ApiError::field(
                "max_jobs",
                format!("1..={MAX_LEASE_BATCH}"),
            ))
        }
    };
    // Register before the first claim so a wake-up between claim and wait
    // is kept as a permit.
    let reg = st.dispatcher.register(views::candidate(&island, keys));
    loop {
        let claims = st
            .store
            .claim_jobs(&snapshot, lease_ms, accept_sim, max_jobs)
            .await?;
        if !claims.is_empty() {
            drop(reg);
            let mut jobs = Vec::with_capacity(claims.len());
            for claim in claims {
                jobs.push(leased_job(&st, claim).await?);
            }
            tracing::debug!(island_id = %island.id, jobs = jobs.len(), "jobs leased");
            if req.max_jobs.is_none() {
                if let Some(job) = jobs.pop() {
                    return Ok((StatusCode::OK, Json(job)).into_response());
                }
            }
            return Ok((StatusCode::OK, Json(LeasedJobs { jobs })).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let step = (deadline - now).min(Duration::from_secs(1));
        st.dispatcher.idle(&reg);
        let _ = tokio::time::timeout(step, reg.notify.notified()).await;
    }
}

/// The wire form of a claimed job (and the SSE wake-up for its client).
async fn leased_job(st: &AppState, claim: crate::store::Claim) -> ApiResult<LeasedJob> {
    let job = claim.job;
    let input: serde_json::Value =
        serde_json::from_str(&job.input).map_err(|_| ApiError::internal())?;
    let slug = st
        .workload(job.workload_id)
        .await?
        .map(|w| w.slug)
        .unwrap_or_default();
    // Local subscribers only; other replicas' streams poll.
    let _ = st.job_events.send(std::sync::Arc::from(job.id.as_str()));
    Ok(LeasedJob {
        lease_id: job.lease_id.unwrap_or_default(),
        lease_expires_at: job.lease_expires_at.unwrap_or_default(),
        workload_id: job.workload_id,
        workload_slug: slug,
        runtime: job.runtime,
        mode: job.mode,
        max_seconds: job.max_seconds,
        input,
        encryption_key_id: job.encryption_key_id,
        enclave_key_id: claim.enclave_key_id,
        job_id: job.id,
    })
}

fn lease_error(outcome_lost: bool) -> ApiError {
    if outcome_lost {
        ApiError::conflict(
            "lease_lost",
            "this island does not hold a live lease on the job (it lapsed, was requeued or was never yours); stop working on it",
        )
    } else {
        ApiError::conflict("job_cancelled", "the job was cancelled; stop working on it")
    }
}

#[utoipa::path(post, path = "/api/v1/island/jobs/{id}/renew", request_body = RenewRequest,
    responses((status = 200, body = RenewResponse), (status = 409, body = api::ErrorBody)))]
pub async fn renew(
    State(st): State<AppState>,
    auth: IslandAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> ApiResult<Json<RenewResponse>> {
    let lease_ms = st.config.lease_secs as i64 * 1000;
    match st
        .store
        .renew_lease(&auth.island.id, &id, &req.lease_id, lease_ms, req.running)
        .await?
    {
        Some(job) => {
            if req.running {
                st.job_changed(&id).await;
            }
            Ok(Json(RenewResponse {
                lease_expires_at: job.lease_expires_at.unwrap_or_default(),
                state: job.state,
            }))
        }
        None => {
            let cancelled = st.store.job_any(&id).await?.is_some_and(|j| {
                j.state == "cancelled" && j.island_id.as_deref() == Some(&auth.island.id)
            });
            Err(lease_error(!cancelled))
        }
    }
}

#[utoipa::path(post, path = "/api/v1/island/jobs/{id}/chunks", request_body = ChunkPost,
    responses((status = 204), (status = 409, body = api::ErrorBody)))]
pub async fn chunk(
    State(st): State<AppState>,
    auth: IslandAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ChunkPost>,
) -> ApiResult<StatusCode> {
    if !(0..=1_000_000).contains(&req.seq) {
        return Err(ApiError::field("seq", "0..=1000000"));
    }
    let job = st
        .store
        .job_any(&id)
        .await?
        .ok_or_else(|| lease_error(true))?;
    if job.mode != api::MODE_PLAIN {
        // Sealed chunks are base64url ciphertext, nothing else.
        b64::decode_any(&req.data, 2 * 1024 * 1024)
            .map_err(|_| ApiError::field("data", "a sealed chunk (base64url)"))?;
    } else if req.data.len() > 2 * 1024 * 1024 {
        return Err(ApiError::field("data", "at most 2 MiB per chunk"));
    }
    if !st
        .store
        .add_chunk(&auth.island.id, &id, &req.lease_id, req.seq, &req.data)
        .await?
    {
        return Err(lease_error(true));
    }
    st.job_changed(&id).await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/island/jobs/{id}/result", request_body = ResultPost,
    responses((status = 200, body = ResultResponse), (status = 409, body = api::ErrorBody), (status = 422, body = api::ErrorBody)))]
pub async fn result(
    State(st): State<AppState>,
    auth: IslandAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ResultPost>,
) -> ApiResult<Json<ResultResponse>> {
    let succeeded = match req.outcome.as_str() {
        "succeeded" => true,
        "failed" => false,
        _ => return Err(ApiError::field("outcome", "`succeeded` or `failed`")),
    };
    let job = st
        .store
        .job_any(&id)
        .await?
        .ok_or_else(|| lease_error(true))?;
    if job.island_id.as_deref() != Some(auth.island.id.as_str()) {
        return Err(lease_error(true));
    }
    let output = match (&req.output, succeeded) {
        (None, true) => {
            return Err(ApiError::field(
                "output",
                "required when the outcome is succeeded",
            ))
        }
        (None, false) => None,
        (Some(v), _) if job.mode != api::MODE_PLAIN => {
            let p: EncryptedPayload = serde_json::from_value(v.clone()).map_err(|_| {
                ApiError::field("output", "a confidential job's output is {\"encrypted\": true, \"key_id\", \"ciphertext\", \"enclave_key_id\"?}")
            })?;
            if !p.encrypted {
                return Err(ApiError::field(
                    "output.encrypted",
                    "must be true: confidential outputs are sealed in the enclave",
                ));
            }
            if Some(&p.key_id) != job.encryption_key_id.as_ref() {
                return Err(ApiError::field(
                    "output.key_id",
                    "must be the job's encryption_key_id",
                ));
            }
            b64::decode_any(&p.ciphertext, st.config.max_payload_bytes)
                .map_err(|_| ApiError::field("output.ciphertext", "base64url ciphertext"))?;
            if let Some(ek) = &p.enclave_key_id {
                KeyId::parse(ek)
                    .map_err(|_| ApiError::field("output.enclave_key_id", "an ek_… id"))?;
            }
            Some(serde_json::to_string(&p).map_err(|_| ApiError::internal())?)
        }
        (Some(v), _) => Some(serde_json::to_string(v).map_err(|_| ApiError::internal())?),
    };
    let error = match (&req.error, succeeded) {
        (Some(e), false) => {
            if e.code.is_empty()
                || e.code.len() > 64
                || !e
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(ApiError::field("error.code", "1..=64 of [a-z0-9_]"));
            }
            if e.message.len() > 512 {
                return Err(ApiError::field("error.message", "at most 512 characters"));
            }
            Some((e.code.clone(), e.message.clone()))
        }
        (None, false) => Some((
            "island_failed".to_string(),
            "the island reported a failure".to_string(),
        )),
        (_, true) => None,
    };
    if !(0..=86_400_000).contains(&req.execution_ms) {
        return Err(ApiError::field("execution_ms", "0..=86400000"));
    }
    let outcome = st
        .store
        .complete_read_job(
            &job,
            &auth.island.id,
            &auth.island.owner_account_id,
            &req.lease_id,
            succeeded,
            req.execution_ms,
            output.as_deref(),
            error.as_ref().map(|(c, m)| (c.as_str(), m.as_str())),
            st.config.island_share_percent,
        )
        .await?;
    match outcome {
        CompleteOutcome::Settled {
            state,
            cost,
            earned,
        } => {
            st.counters.jobs_settled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job_id = %id, island_id = %auth.island.id, state = %state, cost, "job settled");
            // Other replicas were notified in the settlement's transaction.
            st.job_changed_locally(&id);
            Ok(Json(ResultResponse {
                state,
                cost,
                earned,
            }))
        }
        CompleteOutcome::AlreadySettled {
            state,
            cost,
            earned,
        } => Ok(Json(ResultResponse {
            state,
            cost,
            earned,
        })),
        CompleteOutcome::Cancelled => Err(lease_error(false)),
        CompleteOutcome::LeaseLost | CompleteOutcome::NotFound => Err(lease_error(true)),
    }
}

#[utoipa::path(post, path = "/api/v1/island/jobs/{id}/release", request_body = ReleaseRequest,
    responses((status = 200, body = ReleaseResponse), (status = 404, body = api::ErrorBody, description = "no such job leased to this island"),
      (status = 409, body = api::ErrorBody, description = "the lease is not live any more")))]
pub async fn release(
    State(st): State<AppState>,
    auth: IslandAuth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ReleaseRequest>,
) -> ApiResult<Json<ReleaseResponse>> {
    if req.lease_id.is_empty() || req.lease_id.len() > 128 {
        return Err(ApiError::field(
            "lease_id",
            "the lease id from /island/lease",
        ));
    }
    let reason = req.reason.as_deref().unwrap_or("unspecified");
    if reason.is_empty()
        || reason.len() > 64
        || !reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::field("reason", "1..=64 of [a-z0-9_]"));
    }
    let outcome = st
        .store
        .release_job(&auth.island.id, &id, &req.lease_id, st.config.max_attempts)
        .await?;
    let state = match outcome {
        ReleaseOutcome::Requeued => "queued",
        ReleaseOutcome::Failed => "failed",
        ReleaseOutcome::NotYours => return Err(ApiError::not_found("job leased to this island")),
        ReleaseOutcome::LeaseLost => return Err(lease_error(true)),
    };
    tracing::info!(job_id = %id, island_id = %auth.island.id, reason, state, "job released by its island");
    st.job_changed(&id).await;
    if state == "queued" {
        // Another recipient may lease it now.
        st.dispatcher.wake_all();
    }
    Ok(Json(ReleaseResponse {
        state: state.into(),
    }))
}

#[utoipa::path(get, path = "/api/v1/island/he-keys/{key_id}", responses((status = 200, body = HeKeyMaterial), (status = 404, body = api::ErrorBody)))]
pub async fn he_key(
    State(st): State<AppState>,
    _auth: IslandAuth,
    Path(key_id): Path<String>,
) -> ApiResult<Json<HeKeyMaterial>> {
    let k = st
        .store
        .client_key_any(&key_id)
        .await?
        .ok_or_else(|| ApiError::not_found("HE key"))?;
    if k.kind != api::KEY_KIND_HE_BFV {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "wrong_key_kind",
            format!("key {key_id} is a {} key, not an he-bfv key", k.kind),
        ));
    }
    Ok(Json(HeKeyMaterial {
        key_id: k.key_id,
        public_key: k.public_key,
        evaluation_keys: k.evaluation_keys,
    }))
}
