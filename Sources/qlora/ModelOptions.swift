import ArgumentParser
import CUDABackend
import CUDATraining
import Foundation
import Llama
import ModelFiles
import Quantization
import Training

/// The model file and how a plain one is quantized: what every command that reads a model takes (`info` takes
/// these alone, as it computes nothing).
struct ModelFileOptions: ParsableArguments {
    @Option(help: "Model: a Hugging Face folder, a bitsandbytes 4-bit checkpoint, or a GGUF file.")
    var model: String?

    @Option(help: ArgumentHelp("4-bit data type used when quantizing a plain model: nf4 or fp4 (default "
                               + "\(QuantizationSettings().type.rawValue))."))
    var quantType: QuantType?

    @Option(help: ArgumentHelp("Double quantization of the block scales: true or false (default "
                               + "\(QuantizationSettings().doubleQuant))."))
    var doubleQuant: Bool?
}

/// Options every command that loads a model and computes with it shares, mapped into the loader's settings in one
/// place. Each may also come from a recipe file (`train --config`); a flag wins.
struct ModelOptions: ParsableArguments {
    @OptionGroup var file: ModelFileOptions
    var model: String? { file.model }
    var quantType: QuantType? { file.quantType }
    var doubleQuant: Bool? { file.doubleQuant }

    @Option(help: ArgumentHelp(Self.computeDTypeHelp)) var computeDtype: ComputeDType?

    /// --compute-dtype's help, the same for every command that takes it (train, eval, bench, plan, ...).
    static let computeDTypeHelp = "Compute dtype: fp32 or bf16 (default fp32 on the CPU, where bf16 multiplies the "
        + "frozen base's products in bf16 with float32 sums; bf16 on the GPU)."


    @Option(help: ArgumentHelp("Device: \(DeviceChoice.help)."))
    var device: DeviceChoice = .cpu

    /// True for --device cuda[:N].
    var usesGPU: Bool { device.isGPU }

    /// The GPU of --device cuda[:N] (GPU 0 when the device is cpu); a clear error where there is none.
    func openGPU() throws -> CUDADevice {
        let gpu = try (device.isGPU ? device : .cuda(0)).open()!
        FileHandle.standardError.write("using \(gpu.description)\n".data(using: .utf8)!)
        return gpu
    }

    /// The activation dtype on the GPU: --compute-dtype, else the recipe's bf16 flag, else bf16.
    func gpuDType(_ recipe: TrainingRecipe = TrainingRecipe()) throws -> GPUDType {
        let compute = try computeDtype ?? (recipe.bool("bf16") == false ? .fp32 : .bf16)
        return compute == .bf16 ? .bf16 : .f32
    }

    /// The engine that trains (or evaluates) `loaded` on this device: the CPU reference, or the model built on the
    /// GPU straight from the file. A data-parallel worker passes its GPU and communicator (`DataParallelOptions.join`).
    func makeEngine(_ loaded: LoadedModel, optimizer: AdamW, recipe: TrainingRecipe = TrainingRecipe(),
                    worker: (CUDADevice, NCCLCommunicator)? = nil) throws -> TrainingEngine {
        guard usesGPU || worker != nil else {
            return CPUTrainingEngine(model: try cpuModel(loaded, recipe: recipe), optimizer: optimizer)
        }
        let gpu = try worker?.0 ?? openGPU()
        return try CUDATrainingEngine(model: try gpuModel(loaded, device: gpu, recipe: recipe),
                                      optimizer: try CUDAAdamW(kind: optimizer.kind, settings: optimizer.settings,
                                                               device: gpu),
                                      communicator: worker?.1)
    }

    /// The compute dtype on the CPU: --compute-dtype, else the recipe's bf16 flag, else fp32.
    func cpuDType(_ recipe: TrainingRecipe = TrainingRecipe()) throws -> ComputeDType {
        try computeDtype ?? (recipe.bool("bf16") == true ? .bf16 : .fp32)
    }

    /// The CPU model of `loaded`, with its adapters.
    func cpuModel(_ loaded: LoadedModel, recipe: TrainingRecipe = TrainingRecipe()) throws -> LlamaModel {
        let model = try LlamaModel(weights: loaded.weights, compute: try cpuDType(recipe), lora: loaded.lora)
        model.adapters = loaded.adapters
        return model
    }

    /// The GPU model of `loaded`, streamed from its file.
    func gpuModel(_ loaded: LoadedModel, device: CUDADevice,
                  recipe: TrainingRecipe = TrainingRecipe()) throws -> CUDALlama {
        try CUDALlama(weights: loaded.weights, lora: loaded.lora, adapters: loaded.adapters, device: device,
                      dtype: try gpuDType(recipe))
    }

    /// The model path, from the flag or the recipe.
    func modelPath(_ recipe: TrainingRecipe = TrainingRecipe()) throws -> String {
        guard let path = try model ?? recipe.string("model") else { throw ValidationError("missing --model (or \"model_name_or_path\" in the recipe)") }
        // An empty path was ": cannot open: no such model folder or GGUF file", naming nothing.
        guard !path.isEmpty else {
            throw ValidationError("--model (recipe model_name_or_path) is empty: name the model")
        }
        return path
    }

    /// Opens the model file and settles its adapters: those of the PEFT folder `adapter` (its own settings), else
    /// fresh ones for `lora` drawn from `seed`.
    func load(lora: LoRAConfig = LoRAConfig(), adapter: String? = nil, seed: UInt64 = 0,
              recipe: TrainingRecipe = TrainingRecipe()) throws -> LoadedModel {
        let quant = try quantType ?? recipe.string("bnb_4bit_quant_type").map { name -> QuantType in
            guard let q = QuantType(rawValue: name) else { throw ValidationError("bnb_4bit_quant_type \"\(name)\": use nf4 or fp4") }
            return q
        } ?? QuantizationSettings().type
        let dq = try doubleQuant ?? recipe.bool("bnb_4bit_use_double_quant") ?? QuantizationSettings().doubleQuant
        let path = try modelPath(recipe)
        let weights = try LlamaWeights.open(path: path,
                                            quantization: QuantizationSettings(type: quant, doubleQuant: dq))
        // The settings as given (flag or recipe key), with the name to say: nil where neither is given.
        let typeGiven = try quantType.map { ($0, "--quant-type") }
            ?? recipe.string("bnb_4bit_quant_type").map { _ in (quant, "recipe bnb_4bit_quant_type") }
        let doubleGiven = try doubleQuant.map { ($0, "--double-quant") }
            ?? recipe.bool("bnb_4bit_use_double_quant").map { ($0, "recipe bnb_4bit_use_double_quant") }
        printWarnings(try Self.quantizationWithoutEffect(weights, type: typeGiven, doubleQuant: doubleGiven))
        if FileSystem.isDirectory(path) { try Self.checkChatTemplateFile(folder: path) }
        if let adapter {
            let (adapterLoRA, adapters) = try PEFTAdapter.read(directory: adapter, config: weights.config)
            return LoadedModel(weights: weights, path: path, lora: adapterLoRA, adapters: adapters)
        }
        return LoadedModel(weights: weights, path: path, lora: lora,
                           adapters: LoRAWeights.initial(config: weights.config, lora: lora, seed: seed))
    }
}

extension ComputeDType: ExpressibleByArgument {}

extension ModelOptions {
    /// --quant-type and --double-quant (recipe bnb_4bit_quant_type, bnb_4bit_use_double_quant) say how weights
    /// stored in 16 or 32 bits are quantized; a checkpoint whose projections are stored in 4 bits already is used
    /// as it is. A setting given that differs from what the checkpoint holds would change nothing: it is said
    /// (returned as warnings), never dropped in silence.
    static func quantizationWithoutEffect(_ weights: LlamaWeights, type: (QuantType, String)?,
                                          doubleQuant: (Bool, String)?) throws -> [String] {
        guard type != nil || doubleQuant != nil, weights.config.layerCount > 0 else { return [] }
        let names = LlamaConfig.projectionNames
        let allStored = names.allSatisfy {
            BnB4BitCheckpoint.isQuantized(PEFTAdapter.modulePath(layer: 0, projection: $0) + ".weight",
                                          in: weights.source)
        }
        guard allStored, case .quantized(let stored) = try weights.projection(layer: 0, names[0]) else { return [] }
        let storedDouble: Bool
        if case .doubleQuantized = stored.scales { storedDouble = true } else { storedDouble = false }
        let held = "\(stored.quantType.rawValue)\(storedDouble ? " with" : " without") double quantization"
        var warnings: [String] = []
        if let (value, name) = type, value != stored.quantType {
            warnings.append("\(name) \(value.rawValue) has no effect: \(weights.location) is stored in 4 bits "
                            + "already (\(held)) and is used as it is")
        }
        if let (value, name) = doubleQuant, value != storedDouble {
            warnings.append("\(name) \(value) has no effect: \(weights.location) is stored in 4 bits already "
                            + "(\(held)) and is used as it is")
        }
        return warnings
    }

    /// A model folder's chat template (`ModelText.chatTemplateSource`), checked when the model is opened where the
    /// folder has a tokenizer to use it with: a broken tokenizer_config.json, or a chat_template.jinja that is not a
    /// regular file of UTF-8 text, is an error naming it before any work is done.
    static func checkChatTemplateFile(folder: String) throws {
        guard FileManager.default.fileExists(atPath: folder + "/tokenizer.json") else { return }
        _ = try ModelText.chatTemplateSource(folder: folder)
    }
}
