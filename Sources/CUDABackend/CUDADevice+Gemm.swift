import Foundation

/// What identifies a matrix product's cuBLASLt plan.
struct GemmKey: Hashable {
    var m, n, k, lda, ldb, ldc: Int
    var transA, transB: Bool
    var inputs, output: GPUDType
    var batch, strideA, strideB, strideC: Int
}

/// A product's descriptors and the algorithm the heuristic chose, made once per shape.
final class GemmPlan {
    let desc: UnsafeMutableRawPointer?
    let layoutA, layoutB, layoutC: UnsafeMutableRawPointer?
    let algo: UnsafeMutableRawPointer   // cublasLtMatmulHeuristicResult_t; the algo is its first 64 bytes
    let workspaceSize: Int
    init(desc: UnsafeMutableRawPointer?, layoutA: UnsafeMutableRawPointer?, layoutB: UnsafeMutableRawPointer?,
         layoutC: UnsafeMutableRawPointer?, algo: UnsafeMutableRawPointer, workspaceSize: Int) {
        self.desc = desc; self.layoutA = layoutA; self.layoutB = layoutB; self.layoutC = layoutC
        self.algo = algo; self.workspaceSize = workspaceSize
    }
}

extension CUDADevice {
    /// Bytes of cuBLASLt workspace (32 MiB, as NVIDIA advises for Hopper).
    static let workspaceBytes = 32 << 20

    /// Row-major C (m × n, leading dimension ldc) = alpha · op(A) · op(B) + beta · C, op(A) (m × k), op(B) (k × n);
    /// A is stored (m × k) or, with `transA`, (k × m), likewise B. A and B share a type (f32 or bf16); C is f32 or
    /// that type; accumulation is float32 (never TF32). With `batch` > 1 the matrices repeat every stride elements.
    /// Offsets are in elements. With `d`, the result goes there instead (D = alpha · op(A) op(B) + beta · C, D laid
    /// out as C): a residual added in the product's epilogue without overwriting it.
    public func gemm(m: Int, n: Int, k: Int, a: DeviceBuffer, aOffset: Int = 0, lda: Int, transA: Bool = false,
                     b: DeviceBuffer, bOffset: Int = 0, ldb: Int, transB: Bool = false,
                     c: DeviceBuffer, cOffset: Int = 0, ldc: Int, alpha: Float = 1, beta: Float = 0,
                     d: DeviceBuffer? = nil, dOffset: Int = 0,
                     batch: Int = 1, strideA: Int = 0, strideB: Int = 0, strideC: Int = 0) throws {
        precondition(a.dtype == b.dtype, "gemm: A is \(a.dtype), B is \(b.dtype)")
        precondition(d == nil || d!.dtype == c.dtype, "gemm: D must have C's type")
        let (output, outputOffset) = d.map { ($0, dOffset) } ?? (c, cOffset)
        guard m > 0, n > 0, batch > 0 else { return }
        if workspace == nil { workspace = try tagging("cuBLASLt workspace") { try allocate(Self.workspaceBytes, .u8) } }
        guard !isVirtual else { return }
        let key = GemmKey(m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, transA: transA, transB: transB,
                          inputs: a.dtype, output: c.dtype, batch: batch, strideA: strideA, strideB: strideB,
                          strideC: strideC)
        let plan = try gemmPlan(key)
        let started = try profileStart()
        defer { if let started { profileEnd("gemm:\(gemmLabel)", started) } }
        var alpha = alpha, beta = beta
        // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLASLt's first operand is our B.
        let status = withUnsafePointer(to: &alpha) { ap in withUnsafePointer(to: &beta) { bp in
            blas.cublasLtMatmul(blasHandle, plan.desc, ap,
                                UnsafeRawPointer(bitPattern: UInt(b.address(at: bOffset))), plan.layoutA,
                                UnsafeRawPointer(bitPattern: UInt(a.address(at: aOffset))), plan.layoutB, bp,
                                UnsafeRawPointer(bitPattern: UInt(c.address(at: cOffset))), plan.layoutC,
                                UnsafeMutableRawPointer(bitPattern: UInt(output.address(at: outputOffset))),
                                plan.layoutC,
                                UnsafeRawPointer(plan.algo),
                                UnsafeMutableRawPointer(bitPattern: UInt(workspace!.address)), plan.workspaceSize, stream)
        } }
        try blas.check(status, "cublasLtMatmul(m \(m), n \(n), k \(k), \(a.dtype) → \(c.dtype), batch \(batch))")
        if Self.synchronizesEveryCall { try synchronize() }
    }

    private static func dataType(_ t: GPUDType) -> Int32 {
        switch t {
        case .f32: return CublasLt.dataTypeF32
        case .bf16: return CublasLt.dataTypeBF16
        default: preconditionFailure("no matrix products in \(t)")
        }
    }

    func gemmPlan(_ key: GemmKey) throws -> GemmPlan {
        if let p = gemmPlans[key] { return p }
        var desc: UnsafeMutableRawPointer? = nil
        try blas.check(blas.cublasLtMatmulDescCreate(&desc, CublasLt.computeType32F, CublasLt.dataTypeF32), "cublasLtMatmulDescCreate")
        var opA: Int32 = key.transB ? 1 : 0, opB: Int32 = key.transA ? 1 : 0
        try blas.check(blas.cublasLtMatmulDescSetAttribute(desc, CublasLt.descTransA, &opA, 4), "set TRANSA")
        try blas.check(blas.cublasLtMatmulDescSetAttribute(desc, CublasLt.descTransB, &opB, 4), "set TRANSB")
        func layout(_ type: GPUDType, rows: Int, cols: Int, ld: Int, stride: Int) throws -> UnsafeMutableRawPointer? {
            var l: UnsafeMutableRawPointer? = nil
            try blas.check(blas.cublasLtMatrixLayoutCreate(&l, Self.dataType(type), UInt64(rows), UInt64(cols), Int64(ld)),
                           "cublasLtMatrixLayoutCreate(\(rows) × \(cols), ld \(ld))")
            if key.batch > 1 {
                var count = Int32(key.batch), s = Int64(stride)
                try blas.check(blas.cublasLtMatrixLayoutSetAttribute(l, CublasLt.layoutBatchCount, &count, 4), "set BATCH_COUNT")
                try blas.check(blas.cublasLtMatrixLayoutSetAttribute(l, CublasLt.layoutBatchStride, &s, 8), "set BATCH_STRIDE")
            }
            return l
        }
        // Column-major views: our B is (n × k) unless transposed, our A is (k × m) unless transposed, C is (n × m).
        let layoutA = try layout(key.inputs, rows: key.transB ? key.k : key.n, cols: key.transB ? key.n : key.k, ld: key.ldb, stride: key.strideB)
        let layoutB = try layout(key.inputs, rows: key.transA ? key.m : key.k, cols: key.transA ? key.k : key.m, ld: key.lda, stride: key.strideA)
        let layoutC = try layout(key.output, rows: key.n, cols: key.m, ld: key.ldc, stride: key.strideC)
        var preference: UnsafeMutableRawPointer? = nil
        try blas.check(blas.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        defer { _ = blas.cublasLtMatmulPreferenceDestroy(preference) }
        var limit = UInt64(Self.workspaceBytes)
        try blas.check(blas.cublasLtMatmulPreferenceSetAttribute(preference, CublasLt.preferenceMaxWorkspace, &limit, 8), "set MAX_WORKSPACE")
        let result = UnsafeMutableRawPointer.allocate(byteCount: CublasLt.heuristicResultSize * 2, alignment: 16)
        result.initializeMemory(as: UInt8.self, repeating: 0, count: CublasLt.heuristicResultSize * 2)
        var found: Int32 = 0
        try blas.check(blas.cublasLtMatmulAlgoGetHeuristic(blasHandle, desc, layoutA, layoutB, layoutC, layoutC, preference,
                                                           1, result, &found),
                       "cublasLtMatmulAlgoGetHeuristic(m \(key.m), n \(key.n), k \(key.k), \(key.inputs) → \(key.output))")
        guard found > 0 else {
            throw CUDAError.invalidArgument("cuBLASLt has no algorithm for m \(key.m), n \(key.n), k \(key.k), " +
                                            "\(key.inputs) → \(key.output)")
        }
        let workspaceSize = result.load(fromByteOffset: 64, as: Int.self)
        let plan = GemmPlan(desc: desc, layoutA: layoutA, layoutB: layoutB, layoutC: layoutC, algo: result,
                            workspaceSize: workspaceSize)
        gemmPlans[key] = plan
        return plan
    }
}
