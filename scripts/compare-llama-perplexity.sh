#!/usr/bin/env bash
# llama.cpp's llama-perplexity on an exported GGUF beside `qlora eval` on the same tokens.
#
#   bash scripts/compare-llama-perplexity.sh MODEL [ADAPTER]
#
# Exports MODEL (+ ADAPTER) with `qlora export --format gguf --type $TYPE`, runs llama-perplexity on $TEXT with
# context $CTX for $CHUNKS chunks, and runs `qlora eval` on MODEL + ADAPTER with exactly the chunks llama-perplexity
# scores: the text tokenized once (qlora tokenize, with the file's own vocabulary), BOS in front, cut into chunks of
# CTX tokens whose first token is BOS, and only the second half of each chunk counted (llama-perplexity's rule).
# Environment: LLAMA_CPP (folder with llama-perplexity; default /tmp/llama-cpp/build/bin, see build-llama-cpp.sh),
# QLORA (default .build/release/qlora, else .build/debug/qlora), TEXT (default ../shared/data/tinyshakespeare),
# CTX (256), CHUNKS (4), TYPE (f32), ONTO (dequantized), OUT (/tmp/qlora-llama-ppl).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
adapter=${2:-}
LLAMA_CPP=${LLAMA_CPP:-/tmp/llama-cpp/build/bin}
QLORA=${QLORA:-$( [ -x .build/release/qlora ] && echo .build/release/qlora || echo .build/debug/qlora )}
TEXT=${TEXT:-../shared/data/tinyshakespeare/input.txt}
CTX=${CTX:-256}
CHUNKS=${CHUNKS:-4}
TYPE=${TYPE:-f32}
ONTO=${ONTO:-dequantized}
OUT=${OUT:-/tmp/qlora-llama-ppl}
mkdir -p "$OUT"
gguf=$OUT/exported-$TYPE.gguf
rm -f "$gguf"
"$QLORA" export --format gguf --model "$model" ${adapter:+--adapter "$adapter"} --output "$gguf" --type "$TYPE" \
    --onto "$ONTO" --check never 2> /dev/null
# Enough text for the chunks (llama-perplexity needs 2 × CTX tokens at least).
head -c $((CTX * CHUNKS * 8)) "$TEXT" > "$OUT/text.txt"
echo "== llama-perplexity ($("$LLAMA_CPP/llama-perplexity" --version 2>&1 | grep -m1 version || true))"
"$LLAMA_CPP/llama-perplexity" -m "$gguf" -f "$OUT/text.txt" -c "$CTX" --chunks "$CHUNKS" -t 2 -b "$CTX" \
    > "$OUT/llama-perplexity.log" 2>&1 || { tail -20 "$OUT/llama-perplexity.log"; exit 1; }
grep -E "^\[|Final estimate" "$OUT/llama-perplexity.log" | tail -3
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
print(json.dumps({"text": open(out + "/text.txt", encoding="utf-8").read()}), file=open(out + "/text.jsonl", "w"))
PY
"$QLORA" tokenize --tokenizer "$gguf" --input "$OUT/text.jsonl" > "$OUT/ids.jsonl"
"$QLORA" tokenize --tokenizer "$gguf" --input "$OUT/text.jsonl" --add-special-tokens > "$OUT/ids-bos.jsonl"
python3 - "$OUT" "$CTX" "$CHUNKS" <<'PY'
import json, sys
out, ctx, chunks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = json.loads(open(out + "/ids.jsonl").readline())["ids"]
with_bos = json.loads(open(out + "/ids-bos.jsonl").readline())["ids"]
# The BOS the vocabulary adds (tokenizer.ggml.add_bos_token), as llama-perplexity puts it first in every chunk.
bos = with_bos[0] if len(with_bos) == len(ids) + 1 else None
tokens = ([bos] if bos is not None else []) + ids
n = min(chunks, len(tokens) // ctx)
with open(out + "/chunks.jsonl", "w") as f:
    for c in range(n):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        if bos is not None:
            chunk[0] = bos
        first = ctx // 2
        labels = [-100 if j <= first else t for j, t in enumerate(chunk)]
        f.write(json.dumps({"input_ids": chunk, "labels": labels}) + "\n")
print(f"{n} chunks of {ctx} tokens, {n * (ctx - 1 - ctx // 2)} scored", file=sys.stderr)
PY
# qlora eval runs the model as QLoRA trains it (the base in NF4, the adapter beside it): what the merged export
# (--onto dequantized: NF4 weights + delta, in $TYPE) should reproduce. Without an adapter it runs MODEL with the
# file's own weights, as llama.cpp does (--base-weights auto).
echo "== qlora eval of MODEL + ADAPTER (4-bit base, adapter applied) on the same chunks"
"$QLORA" eval --model "$model" ${adapter:+--adapter "$adapter"} --data "$OUT/chunks.jsonl" --max-seq-length "$CTX" \
    --batch-size 1
