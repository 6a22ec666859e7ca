#!/usr/bin/env bash
# A/B of the kernel variants that are off by default (docs/gpu-fast-h200.md, "Session 15"), in one device call:
# check-cuda with them on, then llama3-8b with the grouped-query backward split by query head against the default,
# llama2-7b with lora_dx at six blocks an SM and with dQ added in any order against the default (interleaved), the
# llama3-8b profiles of both forms, and the llama2-7b baselines (hf_baseline.py, unsloth_bench.py) in the same call.
# Usage: QLORA=path/to/qlora QLORA_SHARED=path/to/shared bash scripts/gpu-variants-ab.sh [OUT]
#   (the baselines need bitsandbytes and Unsloth on PYTHONPATH: ../shared/device/NOTES.md)
set -uo pipefail
Q=${QLORA:-.build/release/qlora}
S=${QLORA_SHARED:-../shared}
O=${1:-runs/gpu-variants}
mkdir -p "$O"
t0=$(date +%s)
b() {
  local tag=$1; shift
  echo "-- $tag"
  timeout 150 env "$@" 2>/dev/null | tail -1 | sed "s/^/$tag /" | tee -a "$O/bench.jsonl"
  echo "   [$(( $(date +%s) - t0 )) s]"
}
echo "== check-cuda with QLORA_ATTENTION_SPLIT=1 and LORA_DX_BLOCKS=6"
QLORA_ATTENTION_SPLIT=1 QLORA_KERNEL_DEFINES=LORA_DX_BLOCKS=6 timeout 200 "$Q" check-cuda --shared "$S" \
  > "$O/check-cuda-variants.txt" 2>&1
echo "exit $?; $(grep -c '^ok' "$O/check-cuda-variants.txt") ok, $(grep -c '^FAIL' "$O/check-cuda-variants.txt") FAIL"
grep -v '^ok' "$O/check-cuda-variants.txt" | tail -8
L3=(bench --device cuda --shape llama3-8b --target-modules all --max-seq-length 2048 --lora-dropout 0.05)
L2=(bench --device cuda --shape llama2-7b --target-modules all --max-seq-length 2048)
for round in 1 2; do
  b l3-split QLORA_ATTENTION_SPLIT=1 "$Q" "${L3[@]}"
  b l3-group "$Q" "${L3[@]}"
  b dx5 "$Q" "${L2[@]}" --lora-dropout 0.05
  b dx6 QLORA_KERNEL_DEFINES=LORA_DX_BLOCKS=6 "$Q" "${L2[@]}" --lora-dropout 0.05
  [ $round = 1 ] && b unordered QLORA_KERNEL_DEFINES=FA_DQ_UNORDERED=1 "$Q" "${L2[@]}" --lora-dropout 0.05
done
for v in 1 0; do
  echo "== profile llama3-8b, QLORA_ATTENTION_SPLIT=$v"
  QLORA_ATTENTION_SPLIT=$v timeout 100 "$Q" "${L3[@]}" --steps 2 --profile 2> "$O/profile-llama3-8b-split$v.txt" \
    >/dev/null
  grep '^|' "$O/profile-llama3-8b-split$v.txt" | grep -E "total|flash|gemm:base|idle|lora_dx" | head -12
done
b hf python3 "$S/bench/hf_baseline.py" llama2-7b --targets all --seq 2048
b unsloth python3 "$S/bench/unsloth_bench.py" llama2-7b --targets all --seq 2048
b dx5-d0 "$Q" "${L2[@]}" --lora-dropout 0
