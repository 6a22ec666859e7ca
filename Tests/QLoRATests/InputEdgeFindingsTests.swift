import Foundation
import ModelFiles
import Tensors
import Training
import XCTest

/// What a fuzzing round on the edges of inputs found (training data oddities, numeric boundaries of flags and
/// recipe keys, damaged or placeholder model files): files accepted as something they are not, and errors that
/// named the wrong line or the wrong cause (issue 12).
extension BadSettingsTests {
    /// The text a Hugging Face clone without git-lfs leaves in place of each large file.
    static let lfsPointer = "version https://git-lfs.github.com/spec/v1\n"
        + "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 1871912\n"

    /// A Git LFS pointer as model.safetensors read as a header length of 2336927755350992246 bytes, as config.json
    /// or tokenizer.json as "invalid JSON at byte 0", and as the data file it was trained on as plain text. Each
    /// is now named for what it is.
    func testAGitLFSPointerIsNamedAsOne() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self)
        let data = dir + "/data.jsonl"
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", data)
        let lfs = ["is a Git LFS pointer", "of 1871912 bytes", "git lfs pull"]
        for file in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
            let copy = dir + "/" + file.replacingOccurrences(of: ".", with: "-")
            try FileManager.default.copyItem(atPath: model, toPath: copy)
            try FileManager.default.removeItem(atPath: copy + "/" + file)
            try write(Self.lfsPointer, copy + "/" + file)
            try expectError(["eval", "--model", copy, "--data", data], [copy + "/" + file] + lfs)
        }
        try write(Self.lfsPointer, dir + "/pointer.jsonl")
        try expectError(["train", "--model", model, "--data", dir + "/pointer.jsonl", "--output-dir", dir + "/out",
                         "--max-steps", "1"], [dir + "/pointer.jsonl: the file is a Git LFS pointer"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/adapter_model.safetensors"))
        try write(Self.lfsPointer, dir + "/model.gguf")
        XCTAssertThrowsError(try GGUFFile(path: dir + "/model.gguf")) {
            XCTAssertTrue("\($0)".contains("is a Git LFS pointer"), "\($0)")
        }
    }

    /// A header length over the reader's limit that the file could hold was reported as "header claims 100000001
    /// bytes but only 100000001 bytes follow"; exactly the limit is read.
    func testASafetensorsHeaderOverTheLimitSaysSo() throws {
        let dir = makeTemporaryDirectory(self), path = dir + "/model.safetensors"
        func header(_ length: Int) throws {
            var bytes = withUnsafeBytes(of: UInt64(length).littleEndian) { Array($0) }
            // One metadata string fills the header (a string is read faster than white space in a debug build).
            let open = Array(#"{"__metadata__": {"a": ""#.utf8), close = Array(#""}}"#.utf8)
            bytes += open + [UInt8](repeating: 0x61, count: length - open.count - close.count) + close
            try AtomicFile.write(bytes, to: path)
        }
        try header(SafeTensorsFile.maximumHeaderSize + 1)
        XCTAssertThrowsError(try SafeTensorsFile(path: path)) {
            XCTAssertEqual("\($0)", "\(path): invalid header: the header length is 100000001 bytes, more than the "
                           + "100000000 that are read (the limit of the safetensors format's own reader)")
        }
        try header(SafeTensorsFile.maximumHeaderSize)
        XCTAssertEqual(try SafeTensorsFile(path: path).entries.count, 0)
    }

    /// Plain-text data that is not UTF-8 (a binary file, a gzip-compressed JSONL) was trained on, each bad byte a
    /// U+FFFD; a JSONL file with lone-CR line ends failed as "unexpected text after the value" without saying why.
    func testPlainTextDataMustBeUTF8AndLoneCRLineEndsAreNamed() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self), data = dir + "/data.txt"
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        try AtomicFile.write(Array("the river rose\nslowly ".utf8) + [0xFF, 0xFE] + Array(" night\n".utf8), to: data)
        try expectError(train, [data + ":2: plain text that is not UTF-8: byte 0xFF at offset 22 of the file"])
        try AtomicFile.write([0x1F, 0x8B, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03], to: data)
        try expectError(train, [data + ": is gzip-compressed", "decompress it first"])
        let record = #"{"text": "the river rose"}"#
        try write(record + "\r" + record + "\r", data)
        try expectError(train, [data + ":1: invalid JSON at byte 27", "not a lone CR"])
        try write("the river rose slowly through the night\n", data)
        let (status, _, output) = try run(train)
        XCTAssertEqual(status, 0, output)
    }

    /// `generate --prompts-from` dropped empty lines before counting, so an error named the wrong line (line 2 for
    /// a bad record on line 4); a byte order mark, or a blank line of a CRLF file, was refused as invalid JSON,
    /// where train reads the same file. tokenize --input likewise.
    func testPromptFileLinesAreCountedAndBlankLinesSkipped() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self), prompts = dir + "/prompts.jsonl"
        let generate = ["generate", "--model", model, "--prompts-from", prompts, "--max-new-tokens", "1"]
        try write(#"{"prompt": "the river"}"# + "\n\n\n{bad}\n", prompts)
        try expectError(generate, [prompts + ":4: line 4 is not valid JSON"])
        try write("\u{FEFF}" + #"{"prompt": "the river"}"# + "\r\n\r\n  \r\n" + #"{"prompt": "the"}"# + "\r\n", prompts)
        var (status, _, output) = try run(generate)
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("2 prompts"), output)
        let input = dir + "/text.jsonl"
        try write("\u{FEFF}" + #"{"text": "the river"}"# + "\r\n\r\n" + #"{"text": "the"}"# + "\n \n", input)
        (status, _, output) = try run(["tokenize", "--tokenizer", model, "--input", input])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(output.split(separator: "\n").filter { $0.hasPrefix("{\"ids\"") }.count, 2, output)
    }
}

extension BadSettingsTests {
    /// A projection with a zero-sized or extra dimension ([0, 192], [1, 192, 192]) was quantized (or copied) into a
    /// checkpoint and exit 0; only loading that checkpoint failed, the empty one blaming its quant_state. quantize
    /// now checks every shape against config.json first, and writes nothing.
    func testQuantizeRefusesATensorOfTheWrongShape() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        let source = try SafeTensorsFile(path: golden + "/model.safetensors")
        let name = "model.layers.0.self_attn.q_proj.weight"
        for shape in [[0, 192], [1, 192, 192]] {
            let dir = makeTemporaryDirectory(self), model = dir + "/model"
            try FileSystem.createDirectory(model)
            try FileManager.default.copyItem(atPath: golden + "/config.json", toPath: model + "/config.json")
            let tensors = try source.names.map { n -> (name: String, tensor: Tensor) in
                let t = try source.tensor(named: n)
                guard n == name else { return (n, t) }
                let count = shape.reduce(1, *)
                let view = UnsafeRawBufferPointer(rebasing: t.storage.bytes[..<(count * t.dtype.byteSize)])
                return (n, Tensor(shape: shape, dtype: t.dtype, storage: TensorStorage(view: view, owner: source)))
            }
            try SafeTensorsWriter.write(tensors, to: model + "/model.safetensors")
            try expectError(["quantize", "--model", model, "--output", dir + "/q"],
                            ["tensor '\(name)': is BF16 \(shape), expected a float tensor of shape [192, 192]"])
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/q"))
        }
    }
}
