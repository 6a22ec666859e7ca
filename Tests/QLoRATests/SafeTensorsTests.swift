import Foundation
import ModelFiles
import Tensors
import XCTest

final class SafeTensorsTests: XCTestCase {
    /// Builds a safetensors file by hand (independently of SafeTensorsWriter) from a header text and data bytes.
    private func handMade(_ header: String, data: [UInt8], claimedHeaderSize: UInt64? = nil, in dir: String,
                          name: String = "t.safetensors") -> String {
        let h = Array(header.utf8)
        var bytes = withUnsafeBytes(of: (claimedHeaderSize ?? UInt64(h.count)).littleEndian) { Array($0) }
        bytes += h + data
        let path = dir + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    private func assertOpenFails(_ path: String, _ expected: ModelFileError, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try SafeTensorsFile(path: path), file: file, line: line) { error in
            XCTAssertEqual(error as? ModelFileError, expected, file: file, line: line)
            XCTAssertTrue("\(error)".contains(path), "the message names the file: \(error)", file: file, line: line)
        }
    }

    func testReadsHandMadeFile() throws {
        let dir = makeTemporaryDirectory(self)
        let floats: [Float] = [1.5, -2, 0.25]
        let data = floats.withUnsafeBytes { Array($0) } + [7, 8]
        let path = handMade(#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"U8","shape":[2,1],"data_offsets":[12,14]}}"#,
                            data: data, in: dir)
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.metadata, ["format": "pt"])
        XCTAssertEqual(file.names, ["a", "b"])
        XCTAssertEqual(try file.tensor(named: "a").floats(), floats)
        XCTAssertEqual(try file.tensor(named: "b").shape, [2, 1])
        XCTAssertEqual(try file.tensor(named: "b").bytesArray(), [7, 8])
        XCTAssertThrowsError(try file.tensor(named: "c")) {
            XCTAssertEqual($0 as? ModelFileError, .missingTensor(name: "c", location: path))
        }
    }

    func testTruncatedFile() throws {
        let dir = makeTemporaryDirectory(self)
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}"#
        let path = handMade(header, data: [UInt8](repeating: 1, count: 20), in: dir)
        assertOpenFails(path, .truncated(path: path, detail: "the header describes 32 data bytes but the file holds 20; tensor 'b' (bytes 16..<32) is cut off"))
        // Shorter than the length field itself.
        let tiny = dir + "/tiny.safetensors"
        FileManager.default.createFile(atPath: tiny, contents: Data([1, 2, 3]))
        assertOpenFails(tiny, .truncated(path: tiny, detail: "3 bytes, fewer than the 8-byte header length"))
    }

    func testOffsetsOutOfRange() throws {
        let dir = makeTemporaryDirectory(self)
        // 'b' claims bytes far past the end while 'a' is fine: not a clean cut, so the offsets are blamed.
        let header = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[1000,1004]}}"#
        let path = handMade(header, data: [UInt8](repeating: 0, count: 8), in: dir)
        assertOpenFails(path, .offsetsOutOfRange(path: path, tensor: "b", start: 1000, end: 1004, dataSize: 8))
        // Offsets whose span disagrees with shape × dtype.
        let mismatch = handMade(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8),
                                in: dir, name: "m.safetensors")
        assertOpenFails(mismatch, .sizeMismatch(path: mismatch, tensor: "a", expectedBytes: 12, foundBytes: 8))
        // Overlapping tensors.
        let overlap = handMade(#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                               data: [UInt8](repeating: 0, count: 8), in: dir, name: "o.safetensors")
        assertOpenFails(overlap, .overlappingTensors(path: overlap, first: "a", second: "b"))
        // Reversed offsets.
        let reversed = handMade(#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#, data: [0, 0, 0, 0], in: dir, name: "r.safetensors")
        XCTAssertThrowsError(try SafeTensorsFile(path: reversed)) { XCTAssertTrue("\($0)".contains("'a'")) }
    }

    func testUnknownDtype() throws {
        let dir = makeTemporaryDirectory(self)
        let path = handMade(#"{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0], in: dir)
        assertOpenFails(path, .unknownDType(path: path, tensor: "w", dtype: "F8_E4M3"))
    }

    func testOversizedHeaderIsRefusedWithoutAllocating() throws {
        let dir = makeTemporaryDirectory(self)
        // Claims an exabyte of header: must fail at once, not try to read or allocate it.
        let huge = handMade(#"{}"#, data: [], claimedHeaderSize: 1 << 60, in: dir)
        assertOpenFails(huge, .headerTooLarge(path: huge, claimed: 1 << 60, available: 2))
        // Claims a little more than the file has.
        let short = handMade(#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, data: [9], claimedHeaderSize: 200,
                             in: dir, name: "s.safetensors")
        assertOpenFails(short, .headerTooLarge(path: short, claimed: 200, available: 54))
    }

    func testGarbageHeader() throws {
        let dir = makeTemporaryDirectory(self)
        let path = handMade("{\"a\": [1, 2", data: [], in: dir)
        XCTAssertThrowsError(try SafeTensorsFile(path: path)) { error in
            guard case .invalidHeader(let p, _)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, path)
        }
        let missing = dir + "/nope.safetensors"
        XCTAssertThrowsError(try SafeTensorsFile(path: missing)) { error in
            guard case .cannotOpen(let p, _)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, missing)
        }
    }

    func testWriterRoundTripAndLayout() throws {
        let dir = makeTemporaryDirectory(self)
        var rng = TestRandom(seed: 9)
        let tensors: [(name: String, tensor: Tensor)] = [
            ("z.bf16", Tensor((0..<6).map { _ in rng.normal() }, shape: [2, 3], dtype: .bf16)),
            ("a.u8", Tensor(copying: [UInt8](arrayLiteral: 1, 2, 3), shape: [3], dtype: .u8)),
            ("m.f32", Tensor((0..<5).map { _ in rng.normal() }, shape: [5])),
            ("b.i64", Tensor(copying: [Int64](arrayLiteral: -1, 1 << 40), shape: [2], dtype: .i64)),
            ("c.f16", Tensor([0.5, -1], shape: [2], dtype: .f16)),
            ("d.i32", Tensor(copying: [Int32](arrayLiteral: 7), shape: [1], dtype: .i32)),
            ("e.empty", Tensor(zeros: [0, 4], dtype: .f32)),
        ]
        let path = dir + "/w.safetensors"
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt", "note": "x"], to: path)
        let file = try SafeTensorsFile(path: path)
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "x"])
        for (name, t) in tensors {
            let back = try file.tensor(named: name)
            XCTAssertEqual(back.shape, t.shape, name)
            XCTAssertEqual(back.dtype, t.dtype, name)
            XCTAssertEqual(back.bytesArray(), t.bytesArray(), name)
        }
        // Data ordered by dtype alignment (the reference layout), then name.
        let order = file.entries.sorted { $0.dataRange.lowerBound < $1.dataRange.lowerBound || ($0.dataRange.lowerBound == $1.dataRange.lowerBound && $0.name < $1.name) }.map(\.name)
        XCTAssertEqual(order, ["b.i64", "e.empty", "m.f32", "d.i32", "z.bf16", "c.f16", "a.u8"])
        let raw = try FileSystem.readBytes(path)
        let headerSize = raw.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        XCTAssertEqual(headerSize % 8, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp-\(getpid())"))
        XCTAssertThrowsError(try SafeTensorsWriter.write([("a", tensors[0].tensor), ("a", tensors[1].tensor)], to: dir + "/dup.safetensors"))
    }

    func testFailedWriteKeepsTheOldFile() throws {
        let dir = makeTemporaryDirectory(self)
        let path = dir + "/keep.safetensors"
        try SafeTensorsWriter.write([("a", Tensor([1, 2], shape: [2]))], to: path)
        let before = try FileSystem.readBytes(path)
        struct Boom: Error {}
        XCTAssertThrowsError(try AtomicFile.write(to: path) { emit in
            try [UInt8](repeating: 0, count: 10).withUnsafeBytes { try emit($0) }
            throw Boom()
        })
        XCTAssertEqual(try FileSystem.readBytes(path), before)
        XCTAssertEqual(try FileSystem.contents(of: dir), ["keep.safetensors"], "no temporary file left behind")
        // A folder that cannot be written names the path.
        XCTAssertThrowsError(try AtomicFile.write(text: "x", to: dir + "/no/such/dir/f")) { error in
            guard case .writeFailed(let p, _)? = error as? ModelFileError else { return XCTFail("\(error)") }
            XCTAssertEqual(p, dir + "/no/such/dir/f")
        }
    }

    func testShardedArchive() throws {
        let dir = makeTemporaryDirectory(self)
        try SafeTensorsWriter.write([("x", Tensor([1, 2], shape: [2])), ("y", Tensor([3], shape: [1]))],
                                    to: dir + "/model-00001-of-00002.safetensors")
        try SafeTensorsWriter.write([("z", Tensor([4, 5, 6], shape: [3], dtype: .bf16))], to: dir + "/model-00002-of-00002.safetensors")
        try AtomicFile.write(text: #"{"metadata": {"total_size": 18}, "weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00001-of-00002.safetensors", "z": "model-00002-of-00002.safetensors"}}"#,
                             to: dir + "/model.safetensors.index.json")
        let archive = try SafeTensorsArchive(directory: dir)
        XCTAssertEqual(archive.names, ["x", "y", "z"])
        XCTAssertEqual(try archive.tensor(named: "z").floats(), [4, 5, 6])
        XCTAssertEqual(try archive.tensor(named: "x").floats(), [1, 2])
        XCTAssertThrowsError(try archive.tensor(named: "w")) {
            XCTAssertEqual($0 as? ModelFileError, .missingTensor(name: "w", location: dir))
        }
        let empty = makeTemporaryDirectory(self)
        XCTAssertThrowsError(try SafeTensorsArchive(directory: empty)) { XCTAssertTrue("\($0)".contains(empty)) }
    }
}
