import CPUBackend
import CUDABackend
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training

/// Counts and prints checks: |a − e| as the relative error ‖a − e‖ / ‖e‖ against a tolerance.
public struct Checker {
    public init() {}
    public var passed = 0, failures = 0

    public mutating func close(_ name: String, _ actual: [Float], _ expected: [Float], tolerance: Double) {
        guard actual.count == expected.count else {
            print("FAIL  \(name): \(actual.count) values, expected \(expected.count)"); failures += 1; return
        }
        var num = 0.0, den = 0.0, worst = 0.0, worstAt = 0
        for i in actual.indices {
            let d = Double(actual[i]) - Double(expected[i])
            num += d * d; den += Double(expected[i]) * Double(expected[i])
            if !(abs(d) <= worst) { worst = abs(d); worstAt = i }
        }
        let rel = (num / max(den, 1e-30)).squareRoot()
        let ok = rel <= tolerance
        print(String(format: "%@  %@: relative error %.3g (tolerance %.0e); worst |Δ| %.3g at %d (%g vs %g)",
                     ok ? "ok  " : "FAIL", name, rel, tolerance, worst, worstAt,
                     actual.isEmpty ? 0 : actual[worstAt], expected.isEmpty ? 0 : expected[worstAt]))
        if ok { passed += 1 } else { failures += 1 }
    }

    public mutating func scalar(_ name: String, _ actual: Double, _ expected: Double, tolerance: Double) {
        let ok = abs(actual - expected) <= tolerance
        print(String(format: "%@  %@: %.7f vs %.7f (|Δ| %.2g, tolerance %.0e)", ok ? "ok  " : "FAIL", name, actual,
                     expected, abs(actual - expected), tolerance))
        if ok { passed += 1 } else { failures += 1 }
    }

    /// A condition that the name describes.
    public mutating func check(_ name: String, _ ok: Bool) {
        print("\(ok ? "ok  " : "FAIL")  \(name)")
        if ok { passed += 1 } else { failures += 1 }
    }

    public mutating func equal<T: Equatable>(_ name: String, _ actual: [T], _ expected: [T]) {
        let same = actual.count == expected.count ? zip(actual, expected).filter { $0 == $1 }.count : -1
        let ok = same == expected.count
        print("\(ok ? "ok  " : "FAIL")  \(name): \(same)/\(expected.count) equal")
        if ok { passed += 1 } else { failures += 1 }
    }
}

/// GPU ops against their CPU twins (`qlora check-cuda`, and `GPUTests` where a GPU is present).
public struct GPUOpChecks {
    let device: CUDADevice
    var rng = SeededGenerator(seed: 42)

    public init(device: CUDADevice) { self.device = device }

    mutating func random(_ n: Int, _ scale: Float = 1) -> [Float] { (0..<n).map { _ in (rng.nextUniform() * 2 - 1) * scale } }

    /// Uploads in `dtype`; the CPU twin sees the same (rounded) values.
    func put(_ v: [Float], _ dtype: GPUDType) throws -> ([Float], DeviceBuffer) {
        let b = try device.allocate(v.count, dtype)
        try device.copy(v, to: b)
        return (try device.download(b), b)
    }

    public mutating func run(_ c: inout Checker) throws {
        for dtype in [GPUDType.f32, .bf16] {
            let tol = dtype == .f32 ? 1e-5 : 1e-2
            let tag = dtype.rawValue
            // RMSNorm
            // bf16: both kernels (warp per row where it applies: widths that are multiples of 8 up to 4,096).
            for (rows, width) in [(7, 576), (33, 4096), (5, 100), (9, 1032), (3, 4104)] {
                for rowKernel in dtype == .bf16 && width % 8 == 0 && width <= 4096 ? [true, false] : [false] {
                    let kind = dtype == .bf16 ? (rowKernel ? ", warp per row" : ", block per row") : ""
                    let (x, xb) = try put(random(rows * width, 2), dtype)
                    let w = random(width), wb = try device.upload(w)
                    let dyv = random(rows * width)
                    let (dy, dyb) = try put(dyv, dtype)
                    var y = [Float](repeating: 0, count: rows * width), rstd = [Float](repeating: 0, count: rows)
                    CPUOps.rmsNormForward(&y, &rstd, x, w, rows: rows, width: width, eps: 1e-5)
                    let yb = try device.allocate(rows * width, dtype), rb = try device.allocate(rows, .f32)
                    try device.rmsNormForward(yb, rb, xb, wb, rows: rows, width: width, eps: 1e-5,
                                              rowKernel: rowKernel)
                    c.close("rmsnorm forward \(tag) \(rows)×\(width)\(kind)", try device.download(yb), y,
                            tolerance: tol)
                    let ldy = width + 56   // rows with room beside them (for the adapters' z)
                    let wide = try put(random(rows * ldy), dtype).1   // junk the kernel must overwrite
                    try device.rmsNormForward(wide, rb, xb, wb, rows: rows, width: width, eps: 1e-5, ldy: ldy,
                                              rowKernel: rowKernel)
                    let gotWide = try device.download(wide)
                    c.close("rmsnorm forward \(tag) \(rows)×\(width), rows \(ldy) apart\(kind)",
                            (0..<(rows * width)).map { gotWide[($0 / width) * ldy + $0 % width] }, y, tolerance: tol)
                    c.equal("rmsnorm forward \(tag) \(rows)×\(width): the columns past the width zeroed\(kind)",
                            (0..<(rows * 56)).map { gotWide[($0 / 56) * ldy + width + $0 % 56].bitPattern },
                            [UInt32](repeating: 0, count: rows * 56))
                    var dx = [Float](repeating: 0, count: rows * width)
                    CPUOps.rmsNormBackward(&dx, dy, x, w, rstd, rows: rows, width: width, accumulate: false)
                    let dxb = try device.allocate(rows * width, dtype)
                    try device.rmsNormBackward(dxb, dyb, xb, wb, rb, rows: rows, width: width, accumulate: false,
                                               rowKernel: rowKernel)
                    c.close("rmsnorm backward \(tag) \(rows)×\(width)\(kind)", try device.download(dxb), dx,
                            tolerance: tol)
                    // Accumulating into dx, as the step does (the residual's gradient is already there).
                    let prior = random(rows * width)
                    let (priorRounded, accb) = try put(prior, dtype)
                    try device.rmsNormBackward(accb, dyb, xb, wb, rb, rows: rows, width: width, accumulate: true,
                                               rowKernel: rowKernel)
                    c.close("rmsnorm backward \(tag) \(rows)×\(width), accumulated\(kind)", try device.download(accb),
                            zip(priorRounded, dx).map { $0 + $1 }, tolerance: tol)
                }
            }
            // RoPE, forward and inverse
            for (b, t, h, d) in [(2, 13, 3, 64), (1, 40, 4, 128)] {
                var cfg = try JSONDecoder().decode(LlamaConfig.self, from: Data(#"{"hidden_size": \#(h * d), "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": \#(h), "vocab_size": 8, "max_position_embeddings": 64}"#.utf8))
                cfg.ropeTheta = 10000
                let (cosT, sinT) = LlamaModel.ropeTables(config: cfg, positions: t)
                let cb = try device.upload(cosT), sb = try device.upload(sinT)
                // Positions given: documents restarting at 0 (as packed rows have them).
                let restarting = (0..<(b * t)).map { ($0 % t) % 5 }
                for inverse in [false, true] {
                    for positions in [nil, restarting] {
                        var (x, xb) = try put(random(b * t * h * d), dtype)
                        CPUOps.rope(&x, cos: cosT, sin: sinT, batch: b, tokens: t, heads: h, headDim: d,
                                    inverse: inverse, positions: positions)
                        try device.rope(xb, cos: cb, sin: sb, batch: b, tokens: t, heads: h, headDim: d,
                                        inverse: inverse,
                                        positions: try positions.map { try device.upload($0.map { Int32($0) }) })
                        c.close("rope\(inverse ? " inverse" : "")\(positions == nil ? "" : " at positions") \(tag) " +
                                "\(b)×\(t)×\(h)×\(d)", try device.download(xb), x, tolerance: tol)
                    }
                }
            }
            // Attention: `flashAttention` (below), against the CPU's plain attention and its own CPU twin.
            // SwiGLU (the backward in place, as the step runs it: dgate over gate, dup over up)
            for n in [1000, 12345] {
                let (g, gb) = try put(random(n, 4), dtype), (u, ub) = try put(random(n, 2), dtype), (da, dab) = try put(random(n), dtype)
                var a = [Float](repeating: 0, count: n)
                CPUOps.swigluForward(&a, gate: g, up: u)
                let ab = try device.allocate(n, dtype)
                try device.swigluForward(ab, gate: gb, up: ub)
                c.close("swiglu forward \(tag) \(n)", try device.download(ab), a, tolerance: tol)
                var dg = a, du = a
                CPUOps.swigluBackward(dgate: &dg, dup: &du, da: da, gate: g, up: u)
                try device.swigluBackward(dgate: gb, dup: ub, da: dab, gate: gb, up: ub)
                c.close("swiglu backward dgate (in place) \(tag) \(n)", try device.download(gb), dg, tolerance: tol)
                c.close("swiglu backward dup (in place) \(tag) \(n)", try device.download(ub), du, tolerance: tol)
            }
            // A shape's second product times cuBLASLt's candidate algorithms (CUDADevice.tune) and may switch to a
            // faster one: its result must be bit for bit the first call's, accumulating in place (beta 1) too
            do {
                let (n, inF, outF) = (2048, 1536, 2304)
                let (_, xb) = try put(random(n * inF), dtype), (_, wb) = try put(random(outF * inF, 0.1), dtype)
                let (y0, yb) = try put(random(n * outF), dtype)
                var results: [[UInt32]] = []
                for _ in 0..<3 {
                    try device.copy(y0, to: yb)
                    try device.gemm(m: n, n: outF, k: inF, a: xb, lda: inF, b: wb, ldb: inF, transB: true, c: yb,
                                    ldc: outF, beta: 1)
                    results.append(try device.download(yb).map { $0.bitPattern })
                }
                let label = "linear forward \(tag) \(n)×\(inF)→\(outF) += in place"
                c.equal("\(label): the timed call's result", results[1], results[0])
                c.equal("\(label): after timing", results[2], results[0])
            }
            // Linear products through cuBLASLt
            for (n, inF, outF) in [(37, 96, 130), (128, 576, 192), (3, 17, 5)] {
                let (x, xb) = try put(random(n * inF), dtype), (w, wb) = try put(random(outF * inF, 0.1), dtype)
                let (dy, dyb) = try put(random(n * outF), dtype)
                var y = [Float](repeating: 0, count: n * outF)
                CPUOps.linearForward(&y, x, w, rows: n, inFeatures: inF, outFeatures: outF)
                let yb = try device.allocate(n * outF, dtype)
                try device.gemm(m: n, n: outF, k: inF, a: xb, lda: inF, b: wb, ldb: inF, transB: true, c: yb, ldc: outF)
                c.close("linear forward \(tag) \(n)×\(inF)→\(outF)", try device.download(yb), y, tolerance: tol)
                var dx = [Float](repeating: 0, count: n * inF)
                CPUOps.linearBackwardInput(&dx, dy, w, rows: n, inFeatures: inF, outFeatures: outF)
                let dxb = try device.allocate(n * inF, dtype)
                try device.gemm(m: n, n: inF, k: outF, a: dyb, lda: outF, b: wb, ldb: inF, c: dxb, ldc: inF)
                c.close("linear backward input \(tag) \(n)×\(inF)→\(outF)", try device.download(dxb), dx, tolerance: tol)
                var dw = [Float](repeating: 0, count: outF * inF)
                CPUOps.linearBackwardWeight(&dw, dy, x, rows: n, inFeatures: inF, outFeatures: outF, alpha: 0.5)
                let dwb = try device.zeros(outF * inF, .f32)   // float32 accumulator, as LoRA gradients are
                try device.gemm(m: outF, n: inF, k: n, a: dyb, lda: outF, transA: true, b: xb, ldb: inF, c: dwb, ldc: inF,
                                alpha: 0.5, beta: 1)
                c.close("linear backward weight \(tag)→f32 \(n)×\(inF)→\(outF)", try device.download(dwb), dw, tolerance: tol)
            }
            // LoRA with dropout where x is read (lora.cu) against the mask materialized and plain products
            // (one adapter on x, or two or three sharing it as q, k and v do, each with its own A, dz and mask seed;
            // those write their z, times the LoRA scale 2, into x's own rows beside the k columns read, as the step
            // joins them to the base product)
            for (rows, k, r, count) in [(37, 96, 16, 1), (300, 576, 8, 3), (1030, 1000, 20, 1), (5, 100, 4, 3),
                                        (700, 4096, 16, 3), (1100, 11008, 16, 1), (513, 136, 32, 2)] {
                for keep: Float in [1, 0.9] {
                    let seeds = (0..<count).map { UInt64(0x1234_5678_9abc + rows * k + 7919 * $0) }
                    let seed = seeds[0]
                    let label = "\(tag) \(rows)×\(k) r=\(r) keep=\(keep)"
                    let joined = count > 1, ldx = joined ? (k + count * r + 7) / 8 * 8 : k
                    let zScale: Float = joined ? 2 : 1
                    let (xWide, xb) = try put(random(rows * ldx), dtype)   // x in the first k columns of each row
                    let x = (0..<(rows * k)).map { xWide[($0 / k) * ldx + $0 % k] }
                    let (aParts, dzParts) = (try (0..<count).map { _ in try put(random(r * k, 0.1), dtype) },
                                             try (0..<count).map { _ in try put(random(rows * r), dtype) })
                    let (a, ab) = aParts[0], (dz, dzb) = dzParts[0]
                    func masked(_ p: Int) -> (mask: [Float], xm: [Float]) {
                        let mask = keep < 1 ? LoRADropout.mask(seed: seeds[p], rows: rows, width: k, keep: keep)
                                            : [Float](repeating: 1, count: rows * k)
                        return (mask, zip(x, mask).map { $0 * $1 })
                    }
                    let mask = masked(0).mask
                    let zbs = try (0..<count).map { _ in joined ? xb : try device.allocate(rows * r, dtype) }
                    try device.loraDown((0..<count).map { (zbs[$0], joined ? k + $0 * r : 0, aParts[$0].1, seeds[$0]) },
                                        x: xb, rows: rows, k: k, r: r, ldx: ldx, ldz: joined ? ldx : r, keep: keep,
                                        scale: zScale)
                    var gs = (0..<count).map { _ in random(r * k, 0.01) }
                    let gbs = try gs.map { try device.upload($0) }
                    try device.loraDownGradient((0..<count).map { (gbs[$0], dzParts[$0].1, seeds[$0]) }, x: xb,
                                                rows: rows, k: k, r: r, ldx: ldx, keep: keep)
                    let after = try device.download(xb)
                    if joined {
                        c.equal("lora down \(label): x's own columns untouched",
                                (0..<(rows * k)).map { after[($0 / k) * ldx + $0 % k].bitPattern },
                                x.map { $0.bitPattern })
                    }
                    for p in 0..<count {
                        let part = joined ? " (adapter \(p + 1) of \(count), z beside x in its rows)" : ""
                        let xm = masked(p).xm
                        var z = [Float](repeating: 0, count: rows * r)
                        CPUOps.linearForward(&z, xm, aParts[p].0, rows: rows, inFeatures: k, outFeatures: r)
                        let got = joined ? (0..<(rows * r)).map { after[($0 / r) * ldx + k + p * r + $0 % r] }
                                         : try device.download(zbs[p])
                        c.close("lora down \(label)\(part)", got, z.map { $0 * zScale }, tolerance: tol)
                        CPUOps.linearBackwardWeight(&gs[p], dzParts[p].0, xm, rows: rows, inFeatures: k, outFeatures: r,
                                                    accumulate: true)
                        c.close("lora dA \(label)\(part)", try device.download(gbs[p]), gs[p], tolerance: tol)
                    }
                    if joined {   // W' = [W | 0 | B | 0] for the last adapter's slot, rows padded to 64
                        let out = 24, slot = count - 1, ldw = (k + count * r + 63) / 64 * 64
                        let q = try Quantized4BitTensor(quantizing: Tensor(random(out * k, 0.05), shape: [out, k],
                                                                           dtype: .f32),
                                                        type: .nf4, blocksize: 64, doubleQuant: true)
                        let plain = dtype == .f32
                            ? q.dequantizedFloat32()
                            : Tensor(q.dequantizedFloat32(), shape: q.shape, dtype: .bf16).floats()
                        let (b, bb) = try put(random(out * r), dtype)
                        let wb = try GPUQuantizedWeight(q, device: device).dequantized(dtype, ld: ldw,
                                                                                       beside: (bb, slot, r))
                        var expected = [Float](repeating: 0, count: out * ldw)
                        for o in 0..<out {
                            for j in 0..<k { expected[o * ldw + j] = plain[o * k + j] }
                            for j in 0..<r { expected[o * ldw + k + slot * r + j] = b[o * r + j] }
                        }
                        c.equal("dequantize with B beside W \(tag) \(out)×\(k) slot \(slot) r=\(r)",
                                try device.download(wb).map { $0.bitPattern }, expected.map { $0.bitPattern })
                    }
                    var dInput = [Float](repeating: 0, count: rows * k)
                    CPUOps.linearBackwardInput(&dInput, dz, a, rows: rows, inFeatures: k, outFeatures: r)
                    let (dx0, dxb) = try put(random(rows * k), dtype)
                    let dx = (0..<(rows * k)).map { dx0[$0] + dInput[$0] * mask[$0] }
                    try device.loraInputGradient(dxb, dz: dzb, a: ab, rows: rows, k: k, r: r, keep: keep, seed: seed)
                    c.close("lora dx \(label)", try device.download(dxb), dx, tolerance: tol)
                }
            }
            // The up projection's gradients from one read of dy (lora_up_grad, bf16): dB += dyᵀ z, dz = s dy B,
            // z with rows wider than r where it sits beside x; ragged rows, widths and ranks
            if dtype == .bf16 {
                for (rows, out, r, ldz) in [(37, 96, 16, 16), (1030, 1000, 20, 40), (700, 4096, 16, 4160),
                                            (513, 11008, 8, 8), (5, 104, 4, 4), (1100, 1536, 32, 48)] {
                    let label = "\(tag) \(rows)×\(out) r=\(r) ldz=\(ldz)"
                    let (dy, dyb) = try put(random(rows * out), dtype)
                    let (zWide, zb) = try put(random(rows * ldz), dtype)
                    let z = (0..<(rows * r)).map { zWide[($0 / r) * ldz + $0 % r] }
                    let (b, bb) = try put(random(out * r, 0.1), dtype)
                    var gB = random(out * r, 0.01)
                    let gBb = try device.upload(gB), dzb = try device.allocate(rows * r, dtype)
                    try device.loraUpGradient(gradB: gBb, dz: dzb, dy: dyb, z: zb, zAt: 0, ldz: ldz, b: bb, rows: rows,
                                              out: out, r: r, scale: 2)
                    CPUOps.linearBackwardWeight(&gB, dy, z, rows: rows, inFeatures: r, outFeatures: out,
                                                accumulate: true)
                    var dz = [Float](repeating: 0, count: rows * r)
                    CPUOps.linearBackwardInput(&dz, dy, b, rows: rows, inFeatures: r, outFeatures: out, alpha: 2)
                    c.close("lora dB (one read of dy) \(label)", try device.download(gBb), gB, tolerance: tol)
                    c.close("lora dz (one read of dy) \(label)", try device.download(dzb), dz, tolerance: tol)
                }
            }
            // Cross-entropy (loss and dlogits, one ignored row)
            for (rows, vocab) in [(9, 1001), (4, 49152)] {
                let (logits, lb) = try put(random(rows * vocab, 8), dtype)
                var targets = (0..<rows).map { _ in Int(rng.next() % UInt64(vocab)) }
                targets[1] = -100
                var d: [Float]? = [Float](repeating: 0, count: rows * vocab)
                let (loss, count) = CPUOps.crossEntropy(logits, targets: targets, vocab: vocab, dlogits: &d)
                let tb = try device.upload(targets.map { Int32($0) }), rowLoss = try device.allocate(rows, .f32)
                try device.crossEntropy(lb, rowLoss: rowLoss, targets: tb, rows: rows, vocab: vocab, scale: 1 / Float(count),
                                        writeGradient: true)
                let sum = try device.download(rowLoss).reduce(0.0) { $0 + Double($1) }
                c.scalar("cross-entropy loss \(tag) \(rows)×\(vocab)", sum / Double(count), loss,
                         tolerance: dtype == .f32 ? 1e-5 : 1e-3)
                c.close("cross-entropy dlogits \(tag) \(rows)×\(vocab)", try device.download(lb), d!, tolerance: tol)
            }
            // Embedding gather
            do {
                let (table, tb) = try put(random(50 * 24), dtype)
                let ids = (0..<17).map { _ in Int(rng.next() % 50) }
                let ib = try device.upload(ids.map { Int32($0) }), ob = try device.allocate(17 * 24, dtype)
                try device.embedding(ob, ids: ib, table: tb, rows: 17, width: 24)
                c.close("embedding \(tag)", try device.download(ob), ids.flatMap { Array(table[($0 * 24)..<($0 * 24 + 24)]) }, tolerance: 0)
            }
            // Strided column copy (a block of columns from rows 37 apart to rows 29 apart, offsets on both sides)
            do {
                let (src, sb) = try put(random(40 * 37), dtype), (dst, db) = try put(random(41 * 29), dtype)
                try device.copyColumns(from: (sb, 5, 37), to: (db, 3, 29), rows: 40, columns: 24)
                var expected = dst
                for r in 0..<40 { for c in 0..<24 { expected[3 + r * 29 + c] = src[5 + r * 37 + c] } }
                c.equal("copy columns \(tag) 40×24", try device.download(db).map { $0.bitPattern },
                        expected.map { $0.bitPattern })
            }
            // 4-bit dequantization (exact: the same float32 products, rounded once to the dtype)
            // (blocksizes below, at and above a warp's span of 1024 elements; 300 × 77 goes element by element,
            // 33 × 1024 ends with a group of one span, 64 × 200 with half a span)
            for type in QuantType.allCases {
                for (dq, blocksize) in [(false, 64), (true, 64), (true, 32), (false, 1024), (true, 4096)] {
                    for (rows, cols) in [(300, 77), (33, 1024), (64, 200)] {
                        let w = Tensor(random(rows * cols, 0.05), shape: [rows, cols], dtype: .f32)
                        let q = try Quantized4BitTensor(quantizing: w, type: type, blocksize: blocksize,
                                                        doubleQuant: dq)
                        let gw = try GPUQuantizedWeight(q, device: device)
                        let expected = dtype == .f32
                            ? q.dequantizedFloat32()
                            : Tensor(q.dequantizedFloat32(), shape: q.shape, dtype: .bf16).floats()
                        c.equal("dequantize \(type) dq=\(dq) blocksize \(blocksize) \(tag) \(rows)×\(cols)",
                                try device.download(try gw.dequantized(dtype)).map { $0.bitPattern },
                                expected.map { $0.bitPattern })
                        if blocksize == 64 && rows == 300 {   // rows 88 apart (room for adapter columns beside W)
                            let wide = try device.download(try gw.dequantized(dtype, ld: 88))
                            c.equal("dequantize \(type) dq=\(dq) \(tag) 300×77, rows 88 apart",
                                    (0..<(300 * 77)).map { wide[($0 / 77) * 88 + $0 % 77].bitPattern },
                                    expected.map { $0.bitPattern })
                            let w2 = Tensor(random(40 * 128, 0.05), shape: [40, 128], dtype: .f32)
                            let q2 = try Quantized4BitTensor(quantizing: w2, type: type, blocksize: 64,
                                                             doubleQuant: dq)
                            let e2 = dtype == .f32
                                ? q2.dequantizedFloat32()
                                : Tensor(q2.dequantizedFloat32(), shape: q2.shape, dtype: .bf16).floats()
                            let wide2 = try device.download(try GPUQuantizedWeight(q2, device: device)
                                .dequantized(dtype, ld: 136))
                            c.equal("dequantize \(type) dq=\(dq) \(tag) 40×128, rows 136 apart",
                                    (0..<(40 * 128)).map { wide2[($0 / 128) * 136 + $0 % 128].bitPattern },
                                    e2.map { $0.bitPattern })
                        }
                    }
                }
            }
        }
        // 4-bit quantization on the GPU against the CPU's (which is bit-exact with bitsandbytes)
        for (dtype, blocksize) in [(GPUDType.f32, 64), (.bf16, 64), (.f32, 128), (.bf16, 4096), (.f32, 32)] {
            for type in QuantType.allCases {
                let v = random(1000 * 37 + 3, 0.1)
                let (x, xb) = try put(v, dtype)
                let q = try Quantized4BitTensor(quantizing: Tensor(x, shape: [x.count], dtype: dtype == .f32 ? .f32 : .bf16),
                                                type: type, blocksize: blocksize, doubleQuant: false)
                let (packed, absmax) = try device.quantize4Bit(xb, type: type, blocksize: blocksize)
                c.equal("quantize \(type) \(dtype.rawValue) blocksize \(blocksize) packed", packed, q.packed)
                c.equal("quantize \(type) \(dtype.rawValue) blocksize \(blocksize) absmax", absmax.map { $0.bitPattern }, q.scales.absmax().map { $0.bitPattern })
            }
        }
        // Optimizers: three updates with random gradients, GPU vs CPU, each step from the same state (the CPU's set
        // to the GPU's before it). 8-bit codes must be equal, except that a scaled moment sitting on a decision
        // threshold may land on the neighbouring code: the CPU has the GPU's approximate reciprocal exactly
        // only for absmax values with ≤ 10 mantissa bits (GPUReciprocal), so about one value in 10⁵–10⁶ is
        // decided by the last bit. At most one in 10⁴, and only ever one code apart, passes.
        // The three tensors (one below bitsandbytes' 4096-element threshold for 8 bits) are updated by one call, as
        // the trainer updates all adapters: the 8-bit ones in one launch, through its table of tensors.
        for kind in OptimizerKind.allCases {
            let sizes = [1000, 5000, 4096 * 3 + 17], names = sizes.map { "t\($0)" }
            let settings = AdamWSettings(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01)
            let gpu = try CUDAAdamW(kind: kind, settings: settings, device: device)
            let pbs = try sizes.map { try device.upload(random($0, 0.1)) }
            for s in 0..<3 {
                var cpu = try gpu.snapshot()
                var items: [CUDAAdamW.Item] = [], expected: [[Float]] = []
                for (j, n) in sizes.enumerated() {
                    var p = try device.download(pbs[j])
                    let g = random(n, 0.01)
                    cpu.update(names[j], parameter: &p, gradient: g.map { $0 * 0.7 }, lr: 1e-3 * Float(s + 1))
                    expected.append(p)
                    items.append((names[j], pbs[j], try device.upload(g), nil))
                }
                try gpu.update(items, lr: 1e-3 * Float(s + 1), gradientScale: 0.7)
                let after = try gpu.snapshot()
                for (j, n) in sizes.enumerated() {
                    c.close("\(kind.rawValue) \(n) values, step \(s + 1)", try device.download(pbs[j]), expected[j],
                            tolerance: 1e-6)
                    if case .eightBit(let m, let v, _, _)? = cpu.states[names[j]],
                       case .eightBit(let gm, let gv, _, _)? = after.states[names[j]] {
                        let pairs = zip(gm + gv, m + v)
                        let apart = pairs.filter { $0 != $1 }.count
                        let far = pairs.filter { abs(Int($0) - Int($1)) > 1 }.count
                        c.check("\(kind.rawValue) \(n) state codes, step \(s + 1): \(apart) of \(2 * n) one code apart",
                                far == 0 && apart * 10_000 <= 2 * n)
                    }
                }
            }
        }
        // Gradient norm
        do {
            let g = random(100_003)
            let h = random(777)
            let sum = try device.sumOfSquares([try device.upload(g), try device.upload(h)])
            c.scalar("sum of squares", sum, (g + h).reduce(0.0) { $0 + Double($1) * Double($1) }, tolerance: 1e-2)
        }
        try flashAttention(&c)
        try decodeAttention(&c)
    }
}
