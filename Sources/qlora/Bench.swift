import ArgumentParser
import CPUBackend
import CUDABackend
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training

/// `qlora bench`: training throughput on a random-weight model of a named shape (or on a real checkpoint through the
/// real loading path, `--model`), as one JSON line with the fields of `../shared/bench/hf_baseline.py`, so the two
/// compare line by line.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmark QLoRA training steps on a random-weight model (tokens/s, peak memory), as one JSON line.")

    @OptionGroup var step: StepShapeOptions
    @Option(name: .customLong("steps"), help: ArgumentHelp("Timed steps (default \(Self.defaultSteps))."))
    var stepsOption: Int?
    @Option(name: .customLong("warmup"),
            help: ArgumentHelp("Untimed steps before them (default \(Self.defaultWarmup))."))
    var warmupOption: Int?
    @Option(help: ArgumentHelp("Device: \(DeviceChoice.help).")) var device: DeviceChoice = .cpu
    @Flag(help: ArgumentHelp("After the timed steps, one more step timed by CUDA events around every kernel and "
                             + "product (the host never waits): a table of where the GPU time goes, its idle time "
                             + "included (stderr)."))
    var profile = false
    @OptionGroup var parallel: DataParallelOptions
    @Option(help: ArgumentHelp("Time generation instead of training: N new tokens (greedy) after a prompt of " +
                               "--max-seq-length random tokens, for --batch-size prompts decoded together.",
                               valueName: "N"))
    var generate: Int?

    static let defaultSteps = 10, defaultWarmup = 3
    var steps: Int { stepsOption ?? Self.defaultSteps }
    var warmup: Int { warmupOption ?? Self.defaultWarmup }

    func validate() throws {
        // A setting that would change nothing is refused, so a benchmark never measures other than it says.
        if generate != nil {
            let unused = [("--steps", stepsOption != nil), ("--warmup", warmupOption != nil), ("--profile", profile),
                          ("--no-ckpt", step.noCkpt), ("--offload-checkpoints", step.offloadCheckpoints != nil),
                          ("--lora-dropout", step.loraDropoutOption != nil)].filter(\.1).map(\.0)
            if !unused.isEmpty {
                throw ValidationError("\(unused.joined(separator: ", ")) \(unused.count == 1 ? "has" : "have") no "
                                      + "effect with --generate (it times generation, not training steps)")
            }
        }
        if !device.isGPU && parallel.devices == nil && DataParallelOptions.worker == nil {
            if profile { throw ValidationError("--profile times GPU kernels: it needs --device cuda (or --devices)") }
            if step.offloadCheckpoints != nil {
                throw ValidationError("--offload-checkpoints has no effect on the CPU (checkpoints stay in host "
                                      + "memory there): leave it out, or use --device cuda")
            }
        }
        if device.isGPU && parallel.devices != nil {
            throw ValidationError("--device \(device) has no effect with --devices (each worker takes its own "
                                  + "GPU): leave one of them out")
        }
        // 2^63 steps used to run until killed (a hang to a fuzzer); a benchmark needs a few dozen.
        guard (1...100_000).contains(steps) else {
            throw ValidationError("--steps is \(steps): must be from 1 to 100000")
        }
        guard (0...100_000).contains(warmup) else {
            throw ValidationError("--warmup is \(warmup): must be from 0 to 100000")
        }
        if let generate, generate < 1 { throw ValidationError("--generate must be at least 1 (new tokens)") }
    }

    func run() throws {
        setvbuf(stdout, nil, _IOLBF, 0)   // lines reach a pipe or file as they are printed
        if parallel.isLauncher { try parallel.launchWorkers() }
        let worker = try DataParallelOptions.validatedWorker()
        DataParallelOptions.quietUnlessRankZero()
        let (cfg, lora, weights) = try step.resolve()
        if let generate {
            guard worker == nil && parallel.devices == nil else {
                throw ValidationError("--generate runs on one device: not with --devices")
            }
            return try timeGeneration(cfg, lora: lora, weights: weights, newTokens: generate)
        }
        let (batch, seq, noCkpt, computeDtype, loraDropout, targets) =
            (step.batch, step.seq, step.noCkpt, step.gpuComputeDType, step.loraDropout, step.targets)
        var started = Date()
        var hostBaseline = HostMemory.residentBytes()
        let engine: TrainingEngine
        let counts: (trainable: Int, all: Int)
        var gpu: CUDADevice? = nil
        var group: NCCLGroup? = nil
        if device.isGPU || worker != nil {
            var communicator: NCCLCommunicator? = nil
            let d: CUDADevice
            if let worker { (d, communicator) = try DataParallelOptions.join(worker); group = communicator.map(NCCLGroup.init) }
            else { d = try device.open()! }
            gpu = d
            let dtype = step.gpuDType
            started = Date(); hostBaseline = HostMemory.residentBytes()
            let model = try weights.map {
                try CUDALlama(weights: $0, lora: lora, adapters: LoRAWeights.initial(config: cfg, lora: lora, seed: 1),
                              device: d, dtype: dtype)
            } ?? CUDALlama(randomConfig: cfg, lora: lora, device: d, dtype: dtype)
            counts = model.parameterCounts
            engine = try CUDATrainingEngine(model: model, optimizer: try CUDAAdamW(kind: .paged_adamw_8bit,
                                                                                   settings: AdamWSettings(), device: d),
                                            communicator: communicator)
            try d.synchronize()
            FileHandle.standardError.write("bench on \(d.description)\n".data(using: .utf8)!)
        } else {
            try step.checkFitsHostMemory(cfg)
            let compute = step.cpuComputeDType
            let model = try weights.map { try LlamaModel(weights: $0, compute: compute, lora: lora, seed: 1) }
                ?? Self.randomCPUModel(cfg, compute: compute, lora: lora)
            counts = model.parameterCounts
            engine = CPUTrainingEngine(model: model, optimizer: AdamW(kind: .paged_adamw_8bit))
        }
        let loadSeconds = Date().timeIntervalSince(started)
        let hostPeak = HostMemory.peakResidentBytes()
        let world = group?.worldSize ?? 1
        var rng = SeededGenerator(seed: 1 + UInt64(group?.rank ?? 0))   // each rank its own random tokens
        var lastLoss = 0.0
        func trainStep() throws {
            let ids = (0..<(batch * seq)).map { _ in Int(rng.next() % UInt64(cfg.vocabSize)) }
            let count = batch * (seq - 1) * world
            let r = try engine.accumulateGradients(inputIds: ids, labels: ids, batch: batch, tokens: seq, rng: &rng,
                                                   checkpointing: !noCkpt, gradientScale: 1 / Float(count))
            try engine.allReduceGradients()
            try engine.applyOptimizer(lr: 2e-4, gradientScale: 1)
            lastLoss = r.loss
        }
        for _ in 0..<warmup { try trainStep() }
        gpu?.resetPeak()
        let t0 = Date()
        for _ in 0..<steps { try trainStep() }
        try gpu?.synchronize()
        let seconds = Date().timeIntervalSince(t0)
        let finalLoss = try group.map { try $0.sum([lastLoss])[0] / Double(world) } ?? lastLoss   // the ranks' mean
        if profile, let gpu {
            try gpu.synchronize()
            let started = Date()
            try gpu.startProfile()
            try trainStep()
            let table = try gpu.profileTable()
            FileHandle.standardError.write(("profile of one step on \(gpu.name), \(step.source) \(targets) "
                + String(format: "(host wall time %.4f s):\n", Date().timeIntervalSince(started))
                + table).data(using: .utf8)!)
        }
        let peak = gpu.map { Double($0.peakAllocatedBytes) } ?? Double(HostMemory.peakResidentBytes())
        let reserved = gpu.map { Double($0.reservedBytes) } ?? peak
        func r(_ x: Double, _ digits: Int) -> Double { (x * Foundation.pow(10, Double(digits))).rounded() / Foundation.pow(10, Double(digits)) }
        let line: [(String, JSONValue)] = [
            ("system", .string("qlora-swift-\(gpu != nil ? "cuda" : "cpu")")),
            ("shape", .string(step.source)),
            ("targets", .string(targets)),
            ("batch", .int(batch)), ("seq", .int(seq)), ("grad_ckpt", .bool(!noCkpt)), ("steps", .int(steps)),
            ("tokens_per_s", .double(r(Double(batch) * Double(seq) * Double(steps) * Double(world) / seconds, 1))),
            ("step_s", .double(r(seconds / Double(steps), 4))), ("peak_alloc_gib", .double(r(peak / 1073741824, 3))),
            ("peak_reserved_gib", .double(r(reserved / 1073741824, 3))), ("load_s", .double(r(loadSeconds, 1))),
            ("trainable", .int(counts.trainable)), ("all_params", .int(counts.all)), ("final_loss", .double(r(finalLoss, 4))),
            ("compute_dtype", .string(gpu != nil ? computeDtype.rawValue : step.cpuComputeDType.rawValue)),
            ("lora_dropout", .double(loraDropout)),
            ("devices", .int(world)),
            ("cpu_gemm", .string(gpu != nil ? "" : BLAS.inUse)),
            ("offload_checkpoints", .bool(gpu != nil && !noCkpt && (step.offloadCheckpoints ?? true))),
            ("host_rss_before_load_gb", .double(r(Double(hostBaseline) / 1e9, 3))),
            ("host_rss_peak_after_load_gb", .double(r(Double(hostPeak) / 1e9, 3))),
        ]
        print(JSONValue.object(line).pythonText())
    }

    /// Times `newTokens` of greedy generation after random prompts (batch × seq tokens): the GPU decodes the prompts
    /// together with its key/value cache, the CPU one after another. One JSON line: prompt (prefill) time, then new
    /// tokens per second over the decoding.
    func timeGeneration(_ cfg: LlamaConfig, lora: LoRAConfig, weights: LlamaWeights?, newTokens: Int) throws {
        var rng = SeededGenerator(seed: 1)
        let (batch, seq) = (step.batch, step.seq)
        guard newTokens <= cfg.maxPositionEmbeddings - seq else {
            throw ValidationError("--max-seq-length \(seq) + --generate \(newTokens) is past the model's context " +
                                  "(\(cfg.maxPositionEmbeddings))")
        }
        let prompts = (0..<batch).map { _ in (0..<seq).map { _ in Int(rng.next() % UInt64(cfg.vocabSize)) } }
        var options = SamplingOptions()
        var initial = lora
        initial.dropout = 0
        let run: (SamplingOptions) throws -> [[Int]]
        var gpu: CUDADevice? = nil
        if device.isGPU {
            let d = try device.open()!
            gpu = d
            let adapters = LoRAWeights.initial(config: cfg, lora: initial, seed: 1)
            let model = try weights.map {
                try CUDALlama(weights: $0, lora: initial, adapters: adapters, device: d, dtype: step.gpuDType)
            } ?? CUDALlama(randomConfig: cfg, lora: initial, device: d, dtype: step.gpuDType)
            run = { try model.generate(prompts: prompts, options: $0) }
        } else {
            try HostMemory.checkModelFits(cfg, what: "the model (\(step.source))")
            let model = try weights.map {
                try LlamaModel(weights: $0, compute: step.cpuComputeDType, lora: initial, seed: 1)
            } ?? Self.randomCPUModel(cfg, compute: step.cpuComputeDType, lora: initial)
            run = { o in prompts.map { model.generate(prompt: $0, options: o) } }
        }
        // One token (the prompts' pass and the first pick), then the whole generation, each the faster of two runs
        // after a warm-up of the whole (kernels compiled, memory pools filled): decoding is the difference.
        func fastest(_ tokens: Int) throws -> (seconds: Double, out: [[Int]]) {
            options.maxNewTokens = tokens
            var best = (seconds: Double.infinity, out: [[Int]]())
            for _ in 0..<2 {
                let t0 = Date()
                let out = try run(options)
                let seconds = Date().timeIntervalSince(t0)
                if seconds < best.seconds { best = (seconds, out) }
            }
            return best
        }
        options.maxNewTokens = newTokens
        _ = try run(options)
        let prefill = try fastest(1).seconds
        let (total, out) = try fastest(newTokens)
        let decoded = out.map { $0.count - 1 }.reduce(0, +)
        func r(_ x: Double, _ digits: Int) -> Double {
            (x * Foundation.pow(10, Double(digits))).rounded() / Foundation.pow(10, Double(digits))
        }
        let line: [(String, JSONValue)] = [
            ("system", .string("qlora-swift-\(gpu != nil ? "cuda" : "cpu")")),
            ("shape", .string(step.source)), ("layers", .int(cfg.layerCount)),
            ("batch", .int(batch)), ("prompt_tokens", .int(seq)), ("new_tokens", .int(newTokens)),
            ("prefill_s", .double(r(prefill, 4))),
            // null where the timings are too noisy to take one from the other
            ("decode_tokens_per_s", total > prefill ? .double(r(Double(decoded) / (total - prefill), 1)) : .null),
            ("tokens_per_s", .double(r(Double(out.map(\.count).reduce(0, +)) / total, 1))),
            ("total_s", .double(r(total, 3))),
            ("compute_dtype", .string(gpu != nil ? step.gpuComputeDType.rawValue : step.cpuComputeDType.rawValue)),
            ("peak_alloc_gib", .double(r(Double(gpu?.peakAllocatedBytes ?? HostMemory.peakResidentBytes())
                                         / 1073741824, 3))),
        ]
        print(JSONValue.object(line).pythonText())
    }

    /// A random-weight CPU model: weights uniform in ±0.04 (bf16), quantized to NF4 with double quantization,
    /// dequantized for the products as `LlamaModel(weights:compute:)` does.
    static func randomCPUModel(_ config: LlamaConfig, compute: ComputeDType, lora: LoRAConfig) throws -> LlamaModel {
        var rng = SeededGenerator(seed: 7)
        func random(_ n: Int, _ scale: Float) -> [Float] { (0..<n).map { _ in (rng.nextUniform() * 2 - 1) * scale } }
        let c = config.hiddenSize
        var built: [DecoderLayer] = []
        for _ in 0..<config.layerCount {
            var projections: [String: FrozenLinear] = [:]
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let w = Tensor(random(out * inF, 0.04), shape: [out, inF], dtype: .bf16)
                let q = try Quantized4BitTensor(quantizing: w, type: .nf4, doubleQuant: true)
                projections[name] = FrozenLinear(outFeatures: out, inFeatures: inF, quantized: q,
                                                 weight: compute.cpuWeight(q.dequantizedFloat32()), bias: nil)
            }
            built.append(DecoderLayer(inputNorm: [Float](repeating: 1, count: c), postAttentionNorm: [Float](repeating: 1, count: c),
                                      projections: projections))
        }
        let embedding = random(config.vocabSize * c, 0.02)
        let lmHead = config.tieWordEmbeddings ? embedding : random(config.vocabSize * c, 0.02)
        return LlamaModel(config: config, embedding: embedding, layers: built, finalNorm: [Float](repeating: 1, count: c),
                          lmHead: lmHead, lora: lora, seed: 1, compute: compute)
    }

}
