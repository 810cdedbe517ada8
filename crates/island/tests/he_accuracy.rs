//! `he-classify` agrees with the plaintext `classify` workload on the whole
//! drug-review test split (issue 8 §2): every review is embedded once with
//! MiniLM, encrypted under a fresh `he-bfv` key, evaluated by the island's
//! own evaluator ([`HeEvaluator::builtin`], the committed head) and
//! decrypted.
//!
//! Checked for every example:
//! - the decrypted scores equal the plaintext *quantised* scores bit for bit
//!   (so HE adds no error beyond quantisation);
//! - the HE top-1 equals the float head's top-1 (what `classify` answers),
//!   except where quantisation can flip a near-tie: each disagreement must
//!   have a float logit gap within the worst-case quantisation error bound.
//!   Disagreements are printed (recorded in docs/he.md).

use archipelago_he::classify::FEATURE_SCALE;
use archipelago_inference::classify::HeadFile;
use archipelago_inference::data::condition_splits;
use archipelago_inference::embed::Embedder;
use archipelago_inference::ModelStore;
use archipelago_island::he::{builtin_head, HeEvaluator, CLASSIFY_WORKLOAD_ID};

#[test]
fn he_classify_matches_plaintext_classify_on_the_whole_test_split() {
    let store = ModelStore::from_env().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = store.check() {
        panic!("this test needs the pinned model files and data: {e}");
    }
    let file = HeadFile::builtin().unwrap();
    let splits = condition_splits(store.dir(), 0, Some(file.head.labels.clone())).unwrap();
    assert_eq!(
        splits.test.len(),
        file.metrics.test_examples,
        "the whole test split"
    );
    let embedder = Embedder::load(store.dir()).unwrap();
    let texts: Vec<&str> = splits.test.iter().map(|(t, _)| t.as_str()).collect();
    let xs = embedder.embed(&texts).unwrap();

    let head = builtin_head().unwrap();
    assert_eq!(head.labels, file.head.labels, "the same head as classify");
    let q = head.quantise().unwrap();
    let ev = HeEvaluator::builtin();
    let (sk, pm) = archipelago_he::generate_keypair().unwrap();

    // Worst-case logit error of quantisation, per class: features rounded
    // to 1/2^16, weights to 1/s_w (s_w = score_scale / 2^16), bias likewise.
    let s_w = q.score_scale() / FEATURE_SCALE;
    let d = head.weights[0].len() as f64;
    let err: Vec<f64> = head
        .weights
        .iter()
        .map(|w| {
            let l1: f64 = w.iter().map(|v| v.abs() as f64).sum();
            // |Δ(x·w)| ≤ ‖w‖₁·δx + ‖x‖₁·δw + d·δx·δw, ‖x‖₁ ≤ √d·‖x‖₂; plus bias rounding.
            l1 * 0.5 / FEATURE_SCALE
                + d.sqrt() * 1.001 * 0.5 / s_w
                + d * 0.25 / (FEATURE_SCALE * s_w)
                + 0.5 / (FEATURE_SCALE * s_w)
        })
        .collect();

    let mut disagreements = Vec::new();
    for (i, x) in xs.iter().enumerate() {
        let req = archipelago_he::encrypt_features(&sk, x).unwrap();
        let resp = ev.evaluate(CLASSIFY_WORKLOAD_ID, &pm, &req).unwrap();
        let he = archipelago_he::decrypt_scores(&sk, &resp, head.labels.len()).unwrap();
        let exact = q.plaintext_scores(x).unwrap();
        assert_eq!(
            he.quantised(),
            &exact[..],
            "example {i}: HE ≠ quantised plaintext"
        );
        let float = head.float_scores(x);
        // What the plaintext classify workload answers first (f32 logits).
        let served = file.head.top_k(x, 1);
        let f_top = head.labels.iter().position(|l| *l == served[0].0).unwrap();
        let h_top = he.argmax();
        if h_top != f_top {
            let gap = float[f_top] - float[h_top];
            let bound = err[f_top] + err[h_top];
            eprintln!(
                "disagreement on test example {i}: plaintext {} vs HE {}, float logit gap {gap:.3e} (quantisation bound {bound:.3e})",
                head.labels[f_top], head.labels[h_top]
            );
            assert!(
                gap <= bound,
                "example {i}: a disagreement that quantisation cannot explain"
            );
            disagreements.push(i);
        }
    }
    eprintln!(
        "he-classify vs classify top-1 on {} test reviews: {} agree, {} disagree {:?}",
        xs.len(),
        xs.len() - disagreements.len(),
        disagreements.len(),
        disagreements
    );
    assert!(
        disagreements.len() * 100 <= xs.len(),
        "more than 1% disagree"
    );
}
