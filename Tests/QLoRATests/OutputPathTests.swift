import Foundation
import ModelFiles
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Outputs that are not a file to write (found by an independent fuzzing pass of the command line, issue 12): a
/// write replaces only a regular file, an empty output path is refused, nothing else of the user's is replaced.
extension BadSettingsTests {
    /// `info --dot /dev/null`, run as root, used to rename a text file over /dev/null (and /dev/zero): every atomic
    /// write renamed over whatever the path named. A FIFO, a folder and a dangling link are refused, and survive.
    func testAtomicWritesReplaceOnlyRegularFiles() throws {
        let dir = makeTemporaryDirectory(self)
        let fifo = dir + "/pipe"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        XCTAssertThrowsError(try AtomicFile.write(text: "x", to: fifo)) {
            XCTAssertEqual("\($0)", "\(fifo): cannot write: it is a FIFO (named pipe), not a regular file; writing "
                           + "would replace it (name a file)")
        }
        var info = stat()
        XCTAssertEqual(lstat(fifo, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFIFO, "the FIFO is still a FIFO")
        XCTAssertThrowsError(try AtomicFile.write(text: "x", to: dir)) { XCTAssertTrue("\($0)".contains("a folder")) }
        XCTAssertThrowsError(try AtomicFile.write(text: "x", to: "")) {
            XCTAssertEqual("\($0)", ": cannot write: the path is empty")
        }
        XCTAssertEqual(symlink(dir + "/nowhere", dir + "/dangling"), 0)
        XCTAssertThrowsError(try AtomicFile.write(text: "x", to: dir + "/dangling")) {
            XCTAssertTrue("\($0)".contains("symbolic link to a missing file"))
        }
        // A link to a regular file: the file is written, the link kept.
        try AtomicFile.write(text: "old", to: dir + "/file")
        XCTAssertEqual(symlink(dir + "/file", dir + "/link"), 0)
        try AtomicFile.write(text: "new", to: dir + "/link")
        XCTAssertEqual(try String(contentsOfFile: dir + "/file", encoding: .utf8), "new")
        XCTAssertEqual(lstat(dir + "/link", &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFLNK, "the link is still a link")
        // Through the command line: info's --dot.
        try expectError(["info", "--model", try Shared.requireGolden() + "/tiny-llama", "--dot", fifo], [fifo, "FIFO"])
        XCTAssertEqual(lstat(fifo, &info), 0)
        XCTAssertEqual(info.st_mode & S_IFMT, S_IFIFO)
    }

    /// `quantize --output ""` wrote config.json and model.safetensors into the root folder, `train --output-dir ""`
    /// its adapter and metrics.jsonl: "" + "/config.json" is "/config.json". Each output flag refuses an empty path.
    func testEmptyOutputPathsAreRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        try expectError(["quantize", "--model", model, "--output", ""], ["--output is empty"])
        try expectError(["train", "--model", model, "--data", data, "--output-dir", "", "--max-steps", "1"],
                        ["--output-dir is empty"])
        try expectError(["merge", "--model", model, "--adapter", try Shared.requireGolden() + "/tiny-adapter",
                         "--output", ""], ["--output is empty"])
        try expectError(["info", "--model", model, "--dot", ""], ["cannot write: the path is empty"])
        XCTAssertThrowsError(try FileSystem.createDirectory("")) {
            XCTAssertEqual("\($0)", ": cannot write: the folder path is empty")
        }
        _ = dir
    }

    /// A folder output naming a file (or /dev/null) used to be found only after the work, with a raw system error;
    /// merge wrote its model into any existing folder that held no model (run as root, into `/`). Both are refused
    /// before anything is read, and the file and the folder's contents stay as they were.
    func testFolderOutputsThatAreFilesOrHoldOtherFilesAreRefused() throws {
        let (model, dir, data) = try tinyModelAndData()
        let adapter = try Shared.requireGolden() + "/tiny-adapter"
        let file = dir + "/notes.txt"
        try AtomicFile.write(text: "keep me", to: file)
        for output in [file, "/dev/null"] {
            try expectError(["quantize", "--model", model, "--output", output], [output, "is not a folder"])
            try expectError(["merge", "--model", model, "--adapter", adapter, "--output", output],
                            [output, "is not a folder"])
            try expectError(["train", "--model", model, "--data", data, "--output-dir", output, "--max-steps", "1"],
                            ["--output-dir", output, "is not a folder"])
        }
        XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "keep me")
        let other = dir + "/other"
        try FileSystem.createDirectory(other)
        try AtomicFile.write(text: "mine", to: other + "/readme.txt")
        try expectError(["merge", "--model", model, "--adapter", adapter, "--output", other],
                        [other, "not empty", "readme.txt"])
        try expectError(["quantize", "--model", model, "--output", other], [other, "not empty"])
        XCTAssertEqual(try FileSystem.contents(of: other), ["readme.txt"])
    }

    /// Two `train` runs started together into one folder both passed the check for an existing run, and the second
    /// wrote over the first's adapter, checkpoints and metrics while both exited 0. A run holds a lock on the folder
    /// (here held by the test, as a running train would hold it): the second is refused and writes nothing.
    func testTrainRefusesAnOutputFolderInUseByAnotherRun() throws {
        let (model, dir, data) = try tinyModelAndData()
        let out = dir + "/run"
        try FileSystem.createDirectory(out)
        let fd = open(out + "/.qlora-run.lock", O_CREAT | O_RDWR, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_EX | LOCK_NB), 0)
        try expectError(["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps", "1"],
                        [out, "in use by another training run"])
        XCTAssertEqual(try FileSystem.contents(of: out), [".qlora-run.lock"])
        close(fd)
        let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", out,
                                           "--max-steps", "1"])
        XCTAssertEqual(status, 0, output)
    }
}
