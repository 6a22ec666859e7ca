import Foundation
import Llama
import ModelFiles
import Training
import XCTest

/// Packing without contamination: positions restart at each document, attention stays inside it, and a document's
/// first token is no target of the one before.
final class PackingTests: XCTestCase {
    func testPackMarksDocumentsAndBoundaryLabels() {
        let a = TokenizedExample(inputIds: [1, 2, 3], labels: [1, 2, 3])
        let b = TokenizedExample(inputIds: [4, 5, 6, 7], labels: [-100, 5, 6, 7])
        let c = TokenizedExample(inputIds: [8, 9], labels: [8, 9])
        let blocks = TextDataset.pack([a, b, c], length: 4)   // 9 tokens: two blocks, one token dropped
        XCTAssertEqual(blocks.map(\.inputIds), [[1, 2, 3, 4], [5, 6, 7, 8]])
        XCTAssertEqual(blocks.map(\.positions), [[0, 1, 2, 0], [0, 1, 2, 0]])   // a block starts a document
        XCTAssertEqual(blocks.map(\.labels), [[1, 2, 3, -100], [5, 6, 7, -100]])
        let collated = TokenizedDataset.collate([blocks[0], TokenizedExample(inputIds: [1, 2], labels: [1, 2])])
        XCTAssertEqual(collated.positions, [0, 1, 2, 0, 0, 1, 2, 3])
    }

    /// Two documents packed in one row give the loss and gradients of the same two as separate rows (fp32).
    func testPackedEqualsUnpacked() throws {
        let golden = try Shared.requireGolden()
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let ids = try ref.tensor(named: "train_batches").integers()
        let d1 = Array(ids[0..<7]), d2 = Array(ids[32..<41])
        let model = try Self.tinyModel(golden)
        let packed = TextDataset.pack([TokenizedExample(inputIds: d1, labels: d1),
                                       TokenizedExample(inputIds: d2, labels: d2)], length: 16)[0]
        var r1 = SeededGenerator(seed: 1), r2 = SeededGenerator(seed: 1)
        let one = model.step(inputIds: packed.inputIds, labels: packed.labels, positions: packed.positions, batch: 1,
                             tokens: 16, rng: &r1, gradientScale: 1)
        let rows = TokenizedDataset.collate([TokenizedExample(inputIds: d1, labels: d1),
                                             TokenizedExample(inputIds: d2, labels: d2)])
        let two = model.step(inputIds: rows.ids, labels: rows.labels, batch: 2, tokens: rows.tokens, rng: &r2,
                             gradientScale: 1)
        XCTAssertEqual(one.tokenCount, two.tokenCount)
        XCTAssertEqual(one.loss * Double(one.tokenCount), two.loss * Double(two.tokenCount), accuracy: 1e-4)
        Self.assertSameGradients(one, two)
        // Without the positions the same packed row attends across the boundary: a different loss.
        var r3 = SeededGenerator(seed: 1)
        let leaky = model.step(inputIds: packed.inputIds, labels: packed.labels, batch: 1, tokens: 16, rng: &r3,
                               gradientScale: 1)
        XCTAssertGreaterThan(abs(leaky.loss - one.loss), 1e-4)
        XCTAssertThrowsError(try LlamaModel.checkPositions([0, 1, 3], batch: 1, tokens: 3))
        XCTAssertThrowsError(try LlamaModel.checkPositions([1, 2, 3], batch: 1, tokens: 3))
    }

    /// Padding-free batches (`collate(paddingFree:)`): three examples of different lengths in one row give the
    /// padded batch's loss and gradients (no dropout, fp32), through the training engine as the trainer calls it,
    /// including a packed row longer than max_position_embeddings whose documents are not.
    func testPaddingFreeEqualsPadded() throws {
        let golden = try Shared.requireGolden()
        let ref = try SafeTensorsFile(path: golden + "/qlora.safetensors")
        let ids = try ref.tensor(named: "train_batches").integers()
        let examples = [Array(ids[0..<7]), Array(ids[32..<41]), Array(ids[64..<68])].map {
            TokenizedExample(inputIds: $0, labels: [-100, -100] + $0.dropFirst(2))
        }
        let free = TokenizedDataset.collate(examples, paddingFree: true)
        XCTAssertEqual(free.rows, 1)
        XCTAssertEqual(free.tokens, 20)
        XCTAssertEqual(free.positions, Array(0..<7) + Array(0..<9) + Array(0..<4))
        XCTAssertEqual(free.labels[7], -100)   // the second document's first token: no target of the first's last
        let padded = TokenizedDataset.collate(examples)
        XCTAssertEqual(padded.rows, 3)
        XCTAssertNil(padded.positions)
        let model = try Self.tinyModel(golden)
        var r1 = SeededGenerator(seed: 1), r2 = SeededGenerator(seed: 1)
        let one = model.step(inputIds: free.ids, labels: free.labels, positions: free.positions, batch: free.rows,
                             tokens: free.tokens, rng: &r1, gradientScale: 1)
        let three = model.step(inputIds: padded.ids, labels: padded.labels, batch: padded.rows,
                               tokens: padded.tokens, rng: &r2, gradientScale: 1)
        XCTAssertEqual(one.tokenCount, three.tokenCount)
        XCTAssertEqual(one.loss, three.loss, accuracy: 1e-5)
        Self.assertSameGradients(one, three)
        // The row is checked by its documents' positions, not its length.
        var config = model.config
        config.maxPositionEmbeddings = 10
        XCTAssertNoThrow(try LlamaModel.checkBatch(inputIds: free.ids, labels: free.labels, positions: free.positions,
                                                   batch: 1, tokens: free.tokens, config: config))
        XCTAssertThrowsError(try LlamaModel.checkBatch(inputIds: free.ids, labels: free.labels, batch: 1,
                                                       tokens: free.tokens, config: config))
        config.maxPositionEmbeddings = 8
        XCTAssertThrowsError(try LlamaModel.checkBatch(inputIds: free.ids, labels: free.labels,
                                                       positions: free.positions, batch: 1, tokens: free.tokens,
                                                       config: config))
    }

    /// tiny-llama with LoRA on every projection; B starts at zero, so it gets values that exercise every gradient.
    static func tinyModel(_ golden: String) throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.targetModules = ["all-linear"]
        let model = try LlamaModel.load(directory: golden + "/tiny-llama", lora: lora, seed: 5)
        var rng = SeededGenerator(seed: 9)
        for (key, w) in model.adapters {
            model.adapters[key]!.b = w.b.map { _ in (rng.nextUniform() - 0.5) * 0.1 }
        }
        return model
    }

    /// Every adapter gradient of `got` within 1e-5 relative (L2) of `expected`'s.
    static func assertSameGradients(_ got: StepResult, _ expected: StepResult) {
        for (key, g) in expected.gradients {
            let p = got.gradients[key]!
            for (x, y) in [(p.a, g.a), (p.b, g.b)] {
                let num = zip(x, y).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
                let den = y.reduce(0.0) { $0 + Double($1) * Double($1) }
                XCTAssertLessThan((num / max(den, 1e-30)).squareRoot(), 1e-5, key)
            }
        }
    }
}
