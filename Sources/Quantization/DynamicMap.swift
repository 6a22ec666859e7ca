/// bitsandbytes' 8-bit "dynamic" code books (Dettmers, 8-bit Optimizers via Block-wise Quantization, 2022): a sign,
/// a run of zero bits giving a power of ten, an indicator bit, then linear fraction bits. The signed map quantizes
/// double-quantized absmax values and Adam's first moment; the unsigned one Adam's second moment.
public enum DynamicMap {
    /// The signed map (`create_dynamic_map(signed=True)`), 256 sorted values in [-1, 1].
    public static let signed: [Float] = make(signed: true)
    /// The unsigned map (`create_dynamic_map(signed=False)`), 256 sorted values in [0, 1].
    public static let unsigned: [Float] = make(signed: false)

    /// Builds the map with max_exponent_bits = 7 and 8 bits in all, reproducing torch's float32 arithmetic: the
    /// boundaries come from `linspace(0.1, 1, n)` (each point one fused multiply-add from the nearer end), the
    /// means of neighbouring boundaries are scaled by the float32 power of ten.
    static func make(signed: Bool) -> [Float] {
        let maxExponentBits = 7
        var data: [Float] = []
        for i in 0..<maxExponentBits {
            let count = signed ? (1 << i) + 1 : (1 << (i + 1)) + 1
            let boundaries = linspace(from: 0.1, to: 1.0, count: count)
            let scale = Float(pow10(i - (maxExponentBits - 1)))
            for j in 0..<(count - 1) {
                let mean = (boundaries[j] + boundaries[j + 1]) / 2
                data.append(scale * mean)
                if signed { data.append(-(scale * mean)) }
            }
        }
        data.append(0)
        data.append(1)
        precondition(data.count == 256)
        return data.sorted()
    }

    /// torch.linspace in float32 on the CPU: the first half counts up from `start`, the second half down from `end`.
    static func linspace(from start: Float, to end: Float, count: Int) -> [Float] {
        let step = (end - start) / Float(count - 1)
        let halfway = count / 2
        return (0..<count).map { i in
            i < halfway ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(count - i - 1))
        }
    }

    private static func pow10(_ e: Int) -> Double {
        var v = 1.0
        if e >= 0 { for _ in 0..<e { v *= 10 } } else { for _ in 0..<(-e) { v /= 10 } }
        return v
    }

    /// The code of `x` (already scaled into [-1, 1]) in a sorted 256-entry map, as bitsandbytes' `dQuantize` finds
    /// it: a seven-step binary search from index 127, then the nearer of the last pivot and its bracketing neighbour
    /// by float32 midpoints. This is not always the exact nearest entry; bit-exactness needs this very search.
    @inlinable
    public static func code(for x: Float, in map: UnsafeBufferPointer<Float>) -> UInt8 {
        var pivot = 127
        var upperPivot = 255
        var lowerPivot = 0
        var lower: Float = -1
        var upper: Float = 1
        var value = map[pivot]
        var step = 64
        while step > 0 {
            if x > value {
                lowerPivot = pivot
                lower = value
                pivot += step
            } else {
                upperPivot = pivot
                upper = value
                pivot -= step
            }
            value = map[pivot]
            step >>= 1
        }
        if upperPivot == 255 { upper = map[upperPivot] }
        if lowerPivot == 0 { lower = map[lowerPivot] }
        if x > value {
            let midpoint = (upper + value) * 0.5
            return UInt8(truncatingIfNeeded: x > midpoint ? upperPivot : pivot)
        } else {
            let midpoint = (lower + value) * 0.5
            return UInt8(truncatingIfNeeded: x < midpoint ? lowerPivot : pivot)
        }
    }
}
