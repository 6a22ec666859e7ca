import Foundation
import ModelFiles
import Training
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Issue 12, one set of options: a setting means one thing with one default wherever it appears, and a setting
/// that would change nothing is an error or a warning that says so, never accepted in silence.
extension BadSettingsTests {
    /// The JSON object a command prints as its last line.
    func lastJSONLine(_ output: String) throws -> [String: Any] {
        let line = try XCTUnwrap(output.split(separator: "\n").last(where: { $0.hasPrefix("{") }), output)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// bench and plan size the step with train's defaults (4 sequences of 512 tokens), not 2048 of their own; the
    /// shape comes from one of --shape, --model-config (a config.json, renamed from --config, which is train's
    /// recipe) and --model.
    func testPlanAndBenchTakeTrainsDefaultsAndOneShape() throws {
        let (status, _, output) = try run(["plan", "--json"])
        XCTAssertEqual(status, 0, output)
        let plan = try lastJSONLine(output)
        XCTAssertEqual(plan["seq"] as? Int, DatasetOptions().maxSeqLength)
        XCTAssertEqual(plan["batch"] as? Int, TrainingConfig().batchSize)
        let model = try Shared.requireGolden() + "/tiny-llama"
        let (status2, _, output2) = try run(["plan", "--model-config", model + "/config.json", "--json",
                                             "--max-seq-length", "64"])
        XCTAssertEqual(status2, 0, output2)
        XCTAssertEqual(try lastJSONLine(output2)["shape"] as? String, model + "/config.json")
        try expectError(["plan", "--config", model + "/config.json"], ["Unknown option '--config'"])
        try expectError(["plan", "--shape", "llama2-7b", "--model-config", model],
                        ["--shape and --model-config: give one"])
        try expectError(["bench", "--shape", "llama2-7b", "--model", model], ["--shape and --model: give one"])
        try expectError(["plan", "--shape", "nope"], ["--shape nope is unknown", "smollm2-135m", "--model-config"])
        try expectError(["bench", "--max-seq-length", "1"], ["--max-seq-length is 1: must be at least 2"])
        try expectError(["plan", "--lora-dropout", "1"], ["--lora-dropout is 1.0: must be in [0, 1)"])
        let (dropoutStatus, _, dropout) = try run(["plan", "--lora-dropout", "0.05", "--json"])
        XCTAssertEqual(dropoutStatus, 0, dropout)
        XCTAssertTrue(dropout.contains("warning: --lora-dropout 0.05 has no effect on the plan"), dropout)
        let (_, _, without) = try run(["plan", "--json"])
        XCTAssertEqual(try lastJSONLine(dropout) as NSDictionary, try lastJSONLine(without) as NSDictionary,
                       "the same plan with and without dropout")
    }

    /// bench refuses what would leave its measurement unchanged: training settings with --generate, GPU settings
    /// on the CPU, offloading without checkpoints, --device beside --devices.
    func testBenchRefusesSettingsWithoutEffect() throws {
        try expectError(["bench", "--generate", "4", "--steps", "3", "--warmup", "0"],
                        ["--steps, --warmup have no effect with --generate"])
        try expectError(["bench", "--generate", "4", "--lora-dropout", "0.1"],
                        ["--lora-dropout has no effect with --generate"])
        try expectError(["bench", "--profile"], ["--profile times GPU kernels: it needs --device cuda"])
        try expectError(["bench", "--offload-checkpoints", "true"],
                        ["--offload-checkpoints has no effect on the CPU"])
        try expectError(["plan", "--no-ckpt", "--offload-checkpoints", "false"],
                        ["--offload-checkpoints has no effect with --no-ckpt"])
        try expectError(["bench", "--device", "cuda:1", "--devices", "2"],
                        ["--device cuda:1 has no effect with --devices"])
        try expectError(["bench", "--rendezvous", "file:/tmp/x"], ["--rendezvous has no effect without --devices"])
        try expectError(["train", "--nnodes", "2", "--rendezvous", "file:/tmp/x"],
                        ["--nnodes, --rendezvous have no effect without --devices"])
    }

    /// merge takes export's second name (--type) for its --dtype; the values are checked under either name.
    func testMergeTakesExportsTypeName() throws {
        let dir = makeTemporaryDirectory(self)
        for name in ["--dtype", "--type"] {
            try expectError(["merge", "--model", dir + "/m", "--adapter", dir + "/a", "--output", dir + "/o", name,
                             "f64"], ["--dtype f64: use bf16, f16 or f32"])
        }
    }

    /// info computes nothing: it takes no --device or --compute-dtype (they used to be accepted and unused).
    func testInfoTakesNoDeviceOptions() throws {
        let model = try Shared.requireGolden() + "/tiny-llama"
        try expectError(["info", model, "--device", "cpu"], ["Unknown option '--device'"])
        try expectError(["info", model, "--compute-dtype", "bf16"], ["Unknown option '--compute-dtype'"])
        let (status, _, output) = try run(["info", model])
        XCTAssertEqual(status, 0, output)
    }

    /// --quant-type / --double-quant on a checkpoint stored in 4 bits change nothing: a warning says so when they
    /// differ from what it holds; on a plain model they quantize it, without a warning.
    func testQuantizationSettingsOnA4BitCheckpointWarn() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", dir + "/data.jsonl")
        let bnb = golden + "/tiny-llama-bnb-nf4"
        let (status, _, output) = try run(["eval", "--model", bnb, "--data", dir + "/data.jsonl", "--quant-type",
                                           "fp4", "--double-quant", "false"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: --quant-type fp4 has no effect: \(bnb) is stored in 4 bits already "
                                      + "(nf4 with double quantization)"), output)
        XCTAssertTrue(output.contains("warning: --double-quant false has no effect"), output)
        for arguments in [["--model", bnb, "--quant-type", "nf4"], ["--model", golden + "/tiny-llama",
                                                                   "--quant-type", "fp4"]] {
            let (status, _, output) = try run(["eval", "--data", dir + "/data.jsonl"] + arguments)
            XCTAssertEqual(status, 0, output)
            XCTAssertFalse(output.contains("has no effect"), output)
        }
        let (infoStatus, _, info) = try run(["info", bnb, "--quant-type", "fp4"])
        XCTAssertEqual(infoStatus, 0, info)
        XCTAssertTrue(info.contains("warning: --quant-type fp4 has no effect"), info)
    }

    /// A chat_template.jinja that is not UTF-8 is an error naming the file (it read as "no chat template"); one
    /// that is a FIFO or a folder too (they read as none as well). A UTF-8 one is still used.
    func testAChatTemplateFileThatIsNotUTF8IsAnErrorNamingIt() throws {
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        // The template comes from chat_template.jinja only when tokenizer_config.json names none.
        try write(#"{"bos_token": "<s>", "eos_token": "</s>"}"#, folder + "/tokenizer_config.json")
        let data = folder + "/../data.jsonl"
        try write(#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}"#
                  + "\n", data)
        let template = folder + "/chat_template.jinja"
        var bytes = Array(GGUFExportTests.chatTemplate.utf8)
        bytes.insert(contentsOf: [0xC3, 0x28], at: 10)   // a lead byte followed by no continuation byte
        FileManager.default.createFile(atPath: template, contents: Data(bytes))
        for command in [["eval", "--data", data], ["generate", "--prompt", "hi", "--chat", "--max-new-tokens", "1"]] {
            try expectError([command[0], "--model", folder] + command.dropFirst(),
                            ["\(template): the chat template is not UTF-8 text (byte 0xC3 at offset 10)"])
        }
        try FileManager.default.removeItem(atPath: template)
        XCTAssertEqual(mkfifo(template, 0o600), 0)
        try expectError(["eval", "--model", folder, "--data", data], [template, "FIFO", "must be a regular file"])
        try FileManager.default.removeItem(atPath: template)
        try FileManager.default.createDirectory(atPath: template, withIntermediateDirectories: false)
        try expectError(["eval", "--model", folder, "--data", data], [template, "folder", "must be a regular file"])
        try FileManager.default.removeItem(atPath: template)
        try write(GGUFExportTests.chatTemplate, template)
        let (status, _, output) = try run(["eval", "--model", folder, "--data", data])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("loss "), output)
    }

    /// generate and export say which of the settings given they would never read (and still run).
    func testGenerateAndExportWarnOfSettingsWithoutEffect() throws {
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let (status, _, output) = try run(["generate", "--model", folder, "--prompt", "hi", "--max-new-tokens", "1",
                                           "--seed", "3", "--top-p", "0.9", "--limit", "2", "--prompt-field", "q",
                                           "--batch-size", "2"])
        XCTAssertEqual(status, 0, output)
        for warning in ["--seed 3 has no effect at --temperature 0", "--top-p 0.9 has no effect at --temperature 0",
                        "--prompt-field has no effect without --prompts-from",
                        "--limit has no effect without --prompts-from", "--batch-size 2 has no effect on the CPU"] {
            XCTAssertTrue(output.contains("warning: " + warning), "\(warning): \(output)")
        }
        let (sampled, _, quiet) = try run(["generate", "--model", folder, "--prompt", "hi", "--max-new-tokens", "1",
                                           "--temperature", "0.7", "--seed", "3", "--top-p", "0.9"])
        XCTAssertEqual(sampled, 0, quiet)
        XCTAssertFalse(quiet.contains("warning:"), quiet)
        let dir = makeTemporaryDirectory(self), data = dir + "/check.jsonl"
        try write(#"{"text": "hello there"}"# + "\n", data)
        let (exported, _, exportOutput) = try run(["export", "--model", folder, "--output", dir + "/m.gguf",
                                                   "--check", "never", "--check-data", data])
        XCTAssertEqual(exported, 0, exportOutput)
        XCTAssertTrue(exportOutput.contains("warning: --check-data has no effect with --check never"), exportOutput)
    }

    /// train says which of the settings given it would never read, naming each and why.
    func testTrainWarnsOfSettingsWithoutEffect() throws {
        let (model, dir, data) = try tinyModelAndData()
        let base = ["train", "--model", model, "--data", data, "--max-steps", "1", "--batch-size", "1"]
        let (quiet, _, quietOutput) = try run(base + ["--output-dir", dir + "/plain"])
        XCTAssertEqual(quiet, 0, quietOutput)
        XCTAssertFalse(quietOutput.contains("has no effect"), quietOutput)
        let (status, _, output) = try run(base + [
            "--output-dir", dir + "/out", "--num-train-epochs", "3", "--warmup-steps", "2", "--warmup-ratio", "0.1",
            "--eval-steps", "1", "--offload-checkpoints", "true", "--logging-dir", dir + "/tb",
            "--early-stopping-threshold", "0.1", "--metric-for-best-model", "eval_loss", "--save-total-limit", "2"])
        XCTAssertEqual(status, 0, output)
        for expected in [
            "--warmup-ratio (recipe warmup_ratio) has no effect: --warmup-steps 2 sets the warm-up",
            "--num-train-epochs (recipe num_train_epochs) has no effect: --max-steps 1 sets the length",
            "--eval-steps (recipe eval_steps) has no effect: there is no validation data",
            "--offload-checkpoints (recipe offload_checkpoints) has no effect: checkpoints stay in host memory",
            "--logging-dir (recipe logging_dir) has no effect",
            "--early-stopping-threshold (recipe early_stopping_threshold) has no effect",
            "--metric-for-best-model (recipe metric_for_best_model) has no effect",
            "--save-total-limit (recipe save_total_limit) has no effect: no checkpoint is saved",
        ] {
            XCTAssertTrue(output.contains("warning: " + expected), "\(expected) in: \(output)")
        }
        XCTAssertFalse(FileSystem.isDirectory(dir + "/tb"), "no TensorBoard folder")
        // The same settings from a recipe are named by their keys.
        try write("warmup_steps: 2\nwarmup_ratio: 0.1\nsave_total_limit: 1\n", dir + "/recipe.yaml")
        let (recipeStatus, _, recipeOutput) = try run(base + ["--output-dir", dir + "/recipe", "--config",
                                                              dir + "/recipe.yaml"])
        XCTAssertEqual(recipeStatus, 0, recipeOutput)
        XCTAssertTrue(recipeOutput.contains("--warmup-ratio (recipe warmup_ratio) has no effect"), recipeOutput)
        XCTAssertTrue(recipeOutput.contains("--save-total-limit (recipe save_total_limit) has no effect"),
                      recipeOutput)
        let (never, _, neverOutput) = try run(base + ["--output-dir", dir + "/never", "--eval-data", data,
                                                      "--eval-strategy", "no"])
        XCTAssertEqual(never, 0, neverOutput)
        XCTAssertTrue(neverOutput.contains("warning: --eval-data (recipe eval_data) has no effect: --eval-strategy no "
                                           + "never evaluates"), neverOutput)
        // With validation data, the same evaluation setting is read: no warning.
        let (split, _, splitOutput) = try run(base + ["--output-dir", dir + "/split", "--eval-data", data,
                                                      "--eval-steps", "1"])
        XCTAssertEqual(split, 0, splitOutput)
        XCTAssertFalse(splitOutput.contains("has no effect"), splitOutput)
    }

    /// An --init-adapter brings its own r, alpha, dropout and targets: LoRA settings given that differ from them
    /// are said to have no effect.
    func testInitAdapterOverridesLoRASettingsWithAWarning() throws {
        let (model, dir, data) = try tinyModelAndData()
        let adapter = try Shared.requireGolden() + "/tiny-adapter"
        let config = try JSONValue(parsing: FileSystem.readBytes(adapter + "/adapter_config.json"))
        let r = try XCTUnwrap(config["r"]?.intValue)
        let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", dir + "/out",
                                           "--max-steps", "1", "--batch-size", "1", "--init-adapter", adapter,
                                           "--lora-r", "\(r + 1)", "--lora-dropout", "0.3"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: --lora-r (recipe r) \(r + 1) has no effect: --init-adapter "
                                      + "\(adapter) brings its own (\(r))"), output)
        XCTAssertTrue(output.contains("warning: --lora-dropout (recipe lora_dropout) 0.3 has no effect"), output)
        let saved = try JSONValue(parsing: FileSystem.readBytes(dir + "/out/adapter_config.json"))
        XCTAssertEqual(saved["r"]?.intValue, r, "the adapter's own r is the one trained")
    }
}
