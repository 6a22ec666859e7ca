import CPUBackend
import Foundation
import XCTest

/// The CPU twin of the flash-attention kernels against the attention that materializes the probabilities (BLAS
/// version, itself checked against the plain loops in OpGradientTests), on ragged sequence lengths, grouped and
/// plain heads and every supported head dim.
final class FlashAttentionTests: XCTestCase {
    var rng = TestRandom(seed: 2024)
    func random(_ n: Int) -> [Float] { (0..<n).map { _ in rng.normal() } }

    /// ‖a − e‖ / ‖e‖.
    func relativeError(_ a: [Float], _ e: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, e) {
            num += (Double(x) - Double(y)) * (Double(x) - Double(y))
            den += Double(y) * Double(y)
        }
        return a.count == e.count ? (num / max(den, 1e-30)).squareRoot() : .infinity
    }

    /// log Σ_{j ≤ i} exp(q_i·k_j / √D) for every (b, h, i), in Double.
    func referenceLSE(q: [Float], k: [Float], batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                      headDim: Int) -> [Float] {
        let T = tokens, D = headDim, group = heads / kvHeads
        var lse = [Float](repeating: 0, count: batch * heads * T)
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<T {
                    let scores = (0...i).map { j -> Double in
                        let qi = ((b * T + i) * heads + h) * D, kj = ((b * T + j) * kvHeads + h / group) * D
                        let dot = (0..<D).reduce(0.0) { $0 + Double(q[qi + $1]) * Double(k[kj + $1]) }
                        return dot / Double(D).squareRoot()
                    }
                    let m = scores.max()!
                    let sum = scores.reduce(0.0) { $0 + Foundation.exp($1 - m) }
                    lse[(b * heads + h) * T + i] = Float(m + Foundation.log(sum))
                }
            }
        }
        return lse
    }

    func check(batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int,
               file: StaticString = #filePath, line: UInt = #line) {
        let n = batch * tokens * heads * headDim, nkv = batch * tokens * kvHeads * headDim
        let q = random(n), k = random(nkv), v = random(nkv), dout = random(n)
        let label = "B\(batch) T\(tokens) H\(heads) Hkv\(kvHeads) D\(headDim)"

        var out = [Float](repeating: 0, count: n), probs = [Float](repeating: 0, count: batch * heads * tokens * tokens)
        CPUOps.attentionForward(&out, &probs, q: q, k: k, v: v, batch: batch, tokens: tokens, heads: heads,
                                kvHeads: kvHeads, headDim: headDim)
        var dq = [Float](repeating: 0, count: n), dk = [Float](repeating: 0, count: nkv), dv = dk
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, probs: probs, q: q, k: k, v: v, batch: batch,
                                 tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let lse = referenceLSE(q: q, k: k, batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads,
                               headDim: headDim)

        // Outputs start as NaN: every element must be written (overwritten, not accumulated).
        var fOut = [Float](repeating: .nan, count: n), fLSE = [Float](repeating: .nan, count: batch * heads * tokens)
        CPUOps.flashAttentionForward(&fOut, lse: &fLSE, q: q, k: k, v: v, batch: batch, tokens: tokens, heads: heads,
                                     kvHeads: kvHeads, headDim: headDim)
        var fdq = [Float](repeating: .nan, count: n), fdk = [Float](repeating: .nan, count: nkv), fdv = fdk
        CPUOps.flashAttentionBackward(dq: &fdq, dk: &fdk, dv: &fdv, dout: dout, out: fOut, lse: fLSE, q: q, k: k, v: v,
                                      batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim)
        for (what, actual, expected) in [("out", fOut, out), ("lse", fLSE, lse), ("dq", fdq, dq), ("dk", fdk, dk),
                                         ("dv", fdv, dv)] {
            let e = relativeError(actual, expected)
            XCTAssertLessThan(e, 1e-5, "flash attention \(what) \(label): relative error \(e)", file: file, line: line)
        }
    }

    func testEveryHeadDimOnRaggedLengthsAndGroupedHeads() {
        for headDim in [32, 64, 96, 128] {
            check(batch: 1, tokens: 1, heads: 2, kvHeads: 1, headDim: headDim)
            check(batch: 2, tokens: 5, heads: 9, kvHeads: 3, headDim: headDim)
            check(batch: 1, tokens: 37, heads: 9, kvHeads: 3, headDim: headDim)
            check(batch: 1, tokens: 130, heads: 3, kvHeads: 3, headDim: headDim)
        }
    }

    /// Several full tiles of 64 and a ragged one.
    func testLongerSequenceSpanningSeveralTiles() {
        check(batch: 1, tokens: 200, heads: 2, kvHeads: 1, headDim: 32)
    }
}
