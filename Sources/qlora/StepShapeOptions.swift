import ArgumentParser
import CUDABackend
import Foundation
import Llama

/// The training step that `bench` times and `plan` sizes: a model (a named shape, a config.json or a real
/// checkpoint), the LoRA targets, batch and sequence length, dtype, dropout and checkpointing.
struct StepShapeOptions: ParsableArguments {
    @Option(help: "smollm2-135m, tinyllama-1.1b, llama2-7b or llama3-8b.") var shape: String = "smollm2-135m"
    @Option(help: "A config.json to take the shape from instead.") var config: String?
    @Option(help: "A real checkpoint (Hugging Face folder, bnb 4-bit folder or GGUF), loaded as train loads it.")
    var model: String?
    // The names train uses (--target-modules, --batch-size, --max-seq-length, --compute-dtype), each also under the
    // short name of hf_baseline.py's flags (--targets, --batch, --seq).
    @Option(name: [.customLong("target-modules"), .customLong("targets")], help: ArgumentHelp(LoRATargets.help + "."))
    var targetModules: String = LoRATargets.defaultText
    @Option(name: [.customLong("batch-size"), .customLong("batch")], help: "Sequences per step.") var batch: Int = 4
    @Option(name: [.customLong("max-seq-length"), .customLong("seq")], help: "Tokens per sequence.") var seq: Int = 2048
    // train's option and default rule (bf16 on the GPU, fp32 on the CPU).
    @Option(help: ArgumentHelp(ModelOptions.computeDTypeHelp)) var computeDtype: ComputeDType?
    // train's default (LoRAConfig's, written once there); the Hugging Face baseline's 0.05 is passed by the scripts
    // that compare with it.
    @Option(help: ArgumentHelp("LoRA dropout (default \(LoRAConfig().dropout.formatted()), as train; hf_baseline.py "
                               + "uses 0.05, unsloth_bench.py needs 0)."))
    var loraDropout: Double = LoRAConfig().dropout
    @Option(help: "Build only this many layers (a quick look; tokens/s is not rescaled).") var layers: Int?
    @Flag(help: "Turn gradient checkpointing off.") var noCkpt = false
    @Option(help: """
        On a GPU, keep gradient checkpoints in pinned host memory (true, the default) \
        or on the GPU (false).
        """)
    var offloadCheckpoints: Bool?

    func validate() throws {
        try LoRATargets.check(targetList, flag: "--target-modules")
        guard model != nil || config != nil || LlamaConfig.benchmarkShapes[shape] != nil else {
            throw ValidationError("unknown --shape \(shape): one of "
                                  + "\(LlamaConfig.benchmarkShapes.keys.sorted().joined(separator: ", ")), or --config")
        }
        guard batch > 0, seq > 1 else {
            throw ValidationError("--batch-size must be positive and --max-seq-length at least 2")
        }
        let (tokens, overflow) = batch.multipliedReportingOverflow(by: seq)
        guard !overflow, tokens <= Self.maximumStepTokens else {
            throw ValidationError("--batch-size \(batch) × --max-seq-length \(seq) is more tokens a step than "
                                  + "the \(Self.maximumStepTokens) allowed")
        }
        guard (0..<1).contains(loraDropout) else { throw ValidationError("--lora-dropout must be in [0, 1)") }
    }

    /// Most tokens one step may hold (2^31: far beyond any real batch, and small enough that sizes derived from it
    /// cannot overflow).
    static let maximumStepTokens = 1 << 31

    /// On the CPU the step's logits and their gradient alone take batch × seq × vocabulary floats twice: more than
    /// the machine's memory is a clear error before any allocation (not a failed allocation that kills the process).
    func checkFitsHostMemory(_ cfg: LlamaConfig) throws {
        let physical = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
        let perToken = Double(cfg.vocabSize + 8 * cfg.hiddenSize * max(cfg.layerCount, 1)) * 8
        let needed = Double(batch) * Double(seq) * perToken
        guard physical <= 0 || needed <= Double(physical) else {
            throw ValidationError(String(format: "--batch-size %ld × --max-seq-length %ld needs at least %.1f GB "
                                         + "on the CPU (logits and activations); this machine has %.1f GB", batch,
                                         seq, needed / 1e9, Double(physical) / 1e9))
        }
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
        if let weights { cfg = weights.config } else if let config { cfg = try LlamaConfig(contentsOf: config) } else {
            cfg = try LlamaConfig.benchmarkShape(shape, maxPositions: max(4096, seq))
        }
        if let layers {
            guard weights == nil else { throw ValidationError("--layers builds a random model: not with --model") }
            guard (1...max(cfg.layerCount, 1)).contains(layers) else {
                throw ValidationError("--layers is \(layers): must be in 1 ... \(cfg.layerCount) (the shape's layers)")
            }
            cfg.layerCount = layers
        }
        guard seq <= cfg.maxPositionEmbeddings else {
            throw ValidationError("--seq \(seq) is longer than the model's max_position_embeddings "
                                  + "(\(cfg.maxPositionEmbeddings))")
        }
        var lora = LoRAConfig()
        lora.r = 16; lora.alpha = 32; lora.dropout = loraDropout
        lora.targetModules = targetList
        return (cfg, lora, weights)
    }
}
