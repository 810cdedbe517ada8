//! Placement: which islands may run a job, and which of them should.
//!
//! Filter: runtime offered, memory fits, and by mode: any island for plain
//! jobs, HE-capable islands for HE jobs, and for TEE jobs only islands with a
//! currently attested enclave key among the envelope's recipients. Score:
//! lower load and better reliability win; ties are broken at random so no
//! island is systematically preferred. The database claim query enforces
//! the same filter; this module decides which waiting island is woken.

use rand::seq::SliceRandom;
use rand::Rng;

/// What a job needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNeeds {
    /// `plain`, `tee` or `he`.
    pub mode: String,
    pub runtime: String,
    pub memory_mb: i64,
    /// TEE jobs: enclave key ids from the envelope header.
    pub recipients: Vec<String>,
}

/// What a candidate island offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub island_id: String,
    pub runtimes: Vec<String>,
    pub memory_mb: i64,
    pub he_capable: bool,
    /// Currently attested, routable enclave keys.
    pub enclave_keys: Vec<String>,
    /// 0.0 ..= 1.0.
    pub load: f64,
    /// Jobs finished successfully, failed, and leases lapsed.
    pub succeeded: i64,
    pub failed: i64,
    pub expired: i64,
}

/// Whether `c` may run a job with `needs`.
pub fn eligible(needs: &JobNeeds, c: &Candidate) -> bool {
    if !c.runtimes.contains(&needs.runtime) || c.memory_mb < needs.memory_mb {
        return false;
    }
    match needs.mode.as_str() {
        "plain" => true,
        "he" => c.he_capable,
        "tee" => c.enclave_keys.iter().any(|k| needs.recipients.contains(k)),
        _ => false,
    }
}

/// Reliability in (0, 1): Laplace-smoothed share of good outcomes.
pub fn reliability(c: &Candidate) -> f64 {
    let good = c.succeeded.max(0) as f64;
    let bad = (c.failed.max(0) + c.expired.max(0)) as f64;
    (good + 1.0) / (good + bad + 2.0)
}

/// Higher is better.
pub fn score(c: &Candidate) -> f64 {
    let load = c.load.clamp(0.0, 1.0);
    0.6 * (1.0 - load) + 0.4 * reliability(c)
}

/// The best eligible candidate, ties broken at random.
pub fn choose<'a, R: Rng>(
    needs: &JobNeeds,
    candidates: &'a [Candidate],
    rng: &mut R,
) -> Option<&'a Candidate> {
    let eligible: Vec<&Candidate> = candidates.iter().filter(|c| eligible(needs, c)).collect();
    let best = eligible
        .iter()
        .map(|c| score(c))
        .fold(f64::NEG_INFINITY, f64::max);
    let top: Vec<&Candidate> = eligible
        .into_iter()
        .filter(|c| (score(c) - best).abs() < 1e-9)
        .collect();
    top.choose(rng).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(id: &str) -> Candidate {
        Candidate {
            island_id: id.into(),
            runtimes: vec!["echo".into(), "candle".into()],
            memory_mb: 4096,
            he_capable: false,
            enclave_keys: vec![],
            load: 0.0,
            succeeded: 0,
            failed: 0,
            expired: 0,
        }
    }

    fn needs(mode: &str) -> JobNeeds {
        JobNeeds {
            mode: mode.into(),
            runtime: "echo".into(),
            memory_mb: 16,
            recipients: vec!["ek_a".into()],
        }
    }

    #[test]
    fn filter_rules() {
        let c = cand("i");
        assert!(eligible(&needs("plain"), &c));
        assert!(!eligible(&needs("he"), &c), "HE needs an HE-capable island");
        assert!(
            !eligible(&needs("tee"), &c),
            "TEE needs a recipient enclave key"
        );
        let mut t = cand("t");
        t.enclave_keys = vec!["ek_b".into()];
        assert!(!eligible(&needs("tee"), &t), "key not among the recipients");
        t.enclave_keys.push("ek_a".into());
        assert!(eligible(&needs("tee"), &t));
        let mut h = cand("h");
        h.he_capable = true;
        assert!(eligible(&needs("he"), &h));
        let mut small = cand("s");
        small.memory_mb = 8;
        assert!(!eligible(&needs("plain"), &small), "memory must fit");
        let mut other = cand("o");
        other.runtimes = vec!["candle".into()];
        assert!(
            !eligible(&needs("plain"), &other),
            "runtime must be offered"
        );
        assert!(!eligible(&needs("bogus"), &c));
    }

    #[test]
    fn he_jobs_go_to_any_he_capable_island_without_a_tee() {
        let he = JobNeeds {
            mode: "he".into(),
            runtime: "he".into(),
            memory_mb: 512,
            recipients: vec![],
        };
        // No TEE, no enclave keys, no model runtime: only `he` and the flag.
        let mut bare = cand("bare");
        bare.runtimes = vec!["echo".into(), "he".into()];
        bare.he_capable = true;
        assert!(eligible(&he, &bare));
        let mut tee = bare.clone();
        tee.island_id = "tee".into();
        tee.enclave_keys = vec!["ek_a".into()];
        let mut no_flag = bare.clone();
        no_flag.island_id = "no-flag".into();
        no_flag.he_capable = false;
        let mut no_runtime = bare.clone();
        no_runtime.island_id = "no-runtime".into();
        no_runtime.runtimes = vec!["echo".into(), "candle".into()];
        assert!(!eligible(&he, &no_flag));
        assert!(!eligible(&he, &no_runtime));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let cs = vec![bare, tee, no_flag, no_runtime];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.insert(choose(&he, &cs, &mut rng).unwrap().island_id.clone());
        }
        let expect: std::collections::BTreeSet<String> = ["bare".to_string(), "tee".to_string()]
            .into_iter()
            .collect();
        assert_eq!(seen, expect, "a TEE is neither needed nor preferred");
    }

    #[test]
    fn lower_load_and_better_reliability_win() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut busy = cand("busy");
        busy.load = 0.9;
        let idle = cand("idle");
        let cs = vec![busy.clone(), idle.clone()];
        for _ in 0..20 {
            assert_eq!(
                choose(&needs("plain"), &cs, &mut rng).unwrap().island_id,
                "idle"
            );
        }
        let mut flaky = cand("flaky");
        flaky.expired = 10;
        let mut solid = cand("solid");
        solid.succeeded = 10;
        let cs = vec![flaky, solid];
        assert_eq!(
            choose(&needs("plain"), &cs, &mut rng).unwrap().island_id,
            "solid"
        );
        assert!(choose(&needs("he"), &cs, &mut rng).is_none());
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let cs = vec![cand("a"), cand("b"), cand("c")];
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            seen.insert(
                choose(&needs("plain"), &cs, &mut rng)
                    .unwrap()
                    .island_id
                    .clone(),
            );
        }
        assert_eq!(seen.len(), 3);
    }
}
