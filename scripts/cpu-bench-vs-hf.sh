#!/usr/bin/env bash
# `qlora bench --device cpu` beside the Python stack's `hf_cpu_bench.py` (transformers + peft + bitsandbytes on the
# CPU) in one run: SmolLM2-135M shape (30 layers, random weights), r=16 on all seven projections, LoRA dropout 0.05
# on both sides (hf_cpu_bench.py's), batch 1 × 512 and 4 × 256; qlora in fp32 and bf16, each side with and without
# gradient checkpointing. The runs of a round are interleaved (the machine's load drifts; only ratios from one run
# count), and the summary takes, per shape and per side, the best configuration's median tokens/s over the rounds:
# qlora ÷ Python, and the peak RSS of both (GiB; ru_maxrss for Python, the bench's peak resident size for qlora;
# both include loading).
# Usage: bash scripts/cpu-bench-vs-hf.sh [ROUNDS]   (default 2; ~8 minutes a round on 2 quiet cores)
# Environment: PYTHON (with torch, transformers, peft, bitsandbytes; default /work/venv-cpu/bin/python or python3),
# HF_BENCH (default ../shared/bench/hf_cpu_bench.py), QLORA (default .build/release/qlora), STEPS (timed steps a
# run, default 4), SHAPES (default "1x512 4x256"), CKPT (both, off or on; default both), OUT (the JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PYTHON=${PYTHON:-$( [ -x /work/venv-cpu/bin/python ] && echo /work/venv-cpu/bin/python || echo python3 )}
HF_BENCH=${HF_BENCH:-../shared/bench/hf_cpu_bench.py}
QLORA=${QLORA:-.build/release/qlora}
STEPS=${STEPS:-4}
SHAPES=${SHAPES:-"1x512 4x256"}
CKPT=${CKPT:-both}
OUT=${OUT:-$(mktemp -t cpu-bench-vs-hf.XXXXXX.jsonl)}
[ -x "$QLORA" ] || { echo "no $QLORA: build it first (swift build -c release)" >&2; exit 1; }
[ -f "$HF_BENCH" ] || { echo "no $HF_BENCH (set HF_BENCH)" >&2; exit 1; }
case $CKPT in both) CKPTS="off on";; off|on) CKPTS=$CKPT;; *) echo "CKPT: both, off or on" >&2; exit 1;; esac
: > "$OUT"

for round in $(seq "$ROUNDS"); do
  for shape in $SHAPES; do
    batch=${shape%x*} seq=${shape#*x}
    for ckpt in $CKPTS; do
      qflag=$([ "$ckpt" = off ] && echo --no-ckpt || true)
      hflag=$([ "$ckpt" = on ] && echo --ckpt || true)
      for dtype in fp32 bf16; do
        "$QLORA" bench --device cpu --shape smollm2-135m --targets all --batch "$batch" --seq "$seq" $qflag \
          --compute-dtype "$dtype" --lora-dropout 0.05 --steps "$STEPS" --warmup 2 2>/dev/null | tee -a "$OUT"
      done
      "$PYTHON" "$HF_BENCH" --batch "$batch" --seq "$seq" --steps "$STEPS" --targets all $hflag 2>/dev/null \
        | tail -1 | tee -a "$OUT"
    done
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
def side(r):
    return ("qlora " + r["compute_dtype"]) if r["system"].startswith("qlora") else "python"
def rss(r):
    return r.get("peak_alloc_gib", r.get("peak_rss_gib"))
print(f"\n{len(rows)} runs ({sys.argv[1]}); per shape, each side's best configuration (median over rounds):")
for shape in sorted({(r["batch"], r["seq"]) for r in rows}):
    best = {}
    for s in sorted({side(r) for r in rows}):
        runs = [r for r in rows if side(r) == s and (r["batch"], r["seq"]) == shape]
        configs = {}
        for r in runs: configs.setdefault(r["grad_ckpt"], []).append(r)
        ckpt, chosen = max(configs.items(), key=lambda kv: statistics.median(x["tokens_per_s"] for x in kv[1]))
        best[s] = (statistics.median(x["tokens_per_s"] for x in chosen), max(rss(x) for x in chosen), ckpt,
                   [x["tokens_per_s"] for x in chosen])
    py = best.get("python")
    for s, (tps, peak, ckpt, all_tps) in best.items():
        ratio = f", {tps / py[0]:.2f}× Python, peak RSS {peak / py[1]:.2f}× Python's" if py and s != "python" else ""
        print(f"  {shape[0]} × {shape[1]} {s:10} {tps:7.1f} tokens/s (checkpointing {'on' if ckpt else 'off'}; "
              f"runs {all_tps}), peak RSS {peak:.2f} GiB{ratio}")
PY
