//! Property: for any head shape that fits (C·d ≤ N) and any normalised input,
//! the decrypted HE scores equal the plaintext quantised scores exactly.

use std::sync::OnceLock;

use archipelago_he::{
    decrypt_scores, encrypt_features, evaluate_classify, generate_keypair, HePublicMaterial,
    HeSecretKey, LinearHead,
};
use proptest::prelude::*;

fn keys() -> &'static (HeSecretKey, HePublicMaterial) {
    static K: OnceLock<(HeSecretKey, HePublicMaterial)> = OnceLock::new();
    K.get_or_init(|| generate_keypair().unwrap())
}

fn head_and_input() -> impl Strategy<Value = (LinearHead, Vec<f32>)> {
    (1usize..=512, 1usize..=21).prop_flat_map(|(dim, classes)| {
        let classes = classes.min(8192 / dim).max(1);
        (
            proptest::collection::vec(proptest::collection::vec(-10.0f32..10.0, dim), classes),
            proptest::collection::vec(-2.0f32..2.0, classes),
            proptest::collection::vec(-1.0f32..1.0, dim),
        )
            .prop_map(|(weights, bias, x)| {
                let n = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                let x: Vec<f32> = if n > 0.0 {
                    x.iter().map(|v| (*v as f64 / n) as f32).collect()
                } else {
                    x
                };
                let labels = (0..weights.len()).map(|c| c.to_string()).collect();
                (
                    LinearHead {
                        labels,
                        weights,
                        bias,
                    },
                    x,
                )
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn he_scores_equal_quantised_scores((head, x) in head_and_input(), public in any::<bool>()) {
        let (sk, pm) = keys();
        let q = head.quantise().unwrap();
        let expected = q.plaintext_scores(&x).unwrap();
        let req = if public { encrypt_features(pm, &x).unwrap() } else { encrypt_features(sk, &x).unwrap() };
        let resp = evaluate_classify(pm, &q, &req).unwrap();
        let got = decrypt_scores(sk, &resp, q.n_classes()).unwrap();
        prop_assert_eq!(got.quantised(), expected.as_slice());
    }
}
