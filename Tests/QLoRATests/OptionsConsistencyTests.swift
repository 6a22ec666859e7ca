import Foundation
import XCTest

extension BadSettingsTests {
    /// train takes the --target-modules values bench and plan take (the shortcuts qv and all), through one parser.
    func testTrainTakesTheTargetShortcutsBenchTakes() throws {
        let (model, dir, data) = try tinyModelAndData()
        let every = #""q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj""#
        for (value, targets) in [("qv", #""q_proj","v_proj""#), ("all", every)] {
            let out = dir + "/out-" + value
            let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", out,
                                               "--max-steps", "1", "--batch-size", "1", "--target-modules", value])
            XCTAssertEqual(status, 0, output)
            let config = try String(contentsOfFile: out + "/adapter_config.json", encoding: .utf8)
                .replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "\n", with: "")
            XCTAssertTrue(config.contains(targets), config)
        }
        try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/x", "--target-modules",
                         "q_proj,nope"], ["--target-modules (recipe target_modules): 'nope' is unknown"])
    }
}
