import ArgumentParser
import CUDABackend
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Training

/// `qlora plan`: the peak GPU memory of a training step, before anything runs. The step's own code runs on a
/// virtual device (`CUDADevice(planningFor:)`) that keeps the memory pool's books and computes nothing, so the
/// prediction is the allocation sequence of a real step, broken down by what the bytes hold at the peak.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict the peak GPU memory of training (the step run on a virtual GPU that only counts memory).")

    @OptionGroup var step: StepShapeOptions
    @Option(help: "Optimizer: adamw, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit.") var optim: OptimizerKind = .paged_adamw_8bit
    @Option(help: "Compare with this GPU's memory (GiB), e.g. 8, 24, 80.") var gpuMemory: Double?
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func run() throws {
        let (cfg, lora, _) = try step.resolve()
        if step.model != nil {
            FileHandle.standardError.write("plan: the model's shape, in NF4 with double quantization (as train quantizes it)\n".data(using: .utf8)!)
        }
        let device = CUDADevice(planningFor: "virtual GPU")
        let model = try CUDALlama(randomConfig: cfg, lora: lora, device: device, dtype: step.computeDtype == "fp32" ? .f32 : .bf16)
        model.offloadCheckpoints = step.offloadCheckpoints
        let engine = try CUDATrainingEngine(model: model, optimizer: try CUDAAdamW(kind: optim, settings: AdamWSettings(), device: device))
        let ids = [Int](repeating: 1, count: step.batch * step.seq)
        var rng = SeededGenerator(seed: 1)
        for s in 0..<2 {   // the first step makes what is kept from step to step (optimizer state, RoPE tables)
            if s == 1 { device.resetPeak() }
            _ = try engine.accumulateGradients(inputIds: ids, labels: ids, batch: step.batch, tokens: step.seq, rng: &rng,
                                               checkpointing: !step.noCkpt, gradientScale: 1)
            try engine.applyOptimizer(lr: 1e-4, gradientScale: 1)
        }
        func gib(_ b: Int) -> Double { Double(b) / 1073741824 }
        func rounded(_ b: Int) -> JSONValue { .double((gib(b) * 1000).rounded() / 1000) }
        let rows = device.peakBreakdown.filter { $0.value > 0 }.sorted { $0.value > $1.value }
        let offload = !step.noCkpt && (step.offloadCheckpoints ?? true)
        if json {
            var fields: [(String, JSONValue)] = [
                ("shape", .string(step.model ?? step.config ?? step.shape)), ("targets", .string(step.targets)),
                ("batch", .int(step.batch)), ("seq", .int(step.seq)), ("grad_ckpt", .bool(!step.noCkpt)),
                ("offload_checkpoints", .bool(offload)), ("compute_dtype", .string(step.computeDtype)),
                ("predicted_peak_alloc_gib", rounded(device.peakAllocatedBytes)),
                ("predicted_reserved_gib", rounded(device.reservedBytes)),
                ("pinned_host_gib", rounded(device.pinnedHostBytes)),
            ]
            let breakdown: [(String, JSONValue)] = rows.map { ($0.key, rounded($0.value)) }
            fields.append(("at_peak_gib", .object(breakdown)))
            print(JSONValue.object(fields).pythonText())
            return
        }
        print("plan: \(step.model ?? step.config ?? step.shape), LoRA r \(lora.r) on \(lora.resolvedTargets.joined(separator: ",")), "
              + "batch \(step.batch) × \(step.seq), \(step.computeDtype), \(optim.rawValue), "
              + (step.noCkpt ? "no checkpointing" : "gradient checkpointing, checkpoints \(offload ? "in pinned host memory" : "on the GPU")"))
        print("| at the peak | GiB |\n| --- | ---: |")
        for (tag, bytes) in rows { print(String(format: "| %@ | %.3f |", tag, gib(bytes))) }
        print(String(format: "| **peak allocated** | **%.3f** |", gib(device.peakAllocatedBytes)))
        print(String(format: "| reserved by the pool (blocks cached by size) | %.3f |", gib(device.reservedBytes)))
        print(String(format: "| pinned host memory (offloaded checkpoints) | %.3f |", gib(device.pinnedHostBytes)))
        if let gpuMemory {
            let fits = gib(device.reservedBytes) + 0.5 <= gpuMemory   // ~0.5 GiB for the CUDA context and libraries
            print(fits ? "fits on a \(gpuMemory)-GiB GPU" : "does not fit on a \(gpuMemory)-GiB GPU: try a smaller batch or sequence, "
                  + "gradient checkpointing, or fewer LoRA targets")
        }
    }
}
