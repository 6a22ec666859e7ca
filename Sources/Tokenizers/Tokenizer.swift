/// Text ↔ token ids with a BPE vocabulary, read from a Hugging Face `tokenizer.json` or from a GGUF's tokenizer
/// metadata.
///
/// Encoding runs in stages, each a separate type: added tokens are found in the raw text (`AddedTokenMatcher`) and
/// never split; each stretch of text between them is rewritten (`TextNormalizer`), cut into words
/// (`SplitRule`), and each word is merged into tokens (`BPEModel`, `MergeTable`), with results remembered per word
/// (`WordCache`). Decoding concatenates each token's bytes (`TokenPieces`).
///
/// A tokenizer is immutable apart from its word cache, which is locked, so one instance can serve several threads.
public final class Tokenizer: @unchecked Sendable {
    /// Everything a tokenizer is made of, as a reader assembles it from a file.
    struct Parts {
        /// The text of each id; nil for ids the file leaves unused.
        var tokens: [String?]
        var model: BPEModel
        var addedTokens: [AddedToken]
        var normalizer: TextNormalizer
        var splitRules: [SplitRule]
        var spelling: TokenPieces.Spelling
        /// Ids left out by `decode(_:skipSpecialTokens: true)`.
        var specialIds: Set<Int>
        /// Ids put before and after the text by `encode(_:addSpecialTokens: true)`.
        var prefixIds: [Int]
        var suffixIds: [Int]
        var bosTokenId: Int?
        var eosTokenId: Int?
        var padTokenId: Int?
    }

    private let tokens: [String?]
    private let model: BPEModel
    private let matcher: AddedTokenMatcher
    private let normalizer: TextNormalizer
    private let splitRules: [SplitRule]
    private let pieces: TokenPieces
    private let prefixIds: [Int]
    private let suffixIds: [Int]
    private let cache = WordCache()

    /// The beginning-of-sequence token, if the vocabulary names one.
    public let bosTokenId: Int?
    /// The end-of-sequence token, if the vocabulary names one.
    public let eosTokenId: Int?
    /// The padding token, if the vocabulary names one.
    public let padTokenId: Int?

    init(parts: Parts) {
        tokens = parts.tokens
        model = parts.model
        matcher = AddedTokenMatcher(tokens: parts.addedTokens)
        normalizer = parts.normalizer
        splitRules = parts.splitRules
        pieces = TokenPieces(tokens: parts.tokens.map { $0 ?? "" }, addedTokens: parts.addedTokens,
                             specialIds: parts.specialIds, spelling: parts.spelling)
        prefixIds = parts.prefixIds
        suffixIds = parts.suffixIds
        bosTokenId = parts.bosTokenId
        eosTokenId = parts.eosTokenId
        padTokenId = parts.padTokenId
    }

    /// The number of token ids (one more than the largest id).
    public var vocabularySize: Int { tokens.count }

    /// Whether `encode(_:addSpecialTokens: true)` puts tokens in front of the text: the BOS token, for the
    /// vocabularies that use one (tokenizer.json: its post-processor template; GGUF: `add_bos_token`).
    public var addsBOS: Bool { !prefixIds.isEmpty }

    /// Whether `encode(_:addSpecialTokens: true)` puts tokens after the text (an EOS token in the tokenizer.json
    /// post-processor template; never for GGUF vocabularies).
    public var addsEOS: Bool { !suffixIds.isEmpty }

    /// The token ids of `text`; with `addSpecialTokens`, wrapped in the tokens the vocabulary adds around a sequence
    /// (see `addsBOS`). Added tokens written in the text (`<|im_start|>`, say) always become their own ids.
    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        var ids: [Int32] = []
        ids.reserveCapacity(text.utf8.count / 3)
        var isStartOfInput = true
        for segment in matcher.segments(of: text) {
            switch segment {
            case .token(let id):
                ids.append(Int32(id))
            case .text(let stretch):
                encode(stretch: stretch, isStartOfInput: isStartOfInput, into: &ids)
            }
            isStartOfInput = false
        }
        let body = ids.map { Int($0) }
        return addSpecialTokens ? prefixIds + body + suffixIds : body
    }

    /// The text of `ids`, optionally without the special tokens. Ids outside the vocabulary are left out.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        pieces.decode(ids, skipSpecialTokens: skipSpecialTokens)
    }

    /// Where each of `ids` ends in the text they decode to, as UTF-8 offsets (the space SentencePiece puts in front
    /// of the input not counted): token `i` spans `ends[i - 1]..<ends[i]`. For encoded text this maps each token
    /// back to the bytes it came from (exactly for byte-level vocabularies).
    public func byteEnds(of ids: [Int]) -> [Int] {
        var ends: [Int] = []
        ends.reserveCapacity(ids.count)
        var offset = 0
        for (i, id) in ids.enumerated() {
            offset += pieces.byteCount(of: id)
            if i == 0, pieces.spelling.dropsLeadingSpace, offset > 0, decode([id]).utf8.count < offset { offset -= 1 }
            ends.append(offset)
        }
        return ends
    }

    /// The id of the token spelled `token` as the vocabulary writes it (byte-level vocabularies write a space as
    /// "Ġ", SentencePiece ones as "▁"), or nil.
    public func id(forToken token: String) -> Int? {
        model.tokenIds[TokenKey(token)]
    }

    /// The token with id `id` as the vocabulary writes it, or nil for an id outside the vocabulary.
    public func token(forId id: Int) -> String? {
        guard id >= 0 && id < tokens.count else { return nil }
        return tokens[id]
    }

    /// Whether `id` is a special token (one `decode(_:skipSpecialTokens: true)` leaves out).
    public func isSpecialToken(_ id: Int) -> Bool { pieces.isSpecial(id) }

    // MARK: - Encoding one stretch of text

    private func encode(stretch: String, isStartOfInput: Bool, into ids: inout [Int32]) {
        let normalized = normalizer.isEmpty ? stretch : normalizer.apply(to: stretch, isStartOfInput: isStartOfInput)
        let text = ScalarText(normalized)
        guard text.count > 0 else { return }
        var words = [0..<text.count]
        for rule in splitRules {
            var pieces: [Range<Int>] = []
            pieces.reserveCapacity(text.count / 3)
            for word in words { rule.split(word, of: text, into: &pieces) }
            words = pieces
        }
        for word in words { encode(word: word, of: text, into: &ids) }
    }

    private func encode(word: Range<Int>, of text: ScalarText, into ids: inout [Int32]) {
        let bytes = text.bytes(of: word)
        guard bytes.count <= WordCache.longestWord else {
            model.encode(word: word, of: text, into: &ids)
            return
        }
        let key = TokenKey(String(decoding: bytes, as: UTF8.self))
        if let cached = cache.ids(for: key) {
            ids.append(contentsOf: cached)
            return
        }
        var wordIds: [Int32] = []
        model.encode(word: word, of: text, into: &wordIds)
        cache.store(wordIds, for: key)
        ids.append(contentsOf: wordIds)
    }
}
