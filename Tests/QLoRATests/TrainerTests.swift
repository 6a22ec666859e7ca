import Foundation
import Llama
import ModelFiles
import Training
import XCTest

final class TrainerTests: XCTestCase {
    func tinyExamples() throws -> [TokenizedExample] {
        let ref = try SafeTensorsFile(path: try Shared.requireGolden() + "/qlora.safetensors")
        let ids = try ref.tensor(named: "train_batches").integers()
        return (0..<20).map { r in
            let row = Array(ids[(r * 32)..<((r + 1) * 32)])
            // Different lengths, so padding and per-token normalization are exercised.
            let keep = 20 + (r * 5) % 13
            return TokenizedExample(inputIds: Array(row.prefix(keep)), labels: Array(row.prefix(keep)))
        }
    }

    func freshModel(dropout: Double) throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.targetModules = ["all-linear"]; lora.dropout = dropout
        return try LlamaModel.load(directory: try Shared.requireGolden() + "/tiny-llama", lora: lora, seed: 11)
    }

    /// A run stopped after a checkpoint and resumed ends with the same adapter, bit for bit, as one that never stopped.
    func testResumeContinuesExactly() throws {
        let examples = try tinyExamples()
        var config = TrainingConfig()
        config.batchSize = 3; config.maxSteps = 7; config.saveSteps = 3; config.learningRate = 1e-3
        config.optimizer = .paged_adamw_8bit; config.gradientAccumulationSteps = 2; config.schedule = .cosine
        config.warmupSteps = 2
        let dirA = makeTemporaryDirectory(self), dirB = makeTemporaryDirectory(self)

        let modelA = try freshModel(dropout: 0.1)
        var a = Trainer(model: modelA, examples: examples, config: config)
        var callbacksA = Trainer.Callbacks()
        callbacksA.save = { t in try Checkpoint.save(t, outputDirectory: dirA, limit: nil) }
        try a.train(callbacksA)

        let modelB = try freshModel(dropout: 0.1)
        var b = Trainer(model: modelB, examples: examples, config: config)
        var callbacksB = Trainer.Callbacks()
        callbacksB.save = { t in try Checkpoint.save(t, outputDirectory: dirB, limit: 1) }
        try b.train(callbacksB, stopAfter: 4)   // "interrupted" after the checkpoint at step 3
        XCTAssertEqual(try Checkpoint.checkpoints(in: dirB).map(\.step), [3], "save_total_limit 1 keeps the newest")

        let modelC = try freshModel(dropout: 0.1)   // a new process: fresh adapters, then the checkpoint
        var c = Trainer(model: modelC, examples: examples, config: config)
        try Checkpoint.restore(&c, from: dirB + "/checkpoint-3")
        XCTAssertEqual(c.step, 3)
        try c.train(callbacksB)
        XCTAssertEqual(c.step, 7)
        for (key, w) in modelA.adapters {
            XCTAssertEqual(w, modelC.adapters[key], key)
        }
        XCTAssertNotEqual(modelA.adapters, try freshModel(dropout: 0.1).adapters, "training changed the adapters")
    }

    /// Accumulating two micro-batches of 2 equals one batch of 4: the loss is normalized by the accumulated batch's
    /// target tokens, not averaged per micro-batch.
    func testGradientAccumulationNormalizesByAllTargetTokens() throws {
        let examples = try tinyExamples()
        func run(batch: Int, accumulation: Int) throws -> ([StepMetrics], [String: LoRAWeights]) {
            var config = TrainingConfig()
            config.batchSize = batch; config.gradientAccumulationSteps = accumulation; config.maxSteps = 3
            config.shuffle = false; config.loggingSteps = 1; config.optimizer = .adamw; config.learningRate = 1e-3
            let model = try freshModel(dropout: 0)
            var t = Trainer(model: model, examples: examples, config: config)
            var logs: [StepMetrics] = []
            var callbacks = Trainer.Callbacks()
            callbacks.log = { logs.append($0) }
            try t.train(callbacks)
            return (logs, model.adapters)
        }
        // Same-length rows within each half so padding is the same either way.
        let (one, adaptersOne) = try run(batch: 4, accumulation: 1)
        let (two, adaptersTwo) = try run(batch: 2, accumulation: 2)
        for (x, y) in zip(one, two) { XCTAssertEqual(x.loss!, y.loss!, accuracy: 1e-5) }
        // The adapters agree to summation order only: with OpenBLAS on two threads the two batch shapes sum their
        // products in different orders, and Adam's first steps (update ≈ lr · sign(g)) magnify that on entries whose
        // gradient is near zero (2.8e-4 measured; 1e-4 holds on one thread). A wrong normalization shows in the losses.
        for (key, w) in adaptersOne { XCTAssertLessThan(relativeError(w.b, adaptersTwo[key]!.b), 1e-3, key) }
    }

    func testSchedules() {
        var c = TrainingConfig()
        c.learningRate = 1; c.warmupSteps = 2; c.schedule = .linear
        XCTAssertEqual(c.learningRate(atStep: 0, totalSteps: 10), 0)
        XCTAssertEqual(c.learningRate(atStep: 1, totalSteps: 10), 0.5)
        XCTAssertEqual(c.learningRate(atStep: 2, totalSteps: 10), 1)
        XCTAssertEqual(c.learningRate(atStep: 6, totalSteps: 10), 0.5)
        c.schedule = .cosine
        XCTAssertEqual(c.learningRate(atStep: 6, totalSteps: 10), 0.5, accuracy: 1e-6)
        c.warmupSteps = 0; c.warmupRatio = 0.1
        XCTAssertEqual(c.warmup(totalSteps: 25), 3)
        c.maxSteps = nil; c.epochs = 2; c.batchSize = 4; c.gradientAccumulationSteps = 2
        XCTAssertEqual(c.totalSteps(exampleCount: 20), 6)
    }

    func testRecipeFileUsesHuggingFaceNamesAndRejectsUnknownKeys() throws {
        let dir = makeTemporaryDirectory(self)
        try AtomicFile.write(text: "per_device_train_batch_size: 8\ngradient_accumulation_steps: 2\nlearning_rate: 2.0e-4\nlora_alpha: 32\nr: 16\ntarget_modules: [q_proj, v_proj]\nbnb_4bit_quant_type: nf4\nreport_to: none\n", to: dir + "/recipe.yaml")
        let recipe = try TrainingRecipe(contentsOf: dir + "/recipe.yaml")
        XCTAssertEqual(try recipe.int("batch_size"), 8)
        XCTAssertEqual(try recipe.double("learning_rate"), 2e-4)
        XCTAssertEqual(try recipe.int("r"), 16)
        XCTAssertEqual(try recipe.list("target_modules"), ["q_proj", "v_proj"])
        try AtomicFile.write(text: #"{"learning_rate": 1e-4, "lerning_rate": 2, "max_stepz": 3}"#, to: dir + "/bad.json")
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: dir + "/bad.json")) {
            XCTAssertTrue("\($0)".contains("\"lerning_rate\", \"max_stepz\""), "\($0)")
        }
    }

    func testLossPlotIsAnSVGWithBothCurves() {
        let svg = LossPlot.svg([StepMetrics(step: 1, loss: 3), StepMetrics(step: 2, loss: 2.5), StepMetrics(step: 2, evalLoss: 2.7)])
        XCTAssertTrue(svg.hasPrefix("<svg"))
        XCTAssertEqual(svg.components(separatedBy: "<polyline").count - 1, 2)
        XCTAssertEqual(StepMetrics(json: StepMetrics(step: 4, loss: 1.5, learningRate: 0.001, gradNorm: 2, tokensPerSecond: 9).json)?.loss, 1.5)
    }
}
