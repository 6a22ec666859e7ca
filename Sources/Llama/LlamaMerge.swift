import CPUBackend
import Foundation
import ModelFiles
import Quantization
import Tensors

/// What the LoRA delta is added to when merging.
public enum MergeBase: String, Sendable, CaseIterable {
    /// The 4-bit weights as training saw them, dequantized to float32 (the default: the adapter was fit to these).
    case dequantized
    /// The 16/32-bit weights the base was quantized from (what peft's `merge_and_unload` does on a float base).
    case original
}

/// Folding trained adapters into the base: each adapted projection becomes W + s · B A (s = alpha / r, or
/// alpha / √r with rsLoRA), written as a plain Hugging Face folder that any loader reads without peft.
public enum LlamaMerge {
    /// W (out × in, float32) + scale · B (out × r) · A (r × in), the product in float32 through BLAS.
    public static func merged(_ base: [Float], outFeatures: Int, inFeatures: Int, adapter: LoRAWeights, r: Int,
                              scale: Float) -> [Float] {
        precondition(base.count == outFeatures * inFeatures && adapter.a.count == r * inFeatures
                     && adapter.b.count == outFeatures * r)
        var w = base
        adapter.b.withUnsafeBufferPointer { b in
            adapter.a.withUnsafeBufferPointer { a in
                w.withUnsafeMutableBufferPointer { c in
                    BLAS.sgemm(transposeA: false, transposeB: false, m: outFeatures, n: inFeatures, k: r, alpha: scale,
                               a: b.baseAddress!, lda: r, b: a.baseAddress!, ldb: inFeatures, beta: 1,
                               c: c.baseAddress!, ldc: inFeatures)
                }
            }
        }
        return w
    }

    /// The tensors of a merged model, in Hugging Face names and order, each with its shape.
    static func layout(_ config: LlamaConfig, weights: LlamaWeights) throws -> [(name: String, shape: [Int])] {
        let c = config.hiddenSize
        var names: [(String, [Int])] = [("model.embed_tokens.weight", [config.vocabSize, c])]
        for l in 0..<config.layerCount {
            names.append(("model.layers.\(l).input_layernorm.weight", [c]))
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let module = PEFTAdapter.modulePath(layer: l, projection: name)
                names.append((module + ".weight", [out, inF]))
                if weights.source.contains(module + ".bias") { names.append((module + ".bias", [out])) }
            }
            names.append(("model.layers.\(l).post_attention_layernorm.weight", [c]))
        }
        names.append(("model.norm.weight", [c]))
        if try weights.lmHead() != nil { names.append(("lm_head.weight", [config.vocabSize, c])) }
        return names
    }

    /// The float32 values of the merged model's tensor `name` (a Hugging Face name of `layout`, shape `shape`):
    /// an adapted projection is its base (`onto`) plus the delta, every other tensor is the base's.
    static func mergedTensor(_ name: String, shape: [Int], weights: LlamaWeights, lora: LoRAConfig,
                             adapters: [String: LoRAWeights], onto: MergeBase) throws -> [Float] {
        let parts = name.split(separator: ".")
        if parts.count == 6, parts[5] == "weight", let l = Int(parts[2]),
            LlamaConfig.projectionNames.contains(String(parts[4])) {
            let proj = String(parts[4])
            var base: [Float]
            switch (onto, try weights.projection(layer: l, proj)) {
            case (.dequantized, _): base = try weights.quantizedProjection(layer: l, proj).dequantizedFloat32()
            case (.original, .dense(let t)): base = t.floats()
            case (.original, .quantized):
                throw ModelError("\(weights.location) holds \(name) in 4 bits: the original weights are not there, "
                                 + "so merge onto the dequantized ones (--onto dequantized)")
            }
            if let adapter = adapters["\(l).\(proj)"] {
                base = merged(base, outFeatures: shape[0], inFeatures: shape[1], adapter: adapter, r: lora.r,
                              scale: lora.scale)
            }
            return base
        }
        return try weights.dense(name, shape: shape).floats()
    }

    /// Writes the merged model into `directory` (created; every file under a temporary name, then renamed):
    /// safetensors in `dtype` (F32, BF16 or F16), one file or shards of at most `shardBytes` with
    /// `model.safetensors.index.json`; `config.json` without `quantization_config`; the base folder's other files
    /// (tokenizer, generation config, chat template) copied. Returns the file names written.
    /// `progress(done, total, tensor)`.
    public static func write(weights: LlamaWeights, lora: LoRAConfig, adapters: [String: LoRAWeights], onto: MergeBase,
                             dtype: DType, to directory: String, shardBytes: Int = 5_000_000_000,
                             files extra: [(name: String, text: String)] = [],
                             progress: (Int, Int, String) -> Void = { _, _, _ in }) throws -> [String] {
        // Everything goes into a temporary folder beside `directory`, moved into place once complete: a failure
        // (a weight that cannot be read, a full disk) leaves nothing half written.
        // Beside `directory` even when it is named with a final "/" (inside it, the files were moved in one by one).
        let temporary = FileSystem.withoutTrailingSlashes(directory) + ".tmp-\(getpid())"
        try? FileManager.default.removeItem(atPath: temporary)
        do {
            var files = try writeFiles(weights: weights, lora: lora, adapters: adapters, onto: onto, dtype: dtype,
                                       to: temporary, shardBytes: shardBytes, progress: progress)
            for (name, text) in extra {
                try AtomicFile.write(text: text, to: temporary + "/" + name)
                files.append(name)
            }
            // One rename onto a missing or empty folder; else (a link to a folder, say) file by file, none replaced.
            try FileSystem.installFolder(temporary, files: files, at: directory)
            return files
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
    }

    static func writeFiles(weights: LlamaWeights, lora: LoRAConfig, adapters: [String: LoRAWeights], onto: MergeBase,
                           dtype: DType, to directory: String, shardBytes: Int,
                           progress: (Int, Int, String) -> Void) throws -> [String] {
        guard [.f32, .bf16, .f16].contains(dtype) else {
            throw ModelError("merge writes f32, bf16 or f16, not \(dtype)")
        }
        let source = weights.location, fromFolder = FileSystem.isDirectory(source)
        let config = weights.config
        let layout = try layout(config, weights: weights)
        let bytes = layout.map { $0.shape.reduce(1, *) * dtype.byteSize }
        // Shards in order, none over shardBytes (a tensor larger than that gets a shard of its own).
        var shards: [[Int]] = [[]]
        var size = 0
        for (i, b) in bytes.enumerated() {
            if size + b > shardBytes, !shards[shards.count - 1].isEmpty { shards.append([]); size = 0 }
            shards[shards.count - 1].append(i); size += b
        }
        func tensor(_ i: Int) throws -> Tensor {
            let (name, shape) = layout[i]
            let t = Tensor(try mergedTensor(name, shape: shape, weights: weights, lora: lora, adapters: adapters,
                                            onto: onto), shape: shape, dtype: dtype)
            // A merged weight past what the dtype holds (65504 in f16) was written as infinity, and the check
            // then compared nan logits.
            if let (bad, value) = LlamaWeights.firstNonFinite(t) {
                throw ModelError("merged tensor '\(name)': element \(bad) is \(value) in \(dtype.rawValue) (base "
                    + "plus adapter beyond its range): nothing was written; merge with --dtype f32 or bf16, or "
                    + "check the adapter's weights")
            }
            return t
        }
        try FileSystem.createDirectory(directory)
        var files: [String] = [], weightMap: [(String, JSONValue)] = []
        var done = 0
        for (k, shard) in shards.enumerated() {
            let file = shards.count == 1 ? "model.safetensors"
                : String(format: "model-%05d-of-%05d.safetensors", k + 1, shards.count)
            var tensors: [(name: String, tensor: Tensor)] = []
            for i in shard {
                tensors.append((layout[i].name, try tensor(i)))
                weightMap.append((layout[i].name, .string(file)))
                done += 1
                progress(done, layout.count, layout[i].name)
                weights.evictPages()
            }
            try SafeTensorsWriter.write(tensors, to: directory + "/" + file)
            files.append(file)
        }
        // config.json as the base's, without quantization_config, with the dtype written; the other files copied.
        // A GGUF base has no config.json: its architecture from the file's metadata, as transformers names it.
        let configPath = source + "/config.json"
        var json: JSONValue
        if fromFolder {
            do { json = try JSONValue(parsing: FileSystem.readBytes(configPath)) } catch let e as JSONParseError {
                throw ModelFileError.invalidConfig(path: configPath, detail: "\(e)")
            }
        } else {
            json = try JSONValue(parsing: Array(JSONEncoder().encode(config)))
            json.set("architectures", JSONValue.array([.string("LlamaForCausalLM")]))
        }
        if case .object(let fields) = json { json = .object(fields.filter { $0.0 != "quantization_config" }) }
        let torchName = dtype == .f32 ? "float32" : dtype == .f16 ? "float16" : "bfloat16"
        json.set("torch_dtype", JSONValue.string(torchName))
        if json["dtype"] != nil { json.set("dtype", JSONValue.string(torchName)) }
        try AtomicFile.write(text: json.pythonText(indent: 2, sortKeys: true) + "\n", to: directory + "/config.json")
        files.append("config.json")
        for file in fromFolder ? try FileSystem.contents(of: source) : [] where !ModelQuantizer.isWeightOrConfig(file) {
            try FileSystem.copyFile(from: source + "/" + file, to: directory + "/" + file)
            files.append(file)
        }
        if shards.count > 1 {
            let index: JSONValue = .object([("metadata", .object([("total_size", .int(bytes.reduce(0, +)))])),
                                            ("weight_map", .object(weightMap))])
            try AtomicFile.write(text: index.pythonText(indent: 2) + "\n",
                to: directory + "/model.safetensors.index.json")
            files.append("model.safetensors.index.json")
        }
        return files
    }

    /// What a merged folder computes against what it came from: the largest logit difference and both mean
    /// losses (next-token, on `tokens`), the merged model run dense as written, the reference being the base with
    /// the adapter as trained (the quantized base for `.dequantized`, the dense original for `.original`).
    public struct Check: Sendable {
        public let maxLogitDifference: Float, loss: Double, referenceLoss: Double
    }

    public static func check(merged directory: String, base: LlamaWeights, lora: LoRAConfig,
                             adapters: [String: LoRAWeights], onto: MergeBase, tokens: [Int]) throws -> Check {
        var none = LoRAConfig(); none.targetModules = []
        let merged = try LlamaModel(denseWeights: LlamaWeights.open(path: directory), lora: none)
        let reference = onto == .original ? try LlamaModel(denseWeights: base, lora: lora)
                                          : try LlamaModel(weights: base, lora: lora)
        reference.adapters = adapters
        let n = tokens.count
        var rng = SeededGenerator(seed: 0)
        func run(_ m: LlamaModel) throws -> (logits: [Float], loss: Double) {
            try LlamaModel.checkBatch(inputIds: tokens, labels: tokens, batch: 1, tokens: n, config: m.config)
            let r = m.step(inputIds: tokens, labels: tokens, batch: 1, tokens: n, withGradients: false, training: false,
                           rng: &rng, keepLogits: true)
            return (r.logits ?? [], r.loss)
        }
        let a = try run(merged), b = try run(reference)
        let worst = zip(a.logits, b.logits).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        return Check(maxLogitDifference: worst, loss: a.loss, referenceLoss: b.loss)
    }
}
