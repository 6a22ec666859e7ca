import ArgumentParser
import Foundation
import Llama

/// The training step that `bench` times and `plan` sizes: a model (a named shape, a config.json or a real
/// checkpoint), the LoRA targets, batch and sequence length, dtype, dropout and checkpointing.
struct StepShapeOptions: ParsableArguments {
    @Option(help: "smollm2-135m, tinyllama-1.1b, llama2-7b or llama3-8b.") var shape: String = "smollm2-135m"
    @Option(help: "A config.json to take the shape from instead.") var config: String?
    @Option(help: "A real checkpoint (Hugging Face folder, bnb 4-bit folder or GGUF), loaded as train loads it.")
    var model: String?
    @Option(help: "LoRA targets: qv (q_proj, v_proj) or all (the seven projections).") var targets: String = "qv"
    @Option(help: "Sequences per step.") var batch: Int = 4
    @Option(help: "Tokens per sequence.") var seq: Int = 2048
    @Option(help: "Compute dtype on the GPU: bf16 or fp32.") var computeDtype: String = "bf16"
    @Option(help: "LoRA dropout (hf_baseline.py uses 0.05; unsloth_bench.py needs 0).") var loraDropout: Double = 0.05
    @Option(help: "Build only this many layers (a quick look; tokens/s is not rescaled).") var layers: Int?
    @Flag(help: "Turn gradient checkpointing off.") var noCkpt = false
    @Option(help: """
        On a GPU, keep gradient checkpoints in pinned host memory (true, the default) \
        or on the GPU (false).
        """)
    var offloadCheckpoints: Bool?

    func validate() throws {
        guard ["qv", "all"].contains(targets) else {
            throw ValidationError("--targets must be qv or all, not \(targets)")
        }
        guard ["bf16", "fp32"].contains(computeDtype) else {
            throw ValidationError("--compute-dtype must be bf16 or fp32")
        }
        guard model != nil || config != nil || LlamaConfig.benchmarkShapes[shape] != nil else {
            throw ValidationError("unknown --shape \(shape): one of "
                                  + "\(LlamaConfig.benchmarkShapes.keys.sorted().joined(separator: ", ")), or --config")
        }
        guard batch > 0, seq > 1 else { throw ValidationError("--batch and --seq must be positive (--seq ≥ 2)") }
        guard (0..<1).contains(loraDropout) else { throw ValidationError("--lora-dropout must be in [0, 1)") }
    }

    /// The architecture, the LoRA settings (r 16, alpha 32, as the baselines), and the checkpoint's weights if any.
    func resolve() throws -> (LlamaConfig, LoRAConfig, LlamaWeights?) {
        var cfg: LlamaConfig
        let weights = try model.map { try LlamaWeights.open(path: $0) }
        if let weights { cfg = weights.config } else if let config { cfg = try LlamaConfig(contentsOf: config) } else {
            cfg = try LlamaConfig.benchmarkShape(shape, maxPositions: max(4096, seq))
        }
        if let layers {
            guard weights == nil else { throw ValidationError("--layers builds a random model: not with --model") }
            cfg.layerCount = layers
        }
        guard seq <= cfg.maxPositionEmbeddings else {
            throw ValidationError("--seq \(seq) is longer than the model's max_position_embeddings "
                                  + "(\(cfg.maxPositionEmbeddings))")
        }
        var lora = LoRAConfig()
        lora.r = 16; lora.alpha = 32; lora.dropout = loraDropout
        lora.targetModules = targets == "qv" ? ["q_proj", "v_proj"] : ["all-linear"]
        return (cfg, lora, weights)
    }
}
