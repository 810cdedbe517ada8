#!/usr/bin/env python3
"""Independent check of the sealed-envelope test vectors in docs/envelope.md.

Written from the document alone (not from the Rust code), this script parses
the block between `<!-- vectors:begin -->` and `<!-- vectors:end -->` and
re-derives every value from the stated inputs:

  * the client / enclave public keys (also the standard-base64 form) and key ids,
  * the request envelope (bytes and unpadded base64url), sealed with HPKE base
    mode per recipient and a ChaCha20-Poly1305 body,
  * the response header and both response chunks (sealed by enclave_0: the
    key schedule of HPKE base mode over a shared secret derived, as DHKEM
    derives one, from the static-static X25519 of enclave_0 and the client
    key and the response nonce),

and then opens them again: the envelope as enclave_0 and as enclave_1, and
the response chunks as the client. HPKE (RFC 9180, DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256, ChaCha20-Poly1305; DeriveKeyPair, base mode) is implemented
here on top of the `cryptography` package's primitives.

Usage:
    python3 scripts/check-envelope-vectors.py [path/to/envelope.md]

The default path is docs/envelope.md relative to the repository root. Prints
"ok NAME" or "MISMATCH NAME" per vector; exits 1 on any mismatch, 2 if the
vector block cannot be parsed or `cryptography` is missing.
"""
import base64
import hashlib
import os
import re
import struct
import sys

try:
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
except ImportError:
    print("error: the `cryptography` package is required: pip install cryptography", file=sys.stderr)
    sys.exit(2)

# ---------------------------------------------------------------- HPKE (RFC 9180)
KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0003
KEM_SUITE = b"KEM" + struct.pack(">H", KEM_ID)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", KEM_ID, KDF_ID, AEAD_ID)
MODE_BASE = 0x00


def extract(salt, ikm):
    h = hmac.HMAC(salt if salt else b"\x00" * 32, hashes.SHA256())
    h.update(ikm)
    return h.finalize()


def expand(prk, info, length):
    return HKDFExpand(hashes.SHA256(), length, info).derive(prk)


def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def x25519_pub(sk):
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(sk, pk):
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def derive_key_pair(ikm):
    prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, prk, b"sk", b"", 32)
    return sk, x25519_pub(sk)


def extract_and_expand(dh_out, kem_context):
    prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh_out)
    return labeled_expand(KEM_SUITE, prk, b"shared_secret", kem_context, 32)


def encap(pk_r, ikm_e):
    sk_e, enc = derive_key_pair(ikm_e)
    return extract_and_expand(dh(sk_e, pk_r), enc + pk_r), enc


def decap(enc, sk_r):
    return extract_and_expand(dh(sk_r, enc), enc + x25519_pub(sk_r))


def response_shared_secret(sk, peer_pk, nonce, client_pk, enclave_pk):
    """The response's shared secret, from either side's secret key: DHKEM's
    ExtractAndExpand of the static-static DH, with the nonce where enc goes."""
    return extract_and_expand(dh(sk, peer_pk), nonce + client_pk + enclave_pk)


class Context:
    """HPKE encryption context; Seal/Open use and advance the sequence number."""

    def __init__(self, mode, shared, info):
        psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
        info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
        ks_context = bytes([mode]) + psk_id_hash + info_hash
        secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"")
        self.aead = ChaCha20Poly1305(labeled_expand(HPKE_SUITE, secret, b"key", ks_context, 32))
        self.base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", ks_context, 12)
        self.seq = 0

    def _nonce(self):
        n = int.from_bytes(self.base_nonce, "big") ^ self.seq
        self.seq += 1
        return n.to_bytes(12, "big")

    def seal(self, aad, pt):
        return self.aead.encrypt(self._nonce(), pt, aad)

    def open(self, aad, ct):
        return self.aead.decrypt(self._nonce(), ct, aad)


def setup_s(pk_r, info, ikm_e):
    """SetupBaseS."""
    shared, enc = encap(pk_r, ikm_e)
    return enc, Context(MODE_BASE, shared, info)


def setup_r(enc, sk_r, info):
    """SetupBaseR."""
    return Context(MODE_BASE, decap(enc, sk_r), info)


# ---------------------------------------------------------------- envelope v3
MAGIC, VERSION, SUITE = b"ARCE", 3, 1
WRAP_INFO = b"archipelago-envelope-v3/wrap"
RESPONSE_INFO = b"archipelago-envelope-v3/response"
ZERO_NONCE = b"\x00" * 12


def need(cond, what):
    if not cond:
        raise ValueError(what)


def preamble(kind):
    return MAGIC + bytes([VERSION, kind]) + struct.pack(">H", SUITE)


def key_id(prefix, pk):
    return prefix + base64.b32encode(hashlib.sha256(pk).digest()).decode().lower()[:26]


def key_id_field(kid):
    return bytes([len(kid)]) + kid.encode("ascii")


def seal_request(workload_id, client_pk, recipients, content_key, ikms, body_pt):
    core = preamble(1) + struct.pack(">Q", workload_id) + key_id_field(key_id("ck_", client_pk))
    core += bytes([len(recipients)]) + b"".join(key_id_field(key_id("ek_", pk)) for pk in recipients)
    wraps = b""
    for pk, ikm in zip(recipients, ikms):
        enc, ctx = setup_s(pk, WRAP_INFO, ikm)
        wraps += enc + ctx.seal(core, content_key)
    header = core + wraps + struct.pack(">I", len(body_pt) + 16)
    return header + ChaCha20Poly1305(content_key).encrypt(ZERO_NONCE, body_pt, header)


def open_request(env, sk_r):
    """Parse and open a request envelope; returns (workload_id, client_key_id, body fields)."""
    need(env[:8] == preamble(1), "bad preamble")
    workload_id = struct.unpack(">Q", env[8:16])[0]
    pos = 16
    client_kid = env[pos + 1:pos + 1 + env[pos]].decode(); pos += 1 + env[pos]
    n = env[pos]; pos += 1
    need(1 <= n <= 16, "recipient count")
    kids = []
    for _ in range(n):
        kids.append(env[pos + 1:pos + 1 + env[pos]].decode()); pos += 1 + env[pos]
    core = env[:pos]
    i = kids.index(key_id("ek_", x25519_pub(sk_r)))
    wrap = env[pos + 80 * i:pos + 80 * (i + 1)]
    pos += 80 * n
    body_len = struct.unpack(">I", env[pos:pos + 4])[0]; pos += 4
    header, body = env[:pos], env[pos:]
    need(len(body) == body_len, "body length / trailing bytes")
    content_key = setup_r(wrap[:32], sk_r, WRAP_INFO).open(core, wrap[32:])
    pt = ChaCha20Poly1305(content_key).decrypt(ZERO_NONCE, body, header)
    b_workload, request_id, issued_at = struct.unpack(">Q", pt[:8])[0], pt[8:24], struct.unpack(">Q", pt[24:32])[0]
    response_key, m = pt[32:64], struct.unpack(">I", pt[64:68])[0]
    need(len(pt) >= 69 + m, "malformed body")
    inp, k, pos = pt[68:68 + m], pt[68 + m], 69 + m
    need(k <= 16, "too many next encs")
    next_encs = []
    for _ in range(k):
        need(pt[pos] == 29 and pt[pos + 1:pos + 4] == b"ek_", "next enc key id")
        next_encs.append((pt[pos + 1:pos + 30].decode(), pt[pos + 30:pos + 62]))
        pos += 62
    need(len(pt) == pos, "trailing bytes in the body")
    need(b_workload == workload_id, "workload mismatch")
    need(key_id("ck_", response_key) == client_kid, "response key mismatch")
    return workload_id, client_kid, request_id, issued_at, response_key, inp, next_encs


def response_header_prefix(request_id, enclave_pk, client_pk):
    return (preamble(2) + request_id + key_id_field(key_id("ek_", enclave_pk))
            + key_id_field(key_id("ck_", client_pk)))


def chunk_prefix(request_id, seq, flags, ct_len):
    return preamble(3) + request_id + struct.pack(">IBI", seq, flags, ct_len)


# ---------------------------------------------------------------- vector parsing
def parse_vectors(text):
    m = re.search(r"<!-- vectors:begin -->\s*```text\n(.*?)```\s*<!-- vectors:end -->", text, re.S)
    if not m:
        raise ValueError("no <!-- vectors:begin --> ... <!-- vectors:end --> block")
    vectors, name = {}, None
    for line in m.group(1).splitlines():
        if not line.strip():
            continue
        if line[0].isspace():  # continuation of a long value
            if name is None:
                raise ValueError("continuation line before any name: %r" % line)
            vectors[name] += line.strip()
            continue
        name, sep, value = line.partition(" = ")
        if not sep:
            name, sep, value = line.rstrip().partition(" =")
            if not sep or value:
                raise ValueError("unparseable vector line: %r" % line)
        vectors[name] = value.strip()
    return vectors


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "docs", "envelope.md")
    try:
        with open(path, encoding="utf-8") as f:
            v = parse_vectors(f.read())
        hx = lambda name: bytes.fromhex(v[name])
        csk, e0sk, e1sk = hx("client_secret_key"), hx("enclave_0_secret_key"), hx("enclave_1_secret_key")
        content_key, ikm0, ikm1, rnonce = hx("content_key"), hx("ikm_e_0"), hx("ikm_e_1"), hx("response_nonce")
        next_ikm0 = hx("next_ikm_e_0")
        workload_id, request_id, issued_at = int(v["workload_id"]), hx("request_id"), int(v["issued_at"])
        inp, out = v["input_utf8"].encode("utf-8"), v["output_utf8"].encode("utf-8")
    except (OSError, KeyError, ValueError) as e:
        print("error: cannot read the vectors from %s: %r" % (path, e), file=sys.stderr)
        sys.exit(2)

    failures = []

    def check(name, got):
        expected = v.get(name)
        good = expected is not None and got == expected
        print(("ok " if good else "MISMATCH ") + name)
        if not good:
            failures.append(name)
            print("  expected %s\n  got      %s" % (expected, got))

    def check_open(name, fn):
        try:
            good, err = fn(), None
        except Exception as e:  # any parse/auth failure is a mismatch
            good, err = False, e
        print(("ok " if good else "MISMATCH ") + name)
        if not good:
            failures.append(name)
            print("  error: %r" % err if err else "  opened, but content differs")

    cpk, e0pk, e1pk = x25519_pub(csk), x25519_pub(e0sk), x25519_pub(e1sk)
    check("client_public_key", cpk.hex())
    check("client_public_key_b64", base64.b64encode(cpk).decode())
    check("client_key_id", key_id("ck_", cpk))
    check("enclave_0_public_key", e0pk.hex())
    check("enclave_0_key_id", key_id("ek_", e0pk))
    check("enclave_1_public_key", e1pk.hex())
    check("enclave_1_key_id", key_id("ek_", e1pk))

    # The client's next wrap to enclave_0, set up ahead and announced in
    # this body: its enc is DeriveKeyPair(next_ikm_e_0)'s public key.
    next_enc0 = setup_s(e0pk, WRAP_INFO, next_ikm0)[0]
    check("next_enc_0", next_enc0.hex())
    next_encs = [(key_id("ek_", e0pk), next_enc0)]
    body_pt = (struct.pack(">Q", workload_id) + request_id + struct.pack(">Q", issued_at)
               + cpk + struct.pack(">I", len(inp)) + inp + bytes([len(next_encs)])
               + b"".join(key_id_field(kid) + enc for kid, enc in next_encs))
    env = seal_request(workload_id, cpk, [e0pk, e1pk], content_key, [ikm0, ikm1], body_pt)
    check("request_envelope", env.hex())
    check("request_envelope_b64url", base64.urlsafe_b64encode(env).decode().rstrip("="))

    expected_open = (workload_id, key_id("ck_", cpk), request_id, issued_at, cpk, inp, next_encs)
    doc_env = bytes.fromhex(v.get("request_envelope", ""))
    check_open("request_envelope (opened as enclave_0)", lambda: open_request(doc_env, e0sk) == expected_open)
    check_open("request_envelope (opened as enclave_1)", lambda: open_request(doc_env, e1sk) == expected_open)

    # Response: enclave_0 seals to the client's response key, keyed by their
    # static-static Diffie-Hellman and the response nonce.
    prefix = response_header_prefix(request_id, e0pk, cpk)
    need(len(prefix) == 84, "response header prefix is not 84 bytes")
    need(len(rnonce) == 32, "response nonce is not 32 bytes")
    sctx = Context(MODE_BASE, response_shared_secret(e0sk, cpk, rnonce, cpk, e0pk), RESPONSE_INFO + prefix)
    check("response_header", (prefix + rnonce).hex())
    chunks = []
    for seq, (flags, pt) in enumerate([(0, out[:12]), (1, out[12:])]):
        aad = chunk_prefix(request_id, seq, flags, len(pt) + 16)
        chunks.append(aad + sctx.seal(aad, pt))
        check("response_chunk_%d" % seq, chunks[-1].hex())

    def open_response():
        hdr = bytes.fromhex(v["response_header"])
        need(hdr[:84] == prefix, "header ids / request id differ")  # the client's pre-checks
        need(len(hdr) == 116, "response header length")
        shared = response_shared_secret(csk, e0pk, hdr[84:116], cpk, e0pk)
        rctx = Context(MODE_BASE, shared, RESPONSE_INFO + hdr[:84])
        plain, final = b"", False
        for k in range(2):
            c = bytes.fromhex(v["response_chunk_%d" % k])
            need(c[:8] == preamble(3) and c[8:24] == request_id and not final, "chunk preamble, request id or after-final")
            seq, flags, ln = struct.unpack(">IBI", c[24:33])
            need(seq == k and flags & ~3 == 0 and len(c) == 33 + ln, "chunk seq, flags or length")
            plain += rctx.open(c[:33], c[33:])
            final = bool(flags & 1)
        return final and plain == out

    check_open("response (opened as client)", open_response)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
