import Tensors

/// The type tags of GGUF metadata values, as numbered by the GGUF specification.
public enum GGUFValueType: UInt32, Sendable, CaseIterable {
    case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7, string = 8
    case array = 9, uint64 = 10, int64 = 11, float64 = 12

    /// Bytes one value of this type takes, for the fixed-size types; nil for strings and arrays.
    public var fixedSize: Int? {
        switch self {
        case .uint8, .int8, .bool: return 1
        case .uint16, .int16: return 2
        case .uint32, .int32, .float32: return 4
        case .uint64, .int64, .float64: return 8
        case .string, .array: return nil
        }
    }

    /// The fewest bytes one value of this type can take in a file (a string's or array's length prefix), used to
    /// reject a count before anything is allocated for it.
    var minimumSize: Int {
        switch self {
        case .string: return 8
        case .array: return 12
        default: return fixedSize!
        }
    }
}

/// One GGUF metadata value.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64)
    case float32(Float), float64(Double)
    case bool(Bool)
    case string(String)
    /// An array with its element type (kept so an empty array still says what it holds).
    case array(GGUFValueType, [GGUFValue])

    /// The type tag of this value.
    public var type: GGUFValueType {
        switch self {
        case .uint8: return .uint8
        case .int8: return .int8
        case .uint16: return .uint16
        case .int16: return .int16
        case .uint32: return .uint32
        case .int32: return .int32
        case .uint64: return .uint64
        case .int64: return .int64
        case .float32: return .float32
        case .float64: return .float64
        case .bool: return .bool
        case .string: return .string
        case .array: return .array
        }
    }

    /// The string, or nil.
    public var string: String? { if case .string(let s) = self { return s }; return nil }

    /// The value of any integer type as an Int, or nil (also nil for a UInt64 beyond Int.max).
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// The value of a float (exactly widened to Double) or of an integer, or nil.
    public var float: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }

    /// The boolean, or nil.
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }

    /// The elements of an array, or nil.
    public var array: [GGUFValue]? { if case .array(_, let items) = self { return items }; return nil }

    /// An array of strings, or nil (also nil when any element is not a string).
    public var strings: [String]? { collect(\.string) }

    /// An array of integers (any integer type) as Ints, or nil.
    public var ints: [Int]? { collect(\.int) }

    /// An array of floats or integers as Doubles, or nil.
    public var floats: [Double]? { collect(\.float) }

    private func collect<T>(_ element: (GGUFValue) -> T?) -> [T]? {
        guard case .array(_, let items) = self else { return nil }
        var out: [T] = []
        out.reserveCapacity(items.count)
        for item in items {
            guard let v = element(item) else { return nil }
            out.append(v)
        }
        return out
    }
}

/// One entry of a GGUF file's tensor table.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// Tensor name, as llama.cpp names it (`blk.0.attn_q.weight`).
    public let name: String
    /// Extents in GGUF order: the fastest-varying (contiguous) dimension first.
    public let dimensions: [Int]
    /// Storage type.
    public let type: GGMLType
    /// Byte offset of the data from the start of the data section.
    public let offset: Int
    /// Number of values.
    public let elementCount: Int
    /// Bytes of stored data.
    public let byteCount: Int

    /// Row-major shape, outermost first (the reverse of `dimensions`), as PyTorch and safetensors write it.
    public var shape: [Int] { dimensions.reversed() }
}

/// A GGUF file (llama.cpp's single-file model format), memory-mapped: the header, metadata and tensor table are
/// parsed and checked against the file size when it is opened; tensor data is read only on request.
///
/// Layout (little-endian; GGUF versions 2 and 3): the magic `GGUF`, a u32 version, a u64 tensor count, a u64
/// metadata count; the metadata as (string key, u32 type, value) triples; the tensor table as (string name, u32 dim
/// count, u64 dims fastest first, u32 ggml type, u64 offset) entries; padding to `general.alignment` (32 when
/// absent); then the data section, each tensor starting at an aligned offset. A string is a u64 byte length and
/// UTF-8 bytes; an array is a u32 element type, a u64 count and the elements.
public final class GGUFFile: @unchecked Sendable {
    /// Alignment of the data section and of each tensor when `general.alignment` is absent.
    public static let defaultAlignment = 32
    /// Most dimensions a ggml tensor has.
    public static let maximumDimensionCount = 4
    /// Largest `general.alignment` accepted (llama.cpp writes 32; a bound keeps the padding arithmetic exact).
    public static let maximumAlignment = 1 << 20
    /// Deepest nesting of arrays accepted (a bound on recursion, far above anything real files use).
    public static let maximumArrayDepth = 16

    /// The path opened.
    public let path: String
    /// Format version (2 or 3).
    public let version: Int
    /// Every metadata value by key.
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// The tensor table in file order.
    public let tensors: [GGUFTensorInfo]
    /// Alignment of the data section and of every tensor's offset.
    public let alignment: Int
    /// File offset where the data section starts.
    public let dataStart: Int
    private let index: [String: Int]
    private let file: MappedFile

    /// Drops the file's pages from resident memory (`MappedFile.evictPages`).
    public func evictPages() { file.evictPages() }

    /// Opens and validates `path`.
    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        var reader = GGUFReader(bytes: file.bytes, path: path)

        let magic = try reader.bytes(4, "the magic")
        guard Array(magic) == Array("GGUF".utf8) else {
            if let note = FileSystem.gitLFSPointerNote(file.bytes) {
                throw ModelFileError.invalidHeader(path: path, detail: note)
            }
            let shown = magic.map { (0x20..<0x7F).contains($0) ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
            throw ModelFileError.invalidHeader(path: path, detail: "not a GGUF file: the magic is \"\(shown)\", expected \"GGUF\"")
        }
        let rawVersion = try reader.u32("the version")
        guard rawVersion == 2 || rawVersion == 3 else {
            if rawVersion.byteSwapped == 2 || rawVersion.byteSwapped == 3 {
                throw ModelFileError.invalidHeader(path: path, detail: "big-endian GGUF files are not supported")
            }
            throw ModelFileError.invalidHeader(path: path, detail: "GGUF version \(rawVersion) is not supported (supported: 2, 3)")
        }
        version = Int(rawVersion)
        let tensorCount = try reader.count("the tensor count", minimumElementSize: 24)
        let metadataCount = try reader.count("the metadata count", minimumElementSize: 13)

        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        keys.reserveCapacity(min(metadataCount, 1 << 16))
        for k in 0..<metadataCount {
            let key = try reader.string("metadata key \(k)")
            let what = "metadata '\(key)'"
            let type = try reader.valueType(what, key: key, depth: 0)
            let value = try reader.value(of: type, what, key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw ModelFileError.invalidHeader(path: path, detail: "GGUF metadata key '\(key)' appears twice")
            }
            keys.append(key)
        }

        var alignment = Self.defaultAlignment
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0, a <= Self.maximumAlignment else {
                throw ModelFileError.invalidHeader(
                    path: path,
                    detail: "GGUF general.alignment must be a power of two from 1 to \(Self.maximumAlignment), "
                        + "found \(value)")
            }
            alignment = a
        }

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(min(tensorCount, 1 << 16))
        var index: [String: Int] = [:]
        for t in 0..<tensorCount {
            let name = try reader.string("the name of tensor \(t)")
            let info = try reader.tensorInfo(name: name, alignment: alignment)
            guard index.updateValue(tensors.count, forKey: name) == nil else {
                throw ModelFileError.invalidHeader(path: path, detail: "GGUF tensor '\(name)' appears twice in the tensor table")
            }
            tensors.append(info)
        }

        let headerEnd = reader.offset
        dataStart = (headerEnd + alignment - 1) / alignment * alignment
        try Self.checkLayout(tensors, path: path, dataSize: max(0, file.bytes.count - dataStart), alignment: alignment)
        self.metadata = metadata
        metadataKeys = keys
        self.tensors = tensors
        self.alignment = alignment
        self.index = index
    }

    /// Checks the tensors against the data section. A file merely cut short (its tensors follow one another with
    /// only alignment padding between them, but the last ones end past the end of the file) is reported as
    /// truncated, naming the first tensor cut off; otherwise a tensor reaching past the end has bad offsets;
    /// overlapping tensors are rejected.
    private static func checkLayout(_ tensors: [GGUFTensorInfo], path: String, dataSize: Int, alignment: Int) throws {
        let sorted = tensors.sorted { ($0.offset, $0.byteCount) < ($1.offset, $1.byteCount) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.offset < a.offset + a.byteCount {
            throw ModelFileError.overlappingTensors(path: path, first: a.name, second: b.name)
        }
        guard let last = sorted.last, last.offset + last.byteCount > dataSize else { return }
        func alignUp(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }
        var packed = sorted.first?.offset == 0
        for (a, b) in zip(sorted, sorted.dropFirst()) where alignUp(a.offset + a.byteCount) != b.offset { packed = false }
        let cut = sorted.first { $0.offset + $0.byteCount > dataSize }!
        if packed {
            throw ModelFileError.truncated(
                path: path,
                detail: "the GGUF tensor table describes \(last.offset + last.byteCount) data bytes but the file holds \(dataSize); "
                    + "tensor '\(cut.name)' (bytes \(cut.offset)..<\(cut.offset + cut.byteCount)) is cut off")
        }
        throw ModelFileError.offsetsOutOfRange(path: path, tensor: cut.name, start: cut.offset,
                                               end: cut.offset + cut.byteCount, dataSize: dataSize)
    }

    /// Tensor names in file order.
    public var names: [String] { tensors.map(\.name) }

    /// `general.architecture` (llama, qwen2, ...), if present.
    public var architecture: String? { metadata["general.architecture"]?.string }

    /// The table entry for `name`, or nil.
    public func tensorInfo(named name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    /// Calls `body` with the stored bytes of `info` (a view into the mapped file, valid only during the call).
    public func withUnsafeData<R>(of info: GGUFTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        // An empty tensor may sit at the very end, where the data section starts past a file with no padding.
        guard info.byteCount > 0 else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        let start = dataStart + info.offset
        return try body(UnsafeRawBufferPointer(rebasing: file.bytes[start..<(start + info.byteCount)]))
    }

    /// The tensor `name` as float32 with its row-major shape (`GGUFTensorInfo.shape`): an F32 tensor is a view into
    /// the mapped file, any other supported type is dequantized into new memory.
    public func tensor(named name: String) throws -> Tensor {
        guard let info = tensorInfo(named: name) else { throw ModelFileError.missingTensor(name: name, location: path) }
        guard info.type.isDequantizable else {
            throw ModelFileError.invalidCheckpoint(
                path: path, tensor: name,
                detail: "has ggml type \(info.type.name), which this reader cannot dequantize (supported: "
                    + GGMLType.allCases.filter(\.isDequantizable).map(\.name).joined(separator: ", ") + ")")
        }
        if info.type == .f32, info.byteCount > 0, (dataStart + info.offset) % MemoryLayout<Float>.alignment == 0 {
            let start = dataStart + info.offset
            let view = UnsafeRawBufferPointer(rebasing: file.bytes[start..<(start + info.byteCount)])
            return Tensor(shape: info.shape, dtype: .f32, storage: TensorStorage(view: view, owner: file))
        }
        let out = Tensor(zeros: info.shape, dtype: .f32)
        let values = out.storage.bytes.bindMemory(to: Float.self)
        withUnsafeData(of: info) { info.type.dequantize($0, into: values) }
        return out
    }
}

/// A bounds-checked cursor over the header: every read says what it was reading, so a short or corrupt file
/// fails with an error naming the field, never with a crash.
private struct GGUFReader {
    let bytes: UnsafeRawBufferPointer
    let path: String
    var offset = 0

    init(bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - offset }

    func truncated(_ what: String, needs: Int) -> ModelFileError {
        .truncated(path: path, detail: "the GGUF header ends inside \(what): \(needs) bytes needed at offset \(offset), "
                       + "\(remaining) left in the \(bytes.count)-byte file")
    }

    mutating func bytes(_ n: Int, _ what: String) throws -> UnsafeRawBufferPointer {
        guard n <= remaining else { throw truncated(what, needs: n) }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
    }

    mutating func load<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { throw truncated(what, needs: size) }
        defer { offset += size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    mutating func u32(_ what: String) throws -> UInt32 { try load(UInt32.self, what) }

    /// A u64 count of things each at least `minimumElementSize` bytes long: rejected, before anything is
    /// allocated, when that many could not fit in what is left of the file.
    mutating func count(_ what: String, minimumElementSize: Int) throws -> Int {
        let claimed = try load(UInt64.self, what)
        guard claimed <= UInt64(remaining / max(minimumElementSize, 1)) else {
            throw ModelFileError.truncated(
                path: path,
                detail: "\(what) is \(claimed), but at \(minimumElementSize) or more bytes each they cannot fit in the "
                    + "\(remaining) bytes left after offset \(offset)")
        }
        return Int(claimed)
    }

    mutating func string(_ what: String) throws -> String {
        let length = try load(UInt64.self, "the length of \(what)")
        guard length <= UInt64(remaining) else {
            throw ModelFileError.truncated(
                path: path, detail: "\(what) claims \(length) bytes at offset \(offset), past the end of the \(bytes.count)-byte file")
        }
        return String(decoding: try bytes(Int(length), what), as: UTF8.self)
    }

    /// The type tag of metadata `key` (depth 0) or of the elements of one of its arrays `depth` arrays deep.
    mutating func valueType(_ what: String, key: String, depth: Int) throws -> GGUFValueType {
        let raw = try u32("the type of \(what)")
        guard let type = GGUFValueType(rawValue: raw) else {
            let holder = depth == 0 ? "GGUF metadata key '\(key)' has value type \(raw)"
                : "GGUF metadata key '\(key)' is an array" + String(repeating: " of arrays", count: depth - 1)
                    + " whose elements have value type \(raw)"
            let known = GGUFValueType.allCases.map { "\($0.rawValue) \($0)" }.joined(separator: ", ")
            throw ModelFileError.invalidHeader(
                path: path, detail: holder + ", which is not a GGUF value type (supported: \(known))")
        }
        return type
    }

    /// A value of `type`; `key` is the metadata key it belongs to, `depth` how many arrays it lies inside.
    mutating func value(of type: GGUFValueType, _ what: String, key: String, depth: Int) throws -> GGUFValue {
        switch type {
        case .uint8: return .uint8(try load(UInt8.self, what))
        case .int8: return .int8(try load(Int8.self, what))
        case .uint16: return .uint16(try load(UInt16.self, what))
        case .int16: return .int16(try load(Int16.self, what))
        case .uint32: return .uint32(try load(UInt32.self, what))
        case .int32: return .int32(try load(Int32.self, what))
        case .uint64: return .uint64(try load(UInt64.self, what))
        case .int64: return .int64(try load(Int64.self, what))
        case .float32: return .float32(Float(bitPattern: try load(UInt32.self, what)))
        case .float64: return .float64(Double(bitPattern: try load(UInt64.self, what)))
        case .bool:
            let b = try load(UInt8.self, what)
            guard b <= 1 else { throw ModelFileError.invalidHeader(path: path, detail: "GGUF \(what) is a bool stored as \(b)") }
            return .bool(b == 1)
        case .string: return .string(try string(what))
        case .array:
            guard depth < GGUFFile.maximumArrayDepth else {
                throw ModelFileError.invalidHeader(
                    path: path,
                    detail: "GGUF metadata key '\(key)' holds arrays nested more than \(GGUFFile.maximumArrayDepth) "
                        + "deep (arrays of arrays of ...); this reader supports at most "
                        + "\(GGUFFile.maximumArrayDepth) levels")
            }
            let elementType = try valueType("the elements of \(what)", key: key, depth: depth + 1)
            let n = try count("the element count of \(what)", minimumElementSize: elementType.minimumSize)
            var items: [GGUFValue] = []
            // The count is known to fit in the file, but a value takes more memory than its smallest encoding.
            items.reserveCapacity(min(n, 1 << 16))
            let element = "an element of \(what)"
            for _ in 0..<n { items.append(try value(of: elementType, element, key: key, depth: depth + 1)) }
            return .array(elementType, items)
        }
    }

    /// The rest of a tensor-table entry after its name, checked for everything that can be checked before the
    /// data section's position is known.
    mutating func tensorInfo(name: String, alignment: Int) throws -> GGUFTensorInfo {
        let what = "tensor '\(name)'"
        let dimensionCount = try u32("the dimension count of \(what)")
        guard dimensionCount >= 1, dimensionCount <= UInt32(GGUFFile.maximumDimensionCount) else {
            throw ModelFileError.invalidHeader(
                path: path, detail: "GGUF \(what) has \(dimensionCount) dimensions (expected 1 to \(GGUFFile.maximumDimensionCount))")
        }
        var dimensions: [Int] = []
        var count = 1
        for _ in 0..<dimensionCount {
            let extent = try load(UInt64.self, "the dimensions of \(what)")
            // 2^53 elements is far beyond any file this reader can map; the bound keeps every product below exact.
            let (product, overflow) = count.multipliedReportingOverflow(by: Int(clamping: extent))
            guard extent <= UInt64(1 << 53), !overflow, product <= 1 << 53 else {
                throw ModelFileError.invalidHeader(path: path, detail: "GGUF \(what) has an impossibly large shape")
            }
            count = product
            dimensions.append(Int(extent))
        }
        let rawType = try u32("the ggml type of \(what)")
        guard let type = GGMLType(rawValue: rawType) else {
            throw ModelFileError.unknownDType(path: path, tensor: name, dtype: "ggml type \(rawType)")
        }
        let offset = try load(UInt64.self, "the data offset of \(what)")
        guard dimensions[0] % type.blockSize == 0 else {
            throw ModelFileError.invalidHeader(
                path: path,
                detail: "GGUF \(what) of type \(type.name) has rows of \(dimensions[0]) values, not a multiple of its \(type.blockSize)-value block")
        }
        guard offset <= UInt64(1 << 53), Int(offset) % alignment == 0 else {
            throw ModelFileError.invalidHeader(
                path: path, detail: "GGUF \(what) has data offset \(offset), not a multiple of the alignment \(alignment)")
        }
        return GGUFTensorInfo(name: name, dimensions: dimensions, type: type, offset: Int(offset), elementCount: count,
                              byteCount: count / type.blockSize * type.blockByteCount)
    }
}
