/// A token that is matched whole in the input text before any normalization or BPE (tokenizer.json's
/// `added_tokens`; a GGUF's control and user-defined tokens).
struct AddedToken: Equatable {
    /// The token's id.
    var id: Int
    /// The exact text that stands for the token.
    var content: String
    /// Whether the token is special: left out by `decode(_:skipSpecialTokens: true)`.
    var isSpecial: Bool
    /// Whether white space just before the token is absorbed into it (`lstrip`).
    var stripsLeft = false
    /// Whether white space just after the token is absorbed into it (`rstrip`).
    var stripsRight = false
}

/// Cuts input text into added tokens and the stretches of ordinary text between them.
///
/// The earliest match wins, and among matches starting at one place the longest, as Hugging Face's leftmost-longest
/// automaton does. Matching works on UTF-8 bytes: a token's first byte is never a continuation byte, so a match can
/// only start on a scalar boundary.
struct AddedTokenMatcher {
    /// A piece of the input.
    enum Segment: Equatable {
        /// Ordinary text, to be normalized, split and BPE-encoded.
        case text(String)
        /// An added token, by id.
        case token(Int)
    }

    private let tokens: [AddedToken]
    private let tokenBytes: [[UInt8]]
    /// For each first byte, the tokens starting with it, longest first.
    private let candidatesByFirstByte: [[Int]]

    init(tokens: [AddedToken]) {
        let usable = tokens.filter { !$0.content.isEmpty }
        self.tokens = usable
        tokenBytes = usable.map { Array($0.content.utf8) }
        var candidates = [[Int]](repeating: [], count: 256)
        for (index, bytes) in tokenBytes.enumerated() { candidates[Int(bytes[0])].append(index) }
        let lengths = tokenBytes.map(\.count)
        candidatesByFirstByte = candidates.map { list in list.sorted { lengths[$0] > lengths[$1] } }
    }

    /// True when there are no tokens to look for.
    var isEmpty: Bool { tokens.isEmpty }

    /// `text` as a sequence of ordinary-text stretches (never empty) and added tokens.
    func segments(of text: String) -> [Segment] {
        guard !tokens.isEmpty else { return text.isEmpty ? [] : [.text(text)] }
        let bytes = Array(text.utf8)
        var pieces: [(range: Range<Int>, token: Int?)] = []
        var textStart = 0
        var position = 0
        scan: while position < bytes.count {
            for candidate in candidatesByFirstByte[Int(bytes[position])]
            where matches(tokenBytes[candidate], in: bytes, at: position) {
                if textStart < position { pieces.append((textStart..<position, nil)) }
                let end = position + tokenBytes[candidate].count
                pieces.append((position..<end, candidate))
                position = end
                textStart = end
                continue scan
            }
            position += 1
        }
        if textStart < bytes.count { pieces.append((textStart..<bytes.count, nil)) }

        var texts: [String?] = pieces.map { $0.token == nil ? String(decoding: bytes[$0.range], as: UTF8.self) : nil }
        for (index, piece) in pieces.enumerated() {
            guard let candidate = piece.token else { continue }
            if tokens[candidate].stripsLeft, index > 0, let before = texts[index - 1] {
                texts[index - 1] = Self.trimmingTrailingWhitespace(before)
            }
            if tokens[candidate].stripsRight, index + 1 < pieces.count, let after = texts[index + 1] {
                texts[index + 1] = Self.trimmingLeadingWhitespace(after)
            }
        }
        var segments: [Segment] = []
        for (index, piece) in pieces.enumerated() {
            if let candidate = piece.token {
                segments.append(.token(tokens[candidate].id))
            } else if let text = texts[index], !text.isEmpty {
                segments.append(.text(text))
            }
        }
        return segments
    }

    private func matches(_ token: [UInt8], in bytes: [UInt8], at position: Int) -> Bool {
        guard position + token.count <= bytes.count else { return false }
        for offset in 1..<token.count where bytes[position + offset] != token[offset] { return false }
        return true
    }

    private static func trimmingTrailingWhitespace(_ text: String) -> String {
        var scalars = text.unicodeScalars
        while let last = scalars.last, last.properties.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }

    private static func trimmingLeadingWhitespace(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.drop(while: { $0.properties.isWhitespace })))
    }
}
