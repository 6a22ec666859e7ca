import Foundation
import Llama
import Training
import XCTest

/// An in-process group of ranks, one thread each: `sum` waits for every rank and hands each the total.
final class ThreadGroup: @unchecked Sendable {
    let worldSize: Int
    private let condition = NSCondition()
    private var deposits: [[Double]] = []
    private var total: [Double] = []
    private var generation = 0, collected = 0
    init(worldSize: Int) { self.worldSize = worldSize }

    func sum(_ values: [Double]) -> [Double] {
        condition.lock(); defer { condition.unlock() }
        let mine = generation
        deposits.append(values)
        if deposits.count == worldSize {
            total = deposits.dropFirst().reduce(deposits[0]) { acc, v in zip(acc, v).map { $0 + $1 } }
            deposits = []
            generation += 1
            condition.broadcast()
        } else {
            while generation == mine { condition.wait() }
        }
        return total
    }

    /// One rank's view.
    final class Rank: DataParallelGroup {
        let group: ThreadGroup
        let rank: Int
        var worldSize: Int { group.worldSize }
        init(_ group: ThreadGroup, rank: Int) { self.group = group; self.rank = rank }
        func sum(_ values: [Double]) throws -> [Double] { group.sum(values) }
    }
}

/// Records which examples an engine was given (the sampler test).
final class RecordingEngine: TrainingEngine {
    let inner: CPUTrainingEngine
    var seen: [[Int]] = []
    init(_ inner: CPUTrainingEngine) { self.inner = inner }
    var config: LlamaConfig { inner.config }
    var loraConfig: LoRAConfig { inner.loraConfig }
    var parameterCounts: (trainable: Int, all: Int) { inner.parameterCounts }
    func accumulateGradients(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int, tokens: Int,
                             rng: inout SeededGenerator, checkpointing: Bool,
                             gradientScale: Float) throws -> (loss: Double, tokenCount: Int) {
        for r in 0..<batch { seen.append(Array(inputIds[(r * tokens)..<((r + 1) * tokens)])) }
        return try inner.accumulateGradients(inputIds: inputIds, labels: labels, positions: positions, batch: batch,
                                             tokens: tokens, rng: &rng,
                                             checkpointing: checkpointing, gradientScale: gradientScale)
    }
    func allReduceGradients() throws { try inner.allReduceGradients() }
    func gradientNorm() throws -> Float { try inner.gradientNorm() }
    func applyOptimizer(lr: Float, gradientScale: Float) throws { try inner.applyOptimizer(lr: lr, gradientScale: gradientScale) }
    func loss(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int,
              tokens: Int) throws -> (loss: Double, tokenCount: Int) {
        try inner.loss(inputIds: inputIds, labels: labels, positions: positions, batch: batch, tokens: tokens)
    }
    func adapterWeights() throws -> [String: LoRAWeights] { try inner.adapterWeights() }
    func setAdapterWeights(_ weights: [String: LoRAWeights]) throws { try inner.setAdapterWeights(weights) }
    func optimizerSnapshot() throws -> AdamW { try inner.optimizerSnapshot() }
    func restoreOptimizer(_ optimizer: AdamW) throws { try inner.restoreOptimizer(optimizer) }
}

/// Data parallelism through the trainer, with CPU engines and an in-process group (the GPU runs the same trainer code
/// with NCCL in place of the threads).
final class DataParallelTests: XCTestCase {
    func examples(_ n: Int) -> [TokenizedExample] {
        var rng = SeededGenerator(seed: 9)
        return (0..<n).map { i in
            let ids = [i % 384] + (0..<15).map { _ in Int(rng.next() % 384) }   // the first id tells examples apart
            return TokenizedExample(inputIds: ids, labels: ids)
        }
    }

    func model() throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.targetModules = ["all-linear"]; lora.dropout = 0
        let model = try LlamaModel.load(directory: try Shared.requireGolden() + "/tiny-llama", lora: lora, seed: 11)
        // B ≠ 0, as in a trained adapter (and check-cuda's training comparison): from peft's B = 0, A's gradients
        // are near zero in the first steps, where Adam's g / (√v + ε) turns the last bits of a sum into a change of
        // order lr, and the two layouts' products (60 rows against 30 for lm_head) sum in other orders in OpenBLAS.
        var draw = SeededGenerator(seed: 5)
        for key in model.adapters.keys.sorted() {
            model.adapters[key]!.b = model.adapters[key]!.b.map { _ in Float.random(in: -0.01...0.01, using: &draw) }
        }
        return model
    }

    /// Two ranks with batch 2 against one process with batch 4 (the same global batch): each example goes to exactly
    /// one rank per epoch, and the losses and the adapters after training are the same (to float rounding).
    func testTwoRanksMatchOneProcessWithTheSameGlobalBatch() throws {
        let data = examples(16)
        var config = TrainingConfig()
        config.batchSize = 4; config.epochs = 2; config.learningRate = 1e-3; config.optimizer = .adamw
        var single = Trainer(engine: CPUTrainingEngine(model: try model(), optimizer: AdamW(kind: .adamw)), examples: data, config: config)
        var singleLosses: [Double] = []
        var cb = Trainer.Callbacks()
        cb.progress = { _, _, loss, _ in singleLosses.append(loss) }
        try single.train(cb)

        config.batchSize = 2
        let group = ThreadGroup(worldSize: 2)
        var engines: [RecordingEngine] = []
        var trainers: [Trainer] = []
        for rank in 0..<2 {
            let rg = ThreadGroup.Rank(group, rank: rank)
            let e = RecordingEngine(CPUTrainingEngine(model: try model(), optimizer: AdamW(kind: .adamw), group: rg))
            engines.append(e)
            trainers.append(Trainer(engine: e, examples: data, config: config, group: rg))
        }
        XCTAssertEqual(trainers[0].totalSteps, single.totalSteps)
        var rankLosses: [[Double]] = [[], []]
        var errors: [Error?] = [nil, nil]
        DispatchQueue.concurrentPerform(iterations: 2) { rank in
            var t = trainers[rank]
            var c = Trainer.Callbacks()
            c.progress = { _, _, loss, _ in rankLosses[rank].append(loss) }
            do { try t.train(c) } catch { errors[rank] = error }
        }
        XCTAssertNil(errors[0]); XCTAssertNil(errors[1])
        XCTAssertEqual(rankLosses[0], rankLosses[1], "every rank sees the global loss")
        XCTAssertEqual(rankLosses[0].count, singleLosses.count)
        for (a, b) in zip(rankLosses[0], singleLosses) { XCTAssertEqual(a, b, accuracy: 1e-5) }
        // Each epoch (8 per rank-pair of steps here: 16 examples, global batch 4) gives every example to one rank.
        let perEpoch = data.count / 2
        for epoch in 0..<2 {
            let firstIds = (engines[0].seen[(epoch * perEpoch)..<((epoch + 1) * perEpoch)] + engines[1].seen[(epoch * perEpoch)..<((epoch + 1) * perEpoch)]).map { $0[0] }
            XCTAssertEqual(firstIds.sorted(), Array(0..<16), "epoch \(epoch)")
        }
        let a = try engines[0].adapterWeights(), b = try engines[1].adapterWeights(), s = try single.engine.adapterWeights()
        XCTAssertEqual(a, b, "the ranks stay identical")
        for (k, w) in s {
            XCTAssertLessThan(relativeError(a[k]!.a + a[k]!.b, w.a + w.b), 1e-5, k)
        }
    }

    /// A group of one changes no number.
    func testWorldSizeOneChangesNothing() throws {
        let data = examples(12)
        var config = TrainingConfig()
        config.batchSize = 3; config.maxSteps = 4; config.learningRate = 1e-3
        var alone = Trainer(engine: CPUTrainingEngine(model: try model(), optimizer: AdamW(kind: .paged_adamw_8bit)), examples: data, config: config)
        try alone.train(Trainer.Callbacks())
        let g = ThreadGroup.Rank(ThreadGroup(worldSize: 1), rank: 0)
        var one = Trainer(engine: CPUTrainingEngine(model: try model(), optimizer: AdamW(kind: .paged_adamw_8bit), group: g),
                          examples: data, config: config, group: g)
        try one.train(Trainer.Callbacks())
        XCTAssertEqual(try alone.engine.adapterWeights(), try one.engine.adapterWeights())
    }
}
