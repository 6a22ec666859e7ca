"""Reference data from the real bitsandbytes on an NVIDIA GPU (run on the device machine, bitsandbytes carried as
a wheel). Writes into OUT:

- rcp_delta.bin: for every float32 mantissa m (x = 1.m in [1, 2)), the signed difference in units in the last place
  between the GPU's approximate reciprocal (`rcp.approx.ftz.f32`, what `1.0f / x` compiles to under nvcc's
  --use_fast_math, with which bitsandbytes is built) and the correctly rounded 1/x; int8, 2^23 entries.
- bnb-extra.safetensors: bitsandbytes' quantize_4bit / dequantize_4bit on bf16, f16 and f32 inputs for every
  blocksize, NF4 and FP4, with and without double quantization, and quantize_blockwise (8-bit) on f32 inputs.
- report.json: checks (fast-math division equals rcp.approx; the reciprocal scales exactly with the exponent).

Usage: python3 scripts/bnb_reference.py OUT
"""
import json, sys
import numpy as np
import cupy as cp
import torch
import bitsandbytes.functional as F
from safetensors.torch import save_file

out = sys.argv[1]
report = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0)}

source = r'''
extern "C" __global__ void recips(const float* x, float* approx, float* exact, float* fastdiv, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i];
        float r;
        asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(v));
        approx[i] = r;
        exact[i] = __frcp_rn(v);
        fastdiv[i] = 1.0f / v;
    }
}
'''
kernel = cp.RawModule(code=source, options=("--use_fast_math",)).get_function("recips")

def recips(x):
    n = x.size
    xs = cp.asarray(x)
    a, e, d = cp.empty_like(xs), cp.empty_like(xs), cp.empty_like(xs)
    kernel(((n + 255) // 256,), (256,), (xs, a, e, d, np.int32(n)))
    return cp.asnumpy(a), cp.asnumpy(e), cp.asnumpy(d)

mant = np.arange(1 << 23, dtype=np.uint32)
x = (mant | np.uint32(0x3F800000)).view(np.float32)
a, e, d = recips(x)
delta = a.view(np.int32).astype(np.int64) - e.view(np.int32).astype(np.int64)
report["delta_values"] = {int(k): int(v) for k, v in zip(*np.unique(delta, return_counts=True))}
report["fastmath_div_equals_rcp_approx"] = bool((a.view(np.uint32) == d.view(np.uint32)).all())
delta.astype(np.int8).tofile(out + "/rcp_delta.bin")
scaling = {}
for k in (-120, -60, -10, -1, 3, 20, 100, 125):
    xk = (x.astype(np.float64) * 2.0 ** k).astype(np.float32)
    ak, _, _ = recips(xk)
    expected = (a.astype(np.float64) * 2.0 ** (-k)).astype(np.float32)
    scaling[k] = int((ak.view(np.uint32) != expected.view(np.uint32)).sum())
report["exponent_scaling_mismatches"] = scaling

torch.manual_seed(0)
tensors = {}
n = 4099
base = torch.randn(n) * 0.02
# Values built to land exactly on FP4 / NF4 thresholds after scaling (ties are where rounding rules show).
ties = torch.tensor([7 / 24, 7 / 12, 5 / 6, 5 / 12, 11 / 128, 5 / 24, 1 / 384, 0.5, 0.25]) * 0.03
base[:ties.numel()] = ties
base[ties.numel():2 * ties.numel()] = -ties
base[64:128] = 0  # an all-zero block at blocksize 32 and 64
for dtype_name, dtype in (("bf16", torch.bfloat16), ("f16", torch.float16), ("f32", torch.float32)):
    inp = base.to(dtype).cuda()
    if dtype == torch.float32:
        inp = inp * (1 + 1e-3 * torch.randn(n, device="cuda"))  # mantissas beyond 16-bit formats
    tensors[f"{dtype_name}.input"] = inp.cpu()
    for bs in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        for qt in ("nf4", "fp4"):
            for dq in (False, True):
                key = f"{dtype_name}.{qt}.bs{bs}.dq{int(dq)}"
                try:
                    packed, st = F.quantize_4bit(inp, blocksize=bs, quant_type=qt, compress_statistics=dq)
                except Exception as ex:  # a blocksize this build does not offer
                    report.setdefault("unsupported", []).append(f"{key}: {ex}")
                    continue
                deq = F.dequantize_4bit(packed, st)
                tensors[key + ".packed"] = packed.cpu().contiguous()
                tensors[key + ".absmax"] = st.absmax.cpu().contiguous()
                tensors[key + ".dequant"] = deq.cpu().contiguous()
                if dq:
                    tensors[key + ".offset"] = st.offset.reshape(1).cpu()
                    tensors[key + ".nested_absmax"] = st.state2.absmax.cpu().contiguous()
q_in = (torch.randn(65536) * torch.rand(65536) ** 3).cuda()
codes, st8 = F.quantize_blockwise(q_in, blocksize=256)
tensors["q8.input"] = q_in.cpu()
tensors["q8.codes"] = codes.cpu()
tensors["q8.absmax"] = st8.absmax.cpu()
tensors["q8.code"] = st8.code.cpu()
save_file(tensors, out + "/bnb-extra.safetensors", metadata={"bitsandbytes": "0.50.2", "torch": torch.__version__})
json.dump(report, open(out + "/report.json", "w"), indent=1)
print(json.dumps(report, indent=1))
