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

    /// The longest content accepted, in UTF-8 bytes (real added tokens are a few dozen at most: markers, runs of
    /// spaces). Matching looks this far ahead at each byte of the input, so a token of 10⁵ bytes made encoding
    /// quadratic in the text (10 s for 300 KB).
    static let maximumBytes = 1024
}

/// Cuts input text into added tokens and the stretches of ordinary text between them.
///
/// The earliest match wins, and among matches starting at one place the longest, as Hugging Face's leftmost-longest
/// automaton does. Matching works on UTF-8 bytes: a token's first byte is never a continuation byte, so a match can
/// only start on a scalar boundary. The tokens are held as a trie of their bytes, so each position of the input
/// costs at most the longest token's length, however many tokens there are (trying each token that starts with
/// the byte made 80,000 added tokens take 21 s for 360 KB of text).
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
    /// The trie: `children[node << 8 | byte]` is the node `byte` leads to from `node` (the root is node 0).
    private let children: [Int: Int]
    /// For each node, the token whose bytes end there (the first of several with the same content), if any.
    private let tokenEnding: [Int?]

    init(tokens: [AddedToken]) {
        let usable = tokens.filter { !$0.content.isEmpty }
        self.tokens = usable
        tokenBytes = usable.map { Array($0.content.utf8) }
        var children: [Int: Int] = [:]
        var tokenEnding: [Int?] = [nil]
        for (index, bytes) in tokenBytes.enumerated() {
            var node = 0
            for byte in bytes {
                let key = node << 8 | Int(byte)
                if let next = children[key] {
                    node = next
                } else {
                    children[key] = tokenEnding.count
                    node = tokenEnding.count
                    tokenEnding.append(nil)
                }
            }
            if tokenEnding[node] == nil { tokenEnding[node] = index }
        }
        self.children = children
        self.tokenEnding = tokenEnding
    }

    /// The longest token whose bytes start at `position`, if any.
    private func longestMatch(in bytes: [UInt8], at position: Int) -> Int? {
        var node = 0, found: Int?
        var p = position
        while p < bytes.count, let next = children[node << 8 | Int(bytes[p])] {
            node = next
            p += 1
            if let token = tokenEnding[node] { found = token }
        }
        return found
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
        while position < bytes.count {
            guard let candidate = longestMatch(in: bytes, at: position) else {
                position += 1
                continue
            }
            if textStart < position { pieces.append((textStart..<position, nil)) }
            let end = position + tokenBytes[candidate].count
            pieces.append((position..<end, candidate))
            position = end
            textStart = end
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

    private static func trimmingTrailingWhitespace(_ text: String) -> String {
        var scalars = text.unicodeScalars
        while let last = scalars.last, last.properties.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }

    private static func trimmingLeadingWhitespace(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.drop(while: { $0.properties.isWhitespace })))
    }
}
