import Foundation

// Launchers of Kernels/decode.cu: generation's key/value cache (CPU twins: CPUOps.kvCacheWrite, decodeAttention).

extension CUDADevice {
    /// cache[b, at[b] + t, :] = src[b, t, :] for t < tokens: src (B, tokens, width) into a cache (B, capacity, width)
    /// of the same type; `at` (i32, B) is where each row's tokens go.
    public func kvCacheWrite(_ cache: DeviceBuffer, _ src: DeviceBuffer, at: DeviceBuffer, batch: Int, tokens: Int,
                             width: Int, capacity: Int) throws {
        guard cache.dtype == src.dtype, at.dtype == .i32, at.count >= batch, src.count >= batch * tokens * width,
              cache.count >= batch * capacity * width, tokens <= capacity else {
            throw CUDAError.invalidArgument("kv cache write: \(batch) × \(tokens) × \(width) \(src.dtype.rawValue) " +
                "into a \(cache.dtype.rawValue) cache of \(cache.count) values (capacity \(capacity)), " +
                "\(at.count) i32 row offsets")
        }
        let threads = batch * tokens * ((width + 7) / 8)
        try launch(.decode, "kv_cache_write", bf16: cache.dtype == .bf16, grid: (threads + 255) / 256, block: 256,
                   [.buffer(cache), .buffer(src), .buffer(at), .int(batch), .int(tokens), .int(width),
                    .int(capacity)])
    }

    /// out (B, H, D): one query token per sequence (q (B, H, D), rotated) attending to the first lengths[b]
    /// (i32, each 1…capacity) positions of row b of the key and value caches (B, capacity, Hkv·D).
    public func decodeAttention(_ out: DeviceBuffer, q: DeviceBuffer, keys: DeviceBuffer, values: DeviceBuffer,
                                lengths: DeviceBuffer, batch: Int, heads: Int, kvHeads: Int, headDim: Int,
                                capacity: Int) throws {
        guard headDim % 32 == 0, headDim <= 128, heads > 0, kvHeads > 0, heads % kvHeads == 0 else {
            throw CUDAError.invalidArgument("decode attention: head dim \(headDim) (a multiple of 32 up to 128), " +
                                            "\(heads) heads over \(kvHeads) KV heads")
        }
        let n = batch * heads * headDim, cached = batch * capacity * kvHeads * headDim
        guard out.count >= n, q.count >= n, keys.count >= cached, values.count >= cached, lengths.dtype == .i32,
              lengths.count >= batch, [q, keys, values].allSatisfy({ $0.dtype == out.dtype }) else {
            throw CUDAError.invalidArgument("decode attention: buffers too small or of mixed types for batch " +
                                            "\(batch), \(heads) heads, head dim \(headDim), capacity \(capacity)")
        }
        try launch(.decode, "decode_attention", bf16: out.dtype == .bf16, grid: (heads, batch, 1), block: 256,
                   sharedBytes: 0, [.buffer(out), .buffer(q), .buffer(keys), .buffer(values), .buffer(lengths),
                                    .int(heads), .int(kvHeads), .int(headDim), .int(capacity)])
    }
}
