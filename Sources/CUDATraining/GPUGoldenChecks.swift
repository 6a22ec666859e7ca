import CUDABackend
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training

/// tiny-llama and the NF4 vectors from the Hugging Face stack, on the GPU (the CPU passes the same in `swift test`).
public struct GPUGoldenChecks {
    public init(device: CUDADevice, golden: String) { self.device = device; self.golden = golden }
    let device: CUDADevice
    let golden: String

    /// tiny-llama with the golden adapter, streamed to the GPU from its folder.
    func loadTiny(_ dtype: GPUDType = .f32) throws -> CUDALlama {
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        return try CUDALlama(weights: weights, lora: lora, adapters: adapters, device: device, dtype: dtype)
    }

    public func run(_ c: inout Checker) throws {
        // The GPU quantizer against bitsandbytes' own output (nf4.safetensors).
        let nf4 = try SafeTensorsFile(path: golden + "/nf4.safetensors")
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/qlora.json"))
        for case let name? in (json["nf4"]?["cases"]?.arrayValue ?? []).map({ $0.stringValue }) {
            let parts = name.split(separator: ".")
            let input = try nf4.tensor(named: parts[0] + ".input")
            let type: QuantType = parts[1] == "fp4" ? .fp4 : .nf4
            let xb = try device.allocate(input.elementCount, input.dtype == .bf16 ? .bf16 : .f32)
            try device.copy(input.floats(), to: xb)
            let (packed, absmax) = try device.quantize4Bit(xb, type: type, blocksize: 64)
            c.equal("quantize \(name) packed vs bitsandbytes", packed, try nf4.tensor(named: name + ".packed").bytesArray())
            let scales: BlockScales
            if parts[2] == "dq0" {
                scales = .float32(absmax)
                c.equal("quantize \(name) absmax vs bitsandbytes", absmax.map { $0.bitPattern },
                        try nf4.tensor(named: name + ".absmax").floats().map { $0.bitPattern })
            } else {
                let dq = DoubleQuantizedScales(compressing: absmax)
                scales = .doubleQuantized(dq)
                let codes: [UInt8] = try nf4.tensor(named: name + ".absmax").bytesArray()
                let nested: [Float] = try nf4.tensor(named: name + ".nested_absmax").floats()
                let offset: [Float] = try nf4.tensor(named: name + ".offset").floats()
                c.equal("quantize \(name) double-quantized absmax vs bitsandbytes", dq.codes, codes)
                c.equal("quantize \(name) nested absmax and offset vs bitsandbytes",
                        (dq.nestedAbsmax + [dq.offset]).map { $0.bitPattern }, (nested + offset).map { $0.bitPattern })
            }
            let q = Quantized4BitTensor(quantType: type, blocksize: 64, shape: input.shape, dtype: .bf16, packed: packed, scales: scales)
            let w = try GPUQuantizedWeight(q, device: device).dequantized(.bf16)
            c.equal("dequantize \(name) on the GPU vs bitsandbytes", try device.download(w).map { $0.bitPattern },
                    try nf4.tensor(named: name + ".dequant").floats().map { $0.bitPattern })
        }

        // fp32: logits, loss, gradients and parameter counts.
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let ids = try ref.tensor(named: "input_ids").integers()
        // Streaming to the GPU quantizes there: the same bytes as the host quantizer, dense or pre-quantized file.
        for folder in ["tiny-llama", "tiny-llama-bnb-nf4"] {
            let weights = try LlamaWeights.open(path: golden + "/" + folder)
            let streamed = try CUDALlama(weights: weights, lora: LoRAConfig(), adapters: [:], device: device,
                                         dtype: .bf16)
            for l in [0, weights.config.layerCount - 1] {
                for name in LlamaConfig.projectionNames {
                    let host = try weights.quantizedProjection(layer: l, name)
                    let gpuCopy = try streamed.layers[l].projections[name]!.weight.hostCopy(type: host.quantType,
                                                                                            dtype: host.dtype)
                    c.equal("\(folder) streamed to the GPU: layer \(l) \(name) packed codes",
                            gpuCopy.packed, host.packed)
                    c.equal("\(folder) streamed to the GPU: layer \(l) \(name) absmax",
                            gpuCopy.scales.absmax().map(\.bitPattern), host.scales.absmax().map(\.bitPattern))
                }
            }
        }
        let gpu = try loadTiny()
        try gpu.zeroGradients()
        let r = try gpu.step(inputIds: ids, labels: ids, batch: 2, tokens: 24, keepLogits: true)
        c.close("tiny-llama fp32 logits", r.logits!, try ref.tensor(named: "logits").floats(), tolerance: 1e-4)
        c.scalar("tiny-llama fp32 loss", r.loss, json["loss"]!.doubleValue!, tolerance: 1e-5)
        for (key, g) in try gpu.gradients().sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: ".")
            let path = PEFTAdapter.modulePath(layer: Int(parts[0])!, projection: String(parts[1]))
            for (matrix, values) in [("A", g.a), ("B", g.b)] {
                c.close("tiny-llama gradient \(key).\(matrix)", values,
                        try ref.tensor(named: "grad.base_model.model.\(path).lora_\(matrix).default.weight").floats(), tolerance: 1e-3)
            }
        }
        c.equal("tiny-llama parameter counts", [gpu.parameterCounts.trainable, gpu.parameterCounts.all],
                [json["trainable_params"]!.intValue!, json["all_params"]!.intValue!])

        // Five training steps, both optimizers, losses and final adapters.
        let batches = try ref.tensor(named: "train_batches").integers()
        for (kind, name) in [(OptimizerKind.adamw, "adamw32"), (.paged_adamw_8bit, "paged_adamw8bit")] {
            let model = try loadTiny()
            let engine = try CUDATrainingEngine(model: model, optimizer: try CUDAAdamW(kind: kind, settings: AdamWSettings(), device: device))
            var rng = SeededGenerator(seed: 0)
            var losses: [Float] = []
            for s in 0..<5 {
                let batch = Array(batches[(s * 128)..<((s + 1) * 128)])
                let out = try engine.accumulateGradients(inputIds: batch, labels: batch, batch: 4, tokens: 32, rng: &rng,
                                                         checkpointing: false, gradientScale: 1 / 124)
                losses.append(Float(out.loss))
                try engine.applyOptimizer(lr: 1e-3, gradientScale: 1)
            }
            let expected = json["losses_\(name)"]!.arrayValue!.map { Float($0.doubleValue!) }
            c.close("tiny-llama 5 steps \(name) losses", losses, expected, tolerance: 1e-5)
            var actual: [Float] = [], wanted: [Float] = []
            for (key, w) in try engine.adapterWeights().sorted(by: { $0.key < $1.key }) {
                let parts = key.split(separator: ".")
                let path = PEFTAdapter.modulePath(layer: Int(parts[0])!, projection: String(parts[1]))
                for (matrix, values) in [("A", w.a), ("B", w.b)] {
                    actual += values
                    wanted += try ref.tensor(named: "after_\(name).base_model.model.\(path).lora_\(matrix).default.weight").floats()
                }
            }
            c.close("tiny-llama 5 steps \(name) final adapters", actual, wanted, tolerance: 1e-4)
        }

        // Gradient checkpointing and evaluation change no number (dropout on).
        do {
            var lora = LoRAConfig(); lora.r = 4; lora.alpha = 8; lora.dropout = 0.1; lora.targetModules = ["all-linear"]
            let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
            // The adapters start as trained ones do, B ≠ 0 (peft's B = 0 gives A zero gradients in the first step
            // and near-zero ones after it, where Adam's update g / (√v + ε) turns the last bits of a sum into a
            // change of order lr: two CPU runs whose products only sum in another order, ours and OpenBLAS, end
            // 1e-5 apart from a zero B, 1.9e-6 from this one), so that the comparison measures the step, not that
            // amplification.
            var initial = LoRAWeights.initial(config: weights.config, lora: lora, seed: 3)
            var draw = SeededGenerator(seed: 11)
            for key in initial.keys.sorted() {
                initial[key]!.b = initial[key]!.b.map { _ in Float.random(in: -0.01...0.01, using: &draw) }
            }
            var results: [[Float]] = []
            // GPU fp32 (plain, checkpointing, evaluating between steps), GPU bf16 with checkpointing, and the CPU
            // with checkpointing: the same data, seed and therefore dropout masks (LoRADropout) everywhere. Then the
            // same three with packed rows (documents of 7, 20 and 5 tokens; 32; 1 and 31; 16 and 16).
            let runs: [(checkpointing: Bool, evaluate: Bool, dtype: GPUDType?, packed: Bool)] = [
                (false, false, .f32, false), (true, false, .f32, false), (false, true, .f32, false),
                (true, false, .bf16, false), (true, false, nil, false),
                (true, true, .f32, true), (true, false, .bf16, true), (true, true, nil, true)]
            let positions = [[7, 20, 5], [32], [1, 31], [16, 16]].flatMap { $0.flatMap { Array(0..<$0) } }
            for (checkpointing, evaluate, dtype, packed) in runs {
                let engine: TrainingEngine
                if let dtype {
                    let model = try CUDALlama(weights: weights, lora: lora, adapters: initial, device: device,
                                              dtype: dtype)
                    engine = try CUDATrainingEngine(model: model, optimizer: try CUDAAdamW(
                        kind: .paged_adamw_8bit, settings: AdamWSettings(), device: device))
                } else {
                    let model = try LlamaModel(weights: weights, lora: lora, seed: 3)
                    model.adapters = initial
                    engine = CPUTrainingEngine(model: model, optimizer: AdamW(kind: .paged_adamw_8bit))
                }
                var rng = SeededGenerator(seed: 5)
                var trace: [Float] = []
                for s in 0..<3 {
                    let batch = Array(batches[(s * 128)..<((s + 1) * 128)])
                    if evaluate {
                        let first = Array(batches[0..<64])
                        trace.append(Float(try engine.loss(inputIds: first, labels: first,
                                                           positions: packed ? Array(positions[0..<64]) : nil,
                                                           batch: 2, tokens: 32).loss))
                    }
                    let out = try engine.accumulateGradients(inputIds: batch, labels: batch,
                                                             positions: packed ? positions : nil, batch: 4, tokens: 32,
                                                             rng: &rng, checkpointing: checkpointing,
                                                             gradientScale: 1 / 124)
                    trace.append(Float(out.loss))
                    try engine.applyOptimizer(lr: 1e-3, gradientScale: 1)
                }
                for (_, w) in try engine.adapterWeights().sorted(by: { $0.key < $1.key }) { trace += w.a + w.b }
                results.append(trace)
            }
            c.equal("GPU checkpointing (dropout 0.1): losses and adapters after 3 steps", results[1].map { $0.bitPattern }, results[0].map { $0.bitPattern })
            c.equal("GPU evaluation between steps: losses and adapters after 3 steps",
                    results[2].enumerated().filter { $0.offset % 2 == 1 || $0.offset >= 6 }
                        .map { $0.element.bitPattern },
                    results[0].map { $0.bitPattern })
            c.close("GPU fp32 follows the CPU (dropout 0.1, checkpointing): losses and adapters after 3 steps",
                    results[1], results[4], tolerance: 1e-5)
            c.close("GPU bf16 follows the CPU (dropout 0.1, checkpointing): losses and adapters after 3 steps",
                    results[3], results[4], tolerance: 2e-2)
            c.close("GPU fp32 follows the CPU, packed rows (dropout 0.1, checkpointing, evaluating): 3 steps",
                    results[5], results[7], tolerance: 1e-5)
            c.close("GPU bf16 follows the CPU, packed rows (dropout 0.1, checkpointing): losses and adapters",
                    results[6], results[7].enumerated().filter { $0.offset % 2 == 1 || $0.offset >= 6 }.map(\.element),
                    tolerance: 2e-2)
            c.equal("packing changes the first loss (attention kept within documents)",
                    [abs(results[7][1] - results[4][0]) > 1e-4], [true])
        }

        // bf16 compute: the autocast forward of the Hugging Face stack.
        let extra = try SafeTensorsFile(path: golden + "/extra.safetensors")
        let bf16Ids = try extra.tensor(named: "bf16.input_ids").integers()
        let bf16 = try loadTiny(.bf16)
        let logits = try bf16.logits(inputIds: bf16Ids, batch: 2, tokens: 24)
        c.close("tiny-llama bf16 logits vs transformers autocast", logits, try extra.tensor(named: "bf16.logits").floats(), tolerance: 2e-2)
        try generation(&c)
    }
}
