import XCTest
@testable import Llama

/// The dropout masks both devices draw (`LoRADropout`; the GPU kernels in lora.cu compute the same integers).
final class LoRADropoutTests: XCTestCase {
    /// Row keys and keep patterns computed independently (a few lines of Python integer arithmetic on the same
    /// definition: the 32-bit finalizer with multipliers 0x7feb352d and 0x846ca68b, shifts 16, 15, 16; one hash per
    /// pair of columns, low half for the even one).
    func testMatchesAnIndependentComputation() {
        XCTAssertEqual(LoRADropout.mix(0), 0)
        XCTAssertEqual(LoRADropout.mix(1), 0x6889_90c0)
        XCTAssertEqual(LoRADropout.mix(0xdead_beef), 0xe628_c683)
        let seed: UInt64 = 0x0123_4567_89ab_cdef
        let expected: [(Int, UInt32, String)] = [
            (0, 0x5cbd_2392, "111011111111111111111111111111111111111111111110"),
            (1, 0x71fd_d102, "011111011101111111111111111101111101111111111111"),
            (7, 0xf1c3_d5f5, "111111110111111101111111111111101111111111111111")]
        for (row, key, pattern) in expected {
            XCTAssertEqual(LoRADropout.rowKey(seed: seed, row: row), key, "row \(row)")
            let bound = LoRADropout.threshold(keep: 0.9)
            let drawn = (0..<48).map { LoRADropout.kept(key: key, column: $0, threshold: bound) ? "1" : "0" }.joined()
            XCTAssertEqual(drawn, pattern, "row \(row)")
        }
    }

    /// The kept fraction is the keep rate, neighbours are uncorrelated, and the multipliers are 1/keep or 0.
    func testStatistics() {
        let rows = 1000, width = 1000, keep: Float = 0.95
        let m = LoRADropout.mask(seed: 99, rows: rows, width: width, keep: keep)
        let kept = m.filter { $0 != 0 }
        XCTAssertTrue(kept.allSatisfy { $0 == 1 / keep })
        let fraction = Double(kept.count) / Double(m.count)
        XCTAssertEqual(fraction, 0.95, accuracy: 0.002)   // ~9 standard deviations of a fair draw
        // Agreement between horizontal and vertical neighbours: p² + (1 − p)² = 0.905 when independent.
        var sameRight = 0, sameBelow = 0
        for r in 0..<(rows - 1) {
            for c in 0..<(width - 1) {
                if (m[r * width + c] == 0) == (m[r * width + c + 1] == 0) { sameRight += 1 }
                if (m[r * width + c] == 0) == (m[(r + 1) * width + c] == 0) { sameBelow += 1 }
            }
        }
        let pairs = Double((rows - 1) * (width - 1))
        XCTAssertEqual(Double(sameRight) / pairs, 0.905, accuracy: 0.003)
        XCTAssertEqual(Double(sameBelow) / pairs, 0.905, accuracy: 0.003)
        // Different projections and layers draw different masks from one step seed.
        let q = LoRADropout.seed(5, layer: 0, projection: "q_proj")
        let k = LoRADropout.seed(5, layer: 0, projection: "k_proj")
        XCTAssertNotEqual(q, k)
        XCTAssertNotEqual(LoRADropout.mask(seed: q, rows: 4, width: 64, keep: 0.5),
                          LoRADropout.mask(seed: k, rows: 4, width: 64, keep: 0.5))
        XCTAssertNotEqual(q, LoRADropout.seed(5, layer: 1, projection: "q_proj"))
    }
    /// The bits a step keeps are `mask`'s draw, on ragged widths (a row's last word partly used), and applying them
    /// multiplies by the mask.
    func testKeptBitsAreTheMask() {
        // Ragged widths around the vector paths' 16- and 64-column steps, and a model's 576 and 1539.
        for (rows, width, keep) in [(1, 1, Float(0.5)), (70, 130, 0.9), (3, 64, 0.95), (129, 65, 0.3),
                                    (2, 31, 0.5), (3, 33, 0.7), (4, 576, 0.95), (5, 1539, 0.95)] {
            let mask = LoRADropout.mask(seed: 42, rows: rows, width: width, keep: keep)
            let bits = LoRADropout.KeptBits(seed: 42, rows: rows, width: width, keep: keep)
            var drawn = [Float](repeating: 0, count: rows * width)
            for r in 0..<rows {
                for c in 0..<width where bits.isKept(row: r, column: c) { drawn[r * width + c] = 1 / keep }
            }
            XCTAssertEqual(drawn, mask, "\(rows) × \(width)")
            let x = (0..<(rows * width)).map { Float($0 % 17) - 8 }
            var applied = [Float](repeating: .nan, count: x.count), summed = x
            x.withUnsafeBufferPointer { xp in
                applied.withUnsafeMutableBufferPointer { bits.apply(xp.baseAddress!, into: $0.baseAddress!) }
                summed.withUnsafeMutableBufferPointer { bits.accumulate(xp.baseAddress!, into: $0.baseAddress!) }
            }
            XCTAssertEqual(applied, zip(x, mask).map { $0 * $1 })
            XCTAssertEqual(summed, zip(x, mask).map { $0 + $0 * $1 })
        }
    }
}
