import Foundation
import Llama
import ModelFiles
import XCTest

/// Findings of runs as an unprivileged user, of commands run at once on the same folders, and of special files in
/// path arguments (issue 12): each now a clear error, or the user's files kept.
extension BadSettingsTests {
    /// A run of 2 steps, each logged and saved, in `dir/run`; returns the model, the data and the run folder.
    private func loggedRun() throws -> (model: String, data: String, run: String) {
        let (model, dir, _) = try tinyModelAndData()
        let data = dir + "/two.jsonl"
        try write(#"{"input_ids": [1, 5, 9, 14, 22, 31, 40, 2]}"# + "\n"
                  + #"{"input_ids": [1, 7, 3, 11, 19, 27, 35, 2]}"# + "\n", data)
        let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", dir + "/run",
                                           "--max-steps", "2", "--save-steps", "1", "--logging-steps", "1"])
        XCTAssertEqual(status, 0, output)
        return (model, data, dir + "/run")
    }

    private func resumeArguments(_ model: String, _ data: String, _ run: String) -> [String] {
        ["train", "--model", model, "--data", data, "--output-dir", run, "--max-steps", "3", "--save-steps", "1",
         "--logging-steps", "1", "--resume-from-checkpoint", run + "/checkpoint-1"]
    }

    /// A resume read the run's metrics.jsonl with `try?`: a file it could not read (no read permission for the
    /// user, in a folder the user may write) or could not decode as UTF-8 (one torn line) counted as empty, and the
    /// resumed run then replaced it, losing every line logged before the checkpoint. An unreadable file is now
    /// refused before any step, and bad bytes spoil only their own line.
    func testAResumeKeepsTheMetricsItCannotReadOrDecode() throws {
        let (model, data, run) = try loggedRun()
        let metrics = run + "/metrics.jsonl"
        let logged = try String(contentsOfFile: metrics, encoding: .utf8)
        XCTAssertTrue(logged.contains(#""step": 1,"#), logged)
        try (Array(logged.utf8) + [0xFF, 0xFE] + Array(" torn\n".utf8)).withUnsafeBytes {
            try Data($0).write(to: URL(fileURLWithPath: metrics))
        }
        var (status, _, output) = try self.run(resumeArguments(model, data, run))
        XCTAssertEqual(status, 0, output)
        let kept = String(decoding: try FileSystem.readBytes(metrics), as: UTF8.self)
        for step in 1...3 { XCTAssertTrue(kept.contains(#""step": \#(step),"#), "step \(step) in: \(kept)") }

        // Unreadable by the user who resumes: as root, the run is handed to `nobody` and resumed as that user.
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].first { FileManager.default.isExecutableFile(atPath: $0) }
        let before = try FileSystem.readBytes(metrics)
        var arguments = resumeArguments(model, data, run), executable: String? = nil
        if geteuid() == 0 {
            guard let setpriv else { return }
            for name in try FileManager.default.subpathsOfDirectory(atPath: run) + [""] {
                XCTAssertEqual(chown(run + "/" + name, 65534, 65534), 0, name)
            }
            XCTAssertEqual(chown(metrics, 0, 0), 0)
            arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", try binary()] + arguments
            executable = setpriv
        }
        XCTAssertEqual(chmod(metrics, 0), 0)
        defer { chmod(metrics, 0o644) }
        (status, _, output) = try self.run(arguments, executable: executable)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("\(metrics): cannot open: Permission denied"), output)
        XCTAssertTrue(output.contains("would be lost"), output)
        chmod(metrics, 0o644)
        XCTAssertEqual(try FileSystem.readBytes(metrics), before, "metrics.jsonl was replaced")
    }

    /// metrics.jsonl a FIFO: the run trained up to its first logged step, then stopped with "(The operation could
    /// not be completed. (ModelFiles.ModelFileError error 11.))". Refused before the run starts, naming it.
    func testAMetricsFileThatIsAFIFOIsRefusedBeforeTraining() throws {
        let (model, data, run) = try loggedRun()
        let metrics = run + "/metrics.jsonl"
        try FileManager.default.removeItem(atPath: metrics)
        XCTAssertEqual(mkfifo(metrics, 0o644), 0)
        try expectError(resumeArguments(model, data, run), ["--output-dir \(run)", metrics, "a FIFO (named pipe)"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/checkpoint-3"))
    }

    /// `train --config /proc/self/pagemap` hung: the file's size reads 0 (so the 1 MiB check passed) and it holds
    /// 8 bytes for each page of the address space, read to the end. The recipe is read up to its limit only.
    func testARecipeUnderProcIsReadUpToTheLimitOnly() throws {
        let (model, dir, data) = try tinyModelAndData()
        let pagemap = "/proc/self/pagemap"
        guard FileSystem.isFile(pagemap) else { throw XCTSkip("no \(pagemap)") }
        // Under an address-space limit: the unbounded read grew by about 0.5 GB a second.
        let (status, crashed, output) = try run(["-c", "ulimit -v 8388608 && exec \"$0\" \"$@\"", try binary(),
                                                 "train", "--model", model, "--data", data, "--output-dir",
                                                 dir + "/run", "--config", pagemap],
                                                timeout: 30, executable: "/bin/bash")
        XCTAssertFalse(crashed, output)
        XCTAssertEqual(status, 1, output)
        XCTAssertTrue(output.contains("\(pagemap): the recipe holds more than 1048576 bytes"), output)
    }

    /// Two `merge --output OUT` at once into one new folder: both found it empty, the first renamed its folder into
    /// place, and the second (its rename refused: the folder was no longer empty) deleted the first one's files one
    /// by one and moved its own in; both said they succeeded, and in between OUT held no model.safetensors. Two
    /// quantizations failed with Foundation's raw error. A folder filled meanwhile is now refused, nothing replaced.
    func testAMergeOrQuantizeNeverReplacesAFolderFilledWhileItRan() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        // What the first command left: a complete model in OUT (here a quantized one, so its bytes differ).
        let out = dir + "/out"
        _ = try ModelQuantizer().quantize(modelDirectory: golden + "/tiny-llama", outputDirectory: out)
        let first = try FileSystem.readBytes(out + "/model.safetensors")
        XCTAssertThrowsError(try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters,
                                                  onto: .original, dtype: .f32, to: out)) {
            XCTAssertTrue("\($0)".hasPrefix("\(out): cannot write: it holds "), "\($0)")
            XCTAssertTrue("\($0)".contains("nothing was replaced"), "\($0)")
        }
        XCTAssertThrowsError(try ModelQuantizer().quantize(modelDirectory: golden + "/tiny-llama",
                                                           outputDirectory: out)) {
            XCTAssertTrue($0 is ModelFileError, "\($0)")
            XCTAssertTrue("\($0)".contains("nothing was replaced"), "\($0)")
        }
        XCTAssertEqual(try FileSystem.readBytes(out + "/model.safetensors"), first)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(left, [])
        // A link to an empty folder is still written through, file by file.
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: false)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/empty")
        let files = try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters, onto: .original,
                                         dtype: .f32, to: dir + "/link")
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir + "/empty")), Set(files))
    }
}
