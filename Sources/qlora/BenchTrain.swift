import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training
import CPUBackend

/// `qlora bench-train`: CPU training throughput on a random-weight model of a named shape, printed as a table.
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-train",
        abstract: "Benchmark CPU QLoRA training steps (tokens/s, peak RSS) and the BLAS sgemm rate on this machine.")

    @Option(help: "smollm2-135m or a model folder.") var shape: String = "smollm2-135m"
    @Option(help: "Sequences per step.") var batch: Int = 1
    @Option(help: "Tokens per sequence.") var seq: Int = 512
    @Option(help: "Timed steps (after one warm-up).") var steps: Int = 3
    @Option(help: "Layers to build (fewer for a quick look; tokens/s is then scaled by nothing).") var layers: Int?

    func run() throws {
        let model = try makeModel()
        var rng = SeededGenerator(seed: 1)
        let ids = (0..<(batch * seq)).map { _ in Int(rng.next() % UInt64(model.config.vocabSize)) }
        var opt = AdamW(kind: .paged_adamw_8bit)
        func oneStep() {
            let r = model.step(inputIds: ids, labels: ids, batch: batch, tokens: seq, rng: &rng)
            opt.update(model, gradients: r.gradients, lr: 1e-4)
        }
        oneStep()
        let start = Date()
        for _ in 0..<steps { oneStep() }
        let seconds = Date().timeIntervalSince(start) / Double(steps)
        let sgemm = sgemmRate(m: batch * seq, n: model.config.intermediateSize, k: model.config.hiddenSize)
        print("| model | layers | batch × seq | step (s) | tokens/s | peak RSS (MB) | sgemm GFLOP/s (\(batch * seq)×\(model.config.intermediateSize)×\(model.config.hiddenSize)) | BLAS |")
        print("| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
        print("| \(shape) | \(model.layers.count) | \(batch) × \(seq) | \(String(format: "%.3f", seconds)) | "
              + "\(String(format: "%.0f", Double(batch * seq) / seconds)) | \(peakRSSMegabytes()) | \(String(format: "%.1f", sgemm)) | \(BLAS.implementation) |")
    }

    private func makeModel() throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.r = 16; lora.alpha = 32; lora.targetModules = ["all-linear"]
        if FileSystem.isDirectory(shape) { return try LlamaModel.load(directory: shape, lora: lora, seed: 1) }
        guard shape == "smollm2-135m" else { throw ValidationError("unknown --shape \(shape): smollm2-135m or a model folder") }
        let json = #"{"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-05, "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": true}"#
        let config = try JSONDecoder().decode(LlamaConfig.self, from: Data(json.utf8))
        var rng = SeededGenerator(seed: 7)
        func random(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in (rng.nextUniform() * 2 - 1) * scale } }
        let c = config.hiddenSize
        var built: [DecoderLayer] = []
        for _ in 0..<(layers ?? config.layerCount) {
            var projections: [String: FrozenLinear] = [:]
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let w = Tensor(random(out * inF, 0.04), shape: [out, inF], dtype: .bf16)
                let q = try Quantized4BitTensor(quantizing: w, type: .nf4, doubleQuant: true)
                projections[name] = FrozenLinear(outFeatures: out, inFeatures: inF, quantized: q, weight: q.dequantizedFloat32(), bias: nil)
            }
            built.append(DecoderLayer(inputNorm: [Float](repeating: 1, count: c), postAttentionNorm: [Float](repeating: 1, count: c),
                                      projections: projections))
        }
        let embedding = random(config.vocabSize * c, 0.02)
        return LlamaModel(config: config, embedding: embedding, layers: built, finalNorm: [Float](repeating: 1, count: c),
                          lmHead: embedding, lora: lora, seed: 1)
    }

    private func sgemmRate(m: Int, n: Int, k: Int) -> Double {
        let a = [Float](repeating: 0.5, count: m * k), b = [Float](repeating: 0.25, count: n * k)
        var c = [Float](repeating: 0, count: m * n)
        var best = Double.infinity
        for _ in 0..<5 {
            let start = Date()
            CPUOps.linearForward(&c, a, b, rows: m, inFeatures: k, outFeatures: n)
            best = min(best, Date().timeIntervalSince(start))
        }
        return 2 * Double(m) * Double(n) * Double(k) / best / 1e9
    }

    private func peakRSSMegabytes() -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first(where: { !$0.isEmpty }) ?? "") else { return -1 }
        return kb / 1024
    }
}
