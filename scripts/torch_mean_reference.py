"""How torch.mean of a contiguous float32 CUDA tensor associates its additions (bitsandbytes' double quantization
takes the mean of the absmax values on the GPU, so a bit-exact port must add in the same order).

Emulates torch's reduction kernel (Reduce.cuh: block/vector configuration, per-thread accumulators, shared-memory
and warp trees, the cross-block global reduction, then the multiply by 1/n) in numpy float32 and compares it with
torch on the GPU for many sizes. Usage (on the device machine): python3 scripts/torch_mean_reference.py OUT
"""
import json, sys
import numpy as np

f32 = np.float32

def last_pow2(n):
    p = 1
    while p * 2 <= n:
        p *= 2
    return p

def div_up(a, b):
    return (a + b - 1) // b

def tree(vals, width, descending=True):
    """Lane 0 of a shared-memory / warp tree over `width` lanes (width a power of two)."""
    v = list(vals) + [f32(0)] * (width - len(vals))
    offsets = []
    o = width // 2
    while o > 0:
        offsets.append(o)
        o //= 2
    if not descending:
        offsets = offsets[::-1]
    for off in offsets:
        v = [f32(v[t] + v[t + off]) if t + off < width else v[t] for t in range(width)]
    return v[0]

def block_x_reduce(vals, bw, warp_descending=True):
    v = list(vals)
    if bw > 32:
        off = bw // 2
        while off >= 32:
            v = [f32(v[t] + v[t + off]) if t < off else v[t] for t in range(bw)]
            off //= 2
        v = v[:32]
        width = 32
    else:
        width = bw
    return tree(v, width, warp_descending)

def emulate_mean(a, sms=132, threads_per_sm=2048, warp_descending=True):
    a = np.asarray(a, dtype=np.float32)
    n = a.size
    vec = 4
    vectorize = n > 128
    dim0 = n // vec if vectorize else n
    max_threads = 512
    dim0_pow2 = last_pow2(dim0) if dim0 < max_threads else max_threads
    bw = min(dim0_pow2, 32)
    bh = 1
    bw = min(dim0_pow2, max_threads // bh)
    step = bw
    split_y = div_up(n, step) >= bh * 16 or div_up(n, step) >= 256
    ctas = 1
    if split_y and div_up(n, step) >= 256:
        target = sms * (threads_per_sm // (bw * bh))
        vpt = div_up(n, step)
        ctas = max(min(target, div_up(vpt, 16)), div_up(vpt, 256))
    stride = bw * ctas
    partials = []
    for c in range(ctas):
        thread_vals = []
        for t in range(bw):
            acc = [f32(0)] * 4
            idx = t + c * bw
            if vectorize:
                while idx * vec + vec - 1 < n:
                    for i in range(4):
                        acc[i] = f32(acc[i] + a[idx * vec + i])
                    idx += stride
                tail_start = n - n % vec
                if c == 0 and tail_start + t < n:
                    acc[0] = f32(acc[0] + a[tail_start + t])
            else:
                while idx + 3 * stride < n:
                    for i in range(4):
                        acc[i] = f32(acc[i] + a[idx + i * stride])
                    idx += 4 * stride
                for i in range(4):
                    if idx >= n:
                        break
                    acc[i] = f32(acc[i] + a[idx])
                    idx += stride
            s = acc[0]
            for i in range(1, 4):
                s = f32(s + acc[i])
            thread_vals.append(s)
        partials.append(block_x_reduce(thread_vals, bw, warp_descending))
    if ctas > 1:
        vals = []
        for t in range(bw):
            s = f32(0)
            for k in range(t, ctas, bw):
                s = f32(s + partials[k])
            vals.append(s)
        total = block_x_reduce(vals, bw, warp_descending)
    else:
        total = partials[0]
    return f32(total * (f32(1) / f32(n)))

if __name__ == "__main__":
    import torch
    out = sys.argv[1]
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    tps = props.max_threads_per_multi_processor
    rng = np.random.default_rng(0)
    sizes = list(range(1, 300)) + [383, 384, 385, 511, 512, 513, 1000, 1023, 1024, 1025, 1536, 1920, 4096, 5184,
                                   8191, 13824, 20000, 65536, 100003, 262144]
    sizes += sorted(set(int(x) for x in rng.integers(300, 300000, size=40)))
    results = {"sms": sms, "threads_per_sm": tps, "cases": []}
    bad = {"desc": 0, "asc": 0, "exact": 0}
    for n in sizes:
        a = (rng.random(n, dtype=np.float32) * f32(0.05)).astype(np.float32)
        got = torch.from_numpy(a).cuda().mean().item()
        got = f32(got)
        d = emulate_mean(a, sms, tps, True)
        asc = emulate_mean(a, sms, tps, False) if n < 5000 else d
        ex = f32(f32(a.astype(np.float64).sum()) * (f32(1) / f32(n)))
        bad["desc"] += int(d != got); bad["asc"] += int(asc != got); bad["exact"] += int(ex != got)
        results["cases"].append([n, float(got), bool(d == got), bool(asc == got), bool(ex == got)])
    results["mismatches"] = bad
    json.dump(results, open(out + "/torch_mean.json", "w"))
    print(json.dumps({"sms": sms, "tps": tps, "mismatches": bad, "n": len(sizes)}))
    print([c for c in results["cases"] if not c[2]][:20])
