import Llama

/// What the trainer drives: a model with its adapters, accumulated gradients and optimizer, on some device.
public protocol TrainingEngine: AnyObject {
    /// The model's architecture.
    var config: LlamaConfig { get }
    /// The LoRA settings.
    var loraConfig: LoRAConfig { get }
    /// Trainable and all parameters, as peft counts them.
    var parameterCounts: (trainable: Int, all: Int) { get }
    /// Forward (LoRA dropout drawn from `rng`) and backward of one micro-batch: ids and labels row-major
    /// (batch, tokens), labels −100 ignored and shifted inside, as `LlamaModel.step` does; adds
    /// gradientScale × d(sum of token losses) into the engine's gradient accumulators. Returns the mean loss over the
    /// counted targets and their count.
    /// `positions` (nil: each row one sequence) marks packed documents, as `LlamaModel.step` takes them.
    func accumulateGradients(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int, tokens: Int,
                             rng: inout SeededGenerator, checkpointing: Bool,
                             gradientScale: Float) throws -> (loss: Double, tokenCount: Int)
    /// Sums the accumulated gradients over the engine's data-parallel group (a no-op by default).
    func allReduceGradients() throws
    /// L2 norm of the accumulated gradients (the sum of squares in float64).
    func gradientNorm() throws -> Float
    /// The sum of squares of every adapter weight (A and B): the trainer's check that an update left them finite.
    func adapterSumOfSquares() throws -> Double
    /// One optimizer update of every adapter with the accumulated gradients multiplied by gradientScale (clipping),
    /// then zeroes the accumulators.
    func applyOptimizer(lr: Float, gradientScale: Float) throws
    /// Mean loss and count of a batch without dropout or gradients (evaluation); changes nothing.
    func loss(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int,
              tokens: Int) throws -> (loss: Double, tokenCount: Int)
    /// Host copies of the adapters, keyed like `LlamaModel.adapters` ("0.q_proj").
    func adapterWeights() throws -> [String: LoRAWeights]
    /// Replaces the adapters (resume).
    func setAdapterWeights(_ weights: [String: LoRAWeights]) throws
    /// The optimizer with its full state (for checkpoints).
    func optimizerSnapshot() throws -> AdamW
    /// Restores optimizer state from a checkpoint.
    func restoreOptimizer(_ optimizer: AdamW) throws
}

/// The ranks of data-parallel training, as one of them sees the group.
public protocol DataParallelGroup: AnyObject {
    /// This rank (0 logs, evaluates and saves) and the number of ranks.
    var rank: Int { get }
    var worldSize: Int { get }
    /// The element-wise sum of `values` over all ranks (every rank calls it with the same count).
    func sum(_ values: [Double]) throws -> [Double]
}

extension TrainingEngine {
    /// Sums the accumulated gradients over the engine's data-parallel group; nothing for an engine that is alone.
    public func allReduceGradients() throws {}
}

/// The CPU engine: a `LlamaModel` whose adapters are trained in place (`LlamaModel.step`), the micro-batches'
/// gradients summed in host memory, and a host `AdamW`.
extension TrainingEngine {
    /// The PEFT adapter in `directory`, read shaped like this engine's adapters (A (R, in), B (out, R)).
    public func readAdapterWeights(directory: String) throws -> [String: LoRAWeights] {
        let r = loraConfig.r
        let shapes = try adapterWeights().mapValues { (outFeatures: $0.b.count / r, inFeatures: $0.a.count / r) }
        return try PEFTAdapter.readWeights(directory: directory, r: r, shapes: shapes)
    }

    /// Unpacked rows (each row one sequence).
    public func accumulateGradients(inputIds: [Int], labels: [Int], batch: Int, tokens: Int,
                                    rng: inout SeededGenerator, checkpointing: Bool,
                                    gradientScale: Float) throws -> (loss: Double, tokenCount: Int) {
        try accumulateGradients(inputIds: inputIds, labels: labels, positions: nil, batch: batch, tokens: tokens,
                                rng: &rng, checkpointing: checkpointing, gradientScale: gradientScale)
    }
    /// Unpacked rows (each row one sequence).
    public func loss(inputIds: [Int], labels: [Int], batch: Int,
                     tokens: Int) throws -> (loss: Double, tokenCount: Int) {
        try loss(inputIds: inputIds, labels: labels, positions: nil, batch: batch, tokens: tokens)
    }
}

public final class CPUTrainingEngine: TrainingEngine {
    /// The model; its adapters are the ones trained.
    public let model: LlamaModel
    /// The optimizer and its state.
    public private(set) var optimizer: AdamW
    /// The gradients summed since the last update, keyed like the adapters (empty after an update).
    private var gradients = LoRAGradients()
    /// The data-parallel group whose gradients are summed with this engine's (nil: alone).
    public let group: DataParallelGroup?

    /// An engine training `model`'s adapters with `optimizer`.
    public init(model: LlamaModel, optimizer: AdamW, group: DataParallelGroup? = nil) {
        self.model = model
        self.optimizer = optimizer
        self.group = group
    }

    /// Sums the gradients over the group, every adapter in key order, through `DataParallelGroup.sum`.
    public func allReduceGradients() throws {
        guard let group, group.worldSize > 1 else { return }
        let keys = model.adapters.keys.sorted()
        var flat: [Double] = []
        for k in keys {
            let w = model.adapters[k]!
            let g = gradients[k] ?? LoRAWeights(a: [Float](repeating: 0, count: w.a.count), b: [Float](repeating: 0, count: w.b.count))
            flat += g.a.map(Double.init) + g.b.map(Double.init)
        }
        let summed = try group.sum(flat)
        var offset = 0
        for k in keys {
            let w = model.adapters[k]!
            let a = summed[offset..<(offset + w.a.count)].map { Float($0) }; offset += w.a.count
            let b = summed[offset..<(offset + w.b.count)].map { Float($0) }; offset += w.b.count
            gradients[k] = LoRAWeights(a: a, b: b)
        }
    }

    /// The model's architecture.
    public var config: LlamaConfig { model.config }
    /// The model's LoRA settings.
    public var loraConfig: LoRAConfig { model.loraConfig }
    /// The model's parameter counts.
    public var parameterCounts: (trainable: Int, all: Int) { model.parameterCounts }

    /// `LlamaModel.step` with dropout and gradients; its gradient dictionary is added, element by element, into the
    /// accumulated one (the first micro-batch's is taken as it is).
    public func accumulateGradients(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int, tokens: Int,
                                    rng: inout SeededGenerator, checkpointing: Bool,
                                    gradientScale: Float) throws -> (loss: Double, tokenCount: Int) {
        try LlamaModel.checkBatch(inputIds: inputIds, labels: labels, positions: positions, batch: batch,
                                  tokens: tokens, config: model.config)
        let r = model.step(inputIds: inputIds, labels: labels, positions: positions, batch: batch, tokens: tokens,
                           rng: &rng, checkpointing: checkpointing, gradientScale: gradientScale)
        for (k, g) in r.gradients {
            if var acc = gradients[k] {
                for i in acc.a.indices { acc.a[i] += g.a[i] }
                for i in acc.b.indices { acc.b[i] += g.b[i] }
                gradients[k] = acc
            } else {
                gradients[k] = g
            }
        }
        return (r.loss, r.tokenCount)
    }

    /// √(Σ g²) over every accumulated A and B, summed in float64.
    public func gradientNorm() -> Float {
        var squares = 0.0
        for key in gradients.keys.sorted() {
            let g = gradients[key]!
            for x in g.a { squares += Double(x) * Double(x) }
            for x in g.b { squares += Double(x) * Double(x) }
        }
        return Float(squares.squareRoot())
    }

    /// `AdamW.update(model, gradients:lr:gradientScale:)` with the accumulated gradients, which are then dropped.
    public func applyOptimizer(lr: Float, gradientScale: Float) throws {
        optimizer.update(model, gradients: gradients, lr: lr, gradientScale: gradientScale)
        gradients = [:]
    }

    /// `LlamaModel.step` without dropout or gradients.
    public func loss(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int,
                     tokens: Int) throws -> (loss: Double, tokenCount: Int) {
        try LlamaModel.checkBatch(inputIds: inputIds, labels: labels, positions: positions, batch: batch,
                                  tokens: tokens, config: model.config)
        var rng = SeededGenerator(seed: 0)   // unused: no dropout outside training
        let r = model.step(inputIds: inputIds, labels: labels, positions: positions, batch: batch, tokens: tokens,
                           withGradients: false, training: false, rng: &rng)
        return (r.loss, r.tokenCount)
    }

    /// The model's adapters.
    public func adapterWeights() -> [String: LoRAWeights] { model.adapters }

    /// Replaces the model's adapters with `weights`, which must have the same keys and sizes.
    public func setAdapterWeights(_ weights: [String: LoRAWeights]) throws {
        for (key, w) in model.adapters {
            guard let new = weights[key] else { throw TrainingError(description: "adapter \(key) is missing") }
            guard new.a.count == w.a.count, new.b.count == w.b.count else {
                throw TrainingError(description: "adapter \(key) has \(new.a.count) + \(new.b.count) values, expected \(w.a.count) + \(w.b.count)")
            }
        }
        if let extra = weights.keys.first(where: { model.adapters[$0] == nil }) {
            throw TrainingError(description: "adapter \(extra) is not one of this model's")
        }
        model.adapters = weights
    }

    /// A copy of the optimizer.
    public func optimizerSnapshot() -> AdamW { optimizer }

    /// Replaces the optimizer with `optimizer`, which must be of the same kind.
    public func restoreOptimizer(_ optimizer: AdamW) throws {
        guard optimizer.kind == self.optimizer.kind else {
            throw TrainingError(description: "optimizer \(optimizer.kind.rawValue) restored into an engine using \(self.optimizer.kind.rawValue)")
        }
        self.optimizer = optimizer
    }
}

extension TrainingEngine {
    /// The sum of squares of every adapter weight (A and B), in float64: the trainer's cheap check that an update
    /// left the adapters finite. This default reads the host copies (the CPU engine's adapters are
    /// host arrays); the GPU engine reduces on the GPU.
    public func adapterSumOfSquares() throws -> Double {
        var total = 0.0
        for (_, w) in try adapterWeights() {
            for x in w.a { total += Double(x) * Double(x) }
            for x in w.b { total += Double(x) * Double(x) }
        }
        return total
    }
}
