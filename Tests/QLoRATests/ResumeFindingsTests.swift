import Foundation
import ModelFiles
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Resuming with changed settings, checkpoints edited by hand, and launchers' environments half set (issue 12): each
/// resumes as the checkpoint's run would have gone on, or is refused naming the setting and both values, and
/// nothing written before is lost.
extension BadSettingsTests {
    /// Twelve examples of 5 to 12 tokens in `dir/name`.
    private func examples(_ dir: String, _ name: String, offset: Int = 0) throws -> String {
        let lines = (0..<12).map { i in
            "{\"input_ids\": [" + (0..<(5 + (i + offset) % 8)).map { String(3 + (i * 37 + $0 * 11 + offset) % 380) }
                .joined(separator: ", ") + "]}"
        }
        try write(lines.joined(separator: "\n") + "\n", dir + "/" + name)
        return dir + "/" + name
    }

    /// A run of 4 steps of batch 2 saved every 2 steps, in `dir/run`: (the train arguments without --max-steps, the
    /// run folder, the data folder).
    private func runSavedEveryTwoSteps() throws -> (train: [String], runDir: String, dir: String) {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let data = try examples(dir, "data.jsonl")
        let runDir = dir + "/run"
        let train = ["train", "--model", golden + "/tiny-llama", "--data", data, "--output-dir", runDir,
                     "--batch-size", "2", "--save-steps", "2", "--logging-steps", "1", "--lora-r", "4"]
        let (status, _, output) = try run(train + ["--max-steps", "4"])
        XCTAssertEqual(status, 0, output)
        return (train, runDir, dir)
    }

    /// Resuming from a checkpoint beyond the run's last step (--max-steps below its step, or a global_step edited to
    /// 10^18) trained nothing and saved the checkpoint's adapter as the final one with exit status 0: resuming
    /// checkpoint-2 of a 4-step run with --max-steps 1 replaced the step-4 adapter and dropped the metrics of steps
    /// 3 and 4. Refused now, naming the step and --max-steps; nothing is touched.
    func testResumingBeyondTheRunsLastStepIsRefusedAndLosesNothing() throws {
        let (train, runDir, _) = try runSavedEveryTwoSteps()
        let adapter = try FileSystem.readBytes(runDir + "/adapter_model.safetensors")
        let metrics = try FileSystem.readBytes(runDir + "/metrics.jsonl")
        try expectError(train + ["--max-steps", "1", "--resume-from-checkpoint", runDir + "/checkpoint-2"],
                        ["checkpoint-2", "global_step is 2, beyond this run's 1 steps (--max-steps"])
        let state = runDir + "/checkpoint-4/trainer_state.json"
        let text = String(decoding: try FileSystem.readBytes(state), as: UTF8.self)
        try write(text.replacingOccurrences(of: "\"global_step\": 4,", with: "\"global_step\": 1000000000000000000,"),
                  state)
        try expectError(train + ["--max-steps", "6", "--resume-from-checkpoint", "latest"],
                        ["global_step is 1000000000000000000, beyond this run's 6 steps"])
        XCTAssertEqual(try FileSystem.readBytes(runDir + "/adapter_model.safetensors"), adapter)
        XCTAssertEqual(try FileSystem.readBytes(runDir + "/metrics.jsonl"), metrics)
    }

    /// A trainer_state.json field missing or of the wrong type was "missing or malformed fields" (which of six?); an
    /// early-stopping counter or best metric of the wrong type was silently taken for none. Each is named now.
    func testEachMalformedTrainerStateFieldIsNamed() throws {
        let (train, runDir, _) = try runSavedEveryTwoSteps()
        let state = runDir + "/checkpoint-4/trainer_state.json"
        let original = try JSONValue(parsing: FileSystem.readBytes(state))
        let resume = train + ["--max-steps", "6", "--resume-from-checkpoint", "latest"]
        let cases: [(String, JSONValue?, String)] = [
            ("global_step", .string("4"), "global_step is \"4\": expected an integer"),
            ("rng_state", nil, "rng_state is missing (expected a decimal 64-bit unsigned integer in a string)"),
            ("epoch", .double(2.5), "epoch is 2.5: expected an integer"),
            ("data_order", .array([.int(0), .string("x")]), "data_order is [0,\"x\"]: expected an array of integers"),
            ("early_stopping_patience_counter", .double(1e19), "early_stopping_patience_counter is 1e+19"),
            ("best_metric", .string("low"), "best_metric is \"low\": expected a number"),
        ]
        for (key, value, expected) in cases {
            var edited = original
            if let value { edited.set(key, value) } else {
                edited = .object((original.objectValue ?? []).filter { $0.0 != key })
            }
            try write(edited.pythonText(indent: 2), state)
            try expectError(resume, [state.replacingOccurrences(of: "/trainer_state.json", with: ""), expected])
        }
    }

    /// Resuming with other training examples (another --data file of as many examples, another --max-seq-length)
    /// or another batch per step went on silently on the saved data order and position; both are refused naming
    /// the setting. Another learning rate (the advice after a divergence) resumes, and says so; the same settings
    /// say nothing.
    func testResumingWithOtherDataOrBatchIsRefusedAndOtherRatesAreSaid() throws {
        let (train, runDir, dir) = try runSavedEveryTwoSteps()
        let metrics = try FileSystem.readBytes(runDir + "/metrics.jsonl")
        let resume = train + ["--max-steps", "6", "--resume-from-checkpoint", "latest"]
        let other = try examples(dir, "other.jsonl", offset: 3)
        try expectError(resume + ["--data", other], ["checkpoint-4", "train_data_fingerprint: this run's 12 training "
                                                     + "examples are not those of the run that saved it"])
        try expectError(resume + ["--max-seq-length", "6"], ["train_data_fingerprint"])
        try expectError(resume + ["--batch-size", "3"],
                        ["train_batch_size is 2, this run's --batch-size (× devices) gives 3"])
        try expectError(resume + ["--gradient-accumulation-steps", "2"],
                        ["gradient_accumulation_steps is 1, this run's --gradient-accumulation-steps gives 2"])
        XCTAssertEqual(try FileSystem.readBytes(runDir + "/metrics.jsonl"), metrics)

        let (status, _, output) = try run(resume + ["--learning-rate", "1e-3", "--seed", "7"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: --learning-rate: learning_rate is 0.001 in this run, 0.0002 in the "
                                      + "run that saved \(runDir)/checkpoint-4: the resumed run takes the new "
                                      + "value from step 5 on"), output)
        XCTAssertTrue(output.contains("warning: --seed 7 has no effect on a run resumed from"), output)
        let (again, _, quiet) = try run(train + ["--max-steps", "8", "--resume-from-checkpoint", "latest",
                                                 "--learning-rate", "1e-3", "--seed", "7"])
        XCTAssertEqual(again, 0, quiet)
        XCTAssertFalse(quiet.contains("warning"), quiet)
    }

    /// A cluster launcher's variables half set (WORLD_SIZE=2 without MASTER_ADDR, a RANK that is no number, our own
    /// QLORA_RANK alone) made a process train alone as if no launcher had started it (under torchrun every rank
    /// trained the whole run); a MASTER_PORT of 99999 was taken for a rendezvous file named tcp:HOST:99999. Each is
    /// refused naming the variables; WORLD_SIZE=1 still trains in one process.
    func testALaunchersHalfSetEnvironmentIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--max-steps", "1"]
        let cases: [([String: String], [String])] = [
            (["RANK": "1", "WORLD_SIZE": "2"], ["RANK='1' WORLD_SIZE='2' MASTER_ADDR=(unset) MASTER_PORT=(unset)",
                                                 "needs RANK (a whole number), MASTER_ADDR"]),
            (["RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"], ["RANK='x'"]),
            (["RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"],
             ["MASTER_PORT='99999'", "a port from 1 to 65535"]),
            (["WORLD_SIZE": "two"], ["WORLD_SIZE='two'"]),
            (["QLORA_RANK": "0"], ["QLORA_RANK='0' QLORA_WORLD_SIZE=(unset) QLORA_RENDEZVOUS=(unset)"]),
        ]
        for (environment, expected) in cases {
            let (status, crashed, output) = try run(train, environment: environment)
            XCTAssertNotEqual(status, 0, "\(environment): \(output)")
            XCTAssertFalse(crashed, output)
            for e in expected { XCTAssertTrue(output.contains(e), "\(environment): expected \"\(e)\" in: \(output)") }
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/adapter_model.safetensors"), output)
        }
        let (status, _, output) = try run(train, environment: ["WORLD_SIZE": "1", "RANK": "0"])
        XCTAssertEqual(status, 0, output)
        // Without a GPU a complete worker's environment fails at once: the error says it is a worker's.
        if dlopen("libcuda.so.1", RTLD_NOW) == nil {
            let (s, _, o) = try run(train + ["--device", "cpu", "--overwrite-output-dir"], environment: [
                "RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"])
            XCTAssertNotEqual(s, 0, o)
            XCTAssertTrue(o.contains("rank 0 of 2 (a data-parallel worker, from QLORA_RANK / RANK"), o)
        }
    }

    /// QLORA_GEMM set to something other than ours or cblas (a typo, `OURS`) was ignored without a word.
    func testAnUnknownQLoRAGEMMIsNamed() throws {
        let (model, _, data) = try tinyModelAndData()
        let (status, _, output) = try run(["eval", "--model", model, "--data", data],
                                          environment: ["QLORA_GEMM": "OURS"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("warning: QLORA_GEMM=OURS is not one of ours, cblas; ignored"), output)
        let (_, _, quiet) = try run(["eval", "--model", model, "--data", data], environment: ["QLORA_GEMM": "ours"])
        XCTAssertFalse(quiet.contains("QLORA_GEMM"), quiet)
    }

    /// Resuming with --load-best-model-at-end a checkpoint whose run evaluated without it (a best validation loss
    /// recorded, no OUTPUT/best kept) trained every remaining step, then failed on the missing best adapter and wrote
    /// no final adapter. Refused before training now.
    func testResumingWithLoadBestModelAtEndNeedsTheBestAdapter() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let data = try examples(dir, "data.jsonl"), eval = try examples(dir, "eval.jsonl", offset: 5)
        let runDir = dir + "/run"
        let train = ["train", "--model", golden + "/tiny-llama", "--data", data, "--output-dir", runDir, "--batch-size",
                     "2", "--save-steps", "2", "--eval-data", eval, "--eval-steps", "1", "--lora-r", "4"]
        let (status, _, output) = try run(train + ["--max-steps", "4"])
        XCTAssertEqual(status, 0, output)
        let adapter = try FileSystem.readBytes(runDir + "/adapter_model.safetensors")
        try expectError(train + ["--max-steps", "6", "--resume-from-checkpoint", "latest",
                                 "--load-best-model-at-end"],
                        ["--load-best-model-at-end", "records the best validation loss",
                         "\(runDir)/best/adapter_model.safetensors is missing"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: runDir + "/checkpoint-6"))
        XCTAssertEqual(try FileSystem.readBytes(runDir + "/adapter_model.safetensors"), adapter)
    }

    /// An optimizer file copied in from another run (the same shapes and step counts) was resumed from without a
    /// word, its moments those of other gradients. Each checkpoint's two files carry one id now.
    func testAnOptimizerFileOfAnotherRunIsRefused() throws {
        let (train, runDir, dir) = try runSavedEveryTwoSteps()
        let other = try examples(dir, "other.jsonl", offset: 3)
        let second = dir + "/second"
        let (status, _, output) = try run(train.map { $0 == runDir ? second : $0 == dir + "/data.jsonl" ? other : $0 }
                                          + ["--max-steps", "2"])
        XCTAssertEqual(status, 0, output)
        let target = runDir + "/checkpoint-2/optimizer.safetensors"
        try FileManager.default.removeItem(atPath: target)
        try FileManager.default.copyItem(atPath: second + "/checkpoint-2/optimizer.safetensors", toPath: target)
        try expectError(train + ["--max-steps", "4", "--resume-from-checkpoint", runDir + "/checkpoint-2"],
                        [target, "belongs to another checkpoint (checkpoint_id"])
    }

    /// An epoch or early-stopping counter of Int.max in trainer_state.json passed the checks (≥ 0) and overflowed
    /// (a trap, signal 4) at the next pass over the data or the next evaluation without an improvement.
    func testAnEpochOrCounterOfIntMaxIsRefused() throws {
        let (train, runDir, dir) = try runSavedEveryTwoSteps()
        let eval = try examples(dir, "eval.jsonl", offset: 5)
        let state = runDir + "/checkpoint-4/trainer_state.json"
        let original = try JSONValue(parsing: FileSystem.readBytes(state))
        let resume = train + ["--max-steps", "6", "--resume-from-checkpoint", "latest"]
        var edited = original
        edited.set("epoch", .int(Int.max)); edited.set("data_position", .int(12))
        try write(edited.pythonText(indent: 2), state)
        try expectError(resume, ["epoch is 9223372036854775807: must be in 0 ... 9007199254740992"])
        edited = original
        edited.set("early_stopping_patience_counter", .int(Int.max))
        edited.set("best_metric", .double(-1000)); edited.set("best_global_step", .int(1))
        try write(edited.pythonText(indent: 2), state)
        try expectError(resume + ["--eval-data", eval, "--eval-steps", "1", "--early-stopping-patience", "100"],
                        ["early_stopping_patience_counter is 9223372036854775807: must be in 0 ... global_step 4"])
    }

    /// --resume-from-checkpoint "" read /trainer_state.json; the run's own folder, a file or a missing path gave
    /// "PATH: tensor 'trainer_state.json': PATH/trainer_state.json: cannot open", naming neither the flag nor the
    /// checkpoints there. Each names the flag now; nothing of the run is touched.
    func testAResumePathThatIsNoCheckpointNamesTheFlag() throws {
        let (train, runDir, dir) = try runSavedEveryTwoSteps()
        let metrics = try FileSystem.readBytes(runDir + "/metrics.jsonl")
        let resume = train + ["--max-steps", "6", "--resume-from-checkpoint"]
        try expectError(resume + [""], ["--resume-from-checkpoint (recipe resume_from_checkpoint) is empty"])
        try expectError(resume + [runDir], ["--resume-from-checkpoint (recipe resume_from_checkpoint) \(runDir) is a "
                                            + "run's folder, not one of its checkpoints: give \(runDir)/checkpoint-4 "
                                            + "(or another of its 2 checkpoints), or latest"])
        try expectError(resume + [dir + "/missing"], ["\(dir)/missing: no such folder"])
        try expectError(resume + [runDir + "/metrics.jsonl"], ["\(runDir)/metrics.jsonl: not a folder"])
        XCTAssertEqual(try FileSystem.readBytes(runDir + "/metrics.jsonl"), metrics)
    }

    /// --rendezvous file:PATH naming a file that is there: rank 0 replaced it with NCCL's id and deleted it at the
    /// end (a user's file lost). Node 0's launcher refuses it now, before any GPU is looked for.
    func testARendezvousFileThatExistsIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let mine = dir + "/notes.txt"
        try write("keep me\n", mine)
        let train = ["train", "--model", model, "--data", data, "--output-dir", dir + "/out", "--devices", "1"]
        try expectError(train + ["--rendezvous", "file:" + mine],
                        ["--rendezvous file:\(mine): \(mine) already exists", "give a fresh path"])
        try expectError(train + ["--rendezvous", "file:" + dir], ["\(dir) already exists"])
        try expectError(train + ["--rendezvous", "file:"], ["--rendezvous file: names no path"])
        XCTAssertEqual(String(decoding: try FileSystem.readBytes(mine), as: UTF8.self), "keep me\n")
    }
}
