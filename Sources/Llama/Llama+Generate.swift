import CPUBackend
import Foundation

/// How to pick the next token.
public struct SamplingOptions: Sendable {
    /// 0 means greedy.
    public var temperature: Float = 0
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top-p (1 keeps all).
    public var topP: Float = 1
    /// Tokens to generate at most.
    public var maxNewTokens = 128
    /// Stop at any of these ids.
    public var stopTokenIds: Set<Int> = []
    /// Seed for sampling.
    public var seed: UInt64 = 0
    /// Greedy, 128 tokens.
    public init() {}
}

/// The keys and values of every position seen so far, per layer (T, Hkv·D each), so each new token costs one
/// row of work instead of a full forward pass.
struct KVCache {
    var keys: [[Float]]
    var values: [[Float]]
    var length = 0
}

extension LlamaModel {
    /// Continues `prompt` (token ids) with the adapters applied; returns only the new ids. Uses no randomness of the
    /// training step and changes no state of the model.
    public func generate(prompt: [Int], options: SamplingOptions) -> [Int] {
        precondition(!prompt.isEmpty, "generation needs at least one prompt token")
        var cache = KVCache(keys: Array(repeating: [], count: layers.count), values: Array(repeating: [], count: layers.count))
        var rng = SeededGenerator(seed: options.seed)
        var logits = prefill(prompt, cache: &cache)
        var out: [Int] = []
        while out.count < options.maxNewTokens && cache.length < config.maxPositionEmbeddings {
            let next = Self.pick(from: logits, options: options, rng: &rng)
            out.append(next)
            if options.stopTokenIds.contains(next) { break }
            logits = decodeStep(token: next, cache: &cache)
        }
        return out
    }

    public static func pick(from logits: [Float], options: SamplingOptions, rng: inout SeededGenerator) -> Int {
        if options.temperature <= 0 {
            var best = 0
            for i in logits.indices where logits[i] > logits[best] { best = i }
            return best
        }
        let m = logits.max()!
        var probs = logits.map { Foundation.exp(($0 - m) / options.temperature) }
        let z = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= z }
        var order = Array(probs.indices).sorted { probs[$0] > probs[$1] }
        if options.topP < 1 {
            var mass: Float = 0, keep = 0
            while keep < order.count && mass < options.topP { mass += probs[order[keep]]; keep += 1 }
            order = Array(order.prefix(max(1, keep)))
        }
        let total = order.reduce(Float(0)) { $0 + probs[$1] }
        var u = rng.nextUniform() * total
        for i in order { u -= probs[i]; if u <= 0 { return i } }
        return order.last!
    }

    /// The prompt through every layer at once (positions 0 ..< T, the training step's forward pass without dropout
    /// or gradients), each layer's keys (after RoPE) and values kept in the cache; returns the last position's
    /// logits (V). One pass with products of T rows instead of T passes of one row each.
    private func prefill(_ prompt: [Int], cache: inout KVCache) -> [Float] {
        let c = config.hiddenSize, t = prompt.count
        precondition(t <= config.maxPositionEmbeddings, "a prompt longer than max_position_embeddings")
        var x = embedded(prompt)
        for l in layers.indices {
            var act = LayerActivations()
            x = layerForward(l, x, batch: 1, tokens: t, layout: nil, training: false, seed: 0, saving: &act)
            cache.keys[l] = act.k
            cache.values[l] = act.v
        }
        cache.length = t
        return logits(ofRow: Array(x[((t - 1) * c)...]))
    }

    /// One token through every layer at position `cache.length`; returns the logits (V).
    private func decodeStep(token: Int, cache: inout KVCache) -> [Float] {
        let c = config.hiddenSize, h = config.headCount, hkv = config.kvHeadCount, d = config.headDim
        let pos = cache.length
        let eps = Float(config.rmsNormEps)
        var x = Array(embedding[(token * c)..<((token + 1) * c)])
        var rstd = [Float](repeating: 0, count: 1)
        for (l, layer) in layers.enumerated() {
            var h1 = [Float](repeating: 0, count: c)
            CPUOps.rmsNormForward(&h1, &rstd, x, layer.inputNorm, rows: 1, width: c, eps: eps)
            var q = project(l, "q_proj", h1), k = project(l, "k_proj", h1)
            let v = project(l, "v_proj", h1)
            rotate(&q, heads: h, position: pos)
            rotate(&k, heads: hkv, position: pos)
            cache.keys[l] += k
            cache.values[l] += v
            let t = pos + 1
            var attention = [Float](repeating: 0, count: h * d)
            CPUOps.decodeAttention(&attention, q: q, keys: cache.keys[l], values: cache.values[l], lengths: [t],
                                   batch: 1, heads: h, kvHeads: hkv, headDim: d, capacity: t)
            let o = project(l, "o_proj", attention)
            for i in 0..<c { x[i] += o[i] }
            var h2 = [Float](repeating: 0, count: c)
            CPUOps.rmsNormForward(&h2, &rstd, x, layer.postAttentionNorm, rows: 1, width: c, eps: eps)
            let gate = project(l, "gate_proj", h2), up = project(l, "up_proj", h2)
            var act = [Float](repeating: 0, count: gate.count)
            CPUOps.swigluForward(&act, gate: gate, up: up)
            let down = project(l, "down_proj", act)
            for i in 0..<c { x[i] += down[i] }
        }
        cache.length += 1
        return logits(ofRow: x)
    }

    /// The final norm and lm_head of one row (C): its logits (V).
    private func logits(ofRow x: [Float]) -> [Float] {
        let c = config.hiddenSize
        var xf = [Float](repeating: 0, count: c), rstd = [Float](repeating: 0, count: 1)
        CPUOps.rmsNormForward(&xf, &rstd, x, finalNorm, rows: 1, width: c, eps: Float(config.rmsNormEps))
        var logits = [Float](repeating: 0, count: config.vocabSize)
        if let lmHeadPacked {
            lmHeadPacked.forward(&logits, xf, rows: 1, accumulate: false)
        } else {
            CPUOps.linearForward(&logits, xf, lmHead, rows: 1, inFeatures: c, outFeatures: config.vocabSize)
        }
        return logits
    }

    /// One row through a frozen projection and its adapter (no dropout).
    private func project(_ l: Int, _ name: String, _ x: [Float]) -> [Float] {
        let p = layers[l].projections[name]!
        var y = p.bias ?? [Float](repeating: 0, count: p.outFeatures)
        p.forward(&y, x, rows: 1, accumulate: true)
        if let a = adapters["\(l).\(name)"] {
            var z = [Float](repeating: 0, count: loraConfig.r)
            CPUOps.linearForward(&z, x, a.a, rows: 1, inFeatures: p.inFeatures, outFeatures: loraConfig.r)
            CPUOps.linearForward(&y, z, a.b, rows: 1, inFeatures: loraConfig.r, outFeatures: p.outFeatures,
                                 accumulate: true, alpha: loraConfig.scale)
        }
        return y
    }

    private func rotate(_ x: inout [Float], heads: Int, position: Int) {
        let d = config.headDim
        let cosRow = Array(ropeCos[(position * d)..<((position + 1) * d)])
        let sinRow = Array(ropeSin[(position * d)..<((position + 1) * d)])
        CPUOps.rope(&x, cos: cosRow, sin: sinRow, batch: 1, tokens: 1, heads: heads, headDim: d)
    }
}
