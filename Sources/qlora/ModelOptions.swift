import ArgumentParser
import Llama
import Quantization

/// Options every command that loads a model shares, mapped into the loader's settings in one place.
struct ModelOptions: ParsableArguments {
    @Option(help: "Model folder (Hugging Face safetensors, or a bitsandbytes 4-bit checkpoint).")
    var model: String

    @Option(help: "4-bit data type used when quantizing a plain model: nf4 or fp4.")
    var quantType: QuantType = .nf4

    @Option(help: "Double quantization of the block scales: true or false.")
    var doubleQuant: Bool = true

    @Option(help: "Compute dtype of the frozen base on the CPU: fp32 or bf16 (weights rounded to bf16).")
    var computeDtype: ComputeDTypeName = .fp32

    @Option(help: "Device: cpu (cuda comes with the GPU backend).")
    var device: String = "cpu"

    enum ComputeDTypeName: String, ExpressibleByArgument { case fp32, bf16 }

    func validate() throws {
        guard device == "cpu" else {
            throw ValidationError("--device \(device) is not available in this build: only cpu (the CUDA backend is not built yet)")
        }
    }

    /// Loads the model with fresh (or no) adapters.
    func load(lora: LoRAConfig = LoRAConfig(), seed: UInt64 = 0) throws -> LlamaModel {
        try LlamaModel.load(directory: model, quantType: quantType, doubleQuant: doubleQuant,
                            compute: computeDtype == .fp32 ? .fp32 : .bf16, lora: lora, seed: seed)
    }
}
