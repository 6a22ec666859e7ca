import Dispatch
import Tensors

/// Why a tensor could not be quantized.
public enum QuantizationError: Error, CustomStringConvertible, Equatable {
    case invalidBlocksize(Int)
    case unsupportedDType(DType)

    public var description: String {
        switch self {
        case .invalidBlocksize(let b):
            return "blocksize \(b) is not supported: use a power of two from 32 to 4096 (bitsandbytes' sizes)"
        case .unsupportedDType(let d):
            return "cannot quantize a \(d.rawValue) tensor: only F32, F16 and BF16 weights can be quantized"
        }
    }
}

/// How the per-block scales of a 4-bit tensor are stored.
public enum BlockScales: Sendable, Equatable {
    /// One float32 absmax per block.
    case float32([Float])
    /// Double-quantized absmax values.
    case doubleQuantized(DoubleQuantizedScales)

    /// The float32 absmax of each block, as the dequantizer uses it.
    public func absmax() -> [Float] {
        switch self {
        case .float32(let a): return a
        case .doubleQuantized(let d): return d.decompressed()
        }
    }
}

/// A tensor in bitsandbytes' blockwise 4-bit format: the flattened values cut into blocks of `blocksize`, each
/// scaled by the (GPU's approximate) reciprocal of its largest magnitude and mapped to a 4-bit code, two codes a byte (element 2j in the
/// high nibble, 2j+1 in the low one). A ragged last block is padded with zeros; an all-zero block scales to NaN and
/// gets code 0, as in bitsandbytes' kernel.
public struct Quantized4BitTensor: Sendable, Equatable {
    /// NF4 or FP4.
    public var quantType: QuantType
    /// Values per block.
    public var blocksize: Int
    /// Shape of the original tensor.
    public var shape: [Int]
    /// Element type of the original tensor (and of the dequantized one).
    public var dtype: DType
    /// `(elementCount + 1) / 2` bytes of packed codes.
    public var packed: [UInt8]
    /// The absmax of each block.
    public var scales: BlockScales

    /// Memberwise.
    public init(quantType: QuantType, blocksize: Int, shape: [Int], dtype: DType, packed: [UInt8], scales: BlockScales) {
        self.quantType = quantType
        self.blocksize = blocksize
        self.shape = shape
        self.dtype = dtype
        self.packed = packed
        self.scales = scales
    }

    /// Number of elements of the original tensor.
    public var elementCount: Int { shape.reduce(1, *) }
    /// Number of blocks.
    public var blockCount: Int { (elementCount + blocksize - 1) / blocksize }

    /// True when the blocksize is one bitsandbytes supports.
    public static func isSupported(blocksize: Int) -> Bool {
        blocksize >= 32 && blocksize <= 4096 && blocksize & (blocksize - 1) == 0
    }

    /// Quantizes `tensor` (F32, F16 or BF16) exactly as bitsandbytes' `quantize_4bit` does; with `doubleQuant` the
    /// absmax values are compressed as `compress_statistics=True` does (mean removed, 8-bit blocks of 256).
    public init(quantizing tensor: Tensor, type: QuantType, blocksize: Int = 64, doubleQuant: Bool) throws {
        guard Self.isSupported(blocksize: blocksize) else { throw QuantizationError.invalidBlocksize(blocksize) }
        guard tensor.dtype.isFloatingPoint else { throw QuantizationError.unsupportedDType(tensor.dtype) }
        let n = tensor.elementCount
        let blockCount = (n + blocksize - 1) / blocksize
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        var absmax = [Float](repeating: 0, count: blockCount)
        tensor.withUnsafeBytes { input in
            packed.withUnsafeMutableBufferPointer { packedOut in
                absmax.withUnsafeMutableBufferPointer { absmaxOut in
                    let job = QuantizeJob(input: input, dtype: tensor.dtype, count: n, blocksize: blocksize,
                                          type: type, packed: packedOut, absmax: absmaxOut)
                    job.run()
                }
            }
        }
        self.init(quantType: type, blocksize: blocksize, shape: tensor.shape, dtype: tensor.dtype, packed: packed,
                  scales: doubleQuant ? .doubleQuantized(DoubleQuantizedScales(compressing: absmax)) : .float32(absmax))
    }

    /// The float32 values the codes stand for: `dequantizationTable[code] * absmax[block]` (the float product,
    /// before any rounding to `dtype`).
    public func dequantizedFloat32() -> [Float] {
        let n = elementCount
        var out = [Float](repeating: 0, count: n)
        let absmax = scales.absmax()
        let book = quantType.dequantizationTable
        let blocksize = self.blocksize
        packed.withUnsafeBufferPointer { p in
            out.withUnsafeMutableBufferPointer { o in
                absmax.withUnsafeBufferPointer { a in
                    book.withUnsafeBufferPointer { c in
                        parallelChunks(count: (n + 1) / 2, grain: 1 << 16) { range in
                            for j in range {
                                let byte = p[j]
                                let i = 2 * j
                                o[i] = c[Int(byte >> 4)] * a[i / blocksize]
                                if i + 1 < n { o[i + 1] = c[Int(byte & 0x0F)] * a[(i + 1) / blocksize] }
                            }
                        }
                    }
                }
            }
        }
        return out
    }

    /// The dequantized tensor in the original dtype, as bitsandbytes' `dequantize_4bit` returns it (each float32
    /// product rounded to nearest even).
    public func dequantized() -> Tensor {
        Tensor(dequantizedFloat32(), shape: shape, dtype: dtype)
    }
}

/// The quantization loop over raw input bytes, split into independent runs of whole blocks.
private struct QuantizeJob {
    let input: UnsafeRawBufferPointer
    let dtype: DType
    let count: Int
    let blocksize: Int
    let type: QuantType
    let packed: UnsafeMutableBufferPointer<UInt8>
    let absmax: UnsafeMutableBufferPointer<Float>

    func run() {
        let blockCount = absmax.count
        let blocksPerChunk = max(1, (1 << 16) / blocksize)
        parallelChunks(count: blockCount, grain: blocksPerChunk) { blocks in
            var scratch = [Float](repeating: 0, count: blocksize)
            scratch.withUnsafeMutableBufferPointer { s in
                for b in blocks { quantizeBlock(b, scratch: s) }
            }
        }
    }

    /// Loads block `b` as float32 (zero-padded past the end), finds its absmax and writes its codes.
    @inline(__always)
    private func quantizeBlock(_ b: Int, scratch s: UnsafeMutableBufferPointer<Float>) {
        let start = b * blocksize
        let valid = min(blocksize, count - start)
        load(start, valid, into: s)
        for i in valid..<blocksize { s[i] = 0 }
        var maxMagnitude: Float = 0
        for i in 0..<blocksize { maxMagnitude = max(maxMagnitude, abs(s[i])) }
        absmax[b] = maxMagnitude
        let scale = GPUReciprocal.reciprocal(maxMagnitude)
        let byteStart = start / 2
        let byteCount = (valid + 1) / 2
        switch type {
        case .nf4:
            for j in 0..<byteCount {
                packed[byteStart + j] = NF4.code(for: s[2 * j] * scale) << 4 | NF4.code(for: s[2 * j + 1] * scale)
            }
        case .fp4:
            for j in 0..<byteCount {
                packed[byteStart + j] = FP4.code(for: GPUReciprocal.flushToZero(s[2 * j] * scale)) << 4
                    | FP4.code(for: GPUReciprocal.flushToZero(s[2 * j + 1] * scale))
            }
        }
    }

    @inline(__always)
    private func load(_ start: Int, _ valid: Int, into s: UnsafeMutableBufferPointer<Float>) {
        switch dtype {
        case .f32:
            for i in 0..<valid { s[i] = input.loadUnaligned(fromByteOffset: (start + i) * 4, as: Float.self) }
        case .bf16:
            for i in 0..<valid {
                s[i] = float(fromBF16: input.loadUnaligned(fromByteOffset: (start + i) * 2, as: UInt16.self))
            }
        case .f16:
            for i in 0..<valid {
                s[i] = float(fromF16: input.loadUnaligned(fromByteOffset: (start + i) * 2, as: UInt16.self))
            }
        default:
            preconditionFailure("checked by the initializer")
        }
    }
}
