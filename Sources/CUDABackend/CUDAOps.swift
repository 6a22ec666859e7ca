import Foundation
import Quantization

// Launchers for the kernels of the training step, one per kernel, with the CPU twin's argument order (outputs,
// then saved values, then inputs). Activation buffers are all f32 or all bf16; the kernel variant follows them.
// Shape letters as in CPUOps: N rows, C hidden, H heads, Hkv KV heads, D head dim, F MLP width, V vocabulary.

extension CUDADevice {
    // MARK: Norm

    /// y (N, C), rstd (N) from x (N, C) and the float32 weight (C).
    public func rmsNormForward(_ y: DeviceBuffer, _ rstd: DeviceBuffer, _ x: DeviceBuffer, _ w: DeviceBuffer,
                               rows: Int, width: Int, eps: Float) throws {
        try launch(.norm, "rmsnorm_forward", bf16: y.dtype == .bf16, grid: rows, block: Self.rowThreads(width),
                   [.buffer(y), .buffer(rstd), .buffer(x), .buffer(w), .int(rows), .int(width), .float(eps)])
    }

    /// dx (+)= the input gradient of RMSNorm.
    public func rmsNormBackward(_ dx: DeviceBuffer, _ dy: DeviceBuffer, _ x: DeviceBuffer, _ w: DeviceBuffer,
                                _ rstd: DeviceBuffer, rows: Int, width: Int, accumulate: Bool) throws {
        try launch(.norm, "rmsnorm_backward", bf16: dx.dtype == .bf16, grid: rows, block: Self.rowThreads(width),
                   [.buffer(dx), .buffer(dy), .buffer(x), .buffer(w), .buffer(rstd), .int(rows), .int(width),
                    .int(accumulate ? 1 : 0)])
    }

    static func rowThreads(_ width: Int) -> Int { width >= 4096 ? 1024 : width >= 1024 ? 512 : width >= 256 ? 256 : 64 }

    // MARK: RoPE

    /// Rotates x (B, T, heads, D) in place; `inverse` for the backward pass.
    public func rope(_ x: DeviceBuffer, cos: DeviceBuffer, sin: DeviceBuffer, batch: Int, tokens: Int, heads: Int,
                     headDim: Int, inverse: Bool = false, offset: Int = 0) throws {
        let total = batch * tokens * heads * (headDim / 2)
        try launch(.rope, "rope", bf16: x.dtype == .bf16, grid: (total + 255) / 256, block: 256,
                   [.buffer(x), .buffer(cos), .buffer(sin), .int(batch), .int(tokens), .int(heads), .int(headDim),
                    .int(inverse ? 1 : 0), .int(offset)])
    }

    // MARK: Elementwise

    /// out (N, C) = table[ids] (V, C).
    public func embedding(_ out: DeviceBuffer, ids: DeviceBuffer, table: DeviceBuffer, rows: Int, width: Int) throws {
        try launch(.elementwise, "embedding_forward", bf16: out.dtype == .bf16, grid: Self.blocks(rows * width), block: 256,
                   [.buffer(out), .buffer(ids), .buffer(table), .long(rows), .int(width)])
    }

    /// out = a + b.
    public func add(_ out: DeviceBuffer, _ a: DeviceBuffer, _ b: DeviceBuffer) throws {
        try launch(.elementwise, "add", bf16: out.dtype == .bf16, grid: Self.blocks(out.count), block: 256,
                   [.buffer(out), .buffer(a), .buffer(b), .long(out.count)])
    }

    /// act = silu(gate) ⊙ up.
    public func swigluForward(_ act: DeviceBuffer, gate: DeviceBuffer, up: DeviceBuffer) throws {
        try launch(.elementwise, "swiglu_forward", bf16: act.dtype == .bf16, grid: Self.blocks(act.count), block: 256,
                   [.buffer(act), .buffer(gate), .buffer(up), .long(act.count)])
    }

    /// dgate, dup from da.
    /// dgate, dup from da and the saved gate, up; dgate may be gate itself and dup up itself (in place).
    public func swigluBackward(dgate: DeviceBuffer, dup: DeviceBuffer, da: DeviceBuffer, gate: DeviceBuffer,
                               up: DeviceBuffer) throws {
        try launch(.elementwise, "swiglu_backward", bf16: da.dtype == .bf16, grid: Self.blocks(da.count), block: 256,
                   [.buffer(dgate), .buffer(dup), .buffer(da), .buffer(gate), .buffer(up), .long(da.count)])
    }

    /// out = x ⊙ mask / keep, the mask drawn from `seed`.
    /// out[0..<elements] = dropout of x's elements first ..< first + elements (the whole tensor's mask for them).
    public func dropout(_ out: DeviceBuffer, _ x: DeviceBuffer, elements: Int, first: Int, keep: Float,
                        seed: UInt64) throws {
        precondition(first + elements <= x.count && elements <= out.count)
        try launch(.elementwise, "dropout_forward", bf16: out.dtype == .bf16, grid: Self.blocks(elements), block: 256,
                   [.buffer(out), .address(x.address(at: first)), .long(elements), .float(keep), .uint64(seed),
                    .long(first)])
    }

    /// dx's elements first ..< first + elements += dinput[0..<elements] ⊙ their mask / keep.
    public func dropoutBackwardAdd(_ dx: DeviceBuffer, _ dinput: DeviceBuffer, elements: Int, first: Int, keep: Float,
                                   seed: UInt64) throws {
        precondition(first + elements <= dx.count && elements <= dinput.count)
        try launch(.elementwise, "dropout_backward_add", bf16: dx.dtype == .bf16, grid: Self.blocks(elements),
                   block: 256,
                   [.address(dx.address(at: first)), .buffer(dinput), .long(elements), .float(keep), .uint64(seed),
                    .long(first)])
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
