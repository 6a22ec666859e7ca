import Foundation
import Training
import XCTest

/// TensorBoard event files: TFRecord framing with masked CRC-32C around `tensorflow.Event` protocol buffers.
final class TensorBoardTests: XCTestCase {
    /// CRC-32C's published check value (the CRC of the ASCII digits 1–9) and TFRecord's masking of it.
    func testCRC32C() {
        XCTAssertEqual(TensorBoardWriter.crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(TensorBoardWriter.crc32c([]), 0)
        let crc: UInt32 = 0xE306_9283
        XCTAssertEqual(TensorBoardWriter.maskedCRC32C(Array("123456789".utf8)),
            ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8)
    }

    /// The file reads back as records whose CRCs check, the first holding the file version and the next the scalars
    /// with their tags, steps and float values (decoded here field by field from the wire format).
    func testEventsReadBack() throws {
        let dir = makeTemporaryDirectory(self) + "/runs"
        let w = try TensorBoardWriter(directory: dir)
        try w.add(StepMetrics(step: 10, loss: 2.5, learningRate: 1e-4, gradNorm: 0.75))
        try w.add(StepMetrics(step: 20, evalLoss: 1.25))
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: w.path)))
        var records: [[UInt8]] = []
        var i = 0
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(bytes[at + $1]) << (8 * UInt32($1)) } }
        while i < bytes.count {
            let lengthBytes = Array(bytes[i..<(i + 8)])
            let length = (0..<8).reduce(0) { $0 | Int(lengthBytes[$1]) << (8 * $1) }
            XCTAssertEqual(u32(i + 8), TensorBoardWriter.maskedCRC32C(lengthBytes))
            let data = Array(bytes[(i + 12)..<(i + 12 + length)])
            XCTAssertEqual(u32(i + 12 + length), TensorBoardWriter.maskedCRC32C(data))
            records.append(data)
            i += 16 + length
        }
        XCTAssertEqual(records.count, 3)
        XCTAssertTrue(String(decoding: records[0], as: UTF8.self).contains("brain.Event:2"))
        // Event: field 2 (varint) step; field 5 (bytes) summary of values: field 1 tag, field 2 (fixed32) simple_value.
        func fields(_ b: [UInt8]) -> [(Int, Any)] {
            var out: [(Int, Any)] = [], p = 0
            func varint() -> UInt64 {
                var v: UInt64 = 0, s: UInt64 = 0
                while true { let c = b[p]; p += 1; v |= UInt64(c & 0x7F) << s; s += 7; if c < 0x80 { return v } }
            }
            while p < b.count {
                let key = varint(), field = Int(key >> 3)
                switch key & 7 {
                case 0: out.append((field, varint()))
                case 1: out.append((field, Array(b[p..<(p + 8)]))); p += 8
                case 5:
                    let bits = (0..<4).reduce(0) { $0 | UInt32(b[p + $1]) << (8 * UInt32($1)) }
                    out.append((field, Float(bitPattern: bits)))
                    p += 4
                default: let n = Int(varint()); out.append((field, Array(b[p..<(p + n)]))); p += n
                }
            }
            return out
        }
        func scalars(_ record: [UInt8]) -> (step: UInt64, values: [String: Float]) {
            let f = fields(record)
            let step = f.first { $0.0 == 2 }!.1 as! UInt64
            var values: [String: Float] = [:]
            for v in fields(f.first { $0.0 == 5 }!.1 as! [UInt8]) where v.0 == 1 {
                let inner = fields(v.1 as! [UInt8])
                let tag = String(decoding: inner.first { $0.0 == 1 }!.1 as! [UInt8], as: UTF8.self)
                values[tag] = inner.first { $0.0 == 2 }!.1 as? Float
            }
            return (step, values)
        }
        let first = scalars(records[1]), second = scalars(records[2])
        XCTAssertEqual(first.step, 10)
        XCTAssertEqual(first.values, ["train/loss": 2.5, "train/learning_rate": 1e-4, "train/grad_norm": 0.75])
        XCTAssertEqual(second.step, 20)
        XCTAssertEqual(second.values, ["eval/loss": 1.25])
    }
}
