#!/usr/bin/env python3
"""A qlora merge, loaded by transformers: no missing, unexpected or mismatched keys, and the same logits.

Runs `qlora merge` of tiny-llama + tiny-adapter (golden/hf-qlora) twice, `--onto original --dtype f32` and
`--onto dequantized --dtype bf16`, loads each folder with `AutoModelForCausalLM.from_pretrained` and compares its
logits on golden `bf16.input_ids` with what the Python stack computed (`merged.logits`: peft's merge_and_unload on
the float32 base) and with `qlora eval --dump-logits`-free arithmetic: the dequantized merge against the f32 one
(the NF4 rounding is the only difference). Extra models can be checked with --model M --adapter A (a merged folder
is made and loaded; its load report and a logits sanity check are printed).

Needs torch, transformers and safetensors (a venv); run from the repository root:
    python3 scripts/check-transformers-load.py [--qlora .build/release/qlora] [--shared ../shared]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def merge(qlora, model, adapter, out, onto, dtype):
    subprocess.run([qlora, "merge", "--model", model, "--adapter", adapter, "--output-dir", out, "--onto", onto,
                    "--dtype", dtype], check=True, stdout=subprocess.DEVNULL)


def load(folder, dtype):
    model, info = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return model.eval(), problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qlora", default=".build/release/qlora")
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--model", help="another base model to merge and load")
    ap.add_argument("--adapter", help="its adapter")
    args = ap.parse_args()
    golden = os.path.join(args.shared, "golden", "hf-qlora")
    extra = load_file(os.path.join(golden, "extra.safetensors"))
    ids, expected = extra["bf16.input_ids"], extra["merged.logits"]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for onto, dtype, tdtype in [("original", "f32", torch.float32), ("dequantized", "bf16", torch.bfloat16)]:
            out = os.path.join(tmp, f"{onto}-{dtype}")
            merge(args.qlora, os.path.join(golden, "tiny-llama"), os.path.join(golden, "tiny-adapter"), out, onto,
                  dtype)
            model, problems = load(out, tdtype)
            with torch.no_grad():
                logits = model(ids).logits.float()
            results[onto] = logits
            diff = (logits - expected).abs().max().item()
            scale = expected.abs().max().item()
            print(json.dumps({"merge": f"--onto {onto} --dtype {dtype}", "files": sorted(os.listdir(out)),
                              "load_problems": problems, "max_abs_logit_diff_vs_peft_merge": diff,
                              "relative": diff / scale}))
            limit = 1e-5 if dtype == "f32" else 0.1   # bf16 weights and NF4 rounding (dequantized) in the second
            if problems or diff / scale > limit:
                failures += 1
                print(f"FAIL: --onto {onto} --dtype {dtype}", file=sys.stderr)
        if args.model and args.adapter:
            out = os.path.join(tmp, "extra")
            merge(args.qlora, args.model, args.adapter, out, "dequantized", "bf16")
            model, problems = load(out, torch.bfloat16)
            with torch.no_grad():
                logits = model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).logits.float()
            finite = bool(torch.isfinite(logits).all())
            print(json.dumps({"merge": f"{args.model} + {args.adapter}", "files": sorted(os.listdir(out)),
                              "load_problems": problems, "finite_logits": finite}))
            failures += bool(problems) or not finite
    print("transformers loads every merge with the expected logits" if failures == 0 else f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
