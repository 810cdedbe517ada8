//! `embed` matches an independent implementation: the numbers in
//! assets/embed_reference.json come from a numpy float64 forward pass of
//! model.safetensors (bench/reference_embed.py).

mod common;

use archipelago_inference::embed::{cosine, EMBED_DIM};
use archipelago_inference::WorkloadKind;

const REFERENCE: &str = include_str!("../assets/embed_reference.json");

fn reference() -> (Vec<String>, Vec<Vec<f32>>) {
    let r: serde_json::Value = serde_json::from_str(REFERENCE).unwrap();
    (
        serde_json::from_value(r["sentences"].clone()).unwrap(),
        serde_json::from_value(r["embeddings"].clone()).unwrap(),
    )
}

#[test]
fn embeddings_match_reference_within_1e3() {
    let rt = common::runtime();
    let (sentences, expected) = reference();
    let input = serde_json::to_vec(&serde_json::json!({ "texts": sentences })).unwrap();
    let out = rt
        .run(WorkloadKind::Embed, &input, &mut |_| {
            panic!("embed does not stream")
        })
        .unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["dim"], EMBED_DIM);
    let got: Vec<Vec<f32>> = serde_json::from_value(out["embeddings"].clone()).unwrap();
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.len(), EMBED_DIM);
        let max_diff = g
            .iter()
            .zip(e)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 1e-3,
            "sentence {i}: max abs difference {max_diff} to the reference"
        );
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "sentence {i}: norm {norm}");
    }
    // Related sentences are closer than unrelated ones.
    assert!(cosine(&got[1], &got[4]) > cosine(&got[1], &got[3]));
}

#[test]
fn batching_and_padding_do_not_change_results() {
    let rt = common::runtime();
    let e = rt.embedder().unwrap();
    let (sentences, _) = reference();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    let batch = e.embed(&texts).unwrap();
    for (i, t) in texts.iter().enumerate() {
        let single = e.embed(&[t]).unwrap();
        let d = single[0]
            .iter()
            .zip(&batch[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "sentence {i}: batch differs from single by {d}");
    }
}

#[test]
fn long_text_is_truncated_not_refused() {
    let rt = common::runtime();
    let long = "word ".repeat(2000);
    let input = serde_json::to_vec(&serde_json::json!({ "text": long })).unwrap();
    let out = rt.run(WorkloadKind::Embed, &input, &mut |_| {}).unwrap();
    let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["embeddings"].as_array().unwrap().len(), 1);
}
