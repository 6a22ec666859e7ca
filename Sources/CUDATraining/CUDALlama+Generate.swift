import CUDABackend
import Llama

extension CUDALlama {
    /// Greedy or sampled continuation of `prompt` on the GPU, as `LlamaModel.generate` does on the CPU.
    public func generate(prompt: [Int], options: SamplingOptions) throws -> [Int] {
        try generate(prompts: [prompt], options: options)[0]
    }

    /// Continues every prompt, one row each, decoded together with a key/value cache on the GPU. The prompts run
    /// through the model once, right-padded to the longest (a row's padding comes after its tokens, so none of them
    /// sees it, and the cache slots it fills are overwritten by that row's own new tokens); then each step runs one
    /// token per row through every layer, its key and value appended to the cache. Each prompt gets its own sampler
    /// seeded with `options.seed`, so its continuation is the one it gets alone. Returns the new ids of each prompt
    /// (ending at a stop token, which is included, at `maxNewTokens`, or at the model's context). Where the GPU has
    /// room (the weights in the activation type and 2 GiB besides), the frozen weights are dequantized once for the
    /// whole call instead of at every token: decoding is then bound by reading them.
    public func generate(prompts: [[Int]], options: SamplingOptions) throws -> [[Int]] {
        guard !prompts.isEmpty else { return [] }
        let kept = keptWeights.isEmpty ? try keepWeights(margin: 2 << 30) : false
        defer { if kept { releaseWeights() } }
        let context = config.maxPositionEmbeddings
        for (i, p) in prompts.enumerated() where p.isEmpty || p.count >= context {
            throw CUDAError.invalidArgument("prompt \(i + 1) has \(p.count) tokens: generation needs 1 to " +
                                            "\(context - 1) (the model's context is \(context))")
        }
        let batch = prompts.count, longest = prompts.map(\.count).max()!
        let capacity = min(context, longest + min(options.maxNewTokens, context))   // no overflow for a huge limit
        let padded = prompts.flatMap { $0 + Array(repeating: $0.last!, count: longest - $0.count) }
        try LlamaModel.checkBatch(inputIds: padded, labels: padded, batch: batch, tokens: longest, config: config)
        try ensureRope(capacity)
        let width = config.kvHeadCount * config.headDim
        let keys = try layers.indices.map { _ in try device.allocate(batch * capacity * width, dtype) }
        let values = try layers.indices.map { _ in try device.allocate(batch * capacity * width, dtype) }

        // The prompts, then each row's logits at its last token.
        var lengths = prompts.map(\.count)
        var logits = try decodingPass(ids: padded, batch: batch, tokens: longest, decoding: GPUDecoding(
            keys: keys, values: values, capacity: capacity, at: try device.upload([Int32](repeating: 0, count: batch)),
            lengths: nil), lastRows: lengths.enumerated().map { $0.offset * longest + $0.element - 1 })
        var samplers = prompts.map { _ in SeededGenerator(seed: options.seed) }
        var out = prompts.map { _ in [Int]() }
        var done = prompts.map { _ in options.maxNewTokens == 0 }
        let vocab = config.vocabSize
        while true {
            var next = [Int](repeating: 0, count: batch)
            for b in 0..<batch where !done[b] {
                let row = Array(logits[(b * vocab)..<((b + 1) * vocab)])
                next[b] = LlamaModel.pick(from: row, options: options, rng: &samplers[b])
                out[b].append(next[b])
                done[b] = options.stopTokenIds.contains(next[b]) || out[b].count >= options.maxNewTokens
                    || lengths[b] + 1 >= context   // as the CPU: room for this token's own position
            }
            if done.allSatisfy({ $0 }) { break }
            // One token a row at its sequence's length (a finished row rewrites its last slot; its logits are unused).
            let at = (0..<batch).map { b in Int32(min(lengths[b], capacity - 1)) }
            logits = try decodingPass(ids: next, batch: batch, tokens: 1, decoding: GPUDecoding(
                keys: keys, values: values, capacity: capacity, at: try device.upload(at),
                lengths: try device.upload(at.map { $0 + 1 })), lastRows: Array(0..<batch))
            for b in 0..<batch where !done[b] { lengths[b] += 1 }
        }
        return out
    }

    /// `ids` (batch × tokens) through every layer with the cache, no dropout and nothing kept for a backward pass;
    /// returns the logits (rows, V) of rows `lastRows` of the output.
    func decodingPass(ids: [Int], batch: Int, tokens: Int, decoding: GPUDecoding, lastRows: [Int]) throws -> [Float] {
        let n = batch * tokens, c = config.hiddenSize, vocab = config.vocabSize
        var x = try device.allocate(n * c, dtype)
        try device.embedding(x, ids: try device.upload(ids.map { Int32($0) }), table: embedding, rows: n, width: c)
        for l in layers.indices {
            x = try layerForward(l, x, batch: batch, tokens: tokens, packing: nil, decoding: decoding,
                                 training: false, seed: 0, saving: GPULayerActivations(x: x), keeps: false)!
        }
        let rows = lastRows.count
        let last = try device.allocate(rows * c, dtype)
        try device.embedding(last, ids: try device.upload(lastRows.map { Int32($0) }), table: x, rows: rows, width: c)
        let normed = try device.allocate(rows * c, dtype), rstd = try device.allocate(rows, .f32)
        try device.rmsNormForward(normed, rstd, last, finalNorm, rows: rows, width: c, eps: Float(config.rmsNormEps))
        let logits = try device.allocate(rows * vocab, dtype)
        device.gemmLabel = "lm_head"
        try device.gemm(m: rows, n: vocab, k: c, a: normed, lda: c, b: lmHead, ldb: c, transB: true, c: logits,
                        ldc: vocab)
        return try device.download(logits)
    }
}
