#!/usr/bin/env bash
# The GPU run of the CUDA backend on a machine with an NVIDIA GPU (one command for all of it):
#  1. qlora check-cuda: every GPU op against its CPU twin, the NF4 quantizer against bitsandbytes, tiny-llama's
#     golden logits / loss / gradients / five training steps on the GPU;
#  2. training on the GPU (tiny-llama on Tiny Shakespeare as bytes): fp32 GPU losses beside the CPU's, a bf16 run
#     with dropout and gradient checkpointing that checkpoints, and the same run resumed from its middle checkpoint
#     (the adapters must be byte-identical); eval and quantize on the GPU beside the CPU; packed rows (dropout,
#     checkpointing) trained on the GPU beside the CPU;
#  3. with BENCH=1, `qlora bench` beside ../shared/bench/hf_baseline.py with the same arguments.
# Usage: QLORA=path/to/qlora QLORA_SHARED=path/to/shared bash scripts/gpu-acceptance.sh [OUT]
set -euo pipefail
Q=${QLORA:-.build/release/qlora}
SHARED=${QLORA_SHARED:-../shared}
OUT=${1:-runs/gpu-acceptance}
TINY=$SHARED/golden/hf-qlora/tiny-llama
mkdir -p "$OUT"

echo "== 1. check-cuda"
"$Q" check-cuda --shared "$SHARED" > "$OUT/check-cuda.txt" 2>&1 || { grep -v '^ok' "$OUT/check-cuda.txt"; exit 1; }
grep -v '^ok' "$OUT/check-cuda.txt"

echo "== 2. training on the GPU"
python3 - "$SHARED/data/tinyshakespeare/input.txt" "$OUT" <<'PY'
import json, sys
text = open(sys.argv[1], 'rb').read()
def write(path, data, limit):
    with open(path, 'w') as f:
        for i in range(0, min(len(data) - 128, limit * 128), 128):
            f.write(json.dumps({"input_ids": list(data[i:i + 128])}) + "\n")
write(sys.argv[2] + "/train.jsonl", text[:98304], 767)
write(sys.argv[2] + "/val.jsonl", text[-8192:], 32)
PY
COMMON=(--model "$TINY" --data "$OUT/train.jsonl" --eval-data "$OUT/val.jsonl" --batch-size 8 --lora-r 8 --lora-alpha 16
        --target-modules all-linear --learning-rate 1e-3 --max-steps 60 --logging-steps 10 --eval-steps 30 --seed 1)
rm -rf "$OUT"/gpu-* "$OUT"/cpu-* "$OUT"/q-*
"$Q" train "${COMMON[@]}" --lora-dropout 0 --device cuda --compute-dtype fp32 --output-dir "$OUT/gpu-fp32" 2>/dev/null | tail -2
"$Q" train "${COMMON[@]}" --lora-dropout 0 --device cpu --output-dir "$OUT/cpu-fp32" 2>/dev/null | tail -1
python3 - "$OUT" <<'PY'
import json, sys
def losses(d): return [(m["step"], m.get("loss", m.get("eval_loss"))) for m in map(json.loads, open(f"{sys.argv[1]}/{d}/metrics.jsonl"))]
g, c = losses("gpu-fp32"), losses("cpu-fp32")
print("step  GPU fp32 loss   CPU loss")
for (s, a), (_, b) in zip(g, c): print(f"{s:4d}  {a:.6f}  {b:.6f}")
print("largest |GPU - CPU| loss difference:", max(abs(a - b) for (_, a), (_, b) in zip(g, c)))
PY
"$Q" train "${COMMON[@]}" --lora-dropout 0.05 --gradient-checkpointing --device cuda --save-steps 20 --output-dir "$OUT/gpu-bf16" 2>/dev/null | tail -2
mkdir -p "$OUT/gpu-bf16-resumed" && cp -r "$OUT/gpu-bf16/checkpoint-40" "$OUT/gpu-bf16-resumed/"
"$Q" train "${COMMON[@]}" --lora-dropout 0.05 --gradient-checkpointing --device cuda --save-steps 20 --output-dir "$OUT/gpu-bf16-resumed" \
  --resume-from-checkpoint "$OUT/gpu-bf16-resumed/checkpoint-40" 2>/dev/null | tail -1
cmp "$OUT/gpu-bf16/adapter_model.safetensors" "$OUT/gpu-bf16-resumed/adapter_model.safetensors" \
  && echo "resume on the GPU: the adapter after 60 steps is byte-identical to the uninterrupted run's"
echo "eval of the bf16 adapter, GPU then CPU:"
"$Q" eval --model "$TINY" --adapter "$OUT/gpu-bf16" --data "$OUT/val.jsonl" --device cuda 2>/dev/null
"$Q" eval --model "$TINY" --adapter "$OUT/gpu-bf16" --data "$OUT/val.jsonl" 2>/dev/null
"$Q" quantize --model "$TINY" --output "$OUT/q-gpu" --device cuda 2>/dev/null
"$Q" quantize --model "$TINY" --output "$OUT/q-cpu" 2>/dev/null
cmp "$OUT/q-gpu/model.safetensors" "$OUT/q-cpu/model.safetensors" && echo "quantize on the GPU: model.safetensors byte-identical to the CPU's"

echo "== 2b. packed training on the GPU beside the CPU (documents of 9 to 120 tokens packed into rows of 128)"
python3 - "$SHARED/data/tinyshakespeare/input.txt" "$OUT" <<'PY'
import json, random, sys
text = open(sys.argv[1], 'rb').read()[:60000]
rng, at = random.Random(3), 0
with open(sys.argv[2] + "/packed.jsonl", "w") as f:
    while at < len(text) - 130:
        n = rng.randint(9, 120)
        f.write(json.dumps({"input_ids": list(text[at:at + n])}) + "\n")
        at += n
PY
PACKED=(--model "$TINY" --data "$OUT/packed.jsonl" --packing --max-seq-length 128 --batch-size 4 --lora-r 8
        --lora-alpha 16 --target-modules all-linear --learning-rate 1e-3 --max-steps 20 --logging-steps 5 --seed 1
        --lora-dropout 0.1 --gradient-checkpointing)
"$Q" train "${PACKED[@]}" --device cuda --compute-dtype fp32 --output-dir "$OUT/gpu-packed" 2>/dev/null | tail -1
"$Q" train "${PACKED[@]}" --device cpu --output-dir "$OUT/cpu-packed" 2>/dev/null | tail -1
python3 - "$OUT" <<'PY'
import json, sys
def losses(d):
    rows = map(json.loads, open(f"{sys.argv[1]}/{d}/metrics.jsonl"))
    return [(m["step"], m["loss"]) for m in rows if "loss" in m]
g, c = losses("gpu-packed"), losses("cpu-packed")
print("step  GPU fp32 packed loss   CPU packed loss")
for (s, a), (_, b) in zip(g, c): print(f"{s:4d}  {a:.6f}  {b:.6f}")
print("largest |GPU - CPU| packed loss difference:", max(abs(a - b) for (_, a), (_, b) in zip(g, c)))
PY

if [ "${BENCH:-0}" = 1 ]; then
  echo "== 3. qlora bench beside hf_baseline.py (same call, same arguments)"
  for spec in ${BENCH_SPECS:-"llama2-7b:all llama2-7b:qv smollm2-135m:all"}; do
    shape=${spec%%:*}; targets=${spec##*:}
    "$Q" bench --device cuda --shape "$shape" --targets "$targets" --seq 2048 --lora-dropout 0.05 2>/dev/null \
      | tee -a "$OUT/bench.jsonl"
    python3 "$SHARED/bench/hf_baseline.py" "$shape" --targets "$targets" --seq 2048 2>/dev/null | tail -1 \
      | tee -a "$OUT/bench.jsonl"
  done
fi
