import CPUBackend
import Foundation

/// Gradients of the loss with respect to every adapter, keyed like `LlamaModel.adapters`.
public typealias LoRAGradients = [String: LoRAWeights]

/// What one forward (and backward) pass produced.
public struct StepResult {
    /// Mean loss over the counted targets of this batch.
    public var loss: Double
    /// Number of counted (not −100) targets.
    public var tokenCount: Int
    /// Gradients (empty when not asked for).
    public var gradients: LoRAGradients
    /// Logits (B·T, V), when asked for.
    public var logits: [Float]?
}

/// Everything a decoder layer's backward needs from its forward, named and shaped.
struct LayerActivations {
    var x: [Float] = []            // (N, C) layer input
    var rstd1: [Float] = []        // (N)
    var h1: [Float] = []           // (N, C)
    var q: [Float] = []            // (N, H·D) after RoPE
    var k: [Float] = []            // (N, Hkv·D) after RoPE
    var v: [Float] = []            // (N, Hkv·D)
    var probs: [Float] = []        // as CPUOps.AttentionProbabilities lays them out
    var attention: [Float] = []    // (N, H·D)
    var xMid: [Float] = []         // (N, C) after the attention residual
    var rstd2: [Float] = []        // (N)
    var h2: [Float] = []           // (N, C)
    var gate: [Float] = []         // (N, F)
    var up: [Float] = []           // (N, F)
    var act: [Float] = []          // (N, F)
    var loraKept: [String: LoRADropout.KeptBits] = [:]   // the dropout's kept elements, when dropout > 0
    var loraZ: [String: [Float]] = [:]                     // dropout(x) · Aᵀ (N, R)
}

extension LlamaModel {
    /// Checks a micro-batch before a step reads it: `batch` rows of `tokens` positions (at least one of each, at most
    /// `max_position_embeddings` positions: a row's length, or with packed documents their `positions`, which
    /// `checkPositions` checks), every input id a token of the vocabulary, every label one too or −100 (ignored).
    /// `step` reads the embedding and the logits at these indices, so this is what keeps bad data an error, not an
    /// out-of-bounds read; `CPUTrainingEngine` and the GPU step call it first.
    public static func checkBatch(inputIds: [Int], labels: [Int], positions: [Int]? = nil, batch: Int, tokens: Int,
                                  config: LlamaConfig) throws {
        guard batch > 0, tokens > 0 else { throw ModelError("a micro-batch of \(batch) × \(tokens) tokens is empty") }
        let (n, overflow) = batch.multipliedReportingOverflow(by: tokens)
        guard !overflow, inputIds.count == n, labels.count == n else {
            throw ModelError("a micro-batch of \(batch) × \(tokens) tokens has \(inputIds.count) input ids and " +
                "\(labels.count) labels")
        }
        try checkPositions(positions, batch: batch, tokens: tokens)
        let longest = positions.map { ($0.max() ?? -1) + 1 } ?? tokens
        guard longest <= config.maxPositionEmbeddings else {
            throw ModelError("a sequence of \(longest) tokens is longer than max_position_embeddings " +
                "(\(config.maxPositionEmbeddings))")
        }
        let vocab = config.vocabSize
        if let i = inputIds.firstIndex(where: { $0 < 0 || $0 >= vocab }) {
            throw ModelError("input id \(inputIds[i]) (row \(i / tokens), position \(i % tokens)) is outside the " +
                "vocabulary [0, \(vocab))")
        }
        if let i = labels.firstIndex(where: { $0 != -100 && ($0 < 0 || $0 >= vocab) }) {
            throw ModelError("label \(labels[i]) (row \(i / tokens), position \(i % tokens)) is neither -100 nor a " +
                "token id in [0, \(vocab))")
        }
    }

    /// Loss (labels shifted inside, as transformers does; −100 ignored) and, if `withGradients`, the gradients of
    /// `gradientScale × sum of token losses` (default: the mean) for every adapter. `training` turns dropout on.
    /// With `checkpointing`, only each layer's input is kept and the layer is recomputed in the backward pass (same
    /// dropout masks, same numbers).
    public func step(inputIds: [Int], labels: [Int], positions: [Int]? = nil, batch: Int, tokens: Int,
                     withGradients: Bool = true,
                     training: Bool = true, rng: inout SeededGenerator, checkpointing: Bool = false,
                     gradientScale: Float? = nil, keepLogits: Bool = false) -> StepResult {
        // Callers check the batch first (`checkBatch`, which throws); here a bad one is a programming error.
        precondition(inputIds.count == batch * tokens && labels.count == batch * tokens)
        // A row of packed or padding-free documents may be longer than the context; each document's positions
        // may not (`checkBatch` checks the same).
        precondition((positions.map { ($0.max() ?? -1) + 1 } ?? tokens) <= config.maxPositionEmbeddings,
                     "sequence longer than max_position_embeddings")
        precondition(labels.allSatisfy { $0 == -100 || ($0 >= 0 && $0 < config.vocabSize) },
                     "a label is neither -100 nor a token id (check with LlamaModel.checkBatch)")
        let n = batch * tokens, c = config.hiddenSize, vocab = config.vocabSize
        var x = embedded(inputIds)
        // One draw per step seeds every dropout mask (LoRADropout), as on the GPU.
        let seed = rng.next()
        let layout = positions.map { PackedLayout(positions: $0, batch: batch, tokens: tokens) }
        var saved: [LayerActivations] = []
        for l in layers.indices {
            var act = LayerActivations()
            x = layerForward(l, x, batch: batch, tokens: tokens, layout: layout, training: training, seed: seed,
                             saving: &act)
            if withGradients { saved.append(checkpointing ? LayerActivations(x: act.x) : act) }
        }
        var rstdF = [Float](repeating: 0, count: n)
        var xf = [Float](repeating: 0, count: n * c)
        CPUOps.rmsNormForward(&xf, &rstdF, x, finalNorm, rows: n, width: c, eps: Float(config.rmsNormEps))
        let targets = Self.shiftedTargets(labels: labels, batch: batch, tokens: tokens)
        let targetRows = targets.indices.filter { targets[$0] != -100 }
        let count = targetRows.count
        let scale = gradientScale ?? (count > 0 ? 1 / Float(count) : 0)
        // lm_head and the loss over the rows that have a target (all rows when the logits are kept): a row without
        // one takes no loss and sends no gradient, so its logits are never needed (in a chat batch the prompts and
        // the padding: half the rows or more). A chunk of those rows at a time (at most 2^25 logits, 128 MiB, a
        // chunk; the chunks of one size), so the (N, V) logits never exist all at once for a large batch, and
        // lm_head is read (and packed by the products) once a chunk. With our GEMM a row's logits do not depend on
        // which other rows share its chunk (each output row is its own sums); OpenBLAS may sum them in another order.
        let rowsWithTarget = keepLogits ? Array(0..<n) : targetRows
        let m = rowsWithTarget.count
        let most = max(1, (1 << 25) / vocab), chunks = max(1, (m + most - 1) / most)
        let chunk = max(1, (m + chunks - 1) / chunks)
        var lossSum = 0.0
        var keptLogits: [Float] = keepLogits ? [Float](repeating: 0, count: n * vocab) : []
        var dxf = [Float](repeating: 0, count: withGradients ? n * c : 0)
        var logitsChunk = logitScratch.take(chunk * vocab)
        var dChunk: [Float]? = withGradients ? logitScratch.take(chunk * vocab) : nil
        defer { logitScratch.give(logitsChunk); if let dChunk { logitScratch.give(dChunk) } }
        var xChunk = [Float](repeating: 0, count: chunk * c), dxChunk = xChunk
        for start in stride(from: 0, to: m, by: chunk) {
            let rows = min(chunk, m - start), chunkRows = rowsWithTarget[start..<(start + rows)]
            for (i, r) in chunkRows.enumerated() {
                xChunk.replaceSubrange((i * c)..<((i + 1) * c), with: xf[(r * c)..<((r + 1) * c)])
            }
            if let lmHeadPacked {
                lmHeadPacked.forward(&logitsChunk, xChunk, rows: rows, accumulate: false)
            } else {
                CPUOps.linearForward(&logitsChunk, xChunk, lmHead, rows: rows, inFeatures: c, outFeatures: vocab)
            }
            if keepLogits {
                keptLogits.replaceSubrange((start * vocab)..<((start + rows) * vocab),
                                           with: logitsChunk[0..<(rows * vocab)])
            }
            let part = CPUOps.crossEntropy(logitsChunk, targets: chunkRows.map { targets[$0] }, vocab: vocab,
                                           dlogits: &dChunk, gradientScale: scale)
            lossSum += part.loss * Double(part.count)
            if withGradients, let d = dChunk {
                if let lmHeadPacked {
                    lmHeadPacked.backwardInput(&dxChunk, d, rows: rows)
                } else {
                    CPUOps.linearBackwardInput(&dxChunk, d, lmHead, rows: rows, inFeatures: c, outFeatures: vocab)
                }
                for (i, r) in chunkRows.enumerated() {
                    dxf.replaceSubrange((r * c)..<((r + 1) * c), with: dxChunk[(i * c)..<((i + 1) * c)])
                }
            }
        }
        let loss = count > 0 ? lossSum / Double(count) : 0
        var result = StepResult(loss: loss, tokenCount: count, gradients: [:], logits: keepLogits ? keptLogits : nil)
        guard withGradients else { return result }

        var dx = [Float](repeating: 0, count: n * c)
        CPUOps.rmsNormBackward(&dx, dxf, x, finalNorm, rstdF, rows: n, width: c, accumulate: false)
        var grads = LoRAGradients()
        for l in layers.indices.reversed() {
            var act = saved[l]
            if checkpointing {
                _ = layerForward(l, act.x, batch: batch, tokens: tokens, layout: layout, training: training,
                                 seed: seed, saving: &act)
            }
            dx = layerBackward(l, dx, act, batch: batch, tokens: tokens, layout: layout, grads: &grads)
            saved[l] = LayerActivations()
        }
        result.gradients = grads
        return result
    }

    /// The embedding rows of `ids` (N, C).
    func embedded(_ ids: [Int]) -> [Float] {
        let c = config.hiddenSize
        var x = [Float](repeating: 0, count: ids.count * c)
        for (r, id) in ids.enumerated() {
            precondition(id >= 0 && id < config.vocabSize, "token id \(id) outside the vocabulary")
            x.replaceSubrange((r * c)..<((r + 1) * c), with: embedding[(id * c)..<((id + 1) * c)])
        }
        return x
    }

    /// Packed documents in a batch: each token's position in its document and, for attention, where its document
    /// starts in the row (t − position).
    public struct PackedLayout {
        public let positions: [Int], starts: [Int]
        public init(positions: [Int], batch: Int, tokens: Int) {
            self.positions = positions
            starts = positions.indices.map { $0 % tokens - positions[$0] }
        }
    }

    /// Positions of packed documents (nil: none) must be B·T values, each row a run of documents: 0 where one
    /// starts (always at the row's first token), else the previous position + 1.
    public static func checkPositions(_ positions: [Int]?, batch: Int, tokens: Int) throws {
        guard let positions else { return }
        guard positions.count == batch * tokens else {
            throw ModelError("positions: \(positions.count) values for a batch of \(batch) × \(tokens) tokens")
        }
        for (i, p) in positions.enumerated() {
            let t = i % tokens
            guard p == 0 || (t > 0 && p == positions[i - 1] + 1) else {
                throw ModelError("positions: \(p) at row \(i / tokens), token \(t) (a document's positions count " +
                    "0, 1, 2, … from its first token, and a row starts one)")
            }
        }
    }

    /// The target of each position (B·T): the next position's label, −100 (ignored) at the end of each row, as
    /// transformers shifts the labels inside the model.
    public static func shiftedTargets(labels: [Int], batch: Int, tokens: Int) -> [Int] {
        var targets = [Int](repeating: -100, count: batch * tokens)
        for b in 0..<batch { for t in 0..<(tokens - 1) { targets[b * tokens + t] = labels[b * tokens + t + 1] } }
        return targets
    }

    /// Logits (B·T, V) of a batch, no dropout, no gradients.
    public func logits(inputIds: [Int], batch: Int, tokens: Int) -> [Float] {
        var rng = SeededGenerator(seed: 0)
        return step(inputIds: inputIds, labels: inputIds, batch: batch, tokens: tokens, withGradients: false,
                    training: false, rng: &rng, keepLogits: true).logits!
    }

    // MARK: One decoder layer

    func layerForward(_ l: Int, _ x: [Float], batch: Int, tokens: Int, layout: PackedLayout?,
                              training: Bool, seed: UInt64, saving act: inout LayerActivations) -> [Float] {
        let layer = layers[l]
        let n = batch * tokens, c = config.hiddenSize
        let h = config.headCount, hkv = config.kvHeadCount, d = config.headDim
        let eps = Float(config.rmsNormEps)
        act.x = x
        act.rstd1 = [Float](repeating: 0, count: n)
        act.h1 = [Float](repeating: 0, count: n * c)
        CPUOps.rmsNormForward(&act.h1, &act.rstd1, x, layer.inputNorm, rows: n, width: c, eps: eps)
        act.q = projectionForward(l, "q_proj", act.h1, rows: n, training: training, seed: seed, act: &act)
        act.k = projectionForward(l, "k_proj", act.h1, rows: n, training: training, seed: seed, act: &act)
        act.v = projectionForward(l, "v_proj", act.h1, rows: n, training: training, seed: seed, act: &act)
        CPUOps.rope(&act.q, cos: ropeCos.prefix(positions: tokens), sin: ropeSin.prefix(positions: tokens),
            batch: batch, tokens: tokens, heads: h, headDim: d, positions: layout?.positions)
        CPUOps.rope(&act.k, cos: ropeCos.prefix(positions: tokens), sin: ropeSin.prefix(positions: tokens),
            batch: batch, tokens: tokens, heads: hkv, headDim: d, positions: layout?.positions)
        act.attention = [Float](repeating: 0, count: n * h * d)
        CPUOps.attentionForward(&act.attention, &act.probs, q: act.q, k: act.k, v: act.v, batch: batch, tokens: tokens,
                                heads: h, kvHeads: hkv, headDim: d, starts: layout?.starts)
        let o = projectionForward(l, "o_proj", act.attention, rows: n, training: training, seed: seed, act: &act)
        act.xMid = zip(x, o).map { $0 + $1 }
        act.rstd2 = [Float](repeating: 0, count: n)
        act.h2 = [Float](repeating: 0, count: n * c)
        CPUOps.rmsNormForward(&act.h2, &act.rstd2, act.xMid, layer.postAttentionNorm, rows: n, width: c, eps: eps)
        act.gate = projectionForward(l, "gate_proj", act.h2, rows: n, training: training, seed: seed, act: &act)
        act.up = projectionForward(l, "up_proj", act.h2, rows: n, training: training, seed: seed, act: &act)
        act.act = [Float](repeating: 0, count: act.gate.count)
        CPUOps.swigluForward(&act.act, gate: act.gate, up: act.up)
        let down = projectionForward(l, "down_proj", act.act, rows: n, training: training, seed: seed, act: &act)
        return zip(act.xMid, down).map { $0 + $1 }
    }

    private func layerBackward(_ l: Int, _ dOut: [Float], _ act: LayerActivations, batch: Int, tokens: Int,
                               layout: PackedLayout?, grads: inout LoRAGradients) -> [Float] {
        let layer = layers[l]
        let n = batch * tokens, c = config.hiddenSize
        let h = config.headCount, hkv = config.kvHeadCount, d = config.headDim
        var dxMid = dOut
        let dAct = projectionBackward(l, "down_proj", dOut, input: act.act, rows: n, act: act, grads: &grads)
        var dGate = [Float](repeating: 0, count: dAct.count), dUp = dGate
        CPUOps.swigluBackward(dgate: &dGate, dup: &dUp, da: dAct, gate: act.gate, up: act.up)
        var dh2 = projectionBackward(l, "gate_proj", dGate, input: act.h2, rows: n, act: act, grads: &grads)
        let dh2Up = projectionBackward(l, "up_proj", dUp, input: act.h2, rows: n, act: act, grads: &grads)
        for i in dh2.indices { dh2[i] += dh2Up[i] }
        CPUOps.rmsNormBackward(&dxMid, dh2, act.xMid, layer.postAttentionNorm, act.rstd2, rows: n, width: c, accumulate: true)
        let dAttention = projectionBackward(l, "o_proj", dxMid, input: act.attention, rows: n, act: act, grads: &grads)
        var dq = [Float](repeating: 0, count: act.q.count), dk = [Float](repeating: 0, count: act.k.count)
        var dv = [Float](repeating: 0, count: act.v.count)
        CPUOps.attentionBackward(dq: &dq, dk: &dk, dv: &dv, dout: dAttention, probs: act.probs, q: act.q, k: act.k,
                                 v: act.v, batch: batch, tokens: tokens, heads: h, kvHeads: hkv, headDim: d,
                                 starts: layout?.starts)
        CPUOps.rope(&dq, cos: ropeCos.prefix(positions: tokens), sin: ropeSin.prefix(positions: tokens), batch: batch,
            tokens: tokens, heads: h, headDim: d, inverse: true, positions: layout?.positions)
        CPUOps.rope(&dk, cos: ropeCos.prefix(positions: tokens), sin: ropeSin.prefix(positions: tokens), batch: batch,
            tokens: tokens, heads: hkv, headDim: d, inverse: true, positions: layout?.positions)
        var dh1 = projectionBackward(l, "q_proj", dq, input: act.h1, rows: n, act: act, grads: &grads)
        for (name, g) in [("k_proj", dk), ("v_proj", dv)] {
            let part = projectionBackward(l, name, g, input: act.h1, rows: n, act: act, grads: &grads)
            for i in dh1.indices { dh1[i] += part[i] }
        }
        var dx = dxMid
        CPUOps.rmsNormBackward(&dx, dh1, act.x, layer.inputNorm, act.rstd1, rows: n, width: c, accumulate: true)
        return dx
    }

    // MARK: A frozen projection with its adapter

    /// y (N, out) = x Wᵀ + bias + scale · (dropout(x) Aᵀ) Bᵀ; saves z = dropout(x) Aᵀ and the dropout's kept
    /// bits (the backward pass applies the mask again to the layer's saved input).
    private func projectionForward(_ l: Int, _ name: String, _ x: [Float], rows: Int, training: Bool,
                                   seed: UInt64, act: inout LayerActivations) -> [Float] {
        let p = layers[l].projections[name]!
        var y = [Float](repeating: 0, count: rows * p.outFeatures)
        if let bias = p.bias { for r in 0..<rows { for o in 0..<p.outFeatures { y[r * p.outFeatures + o] = bias[o] } } }
        p.forward(&y, x, rows: rows, accumulate: p.bias != nil)
        guard let adapter = adapters["\(l).\(name)"] else { return y }
        let r = loraConfig.r
        var z = [Float](repeating: 0, count: rows * r)
        if training && loraConfig.dropout > 0 {
            let kept = LoRADropout.KeptBits(seed: LoRADropout.seed(seed, layer: l, projection: name), rows: rows,
                                            width: p.inFeatures, keep: Float(1 - loraConfig.dropout))
            let input = Self.masked(x, kept)
            CPUOps.linearForward(&z, input, adapter.a, rows: rows, inFeatures: p.inFeatures, outFeatures: r)
            act.loraKept[name] = kept
        } else {
            CPUOps.linearForward(&z, x, adapter.a, rows: rows, inFeatures: p.inFeatures, outFeatures: r)
        }
        CPUOps.linearForward(&y, z, adapter.b, rows: rows, inFeatures: r, outFeatures: p.outFeatures, accumulate: true,
                             alpha: loraConfig.scale)
        act.loraZ[name] = z
        return y
    }

    /// dx (N, in) from dy and the projection's input x (as the forward pass read it, before dropout), adding the
    /// adapter's gradients into `grads`.
    private func projectionBackward(_ l: Int, _ name: String, _ dy: [Float], input x: [Float], rows: Int,
                                    act: LayerActivations, grads: inout LoRAGradients) -> [Float] {
        let p = layers[l].projections[name]!
        var dx = [Float](repeating: 0, count: rows * p.inFeatures)
        p.backwardInput(&dx, dy, rows: rows)
        let key = "\(l).\(name)"
        guard let adapter = adapters[key], let z = act.loraZ[name] else { return dx }
        let r = loraConfig.r, s = loraConfig.scale
        var g = grads[key] ?? LoRAWeights(a: [Float](repeating: 0, count: adapter.a.count),
                                          b: [Float](repeating: 0, count: adapter.b.count))
        CPUOps.linearBackwardWeight(&g.b, dy, z, rows: rows, inFeatures: r, outFeatures: p.outFeatures,
                                    accumulate: true, alpha: s)
        var dz = [Float](repeating: 0, count: rows * r)
        CPUOps.linearBackwardInput(&dz, dy, adapter.b, rows: rows, inFeatures: r, outFeatures: p.outFeatures, alpha: s)
        if let kept = act.loraKept[name] {
            var scratch = Self.masked(x, kept)
            CPUOps.linearBackwardWeight(&g.a, dz, scratch, rows: rows, inFeatures: p.inFeatures, outFeatures: r,
                                        accumulate: true)
            CPUOps.linearBackwardInput(&scratch, dz, adapter.a, rows: rows, inFeatures: p.inFeatures, outFeatures: r)
            scratch.withUnsafeBufferPointer { d in
                dx.withUnsafeMutableBufferPointer { kept.accumulate(d.baseAddress!, into: $0.baseAddress!) }
            }
        } else {
            CPUOps.linearBackwardWeight(&g.a, dz, x, rows: rows, inFeatures: p.inFeatures, outFeatures: r,
                                        accumulate: true)
            CPUOps.linearBackwardInput(&dx, dz, adapter.a, rows: rows, inFeatures: p.inFeatures, outFeatures: r,
                                       accumulate: true)
        }
        grads[key] = g
        return dx
    }

    /// dropout(x): the elements `kept` keeps, times 1/keep, and zeros.
    private static func masked(_ x: [Float], _ kept: LoRADropout.KeptBits) -> [Float] {
        [Float](unsafeUninitializedCapacity: x.count) { out, initialized in
            x.withUnsafeBufferPointer { kept.apply($0.baseAddress!, into: out.baseAddress!) }
            initialized = x.count
        }
    }
}
