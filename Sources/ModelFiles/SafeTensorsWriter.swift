import Tensors

/// Writes safetensors files laid out as the reference (Rust) implementation lays them out, so a file we write is
/// byte-identical to one transformers writes with the same tensors: tensors ordered by dtype alignment (largest
/// first) then by name, a compact JSON header with `__metadata__` first, padded with spaces to a multiple of 8.
public enum SafeTensorsWriter {
    /// Writes `tensors` (names must be unique) with optional `metadata` to `path`, atomically.
    public static func write(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String]? = ["format": "pt"],
                             to path: String) throws {
        var seen = Set<String>()
        for (name, _) in tensors where !seen.insert(name).inserted {
            throw ModelFileError.writeFailed(path: path, reason: "tensor name '\(name)' appears twice")
        }
        let ordered = tensors.sorted { a, b in
            let ra = layoutRank(a.tensor.dtype), rb = layoutRank(b.tensor.dtype)
            if ra != rb { return ra > rb }
            return Array(a.name.utf8).lexicographicallyPrecedes(Array(b.name.utf8))
        }
        var pairs: [(String, JSONValue)] = []
        if let metadata {
            pairs.append(("__metadata__", .object(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        }
        var offset = 0
        for (name, tensor) in ordered {
            let end = offset + tensor.byteCount
            pairs.append((name, .object([
                ("dtype", .string(tensor.dtype.rawValue)),
                ("shape", .array(tensor.shape.map { .int($0) })),
                ("data_offsets", .array([.int(offset), .int(end)])),
            ])))
            offset = end
        }
        var header = Array(JSONValue.object(pairs).compactText().utf8)
        header.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - header.count % 8) % 8))
        try AtomicFile.write(to: path) { emit in
            var length = UInt64(header.count).littleEndian
            try withUnsafeBytes(of: &length) { try emit($0) }
            try header.withUnsafeBytes { try emit($0) }
            for (_, tensor) in ordered where tensor.byteCount > 0 {
                try tensor.withUnsafeBytes { try emit($0) }
            }
        }
    }

    /// Position of a dtype in safetensors' `Dtype` enum (BOOL, F4, F6, U8, I8, F8, I16, U16, F16, BF16, I32, U32,
    /// F32, F64, I64, U64), which orders the data section.
    static func layoutRank(_ dtype: DType) -> Int {
        switch dtype {
        case .u8: return 4
        case .f16: return 11
        case .bf16: return 12
        case .i32: return 13
        case .f32: return 15
        case .i64: return 17
        }
    }
}
