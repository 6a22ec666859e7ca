import CPUBackend
import CUDABackend
import Foundation
import Llama

extension GPUOpChecks {
    /// Generation's kernels (Kernels/decode.cu) against their CPU twins: the cache write (a prompt at 0, one token
    /// at each row's length) and the attention of one token per row over rows of different lengths (1 key, keys
    /// across many warps), grouped and plain heads, head dims 64 and 128, both activation types.
    public mutating func decodeAttention(_ c: inout Checker) throws {
        for dtype in [GPUDType.f32, .bf16] {
            let tol = dtype == .f32 ? 1e-5 : 1e-2
            for (h, hkv, d) in [(8, 2, 64), (4, 4, 128), (32, 8, 128)] {
                let batch = 3, capacity = 80, width = hkv * d, prompt = 9
                let tag = "\(dtype.rawValue) H\(h) Hkv\(hkv) D\(d)"
                var keys = [Float](repeating: 0, count: batch * capacity * width), values = keys
                let kb = try device.zeros(keys.count, dtype), vb = try device.zeros(values.count, dtype)
                // A prompt of 9 tokens into every row, then one token at lengths 0, 17 and 79.
                let lengths = [1, 18, 80], at = lengths.map { $0 - 1 }
                let zeros = try device.upload([Int32](repeating: 0, count: batch))
                let atb = try device.upload(at.map { Int32($0) })
                for (cache, buffer) in [(0, kb), (1, vb)] {
                    let (p, pb) = try put(random(batch * prompt * width), dtype)
                    let (t, tb) = try put(random(batch * width), dtype)
                    if cache == 0 {
                        CPUOps.kvCacheWrite(&keys, p, at: [0, 0, 0], batch: batch, tokens: prompt, width: width,
                                            capacity: capacity)
                        CPUOps.kvCacheWrite(&keys, t, at: at, batch: batch, tokens: 1, width: width, capacity: capacity)
                    } else {
                        CPUOps.kvCacheWrite(&values, p, at: [0, 0, 0], batch: batch, tokens: prompt, width: width,
                                            capacity: capacity)
                        CPUOps.kvCacheWrite(&values, t, at: at, batch: batch, tokens: 1, width: width,
                                            capacity: capacity)
                    }
                    try device.kvCacheWrite(buffer, pb, at: zeros, batch: batch, tokens: prompt, width: width,
                                            capacity: capacity)
                    try device.kvCacheWrite(buffer, tb, at: atb, batch: batch, tokens: 1, width: width,
                                            capacity: capacity)
                }
                c.equal("kv cache write \(tag)", try device.download(kb) + device.download(vb), keys + values)
                // Slots past a row's prompt and token are still zero: fill them so the attention reads real values.
                for b in 0..<batch {
                    for p in prompt..<capacity where p != at[b] {
                        for e in 0..<width { keys[(b * capacity + p) * width + e] = random(1)[0] }
                    }
                }
                try device.copy(keys, to: kb)
                keys = try device.download(kb)
                let (q, qb) = try put(random(batch * h * d), dtype)
                var out = [Float](repeating: 0, count: batch * h * d)
                CPUOps.decodeAttention(&out, q: q, keys: keys, values: values, lengths: lengths, batch: batch,
                                       heads: h, kvHeads: hkv, headDim: d, capacity: capacity)
                let ob = try device.allocate(out.count, dtype)
                try device.decodeAttention(ob, q: qb, keys: kb, values: vb, lengths: try device.upload(
                    lengths.map { Int32($0) }), batch: batch, heads: h, kvHeads: hkv, headDim: d, capacity: capacity)
                c.close("decode attention \(tag), lengths \(lengths)", try device.download(ob), out, tolerance: tol)
            }
        }
    }
}

extension GPUGoldenChecks {
    /// Generation on the GPU with its key/value cache against the CPU's and against recomputing the whole sequence
    /// for every token (the logits of `logits(inputIds:)`), greedy, on tiny-llama with its adapter (fp32); and
    /// three prompts of different lengths decoded together against each decoded alone.
    func generation(_ c: inout Checker) throws {
        let gpu = try loadTiny()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let cpu = try LlamaModel(weights: weights, lora: lora, seed: 0)
        cpu.adapters = adapters
        var options = SamplingOptions()
        options.maxNewTokens = 24
        let vocab = gpu.config.vocabSize
        let prompts = [[1, 5, 9, 200, 31], [7], Array(3..<40)].map { $0.map { $0 % vocab } }
        var alone: [[Int]] = []
        for prompt in prompts {
            let cached = try gpu.generate(prompt: prompt, options: options)
            alone.append(cached)
            var sequence = prompt, recomputed: [Int] = []
            while recomputed.count < options.maxNewTokens {
                let logits = try gpu.logits(inputIds: sequence, batch: 1, tokens: sequence.count)
                var rng = SeededGenerator(seed: 0)
                let next = LlamaModel.pick(from: Array(logits.suffix(vocab)), options: options, rng: &rng)
                recomputed.append(next)
                sequence.append(next)
            }
            c.equal("GPU generation with a KV cache = full recompute (greedy, \(prompt.count)-token prompt)",
                    cached, recomputed)
            c.equal("GPU generation = CPU generation (greedy, \(prompt.count)-token prompt)", cached,
                    cpu.generate(prompt: prompt, options: options))
        }
        c.equal("GPU generation of 3 prompts together = each alone", try gpu.generate(prompts: prompts,
                                                                                      options: options), alone)
    }
}
