import Foundation

/// The CPU twins of `Kernels/decode.cu`: generation's key/value cache and the attention of one new token per
/// sequence over it. A layer's cache holds keys (or values) as (B, capacity, W), W = Hkv·D.
extension CPUOps {
    /// cache[b, at[b] + t, :] = src[b, t, :] for t < tokens (src is (B, tokens, W)).
    public static func kvCacheWrite(_ cache: inout [Float], _ src: [Float], at: [Int], batch: Int, tokens: Int,
                                    width: Int, capacity: Int) {
        for b in 0..<batch {
            for t in 0..<tokens {
                let to = (b * capacity + at[b] + t) * width, from = (b * tokens + t) * width
                for e in 0..<width { cache[to + e] = src[from + e] }
            }
        }
    }

    /// out (B, H, D) = Σ_j softmax_j(q·k_j / √D) v_j over the first lengths[b] positions of row b of the caches,
    /// for one query token per sequence (q (B, H, D), already rotated); head h reads KV head h / (H / Hkv).
    public static func decodeAttention(_ out: inout [Float], q: [Float], keys: [Float], values: [Float],
                                       lengths: [Int], batch: Int, heads: Int, kvHeads: Int, headDim: Int,
                                       capacity: Int) {
        let d = headDim, width = kvHeads * d, scale = 1 / Float(d).squareRoot()
        for b in 0..<batch {
            var scores = [Float](repeating: 0, count: lengths[b])
            for h in 0..<heads {
                let qh = (b * heads + h) * d, kv = b * capacity * width + h / (heads / kvHeads) * d
                for j in scores.indices {
                    var s: Float = 0
                    for e in 0..<d { s += q[qh + e] * scale * keys[kv + j * width + e] }
                    scores[j] = s
                }
                let m = scores.max() ?? 0
                var z: Float = 0
                for j in scores.indices { scores[j] = Foundation.exp(scores[j] - m); z += scores[j] }
                for e in 0..<d {
                    var o: Float = 0
                    for j in scores.indices { o += scores[j] * values[kv + j * width + e] }
                    out[qh + e] = o / z
                }
            }
        }
    }
}
