import Foundation
import Llama
import ModelFiles
import Training
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Issue 12: bad input never crashes, never hangs, never loses a user's file. Each case is a clear error naming
/// the flag or recipe key, its value and what is allowed (or correct behaviour), never a trap or a hang.
final class BadSettingsTests: XCTestCase {
    // MARK: helpers

    /// The built `qlora` binary beside the test bundle (`swift build --build-tests` builds it).
    func binary() throws -> String {
        var dir = Bundle(for: Self.self).bundleURL.deletingLastPathComponent()
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("qlora").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        let fallback = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".build/debug/qlora").path
        guard FileManager.default.isExecutableFile(atPath: fallback) else { throw XCTSkip("no built qlora binary") }
        return fallback
    }

    /// Runs the binary (or `executable`: a shell, a script's interpreter) with `arguments`, killing it after
    /// `timeout` seconds (a hang fails the test); `environment` is added to this process's.
    func run(_ arguments: [String], timeout: TimeInterval = 60, directory: String? = nil, stdin: String? = nil,
             executable: String? = nil, environment: [String: String] = [:]) throws
        -> (status: Int32, crashed: Bool, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try executable ?? binary())
        p.arguments = arguments
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let log = NSTemporaryDirectory() + "qlora-bad-settings-\(UUID().uuidString).log"
        FileManager.default.createFile(atPath: log, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: log) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        p.standardOutput = handle; p.standardError = handle
        p.standardInput = try stdin.map { try FileHandle(forReadingFrom: URL(fileURLWithPath: $0)) }
            ?? FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            XCTFail("qlora \(arguments.joined(separator: " ")) hung for \(timeout) s")
        }
        p.waitUntilExit()
        let data = FileManager.default.contents(atPath: log) ?? Data()
        return (p.terminationStatus, p.terminationReason == .uncaughtSignal, String(decoding: data, as: UTF8.self))
    }

    /// Expects a clean failure (a non-zero exit, not a signal) whose message holds every string of `expected`.
    func expectError(_ arguments: [String], _ expected: [String], file: StaticString = #filePath,
        line: UInt = #line) throws {
        let (status, crashed, output) = try run(arguments)
        XCTAssertNotEqual(status, 0, "\(arguments): \(output)", file: file, line: line)
        XCTAssertFalse(crashed, "\(arguments) crashed (signal \(status)): \(output)", file: file, line: line)
        for e in expected {
            XCTAssertTrue(output.contains(e), "\(arguments): expected \"\(e)\" in: \(output)", file: file, line: line)
        }
    }

    func tinyExamples() throws -> [TokenizedExample] {
        let ref = try SafeTensorsFile(path: try Shared.requireGolden() + "/qlora.safetensors")
        let ids = try ref.tensor(named: "train_batches").integers()
        return (0..<12).map { r in
            let row = Array(ids[(r * 32)..<((r + 1) * 32)])
            return TokenizedExample(inputIds: row, labels: row)
        }
    }

    func tinyModel() throws -> LlamaModel {
        var lora = LoRAConfig()
        lora.targetModules = ["q_proj", "v_proj"]; lora.dropout = 0
        return try LlamaModel.load(directory: try Shared.requireGolden() + "/tiny-llama", lora: lora, seed: 11)
    }

    func write(_ text: String, _ path: String) throws { try AtomicFile.write(text: text, to: path) }

    // MARK: 1. settings

    /// Each bad training setting is refused by `TrainingConfig.validate`, naming the flag, the recipe key
    /// and the value.
    func testTrainingConfigValidateRejectsEachBadSetting() throws {
        XCTAssertNoThrow(try TrainingConfig().validate())
        let cases: [(String, (inout TrainingConfig) -> Void)] = [
            ("--save-steps (recipe save_steps) is 0", { $0.saveSteps = 0 }),
            ("--eval-steps (recipe eval_steps) is 0", { $0.evalSteps = 0 }),
            ("--num-train-epochs (recipe num_train_epochs) is 1e+300", { $0.epochs = 1e300 }),
            ("--num-train-epochs (recipe num_train_epochs) is nan", { $0.epochs = .nan }),
            ("--num-train-epochs (recipe num_train_epochs) is inf", { $0.epochs = .infinity }),
            ("--num-train-epochs (recipe num_train_epochs) is 0.0", { $0.epochs = 0 }),
            ("--num-train-epochs (recipe num_train_epochs) is -1.0", { $0.epochs = -1 }),
            ("--warmup-ratio (recipe warmup_ratio) is nan: must be in [0, 1]", { $0.warmupRatio = .nan }),
            ("--warmup-ratio (recipe warmup_ratio) is 1.5", { $0.warmupRatio = 1.5 }),
            ("--learning-rate (recipe learning_rate) is nan", { $0.learningRate = .nan }),
            ("--learning-rate (recipe learning_rate) is inf", { $0.learningRate = .infinity }),
            ("--learning-rate (recipe learning_rate) is 0.0", { $0.learningRate = 0 }),
            ("--learning-rate (recipe learning_rate) is -0.001", { $0.learningRate = -1e-3 }),
            ("--max-grad-norm (recipe max_grad_norm) is -1.0", { $0.maxGradNorm = -1 }),
            ("--max-grad-norm (recipe max_grad_norm) is inf", { $0.maxGradNorm = .infinity }),
            ("--max-grad-norm (recipe max_grad_norm) is nan", { $0.maxGradNorm = .nan }),
            ("--batch-size (recipe per_device_train_batch_size) is 0", { $0.batchSize = 0 }),
            ("--gradient-accumulation-steps (recipe gradient_accumulation_steps) is 0",
                { $0.gradientAccumulationSteps = 0 }),
            ("--logging-steps (recipe logging_steps) is 0", { $0.loggingSteps = 0 }),
            ("--warmup-steps (recipe warmup_steps) is -1", { $0.warmupSteps = -1 }),
        ]
        for (expected, change) in cases {
            var c = TrainingConfig()
            change(&c)
            XCTAssertThrowsError(try c.validate(), expected) { XCTAssertTrue("\($0)".contains(expected), "\($0)") }
            // And the step count never traps on them.
            _ = c.batchSize > 0 && c.gradientAccumulationSteps > 0 ? c.totalSteps(exampleCount: 10) : 0
        }
        var c = TrainingConfig()
        c.maxGradNorm = 0   // clipping off is allowed
        XCTAssertNoThrow(try c.validate())
    }

    /// The trainer refuses a zero save interval itself (no `step % 0` trap), and an evaluation batch of 0.
    func testTrainerRefusesZeroIntervalsInsteadOfTrapping() throws {
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 2; config.saveSteps = 0
        var t = Trainer(model: try tinyModel(), examples: try tinyExamples(), config: config)
        var callbacks = Trainer.Callbacks()
        callbacks.save = { _ in }
        XCTAssertThrowsError(try t.train(callbacks)) { XCTAssertTrue("\($0)".contains("save_steps"), "\($0)") }
        let engine = CPUTrainingEngine(model: try tinyModel(), optimizer: AdamW(kind: .adamw))
        XCTAssertThrowsError(try Trainer.evaluate(engine: engine, examples: try tinyExamples(), batchSize: 0))
    }

    /// The recipe's integer accessor rejects non-integral or out-of-range numbers with an error naming the key.
    func testRecipeIntegersMustBeWholeAndInRange() throws {
        let dir = makeTemporaryDirectory(self)
        for value in ["1e30", ".inf", "-.inf", ".nan", "2.5"] {
            try write("max_steps: \(value)\nper_device_train_batch_size: \(value)\n", dir + "/r.yaml")
            let recipe = try TrainingRecipe(contentsOf: dir + "/r.yaml")
            XCTAssertThrowsError(try recipe.int("max_steps"), value) {
                XCTAssertTrue("\($0)".contains("\"max_steps\""), "\($0)")
            }
            XCTAssertThrowsError(try recipe.int("batch_size"), value) {
                XCTAssertTrue("\($0)".contains("\"per_device_train_batch_size\""), "\($0)")
            }
        }
        try write("max_steps: 3.0\n", dir + "/ok.yaml")
        XCTAssertEqual(try TrainingRecipe(contentsOf: dir + "/ok.yaml").int("max_steps"), 3)
        try write("overwrite_output_dir: true\n", dir + "/ow.yaml")
        XCTAssertEqual(try TrainingRecipe(contentsOf: dir + "/ow.yaml").bool("overwrite_output_dir"), true,
                       "overwrite_output_dir is a setting now, not ignored")
    }

    /// `qlora train` refuses each bad merged setting before loading anything (the model path does not even exist).
    func testTrainCommandRejectsBadSettingsNamingThem() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"text": "hello"}"# + "\n", dir + "/data.jsonl")
        let base = ["train", "--model", dir + "/no-model", "--data", dir + "/data.jsonl", "--output-dir", dir + "/out"]
        try expectError(base + ["--save-steps", "0"], ["--save-steps", "save_steps", "is 0"])
        try expectError(base + ["--eval-steps", "0"], ["--eval-steps", "is 0"])
        try expectError(base + ["--max-seq-length=-1"], ["--max-seq-length", "max_seq_length", "-1"])
        try expectError(base + ["--validation-split", "1"], ["--validation-split", "validation_split", "1.0", "[0, 1)"])
        try expectError(base + ["--validation-split=-0.5"], ["--validation-split", "-0.5"])
        try expectError(base + ["--num-train-epochs", "1e300"], ["--num-train-epochs", "1e+300"])
        try expectError(base + ["--num-train-epochs", "nan"], ["--num-train-epochs", "nan"])
        try expectError(base + ["--warmup-ratio", "nan"], ["--warmup-ratio", "nan", "[0, 1]"])
        try expectError(base + ["--learning-rate", "inf"], ["--learning-rate", "inf"])
        try expectError(base + ["--learning-rate", "0"], ["--learning-rate", "0.0"])
        try expectError(base + ["--max-grad-norm=-1"], ["--max-grad-norm", "-1.0"])
        try expectError(base + ["--train-on-eos", "sometimes"], ["--train-on-eos", "train_on_eos", "sometimes"])
        let recipes: [(String, [String])] = [
            ("per_device_eval_batch_size: 0\n", ["per_device_eval_batch_size", "is 0"]),
            ("seed: -1\n", ["seed", "-1", "≥ 0"]),
            ("num_train_epochs: 1e300\n", ["num_train_epochs", "1e+300"]),
            ("num_train_epochs: .inf\n", ["num_train_epochs", "inf"]),
            ("max_steps: 1e30\n", ["\"max_steps\"", "integer"]),
            ("save_steps: .inf\n", ["\"save_steps\"", "integer"]),
            ("train_on_eos: maybe\n", ["train_on_eos", "maybe", "turn, last, all or none"]),
        ]
        for (text, expected) in recipes {
            try write(text, dir + "/recipe.yaml")
            try expectError(base + ["--config", dir + "/recipe.yaml"], expected)
        }
    }

    /// `qlora eval --limit -1` and `--batch-size 0` are errors naming the flag.
    func testEvalCommandRejectsBadLimitAndBatch() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"text": "hello"}"# + "\n", dir + "/data.jsonl")
        let base = ["eval", "--model", dir + "/no-model", "--data", dir + "/data.jsonl"]
        try expectError(base + ["--limit=-1"], ["--limit", "-1"])
        try expectError(base + ["--batch-size", "0"], ["--batch-size", "is 0"])
    }

    /// `qlora generate` with a prompt longer than the model's context is an error, not a trap. A tokenizer with
    /// more ids than the model's vocabulary (SmolLM2's 49152 beside tiny-llama's 384) is an error naming both
    /// sizes: a prompt of its ids used to read past the embedding table (a trap in generate).
    func testGeneratePromptLongerThanTheContextIsAnError() throws {
        let golden = try Shared.requireGolden()
        let dir = try GGUFExportTests.tinyLlamaWithTokenizer(self)   // a 384-token tokenizer: it fits
        let long = Array(repeating: "word", count: 400).joined(separator: " ")   // > 256 positions
        try expectError(["generate", "--model", dir, "--prompt", long, "--max-new-tokens", "1000000"],
                        ["context", "256"])
        let tokenizer = URL(fileURLWithPath: golden).deletingLastPathComponent()
            .appendingPathComponent("smollm2-tokenizer/tokenizer.json").path
        guard FileManager.default.fileExists(atPath: tokenizer) else { throw XCTSkip("no smollm2 tokenizer") }
        let other = makeTemporaryDirectory(self)
        for name in ["config.json", "model.safetensors"] {
            try FileManager.default.createSymbolicLink(atPath: other + "/" + name,
                withDestinationPath: golden + "/tiny-llama/" + name)
        }
        try FileManager.default.createSymbolicLink(atPath: other + "/tokenizer.json", withDestinationPath: tokenizer)
        let mismatch = [other + "/tokenizer.json", "49152 token ids", "vocab_size 384"]
        try expectError(["generate", "--model", other, "--prompt", "hi", "--max-new-tokens", "3"], mismatch)
        try write(#"{"text": "hi there"}"# + "\n", other + "/text.jsonl")
        try expectError(["eval", "--model", other, "--data", other + "/text.jsonl"], mismatch)
    }

    // MARK: 2. recipe parsing

    /// A recipe nested 10,000 deep, an alias chain ("billion laughs") and a file over 1 MiB are refused with an
    /// error naming the file, without overflowing the stack or running out of memory.
    func testRecipeRefusesDeepNestingAliasesAndHugeFiles() throws {
        let dir = makeTemporaryDirectory(self)
        let deep = dir + "/deep.yaml"
        try write("max_steps: " + String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000) + "\n",
            deep)
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: deep)) {
            XCTAssertTrue("\($0)".contains(deep) && "\($0)".contains("deeper than 64"), "\($0)")
        }
        let blockDeep = dir + "/block.yaml"
        try write("target_modules:\n" + String(repeating: "- ", count: 5_000) + "x\n", blockDeep)
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: blockDeep)) {
            XCTAssertTrue("\($0)".contains("deeper than 64"), "\($0)")
        }

        var laughs = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        for i in 1...9 {
            laughs += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ", ") + "]\n"
        }
        let bomb = dir + "/laughs.yaml"
        try write(laughs, bomb)
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: bomb)) {
            XCTAssertTrue("\($0)".contains(bomb) && "\($0)".contains("anchors"), "\($0)")
        }
        let big = dir + "/big.yaml"
        try write("# " + String(repeating: "x", count: TrainingRecipe.maximumFileSize) + "\nmax_steps: 3\n", big)
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: big)) { XCTAssertTrue("\($0)".contains("1 MiB"), "\($0)") }
        // A plain recipe with a list still reads.
        try write("target_modules: [q_proj, v_proj]\nmax_steps: 3\n", dir + "/ok.yaml")
        XCTAssertEqual(try TrainingRecipe(contentsOf: dir + "/ok.yaml").list("target_modules"), ["q_proj", "v_proj"])
    }

    // MARK: 3. files

    /// A FIFO, a folder or /dev/zero named as a data or recipe file is refused at once (stat first), never read.
    func testFIFOsFoldersAndDevicesAreRefusedWithoutBlocking() throws {
        let dir = makeTemporaryDirectory(self)
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try TrainingRecipe(contentsOf: fifo)) { XCTAssertTrue("\($0)".contains("FIFO"), "\($0)") }
        XCTAssertThrowsError(try InputFile.requireRegular(dir, what: "--data")) {
            XCTAssertTrue("\($0)".contains("a folder"), "\($0)")
        }
        XCTAssertThrowsError(try InputFile.requireRegular("/dev/zero", what: "--data")) {
            XCTAssertTrue("\($0)".contains("character device") && "\($0)".contains("regular file"), "\($0)")
        }
        try write("x\n", dir + "/ok.txt")
        XCTAssertEqual(try InputFile.requireRegular(dir + "/ok.txt", what: "--data"), 2)

        let base = ["--model", dir + "/no-model", "--output-dir", dir + "/out"]
        try expectError(["train", "--data", fifo] + base, ["--data", fifo, "FIFO", "regular file"])
        try expectError(["train", "--data", "/dev/zero"] + base, ["--data", "/dev/zero", "regular file"])
        try expectError(["train", "--data", dir] + base, ["a folder"])
        try expectError(["eval", "--model", dir + "/no-model", "--data", fifo], ["FIFO"])
    }

    // MARK: 4. nothing lost

    /// A second `train` into a folder holding a run is refused before anything is written, naming the file and
    /// suggesting --resume-from-checkpoint latest; the old metrics.jsonl is untouched.
    func testSecondRunIntoAnOutputDirIsRefusedAndKeepsMetrics() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"text": "hello"}"# + "\n", dir + "/data.jsonl")
        let out = dir + "/out"
        try FileSystem.createDirectory(out)
        let old = #"{"step": 1, "loss": 2.5}"# + "\n"
        try write(old, out + "/metrics.jsonl")
        XCTAssertEqual(try Checkpoint.existingRun(in: out), out + "/metrics.jsonl")
        try expectError(["train", "--model", dir + "/no-model", "--data", dir + "/data.jsonl", "--output-dir", out],
                        ["already holds a run", "metrics.jsonl", "--resume-from-checkpoint latest",
                            "--overwrite-output-dir"])
        XCTAssertEqual(try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8), old)
        // A checkpoint folder alone counts as a run too.
        let other = dir + "/other"
        try FileSystem.createDirectory(other + "/checkpoint-4")
        XCTAssertEqual(try Checkpoint.existingRun(in: other), other + "/checkpoint-4")
        XCTAssertNil(try Checkpoint.existingRun(in: dir + "/fresh"))
        try FileSystem.createDirectory(dir + "/failed")
        try write("", dir + "/failed/metrics.jsonl")
        XCTAssertNil(try Checkpoint.existingRun(in: dir + "/failed"), "an empty metrics.jsonl holds nothing to lose")
        // With --overwrite-output-dir the check passes (the run then fails on the missing model, later).
        let (_, _, output) = try run(["train", "--model", dir + "/no-model", "--data", dir + "/data.jsonl",
            "--output-dir", out, "--overwrite-output-dir"])
        XCTAssertFalse(output.contains("already holds a run"), output)
    }

    /// `qlora quantize` into the model folder, or a folder inside it, is refused before anything is written.
    func testQuantizeIntoTheModelFolderIsRefused() throws {
        let dir = makeTemporaryDirectory(self)
        let model = dir + "/model"
        try FileSystem.createDirectory(model)
        try write("{}", model + "/config.json")
        let before = try FileSystem.contents(of: model)
        try expectError(["quantize", "--model", model, "--output", model], ["--output", "--model folder"])
        try expectError(["quantize", "--model", model, "--output", model + "/./"], ["--model folder"])
        try expectError(["quantize", "--model", model, "--output", model + "/q4/sub"], ["inside the --model folder"])
        XCTAssertEqual(try FileSystem.contents(of: model), before, "nothing written")
        XCTAssertFalse(FileSystem.isDirectory(model + "/q4"))
    }

    /// Stale `checkpoint-N.tmp-PID` folders (PID not running) are removed; a live process's are kept.
    func testStaleTemporaryCheckpointsAreRemoved() throws {
        let dir = makeTemporaryDirectory(self)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/true")
        try p.run(); p.waitUntilExit()
        let dead = p.processIdentifier
        try FileSystem.createDirectory(dir + "/checkpoint-3.tmp-\(dead)")
        try write("x", dir + "/checkpoint-3.tmp-\(dead)/adapter_model.safetensors")
        try FileSystem.createDirectory(dir + "/checkpoint-5.tmp-1")   // pid 1 is always running
        try FileSystem.createDirectory(dir + "/checkpoint-2")
        let removed = try Checkpoint.removeStaleTemporaries(in: dir)
        XCTAssertEqual(removed, [dir + "/checkpoint-3.tmp-\(dead)"])
        XCTAssertEqual(try FileSystem.contents(of: dir), ["checkpoint-2", "checkpoint-5.tmp-1"])
    }

    /// A log callback that fails (a full disk under metrics.jsonl) stops training with its error; no trap.
    func testAFailingMetricsWriteStopsTrainingCleanly() throws {
        struct DiskFull: Error, CustomStringConvertible { var description: String { "No space left on device" } }
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 3; config.loggingSteps = 1
        var t = Trainer(model: try tinyModel(), examples: try tinyExamples(), config: config)
        var callbacks = Trainer.Callbacks()
        callbacks.log = { _ in throw DiskFull() }
        XCTAssertThrowsError(try t.train(callbacks)) { XCTAssertTrue($0 is DiskFull, "\($0)") }
        XCTAssertEqual(t.step, 1, "stopped at the first failed write")
        // What `qlora train` appends with: a full disk is a thrown error, not a trap.
        if FileManager.default.fileExists(atPath: "/dev/full") {
            let full = try FileHandle(forWritingTo: URL(fileURLWithPath: "/dev/full"))
            defer { try? full.close() }
            XCTAssertThrowsError(try full.write(contentsOf: Data(repeating: 0x41, count: 1 << 16)))
        }
    }

    // MARK: 5. divergence

    /// A learning rate of 1e30 stops at step 1 with an error naming the step, and no checkpoint (even with
    /// save_steps 1) holds non-finite or overflowing weights.
    func testHugeLearningRateStopsNamingTheStepAndWritesNoBadCheckpoint() throws {
        let dir = makeTemporaryDirectory(self)
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 4; config.saveSteps = 1; config.learningRate = 1e30
        config.optimizer = .adamw; config.schedule = .constant
        var t = Trainer(model: try tinyModel(), examples: try tinyExamples(), config: config)
        var callbacks = Trainer.Callbacks()
        callbacks.save = { t in try Checkpoint.save(t, outputDirectory: dir, limit: nil) }
        XCTAssertThrowsError(try t.train(callbacks)) {
            XCTAssertTrue("\($0)".contains("diverged at step 1"), "\($0)")
            XCTAssertTrue("\($0)".contains("no checkpoint was saved"), "\($0)")
        }
        XCTAssertEqual(try Checkpoint.checkpoints(in: dir).count, 0)
    }

    /// After good checkpoints, a run that diverges names the last good one, which holds finite weights.
    func testDivergenceNamesTheLastGoodCheckpoint() throws {
        let dir = makeTemporaryDirectory(self)
        var good = TrainingConfig()
        good.batchSize = 2; good.maxSteps = 2; good.saveSteps = 1; good.learningRate = 1e-3; good.optimizer = .adamw
        var a = Trainer(model: try tinyModel(), examples: try tinyExamples(), config: good)
        var callbacks = Trainer.Callbacks()
        callbacks.save = { t in try Checkpoint.save(t, outputDirectory: dir, limit: nil) }
        try a.train(callbacks)
        XCTAssertEqual(a.lastCheckpointStep, 2)

        var bad = good
        bad.maxSteps = 5; bad.learningRate = 1e30; bad.schedule = .constant
        var b = Trainer(model: try tinyModel(), examples: try tinyExamples(), config: bad)
        try Checkpoint.restore(&b, from: dir + "/checkpoint-2")
        XCTAssertThrowsError(try b.train(callbacks)) {
            XCTAssertTrue("\($0)".contains("diverged at step 3"), "\($0)")
            XCTAssertTrue("\($0)".contains("checkpoint-2"), "\($0)")
        }
        XCTAssertEqual(try Checkpoint.checkpoints(in: dir).map(\.step), [1, 2])
    }

    /// `Checkpoint.save` itself refuses adapters holding a NaN, and leaves nothing behind.
    func testCheckpointRefusesNonFiniteWeights() throws {
        let dir = makeTemporaryDirectory(self)
        let model = try tinyModel()
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 1
        let t = Trainer(model: model, examples: try tinyExamples(), config: config)
        var weights = try t.engine.adapterWeights()
        let key = weights.keys.sorted()[0]
        weights[key]!.b[0] = .nan
        try t.engine.setAdapterWeights(weights)
        XCTAssertThrowsError(try Checkpoint.save(t, outputDirectory: dir, limit: nil)) {
            XCTAssertTrue("\($0)".contains("non-finite") && "\($0)".contains(key), "\($0)")
        }
        XCTAssertEqual(try FileSystem.contents(of: dir), [])
        XCTAssertFalse(Trainer.adaptersAreFinite(sumOfSquares: .infinity))
        XCTAssertFalse(Trainer.adaptersAreFinite(sumOfSquares: 1e60))
        XCTAssertTrue(Trainer.adaptersAreFinite(sumOfSquares: 12.5))
    }
}

// MARK: found by an independent fuzzing pass

extension BadSettingsTests {
    /// A copy of the golden folder `name` in a fresh temporary folder: (the golden root, the folder, the copy).
    func goldenCopy(_ name: String) throws -> (golden: String, dir: String, copy: String) {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        try FileManager.default.copyItem(atPath: golden + "/" + name, toPath: dir + "/" + name)
        return (golden, dir, dir + "/" + name)
    }

    /// tiny-llama's folder, a fresh temporary folder and a one-record data file in it: (model, folder, data).
    func tinyModelAndData() throws -> (model: String, dir: String, data: String) {
        let model = try Shared.requireGolden() + "/tiny-llama"
        let dir = makeTemporaryDirectory(self)
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", dir + "/data.jsonl")
        return (model, dir, dir + "/data.jsonl")
    }

    /// Every reader that maps a file refuses a FIFO at once: `open` used to wait for a writer forever (tokenize's
    /// --input and --tokenizer, bench's --model-config, a tokenizer or model file that is a pipe).
    func testFIFOsAreRefusedByTheFileMapperWithoutBlocking() throws {
        let dir = makeTemporaryDirectory(self)
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try FileSystem.readBytes(fifo)) {
            XCTAssertEqual("\($0)", "\(fifo): cannot open: not a regular file (a FIFO (named pipe))")
        }
        try write(#"{"text": "a"}"# + "\n", dir + "/in.jsonl")
        let tokenizer = Shared.root + "/golden/smollm2-tokenizer/tokenizer.json"
        try expectError(["tokenize", "--tokenizer", fifo, "--input", dir + "/in.jsonl"], [fifo, "FIFO"])
        if FileSystem.isFile(tokenizer) {
            try expectError(["tokenize", "--tokenizer", tokenizer, "--input", fifo], [fifo, "FIFO"])
        }
        try expectError(["bench", "--model-config", fifo], [fifo, "FIFO"])
    }

    /// `plot` reads any metrics.jsonl: steps near Int.max used to trap while labelling the axis; a missing, special
    /// or non-UTF-8 file gave a Foundation error code instead of naming the file.
    func testPlotOfHostileMetricsIsAPlotOrAClearError() throws {
        let dir = makeTemporaryDirectory(self)
        try write(#"{"step": -9223372036854775807, "loss": 1}"# + "\n" + #"{"step": 9223372036854775807, "loss": 2}"#
                  + "\n" + #"{"step": 3, "loss": 1e308}"# + "\n", dir + "/metrics.jsonl")
        let (status, crashed, output) = try run(["plot", dir])
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(crashed, output)
        XCTAssertTrue(try String(contentsOfFile: dir + "/loss.svg", encoding: .utf8).contains("9223372036854775808"))
        try expectError(["plot", dir + "/none"], [dir + "/none/metrics.jsonl", "No such file"])
        try FileManager.default.removeItem(atPath: dir + "/metrics.jsonl")
        XCTAssertEqual(mkfifo(dir + "/metrics.jsonl", 0o600), 0)
        try expectError(["plot", dir], [dir + "/metrics.jsonl", "FIFO"])
    }
}

extension BadSettingsTests {
    /// bench's step sizes: `--batch-size 2147483648` used to fail a 275 GB allocation (a trap), `--layers 2^31` to
    /// build a model until memory ran out; each is now an error naming the flags and the bound.
    func testBenchStepSizesAreBoundedBeforeAnyAllocation() throws {
        let small = ["bench", "--steps", "1", "--max-seq-length", "16"]
        try expectError(small + ["--batch-size", "9223372036854775807"],
                        ["--batch-size 9223372036854775807 × --max-seq-length 16", "2147483648 allowed"])
        try expectError(small + ["--batch-size", "1000000", "--layers", "1"],
                        ["--batch-size 1000000 × --max-seq-length 16 needs at least", "GB on the CPU",
                         "this process may allocate"])
        try expectError(small + ["--layers", "2147483648"], ["--layers is 2147483648", "1 ... 30"])
        try expectError(small + ["--layers", "0"], ["--layers is 0"])
        try expectError(["plan", "--batch-size", "100000", "--max-seq-length", "100000"], ["tokens a step"])
    }
}

extension BadSettingsTests {
    /// An output that is an input is refused before anything is written: `train --init-adapter A --output-dir A`
    /// used to replace the starting adapter's files with the run's, `train --output-dir MODEL` put a run among the
    /// model's files, `merge --output ADAPTER` wrote a model into the adapter folder.
    func testOutputsThatAreTheAdapterOrModelFolderAreRefused() throws {
        let (golden, dir, adapter) = try goldenCopy("tiny-adapter")
        let before = try Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_model.safetensors"))
        try write(#"{"input_ids": [1, 2, 3, 4]}"# + "\n", dir + "/data.jsonl")
        let model = golden + "/tiny-llama"
        try expectError(["train", "--model", model, "--init-adapter", adapter, "--data", dir + "/data.jsonl",
                         "--output-dir", adapter + "/", "--max-steps", "1"],
                        ["--output-dir \(adapter)/ is the --init-adapter folder itself", "choose another folder"])
        try expectError(["train", "--model", model, "--data", dir + "/data.jsonl", "--output-dir", model + "/.",
                         "--max-steps", "1"], ["--output-dir \(model)/. is the --model folder itself"])
        try expectError(["merge", "--model", model, "--adapter", adapter, "--output", adapter, "--check", "never"],
                        ["--output \(adapter) is the --adapter folder itself"])
        try expectError(["export", "--model", model, "--adapter", adapter, "--adapter-only", "--output",
                         adapter + "/a.gguf"], ["is inside the --adapter folder \(adapter)"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: adapter + "/adapter_model.safetensors")), before)
        XCTAssertEqual(try FileSystem.contents(of: adapter), ["adapter_config.json", "adapter_model.safetensors"])
    }
}

extension BadSettingsTests {
    /// Resuming checks the checkpoint's place in the data and its optimizer step counts against this run: another
    /// --validation-split (fewer training examples) used to index past the data (a trap), an optimizer step count of
    /// Int.max overflowed on the next update, a negative data_position or epoch trapped.
    func testResumeChecksTheCheckpointsDataOrderAndStepCounts() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let lines = (0..<10).map { #"{"input_ids": [\#($0 + 1), 5, 6, 7, 8]}"# }
        try write(lines.joined(separator: "\n") + "\n", dir + "/data.jsonl")
        let out = dir + "/out"
        let train = ["train", "--model", golden + "/tiny-llama", "--data", dir + "/data.jsonl", "--output-dir", out,
                     "--batch-size", "2", "--save-steps", "1"]
        let (status, _, output) = try run(train + ["--max-steps", "2"])
        XCTAssertEqual(status, 0, output)
        let resume = train + ["--max-steps", "3", "--resume-from-checkpoint", "latest"]
        try expectError(resume + ["--validation-split", "0.3"],
                        ["checkpoint-2", "data_order holds 10 entries that are not an order of this run's 7 training "
                         + "examples", "--validation-split"])

        let path = out + "/checkpoint-2/optimizer.safetensors"
        let file = try SafeTensorsFile(path: path)
        var metadata = file.metadata
        let steps = try JSONValue(parsing: metadata["steps"] ?? "{}")
        let first = try XCTUnwrap(steps.objectValue?.first?.0)
        var changed = steps
        changed.set(first, .int(Int.max))
        metadata["steps"] = changed.compactText()
        let tensors = try file.names.map { (name: $0, tensor: try file.tensor(named: $0)) }
        try SafeTensorsWriter.write(tensors, metadata: metadata, to: path + ".new")
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: path + ".new", toPath: path)
        try expectError(resume, [path, first, "optimizer step count 9223372036854775807",
                                 "from 0 to the checkpoint's global_step 2"])

        XCTAssertThrowsError(try Checkpoint.checkState(step: 2, order: Array(0..<4), rawOrderCount: 4, position: -1,
                                                       epoch: 0, exampleCount: 4, directory: "ck")) {
            XCTAssertTrue("\($0)".contains("data_position is -1: must be in 0 ... 4"), "\($0)")
        }
        XCTAssertThrowsError(try Checkpoint.checkState(step: 2, order: [0, 1], rawOrderCount: 2, position: 0,
                                                       epoch: -1, exampleCount: 2, directory: "ck")) {
            XCTAssertTrue("\($0)".contains("epoch is -1"), "\($0)")
        }
        XCTAssertNoThrow(try Checkpoint.checkState(step: 2, order: [1, 0], rawOrderCount: 2, position: 2, epoch: 3,
                                                   exampleCount: 2, directory: "ck"))
    }
}

extension BadSettingsTests {
    /// A model folder whose tokenizer.json is there but broken: eval and train used to take it for a missing one
    /// ("the model has none"), export silently wrote a GGUF without a vocabulary; each now names the file and what
    /// is wrong with it (a folder without tokenizer.json still takes pre-tokenized data).
    func testABrokenTokenizerIsNamedNotTakenForAMissingOne() throws {
        let (golden, dir, model) = try goldenCopy("tiny-llama")
        try write(#"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}}"#, model + "/tokenizer.json")
        try write(#"{"text": "hello"}"# + "\n", dir + "/text.jsonl")
        try write(#"{"input_ids": [1, 2, 3]}"# + "\n", dir + "/ids.jsonl")
        let broken = [model + "/tokenizer.json", "model.merges[0]"]
        try expectError(["eval", "--model", model, "--data", dir + "/text.jsonl"], broken)
        try expectError(["train", "--model", model, "--data", dir + "/text.jsonl", "--output-dir", dir + "/out"],
                        broken)
        try expectError(["export", "--model", model, "--output", dir + "/m.gguf", "--check", "never"], broken)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m.gguf"))
        let (status, _, output) = try run(["eval", "--model", golden + "/tiny-llama", "--data", dir + "/ids.jsonl"])
        XCTAssertEqual(status, 0, output)
    }
}

extension BadSettingsTests {
    /// A fresh adapter's rank has the bound an adapter file's has: `--lora-r 2147483648` used to fail a 1.6 TB
    /// allocation (a trap), `--lora-r 1000000` filled memory for minutes on a 1 MB model.
    func testLoRARankIsBoundedLikeAnAdapterFiles() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        try expectError(train + ["--lora-r", "2147483648"], ["--lora-r (recipe r) is 2147483648", "from 1 to 65536"])
        try write("r: 1000000\n", dir + "/r.yaml")
        try expectError(train + ["--config", dir + "/r.yaml"], ["--lora-r (recipe r) is 1000000"])
        try expectError(train + ["--lora-r", "0"], ["--lora-r (recipe r) is 0"])
    }
}

extension BadSettingsTests {
    /// bench-quantize checks its sizes: `--cols 2147483648` used to fail a 275 GB allocation (a trap) and rows ×
    /// cols could overflow.
    func testBenchQuantizeSizesAreChecked() throws {
        try expectError(["bench-quantize", "--cols", "2147483648"],
                        ["--rows 4096 × --cols 2147483648", "elements allowed"])
        try expectError(["bench-quantize", "--rows", "3037000500", "--cols", "3037000500"], ["elements allowed"])
        try expectError(["bench-quantize", "--rows=0"], ["--rows 0 and --cols 11008: each must be at least 1"])
        try expectError(["bench-quantize", "--repeats=-1"], ["--repeats is -1"])
    }
}

extension BadSettingsTests {
    /// A whole LoRA alpha beyond Int's range (`--lora-alpha 1e30`) used to trap while adapter_config.json was
    /// written at the end of a run; it is written as a float and reads back.
    func testAHugeWholeLoRAAlphaIsSavedAsAFloat() throws {
        let dir = makeTemporaryDirectory(self)
        var lora = LoRAConfig()
        lora.alpha = 1e30; lora.targetModules = ["q_proj"]
        let config = try LlamaConfig(contentsOf: try Shared.requireGolden() + "/tiny-llama")
        try PEFTAdapter.save(LoRAWeights.initial(config: config, lora: lora, seed: 1), lora: lora, to: dir,
                             baseModel: "tiny")
        let text = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        XCTAssertTrue(text.contains("\"lora_alpha\": 1e+30"), text)
        XCTAssertEqual(try PEFTAdapter.readConfig(directory: dir).alpha, 1e30)
    }
}

extension BadSettingsTests {
    /// Counts past 2^31 print whole: `--max-steps 2147483648` showed its progress as "1/-2147483648" (a 64-bit
    /// count formatted with %d). The run is stopped after its first progress line.
    func testProgressShowsStepCountsBeyondInt32() throws {
        let (model, dir, data) = try tinyModelAndData()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps",
                       "2147483648"]
        let pipe = Pipe()
        p.standardError = pipe; p.standardOutput = FileHandle.nullDevice
        try p.run()
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while !text.contains("train 1/"), p.isRunning, Date() < deadline {
            text += String(decoding: pipe.fileHandleForReading.availableData, as: UTF8.self)
        }
        p.terminate()
        p.waitUntilExit()
        XCTAssertTrue(text.contains("train 1/2147483648 "), text)
    }
}

extension BadSettingsTests {
    /// "no usable examples" says why: every record too short or without a target, or (with --packing) fewer
    /// tokens than one block of --max-seq-length.
    func testNoUsableExamplesSaysWhy() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        try write(#"{"input_ids": [1, 2, 3]}"# + "\n", dir + "/short.jsonl")
        try write(#"{"input_ids": [5]}"# + "\n", dir + "/one.jsonl")
        let model = golden + "/tiny-llama"
        try expectError(["train", "--model", model, "--data", dir + "/short.jsonl", "--output-dir", dir + "/out",
                         "--packing", "--max-seq-length", "64"],
                        ["short.jsonl: no usable examples: packing cuts full blocks of --max-seq-length 64 tokens, "
                         + "and the data holds 3 tokens"])
        try expectError(["eval", "--model", model, "--data", dir + "/one.jsonl"],
                        ["one.jsonl: no usable examples: every record has fewer than 2 tokens"])
    }
}

extension BadSettingsTests {
    /// plan's --gpu-memory must be a size: -1, 0 and nan printed "does not fit on a nan-GiB GPU".
    func testPlanGPUMemoryMustBeASize() throws {
        for value in ["-1", "0", "nan", "inf"] {
            try expectError(["plan", "--gpu-memory=\(value)"], ["--gpu-memory is", "finite number of GiB above 0"])
        }
    }
}

extension BadSettingsTests {
    /// Recipe keys that only state what the recipe expects are never taken in silence: `load_in_4bit: false` and
    /// `task_type: SEQ_CLS` (not what this tool trains) are errors, `fp16: true` and a bnb_4bit_compute_dtype other
    /// than the run's compute dtype are warnings naming the key; the seed recipe's values pass quietly.
    func testRecipeKeysThatStateExpectationsAreCheckedOrWarned() throws {
        let (model, dir, data) = try tinyModelAndData()
        func train(_ recipe: String) throws -> [String] {
            try write(recipe, dir + "/r.yaml")
            try? FileManager.default.removeItem(atPath: dir + "/out")
            return ["train", "--config", dir + "/r.yaml", "--model", model, "--data", data, "--output-dir",
                    dir + "/out", "--max-steps", "1", "--batch-size", "1"]   // one record: a bigger batch warns
        }
        try expectError(try train("load_in_4bit: false\n"), ["recipe load_in_4bit is false", "4-bit base only"])
        try expectError(try train("task_type: SEQ_CLS\n"), ["recipe task_type is \"SEQ_CLS\"", "CAUSAL_LM"])
        try expectError(try train("bnb_4bit_compute_dtype: int8\n"), ["bnb_4bit_compute_dtype is \"int8\""])
        var (status, _, output) = try run(try train("fp16: true\nbnb_4bit_compute_dtype: float16\n"))
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: recipe key fp16 has no effect here"), output)
        XCTAssertTrue(output.contains("warning: recipe bnb_4bit_compute_dtype float16 has no effect here: this run "
                                      + "computes in fp32"), output)
        (status, _, output) = try run(try train("load_in_4bit: true\ntask_type: CAUSAL_LM\nbf16: true\n"
                                                + "bnb_4bit_compute_dtype: bfloat16\n"))
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(output.contains("warning"), output)
    }
}

extension BadSettingsTests {
    /// eval and export's check read each example whole: --packing used to be accepted there and dropped without a
    /// word; it is an error naming the command.
    func testPackingWhereItHasNoEffectIsAnError() throws {
        let (model, dir, data) = try tinyModelAndData()
        try expectError(["eval", "--model", model, "--data", data, "--packing"], ["--packing has no effect in eval"])
        try expectError(["export", "--model", model, "--output", dir + "/m.gguf", "--check-data", data, "--packing"],
                        ["--packing has no effect in export's check"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/m.gguf"))
    }

    /// `tokenize` reads standard input line by line: a stream without newlines (/dev/zero) is refused once a line
    /// passes 64 MiB, instead of being read whole until memory runs out.
    func testTokenizeStdinWithoutNewlinesIsAnError() throws {
        _ = try Shared.requireGolden()
        let tokenizer = Shared.root + "/golden/smollm2-tokenizer/tokenizer.json"
        let (status, crashed, output) = try run(["tokenize", "--tokenizer", tokenizer], stdin: "/dev/zero")
        XCTAssertFalse(crashed, output)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("stdin:1: a line longer than 64 MiB"), output)
    }


    /// quantize and merge write a model folder only where no model is: a second run into the first one's folder is
    /// refused, and the first model's files stay as they were.
    func testQuantizeIntoAFolderHoldingAModelIsRefused() throws {
        let golden = try Shared.requireGolden()
        let out = NSTemporaryDirectory() + "qlora-existing-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let first = try run(["quantize", "--model", golden + "/tiny-llama", "--output", out])
        XCTAssertEqual(first.status, 0, first.output)
        let before = FileManager.default.contents(atPath: out + "/model.safetensors")
        try expectError(["quantize", "--model", golden + "/tiny-llama", "--output", out], ["already holds a model"])
        try expectError(["merge", "--model", golden + "/tiny-llama", "--adapter", golden + "/tiny-adapter",
                         "--output", out], ["already holds a model"])
        XCTAssertEqual(FileManager.default.contents(atPath: out + "/model.safetensors"), before)
    }


    /// A merge that fails (onto the original weights of a 4-bit base, which are not there) leaves no folder behind:
    /// the files are written into a temporary folder and moved into place only when complete.
    func testFailedMergeLeavesNothing() throws {
        let golden = try Shared.requireGolden()
        let out = NSTemporaryDirectory() + "qlora-merge-\(UUID().uuidString)"
        try expectError(["merge", "--model", golden + "/tiny-llama-bnb-nf4", "--adapter", golden + "/tiny-adapter",
                         "--output", out, "--onto", "original"], ["--onto dequantized"])
        let parent = (try? FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory())) ?? []
        let name = (out as NSString).lastPathComponent
        XCTAssertFalse(parent.contains { $0.hasPrefix(name) }, "left behind: \(parent.filter { $0.hasPrefix(name) })")
    }

    /// `info MODEL --dot MODEL/model.safetensors` replaced the model's weights with the Graphviz text (found by
    /// scripts/fuzz-cli.py, issue 12): the graph is never written over the model or adapter being read, nor into
    /// their folders, and the files stay as they were.
    func testInfoDotIsNeverWrittenOverTheModelOrAdapter() throws {
        let (_, _, model) = try goldenCopy("tiny-llama")
        let (_, _, adapter) = try goldenCopy("tiny-adapter")
        let weights = model + "/model.safetensors", adapterWeights = adapter + "/adapter_model.safetensors"
        let before = try Data(contentsOf: URL(fileURLWithPath: weights))
        let adapterBefore = try Data(contentsOf: URL(fileURLWithPath: adapterWeights))
        try expectError(["info", model, "--dot", weights], ["--dot \(weights) is inside the --model folder"])
        try expectError(["info", model, "--dot", model], ["--dot \(model) is the --model folder itself"])
        try expectError(["info", model, "--adapter", adapter, "--dot", adapterWeights],
                        ["--dot \(adapterWeights) is inside the --adapter folder"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: weights)), before)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: adapterWeights)), adapterBefore)
    }
}

/// Negative values of numeric flags (found by an independent fuzzing pass, issue 12): the argument parser took
/// `-1` for an option and said "Missing value for '--seed'"; the value is now checked as the value it is.
extension BadSettingsTests {
    func testNegativeFlagValuesAreCheckedAsValues() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        try expectError(train + ["--seed", "-1"], ["'-1'", "--seed"])
        try expectError(train + ["--learning-rate", "-0"], ["--learning-rate", "-0.0", "above 0"])
        try expectError(train + ["--learning-rate", "-inf"], ["--learning-rate"])
        for args in [train + ["--seed", "-1"], train + ["--learning-rate", "-0"]] {
            let (_, _, output) = try run(args)
            XCTAssertFalse(output.contains("Missing value"), output)
        }
        XCTAssertFalse(FileSystem.isDirectory(dir + "/out"), "nothing written")
    }
}
