import Foundation
import ModelFiles
@testable import Tokenizers
import Training
import XCTest

/// Vocabularies holding canonically equivalent spellings as separate tokens: "é" (U+00E9) and "e" + U+0301; "Å"
/// (U+00C5), "A" + U+030A and the angstrom sign U+212B; "K" and the Kelvin sign U+212A. Swift's `String` takes
/// each group for one string, so token lookups, merges and the word cache gave one spelling the other's id;
/// Hugging Face and llama.cpp compare token texts exactly.
///
/// Every non-ASCII scalar of the test data is written as an escape, so that no editor can change its spelling.
final class TokenizerEquivalenceTests: XCTestCase {
    // MARK: - Reference vectors

    // Printed by scripts/make-equivalence-vectors.py with Hugging Face tokenizers 0.23.3, which builds the same
    // fixtures: the ids of each text (without special tokens), and the id of each token by its text. The
    // SentencePiece-style vocabulary is `spmBase`, then the tokens of `spmTokenIds` in order (the two "<...>"
    // ones added tokens); the byte-level one is the 256 one-byte tokens, then those of `byteLevelTokenIds`.
    static let prependCases: [(String, [Int])] = [
        ("\u{E9}", [276]),
        ("e\u{301}", [277]),
        ("\u{C5}", [278]),
        ("A\u{30A}", [280]),
        ("\u{212B}", [279]),
        ("K", [281]),
        ("\u{212A}", [282]),
        ("caf\u{E9}", [259, 283]),
        ("cafe\u{301}", [259, 284]),
        ("\u{E9} e\u{301}", [276, 277]),
        ("e\u{301} \u{E9}", [277, 276]),
        ("\u{C5} A\u{30A} \u{212B}", [278, 280, 279]),
        ("\u{212B} \u{C5}", [279, 278]),
        ("K \u{212A}", [281, 282]),
        ("\u{212A} K", [282, 281]),
        ("caf\u{E9} cafe\u{301} caf\u{E9}", [259, 283, 259, 284, 259, 283]),
        ("<\u{E9}>x<e\u{301}>", [285, 259, 123, 286]),
        ("<e\u{301}>\u{E9}", [286, 276]),
        ("e\u{301}\u{E9}A\u{30A}\u{C5}", [277, 262, 275, 265]),
    ]
    static let metaspaceCases: [(String, [Int])] = [
        ("\u{E9}", [276]),
        ("e\u{301}", [277]),
        ("\u{C5}", [278]),
        ("A\u{30A}", [280]),
        ("\u{212B}", [279]),
        ("K", [281]),
        ("\u{212A}", [282]),
        ("caf\u{E9}", [259, 283]),
        ("cafe\u{301}", [259, 284]),
        ("\u{E9} e\u{301}", [276, 277]),
        ("e\u{301} \u{E9}", [277, 276]),
        ("\u{C5} A\u{30A} \u{212B}", [278, 280, 279]),
        ("\u{212B} \u{C5}", [279, 278]),
        ("K \u{212A}", [281, 282]),
        ("\u{212A} K", [282, 281]),
        ("caf\u{E9} cafe\u{301} caf\u{E9}", [259, 283, 259, 284, 259, 283]),
        ("<\u{E9}>x<e\u{301}>", [285, 259, 123, 286]),
        ("<e\u{301}>\u{E9}", [286, 276]),
        ("e\u{301}\u{E9}A\u{30A}\u{C5}", [277, 262, 275, 265]),
    ]
    static let noFallbackCases: [(String, [Int])] = [
        ("\u{E9}", [276]),
        ("e\u{301}", [277]),
        ("\u{C5}", [278]),
        ("A\u{30A}", [280]),
        ("\u{212B}", [279]),
        ("K", [281]),
        ("\u{212A}", [282]),
        ("caf\u{E9}", [259, 283]),
        ("cafe\u{301}", [259, 284]),
        ("\u{E9} e\u{301}", [276, 277]),
        ("e\u{301} \u{E9}", [277, 276]),
        ("\u{C5} A\u{30A} \u{212B}", [278, 280, 279]),
        ("\u{212B} \u{C5}", [279, 278]),
        ("K \u{212A}", [281, 282]),
        ("\u{212A} K", [282, 281]),
        ("caf\u{E9} cafe\u{301} caf\u{E9}", [259, 283, 259, 284, 259, 283]),
        ("<\u{E9}>x<e\u{301}>", [285, 259, 0, 286]),
        ("<e\u{301}>\u{E9}", [286, 276]),
        ("e\u{301}\u{E9}A\u{30A}\u{C5}", [277, 262, 275, 265]),
    ]
    static let spmTokenIds: [(String, Int)] = [
        ("\u{2581}", 259),
        ("e", 260),
        ("\u{301}", 261),
        ("\u{E9}", 262),
        ("A", 263),
        ("\u{30A}", 264),
        ("\u{C5}", 265),
        ("\u{212B}", 266),
        ("K", 267),
        ("\u{212A}", 268),
        ("c", 269),
        ("a", 270),
        ("f", 271),
        ("ca", 272),
        ("caf", 273),
        ("e\u{301}", 274),
        ("A\u{30A}", 275),
        ("\u{2581}\u{E9}", 276),
        ("\u{2581}e\u{301}", 277),
        ("\u{2581}\u{C5}", 278),
        ("\u{2581}\u{212B}", 279),
        ("\u{2581}A\u{30A}", 280),
        ("\u{2581}K", 281),
        ("\u{2581}\u{212A}", 282),
        ("caf\u{E9}", 283),
        ("cafe\u{301}", 284),
        ("<\u{E9}>", 285),
        ("<e\u{301}>", 286),
    ]
    static let spmMerges: [(String, String)] = [
        ("c", "a"),
        ("ca", "f"),
        ("e", "\u{301}"),
        ("A", "\u{30A}"),
        ("\u{2581}", "\u{E9}"),
        ("\u{2581}", "e\u{301}"),
        ("\u{2581}", "\u{C5}"),
        ("\u{2581}", "\u{212B}"),
        ("\u{2581}", "A\u{30A}"),
        ("\u{2581}", "K"),
        ("\u{2581}", "\u{212A}"),
        ("caf", "\u{E9}"),
        ("caf", "e\u{301}"),
    ]
    static let byteLevelCases: [(String, [Int])] = [
        ("K,\u{212A}", [75, 44, 260]),
        ("\u{212A},K", [260, 44, 75]),
        ("\u{C5},\u{212B}", [257, 44, 259]),
        ("\u{212B},\u{C5}", [259, 44, 257]),
        ("\u{E9},e\u{301}", [256, 44, 101, 261]),
        ("\u{C5} A\u{30A} \u{212B}", [257, 32, 65, 262, 32, 259]),
        ("K \u{212A} K", [75, 32, 260, 32, 75]),
    ]
    static let byteLevelTokenIds: [(String, Int)] = [
        ("\u{C3}\u{A9}", 256),
        ("\u{C3}\u{127}", 257),
        ("\u{E2}\u{126}", 258),
        ("\u{E2}\u{126}\u{AB}", 259),
        ("\u{E2}\u{126}\u{AA}", 260),
        ("\u{CC}\u{123}", 261),
        ("\u{CC}\u{12C}", 262),
    ]
    static let byteLevelMerges: [(String, String)] = [
        ("\u{C3}", "\u{A9}"),
        ("\u{C3}", "\u{127}"),
        ("\u{E2}", "\u{126}"),
        ("\u{E2}\u{126}", "\u{AB}"),
        ("\u{E2}\u{126}", "\u{AA}"),
        ("\u{CC}", "\u{123}"),
        ("\u{CC}", "\u{12C}"),
    ]

    // MARK: - Fixtures

    /// <unk>, <s>, </s> and the 256 byte-fallback tokens: ids 0 to 258.
    private static let spmBase = ["<unk>", "<s>", "</s>"] + (0..<256).map { BPEModel.byteTokenName($0) }
    private static let spmTokens = spmBase + spmTokenIds.map(\.0)
    /// The two added tokens at the end of `spmTokens`.
    private static let spmAddedCount = 2

    private static let prependNormalizer = #"{"type": "Sequence", "normalizers": [{"type": "Prepend", "#
        + #""prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}"#
    private static let prependDecoder = #"{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": "#
        + #"{"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, "#
        + #"{"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"#
    private static let metaspace = #"{"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "#
        + #""split": true}"#
    private static let metaspaceDecoder = #"{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, "#
        + metaspace + "]}"
    private static let byteLevel = #"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "#
        + #""use_regex": true}"#

    private func addedToken(_ id: Int, _ content: String, special: Bool) -> JSONValue {
        .object([("id", .int(id)), ("content", .string(content)), ("single_word", .bool(false)),
                 ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)),
                 ("special", .bool(special))])
    }

    /// A tokenizer.json of `tokens` (id = position) and `merges`, written to a temporary folder and loaded.
    private func jsonTokenizer(tokens: [String], merges: [(String, String)], added: [JSONValue],
                               normalizer: String, preTokenizer: String, decoder: String, unknown: String?,
                               byteFallback: Bool) throws -> Tokenizer {
        let vocab = JSONValue.object(tokens.enumerated().map { ($0.element, .int($0.offset)) })
        let pairs = JSONValue.array(merges.map { .array([.string($0.0), .string($0.1)]) })
        let model = JSONValue.object([
            ("type", .string("BPE")), ("dropout", .null), ("unk_token", unknown.map { .string($0) } ?? .null),
            ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null), ("fuse_unk", .bool(unknown != nil)),
            ("byte_fallback", .bool(byteFallback)), ("ignore_merges", .bool(false)), ("vocab", vocab),
            ("merges", pairs),
        ])
        let text = """
            {"version": "1.0", "truncation": null, "padding": null, "added_tokens": \
            \(JSONValue.array(added).compactText()), "normalizer": \(normalizer), "pre_tokenizer": \(preTokenizer), \
            "post_processor": null, "decoder": \(decoder), "model": \(model.compactText())}
            """
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        try AtomicFile.write(text: text, to: path)
        return try Tokenizer(tokenizerJSONPath: path)
    }

    private func spmJSONTokenizer(normalizer: String, preTokenizer: String, decoder: String,
                                  byteFallback: Bool) throws -> Tokenizer {
        let tokens = Self.spmTokens
        let added = (0..<3).map { addedToken($0, tokens[$0], special: true) }
            + ((tokens.count - Self.spmAddedCount)..<tokens.count).map { addedToken($0, tokens[$0], special: false) }
        return try jsonTokenizer(tokens: tokens, merges: Self.spmMerges, added: added, normalizer: normalizer,
                                 preTokenizer: preTokenizer, decoder: decoder, unknown: "<unk>",
                                 byteFallback: byteFallback)
    }

    /// The same vocabulary as a GGUF "llama" one: unknown, control, byte, normal and user-defined tokens, scores
    /// falling with the id; with `merges`, those are given, else they come from the scores.
    private func spmGGUFTokenizer(withMerges: Bool) throws -> Tokenizer {
        let tokens = Self.spmTokens
        let types = [2, 3, 3] + [Int](repeating: 6, count: 256)
            + [Int](repeating: 1, count: tokens.count - Self.spmBase.count - Self.spmAddedCount)
            + [Int](repeating: 4, count: Self.spmAddedCount)
        return try Tokenizer(ggufModel: "llama", pre: nil, tokens: tokens, tokenTypes: types,
                             scores: tokens.indices.map { -Float($0) },
                             merges: withMerges ? Self.spmMerges.map { $0.0 + " " + $0.1 } : nil,
                             bosTokenId: 1, eosTokenId: 2, unknownTokenId: 0, paddingTokenId: nil, addBOS: false,
                             addSpacePrefix: true)
    }

    private static let byteLevelTokens = (0..<256).map { String(ByteLevelAlphabet.scalarForByte[$0]) }
        + byteLevelTokenIds.map(\.0)

    // MARK: - Checks

    /// Each text's ids and, where `roundTrips`, its exact bytes back from decoding them (not for texts with an
    /// added token: a "▁" goes in front of the text after one, and decodes as a space, in Hugging Face too).
    private func check(_ tokenizer: Tokenizer, _ cases: [(String, [Int])], roundTrips: Bool = true,
                       _ name: String, file: StaticString = #filePath, line: UInt = #line) {
        for (text, expected) in cases {
            let ids = tokenizer.encode(text)
            XCTAssertEqual(ids, expected, "\(name): \(text.unicodeScalars.map { String($0.value, radix: 16) })",
                           file: file, line: line)
            if roundTrips && !text.utf8.contains(UInt8(ascii: "<")) {
                XCTAssertEqual(Array(tokenizer.decode(ids).utf8), Array(text.utf8), "\(name) decode", file: file,
                               line: line)
            }
        }
    }

    /// Each token's id by its text, and its text back by id, byte for byte.
    private func checkIds(_ tokenizer: Tokenizer, _ expected: [(String, Int)], _ name: String,
                          file: StaticString = #filePath, line: UInt = #line) {
        for (token, id) in expected {
            let scalars = token.unicodeScalars.map { String($0.value, radix: 16) }
            XCTAssertEqual(tokenizer.id(forToken: token), id, "\(name): \(scalars)", file: file, line: line)
            XCTAssertEqual(tokenizer.token(forId: id).map { Array($0.utf8) }, Array(token.utf8),
                           "\(name): token \(id)", file: file, line: line)
        }
    }

    // MARK: - Tests

    /// Llama 2's layout: Prepend and Replace normalizers, byte fallback.
    func testSentencePieceJSONKeepsEquivalentSpellingsApart() throws {
        let tokenizer = try spmJSONTokenizer(normalizer: Self.prependNormalizer, preTokenizer: "null",
                                             decoder: Self.prependDecoder, byteFallback: true)
        check(tokenizer, Self.prependCases, "prepend")
        checkIds(tokenizer, Self.spmTokenIds, "prepend")
    }

    /// The Metaspace pre-tokenizer (words split before each "▁"), with and without byte fallback.
    func testMetaspaceJSONKeepsEquivalentSpellingsApart() throws {
        let tokenizer = try spmJSONTokenizer(normalizer: "null", preTokenizer: Self.metaspace,
                                             decoder: Self.metaspaceDecoder, byteFallback: true)
        check(tokenizer, Self.metaspaceCases, "metaspace")
        checkIds(tokenizer, Self.spmTokenIds, "metaspace")
        let noFallback = try spmJSONTokenizer(normalizer: "null", preTokenizer: Self.metaspace,
                                              decoder: Self.metaspaceDecoder, byteFallback: false)
        // "x" has no piece and becomes <unk>, so that one text does not decode back.
        check(noFallback, Self.noFallbackCases.filter { !$0.1.contains(0) }, "no fallback")
        check(noFallback, Self.noFallbackCases.filter { $0.1.contains(0) }, roundTrips: false, "no fallback")
    }

    /// The GGUF "llama" vocabulary of the same pieces tokenizes as the Prepend tokenizer.json does (llama.cpp's
    /// space prefix), with its merges derived from the scores and with them given.
    func testSentencePieceGGUFKeepsEquivalentSpellingsApart() throws {
        for withMerges in [false, true] {
            let tokenizer = try spmGGUFTokenizer(withMerges: withMerges)
            check(tokenizer, Self.prependCases, "GGUF, merges given: \(withMerges)")
            checkIds(tokenizer, Self.spmTokenIds, "GGUF, merges given: \(withMerges)")
        }
    }

    /// Byte-level tokens are never equivalent to each other, but the words they are cached by are: "K" and the
    /// Kelvin sign are one `String`, so the second of them in a text took the first one's ids.
    func testByteLevelWordCacheKeepsEquivalentWordsApart() throws {
        let json = try jsonTokenizer(tokens: Self.byteLevelTokens, merges: Self.byteLevelMerges, added: [],
                                     normalizer: "null", preTokenizer: Self.byteLevel, decoder: Self.byteLevel,
                                     unknown: nil, byteFallback: false)
        check(json, Self.byteLevelCases, "byte-level JSON")
        checkIds(json, Self.byteLevelTokenIds, "byte-level JSON")
        let gguf = try Tokenizer(ggufModel: "gpt2", pre: "gpt2", tokens: Self.byteLevelTokens, tokenTypes: nil,
                                 scores: nil, merges: Self.byteLevelMerges.map { $0.0 + " " + $0.1 },
                                 bosTokenId: nil, eosTokenId: nil, unknownTokenId: nil, paddingTokenId: nil,
                                 addBOS: false, addSpacePrefix: false)
        check(gguf, Self.byteLevelCases, "byte-level GGUF")
    }

    /// A GGUF vocabulary written as a tokenizer.json keeps both of two equivalent user-defined tokens (a set of
    /// `String`s took them for one and left the first out of the vocabulary).
    func testGGUFExportKeepsEquivalentTokens() throws {
        let tokens = Self.byteLevelTokens + ["<\u{E9}>", "<e\u{301}>"]
        let types = [Int](repeating: 1, count: Self.byteLevelTokens.count) + [4, 4]
        let vocabulary = try GGUFVocabulary(ggufModel: "gpt2", pre: "gpt2", tokens: tokens, tokenTypes: types,
                                            merges: Self.byteLevelMerges.map { $0.0 + " " + $0.1 },
                                            bosTokenId: nil, eosTokenId: nil, unknownTokenId: nil,
                                            paddingTokenId: nil, addBOS: false, addEOS: false)
        let json = try vocabulary.tokenizerJSON()
        let vocab = try XCTUnwrap(json["model"]?["vocab"]?.objectValue)
        XCTAssertEqual(vocab.count, tokens.count)
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        try AtomicFile.write(text: json.compactText(), to: path)
        let tokenizer = try Tokenizer(tokenizerJSONPath: path)
        let first = tokens.count - 2
        XCTAssertEqual(tokenizer.encode("<\u{E9}>K<e\u{301}>"), [first, 75, first + 1])
        XCTAssertEqual(tokenizer.id(forToken: "<\u{E9}>"), first)
        XCTAssertEqual(tokenizer.id(forToken: "<e\u{301}>"), first + 1)
    }

    /// A text record that starts with the BOS text gets no second BOS in front. That was asked with `hasPrefix`,
    /// by characters: "<s>" + U+0301 does not start with the character ">", but the tokenizer matches "<s>" by its
    /// bytes, so such a record began with BOS twice.
    func testTextStartingWithBOSBeforeACombiningMarkGetsOneBOS() throws {
        let tokenizer = try Tokenizer(ggufModel: "llama", pre: nil, tokens: Self.spmTokens, tokenTypes: nil,
                                      scores: Self.spmTokens.indices.map { -Float($0) }, merges: nil, bosTokenId: 1,
                                      eosTokenId: 2, unknownTokenId: 0, paddingTokenId: nil, addBOS: true,
                                      addSpacePrefix: true)
        let path = makeTemporaryDirectory(self) + "/data.jsonl"
        try AtomicFile.write(text: #"{"text": "<s>\u0301e"}"# + "\n", to: path)
        let examples = try TextDataset.load(path: path, tokenizer: tokenizer, vocabularySize: tokenizer.vocabularySize,
                                            options: DatasetOptions())
        let ids = try XCTUnwrap(examples.first?.inputIds)
        XCTAssertEqual(Array(ids.prefix(2)), [1] + tokenizer.encode("\u{301}e").prefix(1), "\(ids)")
        XCTAssertEqual(ids.filter { $0 == 1 }.count, 1, "\(ids)")
    }
}
