import Foundation
import ModelFiles
import Quantization
import Tensors

/// How a plain (16/32-bit) base is quantized when it is loaded.
public struct QuantizationSettings: Equatable, Sendable {
    public var type: QuantType = .nf4
    public var doubleQuant = true
    public var blocksize = 64
    public init(type: QuantType = .nf4, doubleQuant: Bool = true, blocksize: Int = 64) {
        self.type = type; self.doubleQuant = doubleQuant; self.blocksize = blocksize
    }
}

/// A frozen projection's weight as the file holds it: already in bitsandbytes' 4-bit layout (a pre-quantized
/// checkpoint), or a dense (out, in) tensor that the device building the model quantizes with `settings`.
public enum ProjectionWeight {
    case quantized(Quantized4BitTensor)
    case dense(Tensor)
}

/// What a model file gives, read one tensor at a time, never all at once: the device that computes with the model
/// (`LlamaModel` on the CPU, `CUDALlama` on a GPU) builds itself from this, tensor by tensor, and can drop each
/// one's pages (`evictPages`) once it has its own copy. Every tensor is checked against `config` here, in one place.
public final class LlamaWeights: @unchecked Sendable {
    /// Architecture.
    public let config: LlamaConfig
    /// The tensors, by Hugging Face name.
    public let source: TensorSource
    /// How dense projections are quantized.
    public let quantization: QuantizationSettings

    public init(config: LlamaConfig, source: TensorSource,
                quantization: QuantizationSettings = QuantizationSettings()) {
        self.config = config; self.source = source; self.quantization = quantization
    }

    /// A Hugging Face folder (plain or bitsandbytes 4-bit safetensors, one file or shards) or a GGUF file.
    public static func open(path: String,
                            quantization: QuantizationSettings = QuantizationSettings()) throws -> LlamaWeights {
        let weights: LlamaWeights
        if FileSystem.isDirectory(path) {
            weights = LlamaWeights(config: try LlamaConfig(contentsOf: path),
                                   source: try SafeTensorsArchive(directory: path), quantization: quantization)
        } else {
            guard FileSystem.isFile(path) else {
                throw ModelFileError.cannotOpen(path: path, reason: "no such model folder or GGUF file")
            }
            let archive = try GGUFArchive(path: path)
            weights = LlamaWeights(config: try LlamaConfig(gguf: archive.file), source: archive,
                                   quantization: quantization)
        }
        try weights.checkLayerCount(path: path)
        return weights
    }

    /// Each layer has at least 9 tensors (2 norms, 7 projections): a config that claims more layers than the file
    /// holds tensors (num_hidden_layers 16777216 over tiny-llama's 21) is refused at once. Every name list built
    /// from the config (`checkComplete`, merge's and export's layouts, info's inventory) used to be built first,
    /// 150 million names: merge ran for minutes, export and quantize died failing an allocation. (Below this bound
    /// the lists cost at most a few names per tensor held, and the missing tensor is named as before.)
    func checkLayerCount(path: String) throws {
        let held = source.names.count
        guard config.layerCount <= held else {
            throw ModelFileError.invalidConfig(
                path: path, detail: "num_hidden_layers is \(config.layerCount), but the weights hold only \(held) "
                    + "tensors (each layer has 9 or more: 2 norms and 7 projections)")
        }
        // Fewer layers than the file holds: the model is computed without the rest, as transformers loads it (with
        // its warning of weights not used); said here too, where it went without a word.
        let layers = source.names.compactMap { name -> Int? in
            guard name.hasPrefix("model.layers.") else { return nil }
            return Int(name.dropFirst("model.layers.".count).prefix { $0 != "." })
        }
        if let last = layers.max(), last >= config.layerCount {
            let unused = last == config.layerCount ? "layer \(last) is" : "layers \(config.layerCount) to \(last) are"
            let said = "warning: \(path): num_hidden_layers is \(config.layerCount), but the weights hold layers up "
                + "to model.layers.\(last): \(unused) not used\n"
            FileHandle.standardError.write(Data(said.utf8))
        }
    }

    /// Where the tensors come from.
    public var location: String { source.location }

    /// Refuses a file that lacks a tensor the architecture needs (names only, nothing read): `quantize` used to
    /// write a checkpoint without it and exit 0 (a shard index missing one entry), which only failed when loaded.
    public func checkComplete() throws {
        var names = ["model.embed_tokens.weight", "model.norm.weight"]
        for l in 0..<config.layerCount {
            names += ["input_layernorm", "post_attention_layernorm"].map { "model.layers.\(l).\($0).weight" }
            names += LlamaConfig.projectionNames.map { PEFTAdapter.modulePath(layer: l, projection: $0) + ".weight" }
        }
        let source = self.source
        let present = { (name: String) in source.contains(name) || BnB4BitCheckpoint.isQuantized(name, in: source) }
        if let missing = names.first(where: { !present($0) }) {
            throw ModelFileError.missingTensor(name: missing, location: location)
        }
        for l in 0..<config.layerCount {
            for name in LlamaConfig.projectionNames {
                let biasName = PEFTAdapter.modulePath(layer: l, projection: name) + ".bias"
                if let key = requiredBiasKey(name), !source.contains(biasName) { throw missingBias(biasName, key: key) }
            }
        }
        if !config.tieWordEmbeddings && !source.contains("lm_head.weight") { throw missingHead }
    }

    /// Refuses a plain model whose embedding, norms, projections or head do not have the shapes its config gives
    /// (views only, no weight read): `quantize` used to write a checkpoint of a [0, 192] or [1, 192, 192] q_proj
    /// and exit 0, failing only when the checkpoint was loaded (the empty one as a non-finite nested_offset).
    public func checkShapes() throws {
        let c = config.hiddenSize
        var expected = [("model.embed_tokens.weight", [config.vocabSize, c]), ("model.norm.weight", [c])]
        if !config.tieWordEmbeddings { expected.append(("lm_head.weight", [config.vocabSize, c])) }
        for l in 0..<config.layerCount {
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                expected.append(("model.layers.\(l).\(norm).weight", [c]))
            }
            for name in LlamaConfig.projectionNames {
                guard let (out, inF) = config.projectionShape(name) else { continue }
                expected.append((PEFTAdapter.modulePath(layer: l, projection: name) + ".weight", [out, inF]))
            }
        }
        for (name, shape) in expected where source.contains(name) { _ = try dense(name, shape: shape) }
    }

    /// Drops the pages of the mapped files from resident memory.
    public func evictPages() { source.evictPages() }

    /// A floating-point tensor of exactly `shape`. One of the same size in another shape (an embedding stored flat
    /// as [V·C], or as [C, V]) is refused, not reshaped: its values would be read in the wrong places.
    public func dense(_ name: String, shape: [Int]) throws -> Tensor {
        let t = try source.tensor(named: name)
        guard t.dtype.isFloatingPoint, t.shape == shape else {
            throw ModelFileError.invalidCheckpoint(path: location, tensor: name,
                                                   detail: "\(stored(name, t)), expected a float tensor of "
                                                       + "shape \(shape)")
        }
        try checkFinite(name, t)
        return t
    }

    /// Refuses a float tensor holding NaN or ±infinity, naming the element. Quantized to 4 bits, such a block
    /// (a GGUF block whose scale is damaged) became finite codes of nothing in particular: eval, generate and
    /// train ran on it without a word (bitsandbytes keeps the NaN); on the file's own weights the loss was nan.
    private func checkFinite(_ name: String, _ t: Tensor) throws {
        guard let (bad, value) = Self.firstNonFinite(t) else { return }
        throw ModelFileError.invalidCheckpoint(path: location, tensor: name,
                                               detail: "\(stored(name, t)): element \(bad) is \(value), not finite")
    }

    /// The first element of float tensor `t` that is NaN or ±infinity, with its value, or nil.
    static func firstNonFinite(_ t: Tensor) -> (index: Int, value: Float)? {
        let n = t.elementCount
        guard n > 0 else { return nil }
        // All exponent bits set is NaN or ±infinity in each of the three float formats.
        let (width, mask): (Int, UInt32) = t.dtype == .f32 ? (4, 0x7F80_0000)
            : t.dtype == .f16 ? (2, 0x7C00) : (2, 0x7F80)
        let chunks = min(64, (n + 65_535) / 65_536)
        var firsts = [Int](repeating: Int.max, count: chunks)
        t.withUnsafeBytes { raw in
            firsts.withUnsafeMutableBufferPointer { out in
                let results = out
                DispatchQueue.concurrentPerform(iterations: chunks) { c in
                    let range = (c * n / chunks)..<((c + 1) * n / chunks)
                    for i in range {
                        let bits = width == 4 ? raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                            : UInt32(raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                        if bits & mask == mask { results[c] = i; return }
                    }
                }
            }
        }
        guard let bad = firsts.min(), bad != Int.max else { return nil }
        let value: Float = t.withUnsafeBytes { raw in
            switch t.dtype {
            case .f32: return raw.loadUnaligned(fromByteOffset: 4 * bad, as: Float.self)
            case .f16: return Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: 2 * bad, as: UInt16.self)))
            default: return Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: 2 * bad, as: UInt16.self)) << 16)
            }
        }
        return (bad, value)
    }

    /// What tensor `name` read as `t` is, for an error: a GGUF file's by its own name, type and dimensions
    /// (`blk.0.ffn_down.weight`, Q4_K): the Hugging Face name and the dequantized F32 alone named a tensor and a
    /// type the file does not hold.
    private func stored(_ name: String, _ t: Tensor) -> String {
        guard let archive = source as? GGUFArchive, let gguf = archive.ggufName(for: name),
              let info = archive.file.tensorInfo(named: gguf) else { return "is \(t.dtype.rawValue) \(t.shape)" }
        return "is GGUF tensor '\(gguf)' of type \(info.type.name) with dimensions \(info.dimensions) (fastest first), "
            + "read as \(t.shape)"
    }

    func floats(_ name: String, count: Int) throws -> [Float] { try dense(name, shape: [count]).floats() }

    /// Token embedding (V, C).
    public func embedding() throws -> Tensor {
        try dense("model.embed_tokens.weight", shape: [config.vocabSize, config.hiddenSize])
    }

    /// lm_head (V, C), or nil when it is the embedding (tied). An untied model without one is refused: using the
    /// embedding in its place would silently compute another model.
    public func lmHead() throws -> Tensor? {
        guard !config.tieWordEmbeddings else { return nil }
        guard source.contains("lm_head.weight") else { throw missingHead }
        return try dense("lm_head.weight", shape: [config.vocabSize, config.hiddenSize])
    }

    private var missingHead: ModelFileError {
        .invalidCheckpoint(path: location, tensor: "lm_head.weight",
                           detail: "is missing, and the config has tie_word_embeddings false (an absent key means "
                               + "false); set it to true if the output matrix is the embedding")
    }

    /// Final RMSNorm (C).
    public func finalNorm() throws -> [Float] { try floats("model.norm.weight", count: config.hiddenSize) }

    /// Layer `l`'s RMSNorm weights (C) before attention and before the MLP.
    public func norms(layer l: Int) throws -> (input: [Float], postAttention: [Float]) {
        (try floats("model.layers.\(l).input_layernorm.weight", count: config.hiddenSize),
         try floats("model.layers.\(l).post_attention_layernorm.weight", count: config.hiddenSize))
    }

    /// Layer `l`'s projection `name` (q_proj, ..., down_proj), shape-checked.
    public func projection(layer l: Int, _ name: String) throws -> ProjectionWeight {
        let weightName = PEFTAdapter.modulePath(layer: l, projection: name) + ".weight"
        guard let (out, inF) = config.projectionShape(name) else {
            throw ModelError("\(name) is not a projection of a Llama decoder layer")
        }
        if BnB4BitCheckpoint.isQuantized(weightName, in: source) {
            let q = try BnB4BitCheckpoint.readWeight(weightName, from: source)
            guard q.shape == [out, inF] else {
                throw ModelFileError.invalidCheckpoint(path: location, tensor: weightName,
                                                       detail: "has shape \(q.shape), expected [\(out), \(inF)]")
            }
            return .quantized(q)
        }
        let w = try source.tensor(named: weightName)
        guard w.shape == [out, inF], w.dtype.isFloatingPoint else {
            throw ModelFileError.invalidCheckpoint(path: location, tensor: weightName,
                                                   detail: "\(stored(weightName, w)), expected a float tensor "
                                                       + "[\(out), \(inF)]")
        }
        try checkFinite(weightName, w)
        return .dense(w)
    }

    /// Layer `l`'s projection `name` in 4 bits, quantized on the host when the file holds it dense.
    public func quantizedProjection(layer l: Int, _ name: String) throws -> Quantized4BitTensor {
        switch try projection(layer: l, name) {
        case .quantized(let q): return q
        case .dense(let w):
            return try Quantized4BitTensor(quantizing: w, type: quantization.type, blocksize: quantization.blocksize,
                                           doubleQuant: quantization.doubleQuant)
        }
    }

    /// The bias (out) of layer `l`'s projection `name`, if the file has one (Qwen2's q/k/v). One the config
    /// promises (`requiredBiasKey`) and the file lacks is an error naming it: the model would run without it.
    public func bias(layer l: Int, _ name: String) throws -> [Float]? {
        let biasName = PEFTAdapter.modulePath(layer: l, projection: name) + ".bias"
        guard source.contains(biasName) else {
            if let key = requiredBiasKey(name) { throw missingBias(biasName, key: key) }
            return nil
        }
        return try floats(biasName, count: config.projectionShape(name)!.0)
    }

    /// The config key that makes projection `name` carry a bias: attention_bias for q/k/v (true by default for
    /// qwen2), mlp_bias for gate/up/down; nil when none is required. o_proj's bias is read when present but not
    /// required (Qwen2 has none; Llama's attention_bias also gives it one).
    func requiredBiasKey(_ name: String) -> String? {
        switch name {
        case "q_proj", "k_proj", "v_proj": return config.attentionBias ? "attention_bias" : nil
        case "gate_proj", "up_proj", "down_proj": return config.mlpBias ? "mlp_bias" : nil
        default: return nil
        }
    }

    private func missingBias(_ name: String, key: String) -> ModelFileError {
        let stated = key == "attention_bias" && config.modelType == "qwen2" ? "true (qwen2's default when absent)"
            : "true"
        return .invalidCheckpoint(path: location, tensor: name,
                                  detail: "is missing, but the config has \(key) \(stated): the projection needs "
                                      + "its bias; set \(key) to false if the model has none")
    }
}

extension LoRAWeights {
    /// Fresh adapters as peft initializes them, for every layer and target of `lora`: A kaiming-uniform (a = √5,
    /// i.e. uniform in ±1/√in), B zero; drawn from `seed` in layer order, then projection order. Both devices start
    /// from these, so the same seed trains the same model on the CPU and on a GPU.
    public static func initial(config: LlamaConfig, lora: LoRAConfig, seed: UInt64) -> [String: LoRAWeights] {
        var adapters: [String: LoRAWeights] = [:]
        var rng = SeededGenerator(seed: seed)
        for l in 0..<config.layerCount {
            for name in lora.resolvedTargets {
                let (out, inF) = config.projectionShape(name)!
                let bound = 1 / Float(inF).squareRoot()
                let a = (0..<(lora.r * inF)).map { _ in (rng.nextUniform() * 2 - 1) * bound }
                adapters["\(l).\(name)"] = LoRAWeights(a: a, b: [Float](repeating: 0, count: out * lora.r))
            }
        }
        return adapters
    }
}
