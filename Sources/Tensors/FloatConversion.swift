// Conversions between float32 and the 16-bit float formats, rounding to nearest, ties to even (as torch and CUDA's
// __float2bfloat16 do).

/// The bf16 bit pattern nearest to `value` (round to nearest even; NaN stays a quiet NaN with its sign).
@inlinable
public func bf16Bits(from value: Float) -> UInt16 {
    let bits = value.bitPattern
    if value.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
    let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
    return UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
}

/// The float32 value of a bf16 bit pattern (exact).
@inlinable
public func float(fromBF16 bits: UInt16) -> Float {
    Float(bitPattern: UInt32(bits) << 16)
}

/// The f16 bit pattern nearest to `value` (round to nearest even).
@inlinable
public func f16Bits(from value: Float) -> UInt16 {
    Float16(value).bitPattern
}

/// The float32 value of an f16 bit pattern (exact).
@inlinable
public func float(fromF16 bits: UInt16) -> Float {
    Float(Float16(bitPattern: bits))
}
