#!/usr/bin/env bash
# A fast-GPU development run (one device call): check-cuda and gpu-acceptance.sh's training checks, then qlora bench
# on llama2-7b (all seven targets, and q,v), llama3-8b and smollm2-135m at LoRA dropout 0.05 and 0, and profiles of
# the llama2-7b step at both.
# The baselines are not run here: figures from this script are for comparing qlora with itself; the acceptance
# figures come from gpu-lean-acceptance.sh, which runs hf_baseline.py and unsloth_bench.py in the same call.
# Usage: QLORA=path/to/qlora QLORA_SHARED=path/to/shared bash scripts/gpu-fast-check.sh [OUT]
#   SPECS="llama2-7b:all smollm2-135m:all" picks the shapes; CHECK=0 skips the checks; PROFILE=0 skips the profile.
set -uo pipefail
Q=${QLORA:-.build/release/qlora}
SHARED=${QLORA_SHARED:-../shared}
OUT=${1:-runs/gpu-fast}
mkdir -p "$OUT"
if [ "${CHECK:-1}" = 1 ]; then
  echo "== check-cuda and the training checks"
  QLORA="$Q" QLORA_SHARED="$SHARED" bash "$(dirname "$0")/gpu-acceptance.sh" "$OUT/acceptance" 2>&1 | tail -30
  checks="$OUT/acceptance/check-cuda.txt"
  echo "check-cuda: $(grep -c '^ok' "$checks") ok, $(grep -c '^FAIL' "$checks") failed"
  grep -E '^(FAIL|ok  lora|ok  GPU (fp32|bf16) follows)' "$OUT/acceptance/check-cuda.txt" | head -40
fi
echo "== bench (qlora only)"
for spec in ${SPECS:-llama2-7b:all smollm2-135m:all llama2-7b:qv llama3-8b:all}; do
  shape=${spec%%:*}; targets=${spec##*:}
  for d in 0.05 0; do
    "$Q" bench --device cuda --shape "$shape" --target-modules "$targets" --max-seq-length 2048 \
      --lora-dropout "$d" 2>/dev/null \
      | tee -a "$OUT/bench.jsonl"
  done
done
if [ "${PROFILE:-1}" = 1 ]; then
  for d in 0.05 0; do
    echo "== profile: llama2-7b, all targets, dropout $d"
    "$Q" bench --device cuda --shape llama2-7b --target-modules all --max-seq-length 2048 --steps 2 \
      --lora-dropout "$d" --profile \
      2> "$OUT/profile-$d.txt" >/dev/null
    grep '^|' "$OUT/profile-$d.txt" | head -45
  done
fi
