#!/usr/bin/env bash
# Data-parallel training on 2 GPUs of one machine (issue 6's runs):
#  1. tiny-llama on Tiny Shakespeare as bytes (dropout 0, bf16): one GPU with batch 8, two GPUs (--devices 2) with
#     batch 4 each (the same global batch), and --devices 1 (NCCL with a world of one): the loss curves side by side;
#  2. qlora bench on one GPU and on --devices 2 at the same per-GPU batch: the throughput ratio.
# Usage: QLORA=path/to/qlora QLORA_SHARED=path/to/shared bash scripts/multi-gpu-acceptance.sh [OUT]
# Keep NVLink multicast off (NCCL_NVLS_ENABLE=0, set here and by the launcher).
set -euo pipefail
Q=${QLORA:-.build/release/qlora}
SHARED=${QLORA_SHARED:-../shared}
OUT=${1:-runs/multi-gpu-acceptance}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
python3 - "$SHARED/data/tinyshakespeare/input.txt" "$OUT" <<'PY'
import json, sys
text = open(sys.argv[1], 'rb').read()
with open(sys.argv[2] + "/train.jsonl", "w") as f:
    for i in range(0, 98304 - 128, 128): f.write(json.dumps({"input_ids": list(text[i:i + 128])}) + "\n")
PY
COMMON=(--model "$SHARED/golden/hf-qlora/tiny-llama" --data "$OUT/train.jsonl" --lora-r 8 --lora-alpha 16 --lora-dropout 0
        --target-modules all-linear --learning-rate 1e-3 --max-steps 40 --logging-steps 5 --seed 1 --compute-dtype bf16)
rm -rf "$OUT"/one-gpu "$OUT"/two-gpus "$OUT"/world-one
"$Q" train "${COMMON[@]}" --device cuda --batch-size 8 --output-dir "$OUT/one-gpu" 2>/dev/null | tail -1
"$Q" train "${COMMON[@]}" --devices 2 --batch-size 4 --output-dir "$OUT/two-gpus" 2>&1 | grep -v "^train " | tail -3
"$Q" train "${COMMON[@]}" --devices 1 --batch-size 8 --output-dir "$OUT/world-one" 2>/dev/null | tail -1
python3 - "$OUT" <<'PY'
import json, sys
def losses(d): return {m["step"]: m["loss"] for m in map(json.loads, open(f"{sys.argv[1]}/{d}/metrics.jsonl")) if "loss" in m}
a, b, c = losses("one-gpu"), losses("two-gpus"), losses("world-one")
print("step  1 GPU (batch 8)  2 GPUs (4 + 4)  --devices 1")
for s in sorted(a): print(f"{s:4d}  {a[s]:.6f}        {b[s]:.6f}        {c[s]:.6f}")
print("largest |2 GPUs - 1 GPU| loss difference:", max(abs(a[s] - b[s]) for s in a),
      " relative:", max(abs(a[s] - b[s]) / a[s] for s in a))
print("largest |--devices 1 - 1 GPU| loss difference:", max(abs(a[s] - c[s]) for s in a))
PY
for spec in ${BENCH_SPECS:-"llama2-7b:all"}; do
  shape=${spec%%:*}; targets=${spec##*:}
  one=$("$Q" bench --device cuda --shape "$shape" --targets "$targets" --seq 2048 --lora-dropout 0.05 \
    2>/dev/null | tail -1)
  two=$("$Q" bench --devices 2 --shape "$shape" --targets "$targets" --seq 2048 --lora-dropout 0.05 \
    2>/dev/null | tail -1)
  echo "$one" | tee -a "$OUT/bench.jsonl"; echo "$two" | tee -a "$OUT/bench.jsonl"
  python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(f'$shape $targets: {b[\"tokens_per_s\"]/a[\"tokens_per_s\"]:.2f}x the single-GPU tokens/s with --devices 2 (per-GPU batch {a[\"batch\"]})')" "$one" "$two"
done
