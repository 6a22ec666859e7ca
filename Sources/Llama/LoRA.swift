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

    /// The multiplier of B · A.
    public var scale: Float { Float(useRSLoRA ? alpha / Double(r).squareRoot() : alpha / Double(r)) }

    /// The projections adapted, in Hugging Face order.
    public var resolvedTargets: [String] {
        if targetModules.contains("all-linear") { return LlamaConfig.projectionNames }
        return LlamaConfig.projectionNames.filter { targetModules.contains($0) }
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
