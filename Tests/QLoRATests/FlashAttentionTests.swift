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

    /// log Σ_{start ≤ j ≤ i} exp(q_i·k_j / √D) for every (b, h, i), in Double.
    func referenceLSE(q: [Float], k: [Float], batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                      headDim: Int, starts: [Int]?) -> [Float] {
        let T = tokens, D = headDim, group = heads / kvHeads
        var lse = [Float](repeating: 0, count: batch * heads * T)
        for b in 0..<batch {
            for h in 0..<heads {
                for i in 0..<T {
                    let scores = ((starts?[b * T + i] ?? 0)...i).map { j -> Double in
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

    func check(batch: Int, tokens: Int, heads: Int, kvHeads: Int, headDim: Int, starts: [Int]? = nil,
               file: StaticString = #filePath, line: UInt = #line) {
        let n = batch * tokens * heads * headDim, nkv = batch * tokens * kvHeads * headDim
        let q = random(n), k = random(nkv), v = random(nkv), dout = random(n)
        let label = "B\(batch) T\(tokens) H\(heads) Hkv\(kvHeads) D\(headDim)" + (starts == nil ? "" : " packed")

        var out = [Float](repeating: 0, count: n), probs: [Float] = []
        CPUOps.attentionForward(&out, &probs, q: q, k: k, v: v, batch: batch, tokens: tokens, heads: heads,
                                kvHeads: kvHeads, headDim: headDim, starts: starts)
        var dq = [Float](repeating: 0, count: n), dk = [Float](repeating: 0, count: nkv), dv = dk
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dout, probs: probs, q: q, k: k, v: v, batch: batch,
                                 tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim, starts: starts)
        let lse = referenceLSE(q: q, k: k, batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads,
                               headDim: headDim, starts: starts)

        // Outputs start as NaN: every element must be written (overwritten, not accumulated).
        var fOut = [Float](repeating: .nan, count: n), fLSE = [Float](repeating: .nan, count: batch * heads * tokens)
        CPUOps.flashAttentionForward(&fOut, lse: &fLSE, q: q, k: k, v: v, batch: batch, tokens: tokens, heads: heads,
                                     kvHeads: kvHeads, headDim: headDim, starts: starts)
        var fdq = [Float](repeating: .nan, count: n), fdk = [Float](repeating: .nan, count: nkv), fdv = fdk
        CPUOps.flashAttentionBackward(dq: &fdq, dk: &fdk, dv: &fdv, dout: dout, out: fOut, lse: fLSE, q: q, k: k, v: v,
                                      batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim,
                                      starts: starts)
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

    /// Generation's attention (one new token per row over the cached keys, CPUOps.decodeAttention) is the last row
    /// of causal attention over the whole sequence; rows of different lengths in one cache, written by kvCacheWrite.
    func testDecodeAttentionIsTheLastRowOfAttention() {
        let heads = 6, kvHeads = 2, d = 64, capacity = 50, width = kvHeads * d, longest = 37
        var keys = [Float](repeating: .nan, count: 2 * capacity * width), values = keys
        let allKeys = random(2 * longest * width), allValues = random(2 * longest * width)
        CPUOps.kvCacheWrite(&keys, allKeys, at: [0, 0], batch: 2, tokens: longest, width: width, capacity: capacity)
        CPUOps.kvCacheWrite(&values, allValues, at: [0, 0], batch: 2, tokens: longest, width: width,
                            capacity: capacity)
        var q: [Float] = [], expected: [Float] = []
        let lengths = [1, longest]
        for (b, t) in lengths.enumerated() {
            let rows = (b * longest * width)..<((b * longest + t) * width)
            let qs = random(t * heads * d), ks = Array(allKeys[rows]), vs = Array(allValues[rows])
            var out = [Float](repeating: 0, count: t * heads * d), probs: [Float] = []
            CPUOps.attentionForward(&out, &probs, q: qs, k: ks, v: vs, batch: 1, tokens: t, heads: heads,
                                    kvHeads: kvHeads, headDim: d)
            q += qs.suffix(heads * d)
            expected += out.suffix(heads * d)
        }
        var out = [Float](repeating: 0, count: 2 * heads * d)
        CPUOps.decodeAttention(&out, q: q, keys: keys, values: values, lengths: lengths, batch: 2, heads: heads,
                               kvHeads: kvHeads, headDim: d, capacity: capacity)
        XCTAssertLessThan(relativeError(out, expected), 1e-5)
    }

    /// The row-local document start of every token of rows cut into documents of these lengths (each row's lengths
    /// summing to `tokens`).
    static func starts(rows: [[Int]]) -> [Int] {
        rows.flatMap { lengths in
            var at = 0
            return lengths.flatMap { length -> [Int] in
                defer { at += length }
                return Array(repeating: at, count: length)
            }
        }
    }

    /// Packed documents: starts inside a tile, on a tile's first row (64, 128), a one-token document, a document
    /// longer than two tiles, and a row that is one document; the skipped tiles and the masked ones both appear.
    func testPackedDocumentsSeeOnlyThemselves() {
        let rows = [[30, 34, 64, 1, 71], [200], [5, 150, 45]]
        check(batch: 3, tokens: 200, heads: 4, kvHeads: 2, headDim: 32, starts: Self.starts(rows: rows))
        check(batch: 1, tokens: 130, heads: 3, kvHeads: 3, headDim: 64, starts: Self.starts(rows: [[64, 64, 2]]))
    }
}
