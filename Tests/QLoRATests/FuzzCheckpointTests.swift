import Foundation
import Llama
import ModelFiles
import Tensors
import Training
import XCTest

// Two more input kinds for the seeded fuzz suite (issue 12, item 6): a training checkpoint for
// --resume-from-checkpoint (its trainer_state.json, optimizer.safetensors and adapter files) and a run's
// metrics.jsonl for `plot`. An independent fuzzing pass found a damaged checkpoint restored without a word; each
// mutant here must restore and train on, or throw.
extension FuzzTests {
    func testFuzzCheckpoint() throws {
        let golden = try Shared.requireGolden()
        var lora = LoRAConfig()
        lora.targetModules = ["q_proj", "v_proj"]
        let model = try LlamaModel.load(directory: golden + "/tiny-llama", lora: lora, seed: 3)
        let examples = (0..<4).map { r in
            let ids = (0..<12).map { ($0 * 7 + r * 13) % 384 }
            return TokenizedExample(inputIds: ids, labels: ids)
        }
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 4; config.optimizer = .adamw_8bit
        let dir = fuzzDirectory("checkpoint")
        let first = Trainer(model: model, examples: examples, config: config)
        config.maxSteps = 2
        var short = Trainer(model: model, examples: examples, config: config)
        try short.train(Trainer.Callbacks())
        let saved = try Checkpoint.save(short, outputDirectory: dir, limit: nil)
        let names = ["trainer_state.json", "optimizer.safetensors", "adapter_config.json", "adapter_model.safetensors"]
        let originals = try names.map { try FileSystem.readBytes(saved + "/" + $0) }
        var fuzz = Fuzzer(seed: Self.seed &+ 11)
        var tally = Tally("checkpoint")
        let start = model.adapters
        for i in 0..<max(1, Self.mutantCount / 2) {
            for (name, bytes) in zip(names, originals) {
                try writeMutant(bytes, to: saved + "/" + name, kind: "checkpoint", index: i)
            }
            let which = fuzz.below(names.count)
            let original = originals[which]
            var mutant: [UInt8]
            if names[which].hasSuffix(".json"), let tree = try? JSONValue(parsing: original), fuzz.below(2) == 0 {
                mutant = Array(fuzz.mutateTree(tree).pythonText(indent: 2).utf8)
            } else if names[which].hasSuffix(".json") {
                mutant = fuzz.mutateText(original)
            } else {
                let headerEnd = 8 + Int(original.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
                switch fuzz.below(3) {
                case 0: mutant = fuzz.mutateBytes(original, focus: 0..<headerEnd)
                case 1: mutant = fuzz.mutateBytes(original, focus: headerEnd..<original.count)
                default:
                    let header = try JSONValue(parsing: original[8..<headerEnd])
                    mutant = Fuzzer.safeTensors(header: Array(fuzz.mutateTree(header).compactText().utf8),
                                                data: Array(original[headerEnd...]))
                }
            }
            try writeMutant(mutant, to: saved + "/" + names[which], kind: "checkpoint", index: i)
            model.adapters = start
            var trainer = first
            tally.run {
                try Checkpoint.restore(&trainer, from: saved)
                try trainer.train(Trainer.Callbacks())   // what a resumed run does next
            }
        }
        tally.report()
    }

    func testFuzzMetricsPlot() throws {
        let dir = fuzzDirectory("metrics")
        let base = (1...20).map { step in
            #"{"step": \#(step), "loss": \#(5.0 - Double(step) * 0.1), "learning_rate": 0.0002, "# +
                #""epoch": \#(Double(step) / 10)}"#
        } + [#"{"step": 10, "eval_loss": 4.25}"#]
        var fuzz = Fuzzer(seed: Self.seed &+ 12)
        var tally = Tally("metrics")
        for i in 0..<Self.mutantCount {
            var lines = base
            for _ in 0...fuzz.below(4) {
                let n = fuzz.below(lines.count)
                let line = Array(lines[n].utf8)
                if fuzz.below(2) == 0, let tree = try? JSONValue(parsing: line) {
                    lines[n] = fuzz.mutateTree(tree).compactText()
                } else {
                    lines[n] = String(decoding: fuzz.mutateText(line), as: UTF8.self)
                }
            }
            var bytes = Array(lines.joined(separator: "\n").utf8)
            if fuzz.below(4) == 0 { bytes = fuzz.mutateBytes(bytes) }
            try writeMutant(bytes, to: dir + "/metrics.jsonl", kind: "metrics", index: i)
            tally.run { _ = try LossPlot.write(runDirectory: dir) }
        }
        tally.report()
    }
}
