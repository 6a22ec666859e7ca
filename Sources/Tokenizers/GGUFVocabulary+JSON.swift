import ModelFiles

/// The other direction of `GGUFVocabulary(tokenizerJSONPath:)`: a GGUF's byte-level BPE vocabulary written as the
/// Hugging Face files (`tokenizer.json`, `tokenizer_config.json`) that tokenize as the GGUF does here, so that a
/// model merged from a GGUF base is a complete Hugging Face folder.
extension GGUFVocabulary {
    /// What errors about a GGUF vocabulary name: its file (when known) and its model and size.
    static func source(file: String?, model: String, tokenCount: Int) -> String {
        (file.map { $0 + ": " } ?? "") + "GGUF vocabulary (tokenizer.ggml.model \"\(model)\", \(tokenCount) tokens)"
    }

    /// The vocabulary of a GGUF's `tokenizer.ggml.*` metadata. Only `tokenizer.ggml.model` "gpt2" (byte-level BPE
    /// with merges) with a word-splitting pattern this package knows is taken; SentencePiece ("llama") vocabularies
    /// have no merges list to write. `file` is the GGUF file it comes from, named by its errors.
    public init(ggufModel: String, pre: String?, tokens: [String], tokenTypes: [Int]?, merges: [String]?,
                bosTokenId: Int?, eosTokenId: Int?, unknownTokenId: Int?, paddingTokenId: Int?, addBOS: Bool,
                addEOS: Bool, file: String? = nil) throws {
        let source = Self.source(file: file, model: ggufModel, tokenCount: tokens.count)
        func fail(_ message: String) -> TokenizerError { TokenizerError(source: source, message: message) }
        guard ggufModel == "gpt2", let merges else {
            throw fail("only byte-level BPE vocabularies (tokenizer.ggml.model \"gpt2\" with merges) can be written " +
                       "as a tokenizer.json; SentencePiece (\"llama\") ones cannot")
        }
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw fail("tokenizer.ggml.token_type has \(tokenTypes.count) entries for \(tokens.count) tokens")
        }
        for id in [bosTokenId, eosTokenId, unknownTokenId, paddingTokenId].compactMap({ $0 })
        where id < 0 || id >= tokens.count {
            throw fail("a special token id (\(id)) is outside the \(tokens.count)-token vocabulary")
        }
        _ = try Tokenizer.preTokenizer(forPre: pre ?? "default", error: fail)   // a pattern we can write
        self.pre = pre ?? "default"
        self.tokens = tokens
        self.tokenTypes = tokenTypes ?? tokens.indices.map { id in
            [bosTokenId, eosTokenId, unknownTokenId, paddingTokenId].contains(id)
                ? GGUFVocabularyReader.TokenType.control : GGUFVocabularyReader.TokenType.normal
        }
        self.merges = merges
        self.bosTokenId = bosTokenId; self.eosTokenId = eosTokenId
        self.unknownTokenId = unknownTokenId; self.paddingTokenId = paddingTokenId
        self.addBOS = addBOS; self.addEOS = addEOS
    }

    /// `tokenizer.json`: a BPE model over bytes with the vocabulary and merges, the added tokens (control tokens
    /// special, user-defined ones not), the pre-tokenizer of `pre`, a byte-level decoder, and a post-processor
    /// that adds BOS and EOS as the GGUF says.
    public func tokenizerJSON() throws -> JSONValue {
        let fail = { (m: String) in TokenizerError(source: "GGUF vocabulary (\(tokens.count) tokens)", message: m) }
        let added: [JSONValue] = tokens.indices.compactMap { id in
            let type = tokenTypes[id]
            guard type == GGUFVocabularyReader.TokenType.control || type == GGUFVocabularyReader.TokenType.userDefined
                || type == GGUFVocabularyReader.TokenType.unknown else { return nil }
            return .object([("id", .int(id)), ("content", .string(tokens[id])), ("single_word", .bool(false)),
                            ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)),
                            ("special", .bool(type != GGUFVocabularyReader.TokenType.userDefined))])
        }
        var vocab: [(String, JSONValue)] = []
        // The last id wins; texts are compared exactly, so canonically equivalent tokens both stay.
        var seen = Set<TokenKey>()
        for (id, token) in tokens.enumerated().reversed() where seen.insert(TokenKey(token)).inserted {
            vocab.append((token, .int(id)))
        }
        vocab.reverse()
        let pairs: [JSONValue] = try merges.enumerated().map { rank, merge in
            let parts = merge.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else { throw fail("merges[\(rank)] \"\(merge)\" is not two tokens") }
            return .array([.string(String(parts[0])), .string(String(parts[1]))])
        }
        func template(_ ids: [Int]) -> ([JSONValue], [(String, JSONValue)]) {
            let pieces: [JSONValue] = ids.map { .object([("SpecialToken", .object([("id", .string(tokens[$0])),
                                                                                    ("type_id", .int(0))]))]) }
            let special: [(String, JSONValue)] = ids.map {
                (tokens[$0], .object([("id", .string(tokens[$0])), ("ids", .array([.int($0)])),
                                      ("tokens", .array([.string(tokens[$0])]))]))
            }
            return (pieces, special)
        }
        let (prefix, prefixSpecial) = template(addBOS ? bosTokenId.map { [$0] } ?? [] : [])
        let (suffix, suffixSpecial) = template(addEOS ? eosTokenId.map { [$0] } ?? [] : [])
        let sequence = { (name: String, typeId: Int) -> JSONValue in
            .object([("Sequence", .object([("id", .string(name)), ("type_id", .int(typeId))]))])
        }
        let postProcessor: JSONValue = .object([
            ("type", .string("TemplateProcessing")),
            ("single", .array(prefix + [sequence("A", 0)] + suffix)),
            ("pair", .array(prefix + [sequence("A", 0)] + suffix + prefix + [sequence("B", 1)] + suffix)),
            ("special_tokens", .object(prefixSpecial
                + suffixSpecial.filter { s in !prefixSpecial.contains { TokenKey($0.0) == TokenKey(s.0) } })),
        ])
        let model: JSONValue = .object([
            ("type", .string("BPE")), ("dropout", .null),
            ("unk_token", unknownTokenId.map { .string(tokens[$0]) } ?? .null),
            ("continuing_subword_prefix", .string("")), ("end_of_word_suffix", .string("")),
            ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)), ("ignore_merges", .bool(false)),
            ("vocab", .object(vocab)), ("merges", .array(pairs)),
        ])
        return .object([
            ("version", .string("1.0")), ("truncation", .null), ("padding", .null),
            ("added_tokens", .array(added)), ("normalizer", .null),
            ("pre_tokenizer", try Tokenizer.preTokenizer(forPre: pre, error: fail)),
            ("post_processor", postProcessor),
            ("decoder", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)),
                                 ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])),
            ("model", model),
        ])
    }

    /// `tokenizer_config.json`: the special tokens by name, whether BOS/EOS are added, the context length and the
    /// chat template (the GGUF's `tokenizer.chat_template`).
    public func tokenizerConfig(chatTemplate: String?, maxLength: Int) -> JSONValue {
        var fields: [(String, JSONValue)] = [
            ("add_bos_token", .bool(addBOS)), ("add_eos_token", .bool(addEOS)),
            ("clean_up_tokenization_spaces", .bool(false)), ("model_max_length", .int(maxLength)),
            ("tokenizer_class", .string("PreTrainedTokenizerFast")),
        ]
        for (key, id) in [("bos_token", bosTokenId), ("eos_token", eosTokenId), ("unk_token", unknownTokenId),
                          ("pad_token", paddingTokenId)] {
            if let id { fields.append((key, .string(tokens[id]))) }
        }
        if let chatTemplate { fields.append(("chat_template", .string(chatTemplate))) }
        return .object(fields)
    }
}

extension Tokenizer {
    /// The Hugging Face pre-tokenizer of a `tokenizer.ggml.pre` name: the same word-splitting rules
    /// (`splitRules(forPre:)`) written in tokenizer.json's terms, the regexes those the reader recognizes.
    static func preTokenizer(forPre pre: String, error: (String) -> TokenizerError) throws -> JSONValue {
        let rules = try GGUFVocabularyReader.splitRules(forPre: pre, error: error)
        func byteLevel(regex: Bool) -> JSONValue {
            .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
                     ("trim_offsets", .bool(true)), ("use_regex", .bool(regex))])
        }
        if rules == [.gpt2] { return byteLevel(regex: true) }
        guard rules.count == 1,
              let pattern = TokenizerJSONReader.knownPatterns.first(where: { $0.value == rules[0] })?.key else {
            throw error("tokenizer.ggml.pre \"\(pre)\" has no tokenizer.json form here")
        }
        let split: JSONValue = .object([("type", .string("Split")), ("pattern", .object([("Regex", .string(pattern))])),
                                        ("behavior", .string("Isolated")), ("invert", .bool(false))])
        return .object([("type", .string("Sequence")), ("pretokenizers", .array([split, byteLevel(regex: false)]))])
    }
}
