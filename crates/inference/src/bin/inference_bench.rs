//! Throughput benchmark of the workloads on this machine (run next to
//! `bench/bench_reference.py`, which measures ONNX Runtime and llama.cpp on
//! the same inputs):
//!
//!     cargo run -p archipelago-inference --bin inference-bench [embed|chat|all]
//!
//! embed: the 64 sentences of assets/bench_sentences.txt (~27 tokens each),
//! one at a time (batch 1) and in batches of 32, true sequence lengths;
//! reports sentences/s and the worst cosine to the numpy fp32 reference.
//! chat: SmolLM2-135M through llama.cpp (the crate's chat engine), a fixed
//! prompt, greedy, 128 new tokens, `BENCH_THREADS` threads (default 2, as
//! the anchor); prompt tokens/s, and generation tokens/s from the first
//! streamed token to the last.

use std::time::Instant;

use archipelago_inference::chat::{ChatModel, Message, SamplingParams};
use archipelago_inference::embed::{cosine, Embedder};
use archipelago_inference::ModelStore;

const SENTENCES: &str = include_str!("../../assets/bench_sentences.txt");
const REFERENCE: &str = include_str!("../../assets/embed_reference.json");

fn main() -> anyhow::Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let store = ModelStore::from_env()?;
    store.check()?;
    if what == "embed" || what == "all" {
        bench_embed(&store)?;
    }
    if what == "chat" || what == "all" {
        bench_chat(&store)?;
    }
    Ok(())
}

fn bench_embed(store: &ModelStore) -> anyhow::Result<()> {
    let e = Embedder::load(store.dir())?;
    let sentences: Vec<&str> = SENTENCES.lines().filter(|l| !l.is_empty()).collect();
    let ids: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| e.tokenize(s))
        .collect::<Result<_, _>>()?;
    let mean_tokens = ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len() as f64;
    // Accuracy against the independent reference.
    let r: serde_json::Value = serde_json::from_str(REFERENCE)?;
    let ref_s: Vec<String> = serde_json::from_value(r["sentences"].clone())?;
    let ref_e: Vec<Vec<f32>> = serde_json::from_value(r["embeddings"].clone())?;
    let refs: Vec<&str> = ref_s.iter().map(String::as_str).collect();
    let got = e.embed(&refs)?;
    let worst = got
        .iter()
        .zip(&ref_e)
        .map(|(a, b)| cosine(a, b))
        .fold(1f32, f32::min);
    // Warm up, then time.
    e.embed(&sentences[..8])?;
    let rounds = 3;
    let t = Instant::now();
    for _ in 0..rounds {
        for s in &ids {
            e.embed_ids(std::slice::from_ref(s))?;
        }
    }
    let b1 = (rounds * ids.len()) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..rounds {
        for chunk in ids.chunks(32) {
            e.embed_ids(chunk)?;
        }
    }
    let b32 = (rounds * ids.len()) as f64 / t.elapsed().as_secs_f64();
    println!(
        "embed archipelago (fused MiniLM): {} sentences, {mean_tokens:.1} tokens mean",
        ids.len()
    );
    println!("embed archipelago (fused MiniLM): batch 1 {b1:.1} sentences/s, batch 32 {b32:.1} sentences/s, worst cosine to reference {worst:.6}");
    Ok(())
}

fn bench_chat(store: &ModelStore) -> anyhow::Result<()> {
    // Same thread count as the llama-cpp-python anchor (bench_reference.py).
    let threads: usize = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let prompt = "Write a short story about a lighthouse keeper who finds a message in a bottle.";
    let t = Instant::now();
    let m = ChatModel::load_with_threads(store.dir(), threads)?;
    let load = t.elapsed().as_secs_f64();
    let msgs = [Message {
        role: "user".into(),
        content: prompt.into(),
    }];
    let ids = m.tokenize(&m.render(&msgs)?)?;
    let params = SamplingParams {
        temperature: 0.0,
        top_p: None,
        max_tokens: 128,
        seed: 1,
    };
    // Prompt speed: a 1-token generation is the prompt pass plus one argmax.
    let one = SamplingParams {
        max_tokens: 1,
        ..params
    };
    m.generate_ids(&ids, &one, &mut |_| {})?;
    let reps = 3;
    let t = Instant::now();
    for _ in 0..reps {
        m.generate_ids(&ids, &one, &mut |_| {})?;
    }
    let prompt_tps = (reps * ids.len()) as f64 / t.elapsed().as_secs_f64();
    // Generation speed: from the first streamed token to the last.
    let mut first: Option<Instant> = None;
    let g = m.generate_ids(&ids, &params, &mut |_| {
        first.get_or_insert_with(Instant::now);
    })?;
    let gen_time = first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(0.0);
    let gen_tps = g.tokens.saturating_sub(1) as f64 / gen_time.max(1e-9);
    println!(
        "chat llama.cpp in crate (llama-cpp-2, Q4_1, {threads} threads): load {load:.2}s, prompt {} tokens {prompt_tps:.1} tok/s, generation {} tokens {gen_tps:.1} tok/s",
        ids.len(),
        g.tokens
    );
    let head: String = g.text.chars().take(200).collect();
    println!(
        "chat llama.cpp in crate greedy text: {}",
        serde_json::to_string(&head)?
    );
    Ok(())
}
