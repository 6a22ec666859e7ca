import Foundation
import ModelFiles
import XCTest

/// What `scripts/fuzz-interrupts.py` (runs stopped at random moments and at each file-system call, damaged
/// checkpoints, chat data, templates, recipes, launchers) found, each now kept whole or refused clearly.
extension BadSettingsTests {
    /// A run of 4 steps saved at every step, in `dir/run`, over tiny-llama.
    private func savedRun() throws -> (model: String, dir: String, data: String, run: String) {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/two.jsonl"
        try write(#"{"input_ids": [1, 5, 9, 14, 22, 31, 40, 2]}"# + "\n"
                  + #"{"input_ids": [1, 7, 3, 11, 19, 27, 35, 2]}"# + "\n", data)
        let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", dir + "/run",
                                           "--max-steps", "4", "--save-steps", "1"])
        XCTAssertEqual(status, 0, output)
        return (model, dir, data, dir + "/run")
    }

    /// A resumed run re-saving checkpoint-N over the abandoned run's deleted the old folder file by file before
    /// renaming the new one (checkpoint-N.tmp-PID) into place; stopped in between, the next `latest` resume
    /// deleted the complete temporary as stale and failed on the half-deleted checkpoint: both copies lost. The old
    /// folder is now moved aside in one rename (checkpoint-N.old-PID) and put back when the save did not finish.
    func testACheckpointReplacedByAnInterruptedSaveIsRestored() throws {
        let (model, _, data, run) = try savedRun()
        let before = try FileSystem.readBytes(run + "/checkpoint-4/adapter_model.safetensors")
        // Stopped between the two renames: the old checkpoint moved aside, the new one still a temporary (of a
        // process that is gone: no pid is ever this large).
        let gone = Int32.max
        XCTAssertEqual(rename(run + "/checkpoint-4", run + "/checkpoint-4.old-\(gone)"), 0)
        try FileManager.default.copyItem(atPath: run + "/checkpoint-4.old-\(gone)",
                                         toPath: run + "/checkpoint-4.tmp-\(gone)")
        var (status, _, output) = try self.run(["train", "--model", model, "--data", data, "--output-dir", run,
                                                "--max-steps", "4", "--save-steps", "1",
                                                "--resume-from-checkpoint", "latest"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("restored \(run)/checkpoint-4"), output)
        XCTAssertTrue(output.contains("resuming from \(run)/checkpoint-4 at step 4"), output)
        XCTAssertEqual(try FileSystem.readBytes(run + "/checkpoint-4/adapter_model.safetensors"), before)
        // Stopped after the new one took its place: the moved-aside old one is simply removed.
        try FileManager.default.copyItem(atPath: run + "/checkpoint-4", toPath: run + "/checkpoint-4.old-\(gone)")
        (status, _, output) = try self.run(["train", "--model", model, "--data", data, "--output-dir", run,
                                            "--max-steps", "5", "--save-steps", "1",
                                            "--resume-from-checkpoint", "latest"])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("resuming from \(run)/checkpoint-4 at step 4"), output)
        let left = try FileManager.default.contentsOfDirectory(atPath: run).filter { $0.contains(".old-") ||
            $0.contains(".tmp-") }
        XCTAssertEqual(left, [])
    }

    /// `--lora-r 65536 --target-modules all` on tiny-llama: 445 M adapter weights and r floats a token in each of
    /// the 14 projections, which `HostMemory.checkStepFits` left out: `--batch-size 256` under `ulimit -v 8000000`
    /// failed an allocation ("Fatal error", exit 134) after the check had passed. The adapters are counted now.
    func testTheHostMemoryCheckCountsTheAdapters() throws {
        let (model, dir, _) = try tinyModelAndData()
        try expectError(["train", "--model", model, "--data", dir + "/data.jsonl", "--output-dir", dir + "/run",
                         "--max-steps", "1", "--lora-r", "65536", "--target-modules", "all",
                         "--batch-size", "1048576"],
                        ["LoRA r 65536 adapters and their gradients", "this process may allocate"])
    }

    /// `bench-quantize --repeats 1000` ran for about 20 minutes (each repeat quantizes the matrix four times and
    /// the SmolLM2 weights once): the total work is bounded, not only the count.
    func testBenchQuantizeBoundsItsTotalWork() throws {
        let started = Date()
        try expectError(["bench-quantize", "--repeats", "1000"], ["--repeats 1000 over a 4096 × 11008 matrix",
                                                                  "elements quantized, more than"])
        try expectError(["bench-quantize", "--repeats", "1000", "--rows", "1", "--cols", "1"],
                        ["--repeats 1000 over a 1 × 1 matrix"])
        XCTAssertLessThan(Date().timeIntervalSince(started), 30)
    }

    /// `quantize` wrote model.safetensors, config.json and the copied files one by one into --output: stopped half
    /// way (SIGKILL at its 2nd rename, injected by strace) it left model.safetensors without config.json, which the
    /// rerun refused ("already holds a model") and a later command took for a model. `merge` (and quantize, now)
    /// wrote a temporary folder beside --output, but inside it for a name ending in "/", then moved the files in
    /// one by one: the same partial model. Both now rename one complete folder into place.
    func testAQuantizeOrMergeStoppedHalfWayLeavesNoPartialModel() throws {
        let strace = ["/usr/bin/strace", "/bin/strace"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let strace else { throw XCTSkip("needs strace to stop the run at a given system call") }
        let model = try Shared.requireGolden() + "/tiny-llama", adapter = try Shared.requireGolden() + "/tiny-adapter"
        let dir = makeTemporaryDirectory(self)
        let commands: [(String) -> [String]] = [{ ["quantize", "--model", model, "--output", $0] },
                                                { ["merge", "--model", model, "--adapter", adapter, "--output", $0] }]
        var whole: [String: [String]] = [:]
        for (i, command) in commands.enumerated() {
            for (j, out) in [dir + "/q\(i)", dir + "/s\(i)/"].enumerated() {
                for when in [2, 4] {
                    let p = Process()
                    p.executableURL = URL(fileURLWithPath: strace)
                    p.arguments = ["-f", "-o", "/dev/null", "-e", "trace=rename", "-e",
                                   "inject=rename:signal=KILL:when=\(when)", try binary()] + command(out)
                    p.standardOutput = FileHandle.nullDevice
                    p.standardError = FileHandle.nullDevice
                    try p.run()
                    p.waitUntilExit()
                    let held = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
                    XCTAssertEqual(held, [], "\(command(out)) stopped at rename \(when)")
                }
                let (status, _, output) = try run(command(out))
                XCTAssertEqual(status, 0, output)
                let files = try FileManager.default.contentsOfDirectory(atPath: out).sorted()
                XCTAssertTrue(files.contains("config.json") && files.contains("model.safetensors"), "\(files)")
                if j == 0 { whole[command("")[0]] = files } else { XCTAssertEqual(files, whole[command("")[0]]) }
            }
            // An empty folder is written as before.
            let empty = dir + "/e\(i)"
            try FileSystem.createDirectory(empty)
            let (status, _, output) = try run(command(empty))
            XCTAssertEqual(status, 0, output)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: empty).sorted(), whole[command("")[0]])
        }
    }

    /// `--logging-dir OUT/checkpoint-1`: the save of step 1 replaced that folder and the TensorBoard events in it,
    /// while the run ended with success and `tensorboard --logdir OUT/checkpoint-1` (which held none). Refused.
    func testALoggingDirInsideACheckpointIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let out = dir + "/run"
        try expectError(["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "2",
                         "--save-steps", "1", "--report-to", "tensorboard", "--logging-dir", out + "/checkpoint-1"],
                        ["--logging-dir (recipe logging_dir) \(out)/checkpoint-1 is inside \(out)/checkpoint-1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/checkpoint-1"))
        // Beside the checkpoints it is allowed, and its events are kept.
        let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", out,
                                           "--max-steps", "2", "--save-steps", "1", "--logging-steps", "1",
                                           "--report-to", "tensorboard", "--logging-dir", out + "/logs"])
        XCTAssertEqual(status, 0, output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/logs").count, 1)
    }

    /// A checkpoint save failing on a full disk left its partial checkpoint-N.tmp-PID behind, holding the space until
    /// a later run removed it; it is removed with the error. Needs root, for a 400 KB tmpfs.
    func testACheckpointSaveThatFailsOnAFullDiskLeavesNoTemporary() throws {
        let (model, dir, _) = try tinyModelAndData()
        let small = dir + "/small"
        try FileSystem.createDirectory(small)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=400k", "tmpfs", small]
        mount.standardError = FileHandle.nullDevice
        guard getuid() == 0, (try? mount.run()) != nil, ({ mount.waitUntilExit(); return mount.terminationStatus })()
                == 0 else { throw XCTSkip("needs root to mount a small tmpfs") }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = [small]
            try? umount.run()
            umount.waitUntilExit()
        }
        try write(#"{"input_ids": [1, 5, 9, 14, 22, 31, 40, 2]}"# + "\n", dir + "/d.jsonl")
        try expectError(["train", "--model", model, "--data", dir + "/d.jsonl", "--output-dir", small + "/run",
                         "--max-steps", "40", "--save-steps", "1"], ["no space left on the device"])
        let left = try FileManager.default.contentsOfDirectory(atPath: small + "/run").filter { $0.contains(".tmp-") }
        XCTAssertEqual(left, [])
    }
}
