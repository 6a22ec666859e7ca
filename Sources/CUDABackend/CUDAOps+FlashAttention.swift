import Foundation

// Launchers of Kernels/flash_attention.cu: causal GQA attention that keeps only the output and a float32
// log-sum-exp per query row (CPU twin: CPUOps.flashAttentionForward / flashAttentionBackward). The tile sizes, the
// thread counts and the shared-memory sizes below are those of the kernel file's header.

extension CUDADevice {
    /// The head dims the kernels are built for.
    public static let flashAttentionHeadDims = [32, 64, 96, 128]

    /// out (B, T, H, D) and lse (B, H, T, float32: log Σ_{j ≤ i} exp(q_i·k_j / √D)) from q (B, T, H, D), k, v
    /// (B, T, Hkv, D). q, k, v and out are all f32 or all bf16; the kernel variant follows `out.dtype`. With
    /// `starts` (i32, B·T: the row-local index of each token's document start, non-decreasing along a row), query
    /// (b, i) sees keys starts[b·T + i] … i only: packed documents attend within themselves.
    public func flashAttentionForward(_ out: DeviceBuffer, lse: DeviceBuffer, q: DeviceBuffer, k: DeviceBuffer,
                                      v: DeviceBuffer, batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                                      headDim: Int, starts: DeviceBuffer? = nil) throws {
        let shape = FlashAttentionShape(batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim)
        try shape.validate(activations: [("out", out, shape.queryCount), ("q", q, shape.queryCount),
                                         ("k", k, shape.keyCount), ("v", v, shape.keyCount)],
                           rows: [("lse", lse)], starts: starts)
        guard batch > 0, tokens > 0 else { return }
        let bf16 = out.dtype == .bf16
        if bf16 && headDim == 128 && hopperAttention {
            try launch(.flashAttentionHopper, "flash_attention_forward_wgmma_\(Self.flashVariant(headDim, starts))",
                       bf16: true, grid: (shape.tiles(128), heads, batch), block: 256,
                       sharedBytes: Self.hopperSharedBytes,
                       [.buffer(out), .buffer(lse), .buffer(q), .buffer(k), .buffer(v), .int(tokens), .int(heads),
                        .int(kvHeads), .optional(starts)])
            return
        }
        try launch(.flashAttention, "flash_attention_forward_\(Self.flashVariant(headDim, starts))", bf16: bf16,
                   grid: (shape.tiles(bf16 ? 128 : 64), heads, batch), block: Self.flashThreads(bf16),
                   sharedBytes: Self.flashSharedBytes(.forward, headDim: headDim, bf16: bf16),
                   [.buffer(out), .buffer(lse), .buffer(q), .buffer(k), .buffer(v), .int(tokens), .int(heads),
                    .int(kvHeads), .optional(starts)])
    }

    /// dq (B, T, H, D), dk and dv (B, T, Hkv, D), overwritten, from dout, what the forward saved (out, lse) and its
    /// inputs. Three kernels: delta = rowsum(dout ⊙ out) into a scratch buffer, then one block per key tile for dK
    /// and dV, and one block per query tile for dQ (on Hopper: one kernel for all three, adding dQ's float32 partial
    /// sums key block by key block in a fixed order, and one that rounds them). The same inputs give the same bits
    /// every run.
    /// `starts` as the forward had it. With `unrotating` (RoPE's float32 cos and sin tables, (positions, D), and
    /// the i32 positions of the tokens, or nil for 0 ..< T), q and k were rotated by RoPE and dq, dk come out with
    /// the rotation undone: the gradients of the unrotated q and k, with no separate inverse RoPE pass.
    public func flashAttentionBackward(dq: DeviceBuffer, dk: DeviceBuffer, dv: DeviceBuffer, dout: DeviceBuffer,
                                       out: DeviceBuffer, lse: DeviceBuffer, q: DeviceBuffer, k: DeviceBuffer,
                                       v: DeviceBuffer, batch: Int, tokens: Int, heads: Int, kvHeads: Int,
                                       headDim: Int, starts: DeviceBuffer? = nil,
                                       unrotating rope: (cos: DeviceBuffer, sin: DeviceBuffer,
                                                         positions: DeviceBuffer?)? = nil) throws {
        let shape = FlashAttentionShape(batch: batch, tokens: tokens, heads: heads, kvHeads: kvHeads, headDim: headDim)
        let n = shape.queryCount, nkv = shape.keyCount
        try shape.validate(activations: [("dq", dq, n), ("dk", dk, nkv), ("dv", dv, nkv), ("dout", dout, n),
                                         ("out", out, n), ("q", q, n), ("k", k, nkv), ("v", v, nkv)],
                           rows: [("lse", lse)], starts: starts)
        if let rope {
            // Positions restart with each packed document, so none reaches T; a position past the tables' rows
            // would be read out of bounds.
            guard rope.cos.dtype == .f32, rope.sin.dtype == .f32, rope.cos.count >= tokens * headDim,
                  rope.sin.count >= tokens * headDim else {
                throw CUDAError.invalidArgument("flash attention: the RoPE tables must be f32 with at least " +
                                                "\(tokens) × \(headDim) values (\(rope.cos.count), \(rope.sin.count))")
            }
            if let p = rope.positions, p.dtype != .i32 || p.count < batch * tokens {
                throw CUDAError.invalidArgument("flash attention: positions must be i32 with \(batch * tokens) " +
                                                "values (\(p.dtype.rawValue), \(p.count))")
            }
        }
        guard batch > 0, tokens > 0 else { return }
        let bf16 = out.dtype == .bf16, threads = Self.flashThreads(bf16)
        let tables: [KernelArgument] = [.optional(rope?.cos), .optional(rope?.sin), .optional(rope?.positions)]
        let rows = batch * tokens * heads
        let delta = try allocate(rows, .f32)
        try launch(.flashAttention, "flash_attention_backward_dot", bf16: bf16, grid: (rows + 7) / 8, block: 256,
                   [.buffer(delta), .buffer(dout), .buffer(out), .int(tokens), .int(heads), .int(headDim),
                    .long(rows)])
        if bf16 && headDim == 128 && hopperAttention {
            // One kernel for dK, dV and dQ's float32 sums (S and dP computed once), then dq rounded from the sums.
            let variant = Self.flashVariant(headDim, starts)
            let unordered = KernelCompiler.experimentDefines.contains("FA_DQ_UNORDERED=1")
            let sums = try unordered ? zeros(n, .f32) : allocate(n, .f32)
            let arrivals = try zeros(batch * heads * shape.tiles(64), .i32)
            // Grouped-query attention: a block a query head (split), its dK and dV summed over the group in float32.
            let split = heads != kvHeads && Self.splitsGroupedBackward
            let kvSums = split ? try allocate(2 * nkv, .f32) : nil
            let kvArrivals = split ? try zeros(batch * kvHeads * shape.tiles(128), .i32) : nil
            try launch(.flashAttentionHopper, "flash_attention_backward_wgmma_\(split ? "split_" : "")\(variant)",
                       bf16: true, grid: (shape.tiles(128), split ? heads : kvHeads, batch), block: 256,
                       sharedBytes: Self.hopperBackwardBytes,
                       [.buffer(dk), .buffer(dv), .buffer(sums), .buffer(arrivals), .buffer(dout), .buffer(lse),
                        .buffer(delta), .buffer(q), .buffer(k), .buffer(v), .int(tokens), .int(heads), .int(kvHeads),
                        .optional(starts)] + tables + [.optional(kvSums), .optional(kvArrivals)])
            if let kvSums {
                try launch(.flashAttentionHopper, "flash_attention_dq_finish", bf16: true,
                           grid: (batch * tokens * kvHeads + 15) / 16, block: 256,
                           [.buffer(dk), .buffer(kvSums), .int(tokens), .int(kvHeads), .long(batch * tokens * kvHeads)]
                               + tables)
                try cast(dv, from: kvSums.view(at: nkv, count: nkv))
            }
            try launch(.flashAttentionHopper, "flash_attention_dq_finish", bf16: true, grid: (rows + 15) / 16,
                       block: 256, [.buffer(dq), .buffer(sums), .int(tokens), .int(heads), .long(rows)] + tables)
            return
        }
        try launch(.flashAttention, "flash_attention_backward_kv_\(Self.flashVariant(headDim, starts))", bf16: bf16,
                   grid: (shape.tiles(64), kvHeads, batch), block: threads,
                   sharedBytes: Self.flashSharedBytes(.keysAndValues, headDim: headDim, bf16: bf16),
                   [.buffer(dk), .buffer(dv), .buffer(dout), .buffer(lse), .buffer(delta), .buffer(q), .buffer(k),
                    .buffer(v), .int(tokens), .int(heads), .int(kvHeads), .optional(starts)] + tables)
        try launch(.flashAttention, "flash_attention_backward_q_\(Self.flashVariant(headDim, starts))", bf16: bf16,
                   grid: (shape.tiles(64), heads, batch), block: threads,
                   sharedBytes: Self.flashSharedBytes(.queries, headDim: headDim, bf16: bf16),
                   [.buffer(dq), .buffer(dout), .buffer(lse), .buffer(delta), .buffer(q), .buffer(k), .buffer(v),
                    .int(tokens), .int(heads), .int(kvHeads), .optional(starts)] + tables)
    }

    /// Whether the Hopper backward takes grouped-query attention a query head a block (`QLORA_ATTENTION_SPLIT=1`)
    /// or a KV group a block (the default until the split form is measured and checked on a GPU). A simulation of
    /// the blocks' schedule (132 SMs, one block each, dQ added from the highest key block down) put the group form
    /// 30% over its ideal length on llama3-8b's shape, whose blocks are four heads long, against 7% for the split
    /// form and for llama2-7b; the split form costs a float32 sum of dK and dV (2 · B · T · Hkv · 128 values).
    static let splitsGroupedBackward = ProcessInfo.processInfo.environment["QLORA_ATTENTION_SPLIT"] == "1"

    enum FlashKernel { case forward, keysAndValues, queries }

    /// The kernels' name suffix: d128 for plain causal attention, packed_d128 with document starts.
    static func flashVariant(_ headDim: Int, _ starts: DeviceBuffer?) -> String {
        (starts == nil ? "d" : "packed_d") + "\(headDim)"
    }

    /// The Hopper forward's shared memory (flash_attention_sm90.cu's header): six 16 KiB tiles (q twice, k and v two
    /// stages each), 1 KiB to align.
    static let hopperSharedBytes = 6 * 16384 + 1024
    /// The Hopper backward's: eight tiles, two stages of a query tile's lse and delta (1 KiB), a dSᵀ tile (128
    /// keys by 64 queries, 16 KiB), 1 KiB to align.
    static let hopperBackwardBytes = 8 * 16384 + 1024 + 16384 + 1024

    /// s (64 × 64, f32) = a · bkᵀ and o (64 × 128, f32) = a[:, 0..<64] · bv from bf16 a, bk, bv (64 × 128 each,
    /// row-major), through flash_attention_sm90.cu's staging and wgmma descriptors; bv's MN-major descriptor takes
    /// `lbo` and `sbo`. check-cuda's test of the Hopper layouts on their own (sm_90 only).
    public func wgmmaProbe(s: DeviceBuffer, o: DeviceBuffer, a: DeviceBuffer, bk: DeviceBuffer, bv: DeviceBuffer,
                           lbo: Int, sbo: Int) throws {
        guard s.count >= 64 * 64, o.count >= 64 * 128, s.dtype == .f32, o.dtype == .f32,
              [a, bk, bv].allSatisfy({ $0.dtype == .bf16 && $0.count >= 64 * 128 }) else {
            throw CUDAError.invalidArgument("wgmmaProbe: s (4096 f32), o (8192 f32), a, bk, bv (8192 bf16 each)")
        }
        try launch(.flashAttentionHopper, "wgmma_probe", bf16: true, grid: (1, 1, 1), block: 128,
                   sharedBytes: 3 * 16384 + 1024,
                   [.buffer(s), .buffer(o), .buffer(a), .buffer(bk), .buffer(bv), .int32(Int32(lbo)),
                    .int32(Int32(sbo))])
    }

    /// 4 warps of tensor-core tiles (bf16), 16 × 16 threads of plain FMAs (float32).
    static func flashThreads(_ bf16: Bool) -> Int { bf16 ? 128 : 256 }

    /// Dynamic shared memory of each kernel, as the header of flash_attention.cu gives it.
    static func flashSharedBytes(_ kernel: FlashKernel, headDim: Int, bf16: Bool) -> Int {
        if bf16 {
            let pitch = headDim + 8   // bf16 rows padded by 8 elements
            switch kernel {
            case .forward: return 512 * pitch                // q (128 rows), k, v (64 rows each)
            case .keysAndValues: return 768 * pitch + 1024   // k, v; q, dO twice; lse and delta twice
            case .queries: return 768 * pitch                // q, dO; k, v twice (64 rows each)
            }
        }
        let pitch = headDim + 1   // float32 rows padded by one element
        switch kernel {
        case .forward: return 4 * (192 * pitch + 64 * 65)
        case .keysAndValues: return 4 * (256 * pitch + 2 * 64 * 65)
        case .queries: return 4 * (256 * pitch + 64 * 65)
        }
    }

    /// Launches kernel `name` on a 3-D grid of `block`-thread blocks with `sharedBytes` of dynamic shared memory
    /// (raising the kernel's limit first, since beyond 48 KiB a kernel must opt in).
    func launch(_ source: KernelSource, _ name: String, bf16: Bool, grid: (x: Int, y: Int, z: Int), block: Int,
                sharedBytes: Int, _ arguments: [KernelArgument]) throws {
        guard grid.x > 0, grid.y > 0, grid.z > 0, !isVirtual else { return }
        guard grid.y <= 65535, grid.z <= 65535 else {
            throw CUDAError.invalidArgument("\(name): grid \(grid) is too large (at most 65535 heads and 65535 " +
                                            "sequences per call)")
        }
        let function = try self.function(source, name, bf16: bf16)
        if sharedBytes > 48 * 1024 {
            // cuFuncSetAttribute(function, attribute, value), looked up here so that the driver table stays as it is.
            typealias SetAttribute = @convention(c) (UnsafeMutableRawPointer?, Int32, Int32) -> Int32
            guard let setAttribute = driver.library.optionalFunction("cuFuncSetAttribute", as: SetAttribute.self) else {
                throw CUDAError.symbolMissing(library: driver.library.path, symbol: "cuFuncSetAttribute")
            }
            try driver.check(setAttribute(function, 8, Int32(sharedBytes)),   // MAX_DYNAMIC_SHARED_SIZE_BYTES
                             "cuFuncSetAttribute(\(name), \(sharedBytes) bytes of shared memory on \(self.name))")
        }
        let started = try profileStart()
        defer { if let started { profileEnd("kernel:\(source.rawValue)/\(name)", started) } }
        var storage = arguments.map { a -> UInt64 in
            switch a {
            case .buffer(let b): return b.address
            case .address(let v): return v
            case .int32(let v): return UInt64(UInt32(bitPattern: v))
            case .int64(let v): return UInt64(bitPattern: v)
            case .uint64(let v): return v
            case .float(let v): return UInt64(v.bitPattern)
            }
        }
        // Each value at the start of its own 8-byte slot (little-endian), as `launch` has it.
        let status = storage.withUnsafeMutableBufferPointer { values -> Int32 in
            var pointers = (0..<values.count).map {
                UnsafeMutableRawPointer(values.baseAddress! + $0) as UnsafeMutableRawPointer?
            }
            return pointers.withUnsafeMutableBufferPointer { p in
                driver.cuLaunchKernel(function, UInt32(grid.x), UInt32(grid.y), UInt32(grid.z), UInt32(block), 1, 1,
                                      UInt32(sharedBytes), stream, p.baseAddress, nil)
            }
        }
        try driver.check(status, "cuLaunchKernel(\(name), grid \(grid), block \(block), \(sharedBytes) bytes shared)")
        if Self.synchronizesEveryCall { try synchronize() }
    }
}

/// The sizes of one attention call, checked before anything is launched.
struct FlashAttentionShape {
    let batch, tokens, heads, kvHeads, headDim: Int

    var queryCount: Int { batch * tokens * heads * headDim }
    var keyCount: Int { batch * tokens * kvHeads * headDim }
    func tiles(_ rows: Int) -> Int { (tokens + rows - 1) / rows }

    func validate(activations: [(String, DeviceBuffer, Int)], rows: [(String, DeviceBuffer)],
                  starts: DeviceBuffer?) throws {
        if let starts, starts.dtype != .i32 || starts.count < batch * tokens {
            throw CUDAError.invalidArgument("flash attention: starts must be i32 with \(batch * tokens) values " +
                                            "(\(starts.dtype.rawValue), \(starts.count))")
        }
        guard CUDADevice.flashAttentionHeadDims.contains(headDim) else {
            throw CUDAError.invalidArgument("flash attention has kernels for head dims 32, 64, 96 and 128, not " +
                                            "\(headDim)")
        }
        guard batch >= 0, tokens >= 0, heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw CUDAError.invalidArgument("flash attention: \(heads) heads, \(kvHeads) KV heads, batch \(batch), " +
                                            "\(tokens) tokens: the heads must be a positive multiple of the KV heads")
        }
        let dtype = activations[0].1.dtype
        guard dtype == .f32 || dtype == .bf16 else {
            throw CUDAError.invalidArgument("flash attention works on f32 or bf16 buffers, not \(dtype.rawValue)")
        }
        for (name, buffer, count) in activations {
            guard buffer.dtype == dtype else {
                throw CUDAError.invalidArgument("flash attention: \(name) is \(buffer.dtype.rawValue) but " +
                                                "\(activations[0].0) is " + dtype.rawValue)
            }
            guard buffer.count >= count else {
                throw CUDAError.invalidArgument("flash attention: \(name) holds \(buffer.count) values, needs \(count)")
            }
        }
        for (name, buffer) in rows {
            guard buffer.dtype == .f32, buffer.count >= batch * heads * tokens else {
                throw CUDAError.invalidArgument("flash attention: \(name) must be f32 with " +
                                                "\(batch * heads * tokens) values (\(buffer.dtype.rawValue), " +
                                                "\(buffer.count))")
            }
        }
    }
}
