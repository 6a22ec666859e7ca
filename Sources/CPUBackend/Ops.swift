import Foundation
import Tensors

// The reference CPU ops of the Llama training step, forward and backward side by side, float32, row-major.
// Shape letters: N rows (batch × tokens), B batch, T tokens, C hidden, H heads, Hkv KV heads, D head dim,
// F MLP width, V vocabulary, R LoRA rank.

/// Reference implementations of every op of the training step.
public enum CPUOps {
    // MARK: Linear

    /// y (N, out) = x (N, in) · Wᵀ, W (out, in); `accumulate` adds into y.
    public static func linearForward(_ y: inout [Float], _ x: [Float], _ w: [Float], rows: Int, inFeatures: Int,
                                     outFeatures: Int, accumulate: Bool = false, alpha: Float = 1) {
        x.withUnsafeBufferPointer { xp in w.withUnsafeBufferPointer { wp in y.withUnsafeMutableBufferPointer { yp in
            BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: outFeatures, k: inFeatures, alpha: alpha,
                       a: xp.baseAddress!, lda: inFeatures, b: wp.baseAddress!, ldb: inFeatures,
                       beta: accumulate ? 1 : 0, c: yp.baseAddress!, ldc: outFeatures)
        } } }
    }

    /// dx (N, in) (+)= dy (N, out) · W, W (out, in).
    public static func linearBackwardInput(_ dx: inout [Float], _ dy: [Float], _ w: [Float], rows: Int, inFeatures: Int,
                                           outFeatures: Int, accumulate: Bool = false, alpha: Float = 1) {
        dy.withUnsafeBufferPointer { dp in w.withUnsafeBufferPointer { wp in dx.withUnsafeMutableBufferPointer { xp in
            BLAS.sgemm(transposeA: false, transposeB: false, m: rows, n: inFeatures, k: outFeatures, alpha: alpha,
                       a: dp.baseAddress!, lda: outFeatures, b: wp.baseAddress!, ldb: inFeatures,
                       beta: accumulate ? 1 : 0, c: xp.baseAddress!, ldc: inFeatures)
        } } }
    }

    /// dW (out, in) (+)= dyᵀ (out, N) · x (N, in).
    public static func linearBackwardWeight(_ dw: inout [Float], _ dy: [Float], _ x: [Float], rows: Int, inFeatures: Int,
                                            outFeatures: Int, accumulate: Bool = false, alpha: Float = 1) {
        dy.withUnsafeBufferPointer { dp in x.withUnsafeBufferPointer { xp in dw.withUnsafeMutableBufferPointer { wp in
            BLAS.sgemm(transposeA: true, transposeB: false, m: outFeatures, n: inFeatures, k: rows, alpha: alpha,
                       a: dp.baseAddress!, lda: outFeatures, b: xp.baseAddress!, ldb: inFeatures,
                       beta: accumulate ? 1 : 0, c: wp.baseAddress!, ldc: inFeatures)
        } } }
    }

    // MARK: RMSNorm

    /// y = w ⊙ x · rstd per row, rstd = 1/√(mean(x²) + eps); saves rstd (N). Rows split over the cores.
    public static func rmsNormForward(_ y: inout [Float], _ rstd: inout [Float], _ x: [Float], _ w: [Float],
                                      rows: Int, width: Int, eps: Float) {
        x.withUnsafeBufferPointer { x in w.withUnsafeBufferPointer { w in
        y.withUnsafeMutableBufferPointer { y in rstd.withUnsafeMutableBufferPointer { rstd in
            parallelChunks(count: rows, grain: 64) { range in
                for r in range {
                    let base = r * width
                    var sum: Float = 0
                    for i in 0..<width { sum += x[base + i] * x[base + i] }
                    let s = 1 / (sum / Float(width) + eps).squareRoot()
                    rstd[r] = s
                    for i in 0..<width { y[base + i] = w[i] * (x[base + i] * s) }
                }
            }
        } } } }
    }

    /// dx (+)= rstd · (g − x · rstd² · mean(g ⊙ x)), g = w ⊙ dy (the norm weight is frozen). Rows split over
    /// the cores.
    public static func rmsNormBackward(_ dx: inout [Float], _ dy: [Float], _ x: [Float], _ w: [Float], _ rstd: [Float],
                                       rows: Int, width: Int, accumulate: Bool) {
        dy.withUnsafeBufferPointer { dy in x.withUnsafeBufferPointer { x in w.withUnsafeBufferPointer { w in
        rstd.withUnsafeBufferPointer { rstd in dx.withUnsafeMutableBufferPointer { dx in
            parallelChunks(count: rows, grain: 64) { range in
                for r in range {
                    let base = r * width
                    let s = rstd[r]
                    var dot: Float = 0
                    for i in 0..<width { dot += w[i] * dy[base + i] * x[base + i] }
                    let c = dot * s * s / Float(width)
                    for i in 0..<width {
                        let v = s * (w[i] * dy[base + i] - x[base + i] * c)
                        dx[base + i] = accumulate ? dx[base + i] + v : v
                    }
                }
            }
        } } } } }
    }

    // MARK: RoPE

    /// Rotates each head's (i, i + D/2) pairs by position · invFreq[i] (Hugging Face's half-rotation layout), in
    /// place on x (B, T, heads, D); `inverse` applies the transpose (the backward pass). The position of (b, t) is
    /// `positions[b·T + t]` (packed documents), else t.
    public static func rope(_ x: inout [Float], cos: [Float], sin: [Float], batch: Int, tokens: Int, heads: Int,
                            headDim: Int, inverse: Bool = false, positions: [Int]? = nil) {
        let half = headDim / 2
        for b in 0..<batch {
            for row in 0..<tokens {
                let t = positions?[b * tokens + row] ?? row
                for h in 0..<heads {
                    let base = ((b * tokens + row) * heads + h) * headDim
                    for i in 0..<half {
                        let c = cos[t * headDim + i], s = inverse ? -sin[t * headDim + i] : sin[t * headDim + i]
                        let x1 = x[base + i], x2 = x[base + i + half]
                        x[base + i] = x1 * c - x2 * s
                        x[base + i + half] = x2 * c + x1 * s
                    }
                }
            }
        }
    }

    // MARK: Attention

    /// Query rows per block of the attention products: a block of rows i0 ..< i1 multiplies only keys
    /// j0 ..< i1 (j0: the first row's document start), the causal triangle's blocks and no more of the (T × T)
    /// square.
    public static let attentionRowBlock = 128

    /// Where `attentionForward` keeps the probabilities: per batch row b and head h, each block of query rows
    /// i0 ..< i1 (`attentionRowBlock`) as a (i1 − i0) × (i1 − j0) matrix over the keys j0 ..< i1 it sees (j0: its
    /// first row's document start, 0 without packed documents), the blocks one after the other, then the next head,
    /// then the next batch row. Only the blocks of the causal triangle are kept (about half of T × T, less with
    /// packed documents, whose rows see their own document only) and no row is wider than its block's keys.
    public struct AttentionProbabilities {
        public let batch: Int, tokens: Int, heads: Int
        let starts: [Int]?
        let blocks: Int          // row blocks a sequence
        let blockOffset: [Int]   // per (b, block): where the block starts in each of row b's heads
        let headSize: [Int]      // per b: the floats of one head's blocks
        let batchOffset: [Int]   // per b: where row b's heads start
        public let count: Int

        public init(batch: Int, tokens: Int, heads: Int, starts: [Int]?) {
            self.batch = batch; self.tokens = tokens; self.heads = heads; self.starts = starts
            blocks = (tokens + attentionRowBlock - 1) / attentionRowBlock
            var blockOffset = [Int](repeating: 0, count: batch * blocks), headSize: [Int] = [], batchOffset: [Int] = []
            var total = 0
            for b in 0..<batch {
                var size = 0
                for blk in 0..<blocks {
                    let i0 = blk * attentionRowBlock, i1 = min(tokens, i0 + attentionRowBlock)
                    blockOffset[b * blocks + blk] = size
                    size += (i1 - i0) * (i1 - (starts?[b * tokens + i0] ?? 0))
                }
                headSize.append(size); batchOffset.append(total)
                total += size * heads
            }
            self.blockOffset = blockOffset; self.headSize = headSize; self.batchOffset = batchOffset; count = total
        }

        /// The first key the block of rows from i0 sees.
        public func firstKey(_ b: Int, _ i0: Int) -> Int { starts?[b * tokens + i0] ?? 0 }

        /// Where the block of rows from i0 of (b, h) starts.
        public func offset(_ b: Int, _ h: Int, _ i0: Int) -> Int {
            batchOffset[b] + h * headSize[b] + blockOffset[b * blocks + i0 / attentionRowBlock]
        }

        /// The probabilities as a (B, H, T, T) array (zeros where a query does not see a key), as the plain loops
        /// (`attentionForwardReference`) write them.
        public func expanded(_ probs: [Float]) -> [Float] {
            let T = tokens
            var full = [Float](repeating: 0, count: batch * heads * T * T)
            for b in 0..<batch {
                for h in 0..<heads {
                    for i0 in stride(from: 0, to: T, by: attentionRowBlock) {
                        let i1 = min(T, i0 + attentionRowBlock), j0 = firstKey(b, i0), w = i1 - j0
                        let o = offset(b, h, i0)
                        for i in i0..<i1 {
                            let row = ((b * heads + h) * T + i) * T
                            for j in j0..<i1 { full[row + j] = probs[o + (i - i0) * w + j - j0] }
                        }
                    }
                }
            }
            return full
        }
    }

    /// Causal grouped-query attention: out (B, T, H, D) from q (B, T, H, D), k, v (B, T, Hkv, D); `probs` is set to
    /// the probabilities P, laid out as `AttentionProbabilities` says. Per (batch, head) and block of query rows
    /// (`attentionRowBlock`): S = Q Kᵀ / √D (BLAS) over the keys the block sees, causal softmax, O = P V (BLAS).
    /// With `starts` (B·T), query (b, i) sees keys starts[b·T + i] … i only: packed documents attend within
    /// themselves (the backward pass takes the same `starts`).
    public static func attentionForward(_ out: inout [Float], _ probs: inout [Float], q: [Float], k: [Float], v: [Float],
                                        batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int,
                                        starts: [Int]? = nil) {
        let scale = 1 / Float(headDim).squareRoot()
        let group = heads / kvHeads
        let T = tokens, D = headDim
        let layout = AttentionProbabilities(batch: batch, tokens: tokens, heads: heads, starts: starts)
        // Every element is written below (the products, then each row's softmax and zeros).
        probs = [Float](unsafeUninitializedCapacity: layout.count) { _, n in n = layout.count }
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
        out.withUnsafeMutableBufferPointer { op in probs.withUnsafeMutableBufferPointer { pp in
            for b in 0..<batch {
                for h in 0..<heads {
                    let kh = h / group
                    let qh = qp.baseAddress! + (b * T * heads + h) * D
                    let kk = kp.baseAddress! + (b * T * kvHeads + kh) * D
                    let vv = vp.baseAddress! + (b * T * kvHeads + kh) * D
                    for i0 in stride(from: 0, to: T, by: attentionRowBlock) {
                        let i1 = min(T, i0 + attentionRowBlock), j0 = layout.firstKey(b, i0), w = i1 - j0
                        let p = pp.baseAddress! + layout.offset(b, h, i0)   // (i1 − i0) × w, keys j0 ..< i1
                        BLAS.sgemm(transposeA: false, transposeB: true, m: i1 - i0, n: w, k: D, alpha: scale,
                                   a: qh + i0 * heads * D, lda: heads * D, b: kk + j0 * kvHeads * D, ldb: kvHeads * D,
                                   c: p, ldc: w)
                        parallelChunks(count: i1 - i0, grain: 32) { range in
                            for i in (i0 + range.lowerBound)..<(i0 + range.upperBound) {
                                // Row i's keys j0 ..< i1 at row[0 ..< w]; it sees first ... i.
                                let row = p + (i - i0) * w, first = (starts?[b * T + i] ?? 0) - j0, last = i - j0
                                var m = -Float.infinity
                                for j in first...last { m = max(m, row[j]) }
                                var z: Float = 0
                                for j in first...last { row[j] = Foundation.exp(row[j] - m); z += row[j] }
                                let inv = 1 / z
                                for j in first...last { row[j] *= inv }
                                for j in 0..<first { row[j] = 0 }
                                for j in (last + 1)..<w { row[j] = 0 }
                            }
                        }
                        BLAS.sgemm(transposeA: false, transposeB: false, m: i1 - i0, n: D, k: w,
                                   a: p, lda: w, b: vv + j0 * kvHeads * D, ldb: kvHeads * D,
                                   c: op.baseAddress! + (b * T * heads + h + i0 * heads) * D, ldc: heads * D)
                    }
                }
            }
        } } } } }
    }

    /// Gradients of `attentionForward` with BLAS (`probs` and `starts` as it took and left them), per (batch, head)
    /// and block of query rows i0 ..< i1 over the keys j0 ..< i1 it sees (P is zero past the diagonal and before
    /// a row's document): dP = dO Vᵀ, dV += Pᵀ dO, dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √D, dQ = dS K,
    /// dK += dSᵀ Q. dq, dk, dv are overwritten.
    public static func attentionBackward(dq: inout [Float], dk: inout [Float], dv: inout [Float], dout: [Float],
                                         probs: [Float], q: [Float], k: [Float], v: [Float],
                                         batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int,
                                         starts: [Int]? = nil) {
        let scale = 1 / Float(headDim).squareRoot()
        let group = heads / kvHeads
        let T = tokens, D = headDim
        let layout = AttentionProbabilities(batch: batch, tokens: tokens, heads: heads, starts: starts)
        precondition(probs.count == layout.count, "attention probabilities of another shape or other documents")
        for i in dk.indices { dk[i] = 0 }
        for i in dv.indices { dv[i] = 0 }
        var ds = [Float](repeating: 0, count: min(T, attentionRowBlock) * T)
        q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in v.withUnsafeBufferPointer { vp in
        dout.withUnsafeBufferPointer { dop in probs.withUnsafeBufferPointer { pp in
        dq.withUnsafeMutableBufferPointer { dqp in dk.withUnsafeMutableBufferPointer { dkp in
        dv.withUnsafeMutableBufferPointer { dvp in ds.withUnsafeMutableBufferPointer { dsp in
            let s = dsp.baseAddress!
            for b in 0..<batch {
                for h in 0..<heads {
                    let kh = h / group
                    let qOffset = (b * T * heads + h) * D, kvOffset = (b * T * kvHeads + kh) * D
                    for i0 in stride(from: 0, to: T, by: attentionRowBlock) {
                        let i1 = min(T, i0 + attentionRowBlock), rows = i1 - i0
                        let j0 = layout.firstKey(b, i0), w = i1 - j0
                        let p = pp.baseAddress! + layout.offset(b, h, i0)   // rows × w, keys j0 ..< i1
                        let dO = dop.baseAddress! + qOffset + i0 * heads * D
                        let keys = kvOffset + j0 * kvHeads * D
                        BLAS.sgemm(transposeA: false, transposeB: true, m: rows, n: w, k: D, a: dO, lda: heads * D,
                                   b: vp.baseAddress! + keys, ldb: kvHeads * D, c: s, ldc: w)
                        BLAS.sgemm(transposeA: true, transposeB: false, m: w, n: D, k: rows, a: p, lda: w, b: dO,
                                   ldb: heads * D, beta: 1, c: dvp.baseAddress! + keys, ldc: kvHeads * D)
                        parallelChunks(count: rows, grain: 32) { range in
                            for r in range {
                                let i = i0 + r, prow = p + r * w, srow = s + r * w
                                var dot: Float = 0
                                for j in 0...(i - j0) { dot += srow[j] * prow[j] }
                                for j in 0...(i - j0) { srow[j] = prow[j] * (srow[j] - dot) * scale }
                                for j in (i - j0 + 1)..<w { srow[j] = 0 }
                            }
                        }
                        BLAS.sgemm(transposeA: false, transposeB: false, m: rows, n: D, k: w, a: s, lda: w,
                                   b: kp.baseAddress! + keys, ldb: kvHeads * D,
                                   c: dqp.baseAddress! + qOffset + i0 * heads * D, ldc: heads * D)
                        BLAS.sgemm(transposeA: true, transposeB: false, m: w, n: D, k: rows, a: s, lda: w,
                                   b: qp.baseAddress! + qOffset + i0 * heads * D, ldb: heads * D, beta: 1,
                                   c: dkp.baseAddress! + keys, ldc: kvHeads * D)
                    }
                }
            }
        } } } } } } } } }
    }

    /// The plain loops of `attentionForward`, kept as the oracle.
    public static func attentionForwardReference(_ out: inout [Float], _ probs: inout [Float], q: [Float], k: [Float], v: [Float],
                                        batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int) {
        let scale = 1 / Float(headDim).squareRoot()
        let group = heads / kvHeads
        let T = tokens, D = headDim
        var row = [Float](repeating: 0, count: T)
        for b in 0..<batch {
            for h in 0..<heads {
                let kh = h / group
                for i in 0..<T {
                    let qBase = ((b * T + i) * heads + h) * D
                    var m = -Float.infinity
                    for j in 0...i {
                        let kBase = ((b * T + j) * kvHeads + kh) * D
                        var s: Float = 0
                        for d in 0..<D { s += q[qBase + d] * k[kBase + d] }
                        row[j] = s * scale
                        m = max(m, row[j])
                    }
                    var z: Float = 0
                    for j in 0...i { row[j] = Foundation.exp(row[j] - m); z += row[j] }
                    let pBase = ((b * heads + h) * T + i) * T
                    for j in 0..<T { probs[pBase + j] = j <= i ? row[j] / z : 0 }
                    for d in 0..<D { out[qBase + d] = 0 }
                    for j in 0...i {
                        let p = probs[pBase + j]
                        let vBase = ((b * T + j) * kvHeads + kh) * D
                        for d in 0..<D { out[qBase + d] += p * v[vBase + d] }
                    }
                }
            }
        }
    }

    /// The plain loops of `attentionBackward`, kept as the oracle.
    public static func attentionBackwardReference(dq: inout [Float], dk: inout [Float], dv: inout [Float], dout: [Float],
                                         probs: [Float], q: [Float], k: [Float], v: [Float],
                                         batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int) {
        let scale = 1 / Float(headDim).squareRoot()
        let group = heads / kvHeads
        let T = tokens, D = headDim
        for i in dq.indices { dq[i] = 0 }
        for i in dk.indices { dk[i] = 0 }
        for i in dv.indices { dv[i] = 0 }
        var dp = [Float](repeating: 0, count: T)
        for b in 0..<batch {
            for h in 0..<heads {
                let kh = h / group
                for i in 0..<T {
                    let qBase = ((b * T + i) * heads + h) * D
                    let pBase = ((b * heads + h) * T + i) * T
                    var dot: Float = 0
                    for j in 0...i {
                        let vBase = ((b * T + j) * kvHeads + kh) * D
                        var s: Float = 0
                        for d in 0..<D { s += dout[qBase + d] * v[vBase + d] }
                        dp[j] = s
                        dot += s * probs[pBase + j]
                        let p = probs[pBase + j]
                        for d in 0..<D { dv[vBase + d] += p * dout[qBase + d] }
                    }
                    for j in 0...i {
                        let ds = probs[pBase + j] * (dp[j] - dot) * scale
                        let kBase = ((b * T + j) * kvHeads + kh) * D
                        for d in 0..<D {
                            dq[qBase + d] += ds * k[kBase + d]
                            dk[kBase + d] += ds * q[qBase + d]
                        }
                    }
                }
            }
        }
    }

    // MARK: SwiGLU

    /// a = silu(g) ⊙ u, split over the cores.
    public static func swigluForward(_ a: inout [Float], gate: [Float], up: [Float]) {
        gate.withUnsafeBufferPointer { gate in up.withUnsafeBufferPointer { up in
        a.withUnsafeMutableBufferPointer { a in
            parallelChunks(count: a.count, grain: 1 << 15) { range in
                for i in range {
                    let g = gate[i]
                    a[i] = g / (1 + Foundation.exp(-g)) * up[i]
                }
            }
        } } }
    }

    /// dgate, dup from da, split over the cores.
    public static func swigluBackward(dgate: inout [Float], dup: inout [Float], da: [Float], gate: [Float], up: [Float]) {
        da.withUnsafeBufferPointer { da in gate.withUnsafeBufferPointer { gate in up.withUnsafeBufferPointer { up in
        dgate.withUnsafeMutableBufferPointer { dgate in dup.withUnsafeMutableBufferPointer { dup in
            parallelChunks(count: da.count, grain: 1 << 15) { range in
                for i in range {
                    let g = gate[i]
                    let sig = 1 / (1 + Foundation.exp(-g))
                    let silu = g * sig
                    dup[i] = da[i] * silu
                    dgate[i] = da[i] * up[i] * sig * (1 + g * (1 - sig))
                }
            }
        } } } } }
    }

    // MARK: Cross-entropy

    /// Mean cross-entropy of logits (N, V) against targets (N; −100 ignored); returns the loss and the number of
    /// counted targets, and writes dlogits = (softmax − onehot) · scale (scale = 1/count unless given). Rows are
    /// independent and split over the cores; each row's exponentials are computed once (into dlogits, then scaled),
    /// and the row losses are added in row order, so the result does not depend on the split.
    public static func crossEntropy(_ logits: [Float], targets: [Int], vocab: Int, dlogits: inout [Float]?,
                                    gradientScale: Float? = nil) -> (loss: Double, count: Int) {
        let count = targets.filter { $0 != -100 }.count
        let scale = gradientScale ?? (count > 0 ? 1 / Float(count) : 0)
        let rows = targets.count
        let writeGradient = dlogits != nil
        var gradient = dlogits ?? []
        dlogits = nil   // hand the buffer over without a copy
        var rowLoss = [Double](repeating: 0, count: rows)
        logits.withUnsafeBufferPointer { lp in gradient.withUnsafeMutableBufferPointer { gp in
        rowLoss.withUnsafeMutableBufferPointer { lossp in
            let chunks = max(1, min(rows, ProcessInfo.processInfo.activeProcessorCount))
            let per = (rows + chunks - 1) / chunks
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                for r in (c * per)..<min(rows, (c + 1) * per) {
                    let row = lp.baseAddress! + r * vocab
                    let target = targets[r]
                    if target == -100 {
                        if writeGradient { (gp.baseAddress! + r * vocab).update(repeating: 0, count: vocab) }
                        continue
                    }
                    var m = -Float.infinity
                    for j in 0..<vocab { m = max(m, row[j]) }
                    var z: Double = 0
                    if writeGradient {
                        let out = gp.baseAddress! + r * vocab
                        for j in 0..<vocab { let e = Foundation.exp(row[j] - m); out[j] = e; z += Double(e) }
                        let factor = Float(Double(scale) / z)
                        for j in 0..<vocab { out[j] *= factor }
                        out[target] -= scale
                    } else {
                        for j in 0..<vocab { z += Double(Foundation.exp(row[j] - m)) }
                    }
                    lossp[r] = Double(m) + Foundation.log(z) - Double(row[target])
                }
            }
        } } }
        if writeGradient { dlogits = gradient }
        return (count > 0 ? rowLoss.reduce(0, +) / Double(count) : 0, count)
    }
}
