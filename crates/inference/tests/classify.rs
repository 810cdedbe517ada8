//! `classify` reaches the accuracy recorded in the committed head on the
//! drug-review test split, and serves top-k labels through the runtime.

mod common;

use archipelago_inference::classify::{accuracy, HeadFile};
use archipelago_inference::data::condition_splits;
use archipelago_inference::WorkloadKind;

#[test]
fn head_reaches_recorded_test_accuracy() {
    let store = common::store();
    let file = HeadFile::builtin().unwrap();
    let splits = condition_splits(store.dir(), 0, Some(file.head.labels.clone())).unwrap();
    assert_eq!(splits.test.len(), file.metrics.test_examples);
    let rt = common::runtime();
    let e = rt.embedder().unwrap();
    let texts: Vec<&str> = splits.test.iter().map(|(t, _)| t.as_str()).collect();
    let y: Vec<usize> = splits.test.iter().map(|(_, y)| *y).collect();
    let x = e.embed(&texts).unwrap();
    let (acc, top3) = accuracy(&file.head, &x, &y);
    assert!(
        acc + 0.003 >= file.metrics.test_accuracy,
        "test accuracy {acc:.4} is below the recorded {:.4}",
        file.metrics.test_accuracy
    );
    assert!(top3 + 0.003 >= file.metrics.test_top3_accuracy);
    assert!(
        acc > file.metrics.majority_baseline + 0.1,
        "accuracy {acc:.4} barely beats the majority label"
    );
}

#[test]
fn runtime_returns_top_k_labels() {
    let rt = common::runtime();
    let input = br#"{"text": "I started this pill three months ago and my periods became irregular, with spotting and cramps.", "top_k": 3}"#;
    let out = rt.run(WorkloadKind::Classify, input, &mut |_| {}).unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let labels = out["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[0]["label"], "Birth Control", "{out}");
    let scores: Vec<f64> = labels
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    assert!(scores.iter().sum::<f64>() <= 1.0 + 1e-5);
    let bad = rt
        .run(
            WorkloadKind::Classify,
            br#"{"text": "x", "top_k": 99}"#,
            &mut |_| {},
        )
        .unwrap_err();
    assert!(bad.to_string().contains("top_k"), "{bad}");
}
