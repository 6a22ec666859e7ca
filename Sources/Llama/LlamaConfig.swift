import Foundation
import ModelFiles

/// The architecture of a Llama-family causal LM (Llama 2/3, Mistral, Qwen2, SmolLM), decoded from a Hugging Face
/// `config.json` and validated while decoding.
public struct LlamaConfig: Codable, Equatable, Sendable {
    /// `model_type`: llama, mistral, qwen2 (SmolLM checkpoints say llama).
    public var modelType: String
    /// C: width of the residual stream.
    public var hiddenSize: Int
    /// F: width of the MLP.
    public var intermediateSize: Int
    /// Number of decoder layers.
    public var layerCount: Int
    /// H: query heads.
    public var headCount: Int
    /// Hkv: key/value heads (grouped-query attention); equals `headCount` when the file omits it.
    public var kvHeadCount: Int
    /// D: width of one head; `hiddenSize / headCount` when the file omits it.
    public var headDim: Int
    /// V: vocabulary size.
    public var vocabSize: Int
    /// RMSNorm epsilon.
    public var rmsNormEps: Double
    /// RoPE base frequency (`rope_theta`, or `rope_parameters.rope_theta`).
    public var ropeTheta: Double
    /// Llama 3 style RoPE frequency scaling, if any.
    public var ropeScaling: RopeScaling?
    /// Longest sequence the model was trained for.
    public var maxPositionEmbeddings: Int
    /// True when lm_head shares the embedding matrix.
    public var tieWordEmbeddings: Bool
    /// True when q/k/v projections have biases (Qwen2).
    public var attentionBias: Bool
    /// True when the MLP projections have biases.
    public var mlpBias: Bool
    /// Beginning-of-sequence token id.
    public var bosTokenId: Int?
    /// End-of-sequence token ids (one or several).
    public var eosTokenIds: [Int]
    /// The dtype the weights were saved in (`torch_dtype` or `dtype`), if stated.
    public var torchDtype: String?

    /// Llama 3's frequency-dependent RoPE scaling (`rope_type: "llama3"`), or plain linear scaling.
    public struct RopeScaling: Codable, Equatable, Sendable {
        /// `llama3`, `linear` or `default`.
        public var ropeType: String
        /// Scale factor.
        public var factor: Double
        /// Llama 3: wavelengths longer than original/low_freq_factor are divided by factor.
        public var lowFreqFactor: Double?
        /// Llama 3: wavelengths shorter than original/high_freq_factor are kept.
        public var highFreqFactor: Double?
        /// Llama 3: the context length the scaling is relative to.
        public var originalMaxPositionEmbeddings: Int?
    }

    /// Model types this tool runs.
    public static let supportedModelTypes: Set<String> = ["llama", "mistral", "qwen2"]

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type", hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case layerCount = "num_hidden_layers", headCount = "num_attention_heads", kvHeadCount = "num_key_value_heads"
        case headDim = "head_dim", vocabSize = "vocab_size", rmsNormEps = "rms_norm_eps", ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling", ropeParameters = "rope_parameters"
        case maxPositionEmbeddings = "max_position_embeddings", tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias", mlpBias = "mlp_bias", bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id", torchDtype = "torch_dtype", dtype = "dtype", hiddenAct = "hidden_act"
    }

    enum RopeKeys: String, CodingKey {
        case ropeType = "rope_type", type, factor, ropeTheta = "rope_theta", lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor", originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }

    /// Why a config is rejected.
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func require(_ key: CodingKeys) throws -> Int {
            guard let v = try Self.integer(c, key) else { throw Invalid(description: "missing \"\(key.rawValue)\"") }
            return v
        }
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        guard Self.supportedModelTypes.contains(modelType) else {
            throw Invalid(description: "model_type \"\(modelType)\" is not supported (supported: llama, mistral, qwen2)")
        }
        if let act = try c.decodeIfPresent(String.self, forKey: .hiddenAct), act != "silu" {
            throw Invalid(description: "hidden_act \"\(act)\" is not supported (Llama-family models use silu)")
        }
        hiddenSize = try require(.hiddenSize)
        intermediateSize = try require(.intermediateSize)
        layerCount = try require(.layerCount)
        headCount = try require(.headCount)
        kvHeadCount = try Self.integer(c, .kvHeadCount) ?? headCount
        vocabSize = try require(.vocabSize)
        for (name, value) in [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                              ("num_hidden_layers", layerCount), ("num_attention_heads", headCount),
                              ("num_key_value_heads", kvHeadCount), ("vocab_size", vocabSize)] where value <= 0 {
            throw Invalid(description: "\"\(name)\" must be positive, found \(value)")
        }
        guard headCount % kvHeadCount == 0 else {
            throw Invalid(description: "num_attention_heads (\(headCount)) is not a multiple of num_key_value_heads (\(kvHeadCount))")
        }
        if let d = try Self.integer(c, .headDim) {
            headDim = d
        } else {
            guard hiddenSize % headCount == 0 else {
                throw Invalid(description: "hidden_size (\(hiddenSize)) is not a multiple of num_attention_heads (\(headCount)) and head_dim is not given")
            }
            headDim = hiddenSize / headCount
        }
        guard headDim > 0, headDim % 2 == 0 else { throw Invalid(description: "head_dim must be positive and even, found \(headDim)") }
        for (name, value) in [("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                              ("num_hidden_layers", layerCount), ("num_attention_heads", headCount),
                              ("vocab_size", vocabSize), ("head_dim", headDim)] where value > Self.maximumSize {
            throw Invalid(description: "\"\(name)\" is \(value), more than this tool accepts (\(Self.maximumSize))")
        }
        // Every weight the model allocates is one of these products; each is checked for overflow and bounded.
        let width = try Self.product(headCount, headDim, "num_attention_heads × head_dim", limit: Self.maximumSize)
        for (what, rows, columns) in [("vocab_size × hidden_size", vocabSize, hiddenSize),
                                      ("intermediate_size × hidden_size", intermediateSize, hiddenSize),
                                      ("num_attention_heads × head_dim × hidden_size", width, hiddenSize)] {
            _ = try Self.product(rows, columns, what, limit: Self.maximumMatrixElements)
        }
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        guard rmsNormEps > 0, rmsNormEps.isFinite else {
            throw Invalid(description: "rms_norm_eps must be positive and finite, found \(rmsNormEps)")
        }
        maxPositionEmbeddings = try Self.integer(c, .maxPositionEmbeddings) ?? 2048
        guard maxPositionEmbeddings > 0, maxPositionEmbeddings <= Self.maximumPositions else {
            throw Invalid(description: "\"max_position_embeddings\" must be in 1...\(Self.maximumPositions), found " +
                "\(maxPositionEmbeddings)")
        }
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? (modelType == "qwen2")
        mlpBias = try c.decodeIfPresent(Bool.self, forKey: .mlpBias) ?? false
        bosTokenId = try? c.decodeIfPresent(Int.self, forKey: .bosTokenId)
        if let one = try? c.decodeIfPresent(Int.self, forKey: .eosTokenId) {
            eosTokenIds = [one]
        } else {
            eosTokenIds = (try? c.decodeIfPresent([Int].self, forKey: .eosTokenId)) ?? []
        }
        torchDtype = try c.decodeIfPresent(String.self, forKey: .torchDtype) ?? c.decodeIfPresent(String.self, forKey: .dtype)

        // RoPE: transformers 5 writes `rope_parameters` (theta and scaling together); older files `rope_theta` and
        // `rope_scaling`.
        var theta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta)
        var scaling: RopeScaling?
        for key in [CodingKeys.ropeParameters, .ropeScaling] where c.contains(key) {
            guard (try? c.decodeNil(forKey: key)) != true else { continue }
            let r = try c.nestedContainer(keyedBy: RopeKeys.self, forKey: key)
            if let t = try r.decodeIfPresent(Double.self, forKey: .ropeTheta) { theta = t }
            let type = try r.decodeIfPresent(String.self, forKey: .ropeType)
                ?? r.decodeIfPresent(String.self, forKey: .type) ?? "default"
            switch type {
            case "default": break
            case "linear", "llama3":
                guard let factor = try r.decodeIfPresent(Double.self, forKey: .factor), factor > 0 else {
                    throw Invalid(description: "\(key.rawValue) of type \(type) needs a positive \"factor\"")
                }
                scaling = RopeScaling(
                    ropeType: type, factor: factor,
                    lowFreqFactor: try r.decodeIfPresent(Double.self, forKey: .lowFreqFactor),
                    highFreqFactor: try r.decodeIfPresent(Double.self, forKey: .highFreqFactor),
                    originalMaxPositionEmbeddings: try Self.integer(r, .originalMaxPositionEmbeddings))
                guard factor.isFinite else { throw Invalid(description: "\(key.rawValue) has a non-finite \"factor\"") }
                if type == "llama3" {
                    guard let low = scaling?.lowFreqFactor, let high = scaling?.highFreqFactor,
                          let original = scaling?.originalMaxPositionEmbeddings else {
                        throw Invalid(description: "\(key.rawValue) of type llama3 needs low_freq_factor, " +
                            "high_freq_factor and original_max_position_embeddings")
                    }
                    guard low > 0, low.isFinite, high > low, high.isFinite else {
                        throw Invalid(description: "\(key.rawValue) needs 0 < low_freq_factor < high_freq_factor, " +
                            "found \(low) and \(high)")
                    }
                    guard original > 0, original <= Self.maximumPositions else {
                        throw Invalid(description: "\(key.rawValue).original_max_position_embeddings must be in " +
                            "1...\(Self.maximumPositions), found \(original)")
                    }
                }
            default:
                throw Invalid(description: "RoPE type \"\(type)\" is not supported (supported: default, linear, llama3)")
            }
        }
        ropeTheta = theta ?? 10000
        guard ropeTheta > 0, ropeTheta.isFinite else {
            throw Invalid(description: "rope_theta must be positive and finite, found \(ropeTheta)")
        }
        ropeScaling = scaling
    }

    /// Largest `max_position_embeddings` accepted (4M positions, beyond any released model's context).
    public static let maximumPositions = 1 << 22
    /// Largest single size accepted (hidden, intermediate, vocabulary, heads, head width, layers; and heads × head
    /// width).
    public static let maximumSize = 1 << 24
    /// Most elements of one weight matrix (vocabulary × hidden and the projections): 2^36, 256 GiB in float32.
    public static let maximumMatrixElements = 1 << 36

    /// `a × b`, or an error naming `what` when it overflows or exceeds `limit`.
    static func product(_ a: Int, _ b: Int, _ what: String, limit: Int) throws -> Int {
        let (p, overflow) = a.multipliedReportingOverflow(by: b)
        guard !overflow, p <= limit else {
            throw Invalid(description: "\(what) (\(a) × \(b)) is more than this tool accepts (\(limit))")
        }
        return p
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(layerCount, forKey: .layerCount)
        try c.encode(headCount, forKey: .headCount)
        try c.encode(kvHeadCount, forKey: .kvHeadCount)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encode(mlpBias, forKey: .mlpBias)
        try c.encodeIfPresent(bosTokenId, forKey: .bosTokenId)
        try c.encode(eosTokenIds, forKey: .eosTokenId)
        try c.encodeIfPresent(torchDtype, forKey: .torchDtype)
    }

    /// Reads and validates `config.json` in a model folder (or the file itself).
    public init(contentsOf path: String) throws {
        let file = FileSystem.isDirectory(path) ? path + "/config.json" : path
        let data: [UInt8]
        do { data = try FileSystem.readBytes(file) } catch {
            // Said once ("PATH: cannot read the model config: PATH: cannot open" named it twice).
            throw ModelFileError.invalidConfig(path: file, detail: "cannot read the model config: "
                                               + ModelFileError.detail(of: error, droppingPath: file))
        }
        // This project's parser reads the text first: a syntax error then names its byte, line and column, and a
        // value of the wrong kind can be quoted back as the file has it.
        let json: JSONValue
        do { json = try JSONValue(parsing: data) } catch {
            throw ModelFileError.invalidConfig(path: file, detail: "not valid JSON: \(error)")
        }
        do {
            self = try JSONDecoder().decode(LlamaConfig.self, from: Data(data))
        } catch let e as Invalid {
            throw ModelFileError.invalidConfig(path: file, detail: e.description)
        } catch let e as DecodingError {
            throw ModelFileError.invalidConfig(path: file, detail: Self.explain(e, in: json))
        } catch {
            throw ModelFileError.invalidConfig(path: file, detail: "not a valid config: \(error)")
        }
    }

    /// The integer under `key`, or nil when absent. A number that is not an integer (192.5, or one past Int's
    /// range) is an error naming the key and the number: Foundation's decoder throws an error of its own for it,
    /// which reaches the caller as "not valid JSON", without either.
    static func integer<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Int? {
        do { return try c.decodeIfPresent(Int.self, forKey: key) } catch {
            guard let found = (try? c.decodeIfPresent(Double.self, forKey: key)).flatMap({ $0 }) else { throw error }
            let name = (c.codingPath + [key]).map(\.stringValue).joined(separator: ".")
            throw Invalid(description: "\"\(name)\" has the wrong type: expected an integer, found "
                + JSONValue.pythonRepr(found))
        }
    }

    /// A decoding error as a sentence naming the key, what kind of value it needs and the value the file has.
    static func explain(_ error: DecodingError, in json: JSONValue) -> String {
        let context: DecodingError.Context
        var expected: String?
        switch error {
        case let .typeMismatch(type, c), let .valueNotFound(type, c): context = c; expected = kind(of: type)
        case let .keyNotFound(key, c):
            return "missing \"" + (c.codingPath + [key]).map(\.stringValue).joined(separator: ".") + "\""
        case let .dataCorrupted(c): context = c
        @unknown default: return "not a valid config: \(error)"
        }
        let key = context.codingPath.map(\.stringValue).joined(separator: ".")
        // The top level itself (null, a list, a number): Swift's own words ("Cannot get keyed decoding container --
        // found null value instead") named no JSON kind a user would recognize.
        if key.isEmpty, json.objectValue == nil {
            return "the top level is \(describe(json)), expected an object of the model's settings"
        }
        guard !key.isEmpty else { return "not a valid config: \(context.debugDescription)" }
        var found: JSONValue? = json
        for step in context.codingPath {
            if let i = step.intValue { found = found?.arrayValue.flatMap { i < $0.count ? $0[i] : nil } }
            else { found = found?[step.stringValue] }
        }
        if expected == nil, case .double(let d)? = found {
            // A number fails to decode only where an integer is wanted (192.5, or one past Int's range), or where
            // it is NaN or infinite.
            expected = d.isFinite ? "an integer" : "a finite number"
        }
        let what = found.map(describe) ?? "no value"
        return "\"\(key)\" has the wrong type: expected \(expected ?? "another kind of value"), found \(what)"
    }

    /// "an integer", "a number", ... for a type the decoder asked for.
    static func kind(of type: Any.Type) -> String {
        switch type {
        case is any BinaryInteger.Type: return "an integer"
        case is any BinaryFloatingPoint.Type: return "a number"
        case is String.Type: return "a string"
        case is Bool.Type: return "true or false"
        case is [Any].Type: return "an array"
        case is [String: Any].Type: return "an object"
        default: return "a \(type)"
        }
    }

    /// A value as found in the file, shortened when long.
    static func describe(_ value: JSONValue) -> String {
        let text = value.compactText()
        let shown = text.count <= 60 ? text : String(text.prefix(57)) + "..."
        switch value {
        case .string: return "the string " + shown
        case .int, .double: return shown
        case .array: return "an array " + shown
        case .object: return "an object " + shown
        case .null, .bool: return shown
        }
    }

    /// Names of the linear projections of one decoder layer, as Hugging Face names them.
    public static let projectionNames = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// `(out, in)` shape of a projection's weight.
    public func projectionShape(_ name: String) -> (outFeatures: Int, inFeatures: Int)? {
        switch name {
        case "q_proj": return (headCount * headDim, hiddenSize)
        case "k_proj", "v_proj": return (kvHeadCount * headDim, hiddenSize)
        case "o_proj": return (hiddenSize, headCount * headDim)
        case "gate_proj", "up_proj": return (intermediateSize, hiddenSize)
        case "down_proj": return (hiddenSize, intermediateSize)
        default: return nil
        }
    }
}
