#!/usr/bin/env python3
"""Writes the golden compact heads that tests/convert.rs compares `bitnet convert --head q4_0`
and `--head q4_k` against, from the fixture models' F16 files: untied-gqa4's `output.weight` and
tied-gqa2's `token_embd.weight` (its head), as raw tensor bytes.

- Q4_0 (`*.q4_0`): quantized by llama.cpp's gguf-py (an independent implementation of ggml's
  quantize_row_q4_0_ref).
- Q4_K (`*.q4_k`): gguf-py has no Q4_K quantizer, so by ggml's own quantize_row_q4_K_ref, built
  from crates/bitnet-gguf/tests/data/gen_q4_k.c (see there); pass its path as the argument.

    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf numpy
    /tmp/gguf-venv/bin/python crates/bitnet-engine/tests/data/gen_compact_heads.py /tmp/gen_q4_k

Generated with gguf 0.19.0, numpy 2.4.
"""
import os
import subprocess
import sys
import tempfile

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "..", "..", "..", "fixtures", "models")
Q4_K_HARNESS = sys.argv[1] if len(sys.argv) > 1 else None

for model, tensor in [("untied-gqa4", "output.weight"), ("tied-gqa2", "token_embd.weight")]:
    reader = gguf.GGUFReader(os.path.join(MODELS, model, "model-f16.gguf"))
    (t,) = [t for t in reader.tensors if t.name == tensor]
    assert t.tensor_type == Q.F16, t.tensor_type
    values = np.asarray(t.data, dtype=np.float32)  # rows x cols, f16 values exactly
    stem = os.path.join(HERE, f"{model}-{tensor.split('.')[0]}")

    q = quantize(values, Q.Q4_0)
    assert q.shape == (values.shape[0], values.shape[1] // 32 * 18), q.shape
    with open(stem + ".q4_0", "wb") as f:
        f.write(np.ascontiguousarray(q).tobytes())
    print("written", stem + ".q4_0", q.nbytes, "bytes")

    if Q4_K_HARNESS:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "values.f32")
            np.ascontiguousarray(values).tofile(src)
            subprocess.run([Q4_K_HARNESS, src, stem + ".q4_k"], check=True)
        print("written", stem + ".q4_k", os.path.getsize(stem + ".q4_k"), "bytes")
