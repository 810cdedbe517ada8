//! Conversions from stored rows to the public JSON types.

use archipelago_proto::api;

use crate::placement::{Candidate, JobNeeds};
use crate::store::{IslandRow, JobRow, WorkloadRow};

pub fn job(j: &JobRow) -> api::Job {
    api::Job {
        id: j.id.clone(),
        workload_id: j.workload_id,
        state: j.state.clone(),
        confidential: j.mode != "plain",
        mode: j.mode.clone(),
        encryption_key_id: j.encryption_key_id.clone(),
        recipients: j.recipients.clone(),
        island_id: j.island_id.clone(),
        output: j
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok()),
        error: match (&j.error_code, &j.error_message) {
            (Some(code), Some(message)) => Some(api::JobError {
                code: code.clone(),
                message: message.clone(),
            }),
            _ => None,
        },
        hold: j.hold_amount,
        cost: if j.is_terminal() {
            j.cost.or(Some(0))
        } else {
            None
        },
        execution_ms: j.execution_ms,
        attempts: j.attempts,
        created_at: j.created_at,
        updated_at: j.updated_at,
        deadline_at: j.deadline_at,
    }
}

pub fn workload(w: &WorkloadRow) -> api::Workload {
    api::Workload {
        id: w.id,
        slug: w.slug.clone(),
        name: w.name.clone(),
        description: w.description.clone(),
        runtime: w.runtime.clone(),
        memory_mb: w.memory_mb,
        price_per_second: w.price_per_second,
        max_seconds: w.max_seconds,
        max_cost: w.max_cost(),
        plain: w.plain,
        confidential: w.confidential,
        homomorphic: w.homomorphic,
    }
}

pub fn needs(j: &JobRow) -> JobNeeds {
    JobNeeds {
        mode: j.mode.clone(),
        runtime: j.runtime.clone(),
        memory_mb: j.memory_mb,
        recipients: j.recipients.clone(),
    }
}

pub fn candidate(i: &IslandRow, enclave_keys: Vec<String>) -> Candidate {
    Candidate {
        island_id: i.id.clone(),
        runtimes: i.runtimes.clone(),
        memory_mb: i.memory_mb,
        he_capable: i.he_capable,
        enclave_keys,
        load: i.load_permille as f64 / 1000.0,
        succeeded: i.succeeded,
        failed: i.failed,
        expired: i.expired,
    }
}

/// Workloads an island can run (runtime offered, memory fits).
pub fn island_workloads(i: &IslandRow, workloads: &[WorkloadRow]) -> Vec<i64> {
    workloads
        .iter()
        .filter(|w| i.runtimes.contains(&w.runtime) && i.memory_mb >= w.memory_mb)
        .map(|w| w.id)
        .collect()
}
