#!/usr/bin/env bash
# The lean-GPU acceptance run (one call on a machine with an NVIDIA GPU):
#  1. qlora check-cuda (every op against its CPU twin, streaming loads quantized on the GPU, tiny-llama's goldens);
#  2. a real llama2-7b-shaped bf16 checkpoint written by transformers (hf_baseline.py makes it under /tmp): the Hugging
#     Face recipe's figures, then `qlora train --device cuda` on it with its host peak RSS and load time, and
#     `qlora bench --model` on it (load time, host memory before and after loading, tokens/s, GPU peak);
#  3. `qlora bench` on the random-weight shapes beside hf_baseline.py and unsloth_bench.py, in this same call.
# Usage: QLORA=path/to/qlora QLORA_SHARED=path/to/shared bash scripts/gpu-lean-acceptance.sh [OUT]
#   SPECS="llama2-7b:all smollm2-135m:all" picks the bench shapes; UNSLOTH=0 skips Unsloth; CHECK=0 skips check-cuda;
#   REAL=0 skips the real checkpoint; D0=0 skips qlora's dropout-0 runs; HF=0 skips hf_baseline.py for the specs;
#   HF_REAL=0 writes the real checkpoint without timing the Hugging Face recipe on it; LONG=1 adds llama2-7b at
#   batch 1 × 16,384 tokens; TRAINING=1 first runs gpu-acceptance.sh's training checks.
set -uo pipefail
Q=${QLORA:-.build/release/qlora}
SHARED=${QLORA_SHARED:-../shared}
OUT=${1:-runs/gpu-lean}
mkdir -p "$OUT"
# The peak resident memory of a command (what /usr/bin/time -v reports as maximum resident set size), and its time.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.time()
rc = subprocess.call(sys.argv[1:])
print(f"host peak RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1048576:.3f} GiB, "
      f"wall {time.time() - t:.1f} s, exit {rc}", flush=True)
PY
}

if [ "${TRAINING:-0}" = 1 ]; then
  echo "== check-cuda and the training checks of gpu-acceptance.sh"
  QLORA="$Q" QLORA_SHARED="$SHARED" bash "$(dirname "$0")/gpu-acceptance.sh" "$OUT/acceptance" 2>&1 | tail -25
  CHECK=0
fi
if [ "${CHECK:-1}" = 1 ]; then
  echo "== check-cuda"
  "$Q" check-cuda --shared "$SHARED" > "$OUT/check-cuda.txt" 2>&1
  echo "exit $?; $(grep -c '^ok' "$OUT/check-cuda.txt") ok"; grep -v '^ok' "$OUT/check-cuda.txt" | tail -20
fi

if [ "${REAL:-1}" = 1 ]; then
  echo "== a real llama2-7b checkpoint (bf16 safetensors written by transformers)"
  CK=/tmp/hf-llama2-7b
  if [ "${HF_REAL:-1}" = 1 ]; then
    python3 "$SHARED/bench/hf_baseline.py" llama2-7b --targets all 2>/dev/null | tail -1 | tee -a "$OUT/bench.jsonl"
  else   # the same checkpoint as hf_baseline.py writes, without its training run
    python3 - "$CK" <<'PY'
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_size=4096, intermediate_size=11008,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)
with torch.device("cuda"):
    m = LlamaForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained(sys.argv[1], safe_serialization=True)
PY
  fi
  ls -la "$CK" | head; du -sh "$CK"
  python3 - "$OUT/tokens.jsonl" <<'PY'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for _ in range(16): f.write(json.dumps({"input_ids": [random.randrange(32000) for _ in range(2048)]}) + "\n")
PY
  rm -rf "$OUT"/train-7b-*
  for offload in false true; do
    echo "-- qlora train --device cuda on it (checkpoints offloaded to host memory: $offload)"
    measure "$Q" train --device cuda --model "$CK" --data "$OUT/tokens.jsonl" --output-dir "$OUT/train-7b-$offload" \
      --max-steps 3 --batch-size 4 --lora-r 16 --lora-alpha 32 --target-modules all-linear --gradient-checkpointing \
      --logging-steps 1 --max-seq-length 2048 --offload-checkpoints $offload 2>&1 | tr '\r' '\n' \
      | grep -E "loaded|params|peak|host|saved|rror"
  done
  echo "-- qlora bench --model on it"
  measure "$Q" bench --device cuda --model "$CK" --targets all --seq 2048 --lora-dropout 0.05 2>/dev/null \
    | tee -a "$OUT/bench.jsonl"
fi

if [ "${LONG:-0}" = 1 ]; then
  echo "== long context: llama2-7b, batch 1 × 16,384 tokens"
  "$Q" plan --shape llama2-7b --targets all --batch 1 --seq 16384 --json | tee -a "$OUT/plan.jsonl"
  "$Q" bench --device cuda --shape llama2-7b --targets all --batch 1 --seq 16384 --steps 3 --lora-dropout 0.05 2>&1 \
    | tail -3 \
    | tee -a "$OUT/bench.jsonl"
fi

echo "== bench beside the Hugging Face recipe and Unsloth (same call), and qlora plan's prediction"
for spec in ${SPECS:-"llama2-7b:all llama2-7b:qv llama3-8b:all smollm2-135m:all"}; do
  shape=${spec%%:*}; targets=${spec##*:}
  "$Q" plan --shape "$shape" --targets "$targets" --seq 2048 --json | tee -a "$OUT/plan.jsonl"
  "$Q" bench --device cuda --shape "$shape" --targets "$targets" --seq 2048 --lora-dropout 0.05 2>/dev/null \
    | tee -a "$OUT/bench.jsonl"
  [ "${D0:-1}" = 1 ] && "$Q" bench --device cuda --shape "$shape" --targets "$targets" --seq 2048 --lora-dropout 0 \
    2>/dev/null \
    | tee -a "$OUT/bench.jsonl"
  [ "${HF:-1}" = 0 ] || { [ "$shape:$targets" = llama2-7b:all ] && [ "${REAL:-1}" = 1 ]; } \
    || python3 "$SHARED/bench/hf_baseline.py" "$shape" --targets "$targets" --seq 2048 2>/dev/null | tail -1 \
    | tee -a "$OUT/bench.jsonl"
  [ "${UNSLOTH:-1}" = 1 ] && python3 "$SHARED/bench/unsloth_bench.py" "$shape" --targets "$targets" --seq 2048 \
    2>/dev/null \
    | tail -1 | tee -a "$OUT/bench.jsonl"
done
