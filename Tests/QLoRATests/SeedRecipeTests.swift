import Foundation
import Llama
import ModelFiles
import Training
import XCTest

/// examples/seed-recipe.yaml, the Hugging Face seed recipe as a recipe file, runs as it is on the bundled quotes.
extension BadSettingsTests {
    func testSeedRecipeRunsUnchangedOnTheBundledQuotes() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let model = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let out = makeTemporaryDirectory(self) + "/run"
        // Only the model (the recipe names none) and the output folder (kept out of the repository) are given.
        let (status, crashed, output) = try run(["train", "--config", root + "/examples/seed-recipe.yaml",
                                                 "--model", model, "--output-dir", out], timeout: 300,
                                                directory: root)
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(crashed, output)
        // 64 quotes, 4 × 4 a step: 4 steps of one epoch; peft's line for r = 16 on q, v of tiny-llama.
        let lines = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.compactMap { StepMetricsProbe.step($0) }.last, 4, output)
        let config = try JSONValue(parsing: FileSystem.readBytes(out + "/adapter_config.json"))
        XCTAssertEqual(config["r"]?.intValue, 16)
        XCTAssertEqual(config["lora_alpha"]?.doubleValue, 32)
        XCTAssertEqual(config["lora_dropout"]?.doubleValue, 0.05)
        XCTAssertEqual(Set(config["target_modules"]?.arrayValue?.compactMap(\.stringValue) ?? []),
                       ["q_proj", "v_proj"])
        XCTAssertTrue(output.contains("trainable params"), output)
    }
}

/// The step of a metrics.jsonl line.
enum StepMetricsProbe {
    static func step(_ line: Substring) -> Int? { (try? JSONValue(parsing: Array(line.utf8)))?["step"]?.intValue }
}

extension BadSettingsTests {
    /// `--devices N` where the machine has fewer than N GPUs (none here) is one clear error from the launcher before
    /// any worker starts (workers used to start, one per N, and fail each with its own error; N = 2^31 started
    /// processes until the machine ran out).
    func testDevicesBeyondTheMachinesGPUsAreRefusedBeforeAnyWorkerStarts() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", dir + "/data.jsonl")
        let golden = try Shared.requireGolden()
        if FileManager.default.fileExists(atPath: "/dev/nvidia0") {
            throw XCTSkip("a GPU is present: workers would run")
        }
        for devices in ["2", "65536"] {
            let (status, crashed, output) = try run(["train", "--model", golden + "/tiny-llama", "--data",
                                                     dir + "/data.jsonl", "--output-dir", dir + "/out", "--devices",
                                                     devices, "--max-steps", "1"], timeout: 60)
            XCTAssertNotEqual(status, 0, output)
            XCTAssertFalse(crashed, output)
            XCTAssertTrue(output.contains("--devices \(devices): the driver sees no GPU"), output)
            XCTAssertFalse(output.contains("[rank "), "a worker started: \(output)")
        }
        try expectError(["bench", "--devices", "9223372036854775807"], ["--devices is 9223372036854775807",
                                                                          "at most 65536"])
        try expectError(["bench", "--nnodes", "4611686018427387904", "--rendezvous", "file:/tmp/x"],
                        ["--nnodes is 4611686018427387904", "1 ... 65536"])
        try expectError(["train", "--nnodes", "2", "--node-rank", "2"], ["--node-rank is 2", "0 ..< --nnodes (2)"])
    }
}

extension BadSettingsTests {
    /// Keys that steer only the Python tooling are named in a warning, not accepted in silence.
    func testRecipeKeysWithoutEffectAreNamed() throws {
        let dir = makeTemporaryDirectory(self)
        try write("run_name: x\nlearning_rate: 1.0e-4\npush_to_hub: false\n", dir + "/r.yaml")
        XCTAssertEqual(try TrainingRecipe(contentsOf: dir + "/r.yaml").ignoredKeys.sorted(),
                       ["push_to_hub", "run_name"])
        let (_, _, output) = try run(["train", "--config", dir + "/r.yaml", "--model", dir + "/no-model", "--data",
                                      dir + "/r.yaml", "--output-dir", dir + "/out"])
        XCTAssertTrue(output.contains("warning: recipe key push_to_hub has no effect"), output)
        XCTAssertTrue(output.contains("warning: recipe key run_name has no effect"), output)
    }
}

extension BadSettingsTests {
    /// The best model and early stopping need validation data: without any, an error before anything loads.
    func testBestModelWithoutValidationDataIsAnError() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", dir + "/data.jsonl")
        try expectError(["train", "--model", dir + "/no-model", "--data", dir + "/data.jsonl", "--output-dir",
                         dir + "/out", "--load-best-model-at-end", "--eval-steps", "2"],
                        ["--load-best-model-at-end", "validation data"])
        try expectError(["train", "--model", dir + "/no-model", "--data", dir + "/data.jsonl", "--output-dir",
                         dir + "/out", "--early-stopping-patience", "2", "--eval-strategy", "epoch"],
                        ["--early-stopping-patience", "validation data"])
    }
}
