#!/usr/bin/env bash
# Generation speed (`qlora bench --generate`: random weights, random prompts, greedy) on the GPU with its
# key/value cache, beside the CPU, as JSON lines. The CPU runs a 2-layer llama2-7b (its random full model takes long
# to build); the GPU runs that too, for the same-shape comparison, and the full models.
# Usage: QLORA=path/to/qlora bash scripts/gpu-generate-bench.sh [OUT]
set -uo pipefail
Q=${QLORA:-.build/release/qlora}
OUT=${1:-runs/gpu-generate}
mkdir -p "$OUT"
run() { "$Q" bench "$@" 2>/dev/null | tee -a "$OUT/generate.jsonl"; }
for b in 1 8; do run --device cuda --shape llama2-7b --batch-size "$b" --max-seq-length 128 --generate 128; done
run --device cuda --shape llama2-7b --layers 2 --batch-size 1 --max-seq-length 32 --generate 32
run --device cuda --shape smollm2-135m --batch-size 1 --max-seq-length 128 --generate 128
run --device cpu --shape smollm2-135m --batch-size 1 --max-seq-length 128 --generate 32
timeout 300 "$Q" bench --device cpu --shape llama2-7b --layers 2 --batch-size 1 --max-seq-length 32 --generate 8 \
  2>/dev/null | tee -a "$OUT/generate.jsonl"
