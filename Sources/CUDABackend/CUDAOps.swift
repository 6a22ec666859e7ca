import Foundation
import Quantization

// Launchers for the kernels of the training step, one per kernel, with the CPU twin's argument order (outputs,
// then saved values, then inputs). Activation buffers are all f32 or all bf16; the kernel variant follows them.
// Shape letters as in CPUOps: N rows, C hidden, H heads, Hkv KV heads, D head dim, F MLP width, V vocabulary.

extension CUDADevice {
    // MARK: Norm

    /// y (N, C), rstd (N) from x (N, C) and the float32 weight (C).
    /// y's rows lie `ldy` elements apart (default: width); the columns past width are set to zero.
    /// `rowKernel`: nil picks the warp-per-row kernel wherever it applies (`normRowsApply`), false forces the
    /// block-per-row one (check-cuda compares both).
    public func rmsNormForward(_ y: DeviceBuffer, _ rstd: DeviceBuffer, _ x: DeviceBuffer, _ w: DeviceBuffer,
                               rows: Int, width: Int, eps: Float, ldy: Int? = nil, rowKernel: Bool? = nil) throws {
        let ldy = ldy ?? width
        precondition(ldy >= width && y.count >= rows * ldy, "rmsNormForward: y is too small for its row stride")
        let args: [KernelArgument] = [.buffer(y), .buffer(rstd), .buffer(x), .buffer(w), .int(rows), .int(width),
                                      .float(eps), .int(ldy)]
        if rowKernel ?? Self.normRowsApply(width: width, ldy: ldy, [y, x, w]) {
            try launch(.norm, "rmsnorm_forward_rows", bf16: true,
                       grid: (rows + Self.normRowWarps - 1) / Self.normRowWarps, block: 32 * Self.normRowWarps, args)
        } else {
            try launch(.norm, "rmsnorm_forward", bf16: y.dtype == .bf16, grid: rows, block: Self.rowThreads(width),
                       args)
        }
    }

    /// dx (+)= the input gradient of RMSNorm.
    public func rmsNormBackward(_ dx: DeviceBuffer, _ dy: DeviceBuffer, _ x: DeviceBuffer, _ w: DeviceBuffer,
                                _ rstd: DeviceBuffer, rows: Int, width: Int, accumulate: Bool,
                                rowKernel: Bool? = nil) throws {
        let args: [KernelArgument] = [.buffer(dx), .buffer(dy), .buffer(x), .buffer(w), .buffer(rstd), .int(rows),
                                      .int(width), .int(accumulate ? 1 : 0)]
        if rowKernel ?? Self.normRowsApply(width: width, ldy: width, [dx, dy, x, w]) {
            try launch(.norm, "rmsnorm_backward_rows", bf16: true,
                       grid: (rows + Self.normRowWarps - 1) / Self.normRowWarps, block: 32 * Self.normRowWarps, args)
        } else {
            try launch(.norm, "rmsnorm_backward", bf16: dx.dtype == .bf16, grid: rows, block: Self.rowThreads(width),
                       args)
        }
    }

    /// Threads for one row, each taking groups of 8 elements.
    static func rowThreads(_ width: Int) -> Int { width >= 8192 ? 1024 : width >= 2048 ? 256 : width >= 512 ? 64 : 32 }
    /// Rows (warps) a block of the warp-per-row RMSNorm kernels (norm.cu's NORM_ROW_WARPS).
    static let normRowWarps = 4
    /// Whether the warp-per-row RMSNorm kernels (norm.cu) take these operands: bf16 activations, rows a multiple of
    /// 8 elements up to 4,096 (NORM_GROUPS chunks of 8 a lane), every buffer 16-byte aligned. `QLORA_NORM=block`
    /// keeps the block-per-row kernels (for comparisons).
    static func normRowsApply(width: Int, ldy: Int, _ buffers: [DeviceBuffer]) -> Bool {
        guard !normBlocksOnly, buffers[0].dtype == .bf16, width % 8 == 0, width <= 32 * 8 * 16, ldy % 8 == 0 else {
            return false
        }
        return buffers.allSatisfy { $0.address % 16 == 0 }
    }
    static let normBlocksOnly = ProcessInfo.processInfo.environment["QLORA_NORM"] == "block"

    // MARK: RoPE

    /// Rotates x (B, T, heads, D) in place; `inverse` for the backward pass. Token (b, t) is at position
    /// `positions[b·T + t]` (int32, B·T values, each a row of the cos/sin tables) when given, else at t.
    public func rope(_ x: DeviceBuffer, cos: DeviceBuffer, sin: DeviceBuffer, batch: Int, tokens: Int, heads: Int,
                     headDim: Int, inverse: Bool = false, positions: DeviceBuffer? = nil) throws {
        if let positions, positions.dtype != .i32 || positions.count < batch * tokens {
            throw CUDAError.invalidArgument("rope: positions must be i32 with \(batch * tokens) values " +
                                            "(\(positions.dtype.rawValue), \(positions.count))")
        }
        let total = batch * tokens * heads * ((headDim / 2 + 7) / 8)
        try launch(.rope, "rope", bf16: x.dtype == .bf16, grid: (total + 255) / 256, block: 256,
                   [.buffer(x), .buffer(cos), .buffer(sin), .int(batch), .int(tokens), .int(heads), .int(headDim),
                    .int(inverse ? 1 : 0), .optional(positions)])
    }

    // MARK: Elementwise

    /// out (N, C) = table[ids] (V, C).
    public func embedding(_ out: DeviceBuffer, ids: DeviceBuffer, table: DeviceBuffer, rows: Int, width: Int) throws {
        try launch(.elementwise, "embedding_forward", bf16: out.dtype == .bf16, grid: Self.blocks(rows * width), block: 256,
                   [.buffer(out), .buffer(ids), .buffer(table), .long(rows), .int(width)])
    }

    /// act = silu(gate) ⊙ up.
    public func swigluForward(_ act: DeviceBuffer, gate: DeviceBuffer, up: DeviceBuffer) throws {
        try launch(.elementwise, "swiglu_forward", bf16: act.dtype == .bf16, grid: Self.blocks((act.count + 7) / 8),
                   block: 256,
                   [.buffer(act), .buffer(gate), .buffer(up), .long(act.count)])
    }

    /// dgate, dup from da.
    /// dgate, dup from da and the saved gate, up; dgate may be gate itself and dup up itself (in place).
    public func swigluBackward(dgate: DeviceBuffer, dup: DeviceBuffer, da: DeviceBuffer, gate: DeviceBuffer,
                               up: DeviceBuffer) throws {
        try launch(.elementwise, "swiglu_backward", bf16: da.dtype == .bf16, grid: Self.blocks((da.count + 7) / 8),
                   block: 256,
                   [.buffer(dgate), .buffer(dup), .buffer(da), .buffer(gate), .buffer(up), .long(da.count)])
    }

    // MARK: LoRA (lora.cu: dropout applied where x is read; `keep` 1 means no dropout)

    /// The most adapters one LoRA launch takes over a shared input (lora.cu's slots).
    public static let loraPartsPerLaunch = 3

    /// z (rows, r) = scale · (m ⊙ x) Aᵀ / keep for each part (its z from element `zAt` on, A (r, k) and seed:
    /// m the dropout mask of that seed, LoRADropout's), all reading x (rows, k; rows `ldx` apart): q, k and v (or
    /// gate and up) in one launch, x read about once. z's rows lie `ldz` apart (default r): z may be columns of x's
    /// own rows beside the k that are read.
    public func loraDown(_ parts: [(z: DeviceBuffer, zAt: Int, a: DeviceBuffer, seed: UInt64)], x: DeviceBuffer,
                         rows: Int, k: Int, r: Int, ldx: Int? = nil, ldz: Int? = nil, keep: Float,
                         scale: Float = 1) throws {
        let ldx = ldx ?? k, ldz = ldz ?? r
        for chunk in Self.loraChunks(parts) {
            for (z, zAt, a, _) in chunk {
                try Self.checkLoRA("loraDown", rows: rows, k: k, r: r, [(x, Self.extent(rows, ldx, k)), (a, r * k),
                                                                        (z, zAt + Self.extent(rows, ldz, r))])
                precondition(ldx >= k && ldz >= r && zAt >= 0, "loraDown: row strides below the widths")
            }
            // Rows a block: bf16 16 (tensor cores, DOWN_TILES × 16), float32 32 (FMAs, DOWN_ROWS; lora.cu).
            let rowsPerBlock = x.dtype == .bf16 ? 16 : 32
            let slots = Self.loraSlots(chunk)
            try launch(.lora, "lora_down", bf16: x.dtype == .bf16,
                       grid: ((rows + rowsPerBlock - 1) / rowsPerBlock * chunk.count, (r + 15) / 16, 1),
                       block: 256, sharedBytes: 0,
                       slots.map { .address($0.z.address(at: $0.zAt)) } + [.buffer(x)] + slots.map { .buffer($0.a) }
                       + [.int(chunk.count), .int(rows), .int(k), .int(r), .int(ldx), .int(ldz), .float(keep),
                          .float(scale)]
                       + slots.map { .uint64($0.seed) })
        }
    }

    /// gradA (r, k, float32) += dzᵀ (m ⊙ x) / keep for each part (its gradA, dz (rows, r) and seed), all reading x
    /// (rows, k; rows `ldx` apart) in one launch: the rows summed in slices (256 rows on the tensor cores, 512
    /// otherwise) into a scratch buffer, then the slices added in order (the same result on every run).
    public func loraDownGradient(_ parts: [(gradA: DeviceBuffer, dz: DeviceBuffer, seed: UInt64)], x: DeviceBuffer,
                                 rows: Int, k: Int, r: Int, ldx: Int? = nil, keep: Float) throws {
        guard rows > 0 else { return }
        let ldx = ldx ?? k
        for chunk in Self.loraChunks(parts) {
            for (gradA, dz, _) in chunk {
                try Self.checkLoRA("loraDownGradient", rows: rows, k: k, r: r,
                                   [(dz, rows * r), (x, Self.extent(rows, ldx, k))])
                precondition(gradA.dtype == .f32 && gradA.count >= r * k,
                             "loraDownGradient: gradA must be f32 (r × k)")
                precondition(ldx >= k, "loraDownGradient: x's row stride is below k")
            }
            let tensorCores = x.dtype == .bf16 && k % 8 == 0 && ldx % 8 == 0
            let sliceRows = tensorCores ? 256 : 512   // GRADM_ROWS, GRAD_ROWS
            let slices = (rows + sliceRows - 1) / sliceRows
            let partial = try allocate(chunk.count * slices * r * k, .f32)
            let partials = (0..<Self.loraPartsPerLaunch).map {
                KernelArgument.address(partial.address(at: min($0, chunk.count - 1) * slices * r * k))
            }
            let slots = Self.loraSlots(chunk)
            let arguments: [KernelArgument] = partials + slots.map { .buffer($0.dz) }
                + [.buffer(x), .int(chunk.count), .int(rows), .int(k), .int(r), .int(ldx), .float(keep)]
                + slots.map { .uint64($0.seed) }
            if tensorCores {
                // 256 columns × 256 rows a block of 128 threads; shared memory as GRADM_SHARED in lora.cu.
                let sharedBytes = 2 * (2 * 32 * 264 + 16 * 264) + 4 * 256
                try launch(.lora, "lora_down_grad_mma", bf16: true,
                           grid: ((k + 255) / 256 * chunk.count, slices, (r + 15) / 16),
                           block: 128, sharedBytes: sharedBytes, arguments)
            } else {
                try launch(.lora, "lora_down_grad", bf16: x.dtype == .bf16,
                           grid: ((k + 63) / 64 * chunk.count, slices, (r + 15) / 16),
                           block: 256, sharedBytes: 0, arguments)
            }
            // The parts' slices summed in one launch (blockIdx.y: the part).
            try launch(.lora, "lora_down_reduce", bf16: false, grid: (Self.blocks(r * k), chunk.count, 1), block: 256,
                       sharedBytes: 0, slots.map { .buffer($0.gradA) } + partials
                       + [.int(slices), .long(r * k), .float(1 / keep)])
        }
    }

    /// Elements a (rows, width) matrix with rows `ld` apart spans.
    static func extent(_ rows: Int, _ ld: Int, _ width: Int) -> Int { rows == 0 ? 0 : (rows - 1) * ld + width }

    /// Parts in launches of at most `loraPartsPerLaunch`.
    static func loraChunks<P>(_ parts: [P]) -> [ArraySlice<P>] {
        stride(from: 0, to: parts.count, by: loraPartsPerLaunch).map {
            parts[$0..<min($0 + loraPartsPerLaunch, parts.count)]
        }
    }

    /// A launch's parts padded to the kernel's slots by repeating the first (slots past `count` are never read).
    static func loraSlots<P>(_ chunk: ArraySlice<P>) -> [P] {
        Array(chunk) + [P](repeating: chunk.first!, count: loraPartsPerLaunch - chunk.count)
    }

    /// dx (rows, k) += m ⊙ (dz A) / keep, or = without `accumulate` (dx is then only written).
    public func loraInputGradient(_ dx: DeviceBuffer, dz: DeviceBuffer, a: DeviceBuffer, rows: Int, k: Int, r: Int,
                                  keep: Float, seed: UInt64, accumulate: Bool = true) throws {
        try Self.checkLoRA("loraInputGradient", rows: rows, k: k, r: r, [(dx, rows * k), (dz, rows * r), (a, r * k)])
        // bf16: tensor cores, `tiles` row tiles of 16 × 256 columns a block of 128 threads (`loraDxTiles`); float32:
        // FMAs, 32 × 256, 256 threads.
        let bf16 = dx.dtype == .bf16
        let slots = bf16 ? multiprocessorCount * (try blocksPerSM(.lora, "lora_dx", bf16: true, block: 128,
                                                                  fallback: 5)) : 1
        let tiles = Self.loraDxTiles(rowTiles: (rows + 15) / 16, strips: (k + 255) / 256, slots: slots)
        let rowsPerBlock = bf16 ? 16 * tiles : 32
        try launch(.lora, "lora_dx", bf16: bf16, grid: ((k + 255) / 256, (rows + rowsPerBlock - 1) / rowsPerBlock, 1),
                   block: bf16 ? 128 : 256, sharedBytes: 0,
                   [.buffer(dx), .buffer(dz), .buffer(a), .int(rows), .int(k), .int(r), .float(keep), .uint64(seed),
                    .int(accumulate ? 1 : 0)] + (bf16 ? [.int(tiles)] : []))
    }

    /// Row tiles a lora_dx block walks: the number (1…16) that ends the product soonest when `slots` blocks run
    /// at once, its length counted in tile times: waves × (tiles + 1), waves = ⌈blocks / slots⌉ (a mostly empty
    /// last wave costs as much as a full one: 2,048 blocks of 4 tiles on 660 slots were 3.1 waves, 4 × 5, where 640
    /// blocks of 13 take 14; the 1 is a block's start, loading its strip of A). Ties go to fewer tiles (more,
    /// shorter blocks). `QLORA_LORA_DX_TILES` sets it (for comparisons). The tiles change which block computes a
    /// row, not its value.
    static func loraDxTiles(rowTiles: Int, strips: Int, slots: Int) -> Int {
        if let forced = loraDxTilesForced { return forced }
        var best = 1, bestLength = Int.max
        for tiles in 1...16 {
            let blocks = (rowTiles + tiles - 1) / tiles * strips
            let length = (blocks + max(1, slots) - 1) / max(1, slots) * (tiles + 1)
            if length < bestLength { best = tiles; bestLength = length }
        }
        return best
    }
    static let loraDxTilesForced = ProcessInfo.processInfo.environment["QLORA_LORA_DX_TILES"].flatMap { Int($0) }
        .map { min(16, max(1, $0)) }

    /// Whether `loraUpGradient` takes dy of this type and width (bf16, a multiple of 8 columns; else two products).
    public static func loraUpGradientApplies(_ dtype: GPUDType, out: Int) -> Bool { dtype == .bf16 && out % 8 == 0 }

    /// The up projection's two gradients from one read of dy (rows, out): gradB (out, r, float32) += dyᵀ z and
    /// dz (rows, r) = scale · dy B, with z (rows, r; rows `ldz` apart from element `zAt` on) holding the LoRA scale
    /// already and B (out, r). The rows are summed in slices of 256 and the columns in strips of 512 into scratch
    /// buffers, which are then added in order (the same result on every run).
    public func loraUpGradient(gradB: DeviceBuffer, dz: DeviceBuffer, dy: DeviceBuffer, z: DeviceBuffer, zAt: Int,
                               ldz: Int, b: DeviceBuffer, rows: Int, out: Int, r: Int, scale: Float) throws {
        guard rows > 0 else { return }
        try Self.checkLoRA("loraUpGradient", rows: rows, k: out, r: r,
                           [(dy, rows * out), (z, zAt + Self.extent(rows, ldz, r)), (b, out * r), (dz, rows * r)])
        guard Self.loraUpGradientApplies(dy.dtype, out: out), ldz >= r, zAt >= 0 else {
            throw CUDAError.invalidArgument("loraUpGradient: \(dy.dtype.rawValue) dy of width \(out), z's row stride " +
                                            "\(ldz) (bf16, a multiple of 8 columns and a stride ≥ r are needed)")
        }
        precondition(gradB.dtype == .f32 && gradB.count >= out * r, "loraUpGradient: gradB must be f32 (out × r)")
        let slices = (rows + 255) / 256, strips = (out + 511) / 512   // UP_ROWS, UP_COLS in lora.cu
        let partialB = try allocate(slices * out * r, .f32), partialZ = try allocate(strips * rows * r, .f32)
        // UP_SHARED: two chunks of 32 × 520 and zᵀ 16 × 264 (bf16), and 8 warps' 32 × 16 float32 sums.
        let sharedBytes = 2 * (2 * 32 * 520 + 16 * 264) + 4 * 8 * 32 * 16
        try launch(.lora, "lora_up_grad", bf16: true, grid: (strips, slices, (r + 15) / 16), block: 256,
                   sharedBytes: sharedBytes,
                   [.buffer(partialB), .buffer(partialZ), .buffer(dy), .address(z.address(at: zAt)), .buffer(b),
                    .int(rows), .int(out), .int(r), .int(ldz)])
        // dz's strips (blockIdx.y 0) and gradB's slices (1) summed in one launch.
        try launch(.lora, "lora_up_reduce", bf16: true, grid: (Self.blocks(max(rows, out) * r), 2, 1), block: 256,
                   sharedBytes: 0, [.buffer(dz), .buffer(partialZ), .int(strips), .long(rows * r), .float(scale),
                                    .buffer(gradB), .buffer(partialB), .int(slices), .long(out * r)])
    }

    static func checkLoRA(_ name: String, rows: Int, k: Int, r: Int, _ buffers: [(DeviceBuffer, Int)]) throws {
        guard rows >= 0, rows <= 65535 * 32, k > 0, k < Int(Int32.max), r > 0, r <= 4096 else {
            throw CUDAError.invalidArgument("\(name): \(rows) rows, k \(k), r \(r) are outside what the kernels take")
        }
        for (b, count) in buffers where b.count < count || b.dtype != buffers[0].0.dtype {
            throw CUDAError.invalidArgument("\(name): a \(b.dtype.rawValue) buffer of \(b.count) values where " +
                                            "\(count) " +
                            "\(buffers[0].0.dtype.rawValue) values are needed")
        }
    }

    /// out (f32 or bf16) = in (f32), rounded.
    public func cast(_ out: DeviceBuffer, from input: DeviceBuffer) throws {
        if out.dtype == input.dtype { return try copy(from: input, to: out) }
        if input.dtype == .f32 {
            try launch(.elementwise, "cast_from_f32", bf16: true, grid: Self.blocks(out.count), block: 256,
                       [.buffer(out), .buffer(input), .long(out.count)])
        } else {
            try launch(.elementwise, "cast_to_f32", bf16: true, grid: Self.blocks(out.count), block: 256,
                       [.buffer(out), .buffer(input), .long(out.count)])
        }
    }

    /// y (N, cols) += bias (cols, float32).
    public func addBias(_ y: DeviceBuffer, bias: DeviceBuffer, rows: Int, cols: Int) throws {
        try launch(.elementwise, "bias_add", bf16: y.dtype == .bf16, grid: Self.blocks(rows * cols), block: 256,
                   [.buffer(y), .buffer(bias), .long(rows), .int(cols)])
    }

    /// Copies `columns` elements of each of `rows` rows: row i from source.buffer at source.at + i·source.ld to
    /// destination.buffer at destination.at + i·destination.ld (copy_columns; a 2D copy by the copy engine is far
    /// slower for rows this short).
    public func copyColumns(from source: (buffer: DeviceBuffer, at: Int, ld: Int),
                            to destination: (buffer: DeviceBuffer, at: Int, ld: Int), rows: Int, columns: Int) throws {
        let (s, d) = (source, destination)
        precondition(s.buffer.dtype == d.buffer.dtype && columns <= s.ld && columns <= d.ld && s.at >= 0 && d.at >= 0
                     && (rows == 0 || (s.at + (rows - 1) * s.ld + columns <= s.buffer.count
                                       && d.at + (rows - 1) * d.ld + columns <= d.buffer.count)),
                     "copyColumns: \(rows) × \(columns) does not fit the buffers")
        guard rows > 0, columns > 0 else { return }
        try launch(.elementwise, "copy_columns", bf16: d.buffer.dtype == .bf16, grid: Self.blocks(rows * columns),
                   block: 256, [.address(d.buffer.address(at: d.at)), .long(d.ld), .address(s.buffer.address(at: s.at)),
                                .long(s.ld), .long(rows), .int(columns)])
    }

    /// Fills with random bytes / uniform values from a seed (the benchmark's random model).
    public func fillRandomBytes(_ b: DeviceBuffer, seed: UInt64) throws {
        try launch(.elementwise, "random_bytes", grid: Self.blocks(b.bytes), block: 256,
                   [.buffer(b), .long(b.bytes), .uint64(seed)])
    }
    public func fillUniform(_ b: DeviceBuffer, low: Float, high: Float, seed: UInt64) throws {
        if b.dtype == .f32 {
            try launch(.elementwise, "random_uniform_f32", grid: Self.blocks(b.count), block: 256,
                       [.buffer(b), .long(b.count), .uint64(seed), .float(low), .float(high)])
        } else {
            try launch(.elementwise, "random_uniform", bf16: true, grid: Self.blocks(b.count), block: 256,
                       [.buffer(b), .long(b.count), .uint64(seed), .float(low), .float(high)])
        }
    }

    // MARK: Loss

    /// Writes the cross-entropy of each row of logits (rows, V) into rowLoss (f32, from `rowOffset`; 0 for a target
    /// of −100); with `writeGradient`, overwrites the logits with (softmax − onehot) · scale.
    public func crossEntropy(_ logits: DeviceBuffer, rowLoss: DeviceBuffer, targets: DeviceBuffer, rowOffset: Int = 0,
                             rows: Int, vocab: Int, scale: Float, writeGradient: Bool) throws {
        try launch(.loss, "cross_entropy", bf16: logits.dtype == .bf16, grid: rows, block: 1024,
                   [.buffer(logits), .address(rowLoss.address(at: rowOffset)), .address(targets.address(at: rowOffset)),
                    .int(rows), .int(vocab), .float(scale), .int(writeGradient ? 1 : 0)])
    }

    // MARK: Optimizer

    /// Partial sums per block written by `sumOfSquares`.
    public static let sumOfSquaresBlocks = 256

    /// Σ g² over every buffer, in float64, the same on every run: each buffer's block partials, then one fixed-order sum.
    public func sumOfSquares(_ buffers: [DeviceBuffer]) throws -> Double {
        let g = Self.sumOfSquaresBlocks
        let partials = try allocate(max(1, buffers.count) * g, .f32), out = try allocate(1, .f64)
        try fillZero(partials)
        for (i, b) in buffers.enumerated() {
            try launch(.optimizer, "sum_squares", grid: g, block: 256, [.address(partials.address(at: i * g)), .buffer(b), .long(b.count)])
        }
        try launch(.optimizer, "sum_partials", grid: 1, block: 256, [.buffer(out), .buffer(partials), .int(partials.count)])
        return try downloadDouble(out)
    }
}
