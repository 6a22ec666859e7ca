import Tensors

/// One tensor of a GGUF file to be written: its llama.cpp name, row-major shape (outermost first, as PyTorch
/// writes it; the file stores the reverse) and storage type.
public struct GGUFTensorPlan: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let type: GGMLType

    public init(name: String, shape: [Int], type: GGMLType) {
        self.name = name; self.shape = shape; self.type = type
    }

    /// Values in the tensor.
    public var elementCount: Int { shape.reduce(1, *) }

    /// Bytes of stored data.
    public var byteCount: Int { elementCount / type.blockSize * type.blockByteCount }
}

/// Writes GGUF version 3 files (the layout `GGUFFile` reads): header, metadata, tensor table, padding to the
/// alignment, then each tensor's data at an aligned offset. The file is written under a temporary name and renamed
/// (`AtomicFile`), and tensors are produced one at a time, so memory holds one tensor whatever the model's size.
public enum GGUFWriter {
    /// Writes `metadata` (in order) and the tensors of `plan`, asking `data(i)` for the stored bytes of tensor `i`
    /// (exactly `plan[i].byteCount` of them, e.g. from `GGMLType.encode`). `general.alignment`, when in
    /// `metadata`, must equal `alignment`.
    public static func write(to path: String, metadata: [(String, GGUFValue)], tensors plan: [GGUFTensorPlan],
                             alignment: Int = GGUFFile.defaultAlignment,
                             data: (Int) throws -> [UInt8]) throws {
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw ModelFileError.writeFailed(path: path, reason: "alignment \(alignment) is not a power of two")
        }
        if let stated = metadata.first(where: { $0.0 == "general.alignment" })?.1.int, stated != alignment {
            throw ModelFileError.writeFailed(path: path, reason: "general.alignment \(stated) but writing with "
                                             + "\(alignment)")
        }
        var seen = Set<String>()
        for (key, _) in metadata where !seen.insert(key).inserted {
            throw ModelFileError.writeFailed(path: path, reason: "metadata key '\(key)' given twice")
        }
        seen = []
        for t in plan {
            guard seen.insert(t.name).inserted else {
                throw ModelFileError.writeFailed(path: path, reason: "tensor '\(t.name)' given twice")
            }
            guard (1...GGUFFile.maximumDimensionCount).contains(t.shape.count), t.shape.allSatisfy({ $0 >= 0 }),
                  (t.shape.last ?? 0) % t.type.blockSize == 0 else {
                throw ModelFileError.writeFailed(path: path, reason: "tensor '\(t.name)' of shape \(t.shape) cannot "
                                                 + "be stored as \(t.type.name)")
            }
        }
        func alignUp(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }

        var header = GGUFEncoder()
        header.bytes(Array("GGUF".utf8))
        header.integer(UInt32(3))
        header.integer(UInt64(plan.count))
        header.integer(UInt64(metadata.count))
        for (key, value) in metadata {
            header.string(key)
            header.integer(value.type.rawValue)
            header.value(value)
        }
        var offset = 0
        for t in plan {
            header.string(t.name)
            header.integer(UInt32(t.shape.count))
            for extent in t.shape.reversed() { header.integer(UInt64(extent)) }
            header.integer(t.type.rawValue)
            header.integer(UInt64(offset))
            offset = alignUp(offset + t.byteCount)
        }
        header.bytes([UInt8](repeating: 0, count: alignUp(header.output.count) - header.output.count))

        try AtomicFile.write(to: path) { emit in
            try header.output.withUnsafeBytes { try emit($0) }
            for (i, t) in plan.enumerated() {
                let bytes = try data(i)
                guard bytes.count == t.byteCount else {
                    throw ModelFileError.writeFailed(path: path, reason: "tensor '\(t.name)' came with "
                                                     + "\(bytes.count) bytes, expected \(t.byteCount)")
                }
                try bytes.withUnsafeBytes { try emit($0) }
                let padding = alignUp(t.byteCount) - t.byteCount
                if padding > 0 {
                    try [UInt8](repeating: 0, count: padding).withUnsafeBytes { try emit($0) }
                }
            }
        }
    }
}

/// Little-endian serialization of GGUF header fields.
struct GGUFEncoder {
    var output: [UInt8] = []

    mutating func bytes(_ b: [UInt8]) { output.append(contentsOf: b) }

    mutating func integer<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { output.append(contentsOf: $0) }
    }

    mutating func string(_ s: String) {
        integer(UInt64(s.utf8.count))
        output.append(contentsOf: s.utf8)
    }

    mutating func value(_ v: GGUFValue) {
        switch v {
        case .uint8(let x): integer(x)
        case .int8(let x): integer(x)
        case .uint16(let x): integer(x)
        case .int16(let x): integer(x)
        case .uint32(let x): integer(x)
        case .int32(let x): integer(x)
        case .uint64(let x): integer(x)
        case .int64(let x): integer(x)
        case .float32(let x): integer(x.bitPattern)
        case .float64(let x): integer(x.bitPattern)
        case .bool(let b): integer(UInt8(b ? 1 : 0))
        case .string(let s): string(s)
        case .array(let type, let items):
            integer(type.rawValue)
            integer(UInt64(items.count))
            for item in items { value(item) }
        }
    }
}

/// Values that a ggml type cannot store as given (a type this writer lacks, or a count that is not whole blocks).
public struct GGUFEncodingError: Error, CustomStringConvertible, Equatable {
    public let description: String
}

extension GGMLType {
    /// The types `encode` writes.
    public static let encodable: [GGMLType] = [.f32, .f16, .bf16, .q8_0]

    /// `values` stored as this type: F32 as is, F16 and BF16 rounded to nearest even, Q8_0 in blocks of 32 (an
    /// f16 scale d = max|x| / 127 and 32 signed bytes round(x / d), rounded half away from zero, as llama.cpp's
    /// reference quantizer and the gguf Python package compute it, in float32).
    public func encode(_ values: [Float]) throws -> [UInt8] {
        guard Self.encodable.contains(self) else {
            throw GGUFEncodingError(description: "writing ggml type \(name) is not supported (supported: "
                                    + Self.encodable.map(\.name).joined(separator: ", ") + ")")
        }
        guard values.count % blockSize == 0 else {
            throw GGUFEncodingError(description: "\(values.count) values do not fill whole \(name) blocks of "
                                    + "\(blockSize)")
        }
        // A value past the type's range was stored as infinity (merged f16 weights beyond 65504; a Q8_0 block
        // whose f16 scale max|x| / 127 overflows), and NaN as NaN: llama.cpp then computes nan logits.
        let largest: Float = switch self {
        case .f16: 65504
        case .bf16: 3.3895314e38
        case .q8_0: 65504 * 127
        default: .greatestFiniteMagnitude
        }
        if let bad = values.firstIndex(where: { !(abs($0) <= largest) }) {
            throw GGUFEncodingError(description: "value \(bad) is \(values[bad]), which \(name) cannot store "
                                    + "(largest magnitude \(largest))")
        }
        var out = [UInt8](repeating: 0, count: values.count / blockSize * blockByteCount)
        guard !values.isEmpty else { return out }
        values.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBytes { raw in
                let o = raw.baseAddress!
                func store16(_ bits: UInt16, at byte: Int) { o.storeBytes(of: bits.littleEndian, toByteOffset: byte,
                                                                          as: UInt16.self) }
                switch self {
                case .f32:
                    for i in 0..<x.count { o.storeBytes(of: x[i].bitPattern.littleEndian, toByteOffset: 4 * i,
                                                        as: UInt32.self) }
                case .f16:
                    for i in 0..<x.count { store16(f16Bits(from: x[i]), at: 2 * i) }
                case .bf16:
                    for i in 0..<x.count { store16(bf16Bits(from: x[i]), at: 2 * i) }
                case .q8_0:
                    for block in 0..<(x.count / 32) {
                        let start = block * 32, at = block * 34
                        var amax: Float = 0
                        for i in start..<(start + 32) { amax = max(amax, abs(x[i])) }
                        let d = amax / 127
                        let inverse: Float = d == 0 ? 0 : 1 / d
                        store16(f16Bits(from: d), at: at)
                        for i in 0..<32 {
                            let scaled = x[start + i] * inverse
                            let rounded = (abs(scaled) + 0.5).rounded(.down)
                            let q = max(-127, min(127, scaled < 0 ? -rounded : rounded))
                            o.storeBytes(of: Int8(q.isFinite ? q : 0), toByteOffset: at + 2 + i, as: Int8.self)
                        }
                    }
                default: break
                }
            }
        }
        return out
    }
}
