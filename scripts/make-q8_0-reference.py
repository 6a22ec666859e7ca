#!/usr/bin/env python3
"""Reference Q8_0 blocks from the gguf Python package (llama.cpp's gguf-py), for GGUFExportTests.

Writes Tests/QLoRATests/Fixtures/q8_0-reference.safetensors: `input` F32 [n * 32] and `q8_0` U8 [n * 34], the
bytes gguf.quants.quantize gives for the input as GGML type Q8_0 (per block an f16 scale, then 32 int8 values).
The blocks cover random normals, a zero block, exact halves (rounding ties), a single outlier, tiny values and
negative maxima.

    python3 -m venv /tmp/gvenv && /tmp/gvenv/bin/pip install -q gguf numpy
    /tmp/gvenv/bin/python scripts/make-q8_0-reference.py
"""
import json
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import quantize


def blocks() -> np.ndarray:
    rng = np.random.default_rng(13)
    rows = [rng.standard_normal(32) for _ in range(6)]
    rows.append(np.zeros(32))
    rows.append((np.arange(32) - 15.5) * (127 / 15.5) / 127 * 0.5)  # values at x.5 steps of the scale
    rows.append(np.concatenate([[1000.0], rng.standard_normal(31) * 1e-3]))
    rows.append(rng.standard_normal(32) * 1e-6)
    rows.append(-np.abs(rng.standard_normal(32)) * 3)
    halves = np.arange(32, dtype=np.float64) + 0.5
    halves[-1] = 127
    rows.append(halves / 127 * 2)  # x * (1/d) lands on k + 0.5 (up to float32 rounding)
    return np.concatenate(rows).astype(np.float32)


def main() -> None:
    x = blocks()
    q = np.asarray(quantize(x.reshape(-1, 32), GGMLQuantizationType.Q8_0), dtype=np.uint8).reshape(-1)
    assert q.size == x.size // 32 * 34
    tensors = {"input": ("F32", [x.size], x.tobytes()), "q8_0": ("U8", [q.size], q.tobytes())}
    header, offset, data = {}, 0, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(root, "Tests", "QLoRATests", "Fixtures", "q8_0-reference.safetensors")
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)
    print(f"wrote {out}: {x.size // 32} blocks", file=sys.stderr)


if __name__ == "__main__":
    main()
