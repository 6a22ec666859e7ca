/// A BPE vocabulary with its merge rules: turns one word (a piece left by the pre-tokenizer) into token ids.
struct BPEModel {
    /// What a word is spelled in before merging.
    enum Units: Equatable {
        /// One starting symbol per UTF-8 byte: the token written as that byte's `ByteLevelAlphabet` character
        /// (GPT-2, Llama 3, SmolLM, Qwen2).
        case bytes
        /// One starting symbol per Unicode scalar (SentencePiece-style vocabularies: Llama 2, Mistral). A scalar
        /// without a token of its own becomes its UTF-8 bytes as `<0xNN>` tokens when the vocabulary has them, and
        /// the unknown token otherwise.
        case scalars
    }

    /// How words are spelled.
    let units: Units
    /// The merge rules.
    let merges: MergeTable
    /// The id of every token, by its exact text.
    let tokenIds: [TokenKey: Int]
    /// For `.bytes`: the id of each byte's one-character token, -1 where the vocabulary lacks it.
    let idForByte: [Int32]
    /// For `.scalars`: the id of each scalar that is a token by itself.
    let idForScalar: [UInt32: Int32]
    /// The 256 `<0xNN>` tokens in byte order, when the vocabulary has all of them and byte fallback is on.
    let byteFallbackIds: [Int32]?
    /// The token for a unit the vocabulary cannot spell; without one such units are dropped, as Hugging Face does.
    let unknownId: Int32?
    /// Whether consecutive unknown units collapse into one unknown token (`fuse_unk`).
    let fusesUnknown: Bool
    /// Whether a word that is itself a token is emitted whole, before any merging (`ignore_merges`, Llama 3).
    let ignoresMergesForKnownWords: Bool

    init(units: Units, merges: MergeTable, tokenIds: [TokenKey: Int], byteFallback: Bool, unknownId: Int?,
         fusesUnknown: Bool, ignoresMergesForKnownWords: Bool) {
        self.units = units
        self.merges = merges
        self.tokenIds = tokenIds
        self.unknownId = unknownId.map { Int32($0) }
        self.fusesUnknown = fusesUnknown
        self.ignoresMergesForKnownWords = ignoresMergesForKnownWords
        var idForByte = [Int32](repeating: -1, count: 256)
        var idForScalar: [UInt32: Int32] = [:]
        switch units {
        case .bytes:
            for byte in 0..<256 {
                if let id = tokenIds[TokenKey(String(ByteLevelAlphabet.scalarForByte[byte]))] {
                    idForByte[byte] = Int32(id)
                }
            }
        case .scalars:
            for (token, id) in tokenIds {
                let scalars = token.text.unicodeScalars
                if let first = scalars.first, scalars.count == 1 { idForScalar[first.value] = Int32(id) }
            }
        }
        self.idForByte = idForByte
        self.idForScalar = idForScalar
        if byteFallback {
            let ids = (0..<256).compactMap { tokenIds[TokenKey(Self.byteTokenName($0))].map { Int32($0) } }
            byteFallbackIds = ids.count == 256 ? ids : nil
        } else {
            byteFallbackIds = nil
        }
    }

    /// The name of the byte-fallback token for `byte`: `<0x0A>` for a newline.
    static func byteTokenName(_ byte: Int) -> String {
        let digits = Array("0123456789ABCDEF")
        return "<0x" + String(digits[byte >> 4]) + String(digits[byte & 15]) + ">"
    }

    /// Appends the ids of the word `range` of `text` to `output`.
    func encode(word range: Range<Int>, of text: ScalarText, into output: inout [Int32]) {
        if ignoresMergesForKnownWords, let id = tokenIds[vocabularySpelling(of: range, in: text)] {
            output.append(Int32(id))
            return
        }
        var symbols: [Int32] = []
        symbols.reserveCapacity(text.byteOffsets[range.upperBound] - text.byteOffsets[range.lowerBound])
        switch units {
        case .bytes:
            for byte in text.bytes(of: range) {
                let id = idForByte[Int(byte)]
                if id >= 0 { symbols.append(id) } else { appendUnknown(to: &symbols) }
            }
        case .scalars:
            for index in range {
                if let id = idForScalar[text.scalars[index]] {
                    symbols.append(id)
                } else if let byteIds = byteFallbackIds {
                    for byte in text.bytes(of: index..<(index + 1)) { symbols.append(byteIds[Int(byte)]) }
                } else {
                    appendUnknown(to: &symbols)
                }
            }
        }
        merges.apply(to: &symbols)
        output.append(contentsOf: symbols)
    }

    private func appendUnknown(to symbols: inout [Int32]) {
        guard let unknownId else { return }
        if fusesUnknown && symbols.last == unknownId { return }
        symbols.append(unknownId)
    }

    /// The word as the vocabulary writes it (in the byte alphabet for byte-level vocabularies).
    private func vocabularySpelling(of range: Range<Int>, in text: ScalarText) -> TokenKey {
        let bytes = text.bytes(of: range)
        return TokenKey(units == .bytes ? ByteLevelAlphabet.encode(bytes) : String(decoding: bytes, as: UTF8.self))
    }
}
