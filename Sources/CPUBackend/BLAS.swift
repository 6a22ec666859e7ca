#if canImport(Glibc)
import Glibc
#endif

/// Single-precision matrix products, row-major: `C = alpha · op(A) · op(B) + beta · C`.
///
/// Uses an optimized CBLAS (OpenBLAS, or any `libcblas`/`libblas` exporting `cblas_sgemm`) loaded with `dlopen`, so
/// the binary builds and runs where none is installed; without one it falls back to `naiveSgemm`, the reference.
public enum BLAS {
    typealias SgemmFunction = @convention(c) (
        Int32, Int32, Int32, Int32, Int32, Int32, Float, UnsafePointer<Float>?, Int32,
        UnsafePointer<Float>?, Int32, Float, UnsafeMutablePointer<Float>?, Int32) -> Void

    private static let sgemmFunction: SgemmFunction? = {
        for name in ["libopenblas.so.0", "libopenblas.so", "libcblas.so.3", "libblas.so.3", "libblas.so"] {
            guard let handle = dlopen(name, RTLD_NOW | RTLD_LOCAL) else { continue }
            if let symbol = dlsym(handle, "cblas_sgemm") { return unsafeBitCast(symbol, to: SgemmFunction.self) }
        }
        return nil
    }()

    /// The library in use, for reports.
    public static var implementation: String { sgemmFunction == nil ? "naive Swift (no CBLAS found)" : "CBLAS (dlopen)" }

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
        if sgemmFunction != nil {
            cblasSgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                       b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        } else {
            naiveSgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                       b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    /// The CBLAS's own `cblas_sgemm` (requires `hasCBLAS`; k > 0).
    public static func cblasSgemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int) {
        sgemmFunction!(101, transposeA ? 112 : 111, transposeB ? 112 : 111, Int32(m), Int32(n), Int32(k), alpha, a,
                       Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The plain triple loop (accumulating in float32), kept as the oracle and the fallback.
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
