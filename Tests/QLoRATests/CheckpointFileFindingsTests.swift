import Foundation
import Llama
import ModelFiles
import Training
import XCTest

/// What a high-volume fuzzing round on the files qlora writes and reads back (scripts/fuzz-files.py: checkpoint
/// folders, the model folder's small JSON files, every command's options at their edges) found (issue 12).
extension BadSettingsTests {
    /// A two-step run with a checkpoint after each step and a validation loss after each, on four examples.
    func checkpointedRun() throws -> (train: [String], checkpoint: String, state: String) {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/four.jsonl"
        try write((0..<4).map { #"{"input_ids": [1, 2, 3, \#($0 + 4)]}"# + "\n" }.joined(), data)
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--batch-size", "2",
                     "--save-steps", "1", "--eval-data", data, "--eval-steps", "1"]
        let (status, _, output) = try run(train + ["--max-steps", "2"])
        XCTAssertEqual(status, 0, output)
        let checkpoint = dir + "/out/checkpoint-1"
        return (train, checkpoint, checkpoint + "/trainer_state.json")
    }

    /// trainer_state.json with its fields changed, written as the trainer writes it.
    func rewriteState(_ path: String, _ changes: [(String, JSONValue)]) throws {
        var state = try JSONValue(parsing: FileSystem.readBytes(path))
        for (key, value) in changes { state.set(key, value) }
        try write(state.pythonText(indent: 2) + "\n", path)
    }

    /// A checkpoint whose epoch was 2^63 - 1 at the end of its data order trapped (arithmetic overflow) on the first
    /// step of the resumed run, and one whose early-stopping counter was 2^63 - 1 behind a best loss no evaluation
    /// beats trapped at the first evaluation. Both are refused, naming the file, the field and the range.
    func testCheckpointCountersPastWhatARunCanReachAreRefused() throws {
        let (train, checkpoint, state) = try checkpointedRun()
        let resume = train + ["--max-steps", "3", "--resume-from-checkpoint", checkpoint]
        let saved = try String(contentsOfFile: state, encoding: .utf8)
        let order = try JSONValue(parsing: FileSystem.readBytes(state))["data_order"]?.arrayValue?.count ?? 0
        try rewriteState(state, [("epoch", .int(Int.max)), ("data_position", .int(order))])
        try expectError(resume, [state + ": epoch is 9223372036854775807: must be in 0 ... 9007199254740992"])
        try write(saved, state)
        try rewriteState(state, [("best_metric", .double(-1)), ("early_stopping_patience_counter", .int(Int.max))])
        try expectError(resume, [state + ": early_stopping_patience_counter is 9223372036854775807: must be in "
                                 + "0 ... global_step 1"])
        // A state file that cannot be read is named once (it was "PATH: PATH: cannot open: ...").
        try FileManager.default.removeItem(atPath: state)
        try FileManager.default.createSymbolicLink(atPath: state, withDestinationPath: "trainer_state.json")
        try expectError(resume, [state + ": cannot open: Too many levels of symbolic links"])
        XCTAssertFalse(try run(resume).output.contains(state + ": " + state))
        try FileManager.default.removeItem(atPath: state)
        try write(saved, state)
        let (status, _, output) = try run(resume)
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// export --output through a symbolic link onto the --check-data file read the data, checked the export on it
    /// and then renamed the GGUF onto the data file (exit 0, the data gone). It is refused before anything is read.
    func testExportNeverReplacesItsCheckData() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self)
        let data = dir + "/check.jsonl"
        let text = (0..<4).map { #"{"text": "the river rose \#($0)"}"# + "\n" }.joined()
        try write(text, data)
        try FileManager.default.createSymbolicLink(atPath: dir + "/data.gguf", withDestinationPath: data)
        try expectError(["export", "--format", "gguf", "--model", model, "--output", dir + "/data.gguf",
                         "--check", "always", "--check-data", dir + "/data.gguf"],
                        ["--output \(dir)/data.gguf is the --check-data file", "name another file"])
        try expectError(["export", "--format", "gguf", "--model", model, "--output", dir + "/data.gguf",
                         "--check", "always", "--check-data", data], ["is the --check-data file \(data)"])
        XCTAssertEqual(try String(contentsOfFile: data, encoding: .utf8), text)
    }
}

extension BadSettingsTests {
    /// Prompts longer than --max-seq-length leave no trained token after the cut, and the error blamed the records
    /// ("every record has fewer than 2 tokens or no token that takes the loss") without naming the flag.
    func testRecordsCutBeforeTheirTargetsNameMaxSeqLength() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self)
        let data = dir + "/qa.jsonl"
        try write((0..<2).map { #"{"prompt": "the river rose slowly through the night \#($0)", "#
                                + #""completion": "and by morning"}"# + "\n" }.joined(), data)
        let said = "qa.jsonl: no usable examples: cut to 8 tokens (--max-seq-length, at most the model's context), "
            + "each of the 2 records loses every trained token (raise --max-seq-length)"
        try expectError(["eval", "--model", model, "--data", data, "--max-seq-length", "8"], [said])
        try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1",
                         "--max-seq-length", "8"], [said])
        let (status, _, output) = try run(["eval", "--model", model, "--data", data, "--max-seq-length", "64"])
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// A run resumed with --load-best-model-at-end from a checkpoint before the abandoned run's best: when no
    /// evaluation of the resumed run beat the checkpoint's best, the adapter the abandoned run had saved in
    /// OUTPUT/best for its own later best was loaded as "the best: step 2" and saved as the final adapter. The
    /// best adapter's step is kept beside it (best/best_state.json); another step's adapter is not taken.
    func testAResumedRunNeverTakesTheAbandonedRunsBestAdapter() throws {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/four.jsonl", hard = dir + "/hard.jsonl"
        try write((0..<4).map { #"{"input_ids": [1, 2, 3, \#($0 + 4)]}"# + "\n" }.joined(), data)
        try write(["124, 306, 281, 69, 192, 312, 245, 323, 300, 36, 313, 9, 243",
                   "135, 285, 122, 101, 370, 243, 279, 284, 246, 206, 330, 80, 121",
                   "328, 80, 270, 202, 382, 10, 346, 35, 84, 305, 24, 157, 18"]
            .map { #"{"input_ids": [\#($0)]}"# + "\n" }.joined(), hard)
        let out = dir + "/out"
        let train = ["train", "--model", model, "--data", data, "--output-dir", out, "--batch-size", "2",
                     "--save-steps", "1", "--eval-steps", "1", "--load-best-model-at-end", "--learning-rate", "1e-3"]
        var (status, _, output) = try run(train + ["--max-steps", "4", "--eval-data", data])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("the final adapter is the best: step 4"), output)
        // Validation data the checkpoint's best loss (on the first file) cannot be beaten on.
        (status, _, output) = try run(train + ["--max-steps", "3", "--eval-data", hard,
                                               "--resume-from-checkpoint", out + "/checkpoint-2"])
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(output.contains("the final adapter is the best"), output)
        XCTAssertTrue(output.contains("(step 2, from the checkpoint resumed) has no adapter in \(out)/best (it holds "
                                      + "the adapter of step 4, saved after that checkpoint)"), output)
        XCTAssertEqual(FileManager.default.contents(atPath: out + "/adapter_model.safetensors"),
                       FileManager.default.contents(atPath: out + "/checkpoint-3/adapter_model.safetensors"))
    }
}

extension BadSettingsTests {
    /// optimizer.safetensors' metadata: "steps" that is not JSON stopped with "invalid JSON at byte 1" naming no
    /// file, and "steps" that is JSON but no object (a list) restored no moment at all: the run resumed with a fresh
    /// optimizer and exit 0. A missing "optim" was "saved by ?". Each names the file and what it expected.
    func testOptimizerMetadataThatIsNoObjectIsRefused() throws {
        let (train, checkpoint, _) = try checkpointedRun()
        let resume = train + ["--max-steps", "3", "--resume-from-checkpoint", checkpoint]
        let path = checkpoint + "/optimizer.safetensors"
        let file = try SafeTensorsFile(path: path)
        let tensors = try file.names.map { (name: $0, tensor: try file.tensor(named: $0)) }
        func rewrite(_ change: (inout [String: String]) -> Void) throws {
            var metadata = file.metadata
            change(&metadata)
            try SafeTensorsWriter.write(tensors, metadata: metadata, to: path)
        }
        try rewrite { $0["steps"] = "{" }
        try expectError(resume, [path + ": tensor 'optimizer': the metadata's \"steps\" is not JSON"])
        try rewrite { $0["steps"] = "[1]" }
        try expectError(resume, [path + ": tensor 'optimizer': the metadata's \"steps\" is [1], expected an object "
                                 + "of update counts by tensor"])
        // An object that leaves a tensor out: its moments were dropped, its matrix resumed with a fresh state.
        let first = try XCTUnwrap(try JSONValue(parsing: file.metadata["steps"] ?? "{}").objectValue?.first?.0)
        try rewrite { m in
            let rest = (try? JSONValue(parsing: m["steps"] ?? "{}"))?.objectValue?.filter { $0.0 != first } ?? []
            m["steps"] = JSONValue.object(rest).compactText()
        }
        try expectError(resume, [path + ": tensor '\(first).m': moments that the metadata's \"steps\" does not list"])
        try rewrite { $0["optim"] = nil }
        try expectError(resume, [path + ": tensor 'optimizer': the metadata names no optimizer (\"optim\")"])
        try rewrite { _ in }
        let (status, _, output) = try run(resume)
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// bench-quantize --model with a folder that holds no model ran the whole benchmark first (a minute by
    /// default, minutes in a debug build) and only then failed on the folder. It is refused before the benchmark.
    func testBenchQuantizeChecksItsModelFirst() throws {
        let dir = makeTemporaryDirectory(self)
        let (status, crashed, output) = try run(["bench-quantize", "--rows", "64", "--cols", "64", "--repeats", "1",
                                                 "--model", dir + "/missing"], timeout: 30)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertFalse(crashed, output)
        XCTAssertTrue(output.contains(dir + "/missing"), output)
        XCTAssertFalse(output.contains("SmolLM2-135M linear weights"), "the benchmark ran first: \(output)")
    }
}

extension BadSettingsTests {
    /// A BOS or EOS that tokenizer_config.json names but the vocabulary lacks (a typo, a token of another model),
    /// or that is neither text nor an object with "content", was replaced in silence by a guess ("</s>"), while the
    /// chat template still wrote the configured text. It is an error naming the file, the key and the value.
    func testABOSOrEOSMissingFromTheVocabularyIsAnError() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let dir = makeTemporaryDirectory(self)
        let data = dir + "/data.jsonl"
        try write(#"{"text": "the river rose"}"# + "\n", data)
        let path = model + "/tokenizer_config.json"
        let saved = try String(contentsOfFile: path, encoding: .utf8)
        for (key, value, said) in [("eos_token", #"{"content": "<nope>"}"#, #"eos_token "<nope>" is no token of "#),
                                   ("bos_token", #""<|begin_of_text|>""#, #"bos_token "<|begin_of_text|>" is no"#),
                                   ("eos_token", "5", "eos_token is 5, expected the token's text or an object")] {
            var config = try JSONValue(parsing: saved)
            config.set(key, try JSONValue(parsing: value))
            try write(config.pythonText(indent: 2), path)
            try expectError(["eval", "--model", model, "--data", data], [path + ": " + said])
        }
        var config = try JSONValue(parsing: saved)
        config.set("eos_token", .null)
        try write(config.pythonText(indent: 2), path)
        let (status, _, output) = try run(["eval", "--model", model, "--data", data])
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// Resuming from a checkpoint at the run's last step trained nothing, said nothing about it and ended with
    /// "final logged loss nan". It warns that no step is trained, and ends saying so (a checkpoint past the last
    /// step is refused: ResumeFindingsTests).
    func testAResumeWithNothingLeftToTrainSaysSo() throws {
        let (train, checkpoint, _) = try checkpointedRun()
        let last = (checkpoint as NSString).deletingLastPathComponent + "/checkpoint-2"
        let (status, _, output) = try run(train + ["--max-steps", "2", "--resume-from-checkpoint", last])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("is at step 2, and this run ends at step 2 (--max-steps / --num-train-epochs): "
                                      + "no step is trained"), output)
        XCTAssertTrue(output.contains("(no step trained)"), output)
        XCTAssertFalse(output.contains("loss nan"), output)
    }
}

extension BadSettingsTests {
    /// An empty path is no folder: --adapter "" (eval, generate, info, export; --init-adapter "" of train) read
    /// /adapter_config.json and /adapter_model.safetensors, the root's, and `plot ""` read /metrics.jsonl and wrote
    /// /loss.svg; merge --adapter "" said "--output ... is inside the --adapter folder". Each is refused.
    func testAnEmptyAdapterOrRunFolderIsRefused() throws {
        let (_, dir, data) = try tinyModelAndData()
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let adapter = "an empty path names no adapter folder"
        try expectError(["eval", "--model", model, "--data", data, "--adapter", ""], [adapter])
        try expectError(["generate", "--model", model, "--prompt", "the river", "--adapter", ""], [adapter])
        try expectError(["info", model, "--adapter", ""], [adapter])
        try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1",
                         "--init-adapter", ""], ["--init-adapter is empty"])
        try expectError(["merge", "--model", model, "--adapter", "", "--output", dir + "/merged"],
                        ["--adapter is empty: name the folder to read"])
        try expectError(["plot", ""], ["RUN_DIR is empty: name the run folder"])
        // Empty paths named nothing (": cannot open: ..."): the flag now.
        try expectError(["eval", "--model", "", "--data", data], ["--model (recipe model_name_or_path) is empty"])
        try expectError(["tokenize", "--tokenizer", "", "--input", data], ["--tokenizer is empty"])
        for command in [["tokenize", "--tokenizer", model, "--input", ""], ["info", ""],
                        ["plan", "--model-config", ""]] {
            try expectError(command, [#""": cannot open: an empty path names no file or folder"#])
        }
        try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/logs", "--max-steps", "1",
                         "--report-to", "tensorboard", "--logging-dir", ""],
                        ["--logging-dir (recipe logging_dir) is empty"])
    }
}

extension BadSettingsTests {
    /// `plan --model` (and bench) of a model with a context under 512 tokens failed with "--max-seq-length 512 is
    /// longer than the model's max_position_embeddings (256)", a value never given: it says it is the default and
    /// which value fits.
    func testPlanSaysItsDefaultSequenceLengthIsTheOneTooLong() throws {
        let (model, _, _) = try tinyModelAndData()
        try expectError(["plan", "--model", model], ["--max-seq-length 512 (the default, train's) is longer than the "
                                                     + "model's max_position_embeddings (256): give --max-seq-length "
                                                     + "256 or less"])
        try expectError(["plan", "--model", model, "--max-seq-length", "300"],
                        ["--max-seq-length 300 is longer than the model's max_position_embeddings (256)"])
        let (status, _, output) = try run(["plan", "--model", model, "--max-seq-length", "256"])
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// A config.json with fewer layers than its weights hold computed the model without the rest, without a word
    /// (a different loss from the same files). As transformers does (its "weights not used" warning), it is said.
    func testLayersBeyondTheConfigsCountAreNamedAsUnused() throws {
        let (golden, dir, data) = try tinyModelAndData()
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: golden, toPath: model)
        var config = try JSONValue(parsing: FileSystem.readBytes(model + "/config.json"))
        config.set("num_hidden_layers", .int(1))
        try write(config.pythonText(indent: 2), model + "/config.json")
        let (status, _, output) = try run(["eval", "--model", model, "--data", data])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: \(model): num_hidden_layers is 1, but the weights hold layers up to "
                                      + "model.layers.1: layer 1 is not used"), output)
        XCTAssertFalse(try run(["eval", "--model", golden, "--data", data]).output.contains("not used"))
    }
}

extension BadSettingsTests {
    /// tokenizer.json's padding.pad_id was taken as written: -1 trapped in export ("Negative value is not
    /// representable", writing the GGUF's u32), and 100000 was written as the GGUF's padding token, outside its
    /// vocabulary. An id outside the vocabulary is an error naming the file and the field.
    func testAPaddingIdOutsideTheVocabularyIsAnError() throws {
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let path = model + "/tokenizer.json", gguf = makeTemporaryDirectory(self) + "/m.gguf"
        let saved = try JSONValue(parsing: FileSystem.readBytes(path))
        for (id, fine) in [(-1, false), (100_000, false), (384, false), (3, true)] {
            var tokenizer = saved
            tokenizer.set("padding", .object([("pad_id", .int(id)), ("pad_token", .string("<pad>"))]))
            try write(tokenizer.compactText(), path)
            let export = ["export", "--format", "gguf", "--model", model, "--output", gguf, "--check", "never"]
            if fine {
                let (status, _, output) = try run(export)
                XCTAssertEqual(status, 0, output)
            } else {
                try expectError(export, [path + ": padding.pad_id \(id) is outside the vocabulary [0, 384)"])
            }
        }
    }
}

extension BadSettingsTests {
    /// A config.json whose top level is null, a list or a number said "not a valid config: Cannot get keyed
    /// decoding container -- found null value instead" (or "Expected to decode Dictionary<String, Any> but found an
    /// array instead"): Swift's words, not the file's. It says what the top level is.
    func testAConfigThatIsNoObjectSaysWhatItIs() throws {
        let (golden, dir, data) = try tinyModelAndData()
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: golden, toPath: model)
        for (text, said) in [("null", "null"), ("[1]", "an array [1]"), ("5", "5")] {
            try write(text, model + "/config.json")
            try expectError(["eval", "--model", model, "--data", data],
                            [model + "/config.json: the top level is \(said), expected an object of the model's "
                             + "settings"])
        }
        // A config that cannot be read is named once (it was "PATH: cannot read the model config: PATH: cannot
        // open: ...").
        let missing = dir + "/nowhere/config.json"
        XCTAssertThrowsError(try LlamaConfig(contentsOf: missing)) { error in
            let text = "\(error)"
            XCTAssertEqual(text.components(separatedBy: missing).count, 2, text)
            XCTAssertTrue(text.contains("cannot read the model config"), text)
        }
    }
}

extension BadSettingsTests {
    /// train --output-dir naming a folder that holds an adapter (a fine-tune, a checkpoint, a run's OUTPUT/best)
    /// replaced its adapter_config.json and adapter_model.safetensors without --overwrite-output-dir: only
    /// metrics.jsonl and checkpoint-N folders counted as a run there. It is refused, and the adapter kept.
    func testTrainNeverReplacesAnAdapterFolderUnasked() throws {
        let (model, dir, data) = try tinyModelAndData()
        let adapter = dir + "/adapter"
        try FileManager.default.copyItem(atPath: try Shared.requireGolden() + "/tiny-adapter", toPath: adapter)
        let weights = FileManager.default.contents(atPath: adapter + "/adapter_model.safetensors")
        let train = ["train", "--model", model, "--data", data, "--output-dir", adapter, "--max-steps", "1"]
        try expectError(train, ["\(adapter) holds an adapter (\(adapter)/adapter_model.safetensors), which this "
                                + "run's would replace", "--overwrite-output-dir"])
        XCTAssertEqual(FileManager.default.contents(atPath: adapter + "/adapter_model.safetensors"), weights)
        let (status, _, output) = try run(train + ["--overwrite-output-dir"])
        XCTAssertEqual(status, 0, output)
    }
}
