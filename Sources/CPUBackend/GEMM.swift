import CGEMM
import Dispatch
import Foundation

/// Our matrix products (the C target CGEMM): `C = alpha · op(A) · op(B) + beta · C`, row-major float32, with a
/// micro-kernel for the processor's widest vectors picked at run time, and the output split statically over the
/// machine's cores (Dispatch's workers, which sleep when idle). `bf16` rounds A and B to bf16 (nearest even) and
/// accumulates in float32, as a bf16 compute dtype multiplies.
public enum GEMM {
    /// One of CGEMM's micro-kernels.
    public struct Kernel: Hashable, Sendable, CustomStringConvertible {
        let index: Int32

        /// Every kernel the package holds, supported here or not.
        public static let all = (0..<cgemm_kernel_count()).map { Kernel(index: $0) }
        /// The fastest one this processor runs for float32 products, and for bf16 ones.
        public static let bestFP32 = Kernel(index: cgemm_best_kernel(0))
        public static let bestBF16 = Kernel(index: cgemm_best_kernel(1))

        /// "portable", "avx2", "avx512" or "avx512bf16".
        public var name: String { String(cString: cgemm_kernel_name(index)) }
        public var description: String { name }
        /// Whether this processor can run it.
        public var isSupported: Bool { cgemm_kernel_supported(index) != 0 }
        /// Whether it multiplies bf16 pairs (bf16 products only).
        public var isBF16: Bool { cgemm_kernel_is_bf16(index) != 0 }

        /// Whether it is plain C (no vector instructions of its own).
        public var isPortable: Bool { index == 0 }
    }

    /// op(B) packed whole for one kernel, as its products read it (`cgemm_pack_b`): a frozen matrix (a base weight)
    /// packed once instead of in every product that reads it.
    public final class PackedMatrix: @unchecked Sendable {
        /// The kernel it is packed for, whether rounded to bf16, and op(B)'s shape (k × n).
        public let kernel: Kernel, bf16: Bool, n: Int, k: Int
        let lanes: [Float]   // 32-bit lanes: floats, or bf16 pairs for a pair kernel

        /// op(B) = Bᵀ (B n×k) with `transposeB`, else B (k×n); row stride `ldb`.
        public init(transposeB: Bool, n: Int, k: Int, b: UnsafePointer<Float>, ldb: Int, bf16: Bool,
                    kernel: Kernel? = nil) {
            let kernel = kernel ?? (bf16 ? Kernel.bestBF16 : Kernel.bestFP32)
            precondition(kernel.isSupported && (bf16 || !kernel.isBF16), "GEMM kernel \(kernel) cannot pack this")
            self.kernel = kernel; self.bf16 = bf16; self.n = n; self.k = k
            lanes = [Float](unsafeUninitializedCapacity: max(0, cgemm_packed_size(kernel.index, n, k))) { out, count in
                cgemm_pack_b(kernel.index, bf16 ? 1 : 0, transposeB ? 1 : 0, n, k, b, ldb, out.baseAddress)
                count = out.count
            }
        }
    }

    /// C (m×n) = alpha · op(A) · B + beta · C with B packed (`PackedMatrix`, whose kernel and rounding it
    /// uses): the same result, bit for bit, as `sgemm` with that kernel on the unpacked matrix.
    public static func sgemm(transposeA: Bool, m: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                             packed b: PackedMatrix, beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
                             threads: Int? = nil) {
        guard m > 0, b.n > 0 else { return }
        let (n, k) = (b.n, b.k)
        let parts = threads ?? (m * n * k < threadedWork ? 1 : cores)
        b.lanes.withUnsafeBufferPointer { lanes in
            let run = { (part: Int) in
                cgemm_compute_packed(b.kernel.index, b.bf16 ? 1 : 0, transposeA ? 1 : 0, m, n, k, alpha, a, lda,
                                     lanes.baseAddress, beta, c, ldc, Int32(part), Int32(parts))
            }
            if parts == 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: parts, execute: run) }
        }
    }

    /// The cores the products are split over.
    public static let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Below this many multiply-adds a product runs on the calling thread alone.
    static let threadedWork = 1 << 19

    /// C (m×n) = alpha · op(A) · op(B) + beta · C, op(A) m×k and op(B) k×n; `lda`, `ldb`, `ldc` are row strides.
    /// `kernel` defaults to the fastest supported one for `bf16`; `threads` to the machine's cores (one for small
    /// products).
    public static func sgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, bf16: Bool = false,
                             kernel: Kernel? = nil, threads: Int? = nil) {
        guard m > 0, n > 0 else { return }
        let kernel = kernel ?? (bf16 ? Kernel.bestBF16 : Kernel.bestFP32)
        precondition(kernel.isSupported && (bf16 || !kernel.isBF16), "GEMM kernel \(kernel) cannot run this product")
        let parts = threads ?? (m * n * k < threadedWork ? 1 : cores)
        let run = { (part: Int) in
            cgemm_compute(kernel.index, bf16 ? 1 : 0, transposeA ? 1 : 0, transposeB ? 1 : 0, m, n, k, alpha,
                          a, lda, b, ldb, beta, c, ldc, Int32(part), Int32(parts))
        }
        if parts == 1 { run(0) } else { DispatchQueue.concurrentPerform(iterations: parts, execute: run) }
    }
}
