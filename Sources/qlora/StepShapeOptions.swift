import ArgumentParser
import CUDABackend
import Foundation
import Llama
import Training

/// The training step that `bench` times and `plan` sizes: a model (a named shape, a config.json or a real
/// checkpoint), the LoRA targets, batch and sequence length, dtype, dropout and checkpointing.
struct StepShapeOptions: ParsableArguments {
    // One of --shape, --model-config, --model (the shape when none is given). --model-config is not --config:
    // train's --config is a recipe, this one a model's config.json.
    @Option(name: .customLong("shape"),
            help: ArgumentHelp("A named shape: \(Self.shapeNames) (default \(Self.defaultShape))."))
    var shapeOption: String?
    @Option(help: "A model's config.json (or its folder) to take the shape from (random weights).")
    var modelConfig: String?
    @Option(help: "A real checkpoint (Hugging Face folder, bnb 4-bit folder or GGUF), loaded as train loads it.")
    var model: String?
    // The names train uses (--target-modules, --batch-size, --max-seq-length, --compute-dtype), each also under the
    // short name of hf_baseline.py's flags (--targets, --batch, --seq).
    @Option(name: [.customLong("target-modules"), .customLong("targets")], help: ArgumentHelp(LoRATargets.help + "."))
    var targetModules: String = LoRATargets.defaultText
    // train's defaults (TrainingConfig's, DatasetOptions'), written once there; the GPU scripts that compare with
    // hf_baseline.py and unsloth_bench.py pass their 2048 tokens.
    @Option(name: [.customLong("batch-size"), .customLong("batch")],
            help: ArgumentHelp("Sequences per step (default \(TrainingConfig().batchSize), as train)."))
    var batchOption: Int?
    @Option(name: [.customLong("max-seq-length"), .customLong("seq")],
            help: ArgumentHelp("Tokens per sequence, every sequence this long (default "
                               + "\(DatasetOptions().maxSeqLength), train's --max-seq-length; the Python "
                               + "baselines use 2048)."))
    var seqOption: Int?
    // train's option and default rule (bf16 on the GPU, fp32 on the CPU).
    @Option(help: ArgumentHelp(ModelOptions.computeDTypeHelp)) var computeDtype: ComputeDType?
    // train's default (LoRAConfig's, written once there); the Hugging Face baseline's 0.05 is passed by the scripts
    // that compare with it.
    @Option(name: .customLong("lora-dropout"),
            help: ArgumentHelp("LoRA dropout (default \(LoRAConfig().dropout.formatted()), as train; hf_baseline.py "
                               + "uses 0.05, unsloth_bench.py needs 0)."))
    var loraDropoutOption: Double?
    @Option(help: "Build only this many layers (a quick look; tokens/s is not rescaled).") var layers: Int?
    @Flag(help: "Turn gradient checkpointing off.") var noCkpt = false
    @Option(help: """
        On a GPU, keep gradient checkpoints in pinned host memory (true, the default) \
        or on the GPU (false).
        """)
    var offloadCheckpoints: Bool?

    /// The named shapes --shape takes, and the one used when no shape, config or model is given.
    static var shapeNames: String { LlamaConfig.benchmarkShapes.keys.sorted().joined(separator: ", ") }
    static let defaultShape = "smollm2-135m"

    /// The shape's name: --shape, else the default (meaningful only without --model-config and --model).
    var shape: String { shapeOption ?? Self.defaultShape }
    /// --batch-size, else train's default.
    var batch: Int { batchOption ?? TrainingConfig().batchSize }
    /// --max-seq-length, else train's default.
    var seq: Int { seqOption ?? DatasetOptions().maxSeqLength }
    /// --lora-dropout, else train's default (LoRAConfig's).
    var loraDropout: Double { loraDropoutOption ?? LoRAConfig().dropout }
    /// What the step is built from, for the output: the model, the config file or the shape.
    var source: String { model ?? modelConfig ?? shape }

    func validate() throws {
        try LoRATargets.check(targetList, flag: "--target-modules")
        // Two of them would leave one unused without a word (a model's shape wins over --shape).
        let given = [("--shape", shapeOption), ("--model-config", modelConfig), ("--model", model)]
            .filter { $0.1 != nil }.map(\.0)
        guard given.count <= 1 else {
            throw ValidationError("\(given.joined(separator: " and ")): give one (the step's shape comes from a "
                                  + "named shape, a config.json or a checkpoint)")
        }
        guard model != nil || modelConfig != nil || LlamaConfig.benchmarkShapes[shape] != nil else {
            throw ValidationError("--shape \(shape) is unknown: use one of \(Self.shapeNames), or give "
                                  + "--model-config or --model")
        }
        guard batch > 0 else { throw ValidationError("--batch-size is \(batch): must be at least 1") }
        guard seq > 1 else { throw ValidationError("--max-seq-length is \(seq): must be at least 2") }
        let (tokens, overflow) = batch.multipliedReportingOverflow(by: seq)
        guard !overflow, tokens <= Self.maximumStepTokens else {
            throw ValidationError("--batch-size \(batch) × --max-seq-length \(seq) is more tokens a step than "
                                  + "the \(Self.maximumStepTokens) allowed")
        }
        guard (0..<1).contains(loraDropout) else {
            throw ValidationError("--lora-dropout is \(loraDropout): must be in [0, 1)")
        }
        if offloadCheckpoints != nil && noCkpt {
            throw ValidationError("--offload-checkpoints has no effect with --no-ckpt (there are no checkpoints to "
                                  + "keep): leave one of them out")
        }
    }

    /// Most tokens one step may hold (2^31: far beyond any real batch, and small enough that sizes derived from it
    /// cannot overflow).
    static let maximumStepTokens = 1 << 31

    /// Most layers a planned or benchmarked step has (beyond any released model's 126).
    static let maximumLayers = 4096

    /// The step fits the memory this process may allocate on the CPU (`HostMemory.checkStepFits`).
    func checkFitsHostMemory(_ cfg: LlamaConfig) throws {
        try HostMemory.checkModelFits(cfg, what: "the model (\(source))")
        try HostMemory.checkStepFits(cfg, batch: batch, tokens: seq,
                                     flags: "--batch-size \(batch) × --max-seq-length \(seq)")
    }

    /// The targets as train names them (`LoRATargets`).
    var targetList: [String] { LoRATargets.parse(targetModules) }

    /// The targets as hf_baseline.py reports them (qv, all), else the list.
    var targets: String {
        var lora = LoRAConfig()
        lora.targetModules = targetList
        switch lora.resolvedTargets {
        case ["q_proj", "v_proj"]: return "qv"
        case LlamaConfig.projectionNames: return "all"
        default: return lora.resolvedTargets.joined(separator: ",")
        }
    }

    /// The GPU activation type of --compute-dtype.
    var gpuDType: GPUDType { gpuComputeDType == .fp32 ? .f32 : .bf16 }

    /// --compute-dtype on the GPU (bf16 unless given) and on the CPU (fp32 unless given), as train has it.
    var gpuComputeDType: ComputeDType { computeDtype ?? .bf16 }
    var cpuComputeDType: ComputeDType { computeDtype ?? .fp32 }

    /// The architecture, the LoRA settings (r 16, alpha 32, as the baselines), and the checkpoint's weights if any.
    func resolve() throws -> (LlamaConfig, LoRAConfig, LlamaWeights?) {
        var cfg: LlamaConfig
        let weights = try model.map { try LlamaWeights.open(path: $0) }
        if let weights { cfg = weights.config } else if let modelConfig {
            cfg = try LlamaConfig(contentsOf: modelConfig)
        } else {
            cfg = try LlamaConfig.benchmarkShape(shape, maxPositions: max(4096, seq))
        }
        if let layers {
            guard weights == nil else { throw ValidationError("--layers builds a random model: not with --model") }
            guard (1...max(cfg.layerCount, 1)).contains(layers) else {
                throw ValidationError("--layers is \(layers): must be in 1 ... \(cfg.layerCount) (the shape's layers)")
            }
            cfg.layerCount = layers
        }
        // The step walks every layer, and a random model (or the virtual GPU's plan) keeps records of each: a
        // 300-byte config with 2^24 layers (LlamaConfig's bound) planned for an hour or ran out of host memory.
        guard cfg.layerCount <= Self.maximumLayers else {
            throw ValidationError("\(source): \(cfg.layerCount) layers is more than the \(Self.maximumLayers) a step "
                                  + "is built for here (released models have at most a few hundred); give --layers")
        }
        guard seq <= cfg.maxPositionEmbeddings else {
            // Without the flag it named a value the user never gave (`plan --model` of any model with a context
            // under 512 tokens failed so).
            throw ValidationError("--max-seq-length \(seq)\(seqOption == nil ? " (the default, train's)" : "") is "
                                  + "longer than the model's max_position_embeddings (\(cfg.maxPositionEmbeddings)): "
                                  + "give --max-seq-length \(cfg.maxPositionEmbeddings) or less")
        }
        var lora = LoRAConfig()
        lora.r = 16; lora.alpha = 32; lora.dropout = loraDropout
        lora.targetModules = targetList
        return (cfg, lora, weights)
    }
}
