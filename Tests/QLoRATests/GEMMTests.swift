import CPUBackend
import Tensors
import XCTest

/// Our GEMM kernels against the plain triple loop computed in Double: ragged shapes (none a multiple of the tiles,
/// some crossing the cache blocks), all four transposition cases, padded row strides, the alpha/beta pairs the
/// step uses, one thread and a ragged split over three; each product also with B packed once (equal bits). A
/// kernel this processor lacks is skipped, saying so.
final class GEMMTests: XCTestCase {
    var rng = TestRandom(seed: 15)

    /// (m, n, k): 1, 7, 33 and 577 (past the 120-row and 256-k blocks), a LoRA rank, and n past the 4096 panel.
    static let shapes = [(1, 1, 1), (7, 33, 1), (33, 7, 577), (577, 33, 7), (1, 577, 33), (33, 577, 16),
                         (3, 4100, 5)]
    /// (alpha, beta): a plain product, an accumulating scaled one (LoRA), and a general one.
    static let scalings: [(Float, Float)] = [(1, 0), (0.37, 1), (-1.5, 0.5)]

    func testPortableKernel() throws { try check(GEMM.Kernel.all[0]) }
    func testAVX2Kernel() throws { try check(kernel(named: "avx2")) }
    func testAVX512Kernel() throws { try check(kernel(named: "avx512")) }
    func testAVX512BF16Kernel() throws { try check(kernel(named: "avx512bf16")) }

    /// What `sgemm` picks by default is supported here, and is the widest kernel the processor runs.
    func testDefaultKernels() {
        XCTAssertTrue(GEMM.Kernel.bestFP32.isSupported && !GEMM.Kernel.bestFP32.isBF16)
        XCTAssertTrue(GEMM.Kernel.bestBF16.isSupported)
        let widest = GEMM.Kernel.all.filter { $0.isSupported && !$0.isBF16 }.last!
        XCTAssertEqual(GEMM.Kernel.bestFP32, widest)
    }

    func kernel(named name: String) throws -> GEMM.Kernel {
        guard let kernel = GEMM.Kernel.all.first(where: { $0.name == name }) else {
            throw XCTSkip("the \(name) GEMM kernel is not built for this architecture")
        }
        try XCTSkipUnless(kernel.isSupported,
                          "this processor lacks the \(name) instructions: its GEMM kernel is untested")
        return kernel
    }

    /// Every shape, transposition, scaling and split of `kernel`, in bf16 and (unless it is a bf16 kernel) fp32.
    func check(_ kernel: GEMM.Kernel) throws {
        let precisions = kernel.isBF16 ? [true] : [false, true]
        for (m, n, k) in Self.shapes {
            for transposeA in [false, true] {
                for transposeB in [false, true] {
                    for (s, (alpha, beta)) in Self.scalings.enumerated() {
                        for bf16 in precisions {
                            compare(kernel, bf16: bf16, transposeA, transposeB, m, n, k, alpha, beta,
                                    pad: s, threads: s == 0 ? 1 : 3)
                        }
                    }
                }
            }
        }
    }

    /// One product against the oracle: |C − C*| ≤ 1e-5 · (|alpha| Σ|a||b| + |beta c|) per element, C* in Double
    /// (on bf16-rounded inputs for bf16). Row strides are padded by `pad`; with beta 0, C starts as NaN (it must
    /// not be read).
    func compare(_ kernel: GEMM.Kernel, bf16: Bool, _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int,
                 _ k: Int, _ alpha: Float, _ beta: Float, pad: Int, threads: Int) {
        let aRows = transposeA ? k : m, aCols = transposeA ? m : k
        let bRows = transposeB ? n : k, bCols = transposeB ? k : n
        let lda = aCols + pad, ldb = bCols + pad, ldc = n + pad
        let a = (0..<(aRows * lda)).map { _ in rng.normal() }, b = (0..<(bRows * ldb)).map { _ in rng.normal() }
        let c0 = (0..<(m * ldc)).map { _ in beta == 0 ? Float.nan : rng.normal() }
        var c = c0
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
            GEMM.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                       a: ap.baseAddress!, lda: lda, b: bp.baseAddress!, ldb: ldb, beta: beta, c: cp.baseAddress!,
                       ldc: ldc, bf16: bf16, kernel: kernel, threads: threads)
        } } }
        // The same product with B packed once (GEMM.PackedMatrix, as a frozen weight is) gives the same bits.
        let packed = b.withUnsafeBufferPointer {
            GEMM.PackedMatrix(transposeB: transposeB, n: n, k: k, b: $0.baseAddress!, ldb: ldb, bf16: bf16,
                              kernel: kernel)
        }
        var fromPacked = c0
        a.withUnsafeBufferPointer { ap in fromPacked.withUnsafeMutableBufferPointer { cp in
            GEMM.sgemm(transposeA: transposeA, m: m, alpha: alpha, a: ap.baseAddress!, lda: lda, packed: packed,
                       beta: beta, c: cp.baseAddress!, ldc: ldc, threads: threads)
        } }
        XCTAssertEqual(fromPacked.map(\.bitPattern), c.map(\.bitPattern), "\(kernel) packed B, \(m)×\(n)×\(k)")
        let round: (Float) -> Double = { bf16 ? Double(float(fromBF16: bf16Bits(from: $0))) : Double($0) }
        var worst = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<k {
                    let x = round(transposeA ? a[p * lda + i] : a[i * lda + p])
                    let y = round(transposeB ? b[j * ldb + p] : b[p * ldb + j])
                    sum += x * y
                    magnitude += abs(x * y)
                }
                let old = beta == 0 ? 0 : Double(c0[i * ldc + j])
                let expected = Double(alpha) * sum + Double(beta) * old
                let bound = 1e-5 * (abs(Double(alpha)) * magnitude + abs(Double(beta) * old)) + 1e-30
                worst = max(worst, abs(Double(c[i * ldc + j]) - expected) / bound)
            }
            // The padding past each row of C is left alone.
            for j in n..<ldc where !(c[i * ldc + j].isNaN && c0[i * ldc + j].isNaN) {
                XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j])
            }
        }
        XCTAssertLessThanOrEqual(worst, 1, "\(kernel) \(bf16 ? "bf16" : "fp32") \(transposeA ? "T" : "N")"
                                 + "\(transposeB ? "T" : "N") \(m)×\(n)×\(k) alpha \(alpha) beta \(beta): "
                                 + "error \(worst) of the bound")
    }
}
