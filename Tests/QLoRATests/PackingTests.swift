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
        var lora = LoRAConfig()
        lora.targetModules = ["all-linear"]
        let model = try LlamaModel.load(directory: golden + "/tiny-llama", lora: lora, seed: 5)
        // LoRA B starts at zero: give it values so that every adapter's gradient is exercised.
        var rng = SeededGenerator(seed: 9)
        for (key, w) in model.adapters {
            model.adapters[key]!.b = w.b.map { _ in (rng.nextUniform() - 0.5) * 0.1 }
        }
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
        for (key, g) in two.gradients {
            let p = one.gradients[key]!
            for (x, y) in [(p.a, g.a), (p.b, g.b)] {
                let num = zip(x, y).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
                let den = y.reduce(0.0) { $0 + Double($1) * Double($1) }
                XCTAssertLessThan((num / max(den, 1e-30)).squareRoot(), 1e-5, key)
            }
        }
        // Without the positions the same packed row attends across the boundary: a different loss.
        var r3 = SeededGenerator(seed: 1)
        let leaky = model.step(inputIds: packed.inputIds, labels: packed.labels, batch: 1, tokens: 16, rng: &r3,
                               gradientScale: 1)
        XCTAssertGreaterThan(abs(leaky.loss - one.loss), 1e-4)
        XCTAssertThrowsError(try LlamaModel.checkPositions([0, 1, 3], batch: 1, tokens: 3))
        XCTAssertThrowsError(try LlamaModel.checkPositions([1, 2, 3], batch: 1, tokens: 3))
    }
}
