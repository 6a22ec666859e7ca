#!/usr/bin/env python3
"""Device check of Sources/CUDABackend/Kernels/flash_attention.cu, outside the Swift build.

Compiles the kernel file (common.cuh inlined) with CuPy's RawModule in both activation types, runs forward and
backward on random inputs and compares them with PyTorch in float64 (scaled_dot_product_attention, is_causal=True,
the KV heads repeated for grouped-query attention, autograd for the gradients, log-sum-exp of the masked scores),
printing the relative error ‖a − e‖ / ‖e‖ and the worst |a − e| of out, lse, dq, dk, dv per case. Then times the
bf16 kernels on llama2-7b's attention (B=4, T=2048, H=32, D=128) beside torch's own flash and cuDNN attention.

FLOPs counted as usual for causal attention: forward = 2 products × 2·T²·D per (b, h), halved by the mask
= 2·B·H·T²·D; backward = 5 products = 2.5 × forward = 5·B·H·T²·D (whatever the kernels recompute).

    PYTHONUNBUFFERED=1 python3 scripts/flash_attention_device_check.py [--quick]
"""
import math
import os
import sys

import cupy as cp
import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "Sources", "CUDABackend", "Kernels")
DEV = torch.device("cuda")


def kernel_source():
    text = open(os.path.join(KERNELS, "flash_attention.cu"), encoding="utf-8").read()
    header = open(os.path.join(KERNELS, "common.cuh"), encoding="utf-8").read()
    return text.replace('#include "common.cuh"', header)


def ptr(t):
    return np.uint64(t.data_ptr())


class Flash:
    """The kernels of one build (bf16 or float32, plus extra -D defines) and launchers mirroring the Swift ones."""

    def __init__(self, bf16, defines=()):
        self.bf16 = bf16
        self.kv_rows = int(dict(d.split("=") for d in defines).get("KV_ROWS", 64))
        self.fwd_rows = 64 * int(dict(d.split("=") for d in defines).get("FA_FWD_GROUPS", 2)) if bf16 else 64
        self.threads = 128 if bf16 else 256
        base = ["-DQLORA_BF16=%d" % (1 if bf16 else 0), "--std=c++17", "--fmad=true"] + ["-D" + d for d in defines]
        source, error = kernel_source(), None
        for arch in (["--gpu-architecture=sm_90"], []):   # CuPy may add its own -arch; then use that one
            try:
                self.module = cp.RawModule(code=source, options=tuple(base + arch))
                self.module.get_function("flash_attention_backward_dot")
                self.options = base + arch
                break
            except Exception as e:   # noqa: BLE001 - report the last compile error
                error = e
        else:
            raise error
        self.functions = {}

    def shared_bytes(self, kind, d):
        if self.bf16:
            pitch = d + 8
            kv = (128 + 4 * self.kv_rows) * pitch * 2 + 16 * self.kv_rows
            return {"fwd": (self.fwd_rows + 128) * pitch * 2, "kv": kv, "q": 768 * pitch}[kind]
        pitch = d + 1
        kv = 4 * ((128 + 2 * self.kv_rows) * pitch + 128 * (self.kv_rows + 1))
        return {"fwd": 4 * (192 * pitch + 64 * 65), "kv": kv, "q": 4 * (256 * pitch + 64 * 65)}[kind]

    def function(self, name, shared):
        f = self.functions.get(name)
        if f is None:
            f = self.module.get_function(name)
            if shared > 48 * 1024:
                f.max_dynamic_shared_size_bytes = shared
            self.functions[name] = f
        return f

    def describe(self, d):
        rows = []
        for kind, name in (("fwd", "forward"), ("kv", "backward_kv"), ("q", "backward_q")):
            f = self.function("flash_attention_%s_d%d" % (name, d), self.shared_bytes(kind, d))
            rows.append("%s: %d regs, %d B local, %d B shared" % (name, f.num_regs, f.local_size_bytes,
                                                                  self.shared_bytes(kind, d)))
        return "; ".join(rows)

    def forward(self, q, k, v, out=None, lse=None):
        b, t, h, d = q.shape
        hkv = k.shape[2]
        out = torch.full_like(q, float("nan")) if out is None else out
        lse = torch.full((b, h, t), float("nan"), dtype=torch.float32, device=DEV) if lse is None else lse
        shared = self.shared_bytes("fwd", d)
        self.function("flash_attention_forward_d%d" % d, shared)(
            ((t + self.fwd_rows - 1) // self.fwd_rows, h, b), (self.threads,),
            (ptr(out), ptr(lse), ptr(q), ptr(k), ptr(v), np.int32(t), np.int32(h), np.int32(hkv), np.uint64(0)),
            shared_mem=shared)
        return out, lse

    def backward_dot(self, dout, out, delta):
        b, t, h, d = out.shape
        rows = b * t * h
        self.function("flash_attention_backward_dot", 0)(
            ((rows + 7) // 8,), (256,), (ptr(delta), ptr(dout), ptr(out), np.int32(t), np.int32(h), np.int32(d),
                                         np.int64(rows)))

    def backward_kv(self, dk, dv, dout, lse, delta, q, k, v):
        b, t, h, d = q.shape
        hkv = k.shape[2]
        shared = self.shared_bytes("kv", d)
        self.function("flash_attention_backward_kv_d%d" % d, shared)(
            ((t + 63) // 64, hkv, b), (self.threads,),
            (ptr(dk), ptr(dv), ptr(dout), ptr(lse), ptr(delta), ptr(q), ptr(k), ptr(v), np.int32(t), np.int32(h),
             np.int32(hkv), np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0)), shared_mem=shared)

    def backward_q(self, dq, dout, lse, delta, q, k, v):
        b, t, h, d = q.shape
        hkv = k.shape[2]
        shared = self.shared_bytes("q", d)
        self.function("flash_attention_backward_q_d%d" % d, shared)(
            ((t + 63) // 64, h, b), (self.threads,),
            (ptr(dq), ptr(dout), ptr(lse), ptr(delta), ptr(q), ptr(k), ptr(v), np.int32(t), np.int32(h),
             np.int32(hkv), np.uint64(0), np.uint64(0), np.uint64(0), np.uint64(0)), shared_mem=shared)

    def backward(self, dout, out, lse, q, k, v, grads=None):
        b, t, h, d = q.shape
        if grads is None:
            grads = (torch.full_like(q, float("nan")), torch.full_like(k, float("nan")),
                     torch.full_like(v, float("nan")))
        dq, dk, dv = grads
        delta = torch.empty((b, h, t), dtype=torch.float32, device=DEV)
        self.backward_dot(dout, out, delta)
        self.backward_kv(dk, dv, dout, lse, delta, q, k, v)
        self.backward_q(dq, dout, lse, delta, q, k, v)
        return dq, dk, dv


def reference(q, k, v, dout, dtype=torch.float64):
    """out, lse, dq, dk, dv from torch: SDPA (causal) with the KV heads repeated, autograd, masked log-sum-exp."""
    b, t, h, d = q.shape
    group = h // k.shape[2]
    qd, kd, vd = (x.to(dtype).requires_grad_() for x in (q, k, v))
    qt = qd.transpose(1, 2)
    kt = kd.transpose(1, 2).repeat_interleave(group, dim=1)
    vt = vd.transpose(1, 2).repeat_interleave(group, dim=1)
    o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    o.backward(dout.to(dtype).transpose(1, 2))
    lse = None
    if t <= 1024:
        with torch.no_grad():
            s = (qt @ kt.transpose(-1, -2)) / math.sqrt(d)
            s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=DEV).triu(1), float("-inf"))
            lse = torch.logsumexp(s, dim=-1)
    return o.detach().transpose(1, 2), lse, qd.grad, kd.grad, vd.grad


def errors(a, e):
    """‖a − e‖ / ‖e‖ and max |a − e|. Where the reference vanishes (rms below 1e-4: dq and dk at T = 1, where the
    softmax has one entry), the norm of unit-rms inputs, √n, stands in for ‖e‖."""
    a, e = a.double(), e.double()
    diff = a - e
    den = e.norm().item()
    if den < 1e-4 * math.sqrt(e.numel()):
        den = math.sqrt(e.numel())
    return diff.norm().item() / max(den, 1e-30), diff.abs().max().item()


def check_case(flash, name, b, t, h, hkv, d, tol, seed):
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if flash.bf16 else torch.float32
    q = torch.randn(b, t, h, d, device=DEV).to(dtype)
    k = torch.randn(b, t, hkv, d, device=DEV).to(dtype)
    v = torch.randn(b, t, hkv, d, device=DEV).to(dtype)
    dout = torch.randn(b, t, h, d, device=DEV).to(dtype)
    out, lse = flash.forward(q, k, v)
    dq, dk, dv = flash.backward(dout, out, lse, q, k, v)
    torch.cuda.synchronize()
    ref = reference(q, k, v, dout)
    worst, parts = 0.0, []
    for what, got, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, dq, dk, dv), ref):
        if want is None:
            continue
        rel, mx = errors(got, want)
        rel = rel if rel == rel else float("inf")   # NaN: an element never written
        worst = max(worst, rel)
        parts.append("%s %.2e (max %.1e)" % (what, rel, mx))
    ok = worst <= tol
    print("%s %-10s B%d T%-4d H%d Hkv%d D%-3d  %s" % ("ok  " if ok else "FAIL", name, b, t, h, hkv, d,
                                                      ", ".join(parts)))
    return ok


def timed(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def benchmark(flash, label, b=4, t=2048, h=32, hkv=32, d=128, torch_too=True):
    torch.manual_seed(1)
    dtype = torch.bfloat16 if flash.bf16 else torch.float32
    q = torch.randn(b, t, h, d, device=DEV, dtype=dtype)
    k = torch.randn(b, t, hkv, d, device=DEV, dtype=dtype)
    v = torch.randn(b, t, hkv, d, device=DEV, dtype=dtype)
    dout = torch.randn(b, t, h, d, device=DEV, dtype=dtype)
    fwd_flops = 2.0 * b * h * t * t * d
    bwd_flops = 2.5 * fwd_flops
    out, lse = flash.forward(q, k, v)
    grads = flash.backward(dout, out, lse, q, k, v)
    delta = torch.empty((b, h, t), dtype=torch.float32, device=DEV)
    flash.backward_dot(dout, out, delta)
    tf = timed(lambda: flash.forward(q, k, v, out, lse))
    tb = timed(lambda: flash.backward(dout, out, lse, q, k, v, grads))
    tdot = timed(lambda: flash.backward_dot(dout, out, delta))
    tkv = timed(lambda: flash.backward_kv(grads[1], grads[2], dout, lse, delta, q, k, v))
    tq = timed(lambda: flash.backward_q(grads[0], dout, lse, delta, q, k, v))
    print("%-12s B%d T%d H%d D%d: forward %.3f ms (%.0f TFLOP/s), backward %.3f ms (%.0f TFLOP/s; dot %.3f, kv %.3f, "
          "q %.3f ms), total %.3f ms" % (label, b, t, h, d, tf, fwd_flops / tf / 1e9, tb, bwd_flops / tb / 1e9, tdot,
                                         tkv, tq, tf + tb))
    if not torch_too:
        return
    # Accuracy at this size against torch in float32 (bf16 inputs upcast).
    ref = reference(q, k, v, dout, dtype=torch.float32)
    print("   vs torch float32: " + ", ".join("%s %.2e" % (w, errors(g, r)[0]) for w, g, r in
                                               zip(("out", "dq", "dk", "dv"), (out,) + tuple(grads),
                                                   (ref[0],) + tuple(ref[2:]))))
    d1, d2 = flash.backward(dout, out, lse, q, k, v), flash.backward(dout, out, lse, q, k, v)
    same = all(torch.equal(x, y) for x, y in zip(d1, d2))
    print("   backward twice, same bits: %s" % same)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError as e:
        print("   torch has no torch.nn.attention (%s)" % e)
        return
    qt, kt, vt = (x.transpose(1, 2).detach().requires_grad_() for x in (q, k, v))
    dt = dout.transpose(1, 2)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel(backend):
                with torch.no_grad():
                    f_ms = timed(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True))
                o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
                b_ms = timed(lambda: torch.autograd.grad(o, (qt, kt, vt), dt, retain_graph=True))
            print("   torch %-16s forward %.3f ms (%.0f TFLOP/s), backward %.3f ms (%.0f TFLOP/s)" % (
                backend.name, f_ms, fwd_flops / f_ms / 1e9, b_ms, bwd_flops / b_ms / 1e9))
        except Exception as e:   # noqa: BLE001 - a backend torch lacks here
            print("   torch %s: not available (%s)" % (backend.name, str(e).splitlines()[0][:100]))


# Variants of the bf16 build compared by --variants (-D defines; the first is the file's defaults).
VARIANTS = [("bf16", []), ("bf16 fwd16", ["FA_FWD_GROUPS=1"]), ("bf16 fwd-b1", ["FA_FWD_BLOCKS=1"])]


def main():
    quick = "--quick" in sys.argv
    if "--variants" in sys.argv:
        return variants()
    print("%s; torch %s, cupy %s, CUDA %s" % (torch.cuda.get_device_name(), torch.__version__, cp.__version__,
                                             cp.cuda.runtime.runtimeGetVersion()))
    builds = [("f32", Flash(False), 1e-5), ("bf16-plain", Flash(True, ["FA_PLAIN_FRAGMENTS=1"]), 1e-2),
              ("bf16", Flash(True), 1e-2)]
    for name, flash, _ in builds:
        print("%s build (%s): %s" % (name, " ".join(flash.options), flash.describe(128)))
    shapes = [(1, 1, 2, 1), (2, 5, 9, 3), (1, 37, 4, 4), (1, 130, 8, 2), (1, 257, 9, 3), (2, 700, 4, 1)]
    failures, seed = 0, 0
    for name, flash, tol in builds:
        for d in (32, 64, 96, 128):
            for (b, t, h, hkv) in shapes:
                seed += 1
                try:
                    failures += 0 if check_case(flash, name, b, t, h, hkv, d, tol, seed) else 1
                except Exception as e:   # noqa: BLE001 - report and go on while the context lives
                    failures += 1
                    print("FAIL %-10s B%d T%d H%d Hkv%d D%d: %s" % (name, b, t, h, hkv, d, e))
    print("%d failing cases" % failures)
    benchmark(builds[2][1], "bf16")
    if not quick:
        benchmark(builds[1][1], "bf16-plain", torch_too=False)
        benchmark(builds[0][1], "f32", b=1, h=8, hkv=8, torch_too=False)
    return 1 if failures else 0


def variants():
    print("%s; torch %s, cupy %s" % (torch.cuda.get_device_name(), torch.__version__, cp.__version__))
    shapes = [(1, 1, 2, 1), (2, 5, 9, 3), (1, 130, 8, 2), (2, 700, 4, 1)]
    failures, seed, built = 0, 100, []
    for name, defines in [("f32 kv32", ["KV_ROWS=32"])] + VARIANTS:
        flash = Flash(not name.startswith("f32"), defines)
        print("%s (%s): %s" % (name, " ".join(flash.options), flash.describe(128)))
        for d in (32, 64, 96, 128):
            for (b, t, h, hkv) in shapes:
                seed += 1
                try:
                    ok = check_case(flash, name, b, t, h, hkv, d, 1e-2 if flash.bf16 else 1e-5, seed)
                    failures += 0 if ok else 1
                except Exception as e:   # noqa: BLE001
                    failures += 1
                    print("FAIL %s B%d T%d H%d Hkv%d D%d: %s" % (name, b, t, h, hkv, d, e))
        if flash.bf16:
            built.append((name, flash))
    print("%d failing cases" % failures)
    for name, flash in built:
        benchmark(flash, name, torch_too=False)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
