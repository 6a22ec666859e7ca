import Foundation
import ModelFiles
import Tensors
import XCTest

/// Where the shared reference material lives: `$QLORA_SHARED`, or `../shared` beside the repository.
enum Shared {
    static let root: String = {
        if let env = ProcessInfo.processInfo.environment["QLORA_SHARED"] { return env }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return repo.deletingLastPathComponent().appendingPathComponent("shared").path
    }()

    static let golden = root + "/golden/hf-qlora"

    /// The golden folder, or a skip when this checkout has no shared/ beside it.
    static func requireGolden() throws -> String {
        guard FileSystem.isDirectory(golden) else {
            throw XCTSkip("no reference vectors at \(golden): set QLORA_SHARED to the shared/ folder")
        }
        return golden
    }
}

/// A fresh empty temporary folder, removed at the end of the test.
func makeTemporaryDirectory(_ test: XCTestCase) -> String {
    let path = NSTemporaryDirectory() + "qlora-test-" + UUID().uuidString
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// Asserts two byte arrays are equal, reporting the first differing index and how many differ.
func assertBytesEqual(_ a: [UInt8], _ b: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else {
        XCTFail("\(what): \(a.count) bytes vs \(b.count) expected", file: file, line: line)
        return
    }
    let diffs = zip(a, b).enumerated().filter { $0.element.0 != $0.element.1 }
    if let first = diffs.first {
        XCTFail("\(what): \(diffs.count) of \(a.count) bytes differ; first at \(first.offset): \(first.element.0) vs \(first.element.1)",
                file: file, line: line)
    }
}

/// Asserts float arrays are equal bit for bit (so -0 and 0, and NaN payloads, count as different).
func assertBitsEqual(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else {
        XCTFail("\(what): \(a.count) values vs \(b.count) expected", file: file, line: line)
        return
    }
    let diffs = zip(a, b).enumerated().filter { $0.element.0.bitPattern != $0.element.1.bitPattern }
    if let first = diffs.first {
        XCTFail("\(what): \(diffs.count) of \(a.count) values differ; first at \(first.offset): \(first.element.0) vs \(first.element.1)",
                file: file, line: line)
    }
}

/// A small deterministic generator for test inputs.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E3779B97F4A7C15 | 1 }
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    /// Uniform in [-1, 1).
    mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 23) - 1 }
    /// Roughly normal (sum of uniforms).
    mutating func normal() -> Float { (0..<4).reduce(Float(0)) { s, _ in s + uniform() } * 0.866 }
}

extension XCTestCase {
    /// Asserts `body` throws (a trap would end the test process instead) an error whose description contains every
    /// one of `parts`.
    func assertThrows(_ parts: [String], file: StaticString = #filePath, line: UInt = #line,
                      _ body: () throws -> Void) {
        do {
            try body()
            XCTFail("no error; expected one naming \(parts)", file: file, line: line)
        } catch {
            let text = "\(error)"
            for p in parts where !text.contains(p) {
                XCTFail("error \"\(text)\" does not name \(p)", file: file, line: line)
            }
        }
    }
}
