extension Tokenizer {
    /// Builds a tokenizer from a GGUF's vocabulary (its `tokenizer.ggml.*` metadata).
    ///
    /// - `ggufModel`: `tokenizer.ggml.model`; "gpt2" (byte-level BPE with `merges`) or "llama" (SentencePiece:
    ///   the concatenation with the highest score merges first, and characters outside the vocabulary become their
    ///   `<0xNN>` byte tokens).
    /// - `pre`: `tokenizer.ggml.pre`, which names the word-splitting pattern of "gpt2" vocabularies ("smollm",
    ///   "gpt-2", "llama-bpe", "qwen2", "default", ...).
    /// - `tokenTypes`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte. Unknown, control and
    ///   user-defined tokens are matched whole in the text; unknown and control ones are special.
    /// - `addBOS` (`tokenizer.ggml.add_bos_token`): whether `encode(_:addSpecialTokens: true)` prepends BOS.
    /// - `addSpacePrefix` (`tokenizer.ggml.add_space_prefix`, "llama" only): whether a "▁" goes in front of the
    ///   text and after every added token, and one leading space is dropped when decoding.
    /// - `file`: the GGUF file the vocabulary comes from, named by its errors.
    public convenience init(ggufModel: String, pre: String?, tokens: [String], tokenTypes: [Int]?, scores: [Float]?,
                            merges: [String]?, bosTokenId: Int?, eosTokenId: Int?, unknownTokenId: Int?,
                            paddingTokenId: Int?, addBOS: Bool, addSpacePrefix: Bool, file: String? = nil) throws {
        let reader = GGUFVocabularyReader(model: ggufModel, tokens: tokens, tokenTypes: tokenTypes, scores: scores,
                                          file: file)
        try self.init(parts: reader.parts(pre: pre, merges: merges, bosTokenId: bosTokenId, eosTokenId: eosTokenId,
                                          unknownTokenId: unknownTokenId, paddingTokenId: paddingTokenId,
                                          addBOS: addBOS, addSpacePrefix: addSpacePrefix))
    }
}

/// Turns the arrays of a GGUF's tokenizer metadata into a tokenizer's parts, following llama.cpp's reading of them.
struct GGUFVocabularyReader {
    let model: String
    let tokens: [String]
    let tokenTypes: [Int]?
    let scores: [Float]?
    let file: String?

    /// GGUF token types, as llama.cpp numbers them.
    enum TokenType {
        static let normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    var source: String { GGUFVocabulary.source(file: file, model: model, tokenCount: tokens.count) }

    func error(_ message: String) -> TokenizerError { TokenizerError(source: source, message: message) }

    func parts(pre: String?, merges: [String]?, bosTokenId: Int?, eosTokenId: Int?, unknownTokenId: Int?,
               paddingTokenId: Int?, addBOS: Bool, addSpacePrefix: Bool) throws -> Tokenizer.Parts {
        guard !tokens.isEmpty else { throw error("tokenizer.ggml.tokens is empty") }
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw error("tokenizer.ggml.token_type has \(tokenTypes.count) entries, expected one per token (\(tokens.count))")
        }
        if let scores, scores.count != tokens.count {
            throw error("tokenizer.ggml.scores has \(scores.count) entries, expected one per token (\(tokens.count))")
        }
        for (key, id) in [("bos", bosTokenId), ("eos", eosTokenId), ("unknown", unknownTokenId),
                          ("padding", paddingTokenId)] {
            if let id, id < 0 || id >= tokens.count {
                throw error("tokenizer.ggml.\(key)_token_id is \(id), outside the \(tokens.count)-token vocabulary")
            }
        }

        // llama.cpp keeps the last id when a text repeats, comparing texts byte for byte.
        var tokenIds: [TokenKey: Int] = [:]
        tokenIds.reserveCapacity(tokens.count)
        for (id, token) in tokens.enumerated() { tokenIds[TokenKey(token)] = id }

        // Without types, the named special tokens are the only ones to match whole.
        let types = tokenTypes ?? tokens.indices.map { id in
            [bosTokenId, eosTokenId, unknownTokenId, paddingTokenId].contains(id) ? TokenType.control : TokenType.normal
        }
        let matchedTypes = [TokenType.unknown, TokenType.control, TokenType.userDefined]
        let addedTokens = tokens.indices.filter { matchedTypes.contains(types[$0]) }.map { id in
            AddedToken(id: id, content: tokens[id], isSpecial: types[id] != TokenType.userDefined)
        }
        if let long = addedTokens.first(where: { $0.content.utf8.count > AddedToken.maximumBytes }) {
            throw error("token \(long.id), matched whole in text (a control or user-defined token), is " +
                        "\(long.content.utf8.count) bytes long; at most \(AddedToken.maximumBytes) are accepted")
        }
        let specialIds = Set(addedTokens.filter(\.isSpecial).map(\.id))

        let bpe: BPEModel
        let normalizer: TextNormalizer
        let splitRules: [SplitRule]
        var spelling = TokenPieces.Spelling()
        switch model {
        case "gpt2":
            guard let merges else { throw error("a \"gpt2\" vocabulary needs tokenizer.ggml.merges") }
            let table = try mergeTable(fromMerges: merges, tokenIds: tokenIds)
            bpe = BPEModel(units: .bytes, merges: table, tokenIds: tokenIds, byteFallback: false,
                           unknownId: unknownTokenId, fusesUnknown: false, ignoresMergesForKnownWords: false)
            normalizer = TextNormalizer(rules: [])
            splitRules = try Self.splitRules(forPre: pre ?? "default", error: error)
            spelling.byteLevel = true
        case "llama":
            let table: MergeTable
            if let merges {
                table = try mergeTable(fromMerges: merges, tokenIds: tokenIds)
            } else {
                guard let scores else { throw error("a \"llama\" vocabulary needs tokenizer.ggml.scores") }
                table = try mergeTable(fromScores: scores, tokenIds: tokenIds)
            }
            bpe = BPEModel(units: .scalars, merges: table, tokenIds: tokenIds, byteFallback: true,
                           unknownId: unknownTokenId, fusesUnknown: false, ignoresMergesForKnownWords: false)
            // llama.cpp puts a space before the text and after every added token, then writes spaces as "▁".
            normalizer = TextNormalizer(rules: [.replace(" ", "▁")] + (addSpacePrefix ? [.prepend("▁")] : []))
            splitRules = []
            spelling.replacements = [.init(pattern: "▁", content: " ")]
            spelling.byteFallback = true
            spelling.dropsLeadingSpace = addSpacePrefix
        default:
            throw error("tokenizer.ggml.model \"\(model)\" is not supported (supported: gpt2, llama)")
        }

        let prefixIds = addBOS ? bosTokenId.map { [$0] } ?? [] : []
        return Tokenizer.Parts(
            tokens: tokens.map { Optional($0) }, model: bpe, addedTokens: addedTokens, normalizer: normalizer,
            splitRules: splitRules, spelling: spelling, specialIds: specialIds, prefixIds: prefixIds, suffixIds: [],
            bosTokenId: bosTokenId, eosTokenId: eosTokenId, padTokenId: paddingTokenId)
    }

    /// Merges written "left right", ranked by position.
    private func mergeTable(fromMerges merges: [String], tokenIds: [TokenKey: Int]) throws -> MergeTable {
        var table = MergeTable()
        for (rank, merge) in merges.enumerated() {
            guard let (left, right) = TokenizerJSONReader.splitMerge(merge) else {
                throw error("tokenizer.ggml.merges[\(rank)] is \(merge.debugDescription), expected \"left right\"")
            }
            guard let leftId = tokenIds[TokenKey(left)], let rightId = tokenIds[TokenKey(right)],
                  let result = tokenIds[TokenKey(left + right)] else {
                throw error("tokenizer.ggml.merges[\(rank)] joins \"\(left)\" and \"\(right)\", but it or its result is not in the vocabulary")
            }
            table.add(left: Int32(leftId), right: Int32(rightId), rank: Int32(rank), result: Int32(result))
        }
        return table
    }

    /// SentencePiece has no merge list: llama.cpp joins any two adjacent pieces whose concatenation is a token,
    /// the highest-scoring concatenation first and the leftmost among equal scores. The same rules as a merge
    /// table: every way of cutting a token into two tokens is a rule, ranked by the token's score, and tokens with
    /// equal scores share a rank so that position decides between them.
    ///
    /// Only cuts whose two halves have the length of some token are looked up, so a long token costs nothing
    /// unless the vocabulary holds pieces of both lengths; every lookup spells and hashes both halves, and those
    /// are counted against `maximumCutScalars` (one 200,000-scalar token kept `tokenize` busy for minutes).
    func mergeTable(fromScores scores: [Float], tokenIds: [TokenKey: Int]) throws -> MergeTable {
        // A NaN score is treated as the lowest, so it cannot break the ordering.
        let cleaned = scores.map { $0.isNaN ? -Float.infinity : $0 }
        let distinct = Array(Set(cleaned)).sorted(by: >)
        var rankOfScore: [Float: Int32] = [:]
        for (rank, score) in distinct.enumerated() { rankOfScore[score] = Int32(rank) }
        let lengths = Set(tokens.map { $0.unicodeScalars.count })
        var table = MergeTable()
        var work = 0
        for (id, token) in tokens.enumerated() {
            let count = token.unicodeScalars.count
            guard count >= 2, let resultId = tokenIds[TokenKey(token)], resultId == id else { continue }
            let rank = rankOfScore[cleaned[id]]!
            let bytes = Array(token.utf8)
            // Where each scalar starts among the bytes: the halves are made from byte slices, which is quick.
            var starts: [Int] = []
            starts.reserveCapacity(count)
            for (offset, byte) in bytes.enumerated() where byte & 0xC0 != 0x80 { starts.append(offset) }
            for cut in 1..<count where lengths.contains(cut) && lengths.contains(count - cut) {
                work += count
                guard work <= Self.maximumCutScalars else {
                    throw error("tokenizer.ggml.tokens: finding the merges of this vocabulary (it has no " +
                                "tokenizer.ggml.merges, so every token is cut into two tokens every way it can " +
                                "be) takes more than \(Self.maximumCutScalars) scalars of lookups, reached at " +
                                "token \(id) (\(count) scalars long); give the file a merge list")
                }
                let left = TokenKey(String(decoding: bytes[..<starts[cut]], as: UTF8.self))
                let right = TokenKey(String(decoding: bytes[starts[cut]...], as: UTF8.self))
                if let leftId = tokenIds[left], let rightId = tokenIds[right] {
                    table.add(left: Int32(leftId), right: Int32(rightId), rank: rank, result: Int32(resultId))
                }
            }
        }
        return table
    }

    /// The most scalars the cuts of a vocabulary without merges may spell out (real ones take a few million).
    static let maximumCutScalars = 1 << 27

    /// The word-splitting rules for a `tokenizer.ggml.pre` name.
    ///
    /// "smollm" (and the other GPT-2-pattern names) get exactly the GPT-2 pattern of the Hugging Face tokenizer.json
    /// they were converted from. llama.cpp runs an extra `\p{N}` split first for some of them; with a vocabulary
    /// that has no token mixing digits with other characters (SmolLM2's) that changes only a run of spaces before a
    /// digit, where it departs from the reference tokenizer, so it is left out.
    static func splitRules(forPre pre: String, error: (String) -> TokenizerError) throws -> [SplitRule] {
        switch pre {
        case "default", "gpt2", "gpt-2", "smollm", "starcoder", "refact", "codeshell", "phi-2", "olmo",
             "roberta-bpe", "exaone", "minerva-7b":
            return [.gpt2]
        case "llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe":
            return [.llama3(maxDigits: 3)]
        case "qwen2", "deepseek-r1-qwen":
            return [.llama3(maxDigits: 1)]
        default:
            throw error("tokenizer.ggml.pre \"\(pre)\" is not supported (supported: default, gpt-2, smollm, starcoder, llama-bpe, qwen2 and their aliases)")
        }
    }
}
