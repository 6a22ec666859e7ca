import Foundation
import Llama
import ModelFiles

/// Learning-rate schedules as Hugging Face's `lr_scheduler_type` names them.
public enum LRScheduleKind: String, CaseIterable, Sendable {
    case constant, linear, cosine
}

/// The core training loop's settings (Hugging Face `TrainingArguments` names in comments).
public struct TrainingConfig: Sendable {
    /// per_device_train_batch_size
    public var batchSize = 4
    /// max_steps
    public var maxSteps = 100
    /// learning_rate
    public var learningRate: Float = 2e-4
    /// weight_decay
    public var weightDecay: Float = 0
    /// optim
    public var optimizer: OptimizerKind = .paged_adamw_8bit
    /// lr_scheduler_type
    public var schedule: LRScheduleKind = .linear
    /// warmup_steps
    public var warmupSteps = 0
    /// max_grad_norm (0 turns clipping off)
    public var maxGradNorm: Float = 1
    /// logging_steps
    public var loggingSteps = 10
    /// seed
    public var seed: UInt64 = 42
    /// Shuffle the examples each epoch (Trainer does by default).
    public var shuffle = true
    /// gradient_checkpointing
    public var gradientCheckpointing = false
    /// Defaults as above.
    public init() {}

    /// The learning rate of optimizer step `step` (0-based), as transformers' schedules compute it.
    public func learningRate(atStep step: Int) -> Float {
        if step < warmupSteps { return learningRate * Float(step) / Float(max(1, warmupSteps)) }
        let progress = Double(step - warmupSteps) / Double(max(1, maxSteps - warmupSteps))
        switch schedule {
        case .constant: return learningRate
        case .linear: return learningRate * Float(max(0, Double(maxSteps - step) / Double(max(1, maxSteps - warmupSteps))))
        case .cosine: return learningRate * Float(max(0, 0.5 * (1 + Foundation.cos(Double.pi * progress))))
        }
    }
}

/// One logged line of `metrics.jsonl`.
public struct StepMetrics: Sendable {
    public var step: Int
    public var loss: Double
    public var learningRate: Float
    public var gradNorm: Float
    public var tokensPerSecond: Double

    /// The JSON line.
    public var json: String {
        JSONValue.object([("step", .int(step)), ("loss", .double(loss)), ("learning_rate", .double(Double(learningRate))),
                          ("grad_norm", .double(Double(gradNorm))), ("tokens_per_second", .double(tokensPerSecond))]).pythonText()
    }
}

/// Runs optimizer steps over a tokenized dataset: batches in (seeded) shuffled order, loss and gradients, global
/// gradient-norm clipping, the schedule, the optimizer, and a logged line every `loggingSteps`.
public struct Trainer {
    public let model: LlamaModel
    public let config: TrainingConfig
    public var optimizer: AdamW
    private var rng: SeededGenerator
    private var order: [Int] = []
    private var position = 0
    private let examples: [TokenizedExample]

    /// A trainer over `examples`.
    public init(model: LlamaModel, examples: [TokenizedExample], config: TrainingConfig) {
        self.model = model
        self.config = config
        self.examples = examples
        self.optimizer = AdamW(kind: config.optimizer, settings: AdamWSettings(weightDecay: config.weightDecay))
        self.rng = SeededGenerator(seed: config.seed)
    }

    private mutating func nextBatch() -> [TokenizedExample] {
        var batch: [TokenizedExample] = []
        while batch.count < config.batchSize {
            if position >= order.count {
                order = Array(examples.indices)
                if config.shuffle { order.shuffle(using: &rng) }
                position = 0
            }
            batch.append(examples[order[position]])
            position += 1
        }
        return batch
    }

    /// Runs `config.maxSteps` steps; `log` receives each logged line, `progress` every step.
    public mutating func train(log: (StepMetrics) -> Void, progress: (Int, Double) -> Void = { _, _ in }) {
        var lossSum = 0.0, lossSteps = 0, tokensSinceLog = 0
        var logStart = Date()
        var lastNorm: Float = 0
        for step in 0..<config.maxSteps {
            let (ids, labels, tokens) = TokenizedDataset.collate(nextBatch())
            let result = model.step(inputIds: ids, labels: labels, batch: config.batchSize, tokens: tokens, rng: &rng,
                                    checkpointing: config.gradientCheckpointing)
            var squares = 0.0
            for g in result.gradients.values {
                for x in g.a { squares += Double(x) * Double(x) }
                for x in g.b { squares += Double(x) * Double(x) }
            }
            let norm = Float(squares.squareRoot())
            let clip: Float = config.maxGradNorm > 0 && norm > config.maxGradNorm ? config.maxGradNorm / (norm + 1e-6) : 1
            let lr = config.learningRate(atStep: step)
            optimizer.update(model, gradients: result.gradients, lr: lr, gradientScale: clip)
            lossSum += result.loss; lossSteps += 1; tokensSinceLog += ids.count; lastNorm = norm
            progress(step + 1, result.loss)
            if (step + 1) % max(1, config.loggingSteps) == 0 || step + 1 == config.maxSteps {
                let seconds = Date().timeIntervalSince(logStart)
                log(StepMetrics(step: step + 1, loss: lossSum / Double(lossSteps), learningRate: lr, gradNorm: lastNorm,
                                tokensPerSecond: Double(tokensSinceLog) / max(seconds, 1e-9)))
                lossSum = 0; lossSteps = 0; tokensSinceLog = 0; logStart = Date()
            }
        }
    }

    /// Mean token loss of `examples` (no dropout, no gradients), batched by `batchSize`.
    public static func evaluate(model: LlamaModel, examples: [TokenizedExample], batchSize: Int) -> (loss: Double, tokens: Int) {
        var total = 0.0, count = 0
        var rng = SeededGenerator(seed: 0)
        for start in stride(from: 0, to: examples.count, by: batchSize) {
            let batch = Array(examples[start..<min(examples.count, start + batchSize)])
            let (ids, labels, tokens) = TokenizedDataset.collate(batch)
            let r = model.step(inputIds: ids, labels: labels, batch: batch.count, tokens: tokens, withGradients: false,
                               training: false, rng: &rng)
            total += r.loss * Double(r.tokenCount)
            count += r.tokenCount
        }
        return (count > 0 ? total / Double(count) : .nan, count)
    }
}
