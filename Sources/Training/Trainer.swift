import Foundation
import Llama
import ModelFiles

/// Learning-rate schedules as Hugging Face's `lr_scheduler_type` names them.
public enum LRScheduleKind: String, CaseIterable, Sendable {
    case constant, linear, cosine
}

/// When evaluations or checkpoints happen (Hugging Face's `IntervalStrategy`).
public enum IntervalStrategy: String, CaseIterable, Sendable {
    /// Never.
    case no
    /// Every `eval_steps` / `save_steps` optimizer steps.
    case steps
    /// At the end of each pass over the training data.
    case epoch

    /// Whether it fires after optimizer step `step` (every `every` steps; `epochEnded`: the step ended a pass).
    func fires(afterStep step: Int, every: Int, epochEnded: Bool) -> Bool {
        switch self {
        case .no: return false
        case .steps: return step % every == 0
        case .epoch: return epochEnded
        }
    }
}

/// The training loop's settings, with Hugging Face `TrainingArguments` semantics (their names in comments).
public struct TrainingConfig: Sendable {
    /// per_device_train_batch_size
    public var batchSize = 4
    /// gradient_accumulation_steps: micro-batches per optimizer step.
    public var gradientAccumulationSteps = 1
    /// max_steps (nil: run `epochs` epochs)
    public var maxSteps: Int? = nil
    /// num_train_epochs
    public var epochs: Double = 1
    /// learning_rate
    public var learningRate: Float = 2e-4
    /// weight_decay
    public var weightDecay: Float = 0
    /// optim
    public var optimizer: OptimizerKind = .paged_adamw_8bit
    /// lr_scheduler_type
    public var schedule: LRScheduleKind = .linear
    /// warmup_steps (wins over the ratio when positive)
    public var warmupSteps = 0
    /// warmup_ratio
    public var warmupRatio: Double = 0
    /// max_grad_norm (0 turns clipping off)
    public var maxGradNorm: Float = 1
    /// logging_steps
    public var loggingSteps = 10
    /// eval_steps (nil: evaluate only at the end)
    public var evalSteps: Int? = nil
    /// save_steps (nil: no intermediate checkpoints)
    public var saveSteps: Int? = nil
    /// save_total_limit (nil: keep all)
    public var saveTotalLimit: Int? = nil
    /// eval_strategy (nil: every `evalSteps` when set, and once at the end; `.steps` without `evalSteps` uses
    /// `loggingSteps`, as transformers does; `.no`: never, not even at the end)
    public var evalStrategy: IntervalStrategy? = nil
    /// save_strategy (nil: every `saveSteps` when set; `.steps` without `saveSteps` uses 500, transformers' default)
    public var saveStrategy: IntervalStrategy? = nil
    /// load_best_model_at_end: the adapter with the lowest validation loss is kept as OUTPUT/best and is the final
    /// adapter (metric_for_best_model is the validation loss, `eval_loss`; lower is better).
    public var loadBestModelAtEnd = false
    /// early_stopping_patience (EarlyStoppingCallback): stop after this many evaluations in a row without an
    /// improvement of more than `earlyStoppingThreshold` over the best validation loss.
    public var earlyStoppingPatience: Int? = nil
    /// early_stopping_threshold
    public var earlyStoppingThreshold: Double = 0
    /// seed
    public var seed: UInt64 = 42
    /// Shuffle the examples each epoch (the Trainer does by default).
    public var shuffle = true
    /// gradient_checkpointing
    public var gradientCheckpointing = false
    /// padding_free (TRL's SFTConfig): each micro-batch's examples in one row, one after the other, instead of
    /// padded rows (`TokenizedDataset.collate`): the same loss and gradients, no padding computed (the dropout
    /// masks are drawn for the row layout, so they differ from the padded batch's).
    public var paddingFree = false
    /// Defaults as above.
    public init() {}

    /// The largest `epochs` accepted (more would only overflow the step count).
    public static let maximumEpochs = 1_000_000.0
    /// The largest batch size, accumulation steps, and their product, accepted.
    public static let maximumBatch = 1 << 24

    /// Refuses settings the loop cannot run (a zero interval, a non-finite or non-positive rate, epochs that overflow
    /// the step count, ...) with an error naming the flag and recipe key, the value and what is allowed. Every
    /// command that trains calls this once, after flags and recipe are merged.
    public func validate() throws {
        func fail(_ flag: String, _ key: String, _ value: Any, _ allowed: String) -> TrainingError {
            TrainingError(flag: flag, key: key, found: value, allowed: allowed)
        }
        guard (1...Self.maximumBatch).contains(batchSize) else {
            throw fail("--batch-size", "per_device_train_batch_size", batchSize,
                "must be an integer from 1 to \(Self.maximumBatch)")
        }
        guard (1...Self.maximumBatch).contains(gradientAccumulationSteps),
            batchSize * gradientAccumulationSteps <= Self.maximumBatch else {
            throw fail("--gradient-accumulation-steps", "gradient_accumulation_steps", gradientAccumulationSteps,
                       "must be at least 1, with batch size × accumulation at most \(Self.maximumBatch)")
        }
        if let maxSteps, maxSteps < 1 {
            throw fail("--max-steps", "max_steps", maxSteps, "must be at least 1 (or unset to run the epochs)")
        }
        guard epochs.isFinite, epochs > 0, epochs <= Self.maximumEpochs else {
            throw fail("--num-train-epochs", "num_train_epochs", epochs,
                "must be a finite number above 0 and at most \(Int(Self.maximumEpochs))")
        }
        guard learningRate.isFinite, learningRate > 0 else {
            throw fail("--learning-rate", "learning_rate", learningRate, "must be a finite number above 0")
        }
        guard weightDecay.isFinite, weightDecay >= 0 else {
            throw fail("--weight-decay", "weight_decay", weightDecay, "must be a finite number ≥ 0")
        }
        guard warmupSteps >= 0 else { throw fail("--warmup-steps", "warmup_steps", warmupSteps, "must be ≥ 0") }
        guard warmupRatio.isFinite, (0...1).contains(warmupRatio) else {
            throw fail("--warmup-ratio", "warmup_ratio", warmupRatio, "must be in [0, 1]")
        }
        guard maxGradNorm.isFinite, maxGradNorm >= 0 else {
            throw fail("--max-grad-norm", "max_grad_norm", maxGradNorm,
                "must be a finite number ≥ 0 (0 turns clipping off)")
        }
        guard loggingSteps >= 1 else {
            throw fail("--logging-steps", "logging_steps", loggingSteps, "must be at least 1")
        }
        if let evalSteps, evalSteps < 1 {
            throw fail("--eval-steps", "eval_steps", evalSteps,
                "must be at least 1 (or unset to evaluate at the end only)")
        }
        if let earlyStoppingPatience, earlyStoppingPatience < 1 {
            throw fail("--early-stopping-patience", "early_stopping_patience", earlyStoppingPatience,
                       "a whole number ≥ 1 (evaluations without improvement)")
        }
        if !(earlyStoppingThreshold.isFinite && earlyStoppingThreshold >= 0) {
            throw fail("--early-stopping-threshold", "early_stopping_threshold", earlyStoppingThreshold,
                       "a finite number ≥ 0")
        }
        if (loadBestModelAtEnd || earlyStoppingPatience != nil) && !evaluates {
            throw TrainingError(description: "--load-best-model-at-end / --early-stopping-patience (recipe " +
                "load_best_model_at_end, early_stopping_patience) need evaluations during training: give " +
                "--eval-steps or --eval-strategy steps|epoch (eval_steps, eval_strategy), not eval_strategy no")
        }
        if let saveSteps, saveSteps < 1 {
            throw fail("--save-steps", "save_steps", saveSteps,
                "must be at least 1 (or unset for no intermediate checkpoints)")
        }
        if let saveTotalLimit, saveTotalLimit < 1 {
            throw fail("--save-total-limit", "save_total_limit", saveTotalLimit,
                "must be at least 1 (or unset to keep every checkpoint)")
        }
    }

    /// Whether evaluations happen before the end of training (what the best model and early stopping need).
    public var evaluates: Bool {
        switch evalStrategy {
        case nil: return evalSteps != nil
        case .no: return false
        case .steps, .epoch: return true
        }
    }

    /// Whether to evaluate after `step` (`epochEnded`: the step finished a pass over the data).
    public func evaluatesAfter(step: Int, epochEnded: Bool) -> Bool {
        guard let evalStrategy else { return evalSteps.map { step % $0 == 0 } ?? false }
        return evalStrategy.fires(afterStep: step, every: evalSteps ?? max(1, loggingSteps), epochEnded: epochEnded)
    }

    /// Whether to write a checkpoint after `step`.
    public func savesAfter(step: Int, epochEnded: Bool) -> Bool {
        guard let saveStrategy else { return saveSteps.map { step % $0 == 0 } ?? false }
        return saveStrategy.fires(afterStep: step, every: saveSteps ?? 500, epochEnded: epochEnded)
    }

    /// Optimizer steps for `exampleCount` examples: `maxSteps`, or epochs × ⌈examples / (batch × accumulation)⌉.
    public func totalSteps(exampleCount: Int) -> Int {
        if let maxSteps { return maxSteps }
        let perEpoch = max(1, (exampleCount + batchSize * gradientAccumulationSteps - 1) / (batchSize * gradientAccumulationSteps))
        // Clamped so that settings `validate` would refuse never trap here.
        let steps = (Double(perEpoch) * epochs).rounded(.up)
        return steps >= 1 ? Int(min(steps, Double(Int32.max))) : 1
    }

    /// Warm-up steps: `warmupSteps` if set, else ⌈ratio × total⌉.
    public func warmup(totalSteps: Int) -> Int {
        warmupSteps > 0 ? warmupSteps : Int((warmupRatio * Double(totalSteps)).rounded(.up))
    }

    /// The learning rate of optimizer step `step` (0-based), as transformers' schedules compute it.
    public func learningRate(atStep step: Int, totalSteps: Int) -> Float {
        let warm = warmup(totalSteps: totalSteps)
        if step < warm { return learningRate * Float(step) / Float(max(1, warm)) }
        let remaining = Double(max(1, totalSteps - warm))
        switch schedule {
        case .constant: return learningRate
        case .linear: return learningRate * Float(max(0, Double(totalSteps - step) / remaining))
        case .cosine: return learningRate * Float(max(0, 0.5 * (1 + Foundation.cos(Double.pi * Double(step - warm) / remaining))))
        }
    }
}

/// One logged line of `metrics.jsonl`: a training line (loss, learning_rate, grad_norm, tokens_per_second) or an
/// evaluation line (eval_loss).
public struct StepMetrics: Sendable, Equatable {
    public var step: Int
    public var loss: Double? = nil
    public var learningRate: Float? = nil
    public var gradNorm: Float? = nil
    public var tokensPerSecond: Double? = nil
    public var evalLoss: Double? = nil

    public init(step: Int, loss: Double? = nil, learningRate: Float? = nil, gradNorm: Float? = nil,
                tokensPerSecond: Double? = nil, evalLoss: Double? = nil) {
        self.step = step; self.loss = loss; self.learningRate = learningRate; self.gradNorm = gradNorm
        self.tokensPerSecond = tokensPerSecond; self.evalLoss = evalLoss
    }

    /// The JSON line.
    public var json: String {
        var pairs: [(String, JSONValue)] = [("step", .int(step))]
        if let loss { pairs.append(("loss", .double(loss))) }
        if let learningRate { pairs.append(("learning_rate", .double(Double(learningRate)))) }
        if let gradNorm { pairs.append(("grad_norm", .double(Double(gradNorm)))) }
        if let tokensPerSecond { pairs.append(("tokens_per_second", .double(tokensPerSecond))) }
        if let evalLoss { pairs.append(("eval_loss", .double(evalLoss))) }
        return JSONValue.object(pairs).pythonText()
    }

    /// Parses a line written by `json`.
    public init?(json line: String) {
        guard let v = try? JSONValue(parsing: line), let step = v["step"]?.intValue else { return nil }
        self.step = step
        loss = v["loss"]?.doubleValue
        learningRate = v["learning_rate"]?.doubleValue.map(Float.init)
        gradNorm = v["grad_norm"]?.doubleValue.map(Float.init)
        tokensPerSecond = v["tokens_per_second"]?.doubleValue
        evalLoss = v["eval_loss"]?.doubleValue
    }
}

/// Why training stopped early.
public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    /// For a setting that is not allowed: its flag and recipe key, the value found and what is allowed.
    public let setting: (flag: String, key: String, found: String, allowed: String)?
    public init(description: String) { self.description = description; setting = nil }
    /// A setting that is not allowed.
    public init(flag: String, key: String, found: Any, allowed: String) {
        description = "\(flag) (recipe \(key)) is \(found): \(allowed)"
        setting = (flag, key, "\(found)", allowed)
    }
}

/// Where the data stands: which example comes next, in which order, in which epoch.
public struct DataPosition: Codable, Equatable, Sendable {
    public var order: [Int] = []
    public var position = 0
    public var epoch = 0
}

/// Runs optimizer steps over a tokenized dataset: micro-batches in (seeded) shuffled order, gradients accumulated
/// over `gradientAccumulationSteps` micro-batches and normalized by the accumulated batch's total number of target
/// tokens (as transformers does), global gradient-norm clipping, the schedule, the optimizer; a logged line every
/// `loggingSteps`, evaluation every `evalSteps`, a checkpoint every `saveSteps`. The forward and backward passes, the
/// gradients and the optimizer belong to the `engine`.
public struct Trainer {
    /// The model with its adapters, gradients and optimizer.
    public let engine: TrainingEngine
    public let config: TrainingConfig
    /// Completed optimizer steps.
    public private(set) var step = 0
    /// The generator for dropout and shuffling (saved in checkpoints).
    public private(set) var rng: SeededGenerator
    public private(set) var data = DataPosition()
    /// The step of the newest checkpoint known good: saved by this trainer, or restored from (nil: none).
    public private(set) var lastCheckpointStep: Int? = nil
    /// The lowest validation loss so far and the step it was measured at (nil: no evaluation yet).
    public private(set) var best: (loss: Double, step: Int)? = nil
    /// Evaluations in a row without an improvement beyond `earlyStoppingThreshold` (early stopping's counter).
    public private(set) var evaluationsWithoutImprovement = 0
    /// Whether the last `train` stopped early (`earlyStoppingPatience`).
    public private(set) var stoppedEarly = false
    private let examples: [TokenizedExample]
    /// How many training examples this trainer walks (a checkpoint's data order must cover exactly these).
    var exampleCount: Int { examples.count }
    /// Total optimizer steps of this run.
    public let totalSteps: Int
    /// A hash of the training examples (their tokens, labels and positions, in order), which checkpoints record: a
    /// resume over other examples is refused.
    public let dataFingerprint: String
    /// The data-parallel group this trainer is one rank of (nil: alone).
    public let group: DataParallelGroup?

    /// A trainer of `engine` over `examples`. With a `group`, every rank walks the same shuffled order (the same
    /// seed) and takes its own `batchSize` rows of each `batchSize × worldSize` slice, so each example goes to
    /// exactly one rank per epoch; losses and target counts are summed over the ranks, and the engine sums its
    /// gradients over them before the norm and the update.
    public init(engine: TrainingEngine, examples: [TokenizedExample], config: TrainingConfig, group: DataParallelGroup? = nil) {
        self.engine = engine
        self.config = config
        self.examples = examples
        self.group = group
        self.rng = SeededGenerator(seed: config.seed)
        let world = group?.worldSize ?? 1
        self.totalSteps = config.totalSteps(exampleCount: (examples.count + world - 1) / world)
        self.dataFingerprint = Self.fingerprint(examples)
    }

    /// FNV-1a (64 bits) over each example's lengths, tokens, labels and positions, as 16 hex digits.
    static func fingerprint(_ examples: [TokenizedExample]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ value: Int) {
            var v = UInt64(bitPattern: Int64(value))
            for _ in 0..<8 {
                hash = (hash ^ (v & 0xff)) &* 0x100_0000_01b3
                v >>= 8
            }
        }
        mix(examples.count)
        for e in examples {
            mix(e.inputIds.count); e.inputIds.forEach(mix)
            mix(e.labels.count); e.labels.forEach(mix)
            mix(e.positions?.count ?? -1); e.positions?.forEach(mix)
        }
        return String(hash, radix: 16)
    }

    /// A trainer of `model` on the CPU, with the optimizer `config` names, over `examples`.
    public init(model: LlamaModel, examples: [TokenizedExample], config: TrainingConfig) {
        let optimizer = AdamW(kind: config.optimizer, settings: AdamWSettings(weightDecay: config.weightDecay))
        self.init(engine: CPUTrainingEngine(model: model, optimizer: optimizer), examples: examples, config: config)
    }

    /// The next `batchSize` examples of this rank. A micro-batch is always full: at the end of a pass it goes on
    /// into the next (reshuffled) pass instead of yielding a short batch (the Hugging Face Trainer's last batch is
    /// short, or dropped with dataloader_drop_last), so a batch larger than the data holds examples twice
    /// (`train` warns).
    private mutating func nextMicroBatch() -> [TokenizedExample] {
        var batch: [TokenizedExample] = []
        let world = group?.worldSize ?? 1, rank = group?.rank ?? 0
        while batch.count < config.batchSize * world {
            if data.position >= data.order.count {
                if !data.order.isEmpty { data.epoch += 1 }
                data.order = Array(examples.indices)
                if config.shuffle { data.order.shuffle(using: &rng) }
                data.position = 0
            }
            batch.append(examples[data.order[data.position]])
            data.position += 1
        }
        return Array(batch[(rank * config.batchSize)..<((rank + 1) * config.batchSize)])
    }

    /// Hooks the caller provides.
    public struct Callbacks {
        /// Receives each logged line; an error (a full disk) stops training.
        public var log: (StepMetrics) throws -> Void = { _ in }
        /// (step, total steps, loss, tokens in the step)
        public var progress: (Int, Int, Double, Int) -> Void = { _, _, _, _ in }
        /// The validation loss of the engine's current adapters.
        public var evaluate: ((TrainingEngine) throws -> Double)? = nil
        /// Writes a checkpoint of the trainer (called only when its adapters are finite).
        public var save: ((Trainer) throws -> Void)? = nil
        /// Keeps the trainer's adapters as the best so far (with `loadBestModelAtEnd`, after each new lowest
        /// validation loss).
        public var saveBest: ((Trainer) throws -> Void)? = nil
        public init() {}
    }

    /// Runs the remaining steps up to `totalSteps` (or `stopAfter`, to simulate an interruption).
    public mutating func train(_ callbacks: Callbacks, stopAfter: Int? = nil) throws {
        try config.validate()
        guard !examples.isEmpty else { throw TrainingError(description: "no training examples") }
        var lossSum = 0.0, lossSteps = 0, tokensSinceLog = 0
        var logStart = Date()
        let end = min(totalSteps, stopAfter ?? totalSteps)
        stoppedEarly = false
        var lastEvaluation: Int? = nil
        let firstStep = step   // no update of this run has been applied before it
        func completedEpochs() -> Int {
            data.epoch + (!data.order.isEmpty && data.position >= data.order.count ? 1 : 0)
        }
        while step < end {
            let epochsBefore = completedEpochs()
            let micro = (0..<config.gradientAccumulationSteps).map { _ in
                TokenizedDataset.collate(nextMicroBatch(), paddingFree: config.paddingFree)
            }
            var targetCount = micro.reduce(0) { total, b in
                total + (0..<b.rows).reduce(0) { sum, row in
                    sum + (1..<b.tokens).filter { b.labels[row * b.tokens + $0] != -100 }.count
                }
            }
            if let group { targetCount = Int(try group.sum([Double(targetCount)])[0]) }
            var lossTotal = 0.0, stepTokens = 0
            for b in micro {
                let r = try engine.accumulateGradients(inputIds: b.ids, labels: b.labels, positions: b.positions,
                                                       batch: b.rows, tokens: b.tokens, rng: &rng,
                                                       checkpointing: config.gradientCheckpointing,
                                                       gradientScale: 1 / Float(max(1, targetCount)))
                lossTotal += r.loss * Double(r.tokenCount)
                stepTokens += b.ids.count
            }
            if let group {
                let sums = try group.sum([lossTotal, Double(stepTokens)])
                lossTotal = sums[0]; stepTokens = Int(sums[1])
                try engine.allReduceGradients()
            }
            tokensSinceLog += stepTokens
            let loss = lossTotal / Double(max(1, targetCount))
            guard loss.isFinite else {
                throw divergence("the loss is \(loss)", atStep: step + 1, beforeAnyUpdate: step == firstStep)
            }
            let norm = try engine.gradientNorm()
            guard norm.isFinite else {
                throw divergence("the gradient norm is \(norm)", atStep: step + 1, beforeAnyUpdate: step == firstStep)
            }
            let clip: Float = config.maxGradNorm > 0 && norm > config.maxGradNorm ? config.maxGradNorm / (norm + 1e-6) : 1
            let lr = config.learningRate(atStep: step, totalSteps: totalSteps)
            try engine.applyOptimizer(lr: lr, gradientScale: clip)
            let squares = try engine.adapterSumOfSquares()
            guard Self.adaptersAreFinite(sumOfSquares: squares) else {
                throw divergence("the update left the adapter weights non-finite or overflowing (sum of squares "
                                 + "\(squares), beyond float32's range)", atStep: step + 1)
            }
            step += 1
            lossSum += loss; lossSteps += 1
            callbacks.progress(step, totalSteps, loss, stepTokens)
            if step % max(1, config.loggingSteps) == 0 || step == totalSteps {
                let seconds = Date().timeIntervalSince(logStart)
                try callbacks.log(StepMetrics(step: step, loss: lossSum / Double(lossSteps), learningRate: lr,
                    gradNorm: norm,
                                          tokensPerSecond: Double(tokensSinceLog) / max(seconds, 1e-9)))
                lossSum = 0; lossSteps = 0; tokensSinceLog = 0; logStart = Date()
            }
            let epochEnded = completedEpochs() > epochsBefore
            if let evaluate = callbacks.evaluate, config.evaluatesAfter(step: step, epochEnded: epochEnded),
               step != totalSteps {
                let loss = try evaluate(engine)
                try callbacks.log(StepMetrics(step: step, evalLoss: loss))
                try record(evalLoss: loss, callbacks)
                lastEvaluation = step
            }
            if let save = callbacks.save, config.savesAfter(step: step, epochEnded: epochEnded) {
                try save(self)
                lastCheckpointStep = step
            }
            if let patience = config.earlyStoppingPatience, evaluationsWithoutImprovement >= patience {
                stoppedEarly = true
                break
            }
        }
        if step == totalSteps || stoppedEarly, config.evalStrategy != .no, lastEvaluation != step,
           let evaluate = callbacks.evaluate {
            let loss = try evaluate(engine)
            try callbacks.log(StepMetrics(step: step, evalLoss: loss))
            try record(evalLoss: loss, callbacks)
        }
    }

    /// Takes a validation loss: a new lowest is the best (kept through `saveBest` with `loadBestModelAtEnd`); early
    /// stopping's counter restarts when it improves on the previous best by more than the threshold.
    private mutating func record(evalLoss loss: Double, _ callbacks: Callbacks) throws {
        let improvement = best.map { $0.loss - loss } ?? .infinity
        if improvement > config.earlyStoppingThreshold { evaluationsWithoutImprovement = 0 } else {
            evaluationsWithoutImprovement += 1
        }
        guard improvement > 0 else { return }
        best = (loss, step)
        if config.loadBestModelAtEnd { try callbacks.saveBest?(self) }
    }

    /// Restores the position of a checkpoint (the engine's adapters and optimizer must be restored by the caller).
    public mutating func restore(step: Int, rng: SeededGenerator, data: DataPosition,
                                 best: (loss: Double, step: Int)? = nil, evaluationsWithoutImprovement: Int = 0) {
        self.step = step; self.rng = rng; self.data = data
        self.best = best; self.evaluationsWithoutImprovement = evaluationsWithoutImprovement
        lastCheckpointStep = step
    }

    /// Whether adapters with this sum of squares (float64) are usable: every weight finite, and the sum within
    /// float32's range (a norm above ~1.8e19 only comes from a diverged run, e.g. a learning rate of 1e30, and
    /// overflows every float32 product the next step makes).
    public static func adaptersAreFinite(sumOfSquares: Double) -> Bool {
        sumOfSquares.isFinite && sumOfSquares <= Double(Float.greatestFiniteMagnitude)
    }

    /// The error that stops a diverged run at `step` (1-based), naming the last good checkpoint. `beforeAnyUpdate`:
    /// the run's first batch, whose loss no learning rate made: the model or its starting adapters are to blame (a
    /// damaged weight file used to be met with advice to lower the learning rate).
    private func divergence(_ what: String, atStep step: Int, beforeAnyUpdate: Bool = false) -> TrainingError {
        if beforeAnyUpdate {
            return TrainingError(description: "step \(step): \(what) on the run's first batch, before any update: the "
                + "model (or the adapters it starts from) computes non-finite values on this data; check its weights "
                + "and config.json (nothing was written)")
        }
        let kept = lastCheckpointStep.map { "the last good checkpoint is checkpoint-\($0) (step \($0))" }
            ?? "no checkpoint was saved"
        return TrainingError(description: "training diverged at step \(step): \(what); stopped before anything " +
            "non-finite was written "
                             + "(\(kept)). Try a lower --learning-rate or --max-grad-norm.")
    }

    /// Mean token loss of `examples` on `engine` (no dropout, no gradients), batched by `batchSize` (padding-free
    /// batches as `TokenizedDataset.collate` makes them when `paddingFree`: the same loss).
    public static func evaluate(engine: TrainingEngine, examples: [TokenizedExample], batchSize: Int,
                                paddingFree: Bool = false) throws -> (loss: Double, tokens: Int) {
        guard batchSize >= 1 else { throw TrainingError(description: "the evaluation batch size is \(batchSize): it " +
            "must be at least 1") }
        var total = 0.0, count = 0
        for start in stride(from: 0, to: examples.count, by: batchSize) {
            let batch = Array(examples[start..<min(examples.count, start + batchSize)])
            let (ids, labels, rows, tokens, positions) = TokenizedDataset.collate(batch, paddingFree: paddingFree)
            let r = try engine.loss(inputIds: ids, labels: labels, positions: positions, batch: rows, tokens: tokens)
            total += r.loss * Double(r.tokenCount)
            count += r.tokenCount
        }
        return (count > 0 ? total / Double(count) : .nan, count)
    }
}
