import ModelFiles

extension Tokenizer {
    /// Loads a Hugging Face `tokenizer.json` with a BPE model: byte-level (GPT-2, Llama 3, SmolLM2, Qwen2: a
    /// `ByteLevel` pre-tokenizer, possibly after a `Split` with the Llama 3 or Qwen2 pattern) or SentencePiece-style
    /// (Llama 2, Mistral: "▁" for spaces, `<0xNN>` byte-fallback tokens). Added tokens are matched in the text
    /// before BPE and never split.
    ///
    /// The BOS, EOS and padding tokens come from a `tokenizer_config.json` in the same folder when there is one,
    /// else from the post-processor template and the `padding` section, else from the usual names (`<s>`, `</s>`,
    /// `<|begin_of_text|>`, `<|endoftext|>`, ...) when the vocabulary has them.
    public convenience init(tokenizerJSONPath path: String) throws {
        let json = try TokenizerConfig.jsonFile(path)
        let reader = TokenizerJSONReader(path: path)
        try self.init(parts: reader.parts(from: json, config: try reader.siblingConfig()))
    }
}

/// Turns the sections of a tokenizer.json into a tokenizer's parts, failing with the file's path and the section
/// at fault for anything it does not support rather than tokenizing differently from the reference.
struct TokenizerJSONReader {
    let path: String

    func error(_ message: String) -> TokenizerError { TokenizerError(source: path, message: message) }

    /// `tokenizer_config.json` beside the file, if there is one; it names the BOS, EOS and padding tokens. One that
    /// cannot be read or is not a JSON object is an error naming it (`TokenizerConfig.read`).
    func siblingConfig() throws -> JSONValue? {
        let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        return try TokenizerConfig.read(folder: folder)
    }

    func parts(from json: JSONValue, config: JSONValue?) throws -> Tokenizer.Parts {
        guard let model = json["model"], model.objectValue != nil else { throw error("no \"model\" object") }
        let modelType = model["type"]?.stringValue ?? "BPE"
        guard modelType == "BPE" else {
            throw error("model type \"\(modelType)\" is not supported; only BPE models are")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let affix = model[key]?.stringValue, !affix.isEmpty {
                throw error("model.\(key) \"\(affix)\" is not supported; only empty affixes are")
            }
        }
        if let dropout = model["dropout"], dropout != .null, dropout.doubleValue != 0 {
            throw error("model.dropout is \(dropout.compactText()): BPE dropout makes encoding random; expected null")
        }

        // Vocabulary: the model's, then added tokens (which may lie beyond it).
        guard let vocab = model["vocab"]?.objectValue else { throw error("model.vocab is missing or not an object") }
        // Keyed by exact text: canonically equivalent spellings ("é", "e\u{301}") are separate tokens.
        var tokenIds: [TokenKey: Int] = [:]
        tokenIds.reserveCapacity(vocab.count)
        // Ids index the token table: each must lie below a bound on vocabularies (no model has 16 M tokens).
        let idLimit = 1 << 24
        for (token, value) in vocab {
            guard let id = value.intValue, id >= 0, id < idLimit else {
                throw error("model.vocab entry \"\(token)\" has \(value.compactText()), expected an id in " +
                            "[0, \(idLimit))")
            }
            tokenIds[TokenKey(token)] = id
        }
        let addedTokens = try readAddedTokens(json["added_tokens"])
        if let bad = addedTokens.first(where: { $0.id < 0 || $0.id >= idLimit }) {
            throw error("added_tokens entry \"\(bad.content)\" has id \(bad.id), expected an id in [0, \(idLimit))")
        }
        for token in addedTokens where tokenIds[TokenKey(token.content)] == nil {
            tokenIds[TokenKey(token.content)] = token.id
        }
        let size = max((tokenIds.values.max() ?? -1), (addedTokens.map(\.id).max() ?? -1)) + 1
        var tokens = [String?](repeating: nil, count: size)
        for (token, id) in tokenIds { tokens[id] = token.text }
        for token in addedTokens { tokens[token.id] = token.content }

        let merges = try readMerges(model["merges"], tokenIds: tokenIds)
        let (textRules, splitRules, byteLevel) = try readPreTokenizer(json["pre_tokenizer"], at: "pre_tokenizer")
        let normalizer = TextNormalizer(rules: try readNormalizer(json["normalizer"], at: "normalizer") + textRules)
        let growth = normalizer.growth
        guard growth <= Double(TextNormalizer.maximumGrowth) else {
            let times = growth < 1e15 ? "\(Int(growth.rounded(.up)))" : "more than 10^15"
            throw error("normalizer and pre_tokenizer: their Replace and Prepend steps can make text \(times) times " +
                        "longer (replacements longer than what they replace, one after another); at most " +
                        "\(TextNormalizer.maximumGrowth) is accepted")
        }
        var unknownId: Int?
        if let name = model["unk_token"]?.stringValue {
            guard let id = tokenIds[TokenKey(name)] else {
                throw error("model.unk_token \"\(name)\" is not in the vocabulary")
            }
            unknownId = id
        }
        let bpe = BPEModel(units: byteLevel ? .bytes : .scalars, merges: merges, tokenIds: tokenIds,
                           byteFallback: model["byte_fallback"] == .bool(true), unknownId: unknownId,
                           fusesUnknown: model["fuse_unk"] == .bool(true),
                           ignoresMergesForKnownWords: model["ignore_merges"] == .bool(true))
        var spelling = TokenPieces.Spelling()
        try readDecoder(json["decoder"], at: "decoder", into: &spelling)
        let (prefixIds, suffixIds) = try readPostProcessor(json["post_processor"], at: "post_processor",
                                                           tokenIds: tokenIds)
        // The ids the post-processor puts around every sequence are taken as written (TemplateProcessing's
        // special_tokens "ids", BertProcessing's cls and sep): one outside the token table (100000, -5) reached
        // the model's embedding with every encode(addSpecialTokens: true), a trap in generate.
        if let bad = (prefixIds + suffixIds).first(where: { $0 < 0 || $0 >= size }) {
            throw error("post_processor: special token id \(bad) is outside the vocabulary [0, \(size))")
        }

        func configured(_ key: String) -> Int? {
            guard let value = config?[key] else { return nil }
            let name = value.stringValue ?? value["content"]?.stringValue
            return name.flatMap { tokenIds[TokenKey($0)] }
        }
        // A BOS or EOS that tokenizer_config.json names but the vocabulary lacks (a typo, a token of another
        // model) used to be replaced in silence by a guess ("</s>", the post-processor's), while the chat
        // template still wrote the configured text: training and generation stopped on another token.
        func named(_ key: String) throws -> Int? {
            guard let value = config?[key], value != .null else { return nil }
            let folder = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
            let source = folder + "/tokenizer_config.json"
            guard let name = value.stringValue ?? value["content"]?.stringValue else {
                throw TokenizerError(source: source, message: "\(key) is \(value.compactText().prefix(80)), "
                                     + "expected the token's text or an object with its \"content\"")
            }
            guard let id = tokenIds[TokenKey(name)] else {
                throw TokenizerError(source: source, message: "\(key) \"\(name.prefix(80))\" is no token of "
                                     + "\(path) (neither in model.vocab nor in added_tokens)")
            }
            return id
        }
        func firstKnown(_ names: [String]) -> Int? { names.lazy.compactMap { tokenIds[TokenKey($0)] }.first }
        let bos = try named("bos_token") ?? prefixIds.first
            ?? firstKnown(["<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>"])
        let eos = try named("eos_token") ?? suffixIds.last
            ?? firstKnown(["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"])
        // The padding section's id is taken as written: -1 trapped in export (a GGUF's u32), 100000 was written as
        // the GGUF's padding token, outside its vocabulary.
        if let padId = json["padding"]?["pad_id"]?.intValue, !(0..<size).contains(padId) {
            throw error("padding.pad_id \(padId) is outside the vocabulary [0, \(size))")
        }
        let pad = configured("pad_token") ?? json["padding"]?["pad_id"]?.intValue

        return Tokenizer.Parts(
            tokens: tokens, model: bpe, addedTokens: addedTokens, normalizer: normalizer, splitRules: splitRules,
            spelling: spelling, specialIds: Set(addedTokens.filter(\.isSpecial).map(\.id)),
            prefixIds: prefixIds, suffixIds: suffixIds, bosTokenId: bos, eosTokenId: eos, padTokenId: pad)
    }

    // MARK: - Sections

    private func readAddedTokens(_ value: JSONValue?) throws -> [AddedToken] {
        guard let value, value != .null else { return [] }
        guard let entries = value.arrayValue else { throw error("added_tokens is not an array") }
        return try entries.enumerated().map { index, entry in
            guard let id = entry["id"]?.intValue, id >= 0, let content = entry["content"]?.stringValue else {
                throw error("added_tokens[\(index)] needs an integer \"id\" and a string \"content\"")
            }
            guard content.utf8.count <= AddedToken.maximumBytes else {
                throw error("added_tokens[\(index)] (id \(id)) is \(content.utf8.count) bytes long; at most " +
                            "\(AddedToken.maximumBytes) are accepted")
            }
            return AddedToken(id: id, content: content, isSpecial: entry["special"] == .bool(true),
                              stripsLeft: entry["lstrip"] == .bool(true), stripsRight: entry["rstrip"] == .bool(true))
        }
    }

    /// Merges in either spelling: `"a b"` strings (older files) or `["a", "b"]` pairs. Rank is list position.
    private func readMerges(_ value: JSONValue?, tokenIds: [TokenKey: Int]) throws -> MergeTable {
        var table = MergeTable()
        guard let value, value != .null else { return table }
        guard let entries = value.arrayValue else { throw error("model.merges is not an array") }
        for (rank, entry) in entries.enumerated() {
            let pair: (String, String)?
            if let text = entry.stringValue {
                pair = Self.splitMerge(text)
            } else if let parts = entry.arrayValue, parts.count == 2, let left = parts[0].stringValue,
                      let right = parts[1].stringValue {
                pair = (left, right)
            } else {
                pair = nil
            }
            guard let (left, right) = pair else {
                throw error("model.merges[\(rank)] is \(entry.compactText()), expected \"left right\" or [left, right]")
            }
            guard let leftId = tokenIds[TokenKey(left)], let rightId = tokenIds[TokenKey(right)],
                  let result = tokenIds[TokenKey(left + right)] else {
                throw error("model.merges[\(rank)] joins \"\(left)\" and \"\(right)\", but it or its result is not in the vocabulary")
            }
            table.add(left: Int32(leftId), right: Int32(rightId), rank: Int32(rank), result: Int32(result))
        }
        return table
    }

    /// "left right", split at the first space after the first character (a token may itself start with a space).
    static func splitMerge(_ text: String) -> (String, String)? {
        guard let first = text.unicodeScalars.first else { return nil }
        let rest = text.unicodeScalars.dropFirst()
        guard let space = rest.firstIndex(of: " ") else { return nil }
        let left = String(first) + String(String.UnicodeScalarView(rest[..<space]))
        let right = String(String.UnicodeScalarView(rest[rest.index(after: space)...]))
        return right.isEmpty ? nil : (left, right)
    }

    private func type(of value: JSONValue, at location: String) throws -> String {
        guard let type = value["type"]?.stringValue else { throw error("\(location) has no \"type\"") }
        return type
    }

    /// A string-or-regex pattern object (`{"String": " "}` or `{"Regex": "..."}`).
    private func pattern(of value: JSONValue, at location: String) throws -> (text: String, isRegex: Bool) {
        if let text = value["pattern"]?["String"]?.stringValue { return (text, false) }
        if let text = value["pattern"]?["Regex"]?.stringValue { return (text, true) }
        throw error("\(location).pattern must be {\"String\": ...} or {\"Regex\": ...}")
    }

    private func readNormalizer(_ value: JSONValue?, at location: String) throws -> [TextNormalizer.Rule] {
        guard let value, value != .null else { return [] }
        let type = try type(of: value, at: location)
        switch type {
        case "Sequence":
            guard let steps = value["normalizers"]?.arrayValue else { throw error("\(location).normalizers is missing") }
            return try steps.enumerated().flatMap { try readNormalizer($1, at: "\(location).normalizers[\($0)]") }
        case "NFC": return [.nfc]
        case "NFD": return [.nfd]
        case "NFKC": return [.nfkc]
        case "NFKD": return [.nfkd]
        case "Lowercase": return [.lowercase]
        case "Prepend":
            guard let prefix = value["prepend"]?.stringValue else { throw error("\(location).prepend is missing") }
            return [.prepend(prefix)]
        case "Replace":
            let (pattern, isRegex) = try pattern(of: value, at: location)
            guard !isRegex else { throw error("\(location): Replace with a regex pattern is not supported") }
            return [.replace(pattern, value["content"]?.stringValue ?? "")]
        default:
            throw error("\(location): normalizer type \"\(type)\" is not supported (supported: Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace)")
        }
    }

    /// The text rewrites, the splits, and whether the words are byte-level.
    private func readPreTokenizer(_ value: JSONValue?, at location: String) throws
        -> (rules: [TextNormalizer.Rule], splits: [SplitRule], byteLevel: Bool) {
        guard let value, value != .null else { return ([], [], false) }
        let type = try type(of: value, at: location)
        switch type {
        case "Sequence":
            guard let steps = value["pretokenizers"]?.arrayValue else {
                throw error("\(location).pretokenizers is missing")
            }
            var result: (rules: [TextNormalizer.Rule], splits: [SplitRule], byteLevel: Bool) = ([], [], false)
            for (index, step) in steps.enumerated() {
                let part = try readPreTokenizer(step, at: "\(location).pretokenizers[\(index)]")
                result.rules += part.rules
                result.splits += part.splits
                result.byteLevel = result.byteLevel || part.byteLevel
            }
            return result
        case "ByteLevel":
            let rules: [TextNormalizer.Rule] = value["add_prefix_space"] == .bool(true) ? [.prefixSpace] : []
            let splits: [SplitRule] = value["use_regex"] == .bool(false) ? [] : [.gpt2]
            return (rules, splits, true)
        case "Split":
            let (pattern, isRegex) = try pattern(of: value, at: location)
            let behavior = value["behavior"]?.stringValue ?? "Isolated"
            guard isRegex, behavior == "Isolated", value["invert"] != .bool(true),
                  let rule = Self.knownPatterns[pattern] else {
                throw error("\(location): Split with pattern \(pattern.debugDescription) and behavior \(behavior) is not supported; supported are the GPT-2, Llama 3 and Qwen2 regexes, Isolated, not inverted")
            }
            return ([], [rule], false)
        case "Digits":
            return ([], [.digits(individually: value["individual_digits"] == .bool(true))], false)
        case "Metaspace":
            let replacement = value["replacement"]?.stringValue ?? "▁"
            let scheme: TextNormalizer.PrependScheme
            switch value["prepend_scheme"]?.stringValue {
            case "always": scheme = .always
            case "first": scheme = .first
            case "never": scheme = .never
            case nil: scheme = value["add_prefix_space"] == .bool(false) ? .never : .always
            case let other?: throw error("\(location).prepend_scheme \"\(other)\" is not one of always, first, never")
            }
            guard replacement.unicodeScalars.count == 1, replacement.unicodeScalars.first!.value == Scalars.metaspace
            else {
                throw error("\(location): Metaspace replacement \(replacement.debugDescription) is not supported; only \"▁\" is")
            }
            let splits: [SplitRule] = value["split"] == .bool(false) ? [] : [.beforeMetaspace]
            return ([.metaspace(replacement: replacement, scheme: scheme)], splits, false)
        default:
            throw error("\(location): pre-tokenizer type \"\(type)\" is not supported (supported: Sequence, ByteLevel, Split, Digits, Metaspace)")
        }
    }

    /// The split patterns this package implements by hand, by their regex text.
    static let knownPatterns: [String: SplitRule] = [
        #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#: .gpt2,
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#:
            .llama3(maxDigits: 3),
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#:
            .llama3(maxDigits: 1),
    ]

    private func readDecoder(_ value: JSONValue?, at location: String, into spelling: inout TokenPieces.Spelling) throws {
        guard let value, value != .null else { return }
        let type = try type(of: value, at: location)
        switch type {
        case "Sequence":
            guard let steps = value["decoders"]?.arrayValue else { throw error("\(location).decoders is missing") }
            for (index, step) in steps.enumerated() {
                try readDecoder(step, at: "\(location).decoders[\(index)]", into: &spelling)
            }
        case "ByteLevel":
            spelling.byteLevel = true
        case "ByteFallback":
            spelling.byteFallback = true
        case "Fuse":
            break  // decoding already joins all tokens into one text
        case "Replace":
            let (pattern, isRegex) = try pattern(of: value, at: location)
            guard !isRegex else { throw error("\(location): Replace with a regex pattern is not supported") }
            spelling.replacements.append(.init(pattern: pattern, content: value["content"]?.stringValue ?? ""))
        case "Strip":
            let start = value["start"]?.intValue ?? 0, stop = value["stop"]?.intValue ?? 0
            guard value["content"]?.stringValue == " ", start <= 1, stop == 0 else {
                throw error("\(location): only Strip of one leading space is supported (content \" \", start 1, stop 0)")
            }
            spelling.dropsLeadingSpace = spelling.dropsLeadingSpace || start == 1
        case "Metaspace":
            let replacement = value["replacement"]?.stringValue ?? "▁"
            spelling.replacements.append(.init(pattern: replacement, content: " "))
            let scheme = value["prepend_scheme"]?.stringValue
            let prepends = scheme.map { $0 != "never" } ?? (value["add_prefix_space"] != .bool(false))
            spelling.dropsLeadingSpace = spelling.dropsLeadingSpace || prepends
        default:
            throw error("\(location): decoder type \"\(type)\" is not supported (supported: Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace)")
        }
    }

    /// The ids put before and after a single sequence.
    private func readPostProcessor(_ value: JSONValue?, at location: String, tokenIds: [TokenKey: Int]) throws
        -> (prefix: [Int], suffix: [Int]) {
        guard let value, value != .null else { return ([], []) }
        let type = try type(of: value, at: location)
        switch type {
        case "Sequence":
            guard let steps = value["processors"]?.arrayValue else { throw error("\(location).processors is missing") }
            var result: (prefix: [Int], suffix: [Int]) = ([], [])
            for (index, step) in steps.enumerated() {
                let part = try readPostProcessor(step, at: "\(location).processors[\(index)]", tokenIds: tokenIds)
                result.prefix += part.prefix
                result.suffix = part.suffix + result.suffix
            }
            return result
        case "ByteLevel":
            return ([], [])
        case "TemplateProcessing":
            guard let items = value["single"]?.arrayValue else { throw error("\(location).single is missing") }
            var prefix: [Int] = [], suffix: [Int] = []
            var seenSequence = false
            for (index, item) in items.enumerated() {
                if item["Sequence"] != nil {
                    seenSequence = true
                    continue
                }
                guard let name = item["SpecialToken"]?["id"]?.stringValue else {
                    throw error("\(location).single[\(index)] is neither a Sequence nor a SpecialToken")
                }
                let ids = value["special_tokens"]?[name]?["ids"]?.arrayValue?.compactMap(\.intValue)
                    ?? tokenIds[TokenKey(name)].map { [$0] }
                guard let ids else { throw error("\(location): special token \"\(name)\" is not in the vocabulary") }
                if seenSequence { suffix += ids } else { prefix += ids }
            }
            return (prefix, suffix)
        case "BertProcessing", "RobertaProcessing":
            guard let cls = value["cls"]?.arrayValue, cls.count == 2, let clsId = cls[1].intValue,
                  let sep = value["sep"]?.arrayValue, sep.count == 2, let sepId = sep[1].intValue else {
                throw error("\(location) needs \"cls\" and \"sep\" as [token, id]")
            }
            return ([clsId], [sepId])
        default:
            throw error("\(location): post-processor type \"\(type)\" is not supported (supported: Sequence, ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing)")
        }
    }
}
