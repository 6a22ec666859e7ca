#!/usr/bin/env bash
# The main job's fine-tune in llama.cpp: merge + export the adapter as a GGUF (Q8_0 by default), then answer the same
# held-out questions greedily with llama.cpp's llama-cli and with `qlora generate --adapter`, side by side.
# Usage: bash scripts/llama-cpp-answers.sh MODEL.gguf ADAPTER_DIR QUESTIONS.jsonl [LLAMA_CLI] [TYPE]
#   (QUESTIONS.jsonl: records with a "question" field, e.g. runs/smollm2-gsm8k/heldout.jsonl; the first 2 are asked;
#   LLAMA_CLI defaults to the one scripts/build-llama-cpp.sh builds; its single-turn chat mode applies the
#   GGUF's own chat template, as `qlora generate --chat` applies the model's).
#   EMBEDDING_TYPE=f32 (or f16, bf16) exports the token embedding and output matrix in that type (--embedding-type).
#   Three answers per question: the 4-bit base + adapter, qlora on the exported file itself (its own weights, so
#   the type's rounding alone), llama-cli on the exported file (the rounding and llama.cpp's arithmetic).
set -euo pipefail
MODEL=$1; ADAPTER=$2; QUESTIONS=$3
CLI=${4:-/tmp/llama-cpp/build/bin/llama-cli}; TYPE=${5:-q8_0}
Q=${QLORA:-.build/release/qlora}
OUT=$(mktemp -d)
"$Q" export --format gguf --model "$MODEL" --adapter "$ADAPTER" --output "$OUT/merged-$TYPE.gguf" --type "$TYPE" \
  ${EMBEDDING_TYPE:+--embedding-type "$EMBEDDING_TYPE"}
head -n 2 "$QUESTIONS" > "$OUT/questions.jsonl"
echo "== qlora generate --adapter (greedy, the 4-bit base + adapter as trained)"
"$Q" generate --model "$MODEL" --adapter "$ADAPTER" --chat --max-new-tokens 160 --prompts-from "$OUT/questions.jsonl" \
  --prompt-field question
echo "== qlora generate --model merged-$TYPE.gguf (greedy, the exported file's own weights)"
"$Q" generate --model "$OUT/merged-$TYPE.gguf" --chat --max-new-tokens 160 --prompts-from "$OUT/questions.jsonl" \
  --prompt-field question
echo "== llama-cli on the exported $TYPE GGUF (greedy; llama.cpp renders the GGUF's own chat template)"
python3 -c "import json, sys; [print(json.dumps(json.loads(l)['question'])) for l in open(sys.argv[1])]" \
  "$OUT/questions.jsonl" | while read -r quoted; do
  question=$(python3 -c "import json, sys; print(json.loads(sys.argv[1]))" "$quoted")
  # Single turn, greedy; the answer is what comes between the echoed prompt ("> ...") and the timing line.
  # A float32 KV cache and the plain attention path: llama.cpp's f16 cache and flash attention flip near-ties.
  "$CLI" -m "$OUT/merged-$TYPE.gguf" -p "$question" -st -n 160 --temp 0 --no-warmup -ctk f32 -ctv f32 -fa off \
    2>/dev/null < /dev/null \
    | awk '/^> /{on=1; next} /^\[ Prompt:/{on=0} on'
done
