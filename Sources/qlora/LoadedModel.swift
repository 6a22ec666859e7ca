import Foundation
import Llama
import ModelFiles
import Quantization

/// A model with what came with it: where it was loaded from (folder or GGUF file).
struct LoadedModel {
    let model: LlamaModel
    let path: String

    /// Loads a Hugging Face folder or a bitsandbytes 4-bit checkpoint folder.
    static func load(path: String, quantType: QuantType, doubleQuant: Bool, compute: ComputeDType, lora: LoRAConfig,
                     seed: UInt64) throws -> LoadedModel {
        guard FileSystem.isDirectory(path) else {
            throw ModelFileError.cannotOpen(path: path, reason: "not a model folder (GGUF files are read once the GGUF reader lands)")
        }
        let model = try LlamaModel.load(directory: path, quantType: quantType, doubleQuant: doubleQuant, compute: compute,
                                        lora: lora, seed: seed)
        return LoadedModel(model: model, path: path)
    }
}
