#!/usr/bin/env python3
"""A qlora merge, loaded by transformers: no missing, unexpected or mismatched keys, and the same numbers.

Merges tiny-llama + tiny-adapter (golden/hf-qlora) three ways and loads each folder with
`AutoModelForCausalLM.from_pretrained`:
  --onto original --dtype f32:     its logits on golden `bf16.input_ids` against the Python stack's own merge
                                   (`merged.logits`: peft's merge_and_unload on the float32 base), 1e-5 relative;
  --onto dequantized --dtype f32:  its loss on those ids against `qlora eval --adapter` on the 4-bit base (what the
                                   adapter was trained on), 1e-5 relative;
  --onto dequantized --dtype bf16: the same in bf16 weights, 1e-2.
Extra models can be checked with --model M --adapter A (a folder or a GGUF base): merged onto the dequantized weights
in f32 and loaded; its loss on a fixed sequence against `qlora eval --adapter`, and its tokenizer (for a GGUF base, the
tokenizer.json qlora wrote) against `qlora tokenize` of the base on a few texts.

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
        base, adapter = os.path.join(golden, "tiny-llama"), os.path.join(golden, "tiny-adapter")
        data = os.path.join(tmp, "ids.jsonl")
        with open(data, "w") as f:
            for row in ids.tolist():
                f.write(json.dumps({"input_ids": row}) + "\n")
        report = subprocess.run([args.qlora, "eval", "--model", base, "--adapter", adapter, "--data", data],
                                check=True, capture_output=True, text=True).stdout
        qlora_loss = float(report.split("loss")[1].split()[0])
        for onto, dtype, tdtype, limit in [("original", "f32", torch.float32, 1e-5),
                                           ("dequantized", "f32", torch.float32, 1e-5),
                                           ("dequantized", "bf16", torch.bfloat16, 1e-2)]:
            out = os.path.join(tmp, f"{onto}-{dtype}")
            merge(args.qlora, base, adapter, out, onto, dtype)
            model, problems = load(out, tdtype)
            with torch.no_grad():
                result = model(ids, labels=ids)
            row = {"merge": f"--onto {onto} --dtype {dtype}", "files": sorted(os.listdir(out)),
                   "load_problems": problems}
            if onto == "original":
                diff = (result.logits.float() - expected).abs().max().item()
                row["max_abs_logit_diff_vs_peft_merge"] = diff
                relative = diff / expected.abs().max().item()
            else:
                row["transformers_loss"], row["qlora_eval_loss_4bit_base"] = result.loss.item(), qlora_loss
                relative = abs(result.loss.item() - qlora_loss) / qlora_loss
            row["relative"] = relative
            print(json.dumps(row))
            if problems or relative > limit:
                failures += 1
                print(f"FAIL: --onto {onto} --dtype {dtype}", file=sys.stderr)
        if args.model and args.adapter:
            out = os.path.join(tmp, "extra")
            merge(args.qlora, args.model, args.adapter, out, "dequantized", "f32")
            model, problems = load(out, torch.float32)
            sample = torch.tensor([[(17 * i + 5) % 1000 + 10 for i in range(48)]])
            with torch.no_grad():
                result = model(sample, labels=sample)
            finite = bool(torch.isfinite(result.logits).all())
            data = os.path.join(tmp, "sample.jsonl")
            with open(data, "w") as f:
                f.write(json.dumps({"input_ids": sample[0].tolist()}) + "\n")
            report = subprocess.run([args.qlora, "eval", "--model", args.model, "--adapter", args.adapter, "--data",
                                     data], check=True, capture_output=True, text=True).stdout
            qlora_loss = float(report.split("loss")[1].split()[0])
            relative = abs(result.loss.item() - qlora_loss) / qlora_loss
            row = {"merge": f"{args.model} + {args.adapter} (--onto dequantized --dtype f32)",
                   "files": sorted(os.listdir(out)), "load_problems": problems, "finite_logits": finite,
                   "transformers_loss": result.loss.item(), "qlora_eval_loss": qlora_loss, "relative": relative}
            failures += relative > 1e-4
            if os.path.exists(os.path.join(out, "tokenizer.json")):
                # The folder's tokenizer (written by qlora from a GGUF base, or copied) against qlora's own
                # tokenizer of the base, on a few texts.
                from transformers import AutoTokenizer
                tokenizer = AutoTokenizer.from_pretrained(out)
                texts = ["Hello world!", "  two  spaces, digits 12345 and ünïcödé", "Q: 3+4=?\nA: 7",
                         "<|im_start|>x"]
                lines = "".join(json.dumps({"text": t}) + "\n" for t in texts)
                ours = [json.loads(l)["ids"] for l in subprocess.run(
                    [args.qlora, "tokenize", "--tokenizer", args.model], input=lines, capture_output=True,
                    text=True, check=True).stdout.splitlines()]
                theirs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
                row["tokenizer_equal_on_texts"] = ours == theirs
                failures += ours != theirs
            print(json.dumps(row))
            failures += bool(problems) or not finite
    print("transformers loads every merge with the expected logits" if failures == 0 else f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
