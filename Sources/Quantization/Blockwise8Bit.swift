/// Blockwise 8-bit quantization with a 256-entry code book (bitsandbytes' `quantize_blockwise` with `General8bit`):
/// each block's values are scaled by the (GPU's approximate) reciprocal of the block's largest magnitude and mapped to the nearest code
/// by `DynamicMap.code(for:in:)`.
public enum Blockwise8Bit {
    /// Codes (one per value) and the absmax of each block of `blocksize` values.
    public static func quantize(_ values: [Float], blocksize: Int, map: [Float]) -> (codes: [UInt8], absmax: [Float]) {
        let n = values.count
        let blockCount = (n + blocksize - 1) / blocksize
        var codes = [UInt8](repeating: 0, count: n)
        var absmax = [Float](repeating: 0, count: blockCount)
        map.withUnsafeBufferPointer { m in
            for b in 0..<blockCount {
                let range = (b * blocksize)..<min(n, (b + 1) * blocksize)
                var maxMagnitude: Float = 0
                for i in range { maxMagnitude = max(maxMagnitude, abs(values[i])) }
                absmax[b] = maxMagnitude
                let scale = GPUReciprocal.reciprocal(maxMagnitude)
                for i in range { codes[i] = DynamicMap.code(for: GPUReciprocal.flushToZero(values[i] * scale), in: m) }
            }
        }
        return (codes, absmax)
    }

    /// The values the codes stand for: `map[code] * absmax[block]` in float32.
    public static func dequantize(codes: [UInt8], absmax: [Float], blocksize: Int, map: [Float]) -> [Float] {
        codes.indices.map { map[Int(codes[$0])] * absmax[$0 / blocksize] }
    }
}

/// The per-block absmax values of a 4-bit tensor stored in 8 bits (QLoRA's double quantization): the mean is
/// subtracted, and the centred values are quantized blockwise with the signed dynamic map.
public struct DoubleQuantizedScales: Sendable, Equatable {
    /// One 8-bit code per 4-bit block.
    public var codes: [UInt8]
    /// The absmax of each group of `nestedBlocksize` centred scales.
    public var nestedAbsmax: [Float]
    /// The mean that was subtracted.
    public var offset: Float
    /// Scales per nested block (bitsandbytes uses 256).
    public var nestedBlocksize: Int
    /// The 8-bit code book (the signed dynamic map).
    public var nestedCodeBook: [Float]

    /// Memberwise.
    public init(codes: [UInt8], nestedAbsmax: [Float], offset: Float, nestedBlocksize: Int, nestedCodeBook: [Float]) {
        self.codes = codes
        self.nestedAbsmax = nestedAbsmax
        self.offset = offset
        self.nestedBlocksize = nestedBlocksize
        self.nestedCodeBook = nestedCodeBook
    }

    /// Compresses `absmax`, taking its mean as torch does on the GPU (`GPUMean`).
    public init(compressing absmax: [Float], nestedBlocksize: Int = 256) {
        let offset = GPUMean.mean(absmax)
        let centred = absmax.map { $0 - offset }
        let (codes, nested) = Blockwise8Bit.quantize(centred, blocksize: nestedBlocksize, map: DynamicMap.signed)
        self.init(codes: codes, nestedAbsmax: nested, offset: offset, nestedBlocksize: nestedBlocksize,
                  nestedCodeBook: DynamicMap.signed)
    }

    /// The absmax values as bitsandbytes recovers them: dequantized in float32, then the offset added.
    public func decompressed() -> [Float] {
        Blockwise8Bit.dequantize(codes: codes, absmax: nestedAbsmax, blocksize: nestedBlocksize, map: nestedCodeBook)
            .map { $0 + offset }
    }
}
