import Foundation
import ModelFiles
@testable import Tokenizers
import XCTest

final class TokenizerTests: XCTestCase {
    // MARK: - Reference material

    private struct GoldenCase {
        let text: String
        let ids: [Int]
        let decoded: String
    }

    private static let smolFolder = Shared.root + "/golden/smollm2-tokenizer"

    private func requireSmolFolder() throws -> String {
        guard FileSystem.isDirectory(Self.smolFolder) else {
            throw XCTSkip("no SmolLM2 tokenizer reference at \(Self.smolFolder): set QLORA_SHARED to the shared/ folder")
        }
        return Self.smolFolder
    }

    private func goldenCases() throws -> [GoldenCase] {
        let text = String(decoding: try FileSystem.readBytes(try requireSmolFolder() + "/cases.jsonl"), as: UTF8.self)
        return try text.split(separator: "\n").map { line in
            let json = try JSONValue(parsing: String(line))
            return GoldenCase(text: json["text"]!.stringValue!, ids: json["ids"]!.arrayValue!.map { $0.intValue! },
                              decoded: json["decoded"]!.stringValue!)
        }
    }

    /// SmolLM2's vocabulary as a GGUF stores it: tokens in id order, merges as "left right", special added tokens
    /// typed control (what llama.cpp's converter writes).
    private func smolGGUFTokenizer() throws -> Tokenizer {
        let json = try JSONValue(parsing: try FileSystem.readBytes(try requireSmolFolder() + "/tokenizer.json"))
        let vocab = json["model"]!["vocab"]!.objectValue!
        var tokens = [String](repeating: "", count: vocab.count)
        for (token, id) in vocab { tokens[id.intValue!] = token }
        var types = [Int](repeating: 1, count: tokens.count)
        for added in json["added_tokens"]!.arrayValue! where added["special"] == .bool(true) {
            types[added["id"]!.intValue!] = 3
        }
        let merges = json["model"]!["merges"]!.arrayValue!.map { merge -> String in
            merge.stringValue ?? merge.arrayValue!.map { $0.stringValue! }.joined(separator: " ")
        }
        return try Tokenizer(ggufModel: "gpt2", pre: "smollm", tokens: tokens, tokenTypes: types, scores: nil,
                             merges: merges, bosTokenId: 1, eosTokenId: 2, unknownTokenId: nil, paddingTokenId: 2,
                             addBOS: false, addSpacePrefix: false)
    }

    private func checkGoldenCases(_ tokenizer: Tokenizer, _ what: String, file: StaticString = #filePath,
                                  line: UInt = #line) throws {
        let cases = try goldenCases()
        XCTAssertEqual(cases.count, 20, file: file, line: line)
        for golden in cases {
            let ids = tokenizer.encode(golden.text)
            XCTAssertEqual(ids, golden.ids, "\(what): encode(\(golden.text.debugDescription))", file: file, line: line)
            XCTAssertEqual(tokenizer.decode(golden.ids), golden.decoded,
                           "\(what): decode of \(golden.text.debugDescription)", file: file, line: line)
        }
    }

    // MARK: - SmolLM2 (byte-level BPE)

    func testSmolLM2CasesFromTokenizerJSON() throws {
        let tokenizer = try Tokenizer(tokenizerJSONPath: try requireSmolFolder() + "/tokenizer.json")
        try checkGoldenCases(tokenizer, "tokenizer.json")
        // A second pass is served from the word cache and must agree.
        try checkGoldenCases(tokenizer, "tokenizer.json, cached")
    }

    func testSmolLM2CasesFromGGUFVocabulary() throws {
        try checkGoldenCases(try smolGGUFTokenizer(), "GGUF vocabulary")
    }

    func testSmolLM2SpecialTokensAndLookups() throws {
        let tokenizer = try Tokenizer(tokenizerJSONPath: try requireSmolFolder() + "/tokenizer.json")
        XCTAssertEqual(tokenizer.vocabularySize, 49152)
        XCTAssertEqual(tokenizer.id(forToken: "<|im_start|>"), 1)
        XCTAssertEqual(tokenizer.token(forId: 2), "<|im_end|>")
        XCTAssertEqual(tokenizer.id(forToken: "Ġthe"), 260)
        XCTAssertNil(tokenizer.token(forId: 49152))
        XCTAssertNil(tokenizer.token(forId: -1))
        XCTAssertNil(tokenizer.id(forToken: "no such token"))
        // The template adds nothing around a sequence; with no tokenizer_config.json beside the file the EOS is the
        // vocabulary's <|endoftext|>.
        XCTAssertFalse(tokenizer.addsBOS)
        XCTAssertEqual(tokenizer.encode("Hello world!", addSpecialTokens: true), [19556, 905, 17])
        XCTAssertEqual(tokenizer.eosTokenId, 0)
        XCTAssertTrue(tokenizer.isSpecialToken(1))
        XCTAssertFalse(tokenizer.isSpecialToken(260))

        let chat = "<|im_start|>user\nHi<|im_end|>"
        let ids = tokenizer.encode(chat)
        XCTAssertEqual(ids.first, 1)
        XCTAssertEqual(ids.last, 2)
        XCTAssertEqual(tokenizer.decode(ids), chat)
        XCTAssertEqual(tokenizer.decode(ids, skipSpecialTokens: true), "user\nHi")
        // Ids outside the vocabulary are left out rather than crash.
        XCTAssertEqual(tokenizer.decode([19556, 999_999, -3, 905]), "Hello world")
    }

    /// The tokenizer.json and GGUF paths agree beyond the reference cases, including on a run of spaces before a
    /// digit, where llama.cpp's "smollm" pre-split would differ from the reference.
    func testSmolLM2JSONAndGGUFAgree() throws {
        let json = try Tokenizer(tokenizerJSONPath: try requireSmolFolder() + "/tokenizer.json")
        let gguf = try smolGGUFTokenizer()
        let texts = ["x  3 and   42", "Line one.\n\n\tLine two:  \"quoted\" — ok?", "ΑΒΓ 123abc 'S 'll", "  \n  "]
        for text in texts {
            XCTAssertEqual(json.encode(text), gguf.encode(text), text.debugDescription)
            XCTAssertEqual(json.decode(json.encode(text)), text)
        }
        // "  3": the first space alone, then " 3" as one word, which has no merge (HF's split).
        XCTAssertEqual(json.encode("  3"), [216, 216, 35])
        XCTAssertEqual(gguf.encode("<|im_start|>a", addSpecialTokens: true), [1, 81])
    }

    func testShakespeareRoundTrip() throws {
        let path = Shared.root + "/data/tinyshakespeare/input.txt"
        guard FileSystem.isFile(path) else { throw XCTSkip("no \(path)") }
        let text = String(decoding: try FileSystem.readBytes(path), as: UTF8.self)
        let tokenizer = try Tokenizer(tokenizerJSONPath: try requireSmolFolder() + "/tokenizer.json")
        let start = Date()
        let ids = tokenizer.encode(text)
        let encodeSeconds = Date().timeIntervalSince(start)
        let decodeStart = Date()
        let decoded = tokenizer.decode(ids)
        let decodeSeconds = Date().timeIntervalSince(decodeStart)
        print(String(format: "tinyshakespeare: %d bytes -> %d tokens; encode %.3f s, decode %.3f s",
                     text.utf8.count, ids.count, encodeSeconds, decodeSeconds))
        XCTAssertTrue(decoded == text, "decode(encode(text)) differs from the text")
        XCTAssertLessThan(ids.count, text.utf8.count / 2, "BPE should merge most bytes")
    }

    // MARK: - SentencePiece-style BPE

    /// A made-up SentencePiece vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then pieces with scores (higher
    /// merges first). The ranks of `spmMerges` follow the same scores.
    private static let spmPieces: [(String, Float)] = [
        ("▁", -1), ("h", -10), ("e", -10), ("l", -10), ("o", -10), ("w", -10), ("r", -10), ("d", -10), ("a", -10),
        ("t", -10), ("c", -10),
        ("▁hello", -1), ("▁world", -1.5), ("ll", -2), ("▁cat", -2), ("▁h", -3), ("▁w", -3), ("or", -3.5),
        ("▁he", -4), ("▁c", -4), ("at", -4), ("▁wor", -4.5), ("llo", -5), ("ld", -6),
    ]
    private static let spmMerges = [
        "▁he llo", "▁wor ld", "l l", "▁c at", "▁ h", "▁ w", "o r", "▁h e", "▁ c", "a t", "▁w or", "ll o", "l d",
    ]

    private static var spmTokens: [String] {
        ["<unk>", "<s>", "</s>"] + (0..<256).map { BPEModel.byteTokenName($0) } + spmPieces.map(\.0)
    }

    private func spmGGUFTokenizer() throws -> Tokenizer {
        let types = [2, 3, 3] + [Int](repeating: 6, count: 256) + [Int](repeating: 1, count: Self.spmPieces.count)
        let scores = [Float](repeating: 0, count: 259) + Self.spmPieces.map(\.1)
        return try Tokenizer(ggufModel: "llama", pre: nil, tokens: Self.spmTokens, tokenTypes: types, scores: scores,
                             merges: nil, bosTokenId: 1, eosTokenId: 2, unknownTokenId: 0, paddingTokenId: nil,
                             addBOS: true, addSpacePrefix: true)
    }

    /// The same vocabulary as a Llama-2-style tokenizer.json, with either the older normalizer form (Prepend and
    /// Replace) or the newer Metaspace pre-tokenizer and decoder.
    private func spmTokenizerJSON(metaspace: Bool) throws -> Tokenizer {
        let vocab = JSONValue.object(Self.spmTokens.enumerated().map { ($1, .int($0)) })
        let merges = JSONValue.array(Self.spmMerges.map { .string($0) })
        let added = (0..<3).map { id in
            #"{"id": \#(id), "content": "\#(Self.spmTokens[id])", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}"#
        }.joined(separator: ", ")
        let normalizer = metaspace ? "null" : #"{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}"#
        let preTokenizer = metaspace ? #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}"# : "null"
        let decoder = metaspace ? #"{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}]}"# : #"{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"#
        let text = """
            {"version": "1.0", "truncation": null, "padding": null, "added_tokens": [\(added)],
             "normalizer": \(normalizer), "pre_tokenizer": \(preTokenizer),
             "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
             "decoder": \(decoder),
             "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "vocab": \(vocab.compactText()), "merges": \(merges.compactText())}}
            """
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        try AtomicFile.write(text: text, to: path)
        return try Tokenizer(tokenizerJSONPath: path)
    }

    func testSentencePieceEncodeDecodeAndByteFallback() throws {
        let tokenizer = try spmGGUFTokenizer()
        let id = { (token: String) in tokenizer.id(forToken: token)! }
        XCTAssertEqual(tokenizer.vocabularySize, 259 + Self.spmPieces.count)
        XCTAssertEqual(tokenizer.encode("hello world"), [id("▁hello"), id("▁world")])
        XCTAssertEqual(tokenizer.decode(tokenizer.encode("hello world")), "hello world")
        XCTAssertEqual(tokenizer.encode("hello cat", addSpecialTokens: true), [1, id("▁hello"), id("▁cat")])
        XCTAssertTrue(tokenizer.addsBOS)

        // "é" and the newline are not pieces: their UTF-8 bytes become byte tokens, and decode back.
        let text = "hello é\nworld"
        let ids = tokenizer.encode(text)
        XCTAssertEqual(ids, [id("▁hello"), id("▁"), id("<0xC3>"), id("<0xA9>"), id("<0x0A>"), id("w"), id("or"),
                             id("ld")])
        XCTAssertEqual(tokenizer.decode(ids), text)

        // An added token in the text stays whole, and a space prefix follows it as SentencePiece does.
        let withSpecial = tokenizer.encode("<s>hello")
        XCTAssertEqual(withSpecial, [1, id("▁hello")])
        XCTAssertEqual(tokenizer.decode(withSpecial), "<s> hello")
        XCTAssertEqual(tokenizer.decode(withSpecial, skipSpecialTokens: true), "hello")

        // Round trips over text with spaces in odd places and characters outside the vocabulary.
        for sample in ["  hello  world ", "héllo wörld ✓", "cat\tcat\r\nhello", "日本"] {
            XCTAssertEqual(tokenizer.decode(tokenizer.encode(sample)), sample, sample.debugDescription)
        }

        // A long text is one word for SentencePiece (no pre-tokenizer), so this runs the heap merge on ~100k symbols.
        let path = Shared.root + "/data/tinyshakespeare/input.txt"
        if FileSystem.isFile(path) {
            let long = String(String(decoding: try FileSystem.readBytes(path), as: UTF8.self).prefix(100_000))
            let start = Date()
            let longIds = tokenizer.encode(long)
            print(String(format: "SentencePiece, one 100 kB word: %d tokens in %.3f s", longIds.count,
                         Date().timeIntervalSince(start)))
            XCTAssertTrue(tokenizer.decode(longIds) == long, "long SentencePiece round trip")
        }
    }

    func testSentencePieceTokenizerJSONMatchesGGUF() throws {
        let gguf = try spmGGUFTokenizer()
        for metaspace in [false, true] {
            let json = try spmTokenizerJSON(metaspace: metaspace)
            XCTAssertTrue(json.addsBOS)
            XCTAssertEqual(json.bosTokenId, 1)
            for sample in ["hello world", "hello é\nworld", "wor ld cat  hello", "ééé", "<s>hello world"] {
                XCTAssertEqual(json.encode(sample), gguf.encode(sample), "metaspace \(metaspace): \(sample)")
                XCTAssertEqual(json.decode(json.encode(sample), skipSpecialTokens: true),
                               sample.replacingOccurrences(of: "<s>", with: ""), "metaspace \(metaspace)")
            }
            XCTAssertEqual(json.encode("hello", addSpecialTokens: true), [1, json.id(forToken: "▁hello")!])
        }
    }

    // MARK: - The parts

    /// The heap merge is checked against the scanning reference on random rules (ranks shared between pairs, as
    /// SentencePiece scores are) and random words.
    func testHeapMergeMatchesScanningReference() {
        var random = TestRandom(seed: 7)
        for trial in 0..<40 {
            var table = MergeTable()
            for _ in 0..<120 {
                table.add(left: Int32(random.next() % 24), right: Int32(random.next() % 24),
                          rank: Int32(random.next() % 30), result: Int32(random.next() % 24))
            }
            for length in [2, 3, 7, 50, 300] {
                let word = (0..<length).map { _ in Int32(random.next() % 24) }
                var scanned = word, heaped = word
                table.applyByScanning(to: &scanned)
                table.applyWithHeap(to: &heaped)
                XCTAssertEqual(heaped, scanned, "trial \(trial), length \(length)")
            }
        }
    }

    private func pieces(_ text: String, _ rules: [SplitRule]) -> [String] {
        let scalarText = ScalarText(text)
        var words = [0..<scalarText.count]
        for rule in rules {
            var next: [Range<Int>] = []
            for word in words { rule.split(word, of: scalarText, into: &next) }
            words = next
        }
        return words.map { String(decoding: scalarText.bytes(of: $0), as: UTF8.self) }
    }

    /// Expected pieces worked out by hand from each regex, alternative by alternative.
    func testSplitPatterns() {
        let gpt2: [SplitRule] = [.gpt2], llama3: [SplitRule] = [.llama3(maxDigits: 3)]
        let qwen2: [SplitRule] = [.llama3(maxDigits: 1)]
        XCTAssertEqual(pieces("Hello world", gpt2), ["Hello", " world"])
        XCTAssertEqual(pieces("I'm HERE'S", gpt2), ["I", "'m", " HERE", "'", "S"])
        XCTAssertEqual(pieces("I'm HERE'S", llama3), ["I", "'m", " HERE", "'S"])
        XCTAssertEqual(pieces("12345 x", gpt2), ["12345", " x"])
        XCTAssertEqual(pieces("12345 x", llama3), ["123", "45", " x"])
        XCTAssertEqual(pieces("12345", qwen2), ["1", "2", "3", "4", "5"])
        XCTAssertEqual(pieces("a\n\n  b", gpt2), ["a", "\n\n ", " b"])
        XCTAssertEqual(pieces("a\n\n  b", llama3), ["a", "\n\n", " ", " b"])
        XCTAssertEqual(pieces("x  !!\n", gpt2), ["x", " ", " !!", "\n"])
        XCTAssertEqual(pieces("x  !!\n", llama3), ["x", " ", " !!\n"])
        XCTAssertEqual(pieces("\tword", gpt2), ["\t", "word"])
        XCTAssertEqual(pieces("\tword", llama3), ["\tword"])
        XCTAssertEqual(pieces("end  ", gpt2), ["end", "  "])
        XCTAssertEqual(pieces("end  ", llama3), ["end", "  "])
        XCTAssertEqual(pieces("日本語abc ٣٤ x\u{00A0}y", gpt2), ["日本語abc", " ٣٤", " x", "\u{00A0}", "y"])
        XCTAssertEqual(pieces("!!'s", gpt2), ["!!'", "s"])
        XCTAssertEqual(pieces("ab12c", [.digits(individually: true)]), ["ab", "1", "2", "c"])
        XCTAssertEqual(pieces("ab12c", [.digits(individually: false)]), ["ab", "12", "c"])
        XCTAssertEqual(pieces("▁Hello▁▁world", [.beforeMetaspace]), ["▁Hello", "▁", "▁world"])
        XCTAssertEqual(pieces("", gpt2), [])
    }

    func testByteLevelAlphabetIsABijection() {
        let scalars = ByteLevelAlphabet.scalarForByte
        XCTAssertEqual(Set(scalars).count, 256)
        XCTAssertEqual(scalars[Int(UInt8(ascii: " "))], "Ġ")
        XCTAssertEqual(scalars[Int(UInt8(ascii: "\n"))], "Ċ")
        XCTAssertEqual(scalars[Int(UInt8(ascii: "A"))], "A")
        for byte in 0..<256 { XCTAssertEqual(ByteLevelAlphabet.byte(for: scalars[byte]), UInt8(byte)) }
        XCTAssertNil(ByteLevelAlphabet.byte(for: "▁"))
    }

    func testErrorsNameTheFileAndTheProblem() throws {
        let folder = makeTemporaryDirectory(self)
        let missing = folder + "/nope.json"
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: missing)) { error in
            XCTAssertTrue("\(error)".hasPrefix(missing), "\(error)")
        }
        let wordPiece = folder + "/tokenizer.json"
        try AtomicFile.write(text: #"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#, to: wordPiece)
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: wordPiece)) { error in
            XCTAssertTrue("\(error)".contains(wordPiece) && "\(error)".contains("WordPiece"), "\(error)")
        }
        let badMerge = folder + "/merge.json"
        try AtomicFile.write(text: #"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}"#,
                             to: badMerge)
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: badMerge)) { error in
            XCTAssertTrue("\(error)".contains("merges[0]"), "\(error)")
        }
        XCTAssertThrowsError(try Tokenizer(ggufModel: "bert", pre: nil, tokens: ["a"], tokenTypes: nil, scores: nil,
                                           merges: nil, bosTokenId: nil, eosTokenId: nil, unknownTokenId: nil,
                                           paddingTokenId: nil, addBOS: false, addSpacePrefix: false)) { error in
            XCTAssertTrue("\(error)".contains("\"bert\" is not supported"), "\(error)")
        }
        XCTAssertThrowsError(try Tokenizer(ggufModel: "gpt2", pre: "mystery", tokens: ["a"], tokenTypes: [1, 1],
                                           scores: nil, merges: [], bosTokenId: nil, eosTokenId: nil,
                                           unknownTokenId: nil, paddingTokenId: nil, addBOS: false,
                                           addSpacePrefix: false)) { error in
            XCTAssertTrue("\(error)".contains("token_type has 2 entries"), "\(error)")
        }
    }
}
