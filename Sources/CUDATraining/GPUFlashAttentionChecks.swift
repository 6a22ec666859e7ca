import CPUBackend
import CUDABackend
import Foundation

extension GPUOpChecks {
    /// Flash attention on the GPU (Kernels/flash_attention.cu) against its CPU twin and against the attention that
    /// materializes the probabilities: out, lse, dq, dk, dv on ragged lengths, grouped and plain heads, every head
    /// dim, in both activation types; the backward run twice must give the same bits (its sums in a fixed order).
    /// Packed rows (documents starting inside a tile, on a tile's first row, one-token documents) keep attention
    /// within each document.
    public mutating func flashAttention(_ c: inout Checker) throws {
        if device.architecture == "sm_90" {
            try wgmmaLayouts(&c)
            // The Hopper kernels (bf16, head dim 128) and the portable kernels they stand in for, both checked.
            let hopper = device.hopperAttention
            defer { device.hopperAttention = hopper }
            for on in [true, false] {
                device.hopperAttention = on
                let tag = on ? "wgmma" : "mma.sync"
                for (b, t, h, hkv) in [(2, 5, 9, 3), (1, 130, 8, 2), (2, 257, 9, 3), (1, 600, 4, 4)] {
                    try flashAttentionCase(&c, dtype: .bf16, tolerance: 1e-2, batch: b, tokens: t, heads: h,
                                           kvHeads: hkv, headDim: 128, kernels: tag)
                }
                try flashAttentionCase(&c, dtype: .bf16, tolerance: 1e-2, batch: 3, tokens: 257, heads: 4,
                                       kvHeads: 2, headDim: 128, documents: [[30, 34, 64, 1, 128], [257],
                                                                             [5, 150, 102]], kernels: tag)
            }
        }
        for dtype in [GPUDType.f32, .bf16] {
            let tol = dtype == .f32 ? 1e-5 : 1e-2
            for d in CUDADevice.flashAttentionHeadDims {
                for (b, t, h, hkv) in [(2, 5, 9, 3), (1, 37, 4, 4), (1, 130, 8, 2), (1, 257, 9, 3)] {
                    try flashAttentionCase(&c, dtype: dtype, tolerance: tol, batch: b, tokens: t, heads: h,
                                           kvHeads: hkv, headDim: d)
                }
                try flashAttentionCase(&c, dtype: dtype, tolerance: tol, batch: 3, tokens: 257, heads: 4, kvHeads: 2,
                                       headDim: d, documents: [[30, 34, 64, 1, 128], [257], [5, 150, 102]])
            }
        }
        do {
            let x = try device.allocate(2 * 3 * 16, .f32), lse = try device.allocate(2 * 3, .f32)
            try device.flashAttentionForward(x, lse: lse, q: x, k: x, v: x, batch: 1, tokens: 3, heads: 2, kvHeads: 2,
                                             headDim: 16)
            c.equal("flash attention rejects head dim 16", [false], [true])
        } catch {
            c.equal("flash attention rejects head dim 16 (\(error))", [true], [true])
        }
    }

    mutating func flashAttentionCase(_ c: inout Checker, dtype: GPUDType, tolerance tol: Double, batch b: Int,
                                     tokens t: Int, heads h: Int, kvHeads hkv: Int, headDim d: Int,
                                     documents: [[Int]]? = nil, kernels: String? = nil) throws {
        let tag = "\(dtype.rawValue) B\(b) T\(t) H\(h) Hkv\(hkv) D\(d)" + (documents == nil ? "" : " packed")
            + (kernels.map { ", " + $0 } ?? "")
        // The row-local start of each token's document.
        let starts = documents.map { rows in
            rows.flatMap { lengths in
                lengths.indices.flatMap { Array(repeating: lengths[..<$0].reduce(0, +), count: lengths[$0]) }
            }
        }
        let startsBuffer = try starts.map { try device.upload($0.map { Int32($0) }) }
        let n = b * t * h * d, nkv = b * t * hkv * d
        let (q, qb) = try put(random(n), dtype), (k, kb) = try put(random(nkv), dtype)
        let (v, vb) = try put(random(nkv), dtype), (dout, db) = try put(random(n), dtype)

        // The plain attention, and the log-sum-exp of its scores.
        var out = [Float](repeating: 0, count: n), probs: [Float] = []
        CPUOps.attentionForward(&out, &probs, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv,
                                headDim: d, starts: starts)
        var dq = [Float](repeating: 0, count: n), dk = [Float](repeating: 0, count: nkv), dv = dk
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, probs: probs, q: q, k: k, v: v, batch: b,
                                 tokens: t, heads: h, kvHeads: hkv, headDim: d, starts: starts)
        let lse = Self.logSumExp(q: q, k: k, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d, starts: starts)
        // The CPU twin.
        var tOut = [Float](repeating: 0, count: n), tLSE = [Float](repeating: 0, count: b * h * t)
        CPUOps.flashAttentionForward(&tOut, lse: &tLSE, q: q, k: k, v: v, batch: b, tokens: t, heads: h, kvHeads: hkv,
                                     headDim: d, starts: starts)
        var tdq = [Float](repeating: 0, count: n), tdk = [Float](repeating: 0, count: nkv), tdv = tdk
        CPUOps.flashAttentionBackward(dq: &tdq, dk: &tdk, dv: &tdv, dout: dout, out: tOut, lse: tLSE, q: q, k: k,
                                      v: v, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d, starts: starts)
        // The GPU.
        let ob = try device.allocate(n, dtype), lb = try device.allocate(b * h * t, .f32)
        try device.flashAttentionForward(ob, lse: lb, q: qb, k: kb, v: vb, batch: b, tokens: t, heads: h, kvHeads: hkv,
                                         headDim: d, starts: startsBuffer)
        let dqb = try device.allocate(n, dtype), dkb = try device.allocate(nkv, dtype)
        let dvb = try device.allocate(nkv, dtype)
        try device.flashAttentionBackward(dq: dqb, dk: dkb, dv: dvb, dout: db, out: ob, lse: lb, q: qb, k: kb, v: vb,
                                          batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d,
                                          starts: startsBuffer)
        let gOut = try device.download(ob), gLSE = try device.download(lb)
        let gdq = try device.download(dqb), gdk = try device.download(dkb), gdv = try device.download(dvb)
        for (what, gpu, twin, plain) in [("out", gOut, tOut, out), ("lse", gLSE, tLSE, lse), ("dq", gdq, tdq, dq),
                                         ("dk", gdk, tdk, dk), ("dv", gdv, tdv, dv)] {
            c.close("flash attention \(what) \(tag) vs CPU twin", gpu, twin, tolerance: tol)
            c.close("flash attention \(what) \(tag) vs plain attention", gpu, plain, tolerance: tol)
        }
        if t == 257 {
            try device.flashAttentionBackward(dq: dqb, dk: dkb, dv: dvb, dout: db, out: ob, lse: lb, q: qb, k: kb,
                                              v: vb, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d,
                                              starts: startsBuffer)
            let again = try device.download(dqb) + device.download(dkb) + device.download(dvb)
            c.equal("flash attention backward \(tag) twice, same bits", again.map { $0.bitPattern },
                    (gdq + gdk + gdv).map { $0.bitPattern })
            // RoPE undone inside the kernels: dq and dk as the CPU twin's followed by CPUOps.rope's inverse, at
            // the positions packed documents restart (each token's offset from its document start) or 0 ..< T.
            let positions = starts.map { s in s.indices.map { $0 % t - s[$0] } }
            var cosT = [Float](repeating: 0, count: t * d), sinT = cosT
            for p in 0..<t {
                for i in 0..<d {
                    let angle = Double(p) * Foundation.pow(10000, -Double(2 * (i % (d / 2))) / Double(d))
                    cosT[p * d + i] = Float(Foundation.cos(angle)); sinT[p * d + i] = Float(Foundation.sin(angle))
                }
            }
            let positionsBuffer = try positions.map { try device.upload($0.map { Int32($0) }) }
            try device.flashAttentionBackward(dq: dqb, dk: dkb, dv: dvb, dout: db, out: ob, lse: lb, q: qb, k: kb,
                                              v: vb, batch: b, tokens: t, heads: h, kvHeads: hkv, headDim: d,
                                              starts: startsBuffer,
                                              unrotating: (try device.upload(cosT), try device.upload(sinT),
                                                           positionsBuffer))
            var rdq = tdq, rdk = tdk
            CPUOps.rope(&rdq, cos: cosT, sin: sinT, batch: b, tokens: t, heads: h, headDim: d, inverse: true,
                        positions: positions)
            CPUOps.rope(&rdk, cos: cosT, sin: sinT, batch: b, tokens: t, heads: hkv, headDim: d, inverse: true,
                        positions: positions)
            c.close("flash attention dq \(tag), RoPE undone, vs CPU twin + inverse RoPE", try device.download(dqb),
                    rdq, tolerance: tol)
            c.close("flash attention dk \(tag), RoPE undone, vs CPU twin + inverse RoPE", try device.download(dkb),
                    rdk, tolerance: tol)
            c.equal("flash attention dv \(tag) with RoPE tables, same bits", try device.download(dvb).map {
                $0.bitPattern
            }, gdv.map { $0.bitPattern })
        }
    }

    /// flash_attention_sm90.cu's staging and wgmma descriptors on their own: s = a·bkᵀ (both operands K-major in
    /// shared memory) and o = a[:, 0..<64]·bv (a from registers, bv MN-major) against the CPU's products of the same
    /// bf16 values. Should the MN-major offsets the kernels use fail, the swapped pair is tried and reported, so
    /// that one run says which layout the hardware reads.
    mutating func wgmmaLayouts(_ c: inout Checker) throws {
        let (a, ab) = try put(random(64 * 128), .bf16), (bk, bkb) = try put(random(64 * 128), .bf16)
        let (bv, bvb) = try put(random(64 * 128), .bf16)
        var s = [Float](repeating: 0, count: 64 * 64), o = [Float](repeating: 0, count: 64 * 128)
        for i in 0..<64 {
            for j in 0..<64 {
                var dot = 0.0
                for x in 0..<128 { dot += Double(a[i * 128 + x]) * Double(bk[j * 128 + x]) }
                s[i * 64 + j] = Float(dot)
            }
            for n in 0..<128 {
                var dot = 0.0
                for x in 0..<64 { dot += Double(a[i * 128 + x]) * Double(bv[x * 128 + n]) }
                o[i * 128 + n] = Float(dot)
            }
        }
        let sb = try device.allocate(64 * 64, .f32), ob = try device.allocate(64 * 128, .f32)
        func maxError(_ x: [Float], _ y: [Float]) -> Float { zip(x, y).map { abs($0 - $1) }.max() ?? 0 }
        try device.wgmmaProbe(s: sb, o: ob, a: ab, bk: bkb, bv: bvb, lbo: 8192, sbo: 1024)
        let gs = try device.download(sb), go = try device.download(ob)
        c.close("wgmma s = a·bkᵀ (K-major shared operands, 128-byte swizzle)", gs, s, tolerance: 1e-4)
        c.close("wgmma o = a·bv (A from registers, B MN-major: LBO 8192, SBO 1024)", go, o, tolerance: 1e-4)
        if maxError(go, o) > 1e-3 {
            try device.wgmmaProbe(s: sb, o: ob, a: ab, bk: bkb, bv: bvb, lbo: 1024, sbo: 8192)
            print(String(format: "note: wgmma MN-major with LBO 1024, SBO 8192: max |error| %.3g; with 8192, 1024: " +
                         "%.3g", maxError(try device.download(ob), o), maxError(go, o)))
        }
    }

    /// log Σ_{start ≤ j ≤ i} exp(q_i·k_j / √D) per (b, h, i), in Double.
    static func logSumExp(q: [Float], k: [Float], batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                          headDim: Int, starts: [Int]? = nil) -> [Float] {
        let T = tokens, D = headDim, group = heads / kvHeads
        var lse = [Float](repeating: 0, count: batch * heads * T)
        var s = [Double](repeating: 0, count: T)
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<T {
                    let qi = ((b * T + i) * heads + h) * D, first = starts?[b * T + i] ?? 0
                    for j in first...i {
                        let kj = ((b * T + j) * kvHeads + h / group) * D
                        var dot = 0.0
                        for x in 0..<D { dot += Double(q[qi + x]) * Double(k[kj + x]) }
                        s[j] = dot / Double(D).squareRoot()
                    }
                    let m = s[first...i].max()!
                    let sum = s[first...i].reduce(0.0) { $0 + Foundation.exp($1 - m) }
                    lse[(b * heads + h) * T + i] = Float(m + Foundation.log(sum))
                }
            }
        }
        return lse
    }
}
