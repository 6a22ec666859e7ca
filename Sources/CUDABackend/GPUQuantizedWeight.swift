import Foundation
import Quantization
import Tensors

/// A frozen 4-bit weight on the GPU, stored as bitsandbytes stores it (packed codes; absmax in float32 or double
/// quantized) and dequantized into a scratch buffer of the compute type when a product needs it.
public final class GPUQuantizedWeight: @unchecked Sendable {
    /// (out, in).
    public let rows: Int, columns: Int
    public let blocksize: Int
    let packed: DeviceBuffer
    let table: DeviceBuffer                  // 16 dequantization values
    private(set) var absmax: DeviceBuffer?   // float32 scales, when not double quantized
    private(set) var codes: DeviceBuffer?    // double quantization: 8-bit codes, nested absmax, nested code book
    private(set) var nestedAbsmax: DeviceBuffer?
    private(set) var nestedCode: DeviceBuffer?
    private(set) var offset: Float
    private(set) var nestedBlocksize: Int
    let device: CUDADevice

    /// Uploads a quantized tensor of shape (out, in).
    public init(_ q: Quantized4BitTensor, device: CUDADevice) throws {
        precondition(q.shape.count == 2)
        self.device = device
        rows = q.shape[0]; columns = q.shape[1]; blocksize = q.blocksize
        packed = try device.upload(q.packed)
        table = try device.upload(q.quantType.dequantizationTable)
        switch q.scales {
        case .float32(let a):
            absmax = try device.upload(a); codes = nil; nestedAbsmax = nil; nestedCode = nil; offset = 0; nestedBlocksize = 256
        case .doubleQuantized(let d):
            absmax = nil
            codes = try device.upload(d.codes)
            nestedAbsmax = try device.upload(d.nestedAbsmax)
            nestedCode = try device.upload(d.nestedCodeBook)
            offset = d.offset; nestedBlocksize = d.nestedBlocksize
        }
    }

    /// Quantizes `x` (f32 or bf16 values of an (out, in) weight, already on the GPU) in place of the host, with
    /// float32 absmax: bit-exact with `Quantized4BitTensor(quantizing:)`. Double quantization is then
    /// `doubleQuantize`, in batches (`doubleQuantize(_:)` on many weights at once): it runs on the host, since the
    /// mean must follow the GPU reduction order of `GPUMean`, and only the small absmax travels.
    public init(quantizing x: DeviceBuffer, rows: Int, columns: Int, type: QuantType, blocksize: Int,
                device: CUDADevice) throws {
        precondition(x.count == rows * columns)
        self.device = device
        self.rows = rows; self.columns = columns; self.blocksize = blocksize
        let (packed, absmax) = try device.quantize4BitOnDevice(x, type: type, blocksize: blocksize)
        self.packed = packed
        table = try device.upload(type.dequantizationTable)
        self.absmax = absmax; codes = nil; nestedAbsmax = nil; nestedCode = nil; offset = 0; nestedBlocksize = 256
    }

    /// Replaces the float32 absmax of each weight by its double quantization, computed on the host cores in
    /// parallel (the same values as `DoubleQuantizedScales(compressing:)` one by one).
    public static func doubleQuantize(_ weights: [GPUQuantizedWeight]) throws {
        let absmax = try weights.map { try $0.device.download($0.absmax!) }
        var scales = [DoubleQuantizedScales?](repeating: nil, count: weights.count)
        scales.withUnsafeMutableBufferPointer { out in
            DispatchQueue.concurrentPerform(iterations: weights.count) {
                out[$0] = DoubleQuantizedScales(compressing: absmax[$0])
            }
        }
        for (w, d) in zip(weights, scales) {
            w.codes = try w.device.upload(d!.codes)
            w.nestedAbsmax = try w.device.upload(d!.nestedAbsmax)
            w.nestedCode = try w.device.upload(d!.nestedCodeBook)
            w.offset = d!.offset; w.nestedBlocksize = d!.nestedBlocksize
            w.absmax = nil
        }
    }

    /// The weight as a host `Quantized4BitTensor` (for checks: the same bytes the CPU quantizer makes).
    public func hostCopy(type: QuantType, dtype: DType) throws -> Quantized4BitTensor {
        let scales: BlockScales
        if let absmax {
            scales = .float32(try device.download(absmax))
        } else {
            scales = .doubleQuantized(DoubleQuantizedScales(
                codes: try device.downloadBytes(codes!), nestedAbsmax: try device.download(nestedAbsmax!),
                offset: offset,
                nestedBlocksize: nestedBlocksize, nestedCodeBook: try device.download(nestedCode!)))
        }
        return Quantized4BitTensor(quantType: type, blocksize: blocksize, shape: [rows, columns], dtype: dtype,
                                   packed: try device.downloadBytes(packed), scales: scales)
    }

    /// A random NF4 weight with double-quantized scales, made on the GPU (the benchmark's model): uniform codes,
    /// and scales near `scale` so the weights have about the spread of a trained model's.
    public init(randomRows rows: Int, columns: Int, blocksize: Int = 64, scale: Float, seed: UInt64, device: CUDADevice) throws {
        self.device = device
        self.rows = rows; self.columns = columns; self.blocksize = blocksize
        let n = rows * columns
        packed = try device.allocate((n + 1) / 2, .u8)
        try device.fillRandomBytes(packed, seed: seed)
        table = try device.upload(QuantType.nf4.dequantizationTable)
        let blocks = (n + blocksize - 1) / blocksize
        absmax = nil
        codes = try device.allocate(blocks, .u8)
        try device.fillRandomBytes(codes!, seed: seed &+ 1)
        nestedBlocksize = 256
        nestedAbsmax = try device.upload([Float](repeating: scale / 4, count: (blocks + 255) / 256))
        nestedCode = try device.upload(DynamicMap.signed)
        offset = scale
    }

    /// Bytes held on the GPU.
    public var bytes: Int { packed.bytes + (absmax?.bytes ?? 0) + (codes?.bytes ?? 0) + (nestedAbsmax?.bytes ?? 0) }

    /// Elements the packed codes stand for, as bitsandbytes' Params4bit counts them (packed bytes × 2).
    public var parameterCount: Int { packed.count * 2 }

    /// W (out, in) dequantized into a new buffer of `dtype` (one kernel; a double-quantized absmax is decoded there),
    /// its rows `ld` elements apart (default: in). The columns past in are filled in the same launch when
    /// `beside` gives an adapter's B (out, r, of `dtype`) and its slot: zeros, but for the r columns from
    /// in + slot·r on, which hold B, so that [x | z0 z1 ... | 0] W'^T = x W^T + z_slot B^T; without it they are
    /// left as they are.
    public func dequantized(_ dtype: GPUDType, ld: Int? = nil,
                            beside: (b: DeviceBuffer, slot: Int, r: Int)? = nil) throws -> DeviceBuffer {
        let n = rows * columns, ld = ld ?? columns
        precondition(ld >= columns, "dequantized: row stride \(ld) below \(columns) columns")
        if let beside {
            precondition(beside.b.dtype == dtype && beside.b.count >= rows * beside.r && beside.slot >= 0
                         && ld >= columns + (beside.slot + 1) * beside.r, "dequantized: B does not fit beside W")
        }
        let out = try device.allocate(rows * ld, dtype)
        func address(_ b: DeviceBuffer?) -> KernelArgument { .address(b?.address ?? 0) }
        // 256 threads a block: 8 warps of DQ_SPANS · DQ_SPAN (4 · 1024) elements each, then a thread per padding
        // element.
        let spanBlocks = (n + 8 * 4096 - 1) / (8 * 4096)
        let padBlocks = beside == nil ? 0 : (rows * (ld - columns) + 255) / 256
        try device.launch(.quantize, "dequantize_4bit", bf16: dtype == .bf16, grid: spanBlocks + padBlocks,
                          block: 256,
                          [.buffer(out), .buffer(packed), address(absmax), address(codes), address(nestedAbsmax),
                           address(nestedCode), .float(offset), .int(nestedBlocksize), .buffer(table), .long(n),
                           .int(blocksize), .int(columns), .int(ld), address(beside?.b), .int(beside?.slot ?? 0),
                           .int(beside?.r ?? 0), .int(rows)])
        return out
    }
}

extension CUDADevice {
    /// Quantizes x (f32 or bf16 values) to 4 bits on the GPU: the packed codes and the float32 absmax per block,
    /// bit-exact with bitsandbytes. (Double quantization of the small absmax array is done on the host by
    /// `DoubleQuantizedScales`, which needs the GPU mean's exact reduction order anyway.)
    public func quantize4Bit(_ x: DeviceBuffer, type: QuantType, blocksize: Int) throws -> (packed: [UInt8], absmax: [Float]) {
        let (packed, absmax) = try quantize4BitOnDevice(x, type: type, blocksize: blocksize)
        return (try downloadBytes(packed), try download(absmax))
    }

    /// `quantize4Bit` with the packed codes (u8) and float32 absmax left on the GPU.
    public func quantize4BitOnDevice(_ x: DeviceBuffer, type: QuantType,
                                     blocksize: Int) throws -> (packed: DeviceBuffer, absmax: DeviceBuffer) {
        let n = x.count
        let blocks = (n + blocksize - 1) / blocksize
        let packed = try allocate((n + 1) / 2, .u8), absmax = try allocate(blocks, .f32)
        try launch(.quantize, "quantize_4bit", bf16: x.dtype == .bf16, grid: blocks, block: min(1024, max(32, blocksize / 2)),
                   [.buffer(packed), .buffer(absmax), .buffer(x), .long(n), .int(blocksize), .int(type == .fp4 ? 1 : 0)])
        return (packed, absmax)
    }

    /// A file's floating-point tensor on the GPU as f32 or bf16 values: its bytes as they are when the file's type is
    /// one of those (a view into a mapped file is read straight from there), else widened to float32 on the host.
    public func upload(_ t: Tensor) throws -> DeviceBuffer {
        switch t.dtype {
        case .f32, .bf16:
            let b = try allocate(t.elementCount, t.dtype == .f32 ? .f32 : .bf16)
            try t.withUnsafeBytes { try copy(bytes: $0, to: b.address) }
            return b
        default:
            return try upload(t.floats())
        }
    }

    /// `t` on the GPU as `dtype` (f32 or bf16): uploaded as it is, then cast on the GPU (round to nearest even)
    /// when its type differs.
    public func upload(_ t: Tensor, as dtype: GPUDType) throws -> DeviceBuffer {
        let raw = try upload(t)
        guard raw.dtype != dtype else { return raw }
        let out = try allocate(raw.count, dtype)
        try cast(out, from: raw)
        return out
    }
}
