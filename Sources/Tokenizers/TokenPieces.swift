/// What each token id turns back into when decoding, worked out once per vocabulary: the token's bytes, and
/// whether it is special.
struct TokenPieces {
    /// How ordinary tokens are spelled (added tokens always decode to their own text).
    struct Spelling: Equatable {
        /// Tokens are written in `ByteLevelAlphabet`; each character stands for one byte.
        var byteLevel = false
        /// Text replacements applied to each token, in order (SentencePiece's "▁" → " ").
        var replacements: [Replacement] = []
        /// Tokens named `<0xNN>` stand for the single byte 0xNN.
        var byteFallback = false
        /// One space at the very start of the decoded text is dropped: the one SentencePiece put in front of the
        /// input when encoding.
        var dropsLeadingSpace = false
    }

    /// One text replacement.
    struct Replacement: Equatable {
        var pattern: String
        var content: String
    }

    /// How the tokens were spelled into bytes.
    let spelling: Spelling
    private let bytes: [UInt8]
    /// Where each id's bytes start in `bytes`; one more entry than there are ids.
    private let starts: [Int]
    /// Whether each id is special (skipped on request).
    private let isSpecial: [Bool]

    init(tokens: [String], addedTokens: [AddedToken], specialIds: Set<Int>, spelling: Spelling) {
        self.spelling = spelling
        var added: [Int: String] = [:]
        for token in addedTokens { added[token.id] = token.content }
        var bytes: [UInt8] = []
        var starts: [Int] = []
        starts.reserveCapacity(tokens.count + 1)
        for (id, token) in tokens.enumerated() {
            starts.append(bytes.count)
            if let content = added[id] {
                bytes.append(contentsOf: content.utf8)
            } else {
                Self.appendBytes(of: token, spelling: spelling, to: &bytes)
            }
        }
        starts.append(bytes.count)
        self.bytes = bytes
        self.starts = starts
        isSpecial = (0..<tokens.count).map { specialIds.contains($0) }
    }

    /// Whether `id` is a special token.
    func isSpecial(_ id: Int) -> Bool { id >= 0 && id < isSpecial.count && isSpecial[id] }

    /// How many bytes `id` decodes to (0 outside the vocabulary).
    func byteCount(of id: Int) -> Int { id >= 0 && id < isSpecial.count ? starts[id + 1] - starts[id] : 0 }

    /// The text of `ids`; ids outside the vocabulary are left out. Byte sequences that are not valid UTF-8 (a
    /// character cut between two calls, say) become U+FFFD.
    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(ids.count * 4)
        for id in ids where id >= 0 && id < isSpecial.count {
            if skipSpecialTokens && isSpecial[id] { continue }
            output.append(contentsOf: bytes[starts[id]..<starts[id + 1]])
        }
        var text = output[...]
        if spelling.dropsLeadingSpace && text.first == UInt8(ascii: " ") { text = text.dropFirst() }
        return String(decoding: text, as: UTF8.self)
    }

    private static func appendBytes(of token: String, spelling: Spelling, to bytes: inout [UInt8]) {
        if spelling.byteFallback, let byte = byteValue(ofFallbackToken: token) {
            bytes.append(byte)
            return
        }
        var text = token
        for replacement in spelling.replacements where !replacement.pattern.isEmpty {
            text = text.replacingAll(replacement.pattern, with: replacement.content)
        }
        guard spelling.byteLevel else {
            bytes.append(contentsOf: text.utf8)
            return
        }
        for scalar in text.unicodeScalars {
            // A character outside the alphabet (a vocabulary entry that was never byte-level) keeps its own bytes.
            if let byte = ByteLevelAlphabet.byte(for: scalar) { bytes.append(byte) } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
    }

    /// 0xNN for a token spelled exactly `<0xNN>` (two hexadecimal digits), else nil.
    static func byteValue(ofFallbackToken token: String) -> UInt8? {
        let utf8 = Array(token.utf8)
        guard utf8.count == 6, utf8[0] == UInt8(ascii: "<"), utf8[1] == UInt8(ascii: "0"),
              utf8[2] == UInt8(ascii: "x"), utf8[5] == UInt8(ascii: ">") else { return nil }
        guard let high = hexValue(utf8[3]), let low = hexValue(utf8[4]) else { return nil }
        return high << 4 | low
    }

    private static func hexValue(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return digit - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return digit - UInt8(ascii: "A") + 10
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return digit - UInt8(ascii: "a") + 10
        default: return nil
        }
    }
}
