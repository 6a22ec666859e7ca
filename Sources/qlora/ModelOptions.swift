import ArgumentParser
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

    @Option(help: "Compute dtype of the frozen base on the CPU: fp32 or bf16 (weights rounded to bf16; default fp32).")
    var computeDtype: ComputeDType?

    @Option(help: "Device: cpu (cuda comes with the GPU backend).")
    var device: String = "cpu"

    func validate() throws {
        guard device == "cpu" else {
            throw ValidationError("--device \(device) is not available in this build: only cpu (the CUDA backend is not built yet)")
        }
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
