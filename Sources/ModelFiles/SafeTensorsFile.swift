import Tensors

/// One tensor's entry in a safetensors header.
public struct SafeTensorsEntry: Sendable, Equatable {
    /// Tensor name.
    public let name: String
    /// Element type.
    public let dtype: DType
    /// Shape.
    public let shape: [Int]
    /// Byte range inside the data section (after the header).
    public let dataRange: Range<Int>
}

/// A safetensors file, memory-mapped: the header is parsed and checked against the file when opened, tensors are
/// views into the mapping made on request (no copy, no read of unused tensors).
///
/// Format: an 8-byte little-endian header length N, N bytes of JSON (`name → {dtype, shape, data_offsets}` plus an
/// optional `__metadata__` string map), then the data section.
public final class SafeTensorsFile: @unchecked Sendable {
    /// Largest header accepted (the reference implementation's limit): a bigger claim is an error, not an allocation.
    public static let maximumHeaderSize = 100_000_000

    /// The path opened.
    public let path: String
    /// `__metadata__`, if any.
    public let metadata: [String: String]
    /// Entries in header order.
    public let entries: [SafeTensorsEntry]
    private let index: [String: Int]
    private let file: MappedFile
    private let dataStart: Int

    /// Drops the file's pages from resident memory (`MappedFile.evictPages`).
    public func evictPages() { file.evictPages() }

    /// Opens and validates `path`.
    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let bytes = file.bytes
        guard bytes.count >= 8 else {
            throw ModelFileError.truncated(path: path, detail: "\(bytes.count) bytes, fewer than the 8-byte header length")
        }
        if let note = FileSystem.gitLFSPointerNote(bytes) {
            throw ModelFileError.invalidHeader(path: path, detail: note)
        }
        let claimed = bytes.loadUnaligned(as: UInt64.self).littleEndian
        let available = bytes.count - 8
        guard claimed <= UInt64(available) else {
            throw ModelFileError.headerTooLarge(path: path, claimed: claimed, available: available)
        }
        // A claim the file could hold but over the limit used to be reported as more than the bytes that follow.
        guard claimed <= UInt64(Self.maximumHeaderSize) else {
            throw ModelFileError.invalidHeader(path: path, detail: "the header length is \(claimed) bytes, more than "
                + "the \(Self.maximumHeaderSize) that are read (the limit of the safetensors format's own reader)")
        }
        let headerSize = Int(claimed)
        dataStart = 8 + headerSize
        let dataSize = bytes.count - dataStart
        let header: JSONValue
        do {
            header = try JSONValue(parsing: UnsafeRawBufferPointer(rebasing: bytes[8..<dataStart]))
        } catch {
            throw ModelFileError.invalidHeader(path: path, detail: "\(error)")
        }
        guard let pairs = header.objectValue else {
            throw ModelFileError.invalidHeader(path: path, detail: "the header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var entries: [SafeTensorsEntry] = []
        var seen = Set<String>()
        for (name, value) in pairs {
            // JSON allows a key twice; a header that names a tensor twice is ambiguous (which one is meant?).
            guard seen.insert(name).inserted else {
                throw ModelFileError.invalidHeader(path: path, detail: "the header names '\(name)' twice")
            }
            if name == "__metadata__" {
                guard let fields = value.objectValue else {
                    throw ModelFileError.invalidHeader(path: path, detail: "__metadata__ is not an object")
                }
                for (k, v) in fields {
                    guard let s = v.stringValue else {
                        throw ModelFileError.invalidHeader(path: path, detail: "__metadata__ value for '\(k)' is not a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            entries.append(try Self.entry(name: name, value: value, path: path))
        }
        try Self.checkLayout(entries, path: path, dataSize: dataSize)
        self.metadata = metadata
        self.entries = entries
        var index: [String: Int] = [:]
        for (i, e) in entries.enumerated() { index[e.name] = i }
        self.index = index
    }

    private static func entry(name: String, value: JSONValue, path: String) throws -> SafeTensorsEntry {
        guard let dtypeName = value["dtype"]?.stringValue else {
            throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has no dtype")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw ModelFileError.unknownDType(path: path, tensor: name, dtype: dtypeName)
        }
        guard let dims = value["shape"]?.arrayValue else {
            throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has no shape")
        }
        var shape: [Int] = []
        var count = 1
        for d in dims {
            guard let extent = d.intValue, extent >= 0 else {
                throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has a bad shape \(dims.map { $0.compactText() })")
            }
            let (product, overflow) = count.multipliedReportingOverflow(by: extent)
            guard !overflow, product <= Int(Int32.max) * 1024 else {
                throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has an impossibly large shape")
            }
            count = product
            shape.append(extent)
        }
        guard let offsets = value["data_offsets"]?.arrayValue, offsets.count == 2,
              let start = offsets[0].intValue, let end = offsets[1].intValue else {
            throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has no valid data_offsets")
        }
        guard start >= 0, start <= end else {
            throw ModelFileError.invalidHeader(path: path, detail: "tensor '\(name)' has data_offsets [\(start), \(end)] that are not an increasing pair")
        }
        let expected = count * dtype.byteSize
        guard end - start == expected else {
            throw ModelFileError.sizeMismatch(path: path, tensor: name, expectedBytes: expected, foundBytes: end - start)
        }
        return SafeTensorsEntry(name: name, dtype: dtype, shape: shape, dataRange: start..<end)
    }

    /// Checks the tensors against the data section: a file merely cut short (its tensors tile a data section longer
    /// than what is there) is reported as truncated, naming the first tensor cut off; otherwise a tensor reaching
    /// past the end has bad offsets; overlapping tensors are rejected.
    private static func checkLayout(_ entries: [SafeTensorsEntry], path: String, dataSize: Int) throws {
        let sorted = entries.sorted {
            ($0.dataRange.lowerBound, $0.dataRange.upperBound) < ($1.dataRange.lowerBound, $1.dataRange.upperBound)
        }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.dataRange.lowerBound < a.dataRange.upperBound {
            throw ModelFileError.overlappingTensors(path: path, first: a.name, second: b.name)
        }
        guard let last = sorted.last, last.dataRange.upperBound > dataSize else { return }
        var tiles = sorted.first?.dataRange.lowerBound == 0
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.dataRange.upperBound != b.dataRange.lowerBound { tiles = false }
        let cut = sorted.first { $0.dataRange.upperBound > dataSize }!
        if tiles {
            throw ModelFileError.truncated(
                path: path,
                detail: "the header describes \(last.dataRange.upperBound) data bytes but the file holds \(dataSize); "
                    + "tensor '\(cut.name)' (bytes \(cut.dataRange.lowerBound)..<\(cut.dataRange.upperBound)) is cut off")
        }
        throw ModelFileError.offsetsOutOfRange(path: path, tensor: cut.name, start: cut.dataRange.lowerBound,
                                               end: cut.dataRange.upperBound, dataSize: dataSize)
    }

    /// Names in header order.
    public var names: [String] { entries.map(\.name) }

    /// The entry for `name`, or nil.
    public func entry(named name: String) -> SafeTensorsEntry? { index[name].map { entries[$0] } }

    /// The tensor `name` as a view into the mapped file.
    public func tensor(named name: String) throws -> Tensor {
        guard let e = entry(named: name) else { throw ModelFileError.missingTensor(name: name, location: path) }
        let view = UnsafeRawBufferPointer(rebasing: file.bytes[(dataStart + e.dataRange.lowerBound)..<(dataStart + e.dataRange.upperBound)])
        return Tensor(shape: e.shape, dtype: e.dtype, storage: TensorStorage(view: view, owner: file))
    }
}
