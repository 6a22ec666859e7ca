import Foundation
import XCTest

/// generate and eval run a finished model (a merged export) with its file's own weights (issue 13): they used to
/// quantize every plain projection to NF4 on load, and NF4 of (NF4 base + small delta) snaps most weights back to
/// the base's codes, so an exported fine-tune answered like its base.
extension BadSettingsTests {
    /// eval's loss, from its --json line.
    func evalLoss(_ arguments: [String], data: String) throws -> Double {
        let (status, _, output) = try run(["eval"] + arguments + ["--data", data, "--json"])
        XCTAssertEqual(status, 0, output)
        let line = output.split(separator: "\n").last { $0.hasPrefix("{") } ?? ""
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        return try XCTUnwrap(object?["loss"] as? Double, output)
    }

    /// The completion `generate` prints for one prompt.
    func completion(_ arguments: [String]) throws -> String {
        let (status, _, output) = try run(["generate"] + arguments)
        XCTAssertEqual(status, 0, output)
        let parts = output.components(separatedBy: "### completion\n")
        XCTAssertEqual(parts.count, 2, output)
        return parts.last ?? ""
    }

    /// The F32 merged export (delta folded onto the dequantized NF4 base) computes what the 4-bit base with the
    /// adapter computes, so its eval loss and greedy text are theirs; re-quantizing it (`--base-weights 4bit`, the
    /// old behaviour) moves the loss by far more than float32 rounding.
    func testAMergedExportIsComputedWithItsOwnWeights() throws {
        let golden = try Shared.requireGolden()
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let adapter = golden + "/tiny-adapter"
        let dir = makeTemporaryDirectory(self)
        var rng = TestRandom(seed: 11)
        let lines = (0..<8).map { _ in
            #"{"input_ids": ["# + (0..<32).map { _ in String(3 + Int(rng.next() % 381)) }.joined(separator: ", ") + "]}"
        }
        try write(lines.joined(separator: "\n") + "\n", dir + "/ids.jsonl")
        let merged = dir + "/merged-f32.gguf"
        let (status, _, output) = try run(["export", "--model", folder, "--adapter", adapter, "--output", merged,
                                           "--type", "f32", "--check", "never"])
        XCTAssertEqual(status, 0, output)

        let reference = try evalLoss(["--model", folder, "--adapter", adapter], data: dir + "/ids.jsonl")
        let own = try evalLoss(["--model", merged], data: dir + "/ids.jsonl")
        let requantized = try evalLoss(["--model", merged, "--base-weights", "4bit"], data: dir + "/ids.jsonl")
        // The F32 export computes base + adapter to float32 rounding; re-quantized it is off by ten times more
        // than that tolerance (about 1e-4 relative on these ids).
        XCTAssertEqual(own, reference, accuracy: 1e-6 * abs(reference))
        XCTAssertGreaterThan(abs(requantized - reference), 1e-5 * abs(reference),
                             "re-quantizing the merged weights to NF4 should lose part of the delta")
        // With an adapter, auto keeps the 4-bit base training saw; file puts the adapter on the unquantized one.
        let unquantizedBase = try evalLoss(["--model", folder, "--adapter", adapter, "--base-weights", "file"],
                                           data: dir + "/ids.jsonl")
        XCTAssertGreaterThan(abs(unquantizedBase - reference), 1e-5 * abs(reference))

        let prompt = ["--prompt", "the river rose", "--max-new-tokens", "16"]
        XCTAssertEqual(try completion(["--model", merged] + prompt),
                       try completion(["--model", folder, "--adapter", adapter] + prompt))
        try expectError(["generate", "--model", merged, "--device", "cuda", "--base-weights", "file"] + prompt,
                        ["--base-weights file runs on the CPU"])
    }

    /// export's --embedding-type takes the export types, and only for a merged model.
    func testEmbeddingTypeIsChecked() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let export = ["export", "--model", golden + "/tiny-llama", "--output", dir + "/m.gguf", "--check", "never"]
        try expectError(export + ["--embedding-type", "q4_0"], ["--embedding-type q4_0", "f32, f16, bf16, q8_0"])
        try expectError(export + ["--adapter", golden + "/tiny-adapter", "--adapter-only", "--embedding-type", "f32"],
                        ["an adapter has no embedding"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m.gguf"))
    }
}
