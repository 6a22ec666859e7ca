/// The 4-bit data types bitsandbytes offers: NormalFloat4 and a 4-bit float (1 sign, 2 exponent, 1 mantissa bit).
public enum QuantType: String, Sendable, CaseIterable {
    case nf4
    case fp4

    /// The 16 values a code stands for, indexed by the code, as bitsandbytes stores them in `quant_map`
    /// (`get_4bit_type`, in float32).
    public var codeBook: [Float] {
        switch self {
        case .nf4: return NF4.codeBook
        case .fp4: return FP4.codeBook
        }
    }

    /// What the dequantization kernel multiplies the absmax by for each code. Equal to `codeBook` except FP4's
    /// code 8, which the kernel computes as 0 × -1 = -0 while `quant_map` stores +0.
    public var dequantizationTable: [Float] {
        switch self {
        case .nf4: return NF4.codeBook
        case .fp4: return FP4.magnitudes + FP4.magnitudes.map { -$0 }
        }
    }

    /// The 4-bit code nearest to `x` (a value already scaled into [-1, 1]), with bitsandbytes' tie and NaN rules.
    @inlinable
    public func code(for x: Float) -> UInt8 {
        switch self {
        case .nf4: return NF4.code(for: x)
        case .fp4: return FP4.code(for: x)
        }
    }
}

/// NormalFloat4 (Dettmers et al., QLoRA, 2023): quantiles of N(0, 1) scaled to [-1, 1], with an exact zero.
public enum NF4 {
    /// Code → value; codes are in increasing order of value.
    public static let codeBook: [Float] = [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]

    /// The decision thresholds between neighbouring codes, as float32 literals in bitsandbytes' kernel
    /// (`dQuantizeNF4`): a value strictly above threshold k gets a code above k. These are rounded midpoints, so they
    /// must be these exact constants, not midpoints recomputed in float32.
    @usableFromInline
    static let thresholds: (Float, Float, Float, Float, Float, Float, Float, Float,
                            Float, Float, Float, Float, Float, Float, Float, Float) = (
        -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
        -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
        0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
        0.5016634166240692, 0.6427869200706482, 0.8614784181118011, .infinity
    )

    /// The number of thresholds strictly below `x`: the code of the nearest value, ties going to the lower code,
    /// and 0 for NaN (every comparison with NaN is false), exactly as the kernel's comparison tree decides.
    @inlinable
    public static func code(for x: Float) -> UInt8 {
        // Branch-free binary search over the 15 sorted thresholds (padded with +inf to 16).
        return withUnsafeBytes(of: thresholds) { raw -> UInt8 in
            let t = raw.bindMemory(to: Float.self)
            var i = x > t[7] ? 8 : 0
            i += x > t[i + 3] ? 4 : 0
            i += x > t[i + 1] ? 2 : 0
            i += x > t[i] ? 1 : 0
            return UInt8(truncatingIfNeeded: i)
        }
    }
}

/// bitsandbytes' FP4: bit 3 is the sign, bits 0-2 index a magnitude (exponent-bias 3, one mantissa bit, normalized
/// so the largest magnitude is 1).
public enum FP4 {
    /// Magnitudes by the low three bits (`fp4_dequantization_lut`).
    static let magnitudes: [Float] = [0.0, 0.005208333333, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25]

    /// Code → value (codes 8-15 are the negatives of 0-7), as `get_4bit_type("fp4")` builds it: code 8 is +0.
    public static let codeBook: [Float] = magnitudes + magnitudes.map { $0 == 0 ? 0 : -$0 }

    /// Thresholds on |x| between magnitudes in increasing order, as the kernel's float32 literals (`dQuantizeFP4`).
    @usableFromInline
    static let thresholds: (Float, Float, Float, Float, Float, Float, Float, Float) = (
        0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333, .infinity
    )

    /// Low three bits of the code for each magnitude rank (0 = smallest).
    @usableFromInline
    static let bitsByRank: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011)

    /// The code of the magnitude nearest to |x| (ties to the smaller), with the sign bit set for x < 0; NaN gives 0.
    @inlinable
    public static func code(for x: Float) -> UInt8 {
        let sign: UInt8 = x < 0 ? 0b1000 : 0
        let m = abs(x)
        let rank = withUnsafeBytes(of: thresholds) { raw -> Int in
            let t = raw.bindMemory(to: Float.self)
            var i = m > t[3] ? 4 : 0
            i += m > t[i + 1] ? 2 : 0
            i += m > t[i] ? 1 : 0
            return i
        }
        let bits = withUnsafeBytes(of: bitsByRank) { $0[rank] }
        return bits | sign
    }
}
