import CVector
import Tensors

/// LoRA settings, as peft's `LoraConfig` names them.
public struct LoRAConfig: Equatable, Sendable {
    /// Rank R.
    public var r: Int = 8
    /// Scaling numerator: the update is (alpha / r) · B · A (alpha / √r with rsLoRA).
    public var alpha: Double = 16
    /// Dropout on the adapter's input during training.
    public var dropout: Double = 0
    /// Module names to adapt (`q_proj`, ...), or `["all-linear"]` for all seven projections.
    public var targetModules: [String] = ["q_proj", "v_proj"]
    /// rsLoRA scaling.
    public var useRSLoRA: Bool = false

    /// Defaults as peft's.
    public init() {}

    /// The largest `scale` a training run accepts. The update B · A is multiplied by it, as by a learning rate that
    /// many times larger (Adam's steps do not shrink with it): typical scales are 0.5 to 4, and `--lora-alpha 1e30`
    /// used to train to nonsense (1e308: an infinite scale) and then blame the learning rate.
    public static let maximumTrainingScale: Double = 1024

    /// The multiplier of B · A.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)) }

    /// The projections adapted, in Hugging Face order.
    public var resolvedTargets: [String] {
        if targetModules.contains("all-linear") { return LlamaConfig.projectionNames }
        return LlamaConfig.projectionNames.filter { targetModules.contains($0) }
    }
}

/// The adapters' dropout masks, drawn the same way on every device: a step has one 64-bit seed, each projection of
/// each layer derives its own (`seed(_:layer:projection:)`), and element (row, column) of the adapter's input is
/// kept when its 16-bit half of a 32-bit hash of (seed, row, ⌊column / 2⌋), as a fraction of 2^16, is below the
/// keep rate (in [0, 1); with no dropout nothing is drawn): one hash draws a pair of columns. The GPU kernels
/// (lora.cu) compute the same integers, so CPU and GPU runs draw identical masks, and a recomputed layer (gradient
/// checkpointing) draws the masks of its first pass.
public enum LoRADropout {
    /// The seed of projection `name` in layer `layer` for a step seeded `seed`.
    public static func seed(_ seed: UInt64, layer: Int, projection name: String) -> UInt64 {
        let p = UInt64(LlamaConfig.projectionNames.firstIndex(of: name) ?? 0)
        return seed ^ (UInt64(layer) &* 0x9E37_79B9_7F4A_7C15) ^ ((p + 1) &* 0xC2B2_AE3D_27D4_EB4F)
    }

    /// A 32-bit xorshift-multiply finalizer.
    @inline(__always) public static func mix(_ v: UInt32) -> UInt32 {
        var x = v
        x ^= x >> 16; x = x &* 0x7feb_352d
        x ^= x >> 15; x = x &* 0x846c_a68b
        x ^= x >> 16
        return x
    }

    /// The key of one row (hashed once per row, then with each column).
    @inline(__always) public static func rowKey(seed: UInt64, row: Int) -> UInt32 {
        let low = UInt32(truncatingIfNeeded: seed), high = UInt32(truncatingIfNeeded: seed >> 32)
        return mix(low ^ mix(high ^ UInt32(truncatingIfNeeded: row)))
    }

    /// The 16-bit bound below which an element is kept, ⌈keep · 2^16⌉: an element is kept exactly when its half
    /// of the hash, as a fraction of 2^16, is below `keep` (in [0, 1)).
    @inline(__always) public static func threshold(keep: Float) -> UInt32 {
        UInt32((keep * 65536).rounded(.up))
    }

    /// Whether the element at `column` of the row with `key` is kept (`threshold(keep:)`): the low half of the
    /// pair's hash for an even column, the high half for an odd one.
    @inline(__always) public static func kept(key: UInt32, column: Int, threshold: UInt32) -> Bool {
        let h = mix(key ^ UInt32(truncatingIfNeeded: column >> 1))
        return (column & 1 == 0 ? h & 0xffff : h >> 16) < threshold
    }

    /// The kept elements of a (rows × width) input as bits, the draw of `mask` in 1/32 of its memory: what a
    /// training step keeps of each adapter's dropout between its forward and backward passes.
    public struct KeptBits: Sendable {
        /// Rows and columns of the input, and the multiplier of a kept element (1/keep).
        public let rows: Int, width: Int, scale: Float
        /// Bit c % 64 of word r · wordsPerRow + c / 64: element (r, c) kept.
        let words: [UInt64]
        var wordsPerRow: Int { (width + 63) / 64 }

        /// The elements `kept(key:column:threshold:)` keeps (one hash a pair of columns), rows split over the cores
        /// (CVector's `cv_dropout_bits`: 16 hashes a vector where the processor has AVX-512, else the plain loop).
        public init(seed: UInt64, rows: Int, width: Int, keep: Float) {
            self.rows = rows; self.width = width; scale = 1 / keep
            let perRow = (width + 63) / 64, bound = threshold(keep: keep)
            words = [UInt64](unsafeUninitializedCapacity: rows * perRow) { w, initialized in
                parallelChunks(count: rows, grain: 64) { range in
                    for r in range {
                        cv_dropout_bits(rowKey(seed: seed, row: r), width, bound, w.baseAddress! + r * perRow, 1)
                    }
                }
                initialized = rows * perRow
            }
        }

        /// Whether element (row, column) is kept.
        public func isKept(row: Int, column: Int) -> Bool {
            words[row * wordsPerRow + column / 64] >> UInt64(column % 64) & 1 != 0
        }

        /// out = x ⊙ mask (each element times 1/keep where kept, else times 0; both rows × width).
        public func apply(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
            rowsApplied(x, out, accumulate: false)
        }

        /// out += x ⊙ mask.
        public func accumulate(_ x: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
            rowsApplied(x, out, accumulate: true)
        }

        /// CVector's `cv_dropout_apply` on every row (16 columns a vector with AVX-512), rows split over the cores.
        private func rowsApplied(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, accumulate: Bool) {
            let perRow = wordsPerRow, width = width, scale = scale
            words.withUnsafeBufferPointer { w in
                parallelChunks(count: rows, grain: 64) { range in
                    for r in range {
                        cv_dropout_apply(w.baseAddress! + r * perRow, x + r * width, out + r * width, width, scale,
                                         accumulate ? 1 : 0, 1)
                    }
                }
            }
        }
    }

    /// The inverted-dropout multipliers (1/keep or 0) of a (rows × width) input.
    public static func mask(seed: UInt64, rows: Int, width: Int, keep: Float) -> [Float] {
        var m = [Float](repeating: 0, count: rows * width)
        let scale = 1 / keep, bound = threshold(keep: keep)
        for r in 0..<rows {
            let key = rowKey(seed: seed, row: r)
            for c in 0..<width where kept(key: key, column: c, threshold: bound) { m[r * width + c] = scale }
        }
        return m
    }
}

/// One adapter's trainable matrices: A (R, in), B (out, R).
public struct LoRAWeights: Sendable, Equatable {
    /// Down projection (R × in).
    public var a: [Float]
    /// Up projection (out × R).
    public var b: [Float]
    /// Memberwise.
    public init(a: [Float], b: [Float]) { self.a = a; self.b = b }
}

/// A deterministic generator (xorshift64*) for initialization, dropout and shuffling: the same seed gives the same
/// numbers on every machine.
public struct SeededGenerator: RandomNumberGenerator, Sendable, Codable, Equatable {
    /// The state (never zero).
    public var state: UInt64
    /// Seeds the generator.
    public init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    public mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
    /// Uniform in [0, 1).
    public mutating func nextUniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
}
