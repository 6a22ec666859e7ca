import Dispatch

/// The storage types of ggml tensors, numbered as in ggml's `enum ggml_type` (the numbers a GGUF tensor table
/// holds). Every type a current GGUF file may contain is listed so that the file can be opened and sized; those
/// with `isDequantizable` can also be read as float32.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39, nvfp4 = 40, q1_0 = 41

    /// ggml's name for the type (`Q4_K`, `BF16`).
    public var name: String { String(describing: self).uppercased() }

    /// Values per block (1 for the plain element types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .iq4_nl, .mxfp4: return 32
        case .nvfp4: return 64
        case .q1_0: return 128
        default: return 256
        }
    }

    /// Bytes per block (ggml's `type_size`).
    public var blockByteCount: Int {
        switch self {
        case .i8: return 1
        case .f16, .bf16, .i16: return 2
        case .f32, .i32: return 4
        case .f64, .i64: return 8
        case .q4_0, .iq4_nl: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .mxfp4: return 17
        case .nvfp4: return 36
        case .q1_0: return 18
        case .q2_K: return 84
        case .q3_K, .iq3_s: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        case .iq2_xxs, .tq2_0: return 66
        case .iq2_xs: return 74
        case .iq3_xxs: return 98
        case .iq1_s: return 50
        case .iq2_s: return 82
        case .iq4_xs: return 136
        case .iq1_m: return 56
        case .tq1_0: return 54
        }
    }

    /// True when `dequantize(_:into:)` decodes this type.
    public var isDequantizable: Bool { decoder != nil }

    /// Decodes whole blocks of this type into float32: `data` holds `out.count / blockSize` blocks.
    ///
    /// Each value is computed as ggml's reference `dequantize_row_*` computes it, in float32 and in the same order
    /// of operations, so the results equal llama.cpp's plain C path. Large inputs are split across threads.
    public func dequantize(_ data: UnsafeRawBufferPointer, into out: UnsafeMutableBufferPointer<Float>) {
        guard let decode = decoder else { preconditionFailure("ggml type \(name) cannot be dequantized") }
        let blocks = out.count / blockSize
        precondition(out.count % blockSize == 0 && data.count == blocks * blockByteCount,
                     "\(data.count) bytes of \(name) for \(out.count) values")
        guard blocks > 0 else { return }
        let source = data.baseAddress!, destination = out.baseAddress!
        let blocksPerChunk = max(1, 65_536 / blockSize)
        let chunks = (blocks + blocksPerChunk - 1) / blocksPerChunk
        let (inStride, outStride) = (blockByteCount, blockSize)
        if chunks == 1 {
            decode(source, destination, blocks)
            return
        }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let first = c * blocksPerChunk
            let count = min(blocksPerChunk, blocks - first)
            decode(source + first * inStride, destination + first * outStride, count)
        }
    }

    /// The decoder of this type, which reads `blocks` consecutive blocks and writes their values, or nil.
    private var decoder: ((UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void)? {
        switch self {
        case .f32: return decodeF32
        case .f16: return decodeF16
        case .bf16: return decodeBF16
        case .q4_0: return decodeQ4_0
        case .q4_1: return decodeQ4_1
        case .q8_0: return decodeQ8_0
        case .q4_K: return decodeQ4_K
        case .q5_K: return decodeQ5_K
        case .q6_K: return decodeQ6_K
        default: return nil
        }
    }
}

// MARK: - Block decoders
//
// Block layouts follow ggml-common.h; all multi-byte fields are little-endian and 16-bit scales are IEEE half
// precision. Names follow ggml's: d is a block's scale, m or dmin its minimum, qs the packed quants.

@inline(__always)
private func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
}

private func decodeF32(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)))
    }
}

private func decodeF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count { dst[i] = half(src, 2 * i) }
}

private func decodeBF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count {
        dst[i] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
    }
}

/// Q4_0, 32 values in 18 bytes: d (f16), then 16 bytes whose low nibbles are values 0-15 and high nibbles values
/// 16-31; x = (q - 8)·d.
private func decodeQ4_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 18 * b, y = dst + 32 * b
        let d = half(block, 0)
        let qs = (block + 2).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(Int(qs[j] & 0x0F) - 8) * d
            y[j + 16] = Float(Int(qs[j] >> 4) - 8) * d
        }
    }
}

/// Q4_1, 32 values in 20 bytes: d (f16), m (f16), 16 nibble bytes as in Q4_0; x = q·d + m.
private func decodeQ4_1(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 20 * b, y = dst + 32 * b
        let d = half(block, 0), m = half(block, 2)
        let qs = (block + 4).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            y[j] = Float(qs[j] & 0x0F) * d + m
            y[j + 16] = Float(qs[j] >> 4) * d + m
        }
    }
}

/// Q8_0, 32 values in 34 bytes: d (f16), 32 signed bytes; x = q·d.
private func decodeQ8_0(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 34 * b, y = dst + 32 * b
        let d = half(block, 0)
        let qs = (block + 2).assumingMemoryBound(to: Int8.self)
        for j in 0..<32 { y[j] = Float(qs[j]) * d }
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..<8) from the 12 packed bytes of a Q4_K / Q5_K super-block
/// (ggml's `get_scale_min_k4`). Bytes 0-3 hold scales 0-3 in their low six bits, bytes 4-7 mins 0-3; scales and
/// mins 4-7 take their low four bits from the nibbles of bytes 8-11 and their top two bits from the spare top
/// bits of bytes 0-3 (scales) and 4-7 (mins).
@inline(__always)
private func scaleAndMin(_ j: Int, _ s: UnsafePointer<UInt8>) -> (scale: UInt8, min: UInt8) {
    if j < 4 { return (s[j] & 63, s[j + 4] & 63) }
    return ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
}

/// Q4_K, 256 values in 144 bytes: d (f16), dmin (f16), 12 bytes of packed 6-bit scales and mins for eight
/// sub-blocks of 32, then 128 nibble bytes. Each group of 64 values uses 32 bytes: low nibbles are the first
/// sub-block, high nibbles the second. x = (d·scale)·q − (dmin·min).
private func decodeQ4_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 144 * b
        var y = dst + 256 * b
        let d = half(block, 0), dmin = half(block, 2)
        let scales = (block + 4).assumingMemoryBound(to: UInt8.self)
        var q = (block + 16).assumingMemoryBound(to: UInt8.self)
        for group in 0..<4 {
            let (sc1, m1) = scaleAndMin(2 * group, scales), (sc2, m2) = scaleAndMin(2 * group + 1, scales)
            let d1 = d * Float(sc1), min1 = dmin * Float(m1)
            let d2 = d * Float(sc2), min2 = dmin * Float(m2)
            for l in 0..<32 { y[l] = d1 * Float(q[l] & 0x0F) - min1 }
            for l in 0..<32 { y[32 + l] = d2 * Float(q[l] >> 4) - min2 }
            y += 64
            q += 32
        }
    }
}

/// Q5_K, 256 values in 176 bytes: d, dmin, 12 scale bytes as in Q4_K, then qh (32 bytes: bit 2g of qh[l] is the
/// fifth bit of value l of group g's first sub-block, bit 2g+1 of its second), then 128 nibble bytes as in Q4_K.
private func decodeQ5_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 176 * b
        var y = dst + 256 * b
        let d = half(block, 0), dmin = half(block, 2)
        let scales = (block + 4).assumingMemoryBound(to: UInt8.self)
        let qh = (block + 16).assumingMemoryBound(to: UInt8.self)
        var ql = (block + 48).assumingMemoryBound(to: UInt8.self)
        var bit1: UInt8 = 1, bit2: UInt8 = 2
        for group in 0..<4 {
            let (sc1, m1) = scaleAndMin(2 * group, scales), (sc2, m2) = scaleAndMin(2 * group + 1, scales)
            let d1 = d * Float(sc1), min1 = dmin * Float(m1)
            let d2 = d * Float(sc2), min2 = dmin * Float(m2)
            for l in 0..<32 { y[l] = d1 * Float((ql[l] & 0x0F) + (qh[l] & bit1 != 0 ? 16 : 0)) - min1 }
            for l in 0..<32 { y[32 + l] = d2 * Float((ql[l] >> 4) + (qh[l] & bit2 != 0 ? 16 : 0)) - min2 }
            y += 64
            ql += 32
            bit1 <<= 2
            bit2 <<= 2
        }
    }
}

/// Q6_K, 256 values in 210 bytes: ql (128 bytes, low four bits), qh (64 bytes, high two bits), 16 signed 8-bit
/// scales (one per 16 values), d (f16). Each half of 128 values uses 64 ql bytes and 32 qh bytes: for l in 0..<32,
/// values l, l+32, l+64, l+96 take the low nibble of ql[l], of ql[l+32], the high nibble of ql[l], of ql[l+32],
/// and bits 0-1, 2-3, 4-5, 6-7 of qh[l]. x = d·scale·(q − 32).
private func decodeQ6_K(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
    for b in 0..<blocks {
        let block = src + 210 * b
        var y = dst + 256 * b
        var ql = block.assumingMemoryBound(to: UInt8.self)
        var qh = (block + 128).assumingMemoryBound(to: UInt8.self)
        var sc = (block + 192).assumingMemoryBound(to: Int8.self)
        let d = half(block, 208)
        for _ in 0..<2 {
            for l in 0..<32 {
                let s = l / 16
                let q1 = Int((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                let q2 = Int((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                let q3 = Int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                let q4 = Int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                y[l] = d * Float(sc[s]) * Float(q1)
                y[l + 32] = d * Float(sc[s + 2]) * Float(q2)
                y[l + 64] = d * Float(sc[s + 4]) * Float(q3)
                y[l + 96] = d * Float(sc[s + 6]) * Float(q4)
            }
            y += 128
            ql += 64
            qh += 32
            sc += 8
        }
    }
}
