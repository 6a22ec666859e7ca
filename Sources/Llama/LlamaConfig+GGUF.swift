import Foundation
import ModelFiles

extension LlamaConfig {
    /// The config of a Llama-family GGUF file, built from its `<architecture>.*` and `tokenizer.ggml.*` metadata.
    ///
    /// The keys are translated into the Hugging Face `config.json` the file was converted from and decoded by
    /// `init(from:)`, so a GGUF model passes exactly the checks a Hugging Face folder does. Values the GGUF stores as
    /// float32 (`rms_norm_eps`, `rope_theta`) keep their float32 value: 1e-5 reads as 9.999999747378752e-06.
    public init(gguf: GGUFFile) throws {
        self = try Self.decode(Self.huggingFaceJSON(gguf: gguf), path: gguf.path)
    }

    /// The Hugging Face `config.json` equivalent to a GGUF file's metadata.
    public static func huggingFaceJSON(gguf: GGUFFile) throws -> JSONValue {
        let path = gguf.path
        guard let architecture = gguf.architecture else {
            throw ModelFileError.invalidConfig(path: path, detail: "GGUF metadata has no general.architecture")
        }
        guard GGUFArchive.supportedArchitectures.contains(architecture) else {
            throw ModelFileError.invalidConfig(
                path: path,
                detail: "GGUF architecture '\(architecture)' is not supported (supported: "
                    + GGUFArchive.supportedArchitectures.sorted().joined(separator: ", ") + ")")
        }
        let metadata = gguf.metadata
        func value(_ key: String) -> GGUFValue? { metadata[architecture + "." + key] }
        func integer(_ key: String) throws -> Int? {
            guard let v = value(key) else { return nil }
            guard let i = v.int else {
                throw ModelFileError.invalidConfig(path: path, detail: "GGUF \(architecture).\(key) is not an integer: \(v)")
            }
            return i
        }
        func requiredInteger(_ key: String) throws -> Int {
            guard let i = try integer(key) else {
                throw ModelFileError.invalidConfig(path: path, detail: "GGUF metadata has no \(architecture).\(key)")
            }
            return i
        }
        func number(_ key: String) throws -> Double? {
            guard let v = value(key) else { return nil }
            guard let d = v.float else {
                throw ModelFileError.invalidConfig(path: path, detail: "GGUF \(architecture).\(key) is not a number: \(v)")
            }
            return d
        }

        // Mixtral-style files are `llama` with experts (blk.N.ffn_gate_exps, ffn_gate_inp): they read as a
        // missing model.layers.0.mlp.gate_proj.weight, or, beside dense tensors, ran as a dense model.
        if let experts = try integer("expert_count"), experts > 0 {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF \(architecture).expert_count is \(experts): mixture-of-experts models "
                    + "are not supported (only dense Llama and Qwen2 feed-forward layers)")
        }
        var json = JSONValue.object([("model_type", .string(architecture))])
        json.set("hidden_size", .int(try requiredInteger("embedding_length")))
        json.set("intermediate_size", .int(try requiredInteger("feed_forward_length")))
        json.set("num_hidden_layers", .int(try requiredInteger("block_count")))
        json.set("num_attention_heads", .int(try requiredInteger("attention.head_count")))
        if let kv = try integer("attention.head_count_kv") { json.set("num_key_value_heads", .int(kv)) }

        // The head width: attention.key_length when stated, else the rotary width (all of a head rotates in these
        // architectures, so a value_length or rotary width that differs means a model this tool does not run).
        let keyLength = try integer("attention.key_length")
        let rotaryWidth = try integer("rope.dimension_count")
        if let k = keyLength, let r = rotaryWidth, k != r {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF rotates \(r) of each head's \(k) dimensions; partial rotary embeddings are not supported")
        }
        if let d = keyLength ?? rotaryWidth { json.set("head_dim", .int(d)) }
        if let v = try integer("attention.value_length") {
            // Against the head width the model will have: stated, or the embedding split over the heads.
            let heads = try requiredInteger("attention.head_count")
            let width = try keyLength ?? rotaryWidth ?? (heads > 0 ? requiredInteger("embedding_length") / heads : 0)
            guard v == width else {
                throw ModelFileError.invalidConfig(
                    path: path, detail: "GGUF value heads are \(v) wide (attention.value_length) but key heads "
                        + "\(width); they must be equal")
            }
        }

        let vocabSize: Int
        if let v = try integer("vocab_size") {
            vocabSize = v
        } else if let tokens = metadata["tokenizer.ggml.tokens"]?.array {
            vocabSize = tokens.count
        } else if let embedding = gguf.tensorInfo(named: "token_embd.weight"), embedding.dimensions.count == 2 {
            vocabSize = embedding.dimensions[1]
        } else {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF metadata gives no vocabulary size (\(architecture).vocab_size or tokenizer.ggml.tokens)")
        }
        json.set("vocab_size", .int(vocabSize))
        if let eps = try number("attention.layer_norm_rms_epsilon") { json.set("rms_norm_eps", .double(eps)) }
        if let theta = try number("rope.freq_base") { json.set("rope_theta", .double(theta)) }
        if let context = try integer("context_length") {
            guard context > 0, context <= LlamaConfig.maximumPositions else {
                throw ModelFileError.invalidConfig(
                    path: path,
                    detail: "GGUF \(architecture).context_length must be in 1...\(LlamaConfig.maximumPositions), "
                        + "found \(context)")
            }
            json.set("max_position_embeddings", .int(context))
        }

        if gguf.tensorInfo(named: "rope_freqs.weight") != nil {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF has per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 style); "
                    + "reading them back into rope_scaling is not supported")
        }
        let scalingFactor = try number("rope.scaling.factor")
        if value("rope.scaling.type") != nil, value("rope.scaling.type")?.string == nil {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF \(architecture).rope.scaling.type must be a string")
        }
        if let type = value("rope.scaling.type")?.string, type != "none" {
            guard type == "linear" else {
                throw ModelFileError.invalidConfig(
                    path: path, detail: "GGUF RoPE scaling '\(type)' is not supported (supported: linear)")
            }
            guard let factor = scalingFactor else {
                throw ModelFileError.invalidConfig(
                    path: path, detail: "GGUF RoPE scaling 'linear' needs \(architecture).rope.scaling.factor, "
                        + "which is missing")
            }
            json.set("rope_scaling", .object([("rope_type", .string("linear")), ("factor", .double(factor))]))
        } else if value("rope.scaling.type") == nil, let factor = scalingFactor, factor != 1 {
            throw ModelFileError.invalidConfig(
                path: path, detail: "GGUF gives \(architecture).rope.scaling.factor \(factor) but no "
                    + "rope.scaling.type: which scaling it means is unknown")
        } else if let factor = try number("rope.scale_linear"), factor != 1 {
            // The older spelling of linear scaling, one key holding the factor.
            json.set("rope_scaling", .object([("rope_type", .string("linear")), ("factor", .double(factor))]))
        }

        json.set("tie_word_embeddings", .bool(gguf.tensorInfo(named: "output.weight") == nil))
        json.set("attention_bias", .bool(gguf.tensorInfo(named: "blk.0.attn_q.bias") != nil))
        json.set("mlp_bias", .bool(gguf.tensorInfo(named: "blk.0.ffn_up.bias") != nil))
        if let bos = metadata["tokenizer.ggml.bos_token_id"]?.int { json.set("bos_token_id", .int(bos)) }
        if let eos = metadata["tokenizer.ggml.eos_token_id"]?.int { json.set("eos_token_id", .int(eos)) }
        return json
    }

    private static func decode(_ json: JSONValue, path: String) throws -> LlamaConfig {
        do {
            return try JSONDecoder().decode(LlamaConfig.self, from: Data(json.compactText().utf8))
        } catch let e as Invalid {
            throw ModelFileError.invalidConfig(path: path, detail: "GGUF metadata: " + e.description)
        } catch {
            throw ModelFileError.invalidConfig(path: path, detail: "GGUF metadata does not make a valid config: \(error)")
        }
    }
}
