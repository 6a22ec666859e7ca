/// One way of cutting text into words before BPE runs on each word (a pre-tokenizer step). Several rules apply in
/// order, each to every piece the previous one left.
///
/// The regex patterns of the Hugging Face and llama.cpp pre-tokenizers are implemented by hand over the classified
/// scalars of a `ScalarText`: one forward pass, no backtracking engine, and the `(?!\S)` look-ahead handled exactly.
/// Each piece is matched as if it were the whole text, as the regex is run on each piece separately.
enum SplitRule: Equatable {
    /// GPT-2's pattern, used by GPT-2, SmolLM and StarCoder style byte-level tokenizers:
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// Llama 3's pattern (`maxDigits` 3) and Qwen2's (`maxDigits` 1):
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3(maxDigits: Int)
    /// Numbers apart from the rest: every digit alone, or each run of digits (the `Digits` pre-tokenizer).
    case digits(individually: Bool)
    /// A new piece before every "▁" (the splitting half of the `Metaspace` pre-tokenizer).
    case beforeMetaspace

    /// Appends the pieces of `range` (scalar indices of `text`) to `pieces`, in order, covering all of `range`.
    func split(_ range: Range<Int>, of text: ScalarText, into pieces: inout [Range<Int>]) {
        var start = range.lowerBound
        while start < range.upperBound {
            let end: Int
            switch self {
            case .gpt2: end = gpt2PieceEnd(from: start, before: range.upperBound, in: text)
            case .llama3(let maxDigits):
                end = llama3PieceEnd(from: start, before: range.upperBound, in: text, maxDigits: maxDigits)
            case .digits(let individually):
                end = digitsPieceEnd(from: start, before: range.upperBound, in: text, individually: individually)
            case .beforeMetaspace:
                var next = start + 1
                while next < range.upperBound && text.scalars[next] != Scalars.metaspace { next += 1 }
                end = next
            }
            pieces.append(start..<end)
            start = end
        }
    }

    // MARK: - The patterns

    private func gpt2PieceEnd(from start: Int, before limit: Int, in text: ScalarText) -> Int {
        let scalars = text.scalars, kinds = text.kinds
        if let end = contractionEnd(from: start, before: limit, in: text, ignoringCase: false) { return end }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a leading space (U+0020 only) joins the run after it.
        var runStart = start
        if scalars[start] == Scalars.space && start + 1 < limit && kinds[start + 1] != .space { runStart = start + 1 }
        let kind = kinds[runStart]
        if kind != .space { return runEnd(of: kind, from: runStart, before: limit, in: text) }
        return whitespaceEnd(from: start, before: limit, in: text)
    }

    private func llama3PieceEnd(from start: Int, before limit: Int, in text: ScalarText, maxDigits: Int) -> Int {
        let scalars = text.scalars, kinds = text.kinds
        if let end = contractionEnd(from: start, before: limit, in: text, ignoringCase: true) { return end }
        let first = scalars[start], kind = kinds[start]
        // `[^\r\n\p{L}\p{N}]?\p{L}+`: one scalar that is not a line break, letter or number may lead a word.
        if kind == .letter { return runEnd(of: .letter, from: start, before: limit, in: text) }
        if kind != .number && !Scalars.isLineBreak(first) && start + 1 < limit && kinds[start + 1] == .letter {
            return runEnd(of: .letter, from: start + 1, before: limit, in: text)
        }
        // `\p{N}{1,3}`
        if kind == .number {
            var end = start + 1
            while end < limit && end - start < maxDigits && kinds[end] == .number { end += 1 }
            return end
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        var runStart = start
        if first == Scalars.space && start + 1 < limit && kinds[start + 1] == .other { runStart = start + 1 }
        if kinds[runStart] == .other {
            var end = runEnd(of: .other, from: runStart, before: limit, in: text)
            while end < limit && Scalars.isLineBreak(scalars[end]) { end += 1 }
            return end
        }
        // `\s*[\r\n]+`: backtracking leaves the longest stretch of the white-space run that ends in a line break.
        let spaceEnd = runEnd(of: .space, from: start, before: limit, in: text)
        var lastBreak = spaceEnd - 1
        while lastBreak >= start && !Scalars.isLineBreak(scalars[lastBreak]) { lastBreak -= 1 }
        if lastBreak >= start { return lastBreak + 1 }
        return whitespaceEnd(from: start, before: limit, in: text)
    }

    private func digitsPieceEnd(from start: Int, before limit: Int, in text: ScalarText, individually: Bool) -> Int {
        let isNumber = text.kinds[start] == .number
        if isNumber && individually { return start + 1 }
        var end = start + 1
        while end < limit && (text.kinds[end] == .number) == isNumber { end += 1 }
        return end
    }

    // MARK: - Shared pieces of the patterns

    /// `'s|'t|'re|'ve|'m|'ll|'d` at `start`, optionally without regard to case: the end of the match, or nil.
    private func contractionEnd(from start: Int, before limit: Int, in text: ScalarText, ignoringCase: Bool) -> Int? {
        let scalars = text.scalars
        guard scalars[start] == Scalars.apostrophe, start + 1 < limit else { return nil }
        func letter(_ index: Int) -> UInt32 {
            let value = scalars[index]
            // Only ASCII letters take part, so folding case is setting the 0x20 bit of A–Z.
            if ignoringCase && value >= 0x41 && value <= 0x5A { return value | 0x20 }
            return value
        }
        switch letter(start + 1) {
        case Scalars.s, Scalars.t, Scalars.m, Scalars.d: return start + 2
        case Scalars.r, Scalars.v:
            return start + 2 < limit && letter(start + 2) == Scalars.e ? start + 3 : nil
        case Scalars.l:
            return start + 2 < limit && letter(start + 2) == Scalars.l ? start + 3 : nil
        default: return nil
        }
    }

    /// `\s+(?!\S)|\s+` at `start`, which holds white space. The greedy run backs off by one scalar when a
    /// non-space follows, so that last space can lead the next word; a single space before a non-space stays
    /// alone through the plain `\s+`.
    private func whitespaceEnd(from start: Int, before limit: Int, in text: ScalarText) -> Int {
        let end = runEnd(of: .space, from: start, before: limit, in: text)
        if end == limit || end - start == 1 { return end }
        return end - 1
    }

    /// The end of the run of scalars of class `kind` that starts at `start`.
    @inline(__always)
    private func runEnd(of kind: ScalarKind, from start: Int, before limit: Int, in text: ScalarText) -> Int {
        var end = start + 1
        while end < limit && text.kinds[end] == kind { end += 1 }
        return end
    }
}

/// The scalar values the patterns name.
enum Scalars {
    static let space: UInt32 = 0x20
    static let apostrophe: UInt32 = 0x27
    static let carriageReturn: UInt32 = 0x0D
    static let lineFeed: UInt32 = 0x0A
    /// "▁" (U+2581), SentencePiece's stand-in for a space.
    static let metaspace: UInt32 = 0x2581
    static let s: UInt32 = 0x73, t: UInt32 = 0x74, m: UInt32 = 0x6D, d: UInt32 = 0x64
    static let r: UInt32 = 0x72, v: UInt32 = 0x76, e: UInt32 = 0x65, l: UInt32 = 0x6C

    @inline(__always)
    static func isLineBreak(_ value: UInt32) -> Bool { value == carriageReturn || value == lineFeed }
}
