import Foundation
import ModelFiles
@testable import Tokenizers
@testable import Training
import XCTest

/// Findings of a fuzzing pass over tokenizers, chat templates and large inputs (issue 12): hangs on files of a few
/// hundred kilobytes, and a text that tokenized differently from Hugging Face's `tokenizers`.
final class UnicodeInputFindingsTests: XCTestCase {
    /// The 259 pieces a SentencePiece-style GGUF vocabulary starts with: unknown, BOS, EOS and the 256 byte tokens.
    private static let spmBase = ["<unk>", "<s>", "</s>"] + (0..<256).map { BPEModel.byteTokenName($0) }

    private func spmTokenizer(_ pieces: [String]) throws -> Tokenizer {
        let tokens = Self.spmBase + pieces
        return try Tokenizer(ggufModel: "llama", pre: nil, tokens: tokens, tokenTypes: nil,
                             scores: tokens.indices.map { -Float($0) }, merges: nil, bosTokenId: 1, eosTokenId: 2,
                             unknownTokenId: 0, paddingTokenId: nil, addBOS: true, addSpacePrefix: true)
    }

    /// A GGUF "llama" vocabulary has no merge list: its merges are every cut of every token into two tokens. Each
    /// cut spelled both halves, so one normal token of 200,000 scalars (a 205 KB file) kept `qlora tokenize`
    /// busy for minutes. Only cuts into lengths the vocabulary has are tried now, and the rest is bounded.
    func testLongPieceOfAVocabularyWithoutMergesLoadsQuickly() throws {
        let start = Date()
        let tokenizer = try spmTokenizer(["▁", "a", "b", "▁a", "aa", String(repeating: "a", count: 200_000)])
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
        let id = { (token: String) in tokenizer.id(forToken: token)! }
        // The merges that remain are those of the short pieces ("▁a" scores higher than "aa").
        XCTAssertEqual(tokenizer.encode("a aa"), [id("▁a"), id("▁a"), id("a")])
    }

    /// A vocabulary whose pieces do cut each other every way (runs of "a" of every length up to 3,000: 4.5 MB)
    /// has millions of merges to find; past a bound it is refused with the reason, in seconds rather than minutes.
    func testVocabularyWithoutMergesWhoseCutsAreTooManyIsRefused() throws {
        let start = Date()
        XCTAssertThrowsError(try spmTokenizer((3..<3000).map { String(repeating: "a", count: $0) }
                                              + ["▁", "a", "aa"])) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("tokenizer.ggml.tokens") && text.contains("tokenizer.ggml.merges"), text)
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 60)
    }

    /// ByteLevel's `add_prefix_space` (and Metaspace's prepend) asked whether the text already starts with the
    /// space by Character: a space followed by a combining mark (U+034F) is one Character that is not " ", so a
    /// second space went in front (Hugging Face: [Ġ͏, x]; this tokenizer gave [Ġ, Ġ͏, x]).
    func testPrefixSpaceIsNotDoubledBeforeACombiningMark() throws {
        // Every byte its own token (id = the byte), no merges: the ids are the bytes of what BPE saw.
        let alphabet = (0..<256).map { String(Character(ByteLevelAlphabet.scalarForByte[$0])) }
        let vocab = JSONValue.object(alphabet.enumerated().map { ($0.element, JSONValue.int($0.offset)) })
        let merges = JSONValue.array([])
        let byteLevel = #"{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}"#
        let text = """
            {"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": \(byteLevel),
             "post_processor": null, "decoder": \(byteLevel),
             "model": {"type": "BPE", "vocab": \(vocab.compactText()),
                       "merges": \(merges.compactText())}}
            """
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        try AtomicFile.write(text: text, to: path)
        let tokenizer = try Tokenizer(tokenizerJSONPath: path)
        XCTAssertEqual(tokenizer.encode(" \u{34F}x"), [0x20, 0xCD, 0x8F, 0x78])
        XCTAssertEqual(tokenizer.encode("\u{34F}x"), [0x20, 0xCD, 0x8F, 0x78])
        XCTAssertEqual(tokenizer.encode("x"), [0x20, 0x78])
    }

    private func renderError(_ source: String) -> JinjaError? {
        let start = Date()
        // Well under the minutes these took, even in a debug build.
        defer { XCTAssertLessThan(Date().timeIntervalSince(start), 30, source) }
        do {
            _ = try JinjaTemplate(source).render([:])
            return nil
        } catch let error as JinjaError {
            return error
        } catch {
            XCTFail("\(error)")
            return nil
        }
    }

    /// Lists that hold one list twice, built again and again, weigh 2^40 with forty lists in memory: `|string`,
    /// `|tojson` and `==` walked every copy and never finished (a 200-byte chat template). A value's weight is
    /// bounded where it is built.
    func testSharedListsCannotGrowExponentially() {
        for (make, use) in [("[ns.a, ns.a]", "ns.a|string|length"), ("{'x': ns.a, 'y': ns.a}", "ns.a|tojson|length"),
                            ("[ns.a, ns.a]", "ns.a == ns.a"), ("[ns.a] * 3", "ns.a in [ns.a]")] {
            let source = "{% set ns = namespace(a=[1]) %}{% for i in range(60) %}{% set ns.a = \(make) %}" +
                "{% endfor %}{{ \(use) }}"
            XCTAssertEqual(renderError(source)?.kind, .limit, source)
        }
        // Modest sharing is fine.
        XCTAssertEqual(try JinjaTemplate("{% set a = [1, 2] %}{% set b = [a, a] %}{{ [b, b]|tojson }}").render([:]),
                       "[[[1, 2], [1, 2]], [[1, 2], [1, 2]]]")
    }

    /// Each expression was one step whatever it walked: 80,000 `-1 in l` over a list of a million items, 50,000
    /// replaces on a 4 MB string, or a million distinct items through `unique` ran for minutes or hours. The walk
    /// counts against the steps now, `unique` bounds its comparisons, and `split`, `in` and `find` search
    /// in one pass.
    func testOperationsOnLargeValuesCountTheirWork() {
        for source in [
            "{% set l = range(1048576)|list %}{% for i in range(80000) %}{% if -1 in l %}{% endif %}{% endfor %}",
            "{% set a = 'a' * 4000000 %}{% for i in range(50000) %}{% set b = a.replace('b', 'c') %}{% endfor %}",
            "{% for i in range(60000) %}{% set x = range(1000000)|list %}{% endfor %}",
            "{{ range(1048576)|unique|length }}",
            "{% set a = 'a,' * 8000000 %}{{ a.split(',')|length }}",
            "{% for i in range(60000) %}{% set x = range(1000000) %}{% endfor %}",
        ] {
            XCTAssertEqual(renderError(source)?.kind, .limit, source)
        }
        XCTAssertEqual(try JinjaTemplate("{{ [3, 1, 3, 2, 1]|unique|list }}").render([:]), "[3, 1, 2]")
        XCTAssertEqual(try JinjaTemplate("{{ 'aaa-b--c'.split('a') }}{{ 'x--y----z'.split('--', 2) }}")
                        .render([:]), "['', '', '', '-b--c']['x', 'y', '--z']")
        XCTAssertEqual(try JinjaTemplate("{{ 'é-ab'.find('ab') }}{{ 'xyz'.find('q') }}{{ 'aab' in 'xaaab' }}")
                        .render([:]), "2-1True")
        // A long needle that almost matches everywhere: searched in linear time (it took minutes), not refused.
        let start = Date()
        XCTAssertEqual(try JinjaTemplate("{% set a = 'a' * 16000000 %}{% set b = 'a' * 100000 ~ 'b' %}" +
                                         "{{ b in a }}{{ a.find(b) }}").render([:]), "False-1")
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
    }
}
