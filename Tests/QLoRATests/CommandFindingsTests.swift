import Foundation
import ModelFiles
import XCTest

/// What `scripts/fuzz-commands.py` (the commands past train, with inputs that pass validation and reach the engine)
/// found: traps, hangs and lost files, each now a clear error (issue 12).
extension BadSettingsTests {
    /// A post-processor's special-token id outside the token table (TemplateProcessing's "ids": [100000]) reached
    /// the embedding of every encoded prompt: a trap in generate. The tokenizer is refused where it is read.
    func testASpecialTokenIdOutsideTheVocabularyIsRefused() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let path = model + "/tokenizer.json"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let edited = text.replacingOccurrences(of: #""ids": \[\s*1\s*\]"#, with: #""ids": [100000]"#,
                                               options: .regularExpression)
        XCTAssertNotEqual(edited, text)
        try write(edited, path)
        try expectError(["generate", "--model", model, "--prompt", "the river", "--max-new-tokens", "2"],
                        ["post_processor: special token id 100000 is outside the vocabulary [0, 384)"])
    }

    /// A config claiming 2^24 layers over tiny-llama's tensors: merge ran for minutes, export and quantize failed an
    /// allocation, building name lists from the config before reading the file. Refused at once, naming the file.
    func testAConfigWithMoreLayersThanTensorsIsRefusedAtOnce() throws {
        let dir = makeTemporaryDirectory(self), model = dir + "/model"
        try FileManager.default.copyItem(atPath: try Shared.requireGolden() + "/tiny-llama", toPath: model)
        let config = try String(contentsOfFile: model + "/config.json", encoding: .utf8)
        try write(config.replacingOccurrences(of: #""num_hidden_layers": *[0-9]+"#,
                                              with: #""num_hidden_layers": 16777216"#, options: .regularExpression),
                  model + "/config.json")
        let adapter = try Shared.requireGolden() + "/tiny-adapter"
        let refused = ["num_hidden_layers is 16777216, but the weights hold only"]
        for command in [["info", model], ["merge", "--model", model, "--adapter", adapter, "--output", dir + "/m"],
                        ["export", "--model", model, "--output", dir + "/o.gguf"],
                        ["quantize", "--model", model, "--output", dir + "/q"]] {
            let started = Date()
            try expectError(command, refused)
            XCTAssertLessThan(Date().timeIntervalSince(started), 30, "\(command)")
        }
    }

    /// `plan --model-config` with 2^24 layers built records for each (~0.3 ms a layer) and failed an allocation
    /// after a minute; bench likewise. More than 4,096 layers is refused.
    func testPlanRefusesAnAbsurdLayerCount() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"hidden_size": 32, "intermediate_size": 8, "num_hidden_layers": 16777216, "#
                  + #""num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 8, "#
                  + #""max_position_embeddings": 64}"#, dir + "/config.json")
        try expectError(["plan", "--model-config", dir + "/config.json", "--batch-size", "1", "--max-seq-length", "4"],
                        ["16777216 layers is more than the 4096"])
    }

    /// An --init-adapter inside the run's own best/ or checkpoint-N/ folder was overwritten by the new best adapter
    /// or deleted by --save-total-limit's rotation.
    func testAnInitAdapterInsideTheRunsFoldersIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let out = dir + "/run"
        var (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", out,
                                           "--max-steps", "2", "--save-steps", "1"])
        XCTAssertEqual(status, 0, output)
        let before = try FileSystem.readBytes(out + "/checkpoint-1/adapter_model.safetensors")
        try expectError(["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "2",
                         "--save-steps", "1", "--save-total-limit", "1", "--overwrite-output-dir",
                         "--init-adapter", out + "/checkpoint-1"],
                        ["--init-adapter \(out)/checkpoint-1 is inside \(out)/checkpoint-1"])
        XCTAssertEqual(try FileSystem.readBytes(out + "/checkpoint-1/adapter_model.safetensors"), before)
        // Another folder of the run's is allowed (the final adapter of a run continued elsewhere, say).
        (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", dir + "/next",
                                       "--max-steps", "1", "--init-adapter", out + "/checkpoint-2"])
        XCTAssertEqual(status, 0, output)
    }

    /// A failing check (unusable --check-data) used to fail the export after the previous file at --output had
    /// been replaced; the new file is now renamed onto it only once the check has passed.
    func testAFailedExportCheckKeepsThePreviousFile() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self), out = dir + "/out.gguf"
        let (status, _, output) = try run(["export", "--model", model, "--output", out, "--check", "never"])
        XCTAssertEqual(status, 0, output)
        let before = try FileSystem.readBytes(out)
        try write(#"{"foo": 1}"# + "\n", dir + "/bad.jsonl")
        let (failed, crashed, message) = try run(["export", "--model", model, "--output", out, "--type", "f16",
                                                  "--check-data", dir + "/bad.jsonl"])
        XCTAssertNotEqual(failed, 0, message)
        XCTAssertFalse(crashed, message)
        XCTAssertEqual(try FileSystem.readBytes(out), before, "the earlier export was replaced: \(message)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["bad.jsonl", "out.gguf"])
    }

    /// `plot` wrote through a symbolic link named loss.svg (to a model's config.json, here): refused as train
    /// refuses it.
    func testPlotRefusesASymbolicLinkForItsPlot() throws {
        let dir = makeTemporaryDirectory(self)
        try FileSystem.createDirectory(dir + "/run")
        try write(#"{"step": 1, "loss": 2.5}"# + "\n" + #"{"step": 2, "loss": 2.0}"# + "\n",
                  dir + "/run/metrics.jsonl")
        try write("{}", dir + "/config.json")
        try FileManager.default.createSymbolicLink(atPath: dir + "/run/loss.svg",
                                                   withDestinationPath: dir + "/config.json")
        try expectError(["plot", dir + "/run"], ["\(dir)/run/loss.svg is a symbolic link"])
        XCTAssertEqual(try String(contentsOfFile: dir + "/config.json", encoding: .utf8), "{}")
    }
}

extension BadSettingsTests {
    /// tiny-llama (MLP 512 wide over hidden 192) at batch 1000 × 256 tokens under an 8 GiB address-space limit:
    /// the memory check counted hidden-size rows only, let the run through, and the step failed an allocation
    /// ("Fatal error", found by fuzz-commands.py's memory kind with seed 1234). It counts the layer's q, k, v, MLP
    /// and attention rows now, and refuses.
    func testTheMemoryCheckCountsTheWideMLPAndAttention() throws {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/long.jsonl"
        try write((0..<500).map { i in
            "{\"input_ids\": [\((0..<256).map { String(3 + (7 * i + $0) % 380) }.joined(separator: ", "))]}\n"
        }.joined(), data)
        let (status, crashed, output) = try run(["-c", "ulimit -v 8388608 && exec \"$0\" \"$@\"", try binary(),
                                                 "train", "--model", model, "--data", data, "--batch-size", "1000",
                                                 "--max-steps", "1", "--output-dir", dir + "/out"],
                                                executable: "/bin/sh")
        XCTAssertFalse(crashed, output)
        XCTAssertEqual(status, 64, output)
        XCTAssertTrue(output.contains("--batch-size 1000 × examples of up to 256 tokens needs at least"), output)
    }
}
