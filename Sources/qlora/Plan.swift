import ArgumentParser
import CUDABackend
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Training

/// `qlora plan`: the peak GPU memory of a training step, before anything runs (`MemoryPlan`: the step's own code
/// on a virtual device that keeps the memory pool's books and computes nothing), broken down by what the bytes hold
/// at the peak.
struct Plan: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Predict the peak GPU memory of training (the step run on a virtual GPU that only counts memory).")

    @OptionGroup var step: StepShapeOptions
    @Option(help: "Optimizer: adamw, adamw_8bit, paged_adamw_8bit or paged_adamw_32bit.")
    var optim: OptimizerKind = TrainingConfig().optimizer   // train's default
    @Option(help: "Compare with this GPU's memory (GiB), e.g. 8, 24, 80.") var gpuMemory: Double?
    @Flag(help: "Print one JSON object instead of the table.") var json = false

    func validate() throws {
        // A size to compare with: -1, 0 or nan used to print "does not fit on a nan-GiB GPU".
        if let gpuMemory, !(gpuMemory.isFinite && gpuMemory > 0) {
            throw ValidationError("--gpu-memory is \(gpuMemory): must be a finite number of GiB above 0")
        }
    }

    func run() throws {
        if let dropout = step.loraDropoutOption {
            // The GPU step draws its dropout masks from seeds as it goes: they take no memory.
            FileHandle.standardError.write(Data(("warning: --lora-dropout \(dropout) has no effect on the plan (the "
                                                 + "GPU step's dropout masks take no memory)\n").utf8))
        }
        let (cfg, lora, _) = try step.resolve()
        if step.model != nil {
            FileHandle.standardError.write(("plan: the model's shape, in NF4 with double quantization "
                                            + "(as train quantizes it)\n").data(using: .utf8)!)
        }
        let plan = try MemoryPlan(config: cfg, lora: lora, batch: step.batch, tokens: step.seq,
                                  dtype: step.gpuDType, checkpointing: !step.noCkpt,
                                  offloadCheckpoints: step.offloadCheckpoints, optimizer: optim)
        func gib(_ b: Int) -> Double { Double(b) / 1073741824 }
        func rounded(_ b: Int) -> JSONValue { .double((gib(b) * 1000).rounded() / 1000) }
        let rows = plan.breakdown
        let offload = !step.noCkpt && (step.offloadCheckpoints ?? true)
        if json {
            var fields: [(String, JSONValue)] = [
                ("shape", .string(step.source)), ("targets", .string(step.targets)),
                ("batch", .int(step.batch)), ("seq", .int(step.seq)), ("grad_ckpt", .bool(!step.noCkpt)),
                ("offload_checkpoints", .bool(offload)), ("compute_dtype", .string(step.gpuComputeDType.rawValue)),
                ("predicted_peak_alloc_gib", rounded(plan.peakAllocated)),
                ("predicted_reserved_gib", rounded(plan.reserved)),
                ("pinned_host_gib", rounded(plan.pinnedHost)),
            ]
            let breakdown: [(String, JSONValue)] = rows.map { ($0.tag, rounded($0.bytes)) }
            fields.append(("at_peak_gib", .object(breakdown)))
            print(JSONValue.object(fields).pythonText())
            return
        }
        print("plan: \(step.source), LoRA r \(lora.r) "
              + "on \(lora.resolvedTargets.joined(separator: ",")), "
              + "batch \(step.batch) × \(step.seq), \(step.gpuComputeDType.rawValue), \(optim.rawValue), "
              + (step.noCkpt ? "no checkpointing"
                 : "gradient checkpointing, checkpoints \(offload ? "in pinned host memory" : "on the GPU")"))
        print("| at the peak | GiB |\n| --- | ---: |")
        for (tag, bytes) in rows { print(String(format: "| %@ | %.3f |", tag, gib(bytes))) }
        print(String(format: "| **peak allocated** | **%.3f** |", gib(plan.peakAllocated)))
        print(String(format: "| reserved by the pool (blocks cached by size) | %.3f |", gib(plan.reserved)))
        print(String(format: "| pinned host memory (offloaded checkpoints) | %.3f |", gib(plan.pinnedHost)))
        if let gpuMemory {
            let fits = gib(plan.reserved) + 0.5 <= gpuMemory   // ~0.5 GiB for the CUDA context and libraries
            print(fits ? "fits on a \(gpuMemory)-GiB GPU"
                  : "does not fit on a \(gpuMemory)-GiB GPU: try a smaller batch or sequence, "
                  + "gradient checkpointing, or fewer LoRA targets")
        }
    }
}
