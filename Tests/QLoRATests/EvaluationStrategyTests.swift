import Foundation
import Llama
import ModelFiles
import Training
import XCTest

/// eval_strategy / save_strategy, load_best_model_at_end and early stopping, on tiny-llama (CPU).
final class EvaluationStrategyTests: XCTestCase {
    /// tiny-llama's golden training rows, at different lengths (as TrainerTests takes them).
    func tinyExamples() throws -> [TokenizedExample] {
        let ref = try SafeTensorsFile(path: try Shared.requireGolden() + "/qlora.safetensors")
        let ids = try ref.tensor(named: "train_batches").integers()
        return (0..<20).map { r in
            let row = Array(ids[(r * 32)..<((r + 1) * 32)]), keep = 20 + (r * 5) % 13
            return TokenizedExample(inputIds: Array(row.prefix(keep)), labels: Array(row.prefix(keep)))
        }
    }

    func freshModel() throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.targetModules = ["all-linear"]
        return try LlamaModel.load(directory: try Shared.requireGolden() + "/tiny-llama", lora: lora, seed: 11)
    }

    /// Runs `config` over 20 examples, evaluating on 6 held-out ones; the logged evaluations, checkpoints written,
    /// and the trainer.
    func run(_ config: TrainingConfig, saveBestTo best: String? = nil,
             resumeFrom checkpoint: String? = nil, saveTo: String? = nil, stopAfter: Int? = nil)
        throws -> (evals: [(step: Int, loss: Double)], saved: [Int], trainer: Trainer, model: LlamaModel) {
        let all = try tinyExamples()
        let train = Array(all.prefix(14)), validation = Array(all.suffix(6))
        let model = try freshModel()
        var trainer = Trainer(model: model, examples: train, config: config)
        if let checkpoint { try Checkpoint.restore(&trainer, from: checkpoint) }
        var evals: [(Int, Double)] = [], saved: [Int] = []
        var callbacks = Trainer.Callbacks()
        callbacks.log = { m in if let e = m.evalLoss { evals.append((m.step, e)) } }
        callbacks.evaluate = { engine in try Trainer.evaluate(engine: engine, examples: validation, batchSize: 3).loss }
        callbacks.save = { t in
            saved.append(t.step)
            if let saveTo { try Checkpoint.save(t, outputDirectory: saveTo, limit: nil) }
        }
        if let best {
            callbacks.saveBest = { t in try PEFTAdapter.save(t.engine.adapterWeights(), lora: t.engine.loraConfig,
                                                             to: best) }
        }
        try trainer.train(callbacks, stopAfter: stopAfter)
        return (evals, saved, trainer, model)
    }

    func baseConfig() -> TrainingConfig {
        var c = TrainingConfig()
        c.batchSize = 2; c.epochs = 3; c.learningRate = 1e-3; c.optimizer = .adamw; c.loggingSteps = 100
        return c   // 14 examples, batch 2: 7 steps an epoch, 21 in all
    }

    func testEpochStrategiesEvaluateAndSaveAtEachEpochEnd() throws {
        var c = baseConfig()
        c.evalStrategy = .epoch; c.saveStrategy = .epoch
        let r = try run(c)
        XCTAssertEqual(r.evals.map(\.step), [7, 14, 21])   // the last one is the final evaluation
        XCTAssertEqual(r.saved, [7, 14, 21])
    }

    func testStepsStrategyDefaultsAndNo() throws {
        var c = baseConfig()
        c.evalStrategy = .steps; c.loggingSteps = 5   // eval_steps unset: every logging_steps, as transformers
        c.saveStrategy = .no; c.saveSteps = 2         // save_strategy no wins over save_steps
        let r = try run(c)
        XCTAssertEqual(r.evals.map(\.step), [5, 10, 15, 20, 21])
        XCTAssertEqual(r.saved, [])
        c.evalStrategy = .no; c.evalSteps = 3
        XCTAssertEqual(try run(c).evals.count, 0, "eval_strategy no: no evaluation, not even at the end")
        var d = baseConfig()
        d.loadBestModelAtEnd = true; d.evalStrategy = .no
        XCTAssertThrowsError(try d.validate()) { XCTAssertTrue("\($0)".contains("load_best_model_at_end")) }
    }

    /// With a learning rate high enough that the validation loss turns up, the kept adapter is the one measured
    /// at the lowest validation loss, not the last.
    func testBestAdapterIsTheLowestValidationLoss() throws {
        var c = baseConfig()
        c.evalStrategy = .steps; c.evalSteps = 2; c.loadBestModelAtEnd = true; c.learningRate = 0.05
        let best = makeTemporaryDirectory(self)
        let r = try run(c, saveBestTo: best)
        let lowest = r.evals.min { $0.loss < $1.loss }!
        XCTAssertEqual(r.trainer.best?.step, lowest.step)
        XCTAssertEqual(r.trainer.best?.loss, lowest.loss)
        XCTAssertNotEqual(lowest.step, r.evals.last!.step, "the run should end worse than its best (lr 0.05)")
        // The adapter in best/ evaluates to the lowest loss logged.
        let engine = CPUTrainingEngine(model: try freshModel(), optimizer: AdamW(kind: .adamw))
        try engine.setAdapterWeights(try engine.readAdapterWeights(directory: best))
        let validation = Array(try tinyExamples().suffix(6))
        XCTAssertEqual(try Trainer.evaluate(engine: engine, examples: validation, batchSize: 3).loss, lowest.loss,
                       accuracy: 1e-9)
    }

    func testEarlyStoppingAfterPatienceEvaluationsWithoutImprovement() throws {
        var c = baseConfig()
        c.evalStrategy = .steps; c.evalSteps = 2; c.earlyStoppingPatience = 2
        c.earlyStoppingThreshold = 100   // no decrease counts: stop after the 1st + 2 evaluations
        let r = try run(c)
        XCTAssertTrue(r.trainer.stoppedEarly)
        XCTAssertEqual(r.trainer.step, 6)
        XCTAssertEqual(r.evals.map(\.step), [2, 4, 6])
        // Threshold 0: the stop follows from the losses of the same run without early stopping.
        c.earlyStoppingThreshold = 0; c.learningRate = 0.02
        var free = c
        free.earlyStoppingPatience = nil
        let losses = try run(free).evals
        var best = Double.infinity, counter = 0, expected = losses.last!.step
        for (step, loss) in losses {
            if loss < best { best = loss; counter = 0 } else { counter += 1 }
            if counter >= 2 { expected = step; break }
        }
        let stopped = try run(c)
        XCTAssertEqual(stopped.trainer.step, expected)
        XCTAssertEqual(stopped.trainer.stoppedEarly, expected < 21)
        XCTAssertEqual(stopped.evals.map(\.loss), Array(losses.prefix(stopped.evals.count).map(\.loss)))
    }

    /// The best loss and early stopping's counter travel in the checkpoint: a resumed run stops where the
    /// uninterrupted one does.
    func testCheckpointsCarryTheBestAndTheCounter() throws {
        var c = baseConfig()
        c.evalStrategy = .steps; c.evalSteps = 2; c.saveStrategy = .steps; c.saveSteps = 2
        c.earlyStoppingPatience = 2; c.earlyStoppingThreshold = 100
        let whole = try run(c)
        let dir = makeTemporaryDirectory(self)
        _ = try run(c, saveTo: dir, stopAfter: 4)
        let resumed = try run(c, resumeFrom: dir + "/checkpoint-4")
        XCTAssertEqual(resumed.trainer.best?.loss, whole.trainer.best?.loss)
        XCTAssertEqual(resumed.trainer.step, whole.trainer.step)
        XCTAssertEqual(resumed.model.adapters, whole.model.adapters)
    }
}
