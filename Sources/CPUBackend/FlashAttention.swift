import Foundation

/// The CPU twin of `Kernels/flash_attention.cu`: causal grouped-query attention computed tile by tile, keeping only
/// the output and one float32 log-sum-exp per query row (no (T × T) probabilities). The same tiles as the GPU
/// kernels, the same base-2 online softmax (exp2 of s · log2(e)/√D, the running maximum and sum rescaled at each
/// key tile), the same order of the backward passes. Shapes as in `attentionForward`: q (B, T, H, D), k and v
/// (B, T, Hkv, D), head h reads KV head h / (H / Hkv), key j seen by query i when j ≤ i; lse (B, H, T). With
/// `starts` (B·T, as `attentionForward` takes them), query (b, i) sees only keys starts[b·T + i] … i, and key tiles
/// that no row of a tile sees are skipped, as the kernels skip them.
extension CPUOps {
    /// Tiles of the forward (query rows × keys), the dK/dV pass (keys × query rows) and the dQ pass (rows × keys).
    /// The bf16 forward kernel takes 128 query rows a block; a row's sums do not depend on that, only on the keys.
    public static let flashForwardTile = (rows: 64, keys: 64)
    public static let flashKeyValueTile = (keys: 64, rows: 64)
    public static let flashQueryTile = (rows: 64, keys: 64)

    static let log2e: Float = 1.4426950408889634
    static let ln2: Float = 0.6931471805599453

    /// out (B, T, H, D) and lse (B, H, T) = log Σ_{j ≤ i} exp(q_i·k_j / √D).
    public static func flashAttentionForward(_ out: inout [Float], lse: inout [Float], q: [Float], k: [Float],
                                             v: [Float], batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                                             headDim: Int, starts: [Int]? = nil) {
        let T = tokens, D = headDim, group = heads / kvHeads
        let (tileRows, tileKeys) = flashForwardTile
        let sl2 = 1 / Float(D).squareRoot() * log2e
        var s = [Float](repeating: 0, count: tileKeys)       // one row of one score tile
        var acc = [Float](repeating: 0, count: tileRows * D)  // unnormalized output rows of the query tile
        var m = [Float](repeating: 0, count: tileRows), l = [Float](repeating: 0, count: tileRows)
        q.withUnsafeBufferPointer { q in k.withUnsafeBufferPointer { k in v.withUnsafeBufferPointer { v in
        for b in 0..<batch {
            for h in 0..<heads {
                let kh = h / group
                for i0 in stride(from: 0, to: T, by: tileRows) {
                    let rows = min(tileRows, T - i0)
                    for r in 0..<tileRows { m[r] = -.infinity; l[r] = 0 }
                    for x in acc.indices { acc[x] = 0 }
                    // Key tiles from the one holding the first row's start to the diagonal.
                    let firstTile = (starts?[b * T + i0] ?? 0) / tileKeys * tileKeys
                    for j0 in stride(from: firstTile, through: i0 + rows - 1, by: tileKeys) {
                        for r in 0..<rows {
                            let i = i0 + r, qi = ((b * T + i) * heads + h) * D, first = starts?[b * T + i] ?? 0
                            var mx = -Float.infinity
                            for c in 0..<tileKeys {
                                let j = j0 + c
                                guard j <= i, j >= first else { s[c] = -.infinity; continue }
                                let kj = ((b * T + j) * kvHeads + kh) * D
                                var dot: Float = 0
                                for d in 0..<D { dot += q[qi + d] * k[kj + d] }
                                s[c] = dot
                                mx = max(mx, dot)
                            }
                            let mNew = max(m[r], mx * sl2)
                            let base = mNew == -.infinity ? 0 : mNew
                            let alpha = exp2(m[r] - base)
                            m[r] = mNew
                            var sum: Float = 0
                            for c in 0..<tileKeys {
                                s[c] = exp2(s[c] * sl2 - base)
                                sum += s[c]
                            }
                            l[r] = l[r] * alpha + sum
                            for d in 0..<D { acc[r * D + d] *= alpha }
                            for c in 0..<tileKeys where j0 + c <= i && j0 + c >= first {
                                let vj = ((b * T + j0 + c) * kvHeads + kh) * D
                                for d in 0..<D { acc[r * D + d] += s[c] * v[vj + d] }
                            }
                        }
                    }
                    for r in 0..<rows {
                        let i = i0 + r, qi = ((b * T + i) * heads + h) * D
                        for d in 0..<D { out[qi + d] = acc[r * D + d] / l[r] }
                        lse[(b * heads + h) * T + i] = (m[r] + log2(l[r])) * ln2
                    }
                }
            }
        }
        } } }
    }

    /// dq (B, T, H, D), dk, dv (B, T, Hkv, D), overwritten, from dout, out and lse of the forward, q, k, v.
    /// With P = exp(q·k/√D − lse) and delta_i = dO_i·O_i: dV_j = Σ_i P_ij dO_i,
    /// dS_ij = P_ij (dO_i·v_j − delta_i), dK_j = Σ_i dS_ij q_i / √D, dQ_i = Σ_j dS_ij k_j / √D; one pass per
    /// key tile for dK and dV (over the query heads of its group and the query tiles from the diagonal on), one pass
    /// per query tile for dQ.
    public static func flashAttentionBackward(dq: inout [Float], dk: inout [Float], dv: inout [Float], dout: [Float],
                                              out: [Float], lse: [Float], q: [Float], k: [Float], v: [Float],
                                              batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int,
                                              starts: [Int]? = nil) {
        let T = tokens, D = headDim, group = heads / kvHeads
        let scale = 1 / Float(D).squareRoot(), sl2 = scale * log2e
        var delta = [Float](repeating: 0, count: batch * heads * T)
        for b in 0..<batch {
            for i in 0..<T {
                for h in 0..<heads {
                    let qi = ((b * T + i) * heads + h) * D
                    var sum: Float = 0
                    for d in 0..<D { sum += dout[qi + d] * out[qi + d] }
                    delta[(b * heads + h) * T + i] = sum
                }
            }
        }
        q.withUnsafeBufferPointer { q in k.withUnsafeBufferPointer { k in v.withUnsafeBufferPointer { v in
        dout.withUnsafeBufferPointer { dout in
        // The probability P_ij and dS_ij of one (query, key) pair of head h, recomputed from lse and delta.
        func recompute(_ b: Int, _ h: Int, _ kh: Int, _ i: Int, _ j: Int) -> (p: Float, ds: Float) {
            let qi = ((b * T + i) * heads + h) * D, kj = ((b * T + j) * kvHeads + kh) * D
            var s: Float = 0, dp: Float = 0
            for d in 0..<D {
                s += q[qi + d] * k[kj + d]
                dp += dout[qi + d] * v[kj + d]
            }
            let row = (b * heads + h) * T + i
            let p = exp2(s * sl2 - lse[row] * log2e)
            return (p, p * (dp - delta[row]))
        }
        // dK and dV, one key tile at a time.
        let (kvKeys, kvRows) = flashKeyValueTile
        var dkAcc = [Float](repeating: 0, count: kvKeys * D), dvAcc = dkAcc
        for b in 0..<batch {
            for kh in 0..<kvHeads {
                for j0 in stride(from: 0, to: T, by: kvKeys) {
                    let keys = min(kvKeys, T - j0)
                    for x in dkAcc.indices { dkAcc[x] = 0; dvAcc[x] = 0 }
                    for h in (kh * group)..<((kh + 1) * group) {
                        // From the diagonal tile to the first one whose first row starts past these keys.
                        for i0 in stride(from: j0, to: T, by: kvRows) {
                            if let starts, starts[b * T + i0] > j0 + kvKeys - 1 { break }
                            for i in i0..<min(i0 + kvRows, T) {
                                let qi = ((b * T + i) * heads + h) * D, first = starts?[b * T + i] ?? 0
                                for c in 0..<keys where j0 + c <= i && j0 + c >= first {
                                    let (p, ds) = recompute(b, h, kh, i, j0 + c)
                                    for d in 0..<D {
                                        dvAcc[c * D + d] += p * dout[qi + d]
                                        dkAcc[c * D + d] += ds * q[qi + d]
                                    }
                                }
                            }
                        }
                    }
                    for c in 0..<keys {
                        let kj = ((b * T + j0 + c) * kvHeads + kh) * D
                        for d in 0..<D {
                            dk[kj + d] = dkAcc[c * D + d] * scale
                            dv[kj + d] = dvAcc[c * D + d]
                        }
                    }
                }
            }
        }
        // dQ, one query tile at a time.
        let (qRows, qKeys) = flashQueryTile
        var dqAcc = [Float](repeating: 0, count: qRows * D)
        for b in 0..<batch {
            for h in 0..<heads {
                let kh = h / group
                for i0 in stride(from: 0, to: T, by: qRows) {
                    let rows = min(qRows, T - i0)
                    for x in dqAcc.indices { dqAcc[x] = 0 }
                    let firstTile = (starts?[b * T + i0] ?? 0) / qKeys * qKeys
                    for j0 in stride(from: firstTile, through: i0 + rows - 1, by: qKeys) {
                        for r in 0..<rows {
                            let i = i0 + r, first = max(j0, starts?[b * T + i] ?? 0)
                            for j in first..<max(first, min(j0 + qKeys, i + 1)) {
                                let (_, ds) = recompute(b, h, kh, i, j)
                                let kj = ((b * T + j) * kvHeads + kh) * D
                                for d in 0..<D { dqAcc[r * D + d] += ds * k[kj + d] }
                            }
                        }
                    }
                    for r in 0..<rows {
                        let qi = ((b * T + i0 + r) * heads + h) * D
                        for d in 0..<D { dq[qi + d] = dqAcc[r * D + d] * scale }
                    }
                }
            }
        }
        } } } }
    }
}
