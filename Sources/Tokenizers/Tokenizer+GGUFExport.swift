import ModelFiles

/// A Hugging Face tokenizer.json in GGUF's terms (`tokenizer.ggml.*`), as llama.cpp's converter writes a byte-level
/// BPE vocabulary: model "gpt2", the word-splitting pattern named by `tokenizer.ggml.pre`, one token text and type
/// per id up to the model's vocabulary size (ids the file leaves unused become `[PAD<id>]`, user-defined), the
/// merges as "left right", and the special ids. `Tokenizer(ggufModel:...)` reads it back.
public struct GGUFVocabulary: Sendable, Equatable {
    public var pre: String
    public var tokens: [String]
    /// 1 normal, 3 control (special added tokens), 4 user-defined (other added tokens, padding ids).
    public var tokenTypes: [Int]
    public var merges: [String]
    public var bosTokenId: Int?, eosTokenId: Int?, unknownTokenId: Int?, paddingTokenId: Int?
    public var addBOS: Bool, addEOS: Bool

    /// Reads `path` (with the `tokenizer_config.json` beside it, for the special tokens), padded to `vocabularySize`
    /// ids (the model's embedding rows). Fails for anything but byte-level BPE with a pattern llama.cpp names.
    public init(tokenizerJSONPath path: String, vocabularySize: Int) throws {
        let reader = TokenizerJSONReader(path: path)
        let json: JSONValue
        do { json = try JSONValue(parsing: FileSystem.readBytes(path)) } catch {
            throw reader.error("cannot read it as JSON: \(error)")
        }
        let parts = try reader.parts(from: json, config: try reader.siblingConfig())
        guard parts.spelling.byteLevel else {
            throw reader.error("only byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM2, Qwen2) are written to GGUF; "
                               + "SentencePiece-style ones are not supported")
        }
        switch parts.splitRules {
        case [.gpt2]: pre = "gpt-2"
        case [.digits(individually: true), .gpt2]: pre = "smollm"
        case [.llama3(maxDigits: 3)]: pre = "llama-bpe"
        case [.llama3(maxDigits: 1)]: pre = "qwen2"
        default: throw reader.error("its word-splitting rules \(parts.splitRules) have no tokenizer.ggml.pre name")
        }
        guard parts.tokens.count <= vocabularySize else {
            throw reader.error("it has \(parts.tokens.count) tokens, more than the model's \(vocabularySize) rows")
        }
        let added = Dictionary(parts.addedTokens.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        var tokens: [String] = [], types: [Int] = []
        for id in 0..<vocabularySize {
            if id < parts.tokens.count, let text = parts.tokens[id] {
                tokens.append(text)
                types.append(added[id].map { $0.isSpecial ? GGUFVocabularyReader.TokenType.control
                                                           : GGUFVocabularyReader.TokenType.userDefined }
                             ?? GGUFVocabularyReader.TokenType.normal)
            } else {
                tokens.append("[PAD\(id)]")
                types.append(GGUFVocabularyReader.TokenType.userDefined)
            }
        }
        self.tokens = tokens
        tokenTypes = types
        var merges: [String] = []
        for (rank, entry) in (json["model"]?["merges"]?.arrayValue ?? []).enumerated() {
            if let text = entry.stringValue {
                merges.append(text)
            } else if let pair = entry.arrayValue, pair.count == 2, let l = pair[0].stringValue,
                      let r = pair[1].stringValue {
                guard !l.contains(" "), !r.contains(" ") else {
                    throw reader.error("model.merges[\(rank)] has a space inside a token; GGUF cannot write it")
                }
                merges.append(l + " " + r)
            }
        }
        self.merges = merges
        bosTokenId = parts.bosTokenId
        eosTokenId = parts.eosTokenId
        paddingTokenId = parts.padTokenId
        unknownTokenId = json["model"]?["unk_token"]?.stringValue.flatMap { name in tokens.firstIndex(of: name) }
        addBOS = !parts.prefixIds.isEmpty
        addEOS = !parts.suffixIds.isEmpty
    }

    /// The `tokenizer.ggml.*` metadata, in the order llama.cpp's converter writes it.
    public var metadata: [(String, GGUFValue)] {
        var m: [(String, GGUFValue)] = [
            ("tokenizer.ggml.model", .string("gpt2")),
            ("tokenizer.ggml.pre", .string(pre)),
            ("tokenizer.ggml.tokens", .array(.string, tokens.map { .string($0) })),
            ("tokenizer.ggml.token_type", .array(.int32, tokenTypes.map { .int32(Int32($0)) })),
            ("tokenizer.ggml.merges", .array(.string, merges.map { .string($0) })),
        ]
        for (key, id) in [("bos", bosTokenId), ("eos", eosTokenId), ("unknown", unknownTokenId),
                          ("padding", paddingTokenId)] {
            if let id { m.append(("tokenizer.ggml.\(key)_token_id", .uint32(UInt32(id)))) }
        }
        m.append(("tokenizer.ggml.add_bos_token", .bool(addBOS)))
        m.append(("tokenizer.ggml.add_eos_token", .bool(addEOS)))
        return m
    }
}
