"""Matrix + JSON + AES (like FunctionBench's matmul and pyaes/json workloads): numpy
matrix work on request-seeded data, the result serialised as JSON and encrypted with
AES-GCM (pycryptodome). Warm-up: import numpy (OpenBLAS) and pycryptodome, and run one
multiplication so the BLAS kernels are resolved."""

import hashlib
import json

import numpy as np
from Crypto.Cipher import AES

SAMPLE = {"n": 32, "seed": 1, "key": "00" * 16, "request_id": "warm-0"}


def warm():
    a = np.ones((64, 64))
    (a @ a).sum()


def handle(req):
    n = int(req.get("n", 128))
    if not 1 <= n <= 2048:
        raise ValueError("n out of range")
    rng = np.random.default_rng(int(req.get("seed", 0)))
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    c = a @ b
    summary = {
        "n": n,
        "trace": round(float(np.trace(c)), 6),
        "frobenius": round(float(np.linalg.norm(c)), 6),
        "row_sums": [round(float(x), 6) for x in c.sum(axis=1)[:16]],
    }
    plaintext = json.dumps(summary, sort_keys=True).encode()
    key = bytes.fromhex(req.get("key", "00" * 16))
    if len(key) not in (16, 24, 32):
        raise ValueError("AES key must be 16, 24 or 32 bytes")
    # A nonce from the request keeps the response comparable between runs.
    nonce = hashlib.sha256(str(req.get("request_id", "")).encode()).digest()[:12]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    check = AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(ct, tag)
    return {
        "function": "matrix_aes",
        "trace": summary["trace"],
        "ciphertext_bytes": len(ct),
        "roundtrip_ok": check == plaintext,
        "sha256": hashlib.sha256(ct + tag).hexdigest(),
    }
