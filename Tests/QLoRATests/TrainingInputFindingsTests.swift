import Foundation
import Llama
import ModelFiles
import Tensors
import Training
import XCTest

/// Training settings and files that an independent fuzzing pass of the command line found accepted without a word,
/// or turned into a failure that blamed something else (issue 12).
extension BadSettingsTests {
    /// `--target-modules ""` (or ",", or a recipe's `target_modules: []`) trained 0 parameters and exited 0 with an
    /// empty adapter; bench and plan took it too.
    func testAnEmptyTargetListIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        for value in ["", ","] {
            try expectError(train + ["--target-modules", value], ["--target-modules (recipe target_modules) names no "
                                                                  + "projection", "nothing would be trained"])
        }
        try write("target_modules: []\n", dir + "/r.yaml")
        try expectError(train + ["--config", dir + "/r.yaml"], ["names no projection"])
        try expectError(["plan", "--target-modules", ""], ["--target-modules names no projection"])
        // An adapter to start from that targets nothing of the model.
        let adapter = dir + "/adapter"
        try FileSystem.createDirectory(adapter)
        try SafeTensorsWriter.write([], metadata: ["format": "pt"], to: adapter + "/adapter_model.safetensors")
        try write(#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": []}"#,
                  adapter + "/adapter_config.json")
        try expectError(train + ["--init-adapter", adapter], ["--init-adapter \(adapter)", "nothing would be trained"])
        XCTAssertFalse(FileSystem.isFile(dir + "/out/adapter_model.safetensors"))
    }

    /// `--lora-alpha 1e30` trained to nonsense and exited 0; 1e308 (a scale of float32's infinity) diverged at once
    /// with advice to lower the learning rate. The scale alpha / r is bounded in training; an adapter file whose
    /// scale is infinite is refused where it is read.
    func testAnAbsurdLoRAScaleIsRefusedAsAlpha() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        try expectError(train + ["--lora-alpha", "1e30"],
                        ["--lora-alpha (recipe lora_alpha)", "over r 8 is a LoRA scale of", "at most 1024 is accepted"])
        try expectError(train + ["--lora-alpha", "1e308"], ["--lora-alpha (recipe lora_alpha)", "LoRA scale of"])
        try expectError(train + ["--lora-alpha", "1e6", "--lora-r", "4", "--use-rslora"], ["over √r 4"])
        let (status, _, output) = try run(train + ["--lora-alpha", "8192", "--lora-r", "8", "--batch-size", "1"])
        XCTAssertEqual(status, 0, "a scale of exactly 1024 trains: \(output)")
        let adapter = dir + "/adapter"
        try FileSystem.createDirectory(adapter)
        try write(#"{"peft_type": "LORA", "r": 8, "lora_alpha": 1e308, "target_modules": ["q_proj"]}"#,
                  adapter + "/adapter_config.json")
        XCTAssertThrowsError(try PEFTAdapter.readConfig(directory: adapter)) {
            XCTAssertEqual("\($0)", "\(adapter)/adapter_config.json: \"lora_alpha\" 1e+308 over r 8 gives a scale "
                           + "beyond float32's range")
        }
    }

    /// A batch larger than the data: every micro-batch is full (the trainer goes on into the next pass), so
    /// examples repeat within a step; the run says so instead of doing it silently.
    func testABatchLargerThanTheDataWarns() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        var (status, _, output) = try run(train + ["--batch-size", "3"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: --batch-size 3 is more than the 1 training example of \(data): each "
                                      + "batch is filled by going on into the next pass over the data"), output)
        (status, _, output) = try run(train + ["--batch-size", "1", "--overwrite-output-dir"])
        XCTAssertEqual(status, 0, output)
        XCTAssertFalse(output.contains("warning"), output)
    }

    /// A checkpoint holding NaN (its adapter or its optimizer moments) is refused naming the file and tensor: it
    /// used to be restored, diverge at the first step, and name that same checkpoint as the last good one. The
    /// resume's failure leaves metrics.jsonl as it was (it used to be cut back to the checkpoint's step first).
    func testADamagedCheckpointIsRefusedAndMetricsKept() throws {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/four.jsonl"
        try write((0..<4).map { #"{"input_ids": [1, 2, 3, \#($0 + 4)]}"# + "\n" }.joined(), data)
        let out = dir + "/out"
        let train = ["train", "--model", model, "--data", data, "--output-dir", out, "--batch-size", "2",
                     "--save-steps", "2", "--logging-steps", "1"]
        var (status, _, output) = try run(train + ["--max-steps", "4"])
        XCTAssertEqual(status, 0, output)
        let metrics = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)
        let checkpoint = out + "/checkpoint-2"
        func damage(_ file: String, _ tensor: String) throws {
            let path = checkpoint + "/" + file
            let st = try SafeTensorsFile(path: path)
            var tensors: [(name: String, tensor: Tensor)] = []
            for name in st.names {
                let t = try st.tensor(named: name)
                guard name == tensor else { tensors.append((name, t)); continue }
                var values = t.floats()
                values[0] = .nan
                tensors.append((name, Tensor(values, shape: t.shape)))
            }
            try SafeTensorsWriter.write(tensors, metadata: st.metadata, to: path)
        }
        let optimizer = try SafeTensorsFile(path: checkpoint + "/optimizer.safetensors")
        let moment = try XCTUnwrap(optimizer.names.first { $0.hasSuffix(".v") })
        try damage("optimizer.safetensors", moment)
        (status, _, output) = try run(train + ["--max-steps", "6", "--resume-from-checkpoint", checkpoint])
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("optimizer.safetensors: tensor '\(moment)': element 0 is nan: must be finite "
                                      + "and ≥ 0"), output)
        XCTAssertEqual(try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8), metrics,
                       "a failed resume leaves metrics.jsonl as it was")
        let adapter = try SafeTensorsFile(path: checkpoint + "/adapter_model.safetensors")
        let weight = try XCTUnwrap(adapter.names.first)
        try damage("adapter_model.safetensors", weight)
        (status, _, output) = try run(train + ["--max-steps", "6", "--resume-from-checkpoint", checkpoint])
        XCTAssertTrue(output.contains("adapter_model.safetensors: tensor '\(weight)': element 0 is nan: not finite"),
                      output)
        XCTAssertEqual(try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8), metrics)
    }

    /// bench-gemm checked none of its sizes: `--rows 0` timed empty products forever, `--rows=-1` trapped, 2^62 rows
    /// failed an allocation; `--seconds` and `--rounds` had no bound. bench-quantize's `--repeats 2^31` ran for days.
    func testBenchGEMMAndQuantizeCountsAreChecked() throws {
        try expectError(["bench-gemm", "--rows", "0"], ["--rows is 0: must be at least 1"])
        try expectError(["bench-gemm", "--rank=-1"], ["--rank is -1"])
        try expectError(["bench-gemm", "--rows", "4611686018427387904"], ["more than the 268435456 elements allowed"])
        try expectError(["bench-gemm", "--tokens", "3037000500"], ["attention", "elements allowed"])
        try expectError(["bench-gemm", "--seconds", "nan"], ["--seconds is nan"])
        try expectError(["bench-gemm", "--rounds", "2147483648"], ["--rounds is 2147483648: must be from 1 to 1000"])
        try expectError(["bench-quantize", "--repeats", "2147483648"], ["--repeats is 2147483648: must be from 1 to"])
        try expectError(["bench", "--steps", "9223372036854775807"], ["--steps is 9223372036854775807: must be from"])
    }
}

extension BadSettingsTests {
    /// A model that computes NaN on its first batch (a damaged weight file, adapters to start from that overflow)
    /// used to stop with "Try a lower --learning-rate": no learning rate had been applied yet. The message blames
    /// the model and its starting adapters instead.
    func testANonFiniteFirstLossBlamesTheModelNotTheLearningRate() throws {
        var config = TrainingConfig()
        config.batchSize = 2; config.maxSteps = 2
        let model = try tinyModel()
        let key = try XCTUnwrap(model.adapters.keys.sorted().first)
        let start = try XCTUnwrap(model.adapters[key])
        model.adapters[key] = LoRAWeights(a: start.a.map { _ in 3e38 }, b: start.b.map { _ in 3e38 })
        var t = Trainer(model: model, examples: try tinyExamples(), config: config)
        XCTAssertThrowsError(try t.train(Trainer.Callbacks())) {
            XCTAssertTrue("\($0)".contains("on the run's first batch, before any update: the model (or the adapters "
                                           + "it starts from) computes non-finite values"), "\($0)")
            XCTAssertFalse("\($0)".contains("learning-rate"), "\($0)")
        }
    }
}

extension BadSettingsTests {
    /// Errors name the file they come from: a chat template that fails while rendering (`generate --chat`) or
    /// does not parse, and a recipe value of the wrong type, used to be reported without it.
    func testTemplateAndRecipeValueErrorsNameTheirFile() throws {
        let (model, dir, data) = try tinyModelAndData()
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let config = folder + "/tokenizer_config.json"
        try write(#"{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{{ 1 / 0 }}"}"#, config)
        let generate = ["generate", "--model", folder, "--prompt", "hi", "--chat", "--max-new-tokens", "1"]
        try expectError(generate, ["--chat: \(config): chat template, line 1", "division by zero"])
        try write(#"{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{% if %}"}"#, config)
        try expectError(generate, ["the model has no chat template that parses: \(config): chat template, line 1"])
        // A recipe value of the wrong type names the recipe file.
        try write("bf16: [false]\n", dir + "/r.yaml")
        try expectError(["train", "--config", dir + "/r.yaml", "--model", model, "--data", data, "--output-dir",
                         dir + "/out"], [dir + "/r.yaml: recipe key \"bf16\": must be true or false"])
    }
}

extension BadSettingsTests {
    /// `generate --temperature inf` sampled uniformly from the vocabulary and exited 0; it is refused like nan.
    func testAnInfiniteTemperatureIsRefused() throws {
        let (model, _, _) = try tinyModelAndData()
        try expectError(["generate", "--model", model, "--prompt", "x", "--temperature", "inf"],
                        ["--temperature is inf: must be finite and at least 0"])
    }

    /// Each sampling flag of generate has its own message naming the flag, its value and the allowed range (one
    /// message used to list all three whichever was wrong).
    func testEachGenerateSamplingFlagNamesItsOwnRange() throws {
        let (model, _, _) = try tinyModelAndData()
        let base = ["generate", "--model", model, "--prompt", "x"]
        let cases: [([String], String, [String])] = [
            (["--max-new-tokens", "0"], "--max-new-tokens is 0: must be at least 1", ["--temperature", "--top-p"]),
            (["--temperature", "-0.5"], "--temperature is -0.5: must be finite and at least 0",
             ["--max-new-tokens", "--top-p"]),
            (["--temperature", "nan"], "--temperature is nan: must be finite and at least 0",
             ["--max-new-tokens", "--top-p"]),
            (["--top-p", "0"], "--top-p is 0.0: must be in (0, 1]", ["--max-new-tokens", "--temperature"]),
            (["--top-p", "1.5"], "--top-p is 1.5: must be in (0, 1]", ["--max-new-tokens", "--temperature"]),
        ]
        for (flags, message, others) in cases {
            let (status, crashed, output) = try run(base + flags)
            XCTAssertFalse(crashed, output)
            XCTAssertNotEqual(status, 0, output)
            XCTAssertTrue(output.contains(message), "\(flags): \(output)")
            for other in others { XCTAssertFalse(output.contains(other), "\(flags) names \(other): \(output)") }
        }
    }
}

extension BadSettingsTests {
    /// A model missing a tensor (a shard index without one entry, a file without one projection) used to be
    /// quantized into a checkpoint without it, exit 0, and fail only when that checkpoint was loaded.
    func testQuantizeRefusesAModelMissingATensor() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        let dir = makeTemporaryDirectory(self)
        let model = dir + "/model"
        try FileSystem.createDirectory(model)
        try FileSystem.copyFile(from: golden + "/config.json", to: model + "/config.json")
        let file = try SafeTensorsFile(path: golden + "/model.safetensors")
        let dropped = "model.layers.1.self_attn.q_proj.weight"
        try SafeTensorsWriter.write(try file.names.filter { $0 != dropped }.map { ($0, try file.tensor(named: $0)) },
                                    metadata: ["format": "pt"], to: model + "/model.safetensors")
        try expectError(["quantize", "--model", model, "--output", dir + "/out"], ["no tensor named '\(dropped)'"])
        XCTAssertFalse(FileSystem.isDirectory(dir + "/out"), "nothing written")
    }
}

extension BadSettingsTests {
    /// A worker's environment is checked before its numbers are used: QLORA_WORLD_SIZE=9223372036854775807 trapped
    /// on the first product of sizes (rank × batch), a rank past the world size went on to look for a GPU.
    func testAWorkerEnvironmentOutOfRangeIsAnError() throws {
        let (model, dir, data) = try tinyModelAndData()
        for (rank, world) in [("0", "9223372036854775807"), ("5", "2"), ("-1", "2"), ("0", "0")] {
            setenv("QLORA_RANK", rank, 1); setenv("QLORA_WORLD_SIZE", world, 1)
            setenv("QLORA_RENDEZVOUS", dir + "/rendezvous", 1)
            defer { unsetenv("QLORA_RANK"); unsetenv("QLORA_WORLD_SIZE"); unsetenv("QLORA_RENDEZVOUS") }
            try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps",
                             "1"], ["this worker's environment gives rank \(rank) of world size \(world)"])
        }
    }
}

extension BadSettingsTests {
    /// A checkpoint whose optimizer moments were shorter than the adapter matrix they update (found by
    /// scripts/fuzz-cli.py): the first resumed update read past their end, a trap in the 32-bit update and unchecked
    /// memory in the 8-bit one. Each matrix's moments are checked against it when resuming: one value per weight,
    /// stored as the optimizer's update reads them, and one block scale per 256 values for 8-bit codes.
    func testResumedOptimizerMomentsMustFitTheirAdapterMatrix() throws {
        let path = makeTemporaryDirectory(self) + "/optimizer.safetensors"
        // A: 8 values (32-bit moments under every optimizer); B: 4096 values (8-bit codes under an 8-bit one).
        let adapters = ["0.q_proj": LoRAWeights(a: [Float](repeating: 0, count: 8),
                                                b: [Float](repeating: 0, count: 4096))]
        func floats(_ n: Int) -> Tensor { Tensor([Float](repeating: 0, count: n), shape: [n]) }
        func codes(_ n: Int) -> Tensor { Tensor(copying: [UInt8](repeating: 0, count: n), shape: [n], dtype: .u8) }
        func moments(_ name: String, _ m: Tensor, _ v: Tensor, scales: (Int, Int)? = nil) -> [(String, Tensor)] {
            [(name + ".m", m), (name + ".v", v)]
                + (scales.map { [(name + ".absmax_m", floats($0.0)), (name + ".absmax_v", floats($0.1))] } ?? [])
        }
        func check(_ name: String, _ tensors: [(String, Tensor)], _ kind: OptimizerKind) throws {
            try SafeTensorsWriter.write(tensors.map { (name: $0.0, tensor: $0.1) }, metadata: [:], to: path)
            let file = try SafeTensorsFile(path: path)
            try Checkpoint.checkMoments(name, m: try file.tensor(named: name + ".m"),
                                        v: try file.tensor(named: name + ".v"), file: file, kind: kind,
                                        adapters: adapters)
        }
        let a = "0.q_proj.A", b = "0.q_proj.B"
        XCTAssertNoThrow(try check(a, moments(a, floats(8), floats(8)), .adamw_8bit))
        XCTAssertNoThrow(try check(b, moments(b, codes(4096), codes(4096), scales: (16, 16)), .paged_adamw_8bit))
        XCTAssertNoThrow(try check(b, moments(b, floats(4096), floats(4096)), .adamw))
        let bad: [(String, [(String, Tensor)], OptimizerKind, String)] = [
            (a, moments(a, floats(4), floats(4)), .adamw, "moments hold 4 and 4 values, expected 8 (one per weight"),
            (a, moments(a, floats(8), floats(9)), .paged_adamw_32bit, "moments hold 8 and 9 values, expected 8"),
            (b, moments(b, codes(2048), codes(2048), scales: (8, 8)), .adamw_8bit,
             "moments hold 2048 and 2048 values, expected 4096"),
            (b, moments(b, codes(4096), codes(4096), scales: (15, 16)), .adamw_8bit,
             "absmax_m holds 15 values, expected 16 (one per block of 256)"),
            (b, moments(b, floats(4096), floats(4096)), .adamw_8bit,
             "moments are F32 and F32, expected 8-bit codes (U8) for a 4096-value matrix under adamw_8bit"),
            (a, moments(a, codes(8), codes(8)), .adamw, "moments are U8 and U8, expected floats"),
            ("0.k_proj.A", moments("0.k_proj.A", floats(8), floats(8)), .adamw,
             "optimizer state for no adapter matrix of this run"),
        ]
        for (name, tensors, kind, words) in bad {
            XCTAssertThrowsError(try check(name, tensors, kind), words) { error in
                XCTAssertTrue("\(error)".contains("\(path): tensor '\(name)': " + words), "\(error)")
            }
        }
    }
}

/// What `scripts/fuzz-structured.py` (settings that pass one by one, and file-system setups, combined) found.
extension BadSettingsTests {
    /// `--padding-free` puts a micro-batch's examples into one row: two of 200 tokens made a row of 400 on a model
    /// of 256 positions, and the step's precondition on the row's length trapped. Each document's positions are
    /// what the context bounds (they restart at every example), so the run trains.
    func testAPaddingFreeRowLongerThanTheContextTrains() throws {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/long.jsonl"
        try write((0..<4).map { i in
            "{\"input_ids\": [\((0..<200).map { String(3 + (7 * i + $0) % 300) }.joined(separator: ", "))]}\n"
        }.joined(), data)
        for extra in [[], ["--gradient-checkpointing"]] {
            let (status, crashed, output) = try run(["train", "--model", model, "--data", data, "--output-dir",
                                                     dir + "/out", "--max-steps", "1", "--batch-size", "2",
                                                     "--max-seq-length", "256", "--padding-free", "--lora-r", "2",
                                                     "--overwrite-output-dir"] + extra)
            XCTAssertFalse(crashed, output)
            XCTAssertEqual(status, 0, output)
        }
    }

    /// A symbolic link in an existing output folder, where the run writes a file, used to be followed: a link named
    /// adapter_config.json pointing at the model's config.json replaced the model's config with the adapter's.
    /// Such a link is refused, and what it points to is left as it was.
    func testTrainRefusesSymbolicLinksWhereItWrites() throws {
        let (_, dir, data) = try tinyModelAndData()
        let model = dir + "/model"
        try FileManager.default.copyItem(atPath: try Shared.requireGolden() + "/tiny-llama", toPath: model)
        let config = try String(contentsOfFile: model + "/config.json", encoding: .utf8)
        for name in ["adapter_config.json", "metrics.jsonl"] {
            let out = dir + "/out-" + name
            try FileSystem.createDirectory(out)
            try FileManager.default.createSymbolicLink(atPath: out + "/" + name,
                                                       withDestinationPath: model + "/config.json")
            try expectError(["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1",
                             "--overwrite-output-dir"],
                            ["--output-dir \(out)", "\(out)/\(name) is a symbolic link"])
            XCTAssertEqual(try String(contentsOfFile: model + "/config.json", encoding: .utf8), config)
        }
    }

    /// Resuming from an earlier checkpoint with `--save-total-limit 1`: the abandoned run's later checkpoint-4 won
    /// the rotation by step number and the resumed run's new checkpoint-3 was deleted as soon as it was written
    /// (`--resume-from-checkpoint latest` would then continue the abandoned run). The checkpoint just written stays.
    func testResumingKeepsTheCheckpointJustWrittenUnderASaveLimit() throws {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/eight.jsonl"
        try write((0..<8).map { i in
            "{\"input_ids\": [1, \((0..<12).map { String((7 * i + $0) % 380 + 3) }.joined(separator: ", "))]}\n"
        }.joined(), data)
        let out = dir + "/run"
        let train = ["train", "--model", model, "--data", data, "--max-seq-length", "16", "--batch-size", "2",
                     "--lora-r", "2", "--output-dir", out, "--save-steps", "1"]
        var (status, _, output) = try run(train + ["--max-steps", "4"])
        XCTAssertEqual(status, 0, output)
        (status, _, output) = try run(train + ["--max-steps", "3", "--save-total-limit", "1",
                                               "--resume-from-checkpoint", out + "/checkpoint-2"])
        XCTAssertEqual(status, 0, output)
        let left = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix("checkpoint-") }
        XCTAssertEqual(left, ["checkpoint-3"], output)
    }
}
