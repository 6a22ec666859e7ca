import Foundation
import ModelFiles
import XCTest

/// Files far larger than the memory the process may allocate (sparse files cost no disk): every whole-file reader
/// refuses them by name and size, where the copy into memory used to fail its allocation (a trap).
extension BadSettingsTests {
    /// Runs the binary under an address-space limit of `kilobytes` (as `ulimit -v` does).
    func runLimited(_ arguments: [String], kilobytes: Int) throws -> (status: Int32, crashed: Bool, output: String) {
        let command = "ulimit -v \(kilobytes) && exec \"$0\" \"$@\""
        let (status, crashed, output) = try runShell(["-c", command, try binary()] + arguments)
        return (status, crashed, output)
    }

    /// `bash` with `arguments`, output and exit status (a signal shows as 128 + its number).
    func runShell(_ arguments: [String]) throws -> (status: Int32, crashed: Bool, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = arguments
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let status = p.terminationStatus
        return (status, status >= 128 || p.terminationReason == .uncaughtSignal, String(decoding: data, as: UTF8.self))
    }

    func sparseFile(_ path: String, bytes: Int) throws {
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: UInt64(bytes))
        try handle.close()
    }

    func testFilesLargerThanMemoryAreRefusedByNameNotByATrap() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let limitKB = 3_000_000   // 3 GB of address space: a 2 GB file maps, its copy would not fit beside
        let big = 2 << 30
        // A model folder whose config.json is 2 GB.
        let model = dir + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: golden + "/tiny-llama/model.safetensors",
                                         toPath: model + "/model.safetensors")
        try sparseFile(model + "/config.json", bytes: big)
        var (status, crashed, output) = try runLimited(["info", model], kilobytes: limitKB)
        XCTAssertFalse(crashed, output)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("\(model)/config.json"), output)
        XCTAssertTrue(output.contains("the file is \(big) bytes, more than the"), output)
        // A data file of 2 GB: named, with the sizes.
        try sparseFile(dir + "/data.jsonl", bytes: big)
        (status, crashed, output) = try runLimited(["eval", "--model", golden + "/tiny-llama", "--data",
                                                    dir + "/data.jsonl"], kilobytes: limitKB)
        XCTAssertFalse(crashed, output)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("\(dir)/data.jsonl: is \(big) bytes: data files are read into memory whole"),
                      output)
        // A metrics.jsonl of 2 GB (plot).
        try sparseFile(dir + "/metrics.jsonl", bytes: big)
        (status, crashed, output) = try runLimited(["plot", dir], kilobytes: limitKB)
        XCTAssertFalse(crashed, output)
        XCTAssertTrue(output.contains("\(dir)/metrics.jsonl"), output)
    }

    /// A CPU step larger than the memory the process may allocate is refused before anything is written: a
    /// batch of a million sequences failed the allocation of its activations (a trap).
    func testATrainingStepLargerThanMemoryIsRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let (status, crashed, output) = try runLimited(["train", "--model", model, "--data", data, "--output-dir",
                                                        dir + "/out", "--max-steps", "1", "--batch-size", "1000000"],
                                                       kilobytes: 3_000_000)
        XCTAssertFalse(crashed, output)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("--batch-size 1000000 × examples of up to 4 tokens needs at least"), output)
        XCTAssertFalse(FileSystem.isDirectory(dir + "/out"), "nothing written")
    }

    /// bench-quantize's matrix is checked against the memory the process may allocate: 64 × 16777216 under a
    /// 3 GB limit failed the allocation of its float32 draw (a trap).
    func testABenchmarkMatrixLargerThanMemoryIsRefused() throws {
        let (status, crashed, output) = try runLimited(["bench-quantize", "--rows", "64", "--cols", "16777216",
                                                        "--repeats", "1"], kilobytes: 3_000_000)
        XCTAssertFalse(crashed, output)
        XCTAssertNotEqual(status, 0, output)
        XCTAssertTrue(output.contains("--rows 64 × --cols 16777216 needs about"), output)
        XCTAssertTrue(output.contains("this process may allocate 3.1 GB"), output)
    }

    /// The bound itself: a file over the limit is refused with both sizes; one at the limit is read.
    func testReadBytesRefusesAFileOverItsLimit() throws {
        let path = makeTemporaryDirectory(self) + "/ten"
        try write("0123456789", path)
        XCTAssertEqual(try FileSystem.readBytes(path, limit: 10).count, 10)
        XCTAssertThrowsError(try FileSystem.readBytes(path, limit: 9)) {
            XCTAssertTrue("\($0)".contains("\(path): cannot open: the file is 10 bytes, more than the 9"), "\($0)")
        }
        XCTAssertGreaterThan(FileSystem.readLimit, 0)
        XCTAssertLessThanOrEqual(FileSystem.readLimit, max(FileSystem.allocatableBytes / 2, 1 << 20))
    }
}
