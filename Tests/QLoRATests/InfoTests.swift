import Foundation
import Llama
import ModelFiles
import XCTest

/// `qlora info` (`LlamaInventory`): peft's parameter line and the QLoRA graph, from the config and files alone.
final class InfoTests: XCTestCase {
    /// tiny-llama + tiny-adapter: the counts peft's get_nb_trainable_parameters gave on the 4-bit model
    /// (qlora.json), and the same from the tensor shapes counted here independently.
    func testParameterCountsEqualPeft() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (_, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let counts = try LlamaInventory.parameterCounts(weights, adapters: adapters)
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/qlora.json"))
        XCTAssertEqual(counts.trainable, json["trainable_params"]?.intValue)
        XCTAssertEqual(counts.all, json["all_params"]?.intValue)
        // From the files: every stored tensor's elements, plus A and B of the adapter.
        let base = try SafeTensorsArchive(directory: golden + "/tiny-llama")
        let stored = try base.names.reduce(0) { $0 + (try base.tensor(named: $1).elementCount) }
        let peft = try SafeTensorsFile(path: golden + "/tiny-adapter/adapter_model.safetensors")
        let trainable = peft.entries.reduce(0) { $0 + $1.shape.reduce(1, *) }
        XCTAssertEqual(counts.trainable, trainable)
        XCTAssertEqual(counts.all, stored + trainable, "tiny-llama's 4-bit weights have an even element count")
        XCTAssertEqual(LlamaInventory.peftLine(counts),
                       "trainable params: 54,272 || all params: 989,120 || trainable%: 5.4869")
    }

    /// The graph has one cluster per distinct projection shape, with this model's targets, rank and shapes.
    func testDotGraph() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let targets = Set(adapters.keys.map { String($0.split(separator: ".")[1]) })
        let dot = LlamaInventory.dot(weights.config, name: "tiny-llama", lora: lora, adapted: targets,
                                     settings: weights.quantization)
        XCTAssertTrue(dot.hasPrefix("digraph qlora {"))
        XCTAssertEqual(dot.components(separatedBy: "subgraph cluster_").count - 1, 4)
        for expected in ["192 × 192", "64 × 192", "512 × 192", "192 × 512", "r × k = 8 × 192",
                         "r × k = 8 × 512",
                         "d × r = 64 × 8", "frozen, NF4 + double quant 4-bit", "ΔW = 2 · B·A",
                         "adapted: gate_proj, up_proj", "h = W0x + ΔWx", "LoRA r = 8, alpha = 16"] {
            XCTAssertTrue(dot.contains(expected), expected)
        }
        XCTAssertEqual(dot.filter { $0 == "{" }.count, dot.filter { $0 == "}" }.count)
    }
}

extension BadSettingsTests {
    /// `qlora info MODEL --adapter A --dot FILE` prints peft's line, the tensors and memory, and writes the graph.
    func testInfoCommand() throws {
        let golden = try Shared.requireGolden()
        let dot = makeTemporaryDirectory(self) + "/tiny.dot"
        let (status, _, output) = try run(["info", golden + "/tiny-llama", "--adapter", golden + "/tiny-adapter",
                                           "--dot", dot])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("trainable params: 54,272 || all params: 989,120 || trainable%: 5.4869"),
                      output)
        XCTAssertTrue(output.contains("model.layers.1.mlp.down_proj.weight") && output.contains("BF16"), output)
        XCTAssertTrue(output.contains("memory at rest"), output)
        XCTAssertTrue(try String(contentsOfFile: dot, encoding: .utf8).contains("subgraph cluster_3"))
        try expectError(["info"], ["give the model once"])
    }
}
