import Foundation
import XCTest

/// The command-line fuzzers of `scripts/` as short seeded passes over the built binary (issue 12: the fuzz suite
/// in CI). Each script builds its own small valid inputs, mutates or combines them, runs one qlora command a case
/// under a timeout and a memory limit, and exits non-zero when a case crashed, hung or lost a file (its reproducer
/// is then kept under the work folder's findings/, printed in the failure). Longer runs: the scripts' --cases.
extension BadSettingsTests {
    func runFuzzer(_ script: String, cases: Int, seed: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let work = makeTemporaryDirectory(self)
        _ = try Shared.requireGolden()
        let (status, _, output) = try run(["python3", repo.appendingPathComponent("scripts/" + script).path,
                                           "--binary", try binary(), "--work", work, "--seed", String(seed),
                                           "--cases", String(cases)],
                                          timeout: 900, executable: "/usr/bin/env",
                                          environment: ["QLORA_SHARED": Shared.root])
        XCTAssertEqual(status, 0, "\(script) --seed \(seed): \(output.suffix(4000))", file: file, line: line)
    }

    func testFuzzCLIPassHasNoCrashHangOrLostFile() throws { try runFuzzer("fuzz-cli.py", cases: 3, seed: 41) }
    func testFuzzStructuredPassHasNoCrashHangOrLostFile() throws {
        try runFuzzer("fuzz-structured.py", cases: 4, seed: 41)
    }
    func testFuzzCommandsPassHasNoCrashHangOrLostFile() throws { try runFuzzer("fuzz-commands.py", cases: 3, seed: 41) }
    func testFuzzInterruptsPassHasNoCrashHangOrLostFile() throws {
        try runFuzzer("fuzz-interrupts.py", cases: 1, seed: 41)
    }
    func testFuzzFilesPassHasNoCrashHangOrLostFile() throws { try runFuzzer("fuzz-files.py", cases: 10, seed: 41) }
}
