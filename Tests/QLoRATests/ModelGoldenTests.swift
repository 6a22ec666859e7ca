import CPUBackend
import Llama
import ModelFiles
import Quantization
import Tensors
import Training
import XCTest

/// relative error ‖a − e‖ / ‖e‖.
func relativeError(_ a: [Float], _ e: [Float]) -> Double {
    precondition(a.count == e.count, "\(a.count) vs \(e.count)")
    var num = 0.0, den = 0.0
    for i in a.indices { num += Double(a[i] - e[i]) * Double(a[i] - e[i]); den += Double(e[i]) * Double(e[i]) }
    return (num / max(den, 1e-30)).squareRoot()
}

/// tiny-llama through the QLoRA recipe (NF4 + double quant, fp32 compute, tiny-adapter) against transformers + peft.
final class ModelGoldenTests: XCTestCase {
    func loadTiny() throws -> (LlamaModel, SafeTensorsFile, JSONValue) {
        let golden = try Shared.requireGolden()
        let model = try LlamaModel.load(directory: golden + "/tiny-llama", quantType: .nf4, doubleQuant: true)
        try PEFTAdapter.load(directory: golden + "/tiny-adapter", into: model)
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/qlora.json"))
        return (model, ref, json)
    }

    func testLogitsLossAndGradients() throws {
        let (model, ref, json) = try loadTiny()
        let ids = try ref.tensor(named: "input_ids")
        let inputIds = ids.integers()
        var rng = SeededGenerator(seed: 1)
        let result = model.step(inputIds: inputIds, labels: inputIds, batch: 2, tokens: 24, rng: &rng, keepLogits: true)
        XCTAssertLessThan(relativeError(result.logits!, try ref.tensor(named: "logits").floats()), 1e-4)
        XCTAssertEqual(result.loss, json["loss"]!.doubleValue!, accuracy: 1e-5)
        XCTAssertEqual(result.tokenCount, 46)
        var checked = 0
        for (key, g) in result.gradients {
            let parts = key.split(separator: ".")
            let path = PEFTAdapter.modulePath(layer: Int(parts[0])!, projection: String(parts[1]))
            for (matrix, values) in [("A", g.a), ("B", g.b)] {
                let expected = try ref.tensor(named: "grad.base_model.model.\(path).lora_\(matrix).default.weight").floats()
                XCTAssertLessThan(relativeError(values, expected), 1e-3, "\(key) \(matrix)")
                checked += 1
            }
        }
        XCTAssertEqual(checked, 28)
        let counts = model.parameterCounts
        XCTAssertEqual(counts.trainable, json["trainable_params"]!.intValue!)
        XCTAssertEqual(counts.all, json["all_params"]!.intValue!)
    }

    func testCheckpointingChangesNoNumber() throws {
        let (model, ref, _) = try loadTiny()
        let ids = try ref.tensor(named: "input_ids")
        let inputIds = ids.integers()
        var lora = model.loraConfig
        lora.dropout = 0.1
        let saved = model.adapters
        model.resetAdapters(lora, seed: 0)
        model.adapters = saved
        var rng1 = SeededGenerator(seed: 5), rng2 = SeededGenerator(seed: 5)
        let plain = model.step(inputIds: inputIds, labels: inputIds, batch: 2, tokens: 24, rng: &rng1)
        let recomputed = model.step(inputIds: inputIds, labels: inputIds, batch: 2, tokens: 24, rng: &rng2, checkpointing: true)
        XCTAssertEqual(plain.loss, recomputed.loss)
        for (k, g) in plain.gradients {
            XCTAssertEqual(g.a, recomputed.gradients[k]!.a, k)
            XCTAssertEqual(g.b, recomputed.gradients[k]!.b, k)
        }
        XCTAssertEqual(rng1, rng2)
    }

    func testAdapterRoundTrip() throws {
        let (model, _, _) = try loadTiny()
        let dir = makeTemporaryDirectory(self) + "/adapter"
        try PEFTAdapter.save(model, to: dir, baseModel: "tiny-llama")
        let golden = try Shared.requireGolden()
        // Same keys, shapes and values as peft's own file.
        let ours = try SafeTensorsFile(path: dir + "/adapter_model.safetensors")
        let theirs = try SafeTensorsFile(path: golden + "/tiny-adapter/adapter_model.safetensors")
        XCTAssertEqual(Set(ours.names), Set(theirs.names))
        for name in theirs.names { XCTAssertEqual(try ours.tensor(named: name).bytesArray(), try theirs.tensor(named: name).bytesArray(), name) }
        let config = try PEFTAdapter.readConfig(directory: dir)
        XCTAssertEqual(config.r, 8)
        XCTAssertEqual(config.alpha, 16)
        XCTAssertEqual(Set(config.resolvedTargets), Set(LlamaConfig.projectionNames))
    }
}

/// `qlora eval`'s computation (Trainer.evaluate over a JSONL file) on the golden input_ids gives the golden loss.
final class EvalCommandTests: XCTestCase {
    func testEvaluateGivesTheGoldenLoss() throws {
        let golden = try Shared.requireGolden()
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let ids = try ref.tensor(named: "input_ids")
        let values = ids.integers()
        let path = makeTemporaryDirectory(self) + "/ids.jsonl"
        let lines = (0..<2).map { r in "{\"input_ids\": [" + values[(r * 24)..<((r + 1) * 24)].map(String.init).joined(separator: ", ") + "]}" }
        try AtomicFile.write(text: lines.joined(separator: "\n") + "\n", to: path)
        let model = try LlamaModel.load(directory: golden + "/tiny-llama")
        try PEFTAdapter.load(directory: golden + "/tiny-adapter", into: model)
        let examples = try TextDataset.load(path: path, tokenizer: nil, vocabularySize: model.config.vocabSize, options: DatasetOptions())
        let engine = CPUTrainingEngine(model: model, optimizer: AdamW(kind: .adamw))
        let (loss, tokens) = try Trainer.evaluate(engine: engine, examples: examples, batchSize: 4)
        let json = try JSONValue(parsing: FileSystem.readBytes(golden + "/qlora.json"))
        XCTAssertEqual(loss, json["loss"]!.doubleValue!, accuracy: 1e-5)
        XCTAssertEqual(tokens, 46)
        // A bad line is reported with its file and line number.
        try AtomicFile.write(text: lines[0] + "\n{\"input_ids\": [1, 99999]}\n", to: path)
        XCTAssertThrowsError(try TextDataset.load(path: path, tokenizer: nil, vocabularySize: 384, options: DatasetOptions())) {
            XCTAssertTrue("\($0)".contains("ids.jsonl:2"), "\($0)")
        }
    }
}

/// The cached generation path agrees with the full forward pass, and generating changes no training number.
final class GenerationTests: XCTestCase {
    func testCachedStepsMatchFullForward() throws {
        let golden = try Shared.requireGolden()
        let model = try LlamaModel.load(directory: golden + "/tiny-llama")
        try PEFTAdapter.load(directory: golden + "/tiny-adapter", into: model)
        let prompt = [5, 77, 301, 12, 9]
        var options = SamplingOptions()
        options.maxNewTokens = 6
        let generated = model.generate(prompt: prompt, options: options)
        XCTAssertEqual(generated.count, 6)
        // Greedy: each generated token is the argmax of the full forward pass over everything before it.
        var sequence = prompt
        for next in generated {
            let logits = model.logits(inputIds: sequence, batch: 1, tokens: sequence.count)
            let last = Array(logits[((sequence.count - 1) * 384)..<(sequence.count * 384)])
            XCTAssertEqual(next, last.indices.max { last[$0] < last[$1] }!)
            sequence.append(next)
        }
    }
}
