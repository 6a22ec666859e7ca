import ArgumentParser
import Foundation
import Llama

/// The training step that `bench` times and `plan` sizes: a model (a named shape, a config.json or a real
/// checkpoint), the LoRA targets, batch and sequence length, dtype, dropout and checkpointing.
struct StepShapeOptions: ParsableArguments {
    /// The shapes of hf_baseline.py.
    static let shapes: [String: String] = [
        "smollm2-135m": #""hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": true, "rope_theta": 100000.0"#,
        "tinyllama-1.1b": #""hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000"#,
        "llama2-7b": #""hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000"#,
        "llama3-8b": #""hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rope_theta": 500000.0"#,
    ]

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
    @Option(help: "On a GPU, keep gradient checkpoints in pinned host memory (true, the default) or on the GPU (false).")
    var offloadCheckpoints: Bool?

    func validate() throws {
        guard ["qv", "all"].contains(targets) else { throw ValidationError("--targets must be qv or all, not \(targets)") }
        guard ["bf16", "fp32"].contains(computeDtype) else { throw ValidationError("--compute-dtype must be bf16 or fp32") }
        guard model != nil || config != nil || Self.shapes[shape] != nil else {
            throw ValidationError("unknown --shape \(shape): one of \(Self.shapes.keys.sorted().joined(separator: ", ")), or --config")
        }
        guard batch > 0, seq > 1 else { throw ValidationError("--batch and --seq must be positive (--seq ≥ 2)") }
        guard (0..<1).contains(loraDropout) else { throw ValidationError("--lora-dropout must be in [0, 1)") }
    }

    /// The architecture, the LoRA settings (r 16, alpha 32, as the baselines), and the checkpoint's weights if any.
    func resolve() throws -> (LlamaConfig, LoRAConfig, LlamaWeights?) {
        var cfg: LlamaConfig
        let weights = try model.map { try LlamaWeights.open(path: $0) }
        if let weights { cfg = weights.config } else if let config { cfg = try LlamaConfig(contentsOf: config) } else {
            let json = "{\"model_type\": \"llama\", \"max_position_embeddings\": \(max(4096, seq)), \"rms_norm_eps\": 1e-05, \(Self.shapes[shape]!)}"
            cfg = try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
        }
        if let layers {
            guard weights == nil else { throw ValidationError("--layers builds a random model: not with --model") }
            cfg.layerCount = layers
        }
        guard seq <= cfg.maxPositionEmbeddings else {
            throw ValidationError("--seq \(seq) is longer than the model's max_position_embeddings (\(cfg.maxPositionEmbeddings))")
        }
        var lora = LoRAConfig()
        lora.r = 16; lora.alpha = 32; lora.dropout = loraDropout
        lora.targetModules = targets == "qv" ? ["q_proj", "v_proj"] : ["all-linear"]
        return (cfg, lora, weights)
    }
}
