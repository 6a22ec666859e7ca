import Foundation

/// The rewrites applied to each stretch of text between added tokens before it is split into words: the
/// `normalizer` of a tokenizer.json, followed by the parts of its pre-tokenizer that change text rather than cut it
/// (`Metaspace`'s space replacement, `ByteLevel`'s prefix space), and SentencePiece's escaping for GGUF vocabularies.
struct TextNormalizer: Equatable {
    /// When a `Metaspace` step puts its replacement character in front of the text.
    enum PrependScheme: Equatable {
        /// Before every stretch of text.
        case always
        /// Only before the stretch at the very start of the input.
        case first
        /// Never.
        case never
    }

    /// One rewrite.
    enum Rule: Equatable {
        case nfc, nfd, nfkc, nfkd, lowercase
        /// `prefix` before any non-empty text (the `Prepend` normalizer).
        case prepend(String)
        /// Every occurrence of the first string replaced by the second (the `Replace` normalizer, string form).
        case replace(String, String)
        /// A space before text that does not already start with one (`ByteLevel` with `add_prefix_space`).
        case prefixSpace
        /// Spaces become `replacement`, which is also put in front as `scheme` says (the `Metaspace` pre-tokenizer).
        case metaspace(replacement: String, scheme: PrependScheme)
    }

    /// The rewrites, in the order they apply.
    var rules: [Rule]

    /// True when there is nothing to do.
    var isEmpty: Bool { rules.isEmpty }

    /// The most scalars `apply` may make of one scalar of text, at worst: real tokenizers stay below 4 (a "▁" put in
    /// front, a space made "▁"). A chain of eight `Replace` steps each making "a" sixteen "a"s grew a text 4 × 10⁹
    /// times (a hang, then memory exhausted), and long `Prepend`s land in front of every stretch between added tokens.
    static let maximumGrowth = 64

    /// A bound on the scalars `apply` makes of one scalar of text: each rule makes `n` scalars at most
    /// `factor · n + added` (`added` counts what is put in front of a stretch, itself at least one scalar long).
    /// Saturates at `Double.infinity` instead of overflowing.
    var growth: Double {
        var factor = 1.0, added = 0.0
        for rule in rules {
            switch rule {
            case .nfc, .nfd, .nfkc, .nfkd, .lowercase: break   // bounded by Unicode's own small tables
            case .prepend(let prefix): added += Double(prefix.unicodeScalars.count)
            case .replace(let pattern, let replacement):
                let ratio = Double(replacement.unicodeScalars.count) / Double(max(1, pattern.unicodeScalars.count))
                if ratio > 1 { factor *= ratio; added *= ratio }
            case .prefixSpace: added += 1
            case .metaspace(let replacement, _):
                let length = Double(replacement.unicodeScalars.count)
                if length > 1 { factor *= length; added *= length }
                added += length
            }
        }
        return factor + added
    }

    /// `text` rewritten; `isStartOfInput` says whether it begins the whole input (for `PrependScheme.first`).
    func apply(to text: String, isStartOfInput: Bool) -> String {
        var text = text
        for rule in rules {
            switch rule {
            case .nfc: text = text.precomposedStringWithCanonicalMapping
            case .nfd: text = text.decomposedStringWithCanonicalMapping
            case .nfkc: text = text.precomposedStringWithCompatibilityMapping
            case .nfkd: text = text.decomposedStringWithCompatibilityMapping
            case .lowercase: text = text.lowercased()
            case .prepend(let prefix):
                if !text.isEmpty { text = prefix + text }
            case .replace(let pattern, let replacement):
                text = Self.replacing(pattern, with: replacement, in: text)
            case .prefixSpace:
                // By scalar: a space followed by a combining mark is one Character, which `hasPrefix(" ")`
                // does not see as starting with a space (and a second space was put in front).
                if let first = text.unicodeScalars.first, first != " " { text = " " + text }
            case .metaspace(let replacement, let scheme):
                text = Self.replacing(" ", with: replacement, in: text)
                let prepends = scheme == .always || (scheme == .first && isStartOfInput)
                if prepends && !text.isEmpty && !text.unicodeScalars.starts(with: replacement.unicodeScalars) {
                    text = replacement + text
                }
            }
        }
        return text
    }

    /// Replaces one scalar in a single pass (the common case, " " → "▁", on texts of megabytes), anything longer
    /// through the general scalar matcher.
    private static func replacing(_ pattern: String, with replacement: String, in text: String) -> String {
        guard !pattern.isEmpty else { return text }
        let patternScalars = Array(pattern.unicodeScalars)
        guard patternScalars.count == 1 else {
            return text.replacingAll(pattern, with: replacement)
        }
        let target = patternScalars[0]
        let replacementScalars = replacement.unicodeScalars
        var result = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            if scalar == target { result.append(contentsOf: replacementScalars) } else { result.append(scalar) }
        }
        return String(result)
    }
}
