import Foundation
import Llama
import ModelFiles
import Tensors
import Training
import XCTest

/// Training settings and files that an independent fuzzing pass of the command line found accepted without a word,
/// or turned into a failure that blamed something else (issue 12).
extension BadSettingsTests {
    /// `--target-modules ""` (or ",", or a recipe's `target_modules: []`) trained 0 parameters and exited 0 with an
    /// empty adapter; bench and plan took it too.
    func testAnEmptyTargetListIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        for value in ["", ","] {
            try expectError(train + ["--target-modules", value], ["--target-modules (recipe target_modules) names no "
                                                                  + "projection", "nothing would be trained"])
        }
        try write("target_modules: []\n", dir + "/r.yaml")
        try expectError(train + ["--config", dir + "/r.yaml"], ["names no projection"])
        try expectError(["plan", "--target-modules", ""], ["--target-modules names no projection"])
        // An adapter to start from that targets nothing of the model.
        let adapter = dir + "/adapter"
        try FileSystem.createDirectory(adapter)
        try SafeTensorsWriter.write([], metadata: ["format": "pt"], to: adapter + "/adapter_model.safetensors")
        try write(#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": []}"#,
                  adapter + "/adapter_config.json")
        try expectError(train + ["--init-adapter", adapter], ["--init-adapter \(adapter)", "nothing would be trained"])
        XCTAssertFalse(FileSystem.isFile(dir + "/out/adapter_model.safetensors"))
    }

    /// `--lora-alpha 1e30` trained to nonsense and exited 0; 1e308 (a scale of float32's infinity) diverged at once
    /// with advice to lower the learning rate. The scale alpha / r is bounded in training; an adapter file whose
    /// scale is infinite is refused where it is read.
    func testAnAbsurdLoRAScaleIsRefusedAsAlpha() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        try expectError(train + ["--lora-alpha", "1e30"],
                        ["--lora-alpha (recipe lora_alpha)", "over r 8 is a LoRA scale of", "at most 1024 is accepted"])
        try expectError(train + ["--lora-alpha", "1e308"], ["--lora-alpha (recipe lora_alpha)", "LoRA scale of"])
        try expectError(train + ["--lora-alpha", "1e6", "--lora-r", "4", "--use-rslora"], ["over √r 4"])
        let (status, _, output) = try run(train + ["--lora-alpha", "8192", "--lora-r", "8", "--batch-size", "1"])
        XCTAssertEqual(status, 0, "a scale of exactly 1024 trains: \(output)")
        let adapter = dir + "/adapter"
        try FileSystem.createDirectory(adapter)
        try write(#"{"peft_type": "LORA", "r": 8, "lora_alpha": 1e308, "target_modules": ["q_proj"]}"#,
                  adapter + "/adapter_config.json")
        XCTAssertThrowsError(try PEFTAdapter.readConfig(directory: adapter)) {
            XCTAssertEqual("\($0)", "\(adapter)/adapter_config.json: \"lora_alpha\" 1e+308 over r 8 gives a scale "
                           + "beyond float32's range")
        }
    }

    /// A batch larger than the data: every micro-batch is full (the trainer goes on into the next pass), so
    /// examples repeat within a step; the run says so instead of doing it silently.
    func testABatchLargerThanTheDataWarns() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        var (status, _, output) = try run(train + ["--batch-size", "3"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: --batch-size 3 is more than the 1 training example of \(data): each "
                                      + "batch is filled by going on into the next pass over the data"), output)
        (status, _, output) = try run(train + ["--batch-size", "1", "--overwrite-output-dir"])
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(output.contains("warning"), output)
    }
}
