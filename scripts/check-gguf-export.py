#!/usr/bin/env python3
"""Checks a GGUF file written by `qlora export` with the gguf Python package (llama.cpp's own gguf-py reader), an
implementation independent of this project's GGUF reader.

    python3 -m venv /tmp/gvenv && /tmp/gvenv/bin/pip install -q gguf numpy
    /tmp/gvenv/bin/python scripts/check-gguf-export.py MODEL.gguf [--reference HF_FOLDER]
    /tmp/gvenv/bin/python scripts/check-gguf-export.py ADAPTER.gguf --adapter [--reference PEFT_FOLDER]

A model: general.* and llama.* keys, every tensor llama.cpp's llama architecture loads (names, types, shapes in
ggml order), the tokenizer arrays, data offsets on general.alignment; with --reference (a Hugging Face folder with
model.safetensors, e.g. peft's merge_and_unload output) every tensor is dequantized by gguf.quants, the q/k rows
returned to Hugging Face order, and compared. An adapter: general.type, adapter.type, adapter.lora.alpha, lora_a
(ne [in, r]) and lora_b (ne [r, out]) pairs on base tensor names; with --reference (the PEFT folder) A and B are
compared. Exits 1 on the first failed check.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize

FILE_TYPES = {0: Q.F32, 1: Q.F16, 7: Q.Q8_0, 32: Q.BF16}
PROJECTIONS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)


def value(reader, key):
    field = reader.fields.get(key)
    check(field is not None, f"missing key {key}")
    return field.contents()


def safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    types = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
    out = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        a = np.frombuffer(raw[8 + n + start:8 + n + end], dtype=types[entry["dtype"]]).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a.astype(np.float32)
    return out


def unpermute(w, heads):
    """llama.cpp's converter stores head rows (2, D/2) transposed to (D/2, 2); this returns them to HF order."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_alignment(reader):
    alignment = int(value(reader, "general.alignment"))
    check(alignment == 32, f"general.alignment {alignment}")
    for t in reader.tensors:
        check(t.data_offset % alignment == 0, f"{t.name} at offset {t.data_offset}, not on {alignment}")
    return alignment


def check_model(reader, reference):
    arch = value(reader, "general.architecture")
    check(arch == "llama", f"general.architecture {arch}")
    hp = {k: value(reader, f"llama.{k}") for k in [
        "context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
        "attention.head_count_kv", "attention.layer_norm_rms_epsilon", "rope.freq_base", "rope.dimension_count",
        "vocab_size"]}
    print("keys: general.architecture = llama, " + ", ".join(f"llama.{k} = {v}" for k, v in hp.items()))
    file_type = int(value(reader, "general.file_type"))
    matrix_type = FILE_TYPES[file_type]
    alignment = check_alignment(reader)
    c, layers, ff = hp["embedding_length"], hp["block_count"], hp["feed_forward_length"]
    heads, kv, hd, vocab = (hp["attention.head_count"], hp["attention.head_count_kv"], hp["rope.dimension_count"],
                            hp["vocab_size"])
    expected = {"token_embd.weight": [c, vocab], "output_norm.weight": [c]}
    for layer in range(layers):
        b = f"blk.{layer}."
        expected.update({b + "attn_norm.weight": [c], b + "ffn_norm.weight": [c],
                         b + "attn_q.weight": [c, heads * hd], b + "attn_k.weight": [c, kv * hd],
                         b + "attn_v.weight": [c, kv * hd], b + "attn_output.weight": [heads * hd, c],
                         b + "ffn_gate.weight": [c, ff], b + "ffn_up.weight": [c, ff], b + "ffn_down.weight": [ff, c]})
    names = {t.name for t in reader.tensors}
    if "output.weight" in names:
        expected["output.weight"] = [c, vocab]
    check(names == set(expected), f"tensor names differ: {sorted(names ^ set(expected))}")
    types = {}
    for t in reader.tensors:
        shape = [int(x) for x in t.shape]
        check(shape == expected[t.name], f"{t.name} has ne {shape}, expected {expected[t.name]}")
        want = Q.F32 if len(shape) == 1 else (matrix_type if shape[0] % 32 == 0 or matrix_type != Q.Q8_0 else Q.F16)
        check(t.tensor_type == want, f"{t.name} is {t.tensor_type.name}, expected {want.name}")
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    print(f"tensors: {len(names)} named as llama.cpp's llama architecture loads them, ne shapes as expected, "
          f"types {types} (general.file_type {file_type}), offsets on {alignment} bytes")
    if "tokenizer.ggml.model" in reader.fields:
        model = value(reader, "tokenizer.ggml.model")
        tokens = value(reader, "tokenizer.ggml.tokens")
        token_types = value(reader, "tokenizer.ggml.token_type")
        merges = value(reader, "tokenizer.ggml.merges")
        check(model == "gpt2", f"tokenizer.ggml.model {model}")
        check(len(tokens) == vocab and len(token_types) == vocab, "one token and type per vocabulary row")
        ids = {k: int(value(reader, f"tokenizer.ggml.{k}_token_id")) for k in ["bos", "eos"]}
        check(all(0 <= i < vocab for i in ids.values()), f"special ids {ids}")
        template = "tokenizer.chat_template" in reader.fields
        print(f"tokenizer: model gpt2, pre {value(reader, 'tokenizer.ggml.pre')}, {len(tokens)} tokens, "
              f"{len(merges)} merges, ids {ids}, add_bos_token {value(reader, 'tokenizer.ggml.add_bos_token')}, "
              f"chat template {'present' if template else 'absent'}")
    if reference:
        hf = safetensors(os.path.join(reference, "model.safetensors"))
        worst = {}
        for t in reader.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(x) for x in reversed(t.shape)])
            parts = t.name.split(".")
            if t.name == "token_embd.weight":
                hf_name = "model.embed_tokens.weight"
            elif t.name == "output_norm.weight":
                hf_name = "model.norm.weight"
            elif t.name == "output.weight":
                hf_name = "lm_head.weight"
            else:
                module = PROJECTIONS.get(parts[2]) or NORMS[parts[2]]
                hf_name = f"model.layers.{parts[1]}.{module}.{parts[3]}"
            if parts[-2] in ("attn_q", "attn_k"):
                a = unpermute(a, heads if parts[-2] == "attn_q" else kv)
            b = hf[hf_name]
            check(a.shape == b.shape, f"{t.name}: {a.shape} against {hf_name} {b.shape}")
            err = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
            name = t.tensor_type.name
            worst[name] = max(worst.get(name, 0.0), err)
            bound = {"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1.0 / 127}[name]
            check(err <= bound, f"{t.name} differs from {hf_name} by {err:.3g} of its largest value")
        print("values against " + reference + ": largest difference / largest value, per type: "
              + ", ".join(f"{k} {v:.3g}" for k, v in worst.items()))


def check_adapter(reader, reference):
    check(value(reader, "general.type") == "adapter", "general.type is not adapter")
    check(value(reader, "adapter.type") == "lora", "adapter.type is not lora")
    arch = value(reader, "general.architecture")
    alpha = float(value(reader, "adapter.lora.alpha"))
    alignment = check_alignment(reader)
    tensors = {t.name: t for t in reader.tensors}
    bases = sorted({n.rsplit(".", 1)[0] for n in tensors})
    ranks = set()
    for base in bases:
        a, b = tensors.get(base + ".lora_a"), tensors.get(base + ".lora_b")
        check(a is not None and b is not None, f"{base}: lora_a and lora_b go in pairs")
        parts = base.split(".")
        check(len(parts) == 4 and parts[0] == "blk" and parts[2] in PROJECTIONS and parts[3] == "weight",
              f"{base} is not a llama.cpp projection name")
        ne_a, ne_b = [int(x) for x in a.shape], [int(x) for x in b.shape]
        check(ne_a[1] == ne_b[0], f"{base}: lora_a ne {ne_a}, lora_b ne {ne_b} (llama.cpp wants a.ne[1] == b.ne[0])")
        ranks.add(ne_a[1])
    print(f"adapter: general.architecture {arch}, general.type adapter, adapter.type lora, adapter.lora.alpha "
          f"{alpha}, {len(bases)} lora_a/lora_b pairs, ranks {sorted(ranks)}, types "
          f"{sorted({t.tensor_type.name for t in tensors.values()})}, offsets on {alignment} bytes")
    if reference:
        peft = safetensors(os.path.join(reference, "adapter_model.safetensors"))
        config = json.load(open(os.path.join(reference, "adapter_config.json")))
        check(abs(alpha - config["lora_alpha"]) < 1e-6 or config.get("use_rslora"),
              f"alpha {alpha} against lora_alpha {config['lora_alpha']}")
        heads = {"attn_q": 0, "attn_k": 0}
        worst = 0.0
        for base in bases:
            _, layer, proj, _ = base.split(".")
            prefix = f"base_model.model.model.layers.{layer}.{PROJECTIONS[proj]}"
            for side in "ab":
                t = tensors[f"{base}.lora_{side}"]
                got = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
                    [int(x) for x in reversed(t.shape)])
                want = peft[f"{prefix}.lora_{side.upper()}.weight"]
                check(got.shape == want.shape, f"{base}.lora_{side}: {got.shape} against peft's {want.shape}")
                if side == "b" and proj in heads:
                    # find the head count that makes the permuted B equal (the file does not say it).
                    n = next((h for h in range(1, got.shape[0] + 1) if got.shape[0] % (2 * h) == 0
                              and np.allclose(unpermute(got, h), want, atol=1e-2 * np.abs(want).max())), None)
                    check(n is not None, f"{base}.lora_b is not peft's B with rows in llama.cpp's order")
                    heads[proj] = n
                    got = unpermute(got, n)
                worst = max(worst, float(np.max(np.abs(got - want)) / max(float(np.abs(want).max()), 1e-30)))
        print(f"values against {reference}: A and B equal peft's (B rows of q/k permuted with "
              f"{heads['attn_q']} / {heads['attn_k']} heads), largest difference / largest value {worst:.3g}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--adapter", action="store_true")
    parser.add_argument("--reference")
    args = parser.parse_args()
    reader = GGUFReader(args.path)
    print(f"{args.path}: GGUF read by gguf-py, {len(reader.tensors)} tensors, {len(reader.fields)} keys")
    (check_adapter if args.adapter else check_model)(reader, args.reference)
    print("OK")


if __name__ == "__main__":
    main()
