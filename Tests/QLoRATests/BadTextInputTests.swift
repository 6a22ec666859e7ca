import Foundation
import ModelFiles
import Tokenizers
import Training
import XCTest

/// Issue 12, bad text: invalid UTF-8 in JSON strings, a tokenizer_config.json that is not a JSON object, the forms
/// of its `chat_template`. Each is an error naming the file (and key, or byte offset), never read as absent.
final class BadTextInputTests: XCTestCase {
    /// `"` + bytes + `"`: a JSON string holding `bytes` as they are.
    func quoted(_ bytes: [UInt8]) -> [UInt8] { [0x22] + bytes + [0x22] }

    /// A string with invalid UTF-8 is an error at the offset of the bad character's first byte (it read as a
    /// U+FFFD in its place); well-formed multi-byte characters still parse, in values and keys alike.
    func testJSONStringsMustBeUTF8() throws {
        let cases: [(bytes: [UInt8], offset: Int, words: String)] = [
            (quoted([0x61, 0x80, 0x62]), 2, "byte 0x80 continues no character"),
            (quoted([0xC0, 0xAF]), 1, "byte 0xC0 starts an overlong encoding"),
            (quoted([0xE0, 0x80, 0xAF]), 1, "0xE0 0x80 is an overlong encoding"),
            (quoted([0xF0, 0x82, 0x82, 0xAC]), 1, "0xF0 0x82 is an overlong encoding"),
            (quoted([0x78, 0xE4, 0xB8]), 2, "the 3-byte character starting 0xE4 is cut off by byte 0x22 at offset 4"),
            (quoted([0xC3]), 1, "the 2-byte character starting 0xC3 is cut off by byte 0x22 at offset 2"),
            ([0x22, 0xF0, 0x9F, 0x98], 1, "the 4-byte character starting 0xF0 is cut off by the end of the text"),
            (quoted([0xED, 0xA0, 0x80]), 1, "0xED 0xA0 encodes a surrogate"),
            (quoted([0xF4, 0x90, 0x80, 0x80]), 1, "0xF4 0x90 encodes a value past U+10FFFF"),
            (quoted([0xF5, 0x80, 0x80, 0x80]), 1, "byte 0xF5 is never part of UTF-8"),
            (quoted([0xFF]), 1, "byte 0xFF is never part of UTF-8"),
            (Array(#"{"ok": 1, ""#.utf8) + [0xFE] + Array(#"": 2}"#.utf8), 11, "byte 0xFE is never part of UTF-8"),
        ]
        for (bytes, offset, words) in cases {
            XCTAssertThrowsError(try JSONValue(parsing: bytes), "\(bytes)") { error in
                guard let error = error as? JSONParseError else { return XCTFail("\(bytes): \(error)") }
                XCTAssertEqual(error.offset, offset, "\(bytes): \(error)")
                XCTAssertTrue(error.message.contains("invalid UTF-8 in a string: " + words), "\(bytes): \(error)")
            }
        }
        let texts = ["é", "中文", "😀", "aé中😀z",
                     "\u{7FF}\u{800}\u{FFFF}\u{10000}\u{10FFFF}", "\u{D7FF}\u{E000}"]
        for text in texts {
            XCTAssertEqual(try JSONValue(parsing: quoted(Array(text.utf8))), .string(text))
            let object = try JSONValue(parsing: Array("{\"\(text)\": \"\(text)\"}".utf8))
            XCTAssertEqual(object[text], .string(text))
        }
        // Surrogate escapes stay as they were: lenient as Python's json, a lone one read as U+FFFD, no trap.
        XCTAssertEqual(try JSONValue(parsing: #""\ud800x\ud83d\ude00""#), .string("\u{FFFD}x😀"))
    }

    /// A folder with the test tokenizer and `config` (raw bytes) as its tokenizer_config.json.
    func modelFolder(config: String?) throws -> String {
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        try FileManager.default.removeItem(atPath: folder + "/tokenizer_config.json")
        if let config { try Data(config.utf8).write(to: URL(fileURLWithPath: folder + "/tokenizer_config.json")) }
        return folder
    }

    /// A tokenizer_config.json that is not JSON, or not an object, is an error naming it (it was read as absent,
    /// its BOS/EOS tokens dropped); a missing one is still fine.
    func testABrokenTokenizerConfigIsAnErrorNamingIt() throws {
        for (text, words) in [(#"{"bos_token": "<s>","#, "not valid JSON: invalid JSON at byte 20"),
                              (#"["<s>"]"#, "the top level is an array, expected an object"),
                              ("", "not valid JSON"), ("\"chat\"", "the top level is a string, expected an object")] {
            let folder = try modelFolder(config: text)
            let config = folder + "/tokenizer_config.json"
            let reads: [() throws -> Void] = [
                { _ = try Tokenizer(tokenizerJSONPath: folder + "/tokenizer.json") },
                { _ = try GGUFVocabulary(tokenizerJSONPath: folder + "/tokenizer.json", vocabularySize: 384) },
                { _ = try TokenizerConfig.read(folder: folder) },
            ]
            for read in reads {
                XCTAssertThrowsError(try read(), text) { error in
                    XCTAssertEqual((error as? TokenizerError)?.source, config, "\(error)")
                    XCTAssertTrue("\(error)".contains(words), "\(text): \(error)")
                }
            }
        }
        let folder = try modelFolder(config: nil)
        XCTAssertNil(try TokenizerConfig.read(folder: folder))
        XCTAssertEqual(try Tokenizer(tokenizerJSONPath: folder + "/tokenizer.json").vocabularySize, 384)
        try FileManager.default.createDirectory(atPath: folder + "/tokenizer_config.json",
                                                withIntermediateDirectories: false)
        XCTAssertThrowsError(try TokenizerConfig.read(folder: folder)) { error in
            XCTAssertTrue("\(error)".contains(folder + "/tokenizer_config.json: cannot read the file"), "\(error)")
        }
    }

    /// `chat_template` as a string, as transformers' list of named templates (the "default" one, or the only one),
    /// or missing/null; anything else is an error naming the key.
    func testTheFormsOfChatTemplate() throws {
        func template(_ value: String) throws -> String? {
            try TokenizerConfig.chatTemplate(in: try JSONValue(parsing: #"{"chat_template": "# + value + "}"),
                                             path: "m/tokenizer_config.json")
        }
        XCTAssertEqual(try template(#""{{ x }}""#), "{{ x }}")
        XCTAssertNil(try template("null"))
        XCTAssertNil(try TokenizerConfig.chatTemplate(in: try JSONValue(parsing: "{}"), path: "m"))
        XCTAssertEqual(try template(#"[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]"#),
                       "D")
        XCTAssertEqual(try template(#"[{"name": "rag", "template": "R"}]"#), "R")
        let bad: [(String, String)] = [
            (#"[{"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}]"#,
             #"chat_template lists 2 templates ("tool_use", "rag") and none is named "default""#),
            ("[]", "chat_template is an empty list"),
            (#"[{"name": "default", "template": "D"}, "x"]"#, "chat_template[1] is a string, expected {"),
            (#"[{"name": "default"}]"#, #"chat_template[0] needs a string "name" and a string "template""#),
            (#"[{"name": 1, "template": "D"}]"#, #"chat_template[0] needs a string "name""#),
            ("7", "chat_template is a number, expected a string or a list of"),
            (#"{"default": "D"}"#, "chat_template is an object, expected a string or a list of"),
        ]
        for (value, words) in bad {
            XCTAssertThrowsError(try template(value), value) { error in
                XCTAssertEqual((error as? TokenizerError)?.source, "m/tokenizer_config.json")
                XCTAssertTrue("\(error)".contains(words), "\(value): \(error)")
            }
        }
    }

    /// A tokenizer.json whose normalizer is eight `Replace` steps each making "a" sixteen "a"s grew a three-letter
    /// text 4 × 10⁹ times when encoding (found by scripts/fuzz-cli.py: `tokenize` hung, then ran out of memory). A
    /// normalizer that can grow text more than `TextNormalizer.maximumGrowth` times is an error when the file is read;
    /// Llama 2's (a "▁" in front, spaces made "▁") still loads.
    func testANormalizerThatGrowsTextWithoutBoundIsAnError() throws {
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        func write(normalizer: String) throws {
            try AtomicFile.write(text: #"{"model": {"type": "BPE", "vocab": {"a": 0, "\u2581": 1}, "merges": []}, "#
                                 + #""normalizer": "# + normalizer + "}", to: path)
        }
        let grow = #"{"type": "Replace", "pattern": {"String": "a"}, "content": "aaaaaaaaaaaaaaaa"}"#
        try write(normalizer: #"{"type": "Sequence", "normalizers": ["#
                  + Array(repeating: grow, count: 8).joined(separator: ", ") + "]}")
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: path)) { error in
            XCTAssertTrue("\(error)".contains(path), "\(error)")
            XCTAssertTrue("\(error)".contains("can make text 4294967296 times longer"), "\(error)")
        }
        try write(normalizer: #"{"type": "Prepend", "prepend": ""# + String(repeating: "a", count: 100) + #""}"#)
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: path)) {
            XCTAssertTrue("\($0)".contains("can make text 101 times longer"), "\($0)")
        }
        try write(normalizer: #"{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, "#
                  + #"{"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}"#)
        XCTAssertEqual(try Tokenizer(tokenizerJSONPath: path).encode("a a"), [1, 0, 1, 0])
    }

    /// Added tokens were matched by trying, at each byte of the text, every token starting with that byte, each as
    /// far as its length (found by scripts/fuzz-cli.py): 80,000 added tokens "tok0" ... took 21 s for 360 KB of
    /// text, one token of 10⁵ "a"s 10 s for 300 KB. Matching walks a trie of the tokens, still leftmost-longest,
    /// and a token longer than `AddedToken.maximumBytes` is an error naming it.
    func testAddedTokenMatchingIsBoundedByTheLongestToken() throws {
        let path = makeTemporaryDirectory(self) + "/tokenizer.json"
        func write(added: [String]) throws {
            let vocab = (["t", "o", "k", " ", "1", "2"].enumerated().map { "\"\($1)\": \($0)" }
                         + added.enumerated().map { "\"\($1)\": \(100 + $0)" }).joined(separator: ", ")
            let entries = added.enumerated().map { #"{"id": \#(100 + $0), "content": "\#($1)", "special": true}"# }
            try AtomicFile.write(text: #"{"model": {"type": "BPE", "vocab": {"# + vocab + #"}, "merges": []}, "#
                                 + #""added_tokens": ["# + entries.joined(separator: ", ") + "]}", to: path)
        }
        // The longest token at the earliest place: "tok12" over "tok1" and "tok", then "tok1", then plain text.
        try write(added: ["tok", "tok1", "tok12"])
        XCTAssertEqual(try Tokenizer(tokenizerJSONPath: path).encode("tok12 tok1 to"), [102, 3, 101, 3, 0, 1])
        try write(added: (0..<20_000).map { "tok\($0)" })
        let many = try Tokenizer(tokenizerJSONPath: path)
        let started = Date()
        let ids = many.encode(String(repeating: "tok1 tok19999 to ", count: 5_000))
        XCTAssertEqual(ids.prefix(6), [101, 3, 20_099, 3, 0, 1])
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
        try write(added: [String(repeating: "a", count: 1_025)])   // AddedToken.maximumBytes + 1
        XCTAssertThrowsError(try Tokenizer(tokenizerJSONPath: path)) {
            XCTAssertTrue("\($0)".contains("\(path)"), "\($0)")
            XCTAssertTrue("\($0)".contains("added_tokens[0] (id 100) is 1025 bytes long; at most 1024"), "\($0)")
        }
    }

    /// Errors about a GGUF's vocabulary named no file ("GGUF vocabulary (...): tokenizer.ggml.token_type has 3
    /// entries ..."; found by scripts/fuzz-cli.py): given the file, they start with it, as every other error does.
    func testGGUFVocabularyErrorsNameTheFile() throws {
        let tokens = ["<unk>", "<s>", "</s>", "a"]
        XCTAssertThrowsError(try Tokenizer(ggufModel: "gpt2", pre: nil, tokens: tokens, tokenTypes: [3, 3, 3],
                                           scores: nil, merges: [], bosTokenId: 1, eosTokenId: 2, unknownTokenId: 0,
                                           paddingTokenId: nil, addBOS: true, addSpacePrefix: false,
                                           file: "m.gguf")) {
            XCTAssertTrue("\($0)".hasPrefix("m.gguf: GGUF vocabulary (tokenizer.ggml.model \"gpt2\", 4 tokens): " +
                                           "tokenizer.ggml.token_type has 3 entries"), "\($0)")
        }
        XCTAssertThrowsError(try GGUFVocabulary(ggufModel: "gpt2", pre: nil, tokens: tokens, tokenTypes: nil,
                                                merges: [], bosTokenId: 9, eosTokenId: 2, unknownTokenId: 0,
                                                paddingTokenId: nil, addBOS: true, addEOS: false, file: "m.gguf")) {
            XCTAssertTrue("\($0)".hasPrefix("m.gguf: GGUF vocabulary"), "\($0)")
            XCTAssertTrue("\($0)".contains("a special token id (9) is outside the 4-token vocabulary"), "\($0)")
        }
    }

    /// One chat record of 8,000 one-word messages kept `eval` busy for minutes (found by scripts/fuzz-cli.py): its
    /// turns are found by rendering prefixes, work that grows with the square of the conversation's length. The
    /// renders of one conversation are bounded together, with an error that says what to do; a conversation of a
    /// hundred turns is still segmented.
    func testAVeryLongConversationIsBoundedNotAHang() throws {
        let template = try ChatTemplate(jinja: "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n"
                                        + "{% endfor %}", bosToken: "<s>", eosToken: "</s>")
        func conversation(_ n: Int) -> [ChatMessage] {
            (0..<n).map { ChatMessage(role: $0 % 2 == 0 ? "user" : "assistant", content: "a") }
        }
        let segments = try template.segments(conversation(100))
        XCTAssertEqual(segments.filter(\.trainable).count, 50)
        let started = Date()
        XCTAssertThrowsError(try template.segments(conversation(8_000))) { error in
            XCTAssertEqual((error as? JinjaError)?.kind, .limit)
            XCTAssertTrue("\(error)".contains("finding the turns of this 8000-message conversation took more than " +
                "\(ChatTemplate.maximumSegmentationSteps) template steps"), "\(error)")
            XCTAssertTrue("\(error)".contains("split it into shorter conversations"), "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 60)
    }
}

extension BadSettingsTests {
    /// tokenize reads a model folder's chat template as the other commands do (one reader): a chat_template.jinja
    /// that is not UTF-8, or a broken tokenizer_config.json, is the same error naming the file (tokenize read the
    /// first as no template and the second as absent).
    func testTokenizeReportsABadChatTemplateAsTheOtherCommandsDo() throws {
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let input = folder + "/../text.jsonl"
        try write(#"{"text": "the river"}"# + "\n", input)
        let (status, _, output) = try run(["tokenize", "--tokenizer", folder, "--input", input])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains(#"{"ids": ["#), output)

        try write(#"{"bos_token": "<s>", "eos_token": "</s>"}"#, folder + "/tokenizer_config.json")
        let template = folder + "/chat_template.jinja"
        FileManager.default.createFile(atPath: template, contents: Data([0x7B, 0x7B, 0x20, 0xC3, 0x28]))
        let message = "\(template): the chat template is not UTF-8 text (byte 0xC3 at offset 3)"
        try expectError(["tokenize", "--tokenizer", folder, "--input", input], [message])
        try expectError(["eval", "--model", folder, "--data", input], [message])

        try write(#"{"bos_token": "<s>", "#, folder + "/tokenizer_config.json")
        for command in [["tokenize", "--tokenizer", folder, "--input", input],
                        ["tokenize", "--tokenizer", folder + "/tokenizer.json", "--input", input],
                        ["eval", "--model", folder, "--data", input]] {
            try expectError(command, [folder + "/tokenizer_config.json: not valid JSON: invalid JSON at byte 21"])
        }
    }

    /// A JSONL line of tokenize (or of generate --prompts-from) that is not UTF-8 text is an error naming the file,
    /// the line and the bad byte (it read as "no string field"); a line that is not JSON says where it breaks.
    func testTokenizeNamesALineThatIsNotUTF8() throws {
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self)
        let input = dir + "/text.jsonl"
        var bytes = Array((#"{"text": "fine"}"# + "\n" + #"{"text": "caf"#).utf8)
        bytes += [0xE9] + Array((#""}"# + "\n").utf8)
        FileManager.default.createFile(atPath: input, contents: Data(bytes))
        let message = "\(input):2: line 2 is not valid UTF-8 text (byte 0xE9 at offset 13 of the line)"
        try expectError(["tokenize", "--tokenizer", folder, "--input", input], [message])
        let (status, _, output) = try run(["tokenize", "--tokenizer", folder], stdin: input)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("stdin:2: line 2 is not valid UTF-8 text (byte 0xE9 at offset 13"), output)
        let prompts = dir + "/prompts.jsonl"
        FileManager.default.createFile(atPath: prompts, contents: Data(bytes))
        try expectError(["generate", "--model", folder, "--prompts-from", prompts, "--prompt-field", "text"],
                        ["\(prompts):2: line 2 is not valid UTF-8 text (byte 0xE9 at offset 13 of the line)"])
        try write(#"{"prompt": "fine"}"# + "\n" + #"{"prompt": "caf"# + "\u{E9}\"}\n{\"prompt\": x}\n", prompts)
        try expectError(["generate", "--model", folder, "--prompts-from", prompts],
                        ["\(prompts):3: line 3 is not valid JSON: invalid JSON at byte 11 (line 1, column 12)"])
        try write(#"{"text": 3}"# + "\n", input)
        try expectError(["tokenize", "--tokenizer", folder, "--input", input], ["\(input):1: no string field \"text\""])
    }

    /// The list form of chat_template: chat data renders with its "default" entry, export writes that one as the
    /// GGUF's tokenizer.chat_template, and merge copies tokenizer_config.json as it is.
    func testTheListFormOfChatTemplateIsUsedByEvalExportAndMerge() throws {
        let golden = try Shared.requireGolden()
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let config: JSONValue = .object([
            ("bos_token", .string("<s>")), ("eos_token", .string("</s>")),
            ("chat_template", .array([
                .object([("name", .string("tool_use")), ("template", .string("{% bad"))]),
                .object([("name", .string("default")), ("template", .string(GGUFExportTests.chatTemplate))]),
            ])),
        ])
        let configText = config.pythonText(indent: 2)
        try write(configText, folder + "/tokenizer_config.json")
        let dir = makeTemporaryDirectory(self)
        try write(#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}"#
                  + "\n", dir + "/chat.jsonl")
        let (status, _, output) = try run(["eval", "--model", folder, "--data", dir + "/chat.jsonl"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("loss "), output)

        let gguf = dir + "/m.gguf"
        let (exported, _, exportOutput) = try run(["export", "--model", folder, "--output", gguf, "--check", "never"])
        XCTAssertEqual(exported, 0, exportOutput)
        XCTAssertEqual(try GGUFFile(path: gguf).metadata["tokenizer.chat_template"]?.string,
                       GGUFExportTests.chatTemplate)

        let (merged, _, mergeOutput) = try run(["merge", "--model", folder, "--adapter", golden + "/tiny-adapter",
                                                "--output", dir + "/merged", "--check", "never"])
        XCTAssertEqual(merged, 0, mergeOutput)
        XCTAssertEqual(try String(contentsOfFile: dir + "/merged/tokenizer_config.json", encoding: .utf8), configText)

        // Two entries and none named "default": an error naming the file and the names.
        try write(configText.replacingOccurrences(of: #""default""#, with: #""rag""#),
                  folder + "/tokenizer_config.json")
        try expectError(["eval", "--model", folder, "--data", dir + "/chat.jsonl"],
                        [folder + "/tokenizer_config.json: chat_template lists 2 templates (\"tool_use\", \"rag\")"])
    }
}
