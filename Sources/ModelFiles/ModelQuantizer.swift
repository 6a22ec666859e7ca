import Foundation
import Quantization
import Tensors

/// Turns a Hugging Face model folder (F32/F16/BF16 safetensors) into a bitsandbytes 4-bit checkpoint folder.
public struct ModelQuantizer {
    /// NF4 or FP4.
    public var quantType: QuantType = .nf4
    /// Compress the per-block absmax values to 8 bits.
    public var doubleQuant: Bool = true
    /// Values per 4-bit block.
    public var blocksize: Int = 64
    /// The compute dtype recorded in `quantization_config` (what a loader should compute in).
    public var computeDType: DType = .bf16
    /// How one weight is quantized: on the CPU by default; the command line puts the GPU's quantizer here for
    /// --device cuda (both are bit-exact with bitsandbytes).
    public var quantizeWeight: (Tensor, QuantType, Int, Bool) throws -> Quantized4BitTensor = { tensor, type, blocksize, dq in
        try Quantized4BitTensor(quantizing: tensor, type: type, blocksize: blocksize, doubleQuant: dq)
    }

    /// Default settings: NF4, double quantization, blocksize 64, bf16 compute (the QLoRA recipe).
    public init() {}

    /// What `quantize` did.
    public struct Summary: Sendable {
        /// Number of weights quantized.
        public var quantizedCount: Int
        /// Number of tensors copied as they were.
        public var copiedCount: Int
        /// Bytes of the quantized weights before (in their dtype) and after (codes + scales).
        public var bytesBefore: Int
        public var bytesAfter: Int
    }

    /// Files of a model folder that are weights or config, which `quantize` writes itself rather than copies.
    public static func isWeightOrConfig(_ file: String) -> Bool {
        file == "config.json" || file.hasSuffix(".safetensors") || file.hasSuffix(".safetensors.index.json")
            || [".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt"].contains { file.hasSuffix($0) }
            || file.contains(".tmp-")
    }

    /// Quantizes the model in `modelDirectory` into `outputDirectory`: `model.safetensors` with every decoder-layer
    /// projection in 4 bits and all other tensors as they were, `config.json` with `quantization_config`, and the
    /// other files (tokenizer, generation config, templates) copied. Each file is written under a temporary name and
    /// renamed, so a failure leaves no half-written file. `progress(done, total, name)` is called after each tensor.
    @discardableResult
    public func quantize(modelDirectory: String, outputDirectory: String,
                         progress: (Int, Int, String) -> Void = { _, _, _ in }) throws -> Summary {
        guard Quantized4BitTensor.isSupported(blocksize: blocksize) else {
            throw QuantizationError.invalidBlocksize(blocksize)
        }
        let configPath = modelDirectory + "/config.json"
        var config: JSONValue
        do { config = try JSONValue(parsing: try FileSystem.readBytes(configPath)) } catch let e as JSONParseError {
            throw ModelFileError.invalidConfig(path: configPath, detail: "\(e)")
        }
        guard config.objectValue != nil else { throw ModelFileError.invalidConfig(path: configPath, detail: "not a JSON object") }
        if config["quantization_config"] != nil {
            throw ModelFileError.invalidConfig(path: configPath, detail: "the model is already quantized (it has a quantization_config)")
        }
        let archive = try SafeTensorsArchive(directory: modelDirectory)
        var outputs: [(name: String, tensor: Tensor)] = []
        var summary = Summary(quantizedCount: 0, copiedCount: 0, bytesBefore: 0, bytesAfter: 0)
        for (i, name) in archive.names.enumerated() {
            let tensor = try archive.tensor(named: name)
            if BnB4BitCheckpoint.isQuantizedLinearWeight(name, shape: tensor.shape) {
                guard tensor.dtype.isFloatingPoint else {
                    throw ModelFileError.invalidCheckpoint(path: modelDirectory, tensor: name,
                                                           detail: "is \(tensor.dtype.rawValue); expected F32, F16 or BF16 to quantize")
                }
                let q = try quantizeWeight(tensor, quantType, blocksize, doubleQuant)
                let parts = BnB4BitCheckpoint.tensors(storing: q, as: name)
                outputs += parts
                summary.quantizedCount += 1
                summary.bytesBefore += tensor.byteCount
                summary.bytesAfter += parts.reduce(0) { $0 + $1.tensor.byteCount }
            } else {
                outputs.append((name, tensor))
                summary.copiedCount += 1
            }
            progress(i + 1, archive.names.count, name)
        }
        config.set("quantization_config", BnB4BitCheckpoint.quantizationConfig(
            quantType: quantType, doubleQuant: doubleQuant, computeDType: computeDType))
        // Everything goes into a temporary folder beside `outputDirectory`, renamed into place once complete (as
        // merge does): a run stopped half way used to leave model.safetensors without config.json, or a model
        // without its tokenizer, where the next command took it for a model.
        let temporary = FileSystem.withoutTrailingSlashes(outputDirectory) + ".tmp-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        do {
            try FileSystem.createDirectory(temporary)
            try SafeTensorsWriter.write(outputs, to: temporary + "/model.safetensors")
            // transformers writes config.json with json.dumps(indent=2, sort_keys=True) and a final newline.
            try AtomicFile.write(text: config.pythonText(indent: 2, sortKeys: true) + "\n",
                                 to: temporary + "/config.json")
            var files = ["model.safetensors", "config.json"]
            for file in try FileSystem.contents(of: modelDirectory)
            where !Self.isWeightOrConfig(file) && FileSystem.isFile(modelDirectory + "/" + file) {
                try FileSystem.copyFile(from: modelDirectory + "/" + file, to: temporary + "/" + file)
                files.append(file)
            }
            // One rename onto a missing or empty folder; else (a link to a folder, say) file by file, none replaced.
            try FileSystem.installFolder(temporary, files: files, at: outputDirectory)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        return summary
    }
}
