import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Training

extension OptimizerKind: ExpressibleByArgument {}
extension LRScheduleKind: ExpressibleByArgument {}

/// `qlora train`: the core QLoRA loop on pre-tokenized data; writes metrics.jsonl and the adapter in PEFT format.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fine-tune LoRA adapters on a frozen 4-bit base (CPU).")

    @OptionGroup var modelOptions: ModelOptions

    @Option(help: "JSONL data: {\"input_ids\": [...]} per line, optionally with \"labels\".")
    var data: String

    @Option(help: "Where metrics.jsonl and the adapter go.")
    var outputDir: String

    @Option(help: "Start from this PEFT adapter (its r, alpha, targets) instead of fresh adapters.")
    var initAdapter: String?

    @Option(help: "LoRA rank r.") var loraR: Int = 8
    @Option(help: "LoRA alpha.") var loraAlpha: Double = 16
    @Option(help: "LoRA dropout.") var loraDropout: Double = 0.05
    @Option(help: "Comma-separated projections (q_proj,v_proj,...) or all-linear.") var targetModules: String = "q_proj,v_proj"
    @Flag(help: "rsLoRA scaling (alpha / sqrt(r)).") var useRslora = false
    @Option(help: "Sequences per step.") var batchSize: Int = 4
    @Option(help: "Optimizer steps.") var maxSteps: Int = 100
    @Option(help: "Peak learning rate.") var learningRate: Float = 2e-4
    @Option(help: "Decoupled weight decay.") var weightDecay: Float = 0
    @Option(help: "adamw, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit.") var optim: OptimizerKind = .paged_adamw_8bit
    @Option(help: "constant, linear or cosine.") var lrScheduler: LRScheduleKind = .linear
    @Option(help: "Linear warm-up steps.") var warmupSteps: Int = 0
    @Option(help: "Clip the global gradient norm to this (0: off).") var maxGradNorm: Float = 1
    @Flag(help: "Keep the data order.") var noShuffle = false
    @Option(help: "Log every this many steps.") var loggingSteps: Int = 10
    @Option(help: "Seed for adapters, dropout and shuffling.") var seed: UInt64 = 42
    @Flag(help: "Recompute each layer's activations in the backward pass (less memory, same numbers).")
    var gradientCheckpointing = false
    @Option(help: "Cut sequences to this many tokens.") var maxSeqLength: Int?

    func validate() throws {
        guard loraR > 0 else { throw ValidationError("--lora-r must be positive") }
        guard (0..<1).contains(loraDropout) else { throw ValidationError("--lora-dropout must be in [0, 1)") }
        guard batchSize > 0, maxSteps > 0, loggingSteps > 0 else {
            throw ValidationError("--batch-size, --max-steps and --logging-steps must be positive")
        }
        let known = Set(LlamaConfig.projectionNames + ["all-linear"])
        for t in targetModules.split(separator: ",") where !known.contains(String(t)) {
            throw ValidationError("--target-modules: unknown module '\(t)' (known: \(LlamaConfig.projectionNames.joined(separator: ", ")), all-linear)")
        }
    }

    func run() throws {
        var lora = LoRAConfig()
        lora.r = loraR; lora.alpha = loraAlpha; lora.dropout = loraDropout; lora.useRSLoRA = useRslora
        lora.targetModules = targetModules.split(separator: ",").map(String.init)
        let model = try modelOptions.load(lora: lora, seed: seed)
        if let initAdapter { try PEFTAdapter.load(directory: initAdapter, into: model) }
        let counts = model.parameterCounts
        print(String(format: "trainable params: %@ || all params: %@ || trainable%%: %.4f",
                     counts.trainable.formatted(), counts.all.formatted(), 100 * Double(counts.trainable) / Double(counts.all)))
        let examples = try TokenizedDataset.load(path: data, vocabSize: model.config.vocabSize,
                                                 maxLength: maxSeqLength ?? model.config.maxPositionEmbeddings)
        var config = TrainingConfig()
        config.batchSize = batchSize; config.maxSteps = maxSteps; config.learningRate = learningRate
        config.weightDecay = weightDecay; config.optimizer = optim; config.schedule = lrScheduler
        config.warmupSteps = warmupSteps; config.maxGradNorm = maxGradNorm; config.loggingSteps = loggingSteps
        config.seed = seed; config.shuffle = !noShuffle; config.gradientCheckpointing = gradientCheckpointing
        try FileSystem.createDirectory(outputDir)
        let metricsPath = outputDir + "/metrics.jsonl"
        FileManager.default.createFile(atPath: metricsPath, contents: nil)
        let metrics = try FileHandle(forWritingTo: URL(fileURLWithPath: metricsPath))
        defer { try? metrics.close() }
        var trainer = Trainer(model: model, examples: examples, config: config)
        let reporter = ProgressReporter(label: "train")
        var lastLoss = Double.nan
        trainer.train(log: { m in
            metrics.write((m.json + "\n").data(using: .utf8)!)
            lastLoss = m.loss
        }, progress: { step, loss in
            reporter.update(done: step, total: maxSteps, detail: String(format: "loss %.4f", loss))
        })
        reporter.finish()
        guard lastLoss.isFinite else { throw ValidationError("training produced a non-finite loss; the adapter was not saved") }
        try PEFTAdapter.save(model, to: outputDir, baseModel: modelOptions.model)
        print("saved the adapter and metrics.jsonl to \(outputDir) (final logged loss \(String(format: "%.4f", lastLoss)))")
    }
}
