import Foundation
import Tokenizers
import Training
import XCTest

/// Dataset shapes users bring: ShareGPT conversations and a named text field (TRL's dataset_text_field).
final class DatasetShapesTests: XCTestCase {
    func tokenizer() throws -> Tokenizer {
        let path = Shared.root + "/golden/smollm2-tokenizer/tokenizer.json"
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("no SmolLM2 tokenizer at \(path)") }
        return try Tokenizer(tokenizerJSONPath: path)
    }

    /// A ShareGPT record (`conversations` of `from`/`value`) gives the same tokens and labels as the equivalent
    /// `messages` record: human → user, gpt → assistant, loss on the assistant turns only.
    func testShareGPTEqualsMessages() throws {
        let tok = try tokenizer()
        let dir = makeTemporaryDirectory(self)
        let share = #"{"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "# +
            #""2+2?"}, {"from": "gpt", "value": "4"}]}"#
        let messages = #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "# +
            #""2+2?"}, {"role": "assistant", "content": "4"}]}"#
        try share.write(toFile: dir + "/share.jsonl", atomically: true, encoding: .utf8)
        try messages.write(toFile: dir + "/messages.jsonl", atomically: true, encoding: .utf8)
        var options = DatasetOptions()
        options.chatTemplate = try ChatTemplate(jinja: try ChatFixtures.template("qwen2.5"), eosToken: "<|im_end|>")
        let a = try TextDataset.load(path: dir + "/share.jsonl", tokenizer: tok, vocabularySize: 49152,
            options: options)
        let b = try TextDataset.load(path: dir + "/messages.jsonl", tokenizer: tok, vocabularySize: 49152,
            options: options)
        XCTAssertEqual(a.count, 1)
        XCTAssertEqual(a.map(\.inputIds), b.map(\.inputIds))
        XCTAssertEqual(a.map(\.labels), b.map(\.labels))
        XCTAssertEqual(tok.decode(a[0].labels.filter { $0 != -100 }), "4<|im_end|>\n")
        try #"{"conversations": [{"from": "robot", "value": "x"}]}"#.write(toFile: dir + "/bad.jsonl", atomically: true,
                                                                          encoding: .utf8)
        XCTAssertThrowsError(try TextDataset.load(path: dir + "/bad.jsonl", tokenizer: tok, vocabularySize: 49152,
                                                  options: options)) { XCTAssertTrue("\($0)".contains("robot"),
                                                      "\($0)") }
    }

    /// `textField` trains on a named field as plain text (english_quotes' `quote`), the same tokens as `text` would.
    func testDatasetTextField() throws {
        let tok = try tokenizer()
        let dir = makeTemporaryDirectory(self)
        try #"{"quote": "Be yourself; everyone else is already taken.", "author": "Oscar Wilde"}"#
            .write(toFile: dir + "/quotes.jsonl", atomically: true, encoding: .utf8)
        try #"{"text": "Be yourself; everyone else is already taken."}"#
            .write(toFile: dir + "/text.jsonl", atomically: true, encoding: .utf8)
        var options = DatasetOptions()
        XCTAssertThrowsError(try TextDataset.load(path: dir + "/quotes.jsonl", tokenizer: tok, vocabularySize: 49152,
                                                  options: options))
        options.textField = "quote"
        let quotes = try TextDataset.load(path: dir + "/quotes.jsonl", tokenizer: tok, vocabularySize: 49152,
            options: options)
        options.textField = nil
        let text = try TextDataset.load(path: dir + "/text.jsonl", tokenizer: tok, vocabularySize: 49152,
            options: options)
        XCTAssertEqual(quotes.map(\.inputIds), text.map(\.inputIds))
        XCTAssertEqual(quotes.map(\.labels), text.map(\.labels))
        XCTAssertGreaterThan(quotes[0].inputIds.count, 5)
    }
}

extension DatasetShapesTests {
    /// A JSONL file that starts with a UTF-8 byte order mark reads as the same records without it (it was taken for
    /// plain text and trained on with its braces and keys); a file of white space only holds no examples (it was
    /// trained on as a text of spaces).
    func testAByteOrderMarkIsSkippedAndWhiteSpaceHoldsNoExamples() throws {
        let tok = try tokenizer()
        let dir = makeTemporaryDirectory(self)
        let line = #"{"text": "the cat sat on the mat"}"# + "\r\n"
        FileManager.default.createFile(atPath: dir + "/plain.jsonl", contents: Data(line.utf8))
        FileManager.default.createFile(atPath: dir + "/bom.jsonl",
                                       contents: Data([0xEF, 0xBB, 0xBF] + Array(line.utf8)))
        var options = DatasetOptions()
        options.maxSeqLength = 64
        let plain = try TextDataset.load(path: dir + "/plain.jsonl", tokenizer: tok, vocabularySize: tok.vocabularySize,
                                         options: options)
        let bom = try TextDataset.load(path: dir + "/bom.jsonl", tokenizer: tok, vocabularySize: tok.vocabularySize,
                                       options: options)
        XCTAssertEqual(bom.map(\.inputIds), plain.map(\.inputIds))
        XCTAssertEqual(bom.map(\.labels), plain.map(\.labels))
        for (name, bytes) in [("space.jsonl", Array(" \n\t\r\n".utf8)), ("empty.jsonl", []),
                              ("bomonly.jsonl", [0xEF, 0xBB, 0xBF, 0x0A])] {
            FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(bytes))
            XCTAssertThrowsError(try TextDataset.load(path: dir + "/" + name, tokenizer: tok,
                                                      vocabularySize: tok.vocabularySize, options: options)) {
                XCTAssertEqual("\($0)", "\(dir)/\(name): holds no examples: the file is empty or white space only")
            }
        }
    }
}
