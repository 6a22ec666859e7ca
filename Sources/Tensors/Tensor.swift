/// An n-dimensional array: a shape, an element type and contiguous row-major storage.
///
/// A tensor read from a file is a view into the mapped file (no copy); one made in memory owns its bytes.
public struct Tensor: @unchecked Sendable {
    /// Extent of each dimension, outermost first.
    public let shape: [Int]
    /// Element type.
    public let dtype: DType
    /// The bytes, `elementCount * dtype.byteSize` of them.
    public let storage: TensorStorage

    /// Number of elements (1 for a scalar of shape `[]`).
    public var elementCount: Int { shape.reduce(1, *) }
    /// Number of bytes.
    public var byteCount: Int { storage.bytes.count }

    /// Wraps existing storage; the caller guarantees it holds exactly `shape` elements of `dtype`.
    public init(shape: [Int], dtype: DType, storage: TensorStorage) {
        precondition(storage.bytes.count == shape.reduce(1, *) * dtype.byteSize, "storage size does not match shape")
        self.shape = shape
        self.dtype = dtype
        self.storage = storage
    }

    /// A zero-filled tensor.
    public init(zeros shape: [Int], dtype: DType) {
        self.init(shape: shape, dtype: dtype,
                  storage: TensorStorage(zeroedByteCount: shape.reduce(1, *) * dtype.byteSize))
    }

    /// A tensor holding `values` converted to `dtype` (f32, f16 or bf16; rounding to nearest even).
    public init(_ values: [Float], shape: [Int], dtype: DType = .f32) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values for shape \(shape)")
        self.init(zeros: shape, dtype: dtype)
        let out = storage.bytes
        switch dtype {
        case .f32:
            values.withUnsafeBytes { out.copyMemory(from: $0) }
        case .bf16:
            let p = out.bindMemory(to: UInt16.self)
            for i in values.indices { p[i] = bf16Bits(from: values[i]) }
        case .f16:
            let p = out.bindMemory(to: UInt16.self)
            for i in values.indices { p[i] = f16Bits(from: values[i]) }
        default:
            preconditionFailure("Tensor(_: [Float]) makes floating-point tensors only, not \(dtype)")
        }
    }

    /// A tensor holding a copy of `values` with element type `dtype` (whose size must be `T`'s).
    public init<T>(copying values: [T], shape: [Int], dtype: DType) {
        precondition(MemoryLayout<T>.stride == dtype.byteSize && values.count == shape.reduce(1, *))
        self.init(zeros: shape, dtype: dtype)
        let out = storage.bytes
        values.withUnsafeBytes { out.copyMemory(from: $0) }
    }

    /// Calls `body` with the raw bytes.
    @inlinable
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(storage.bytes))
    }

    /// The elements as float32 (exact for f32, f16, bf16; converted for integers). Reads unaligned storage safely.
    public func floats() -> [Float] {
        let n = elementCount
        return withUnsafeBytes { raw -> [Float] in
            switch dtype {
            case .f32: return (0..<n).map { raw.loadUnaligned(fromByteOffset: $0 * 4, as: Float.self) }
            case .bf16: return (0..<n).map { float(fromBF16: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) }
            case .f16: return (0..<n).map { float(fromF16: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) }
            case .u8: return raw.prefix(n).map { Float($0) }
            case .i32: return (0..<n).map { Float(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            case .i64: return (0..<n).map { Float(raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            }
        }
    }

    /// The elements of an integer tensor (U8, I32, I64) as Int.
    public func integers() -> [Int] {
        let n = elementCount
        return withUnsafeBytes { raw -> [Int] in
            switch dtype {
            case .u8: return raw.prefix(n).map { Int($0) }
            case .i32: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
            case .i64: return (0..<n).map { Int(raw.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
            default: preconditionFailure("integers() of a \(dtype) tensor")
            }
        }
    }

    /// The raw bytes as an array (for comparisons and small tensors).
    public func bytesArray() -> [UInt8] { withUnsafeBytes { Array($0) } }

    /// The same bytes seen with another shape of equal element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        Tensor(shape: newShape, dtype: dtype, storage: storage)
    }
}
