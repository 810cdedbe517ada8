#!/usr/bin/env python3
"""The official `openai` Python client against `archipelago gateway`.

Reads ARCHIPELAGO_GATEWAY_URL and ARCHIPELAGO_API_KEY (as written to
DIR/dev.env by `archipelago dev`). Every call below is a confidential job:
the gateway seals the request on this machine to attested enclaves and
decrypts the answer here. Uses the `chat` and `embed` models when the
network serves them (models fetched), else the `echo` test workload.
"""
import os
import sys

import openai

base = os.environ["ARCHIPELAGO_GATEWAY_URL"].rstrip("/") + "/v1"
client = openai.OpenAI(base_url=base, api_key=os.environ["ARCHIPELAGO_API_KEY"])

models = [m.id for m in client.models.list()]
model = "chat" if "chat" in models and os.environ.get("ARCHIPELAGO_TEST_MODEL") != "echo" else "echo"
print(f"models: {models}; using {model}")

r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello to the island"}],
    max_tokens=16,
    temperature=0,
)
text = r.choices[0].message.content
assert text, r
if model == "echo":
    assert text == "SAY HELLO TO THE ISLAND", text
print(f"chat: {text!r}")

parts = []
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "stream three words"}],
    max_tokens=16,
    temperature=0,
    stream=True,
):
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
streamed = "".join(parts)
assert streamed, "no streamed content"
print(f"streamed: {streamed!r} in {len(parts)} pieces")

if "embed" in models and model != "echo":
    e = client.embeddings.create(model="embed", input=["a patient record", "a resume"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384, e
    print("embeddings: 2 x 384")

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("expected an error for an unknown model")
except openai.NotFoundError as err:
    print(f"unknown model refused: {err.status_code}")

print("openai client against the gateway: OK")
