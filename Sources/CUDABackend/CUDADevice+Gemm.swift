import Foundation

/// What identifies a matrix product's cuBLASLt plan.
struct GemmKey: Hashable {
    var m, n, k, lda, ldb, ldc: Int
    var transA, transB: Bool
    var inputs, output: GPUDType
    var batch, strideA, strideB, strideC: Int
}

/// A product's descriptors and its algorithm, made once per shape. `candidates` are the heuristic's proposals, best
/// guess first (cublasLtMatmulHeuristicResult_t each: the algo in the first 64 bytes, then its workspace size); the
/// shape's second call times them and keeps the fastest whose result is bit for bit the first's (see `tune`), so
/// the choice never changes a number. A shape met once (a one-off length) is not worth timing.
final class GemmPlan {
    let desc: UnsafeMutableRawPointer?
    let layoutA, layoutB, layoutC: UnsafeMutableRawPointer?
    let candidates: UnsafeMutableRawPointer
    let candidateCount: Int
    var chosen = 0
    var tuned: Bool
    var calls = 0
    func candidate(_ i: Int) -> UnsafeMutableRawPointer { candidates + i * CublasLt.heuristicResultSize }
    var algo: UnsafeMutableRawPointer { candidate(chosen) }
    /// The workspace bytes a candidate (a heuristic result) needs.
    static func workspaceSize(_ candidate: UnsafeMutableRawPointer) -> Int {
        candidate.load(fromByteOffset: 64, as: Int.self)
    }
    init(desc: UnsafeMutableRawPointer?, layoutA: UnsafeMutableRawPointer?, layoutB: UnsafeMutableRawPointer?,
         layoutC: UnsafeMutableRawPointer?, candidates: UnsafeMutableRawPointer, candidateCount: Int) {
        self.desc = desc; self.layoutA = layoutA; self.layoutB = layoutB; self.layoutC = layoutC
        self.candidates = candidates; self.candidateCount = candidateCount
        tuned = candidateCount < 2
    }
}

extension CUDADevice {
    /// Bytes of cuBLASLt workspace (32 MiB, as NVIDIA advises for Hopper).
    static let workspaceBytes = 32 << 20
    /// `QLORA_GEMM_TUNE=log` prints each timed shape's candidates and choice.
    static let logsTuning = ProcessInfo.processInfo.environment["QLORA_GEMM_TUNE"] == "log"
    /// How many of the heuristic's algorithms a shape's second call times (`QLORA_GEMM_TUNE=0`: the first only).
    static let tuningCandidates = ProcessInfo.processInfo.environment["QLORA_GEMM_TUNE"] == "0" ? 1 : 8
    /// At most this many shapes are timed in a process (lengths that change every batch would otherwise time new
    /// shapes every step); later ones keep the heuristic's first choice.
    static let tunedShapesLimit = 64
    /// Outputs larger than this are not timed (the host holds three copies while comparing: a vocabulary's logits
    /// would cost more host memory than the product's few percent are worth).
    static let tunedOutputLimit = 256 << 20

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
        // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: cuBLASLt's first operand is our B.
        let run = { (algo: UnsafeMutableRawPointer) -> Int32 in
            var alpha = alpha, beta = beta
            return withUnsafePointer(to: &alpha) { ap in withUnsafePointer(to: &beta) { bp in
                self.blas.cublasLtMatmul(self.blasHandle, plan.desc, ap,
                                         UnsafeRawPointer(bitPattern: UInt(b.address(at: bOffset))), plan.layoutA,
                                         UnsafeRawPointer(bitPattern: UInt(a.address(at: aOffset))), plan.layoutB, bp,
                                         UnsafeRawPointer(bitPattern: UInt(c.address(at: cOffset))), plan.layoutC,
                                         UnsafeMutableRawPointer(bitPattern: UInt(output.address(at: outputOffset))),
                                         plan.layoutC, UnsafeRawPointer(algo),
                                         UnsafeMutableRawPointer(bitPattern: UInt(self.workspace!.address)),
                                         GemmPlan.workspaceSize(algo), self.stream)
            } }
        }
        plan.calls += 1
        if !plan.tuned && plan.calls >= 2 && gemmShapesTuned < Self.tunedShapesLimit {
            let bytes = ((batch > 1 ? (batch - 1) * strideC : 0) + (m - 1) * ldc + n) * c.dtype.size
            if bytes <= Self.tunedOutputLimit {
                gemmShapesTuned += 1
                try tune(plan, bytes: bytes, output: output.address(at: outputOffset), run: run)
            } else {
                plan.tuned = true
            }
        }
        let started = try profileStart()
        defer { if let started { profileEnd("gemm:\(gemmLabel)", started) } }
        try blas.check(run(plan.algo),
                       "cublasLtMatmul(m \(m), n \(n), k \(k), \(a.dtype) → \(c.dtype), batch \(batch))")
        if Self.synchronizesEveryCall { try synchronize() }
    }

    /// Times each candidate algorithm of `plan` on this call's operands (one run to warm up, then the best of three)
    /// and keeps the fastest whose output equals, bit for bit, the heuristic's first choice: algorithms that split
    /// the sum over k differently round differently, and a faster product must not change what training computes.
    /// The output region (`bytes` at `output`, which the product may also read: beta 1 in place) is saved on the
    /// host first and put back before each compared run and at the end, so the call that follows computes what it
    /// would have without tuning. Once per shape, in the first step.
    func tune(_ plan: GemmPlan, bytes: Int, output: UInt64, run: (UnsafeMutableRawPointer) -> Int32) throws {
        plan.tuned = true
        var saved = [UInt8](repeating: 0, count: bytes)
        try saved.withUnsafeMutableBytes { try read(output, into: $0) }
        defer { try? saved.withUnsafeBytes { try copy(bytes: $0, to: output) } }
        var start: UnsafeMutableRawPointer? = nil, end: UnsafeMutableRawPointer? = nil
        try driver.check(driver.cuEventCreate(&start, 0), "cuEventCreate (gemm tuning)")
        try driver.check(driver.cuEventCreate(&end, 0), "cuEventCreate (gemm tuning)")
        defer { _ = driver.cuEventDestroy(start); _ = driver.cuEventDestroy(end) }
        var times: [(ms: Float, index: Int)] = []
        for i in 0..<plan.candidateCount {
            let algo = plan.candidate(i)
            guard run(algo) == 0 else { continue }   // a candidate that cannot run here is skipped
            var best = Float.infinity
            for _ in 0..<3 {
                try driver.check(driver.cuEventRecord(start, stream), "cuEventRecord (gemm tuning)")
                _ = run(algo)
                try driver.check(driver.cuEventRecord(end, stream), "cuEventRecord (gemm tuning)")
                try driver.check(driver.cuEventSynchronize(end), "cuEventSynchronize (gemm tuning)")
                var ms: Float = 0
                try driver.check(driver.cuEventElapsedTime(&ms, start, end), "cuEventElapsedTime")
                best = min(best, ms)
            }
            times.append((best, i))
        }
        // The first choice must run: it is the reference. A candidate must be 2% faster to be worth the check.
        guard let first = times.first, first.index == 0 else { return }
        func result(_ index: Int) throws -> [UInt8] {
            try saved.withUnsafeBytes { try copy(bytes: $0, to: output) }
            _ = run(plan.candidate(index))
            var out = [UInt8](repeating: 0, count: bytes)
            try out.withUnsafeMutableBytes { try read(output, into: $0) }
            return out
        }
        var reference: [UInt8]? = nil
        for t in times.sorted(by: { $0.ms < $1.ms }) where t.index != 0 && t.ms < 0.98 * first.ms {
            if reference == nil { reference = try result(0) }
            if try result(t.index) == reference { plan.chosen = t.index; break }
        }
        if Self.logsTuning {
            let list = times.map { "\($0.index):\(String(format: "%.3f", $0.ms))" }.joined(separator: " ")
            FileHandle.standardError.write(Data("gemm tuning \(bytes) B out: ms \(list) → \(plan.chosen)\n".utf8))
        }
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
        try blas.check(blas.cublasLtMatmulDescCreate(&desc, CublasLt.computeType32F, CublasLt.dataTypeF32),
                       "cublasLtMatmulDescCreate")
        var opA: Int32 = key.transB ? 1 : 0, opB: Int32 = key.transA ? 1 : 0
        try blas.check(blas.cublasLtMatmulDescSetAttribute(desc, CublasLt.descTransA, &opA, 4), "set TRANSA")
        try blas.check(blas.cublasLtMatmulDescSetAttribute(desc, CublasLt.descTransB, &opB, 4), "set TRANSB")
        func layout(_ type: GPUDType, rows: Int, cols: Int, ld: Int, stride: Int) throws -> UnsafeMutableRawPointer? {
            var l: UnsafeMutableRawPointer? = nil
            try blas.check(blas.cublasLtMatrixLayoutCreate(&l, Self.dataType(type), UInt64(rows), UInt64(cols),
                                                           Int64(ld)),
                           "cublasLtMatrixLayoutCreate(\(rows) × \(cols), ld \(ld))")
            if key.batch > 1 {
                var count = Int32(key.batch), s = Int64(stride)
                try blas.check(blas.cublasLtMatrixLayoutSetAttribute(l, CublasLt.layoutBatchCount, &count, 4),
                               "set BATCH_COUNT")
                try blas.check(blas.cublasLtMatrixLayoutSetAttribute(l, CublasLt.layoutBatchStride, &s, 8),
                               "set BATCH_STRIDE")
            }
            return l
        }
        // Column-major views: our B is (n × k) unless transposed, our A is (k × m) unless transposed, C is (n × m).
        let layoutA = try layout(key.inputs, rows: key.transB ? key.k : key.n, cols: key.transB ? key.n : key.k,
                                 ld: key.ldb, stride: key.strideB)
        let layoutB = try layout(key.inputs, rows: key.transA ? key.m : key.k, cols: key.transA ? key.k : key.m,
                                 ld: key.lda, stride: key.strideA)
        let layoutC = try layout(key.output, rows: key.n, cols: key.m, ld: key.ldc, stride: key.strideC)
        var preference: UnsafeMutableRawPointer? = nil
        try blas.check(blas.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        defer { _ = blas.cublasLtMatmulPreferenceDestroy(preference) }
        var limit = UInt64(Self.workspaceBytes)
        try blas.check(blas.cublasLtMatmulPreferenceSetAttribute(preference, CublasLt.preferenceMaxWorkspace,
                                                                 &limit, 8), "set MAX_WORKSPACE")
        let wanted = Self.tuningCandidates
        let result = UnsafeMutableRawPointer.allocate(byteCount: CublasLt.heuristicResultSize * wanted, alignment: 16)
        result.initializeMemory(as: UInt8.self, repeating: 0, count: CublasLt.heuristicResultSize * wanted)
        var found: Int32 = 0
        try blas.check(blas.cublasLtMatmulAlgoGetHeuristic(blasHandle, desc, layoutA, layoutB, layoutC, layoutC,
                                                           preference, Int32(wanted), result, &found),
                       "cublasLtMatmulAlgoGetHeuristic(m \(key.m), n \(key.n), k \(key.k), " +
                       "\(key.inputs) → \(key.output))")
        guard found > 0 else {
            throw CUDAError.invalidArgument("cuBLASLt has no algorithm for m \(key.m), n \(key.n), k \(key.k), " +
                                            "\(key.inputs) → \(key.output)")
        }
        let plan = GemmPlan(desc: desc, layoutA: layoutA, layoutB: layoutB, layoutC: layoutC, candidates: result,
                            candidateCount: Int(found))
        gemmPlans[key] = plan
        return plan
    }
}
