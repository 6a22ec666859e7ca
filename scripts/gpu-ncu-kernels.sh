#!/usr/bin/env bash
# Hardware counters (Nsight Compute) for the step's own kernels on the llama2-7b shape (2 layers: the same kernel
# shapes, a short run): for each kernel named below, one launch after the warm-up steps, with its speed of light
# (compute and memory throughput), occupancy, launch statistics (registers, shared memory) and warp stall reasons.
# Usage: QLORA=path/to/qlora bash scripts/gpu-ncu-kernels.sh [OUT]   (KERNELS="lora_dx rope" to choose)
set -uo pipefail
Q=${QLORA:-.build/release/qlora}
OUT=${1:-runs/gpu-ncu}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for k in ${KERNELS:-lora_dx lora_down lora_down_grad_mma lora_up_grad flash_attention_forward_wgmma_d128 \
         flash_attention_backward_wgmma_d128 dequantize_4bit rope swiglu_forward rmsnorm_forward_rows}; do
  echo "== $k"
  timeout 120 "$NCU" --clock-control none --kernel-name "$k" --launch-skip 5 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats \
    "$Q" bench --device cuda --shape llama2-7b --layers 2 --target-modules all --max-seq-length 2048 --steps 1 \
      --lora-dropout 0.05 \
      > "$OUT/$k.txt" 2>&1
  keys="Duration|DRAM Throughput|Memory Throughput|Compute \(SM\) Throughput|Registers Per|Achieved Occupancy"
  keys="$keys|Theoretical Occupancy|Block Limit|Dynamic Shared|Static Shared|Stall|Issued Warp|No Eligible"
  keys="$keys|Eligible Warps|ERR|rror"
  grep -E "$keys" "$OUT/$k.txt" | grep -v "^==PROF==" | head -30
done
