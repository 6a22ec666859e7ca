#if canImport(Glibc)
import Glibc
#endif

import Foundation

/// Single-precision matrix products, row-major: `C = alpha · op(A) · op(B) + beta · C`, the CPU ops' one entry.
///
/// Two implementations: ours (`GEMM`, the CGEMM kernels) and an optimized CBLAS (OpenBLAS, or any
/// `libcblas`/`libblas` exporting `cblas_sgemm`) loaded with `dlopen`, so the binary builds and runs where none is
/// installed. `provider` says which one the products go to; `naiveSgemm` is the oracle.
public enum BLAS {
    /// Where the products go.
    public enum Provider: String, Sendable, CaseIterable {
        /// Ours for every product.
        case ours
        /// The CBLAS for every product where one is installed (ours where none is).
        case cblas

        /// `QLORA_GEMM` (ours or cblas) if set, else the default for this processor (`preferred`).
        static let configured: Provider = {
            let value = ProcessInfo.processInfo.environment["QLORA_GEMM"] ?? ""
            // Another value (a typo, another case) used to be ignored without a word.
            if !value.isEmpty, Provider(rawValue: value) == nil {
                FileHandle.standardError.write(Data(("warning: QLORA_GEMM=\(value.prefix(40)) is not one of "
                    + "\(allCases.map(\.rawValue).joined(separator: ", ")); ignored (the products use "
                    + "\(preferred.rawValue))\n").utf8))
            }
            return Provider(rawValue: value) ?? preferred
        }()

        /// Ours where the processor has AVX-512, the CBLAS elsewhere. Measured for issue 15 (2 cores, `qlora
        /// bench-gemm` and `bench --device cpu`): on Zen 3 (AVX2 only) OpenBLAS wins the step's deep products by
        /// 1.1–2× and ours the rank-16 ones, the whole step level; on Sapphire Rapids ours (AVX-512) beats that
        /// machine's OpenBLAS 2–5× a product; on a Zen 5 EPYC (2026-12-03) ours runs the step 1.18× faster than
        /// OpenBLAS 0.3.21 (220 against 187 tokens/s at 1 × 512).
        static var preferred: Provider { GEMM.Kernel.bestFP32.name == "avx512" ? .ours : .cblas }
    }

    /// The provider asked for (`QLORA_GEMM`, for benchmarks that compare the two in one build).
    public static var provider: Provider { Provider.configured }

    /// What the products run on, for reports.
    public static var inUse: String { useCBLAS ? "CBLAS" : "ours (\(GEMM.Kernel.bestFP32))" }

    typealias SgemmFunction = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>?, Int32,
        UnsafePointer<Float>?, Int32, Float, UnsafeMutablePointer<Float>?, Int32) -> Void

    private static let sgemmFunction: SgemmFunction? = {
        // OpenBLAS's idle threads spin for 2^28 cycles (its default) before they sleep, taking a core from the
        // step's own threads (Dispatch's, between products) and from the machine; 2^4 (its least) makes them sleep
        // at once. Read when the library loads; a value already set is kept.
        setenv("OPENBLAS_THREAD_TIMEOUT", "4", 0)
        for name in ["libopenblas.so.0", "libopenblas.so", "libcblas.so.3", "libblas.so.3", "libblas.so"] {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            if let symbol = dlsym(handle, "cblas_sgemm") { return unsafeBitCast(symbol, to: SgemmFunction.self) }
        }
        return nil
    }()

    /// The CBLAS found, for reports.
    public static var implementation: String { sgemmFunction == nil ? "none found" : "CBLAS (dlopen)" }

    /// Whether a CBLAS was found.
    public static var hasCBLAS: Bool { sgemmFunction != nil }

    /// C (m×n) = alpha · op(A) · op(B) + beta · C, with op(A) m×k and op(B) k×n; `lda`, `ldb`, `ldc` are row strides.
    public static func sgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        if useCBLAS {
            cblasSgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                       b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        } else {
            GEMM.sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                       b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    /// Whether the products go to the CBLAS.
    /// (QLORA_GEMM read first, so that a value it cannot take is said where no CBLAS is installed too.)
    static let useCBLAS: Bool = provider != .ours && sgemmFunction != nil

    /// The CBLAS's own `cblas_sgemm` (requires `hasCBLAS`; k > 0).
    public static func cblasSgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        sgemmFunction!(101, transposeA ? 112 : 111, transposeB ? 112 : 111, Int32(m), Int32(n), Int32(k), alpha, a,
                       Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The plain triple loop (accumulating in float32), kept as the oracle.
    public static func naiveSgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var sum: Float = 0
                for p in 0..<k {
                    let av = transposeA ? a[p * lda + i] : a[i * lda + p]
                    let bv = transposeB ? b[j * ldb + p] : b[p * ldb + j]
                    sum += av * bv
                }
                c[i * ldc + j] = alpha * sum + (beta == 0 ? 0 : beta * c[i * ldc + j])
            }
        }
    }
}
