import ArgumentParser
import CUDABackend
import CUDATraining
import Foundation
import Llama
import Quantization
import Training

/// Options every command that loads a model shares, mapped into the loader's settings in one place. Each may also
/// come from a recipe file (`train --config`); a flag wins.
struct ModelOptions: ParsableArguments {
    @Option(help: "Model: a Hugging Face folder, a bitsandbytes 4-bit checkpoint, or a GGUF file.")
    var model: String?

    @Option(help: "4-bit data type used when quantizing a plain model: nf4 or fp4 (default nf4).")
    var quantType: QuantType?

    @Option(help: "Double quantization of the block scales: true or false (default true).")
    var doubleQuant: Bool?

    @Option(help: "Compute dtype: fp32 or bf16 (default fp32 on the CPU, where bf16 rounds the weights; bf16 on the GPU).")
    var computeDtype: ComputeDType?

    @Option(help: "Device: cpu, or cuda (cuda:N for GPU N; needs an NVIDIA driver and CUDA 12/13 libraries).")
    var device: String = "cpu"

    func validate() throws {
        guard device == "cpu" || device == "cuda" || (device.hasPrefix("cuda:") && Int(device.dropFirst(5)) != nil) else {
            throw ValidationError("--device \(device): use cpu, cuda or cuda:N")
        }
    }

    /// True for --device cuda[:N].
    var usesGPU: Bool { device.hasPrefix("cuda") }

    /// The GPU of --device cuda[:N]; a clear error where there is none.
    func openGPU() throws -> CUDADevice {
        let ordinal = device.hasPrefix("cuda:") ? Int(device.dropFirst(5))! : 0
        let gpu = try CUDADevice(ordinal: ordinal)
        FileHandle.standardError.write("using \(gpu.description)\n".data(using: .utf8)!)
        return gpu
    }

    /// The activation dtype on the GPU: --compute-dtype, else the recipe's bf16 flag, else bf16.
    func gpuDType(_ recipe: TrainingRecipe = TrainingRecipe()) throws -> GPUDType {
        let compute = try computeDtype ?? (recipe.bool("bf16") == false ? .fp32 : .bf16)
        return compute == .bf16 ? .bf16 : .f32
    }

    /// The engine that trains (or evaluates) `model` on this device: the CPU reference, or the model copied to the GPU.
    /// A data-parallel worker passes its GPU and communicator (from `DataParallelOptions.join`).
    func makeEngine(_ model: LlamaModel, optimizer: AdamW, recipe: TrainingRecipe = TrainingRecipe(),
                    worker: (CUDADevice, NCCLCommunicator)? = nil) throws -> TrainingEngine {
        guard usesGPU || worker != nil else { return CPUTrainingEngine(model: model, optimizer: optimizer) }
        let gpu = try worker?.0 ?? openGPU()
        let gpuModel = try CUDALlama(model: model, device: gpu, dtype: try gpuDType(recipe))
        return try CUDATrainingEngine(model: gpuModel, optimizer: try CUDAAdamW(kind: optimizer.kind, settings: optimizer.settings, device: gpu),
                                      communicator: worker?.1)
    }

    /// The model path, from the flag or the recipe.
    func modelPath(_ recipe: TrainingRecipe = TrainingRecipe()) throws -> String {
        guard let path = try model ?? recipe.string("model") else { throw ValidationError("missing --model (or \"model_name_or_path\" in the recipe)") }
        return path
    }

    /// Loads the model with fresh (or no) adapters.
    func load(lora: LoRAConfig = LoRAConfig(), seed: UInt64 = 0, recipe: TrainingRecipe = TrainingRecipe()) throws -> LoadedModel {
        let quant = try quantType ?? recipe.string("bnb_4bit_quant_type").map { name -> QuantType in
            guard let q = QuantType(rawValue: name) else { throw ValidationError("bnb_4bit_quant_type \"\(name)\": use nf4 or fp4") }
            return q
        } ?? .nf4
        let dq = try doubleQuant ?? recipe.bool("bnb_4bit_use_double_quant") ?? true
        let compute = try computeDtype ?? (recipe.bool("bf16") == true ? .bf16 : .fp32)
        return try LoadedModel.load(path: modelPath(recipe), quantType: quant, doubleQuant: dq, compute: compute,
                                    lora: lora, seed: seed)
    }
}

extension ComputeDType: ExpressibleByArgument {}
