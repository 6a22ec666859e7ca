import Foundation

/// cuBLASLt (`libcublasLt.so`): the matrix products. Handles and descriptors are opaque pointers; enum values are
/// those of `cublasLt.h` / `library_types.h`.
final class CublasLt: @unchecked Sendable {
    typealias Handle = UnsafeMutableRawPointer?
    static let computeType32F: Int32 = 68          // CUBLAS_COMPUTE_32F (no TF32)
    static let dataTypeF32: Int32 = 0              // CUDA_R_32F
    static let dataTypeBF16: Int32 = 14            // CUDA_R_16BF
    static let descTransA: Int32 = 3               // CUBLASLT_MATMUL_DESC_TRANSA
    static let descTransB: Int32 = 4               // CUBLASLT_MATMUL_DESC_TRANSB
    static let layoutBatchCount: Int32 = 5         // CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT (int32)
    static let layoutBatchStride: Int32 = 6        // CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET (int64)
    static let preferenceMaxWorkspace: Int32 = 1   // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES (uint64)
    /// sizeof(cublasLtMatmulHeuristicResult_t): the 64-byte algo, workspace size, state, waves, 4 reserved ints.
    static let heuristicResultSize = 96

    let library: DynamicLibrary
    let cublasLtCreate: @convention(c) (UnsafeMutablePointer<Handle>) -> Int32
    let cublasLtMatmulDescCreate: @convention(c) (UnsafeMutablePointer<Handle>, Int32, Int32) -> Int32
    let cublasLtMatmulDescSetAttribute: @convention(c) (Handle, Int32, UnsafeRawPointer, Int) -> Int32
    let cublasLtMatmulDescDestroy: @convention(c) (Handle) -> Int32
    let cublasLtMatrixLayoutCreate: @convention(c) (UnsafeMutablePointer<Handle>, Int32, UInt64, UInt64, Int64) -> Int32
    let cublasLtMatrixLayoutSetAttribute: @convention(c) (Handle, Int32, UnsafeRawPointer, Int) -> Int32
    let cublasLtMatrixLayoutDestroy: @convention(c) (Handle) -> Int32
    let cublasLtMatmulPreferenceCreate: @convention(c) (UnsafeMutablePointer<Handle>) -> Int32
    let cublasLtMatmulPreferenceSetAttribute: @convention(c) (Handle, Int32, UnsafeRawPointer, Int) -> Int32
    let cublasLtMatmulPreferenceDestroy: @convention(c) (Handle) -> Int32
    let cublasLtMatmulAlgoGetHeuristic: @convention(c) (Handle, Handle, Handle, Handle, Handle, Handle, Handle, Int32,
                                                        UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    let cublasLtMatmul: @convention(c) (Handle, Handle, UnsafeRawPointer, UnsafeRawPointer?, Handle, UnsafeRawPointer?,
                                        Handle, UnsafeRawPointer, UnsafeRawPointer?, Handle, UnsafeMutableRawPointer?,
                                        Handle, UnsafeRawPointer?, UnsafeMutableRawPointer?, Int, Handle) -> Int32
    let cublasLtGetStatusString: (@convention(c) (Int32) -> UnsafePointer<CChar>?)?

    init() throws {
        let l = try DynamicLibrary.open(["libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"],
                                        what: "cuBLASLt (libcublasLt.so)",
                                        install: "Install the CUDA toolkit, or `pip install nvidia-cublas`, or set CUDA_HOME.")
        library = l
        cublasLtCreate = try l.function("cublasLtCreate")
        cublasLtMatmulDescCreate = try l.function("cublasLtMatmulDescCreate")
        cublasLtMatmulDescSetAttribute = try l.function("cublasLtMatmulDescSetAttribute")
        cublasLtMatmulDescDestroy = try l.function("cublasLtMatmulDescDestroy")
        cublasLtMatrixLayoutCreate = try l.function("cublasLtMatrixLayoutCreate")
        cublasLtMatrixLayoutSetAttribute = try l.function("cublasLtMatrixLayoutSetAttribute")
        cublasLtMatrixLayoutDestroy = try l.function("cublasLtMatrixLayoutDestroy")
        cublasLtMatmulPreferenceCreate = try l.function("cublasLtMatmulPreferenceCreate")
        cublasLtMatmulPreferenceSetAttribute = try l.function("cublasLtMatmulPreferenceSetAttribute")
        cublasLtMatmulPreferenceDestroy = try l.function("cublasLtMatmulPreferenceDestroy")
        cublasLtMatmulAlgoGetHeuristic = try l.function("cublasLtMatmulAlgoGetHeuristic")
        cublasLtMatmul = try l.function("cublasLtMatmul")
        cublasLtGetStatusString = l.optionalFunction("cublasLtGetStatusString")
    }

    func check(_ status: Int32, _ call: @autoclosure () -> String) throws {
        guard status != 0 else { return }
        let text = cublasLtGetStatusString?(status).map { String(cString: $0) } ?? "cuBLAS status \(status)"
        throw CUDAError.callFailed(call: call(), status: status, message: text)
    }
}
