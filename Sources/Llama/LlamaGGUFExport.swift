import Foundation
import ModelFiles
import Tensors

/// The storage type of an exported GGUF's matrices (1D tensors, the norms and biases, stay F32 as llama.cpp keeps
/// them).
public enum GGUFExportType: String, Sendable, CaseIterable {
    case f32, f16, bf16, q8_0

    /// The ggml type of the matrices.
    public var ggml: GGMLType {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        case .q8_0: return .q8_0
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7, MOSTLY_BF16 32).
    public var fileType: UInt32 {
        switch self {
        case .f32: return 0
        case .f16: return 1
        case .q8_0: return 7
        case .bf16: return 32
        }
    }
}

/// A merged model, or its adapter alone, written as GGUF in llama.cpp's conventions (what `convert_hf_to_gguf.py`
/// and `convert_lora_to_gguf.py` write), so that `llama-cli -m` and `llama-cli --lora` load it.
///
/// The q_proj and k_proj rows are permuted for the `llama` architecture: per head the D rows, viewed as (2, D/2),
/// are transposed to (D/2, 2), so Hugging Face row `s·D/2 + i` becomes GGUF row `2i + s` (ggml's rotary embedding
/// rotates adjacent pairs). `GGUFArchive` undoes it when reading. `qwen2` stores the rows as they are.
public enum LlamaGGUFExport {
    /// The alignment written (`general.alignment`).
    public static let alignment = 32

    /// llama.cpp's architecture for a config: `llama` for Llama and Mistral, `qwen2` for Qwen2.
    public static func architecture(_ config: LlamaConfig) throws -> String {
        switch config.modelType {
        case "llama", "mistral": return "llama"
        case "qwen2": return "qwen2"
        default: throw ModelError("model_type \(config.modelType) has no GGUF architecture here (llama, mistral, "
                                  + "qwen2)")
        }
    }

    /// The `general.*` and `<architecture>.*` metadata of a model with `config`.
    public static func modelMetadata(_ config: LlamaConfig, name: String,
                                     type: GGUFExportType) throws -> [(String, GGUFValue)] {
        let arch = try architecture(config)
        guard arch != "llama" || config.headDim % 2 == 0 else {
            throw ModelError("head_dim \(config.headDim) is odd: llama.cpp's rotary layout pairs a head's rows")
        }
        func u32(_ v: Int) -> GGUFValue { .uint32(UInt32(clamping: v)) }
        var m: [(String, GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("model")),
            ("general.name", .string(name)),
            ("general.file_type", .uint32(type.fileType)),
            ("general.quantization_version", .uint32(2)),
            ("general.alignment", .uint32(UInt32(alignment))),
            ("\(arch).context_length", u32(config.maxPositionEmbeddings)),
            ("\(arch).embedding_length", u32(config.hiddenSize)),
            ("\(arch).block_count", u32(config.layerCount)),
            ("\(arch).feed_forward_length", u32(config.intermediateSize)),
            ("\(arch).rope.dimension_count", u32(config.headDim)),
            ("\(arch).attention.head_count", u32(config.headCount)),
            ("\(arch).attention.head_count_kv", u32(config.kvHeadCount)),
            ("\(arch).attention.layer_norm_rms_epsilon", .float32(Float(config.rmsNormEps))),
            ("\(arch).rope.freq_base", .float32(Float(config.ropeTheta))),
            ("\(arch).vocab_size", u32(config.vocabSize)),
        ]
        if config.headDim * config.headCount != config.hiddenSize {
            m.append(("\(arch).attention.key_length", u32(config.headDim)))
            m.append(("\(arch).attention.value_length", u32(config.headDim)))
        }
        if let scaling = config.ropeScaling, scaling.ropeType != "default" {
            guard scaling.ropeType == "linear" else {
                throw ModelError("RoPE scaling \(scaling.ropeType) is not written to GGUF (llama.cpp keeps Llama 3's "
                                 + "as a rope_freqs tensor, which this tool does not read back); only linear is")
            }
            m.append(("\(arch).rope.scaling.type", .string("linear")))
            m.append(("\(arch).rope.scaling.factor", .float32(Float(scaling.factor))))
        }
        return m
    }

    /// The llama.cpp name of a Hugging Face tensor name (`model.layers.0.self_attn.q_proj.weight` →
    /// `blk.0.attn_q.weight`), or nil; the inverse of `GGUFArchive.huggingFaceName`.
    public static func llamaCppName(_ hf: String) -> String? {
        switch hf {
        case "model.embed_tokens.weight": return "token_embd.weight"
        case "model.norm.weight": return "output_norm.weight"
        case "lm_head.weight": return "output.weight"
        default: break
        }
        let parts = hf.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]),
              let suffix = parts.last, suffix == "weight" || suffix == "bias" else { return nil }
        let modules = ["input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                       "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                       "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                       "mlp.down_proj": "ffn_down"]
        guard let module = modules[parts[3..<(parts.count - 1)].joined(separator: ".")] else { return nil }
        return "blk.\(layer).\(module).\(suffix)"
    }

    /// The rows of a q or k weight (H·D rows of `rowLength`) or bias (`rowLength` 1) in llama.cpp's order.
    public static func permutedRows(_ values: [Float], heads: Int, rowLength: Int) -> [Float] {
        reorderedRows(values, heads: heads, rowLength: rowLength, inverse: false)
    }

    /// Within each head, row s·D/2 + i (Hugging Face's half-rotation order) and row 2i + s (llama.cpp's interleaved
    /// order) trade places: from the first to the second, or back with `inverse`.
    static func reorderedRows(_ values: [Float], heads: Int, rowLength: Int, inverse: Bool) -> [Float] {
        let rows = values.count / max(rowLength, 1), headDim = rows / max(heads, 1), half = headDim / 2
        var out = values
        for h in 0..<heads {
            for i in 0..<half {
                for s in 0..<2 {
                    let halves = (h * headDim + s * half + i) * rowLength
                    let interleaved = (h * headDim + 2 * i + s) * rowLength
                    let (from, to) = inverse ? (interleaved, halves) : (halves, interleaved)
                    for k in 0..<rowLength { out[to + k] = values[from + k] }
                }
            }
        }
        return out
    }

    /// The heads whose rows `permutedRows` reorders for the llama.cpp tensor `name` under `arch`, or nil.
    static func permutedHeads(_ name: String, arch: String, config: LlamaConfig) -> Int? {
        guard arch == "llama" else { return nil }
        if name.contains(".attn_q.") { return config.headCount }
        if name.contains(".attn_k.") { return config.kvHeadCount }
        return nil
    }

    /// The Hugging Face names of the vocabulary matrices: the token embedding and the output matrix (lm_head, or
    /// the embedding itself when the model ties them).
    public static let vocabularyMatrices: Set<String> = ["model.embed_tokens.weight", "lm_head.weight"]

    /// The tensors of the exported model (Hugging Face name, plan): matrices in `type`, the token embedding and
    /// output matrix in `embeddings` where given (as llama-quantize's --token-embedding-type and
    /// --output-tensor-type), Q8_0 falling back to F16 for rows that are not whole 32-value blocks (as llama.cpp's
    /// converter does), 1D tensors F32.
    public static func plan(_ weights: LlamaWeights, type: GGUFExportType,
                            embeddings: GGUFExportType? = nil) throws -> [(hf: String, plan: GGUFTensorPlan)] {
        try LlamaMerge.layout(weights.config, weights: weights).map { name, shape in
            guard let gguf = llamaCppName(name) else { throw ModelError("\(name) has no llama.cpp name") }
            let matrixType = vocabularyMatrices.contains(name) ? embeddings ?? type : type
            var t = shape.count == 1 ? GGMLType.f32 : matrixType.ggml
            if t == .q8_0, (shape.last ?? 0) % GGMLType.q8_0.blockSize != 0 { t = .f16 }
            return (name, GGUFTensorPlan(name: gguf, shape: shape, type: t))
        }
    }

    /// Writes the merged model (base + adapter folded as `LlamaMerge` does, onto `onto`) to the GGUF file `path`
    /// (a temporary name, then renamed), with `tokenizerMetadata` (`tokenizer.ggml.*`, `tokenizer.chat_template`)
    /// after the model's own keys; the vocabulary matrices in `embeddings` where given (`plan`). Returns the
    /// tensors' plans. `progress(done, total, tensor)`.
    @discardableResult
    public static func write(weights: LlamaWeights, lora: LoRAConfig, adapters: [String: LoRAWeights],
                             onto: MergeBase, type: GGUFExportType, embeddings: GGUFExportType? = nil, name: String,
                             tokenizerMetadata: [(String, GGUFValue)], to path: String,
                             progress: (Int, Int, String) -> Void = { _, _, _ in }) throws -> [GGUFTensorPlan] {
        let config = weights.config
        let arch = try architecture(config)
        let tensors = try plan(weights, type: type, embeddings: embeddings)
        let metadata = try modelMetadata(config, name: name, type: type) + tokenizerMetadata
        try GGUFWriter.write(to: path, metadata: metadata, tensors: tensors.map(\.plan), alignment: alignment) { i in
            let (hf, p) = tensors[i]
            var values = try LlamaMerge.mergedTensor(hf, shape: p.shape, weights: weights, lora: lora,
                                                     adapters: adapters, onto: onto)
            if let heads = permutedHeads(p.name, arch: arch, config: config) {
                values = permutedRows(values, heads: heads, rowLength: p.shape.count == 2 ? p.shape[1] : 1)
            }
            let bytes: [UInt8]
            do { bytes = try p.type.encode(values) } catch let e as GGUFEncodingError {
                throw ModelError("tensor '\(p.name)' (\(hf), base plus adapter): \(e); export with --type f32 "
                                 + "or check the adapter's weights")
            }
            progress(i + 1, tensors.count, p.name)
            weights.evictPages()
            return bytes
        }
        return tensors.map(\.plan)
    }

    /// Writes the adapter alone as a GGUF LoRA file for `llama-cli --lora` (`convert_lora_to_gguf.py`'s layout):
    /// `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha` (llama.cpp scales by alpha / r, so
    /// the alpha written is the adapter's scale × r: its lora_alpha, or lora_alpha·√r under rsLoRA), and for each
    /// adapted projection `blk.N.<name>.weight.lora_a` (r × in, as peft stores A) and `.lora_b` (out × r), B's rows
    /// permuted like the base's for q and k. `type` is f32, f16 or bf16.
    @discardableResult
    public static func writeAdapter(config: LlamaConfig, lora: LoRAConfig, adapters: [String: LoRAWeights],
                                    type: GGUFExportType, name: String, to path: String) throws -> [GGUFTensorPlan] {
        guard type != .q8_0 else { throw ModelError("an adapter is written as f32, f16 or bf16, not q8_0") }
        let arch = try architecture(config)
        var tensors: [(GGUFTensorPlan, [Float])] = []
        for l in 0..<config.layerCount {
            for proj in LlamaConfig.projectionNames {
                guard let w = adapters["\(l).\(proj)"], let (out, inF) = config.projectionShape(proj),
                      let base = llamaCppName(PEFTAdapter.modulePath(layer: l, projection: proj) + ".weight") else {
                    continue
                }
                var b = w.b
                if let heads = permutedHeads(base, arch: arch, config: config) {
                    b = permutedRows(b, heads: heads, rowLength: lora.r)
                }
                tensors.append((GGUFTensorPlan(name: base + ".lora_a", shape: [lora.r, inF], type: type.ggml), w.a))
                tensors.append((GGUFTensorPlan(name: base + ".lora_b", shape: [out, lora.r], type: type.ggml), b))
            }
        }
        guard !tensors.isEmpty else { throw ModelError("the adapter adapts no projection: nothing to write") }
        let metadata: [(String, GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("adapter")),
            ("general.name", .string(name)),
            ("general.file_type", .uint32(type.fileType)),
            ("general.alignment", .uint32(UInt32(alignment))),
            ("adapter.type", .string("lora")),
            ("adapter.lora.alpha", .float32(lora.scale * Float(lora.r))),
        ]
        try GGUFWriter.write(to: path, metadata: metadata, tensors: tensors.map(\.0), alignment: alignment) { i in
            do { return try tensors[i].0.type.encode(tensors[i].1) } catch let e as GGUFEncodingError {
                throw ModelError("adapter tensor '\(tensors[i].0.name)': \(e)")
            }
        }
        return tensors.map(\.0)
    }

    /// The adapter of a GGUF LoRA file read back: its alpha, and A and B per "layer.projection" with B's q/k rows
    /// returned to Hugging Face's order. Fails unless the file is a LoRA adapter of `config`'s shapes.
    public static func readAdapter(path: String,
                                   config: LlamaConfig) throws -> (alpha: Float, adapters: [String: LoRAWeights]) {
        let file = try GGUFFile(path: path)
        guard file.metadata["general.type"]?.string == "adapter", file.metadata["adapter.type"]?.string == "lora",
              let alpha = file.metadata["adapter.lora.alpha"]?.float else {
            throw ModelError("\(path) is not a GGUF LoRA adapter (general.type, adapter.type, adapter.lora.alpha)")
        }
        let arch = try architecture(config)
        var adapters: [String: LoRAWeights] = [:]
        for l in 0..<config.layerCount {
            for proj in LlamaConfig.projectionNames {
                let base = llamaCppName(PEFTAdapter.modulePath(layer: l, projection: proj) + ".weight")!
                guard let a = file.tensorInfo(named: base + ".lora_a"), let b = file.tensorInfo(named: base + ".lora_b")
                else { continue }
                let (out, inF) = config.projectionShape(proj)!
                guard a.dimensions.count == 2, a.dimensions[0] == inF, b.dimensions == [a.dimensions[1], out] else {
                    throw ModelError("\(path): \(base) has lora_a \(a.dimensions) and lora_b \(b.dimensions), "
                                     + "expected [\(inF), r] and [r, \(out)]")
                }
                let r = a.dimensions[1]
                var bValues = try file.tensor(named: b.name).floats()
                if let heads = permutedHeads(base, arch: arch, config: config) {
                    bValues = unpermutedRows(bValues, heads: heads, rowLength: r)
                }
                adapters["\(l).\(proj)"] = LoRAWeights(a: try file.tensor(named: a.name).floats(), b: bValues)
            }
        }
        return (Float(alpha), adapters)
    }

    /// The inverse of `permutedRows`.
    public static func unpermutedRows(_ values: [Float], heads: Int, rowLength: Int) -> [Float] {
        reorderedRows(values, heads: heads, rowLength: rowLength, inverse: true)
    }

    /// An adapter file against the adapter as trained: read back (`readAdapter`), its scale alpha / r against the
    /// adapter's, and base + read-back adapter against base + adapter on `sequences` (largest logit difference,
    /// losses). The base is the 4-bit one training saw.
    public static func checkAdapter(exported path: String, base: LlamaWeights, lora: LoRAConfig,
                                    adapters: [String: LoRAWeights],
                                    sequences: [(inputIds: [Int], labels: [Int])]) throws -> Check {
        let (alpha, readBack) = try readAdapter(path: path, config: base.config)
        guard Set(readBack.keys) == Set(adapters.keys) else {
            throw ModelError("\(path) holds \(readBack.count) adapted projections, the adapter \(adapters.count)")
        }
        guard abs(alpha / Float(lora.r) - lora.scale) <= 1e-6 * max(1, lora.scale) else {
            throw ModelError("\(path): alpha \(alpha) / r \(lora.r) is not the adapter's scale \(lora.scale)")
        }
        let model = try LlamaModel(weights: base, lora: lora)
        return try compare(sequences, config: model.config) { ids, labels in
            model.adapters = readBack
            let x = evaluate(model, ids, labels)
            model.adapters = adapters
            return (x, evaluate(model, ids, labels))
        }
    }

    /// Runs `pair` (what the file computes, then the reference) on each sequence and gathers the comparison.
    static func compare(_ sequences: [(inputIds: [Int], labels: [Int])], config: LlamaConfig,
                        _ pair: ([Int], [Int]) -> (StepResult, StepResult)) throws -> Check {
        var worst: Float = 0, total = (0.0, 0.0), count = 0
        var positions = 0, flips = 0, widestFlip: Float = 0
        let v = config.vocabSize
        for (ids, labels) in sequences {
            try LlamaModel.checkBatch(inputIds: ids, labels: labels, batch: 1, tokens: ids.count, config: config)
            let (a, b) = pair(ids, labels)
            for (x, y) in zip(a.logits ?? [], b.logits ?? []) { worst = max(worst, abs(x - y)) }
            if let x = a.logits, let y = b.logits, x.count == y.count {
                for start in stride(from: 0, to: y.count - v + 1, by: v) {
                    let top = topToken(y, start, v), exportTop = topToken(x, start, v)
                    positions += 1
                    if exportTop != top {
                        flips += 1
                        widestFlip = max(widestFlip, y[start + top] - y[start + exportTop])
                    }
                }
            }
            guard a.tokenCount > 0 else { continue }
            total.0 += a.loss * Double(a.tokenCount)
            total.1 += b.loss * Double(b.tokenCount)
            count += a.tokenCount
        }
        guard count > 0 else { throw ModelError("the check sequences have no target to count") }
        return Check(maxLogitDifference: worst, loss: total.0 / Double(count), referenceLoss: total.1 / Double(count),
                     tokens: count, sequences: sequences.count, positions: positions, topTokenChanges: flips,
                     widestChangedGap: widestFlip)
    }

    /// The index (within the row) of the largest of `logits[start..<start + count]`, the first on a tie.
    static func topToken(_ logits: [Float], _ start: Int, _ count: Int) -> Int {
        var best = 0
        for i in 1..<count where logits[start + i] > logits[start + best] { best = i }
        return best
    }

    /// One sequence through `model`, without dropout or gradients, with its logits.
    static func evaluate(_ model: LlamaModel, _ ids: [Int], _ labels: [Int]) -> StepResult {
        var rng = SeededGenerator(seed: 0)   // unused: no dropout outside training
        return model.step(inputIds: ids, labels: labels, batch: 1, tokens: ids.count, withGradients: false,
                          training: false, rng: &rng, keepLogits: true)
    }

    /// What an exported file computes against base + adapter as trained, on held-out sequences: the largest logit
    /// difference, the token-weighted mean losses of both and the number of tokens counted; and how often greedy
    /// decoding would pick another token: of `positions` (every position of every sequence), those where the
    /// export's top token is not the reference's, and the widest reference gap between the two there (a change
    /// where the reference's top two were nearly tied is rounding; a wide one would be a fault).
    public struct Check: Sendable {
        public let maxLogitDifference: Float, loss: Double, referenceLoss: Double, tokens: Int, sequences: Int
        public let positions: Int, topTokenChanges: Int, widestChangedGap: Float
        public var perplexity: Double { Foundation.exp(loss) }
        public var referencePerplexity: Double { Foundation.exp(referenceLoss) }
    }

    /// Loads the GGUF file `path` with this project's reader (its tensors dequantized, run dense) and runs it beside
    /// the reference (the quantized base with the adapter for `.dequantized`, the dense original for `.original`)
    /// on each of `sequences` (input ids with labels, -100 for targets not counted).
    public static func check(exported path: String, base: LlamaWeights, lora: LoRAConfig,
                             adapters: [String: LoRAWeights], onto: MergeBase,
                             sequences: [(inputIds: [Int], labels: [Int])]) throws -> Check {
        var none = LoRAConfig(); none.targetModules = []
        let exported = try LlamaModel(denseWeights: LlamaWeights.open(path: path), lora: none)
        let reference = onto == .original ? try LlamaModel(denseWeights: base, lora: lora)
                                          : try LlamaModel(weights: base, lora: lora)
        reference.adapters = adapters
        return try compare(sequences, config: exported.config) { ids, labels in
            (evaluate(exported, ids, labels), evaluate(reference, ids, labels))
        }
    }
}
