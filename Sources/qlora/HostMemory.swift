import ArgumentParser
import Foundation
import Llama
import ModelFiles

/// This process's host memory, as `/usr/bin/time -v` and `/proc/self/status` report it.
enum HostMemory {
    /// The most resident memory the process has had so far (VmHWM, bytes; what `/usr/bin/time -v` calls maximum
    /// resident set size).
    static func peakResidentBytes() -> Int { statusField("VmHWM:") }
    /// Resident memory now (VmRSS, bytes).
    static func residentBytes() -> Int { statusField("VmRSS:") }

    static func statusField(_ name: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name) }),
              let kb = Int(line.split(separator: " ").dropFirst().first(where: { !$0.isEmpty }) ?? "") else {
            return -1
        }
        return kb * 1024
    }
}

extension HostMemory {
    /// On the CPU a step's logits and their gradient alone take batch × tokens × vocabulary floats twice, and each
    /// layer keeps several hidden-size rows a token: more than this process may allocate (the machine's memory, or
    /// `ulimit -v`) is a clear error before any allocation, not a failed allocation that kills the process.
    /// `flags` names the settings in the message ("--batch-size 4 × --max-seq-length 512").
    /// With `lora` (train), its adapters count too: each weight and its gradient in float32 (the optimizer's moments
    /// may take 8 bits), and a token's x·Aᵀ (r floats) in every adapted projection. `--lora-r 65536
    /// --target-modules all` was left out, and failed an allocation ("Fatal error") on data the check let through.
    static func checkStepFits(_ cfg: LlamaConfig, batch: Int, tokens: Int, flags: String,
                              lora: LoRAConfig? = nil) throws {
        var perToken = Double(cfg.vocabSize + 8 * cfg.hiddenSize * max(cfg.layerCount, 1)) * 8
        // The layer being differentiated holds its own (with checkpointing too, recomputed): q, k, v, gate, up,
        // SwiGLU's output, and its attention probabilities (a head's row over at least the keys of its 128-row
        // block: 64 on average). Without them a model whose MLP is wide against its hidden size (512 over 192, at
        // batch 1000 × 256) passed the check and failed an allocation ("Fatal error").
        let layer = cfg.headCount * cfg.headDim + 2 * cfg.kvHeadCount * cfg.headDim + 3 * cfg.intermediateSize
            + cfg.headCount * min(tokens, 128) / 2
        perToken += Double(layer) * 4
        var fixed = 0.0, what = "logits and activations"
        if let lora {
            let shapes = lora.resolvedTargets.compactMap { cfg.projectionShape($0) }
            let layers = Double(max(cfg.layerCount, 1)), r = Double(lora.r)
            fixed = shapes.reduce(0.0) { $0 + r * Double($1.0 + $1.1) } * layers * 8
            perToken += Double(shapes.count) * layers * r * 4
            what += ", LoRA r \(lora.r) adapters and their gradients"
        }
        let needed = Double(batch) * Double(tokens) * perToken + fixed
        let allowed = Double(FileSystem.allocatableBytes)
        guard needed <= allowed else {
            throw ValidationError(String(format: "%@ needs at least %.1f GB on the CPU (%@); "
                                         + "this process may allocate %.1f GB: lower them", flags, needed / 1e9,
                                         what, allowed / 1e9))
        }
    }
}

extension HostMemory {
    /// A model on the CPU holds every projection twice, in 4 bits and dequantized to float32 for the products, and
    /// its embedding and output matrix in float32: a lower bound of its bytes. More than this process may allocate
    /// (`bench --shape llama2-7b --device cpu` under an 8 GB limit) is an error before the weights are drawn, not a
    /// failed allocation that kills the process ("Fatal error: failed to allocate").
    static func checkModelFits(_ cfg: LlamaConfig, what: String) throws {
        let perLayer = LlamaConfig.projectionNames.reduce(0.0) { total, name in
            let (out, inF) = cfg.projectionShape(name)!
            return total + Double(out) * Double(inF)
        }
        let vocabulary = Double(cfg.vocabSize) * Double(cfg.hiddenSize) * (cfg.tieWordEmbeddings ? 1 : 2)
        let needed = Double(cfg.layerCount) * perLayer * 4.5 + vocabulary * 4
        let allowed = Double(FileSystem.allocatableBytes)
        guard needed <= allowed else {
            throw ValidationError(String(format: "%@ needs at least %.1f GB on the CPU for its weights (4-bit and "
                                         + "float32 copies of %.2f B parameters); this process may allocate %.1f GB: "
                                         + "use a smaller shape, or --device cuda", what, needed / 1e9,
                                         (Double(cfg.layerCount) * perLayer + vocabulary) / 1e9, allowed / 1e9))
        }
    }
}
