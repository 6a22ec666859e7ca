/// The mean of float32 values added in the order torch's CUDA reduction kernel adds them (`Reduce.cuh`).
/// bitsandbytes' double quantization subtracts `absmax.mean()`, computed on the GPU; float32 addition is not
/// associative, so matching its last bit means repeating its association, not just summing well.
///
/// The kernel, for a contiguous tensor reduced to one value: inputs over 128 elements are read as 4-wide vectors;
/// a block of `width` threads (the largest power of two ≤ the vector count, at most 512) runs, each thread keeping
/// four running sums over a strided walk; each thread adds its four sums in order; the block combines threads with a
/// shared-memory tree down to 32 lanes, then a warp tree with decreasing offsets. When each thread would see 256 or
/// more values the input is split over several blocks (as many as fill the GPU, bounded by 16 and 256 values per
/// thread), whose results are combined the same way by the last block. The mean is that sum times the float32
/// reciprocal of the count. Verified against torch 2.11 on an H200 for 359 sizes by
/// `scripts/torch_mean_reference.py`; the block count depends on the GPU (here 132 SMs of 2048 threads, as on the
/// H100 and H200), which matters only from 131,072 values (a weight of over 8 million elements at blocksize 64).
public enum GPUMean {
    /// Streaming multiprocessors and threads per multiprocessor of the GPU whose order is reproduced.
    public static let multiprocessorCount = 132
    public static let threadsPerMultiprocessor = 2048

    /// `values.mean()` as torch computes it on the GPU.
    public static func mean(_ values: [Float]) -> Float {
        let n = values.count
        guard n > 0 else { return .nan }
        let vectorized = n > 128
        let dim0 = vectorized ? n / 4 : n
        let width = dim0 < 512 ? lastPowerOfTwo(dim0) : 512
        let valuesPerThread = divUp(n, width)
        var blocks = 1
        if valuesPerThread >= 256 {
            let target = multiprocessorCount * (threadsPerMultiprocessor / width)
            blocks = max(min(target, divUp(valuesPerThread, 16)), divUp(valuesPerThread, 256))
        }
        let stride = width * blocks
        var partials = [Float](repeating: 0, count: blocks)
        var lanes = [Float](repeating: 0, count: width)
        values.withUnsafeBufferPointer { a in
            for block in 0..<blocks {
                for lane in 0..<width {
                    var acc: (Float, Float, Float, Float) = (0, 0, 0, 0)
                    var idx = lane + block * width
                    if vectorized {
                        while idx * 4 + 3 < n {
                            let base = idx * 4
                            acc.0 += a[base]; acc.1 += a[base + 1]; acc.2 += a[base + 2]; acc.3 += a[base + 3]
                            idx += stride
                        }
                        let tail = n - n % 4 + lane
                        if block == 0 && tail < n { acc.0 += a[tail] }
                    } else {
                        while idx + 3 * stride < n {
                            acc.0 += a[idx]; acc.1 += a[idx + stride]; acc.2 += a[idx + 2 * stride]; acc.3 += a[idx + 3 * stride]
                            idx += 4 * stride
                        }
                        if idx < n { acc.0 += a[idx]; idx += stride }
                        if idx < n { acc.1 += a[idx]; idx += stride }
                        if idx < n { acc.2 += a[idx]; idx += stride }
                        if idx < n { acc.3 += a[idx] }
                    }
                    lanes[lane] = ((acc.0 + acc.1) + acc.2) + acc.3
                }
                partials[block] = blockReduce(&lanes)
            }
        }
        var total = partials[0]
        if blocks > 1 {
            for lane in 0..<width {
                var s: Float = 0
                var k = lane
                while k < blocks { s += partials[k]; k += width }
                lanes[lane] = s
            }
            total = blockReduce(&lanes)
        }
        return total * (1 / Float(n))
    }

    /// Lane 0 of the block's tree: pairwise sums at offsets width/2, width/4, ..., 1 (shared memory down to 32 lanes,
    /// then warp shuffles; both add the lane `offset` above).
    private static func blockReduce(_ lanes: inout [Float]) -> Float {
        var offset = lanes.count / 2
        while offset > 0 {
            for t in 0..<offset { lanes[t] += lanes[t + offset] }
            offset /= 2
        }
        return lanes[0]
    }

    private static func lastPowerOfTwo(_ n: Int) -> Int {
        var p = 1
        while p * 2 <= n { p *= 2 }
        return p
    }

    private static func divUp(_ a: Int, _ b: Int) -> Int { (a + b - 1) / b }
}
