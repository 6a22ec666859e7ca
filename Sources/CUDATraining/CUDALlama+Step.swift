import CUDABackend
import Foundation
import Llama

/// Packed rows on the GPU (`LlamaModel.PackedLayout`, int32): each token's RoPE position and the row-local index
/// where its document starts, the first key its attention sees.
struct GPUPacking {
    let positions: DeviceBuffer, starts: DeviceBuffer
    init(_ layout: LlamaModel.PackedLayout, device: CUDADevice) throws {
        positions = try device.upload(layout.positions.map { Int32($0) })
        starts = try device.upload(layout.starts.map { Int32($0) })
    }
}

/// Generation's key/value cache seen by one forward call: per layer (B, capacity, Hkv·D) keys and values; `at`
/// (i32, B) the position where each row's first token of this call goes. With `lengths` (i32, B: at + 1) the call
/// is a decode step, one token per row attending to the cache, rotated at its position `at`; without, it is the
/// prompt (at = 0), attending to itself as in training, its keys and values written into the cache on the way.
struct GPUDecoding {
    let keys: [DeviceBuffer], values: [DeviceBuffer]
    let capacity: Int
    let at: DeviceBuffer, lengths: DeviceBuffer?
}

/// Where an offloaded layer's tensors sit in its pinned host buffer (byte offsets, each a multiple of 256): the layer
/// input x and, so that the recompute can skip attention and the output projection's base product, the attention
/// output, its log-sum-exp and xMid = x + o_proj(attention); and the keys (after RoPE) and values, so that it skips
/// the k and v projections' base products too. The recompute then redoes only q, the MLP's gate and up, and the
/// adapters' inputs.
struct OffloadLayout {
    enum Tensor { case x, attention, lse, xMid, keys, values }
    let x: Int, attention: Int, lse: Int, xMid: Int, keys: Int, values: Int, bytes: Int
    let hiddenCount: Int, attentionCount: Int, lseCount: Int, keyCount: Int
    init(config: LlamaConfig, batch: Int, tokens: Int, dtype: GPUDType) {
        let n = batch * tokens
        hiddenCount = n * config.hiddenSize
        attentionCount = n * config.headCount * config.headDim
        lseCount = batch * config.headCount * tokens
        keyCount = n * config.kvHeadCount * config.headDim
        func rounded(_ b: Int) -> Int { (b + 255) / 256 * 256 }
        x = 0
        attention = rounded(hiddenCount * dtype.size)
        lse = attention + rounded(attentionCount * dtype.size)
        xMid = lse + rounded(lseCount * 4)
        keys = xMid + rounded(hiddenCount * dtype.size)
        values = keys + rounded(keyCount * dtype.size)
        bytes = values + keyCount * dtype.size
    }
    func offset(_ t: Tensor) -> Int {
        switch t {
        case .x: return x
        case .attention: return attention
        case .lse: return lse
        case .xMid: return xMid
        case .keys: return keys
        case .values: return values
        }
    }
}

/// One layer's copies into its pinned host buffer during the forward pass: each tensor is held until the compute
/// stream has waited for its copy (`finish`), so that its memory is not reused while the copy engine reads it.
final class LayerOffload {
    let device: CUDADevice, host: PinnedHostBuffer, layout: OffloadLayout
    private var copies: [GPUEvent] = [], held: [DeviceBuffer] = []
    init(device: CUDADevice, host: PinnedHostBuffer, layout: OffloadLayout) {
        self.device = device; self.host = host; self.layout = layout
    }
    func save(_ t: OffloadLayout.Tensor, _ b: DeviceBuffer) throws {
        copies.append(try device.copyToHostAsync(b, host, at: layout.offset(t)))
        held.append(b)
    }
    /// Compute waits for every copy (queued work only: the host does not block); the tensors may be dropped then.
    func finish() throws {
        for e in copies { try device.wait(for: e, on: .compute) }
        copies = []; held = []
    }
}

/// What one GPU forward (and backward) pass produced.
public struct GPUStepResult {
    /// Mean loss over the counted targets, and their count.
    public var loss: Double
    public var tokenCount: Int
    /// Logits (B·T, V) as float32, when asked for.
    public var logits: [Float]?
}

extension CUDALlama {
    /// The GPU twin of `LlamaModel.step`: the loss (labels shifted inside, −100 ignored) and, with `withGradients`,
    /// `gradientScale` × d(sum of token losses) added into the adapters' gradient accumulators. Dropout masks come
    /// from `seed` (one stream per layer and projection), so a recomputed layer (`checkpointing`) draws the same ones.
    /// `positions` packs documents into rows, as the CPU step takes them: RoPE restarts with each document and
    /// attention stays inside it.
    public func step(inputIds: [Int], labels: [Int], positions: [Int]? = nil, batch: Int, tokens: Int,
                     withGradients: Bool = true,
                     training: Bool = true, seed: UInt64 = 0, checkpointing: Bool = false,
                     gradientScale: Float? = nil, keepLogits: Bool = false) throws -> GPUStepResult {
        // Sizes, positions, ids and labels, by the CPU step's rule: an id or label outside the vocabulary would
        // make the embedding and loss kernels read or write out of bounds.
        try LlamaModel.checkBatch(inputIds: inputIds, labels: labels, positions: positions, batch: batch,
                                  tokens: tokens, config: config)
        try ensureRope(tokens)
        let packing = try positions.map {
            try GPUPacking(LlamaModel.PackedLayout(positions: $0, batch: batch, tokens: tokens), device: device)
        }
        let n = batch * tokens, c = config.hiddenSize
        var x: DeviceBuffer? = try device.allocate(n * c, dtype)
        do {
            let ids = try device.upload(inputIds.map { Int32($0) })
            try device.embedding(x!, ids: ids, table: embedding, rows: n, width: c)
        }
        // With checkpointing each layer keeps only its input on the GPU, or (offloaded) its input and attention
        // output in pinned host memory (`OffloadLayout`): the copies to the host run on the copy stream beside the
        // layer's forward, and the compute stream waits for them only at the end of the next layer's forward, so
        // that a layer whose copies outlast its compute (the link is slower than the step at times) does not
        // stall the next one; the tensors are held on the GPU until then.
        let offload = withGradients && checkpointing && (offloadCheckpoints ?? true)
        let layout = OffloadLayout(config: config, batch: batch, tokens: tokens, dtype: dtype)
        var saved: [GPULayerActivations?] = []
        var pending: LayerOffload? = nil   // the previous layer's copies, still in flight
        // The adapters' z stay on the GPU from the forward pass to the recompute, which then draws no dropout mask
        // and runs no down projection (a few MiB a layer).
        let savedZ = (withGradients && checkpointing) ? layers.indices.map { _ in GPUSavedZ() } : []
        for l in layers.indices {
            let act = GPULayerActivations(x: x!)
            let copies = offload ? LayerOffload(device: device, host: try hostCheckpoint(l, bytes: layout.bytes),
                                                layout: layout) : nil
            try copies?.save(.x, x!)
            x = try layerForward(l, x!, batch: batch, tokens: tokens, packing: packing, training: training, seed: seed,
                                 saving: act, keeps: withGradients && !checkpointing, offload: copies,
                                 savedZ: savedZ.isEmpty ? nil : savedZ[l])!
            try pending?.finish()
            pending = copies
            if withGradients { saved.append(offload ? nil : checkpointing ? GPULayerActivations(x: act.x) : act) }
        }
        try pending?.finish()
        pending = nil
        let head = try headStep(x!, labels: labels, batch: batch, tokens: tokens, withGradients: withGradients,
                                gradientScale: gradientScale, keepLogits: keepLogits)
        x = nil
        let result = GPUStepResult(loss: head.loss, tokenCount: head.count, logits: head.logits)
        guard withGradients, var dx = head.dx else { return result }

        // An offloaded layer comes back while the one above it is differentiated: layer l − 1's input as layer l's
        // backward starts, its attention output, lse and xMid once layer l's MLP is done (past the layer's peak of
        // memory). The copies are queued in order on one stream, so the last one's event covers them all.
        func fetch(_ l: Int) throws -> GPULayerActivations? {
            guard offload, l >= 0 else { return nil }
            return GPULayerActivations(x: try device.copyFromHostAsync(hostCheckpoints[l], at: layout.x,
                                                                       count: layout.hiddenCount, dtype).0)
        }
        // Its keys and values once its MLP's activations are released (they take less room), to be in by the
        // attention's backward.
        func fetchKeysAndValues(_ l: Int, into act: GPULayerActivations) throws -> GPUEvent {
            let host = hostCheckpoints[l]
            act.k = try device.copyFromHostAsync(host, at: layout.keys, count: layout.keyCount, dtype).0
            let (v, ready) = try device.copyFromHostAsync(host, at: layout.values, count: layout.keyCount, dtype)
            act.v = v
            return ready
        }
        func fetchRest(_ l: Int, into act: GPULayerActivations?) throws -> GPUEvent? {
            guard let act else { return nil }
            let host = hostCheckpoints[l]
            act.attention = try device.copyFromHostAsync(host, at: layout.attention, count: layout.attentionCount,
                                                         dtype).0
            act.lse = try device.copyFromHostAsync(host, at: layout.lse, count: layout.lseCount, .f32).0
            let (xMid, ready) = try device.copyFromHostAsync(host, at: layout.xMid, count: layout.hiddenCount, dtype)
            act.xMid = xMid
            return ready
        }
        var next = try fetch(layers.count - 1)
        var ready = try fetchRest(layers.count - 1, into: next)
        for l in layers.indices.reversed() {
            let act: GPULayerActivations
            if let restored = next, let done = ready {
                try device.wait(for: done, on: .compute)
                act = restored
                next = try fetch(l - 1)
            } else {
                act = saved[l]!
                saved[l] = nil
            }
            // A layer restored from host memory recomputes its MLP half first and its attention half after the
            // MLP's backward (without checkpointing every layer keeps its attention output on the GPU).
            let restored = offload && act.attention != nil
            var keysAndValues: GPUEvent? = nil
            func recompute(_ part: LayerPart) throws {
                _ = try layerForward(l, act.x, batch: batch, tokens: tokens, packing: packing, training: training,
                                     seed: seed, saving: act, keeps: true, recomputing: true, part: part,
                                     savedZ: savedZ.isEmpty ? nil : savedZ[l])
            }
            if checkpointing { try recompute(restored ? .mlp : .all) }
            dx = try layerBackward(l, dx, act, batch: batch, tokens: tokens, packing: packing, training: training,
                                   seed: seed) { point in
                switch point {
                case .mlpActivationsReleased:
                    if restored { keysAndValues = try fetchKeysAndValues(l, into: act) }
                case .mlpDone:
                    ready = try fetchRest(l - 1, into: next)
                    if checkpointing && restored { try recompute(.attention) }
                    if let keysAndValues { try device.wait(for: keysAndValues, on: .compute) }
                }
            }
            if !savedZ.isEmpty { savedZ[l].z = [:] }
        }
        try device.synchronize()
        return result
    }

    /// The pinned host buffer of layer `l`'s offloaded tensors (at least `bytes`).
    func hostCheckpoint(_ l: Int, bytes: Int) throws -> PinnedHostBuffer {
        if hostCheckpoints.count != layers.count || hostCheckpoints[l].bytes < bytes {
            // One size for every layer; a larger batch replaces them all.
            try device.synchronize()
            hostCheckpoints = []
            hostCheckpoints = try layers.indices.map { _ in try device.allocatePinned(bytes) }
        }
        return hostCheckpoints[l]
    }

    /// The final norm, lm_head and the loss of the last layer's output x, with dx (the gradient reaching x) when
    /// `withGradients`. lm_head runs a chunk of rows at a time: the (N, V) logits never exist all at once. What it
    /// makes besides dx is released on return.
    func headStep(_ x: DeviceBuffer, labels: [Int], batch: Int, tokens: Int, withGradients: Bool, gradientScale: Float?,
                  keepLogits: Bool) throws -> (loss: Double, count: Int, logits: [Float]?, dx: DeviceBuffer?) {
        let n = batch * tokens, c = config.hiddenSize, vocab = config.vocabSize
        let rstdF = try device.allocate(n, .f32)
        let xf = try device.allocate(n * c, dtype)
        try device.rmsNormForward(xf, rstdF, x, finalNorm, rows: n, width: c, eps: Float(config.rmsNormEps))
        let targets = LlamaModel.shiftedTargets(labels: labels, batch: batch, tokens: tokens).map { Int32($0) }
        let count = targets.filter { $0 != -100 }.count
        let scale = gradientScale ?? (count > 0 ? 1 / Float(count) : 0)
        let targetBuffer = try device.upload(targets)
        let rowLoss = try device.allocate(n, .f32)
        let chunk = max(1, min(n, (1 << 27) / (vocab * dtype.size)))
        var keptLogits: [Float] = []
        device.gemmLabel = "lm_head"
        let dxf = withGradients ? try device.allocate(n * c, dtype) : nil
        for start in stride(from: 0, to: n, by: chunk) {
            let rows = min(chunk, n - start)
            let logits = try device.allocate(rows * vocab, dtype)
            try device.gemm(m: rows, n: vocab, k: c, a: xf, aOffset: start * c, lda: c, b: lmHead, ldb: c, transB: true,
                            c: logits, ldc: vocab)
            if keepLogits { keptLogits += try device.download(logits) }
            try device.crossEntropy(logits, rowLoss: rowLoss, targets: targetBuffer, rowOffset: start, rows: rows,
                                    vocab: vocab, scale: scale, writeGradient: withGradients)
            if let dxf {
                try device.gemm(m: rows, n: c, k: vocab, a: logits, lda: vocab, b: lmHead, ldb: c, c: dxf,
                                cOffset: start * c, ldc: c)
            }
        }
        let loss = count > 0 ? try device.download(rowLoss).reduce(0.0) { $0 + Double($1) } / Double(count) : 0
        guard let dxf else { return (loss, count, keepLogits ? keptLogits : nil, nil) }
        let dx = try device.allocate(n * c, dtype)
        try device.rmsNormBackward(dx, dxf, x, finalNorm, rstdF, rows: n, width: c, accumulate: false)
        return (loss, count, keepLogits ? keptLogits : nil, dx)
    }

    /// Logits (B·T, V) of a batch, no dropout, no gradients.
    public func logits(inputIds: [Int], batch: Int, tokens: Int) throws -> [Float] {
        try step(inputIds: inputIds, labels: inputIds, batch: batch, tokens: tokens, withGradients: false,
                 training: false, keepLogits: true).logits!
    }

    // MARK: One decoder layer

    /// What of a layer `layerForward` runs: all of it, or (recomputing a layer whose attention output and xMid came
    /// back from host memory) its MLP or its attention half alone, so that the backward can recompute the MLP
    /// half, differentiate it, and only then recompute q, k and v (not live at the MLP's peak).
    enum LayerPart { case all, attention, mlp }

    /// One decoder layer. `recomputing` (gradient checkpointing's second forward) skips the down projection's
    /// product: the backward pass needs only its input and LoRA intermediates, not the layer's output (nil then).
    /// A recompute that finds the attention output, its lse and xMid already in `act` (brought back from host
    /// memory) skips attention and the output projection's base product too. `act` keeps what the backward pass
    /// reads when `keeps` (no checkpointing, or the recompute); otherwise each tensor is released at its last use in
    /// this layer. `offload` copies the attention output, lse and xMid to host memory as they are made. `part`
    /// runs one half of such a restored recompute (`LayerPart`). `savedZ`: the forward pass keeps its adapters' z
    /// there, and the recompute takes them back instead of running lora_down again (the same values: same x, same
    /// masks). The recompute also keeps its dequantized W in `act` for the backward's dx products.
    @discardableResult
    func layerForward(_ l: Int, _ x: DeviceBuffer, batch: Int, tokens: Int, packing: GPUPacking?,
                      decoding: GPUDecoding? = nil, training: Bool, seed: UInt64,
                      saving act: GPULayerActivations, keeps: Bool, recomputing: Bool = false,
                      part: LayerPart = .all, offload: LayerOffload? = nil,
                      savedZ: GPUSavedZ? = nil) throws -> DeviceBuffer? {
        let layer = layers[l]
        let n = batch * tokens, c = config.hiddenSize
        let h = config.headCount, hkv = config.kvHeadCount, d = config.headDim
        let eps = Float(config.rmsNormEps)
        // Restored: the attention output and lse came back from host memory (and xMid, which the attention half
        // alone does not read).
        let restored = recomputing && act.attention != nil && act.lse != nil
            && (act.xMid != nil || part == .attention)
        let keysAndValuesRestored = restored && act.k != nil && act.v != nil   // after RoPE, from host memory
        var z: [String: GPUMatrix] = [:]   // the adapters' z of the projections about to run
        func down(_ names: [String], _ input: DeviceBuffer, ld: Int? = nil) throws {
            let x = GPUMatrix(buffer: input, ld: ld ?? input.count / n)
            if recomputing, let savedZ, let restored = try restoreZ(l, names, x: x, rows: n, from: savedZ) {
                z = restored
                return
            }
            z = try adaptersDown(l, names, x, rows: n, training: training, seed: seed)
            if !recomputing, let savedZ { try saveZ(l, names, z, x: x, rows: n, into: savedZ) }
        }
        func project(_ name: String, _ input: DeviceBuffer, ld: Int? = nil, output: Bool = true,
                     residual: DeviceBuffer? = nil) throws -> DeviceBuffer? {
            try projectionForward(l, name, GPUMatrix(buffer: input, ld: ld ?? input.count / n),
                                  z: z.removeValue(forKey: name), rows: n, act: act, output: output, keeps: keeps,
                                  keepWeight: recomputing, residual: residual)
        }
        let qkv = ["q_proj", "k_proj", "v_proj"], gateUp = ["gate_proj", "up_proj"]
        precondition(part == .all || restored, "layerForward: a part alone is the recompute of a restored layer")
        if part != .mlp {
            act.x = x
            act.rstd1 = try device.allocate(n, .f32)
            let ld1 = joinedWidth(l, qkv, c)   // h1 with room for the adapters' z beside it
            act.h1 = try device.allocate(n * ld1, dtype)
            try device.rmsNormForward(act.h1, act.rstd1, x, layer.inputNorm, rows: n, width: c, eps: eps, ldy: ld1)
            try down(qkv, act.h1, ld: ld1)
            act.q = try project("q_proj", act.h1, ld: ld1)!
            if keysAndValuesRestored {   // the adapters' inputs only
                _ = try project("k_proj", act.h1, ld: ld1, output: false)
                _ = try project("v_proj", act.h1, ld: ld1, output: false)
            } else {
                act.k = try project("k_proj", act.h1, ld: ld1)!
                act.v = try project("v_proj", act.h1, ld: ld1)!
            }
            if !keeps { act.h1 = nil; act.rstd1 = nil }
            let positions = decoding?.lengths != nil ? decoding?.at : packing?.positions
            try device.rope(act.q, cos: ropeCos, sin: ropeSin, batch: batch, tokens: tokens, heads: h, headDim: d,
                            positions: positions)
            if !keysAndValuesRestored {
                try device.rope(act.k, cos: ropeCos, sin: ropeSin, batch: batch, tokens: tokens, heads: hkv,
                                headDim: d, positions: positions)
                try offload?.save(.keys, act.k)
                try offload?.save(.values, act.v)
            }
            if !restored { act.attention = try device.allocate(n * h * d, dtype) }
            if let decoding {
                for (cache, src) in [(decoding.keys[l], act.k!), (decoding.values[l], act.v!)] {
                    try device.kvCacheWrite(cache, src, at: decoding.at, batch: batch, tokens: tokens, width: hkv * d,
                                            capacity: decoding.capacity)
                }
            }
            if restored {
                // attention and lse as the forward pass made them
            } else if let decoding, let lengths = decoding.lengths {
                try device.decodeAttention(act.attention, q: act.q, keys: decoding.keys[l], values: decoding.values[l],
                                           lengths: lengths, batch: batch, heads: h, kvHeads: hkv, headDim: d,
                                           capacity: decoding.capacity)
            } else {
                act.lse = try device.allocate(batch * h * tokens, .f32)
                try device.flashAttentionForward(act.attention, lse: act.lse, q: act.q, k: act.k, v: act.v,
                                                 batch: batch, tokens: tokens, heads: h, kvHeads: hkv, headDim: d,
                                                 starts: packing?.starts)
                try offload?.save(.attention, act.attention)
                try offload?.save(.lse, act.lse)
            }
            if !keeps { act.q = nil; act.k = nil; act.v = nil; act.lse = nil }
            try down(["o_proj"], act.attention)
            if restored {
                _ = try project("o_proj", act.attention, output: false)   // the adapter's z only
            } else {
                act.xMid = try project("o_proj", act.attention, residual: x)!   // x + o_proj(attention)
                try offload?.save(.xMid, act.xMid)
            }
            if !keeps { act.attention = nil }
        }
        guard part != .attention else { return nil }
        act.rstd2 = try device.allocate(n, .f32)
        let ld2 = joinedWidth(l, gateUp, c)
        act.h2 = try device.allocate(n * ld2, dtype)
        try device.rmsNormForward(act.h2, act.rstd2, act.xMid, layer.postAttentionNorm, rows: n, width: c, eps: eps,
                                  ldy: ld2)
        try down(gateUp, act.h2, ld: ld2)
        act.gate = try project("gate_proj", act.h2, ld: ld2)!
        act.up = try project("up_proj", act.h2, ld: ld2)!
        if !keeps { act.h2 = nil; act.rstd2 = nil }
        act.act = try device.allocate(act.gate.count, dtype)
        try device.swigluForward(act.act, gate: act.gate, up: act.up)
        if !keeps { act.gate = nil; act.up = nil }
        let input = act.act!
        if !keeps { act.act = nil }
        try down(["down_proj"], input)
        return try project("down_proj", input, output: !recomputing, residual: act.xMid)   // xMid + down_proj(act)
    }

    /// Where a layer's backward calls back (`layerBackward`): once the MLP's activations are released (its gate and
    /// up hold their own gradients then), and between the MLP's part and the attention's.
    enum BackwardPoint { case mlpActivationsReleased, mlpDone }

    /// One decoder layer's backward: dx from dOut (which it overwrites and returns), calling `at` at the
    /// `BackwardPoint`s. Every activation and gradient
    /// is released at its last use (scopes and optionals: Swift may otherwise keep a buffer to the end of its scope),
    /// so the layer's working set is what is live, not everything it made.
    func layerBackward(_ l: Int, _ dOut: DeviceBuffer, _ act: GPULayerActivations, batch: Int, tokens: Int,
                       packing: GPUPacking?, training: Bool, seed: UInt64,
                       at: (BackwardPoint) throws -> Void = { _ in }) throws -> DeviceBuffer {
        let layer = layers[l]
        let n = batch * tokens, c = config.hiddenSize
        let h = config.headCount, hkv = config.kvHeadCount, d = config.headDim
        let dxMid = dOut
        func adapterGradients(_ dys: [(String, DeviceBuffer)]) throws -> [String: DeviceBuffer] {
            try adaptersBackward(l, dys, rows: n, act: act, training: training, seed: seed)
        }
        func inputGradient(_ name: String, _ dy: DeviceBuffer, _ dz: [String: DeviceBuffer],
                           into: DeviceBuffer? = nil) throws -> DeviceBuffer {
            try projectionBackward(l, name, dy, dz: dz[name], weight: act.weights.removeValue(forKey: name), rows: n,
                                   training: training, seed: seed, into: into)
        }
        do {   // MLP
            var dGate: DeviceBuffer?, dUp: DeviceBuffer?
            do {
                let dz = try adapterGradients([("down_proj", dOut)])
                act.act = nil   // only the down projection's adapter reads it: released before dAct is made
                let dAct = try inputGradient("down_proj", dOut, dz)
                // In place: gate's memory becomes dgate and up's dup.
                try device.swigluBackward(dgate: act.gate, dup: act.up, da: dAct, gate: act.gate, up: act.up)
                dGate = act.gate; dUp = act.up
            }
            act.gate = nil; act.up = nil
            try at(.mlpActivationsReleased)
            let dz = try adapterGradients([("gate_proj", dGate!), ("up_proj", dUp!)])
            let dh2 = try inputGradient("gate_proj", dGate!, dz)
            dGate = nil
            _ = try inputGradient("up_proj", dUp!, dz, into: dh2)
            dUp = nil
            act.h2 = nil
            try device.rmsNormBackward(dxMid, dh2, act.xMid, layer.postAttentionNorm, act.rstd2, rows: n, width: c,
                                       accumulate: true)
            act.xMid = nil; act.rstd2 = nil
        }
        try at(.mlpDone)
        var grads: [String: DeviceBuffer] = [:]   // dq, dk (RoPE undone by the kernels), dv; released once used
        do {   // attention
            let dAttention = try inputGradient("o_proj", dxMid, try adapterGradients([("o_proj", dxMid)]))
            let dq = try device.allocate(act.q.count, dtype), dk = try device.allocate(act.k.count, dtype)
            let dv = try device.allocate(act.v.count, dtype)
            try device.flashAttentionBackward(dq: dq, dk: dk, dv: dv, dout: dAttention, out: act.attention,
                                              lse: act.lse, q: act.q, k: act.k, v: act.v, batch: batch, tokens: tokens,
                                              heads: h, kvHeads: hkv, headDim: d, starts: packing?.starts,
                                              unrotating: (ropeCos, ropeSin, packing?.positions))
            act.attention = nil; act.lse = nil; act.q = nil; act.k = nil; act.v = nil
            grads = ["q_proj": dq, "k_proj": dk, "v_proj": dv]
        }
        let dz = try adapterGradients(["q_proj", "k_proj", "v_proj"].map { ($0, grads[$0]!) })
        let dh1 = try inputGradient("q_proj", grads.removeValue(forKey: "q_proj")!, dz)
        for name in ["k_proj", "v_proj"] {
            _ = try inputGradient(name, grads.removeValue(forKey: name)!, dz, into: dh1)
        }
        act.h1 = nil
        try device.rmsNormBackward(dxMid, dh1, act.x, layer.inputNorm, act.rstd1, rows: n, width: c, accumulate: true)
        return dxMid
    }

    // MARK: A frozen projection with its adapter

    /// The adapter's keep rate (1: no dropout) and the mask seed of projection `name` in layer `l`.
    func dropout(_ l: Int, _ name: String, training: Bool, seed: UInt64) -> (keep: Float, seed: UInt64) {
        guard training && loraConfig.dropout > 0 else { return (1, 0) }
        return (Float(1 - loraConfig.dropout), LoRADropout.seed(seed, layer: l, projection: name))
    }

    /// The row width of the input of the projections in `names` (all of width k) with room beside it for their
    /// adapters' z, rounded up to a multiple of 64 (the products' k step: a ragged k costs the base product a
    /// whole step; the padding is zeros): the adapters' term then joins the base product as extra columns
    /// (`projectionForward`). k when none of them is adapted, when the frozen weights are kept dequantized
    /// (generation: no room beside them for B), or in float32: the conformance mode keeps the adapter's product
    /// apart, so that its sums run in the CPU's order (a joined product moves the last bits, which three AdamW
    /// steps amplify past the 1e-5 that fp32 GPU training must stay within of the CPU's).
    func joinedWidth(_ l: Int, _ names: [String], _ k: Int) -> Int {
        let adapted = names.filter { adapters["\(l).\($0)"] != nil }.count
        guard adapted > 0, keptWeights.isEmpty, dtype != .f32 else { return k }
        return (k + adapted * loraConfig.r + 63) / 64 * 64
    }

    /// The adapters' z = s · dropout(x) Aᵀ / keep (N, R) of the projections in `names` that have one, all reading
    /// x: one launch for up to three (q, k, v; gate, up), so that x is read about once. When x's rows are wider
    /// than the projections' input (`joinedWidth`), the z go into those extra columns, one slot of R each in the
    /// order of `names`; otherwise into buffers of their own.
    func adaptersDown(_ l: Int, _ names: [String], _ x: GPUMatrix, rows: Int, training: Bool,
                      seed: UInt64) throws -> [String: GPUMatrix] {
        let adapted = names.filter { adapters["\(l).\($0)"] != nil }
        guard let first = adapted.first else { return [:] }
        let k = layers[l].projections[first]!.inFeatures, r = loraConfig.r
        let keep = dropout(l, first, training: training, seed: seed).keep
        let joined = x.ld > k
        var z: [String: GPUMatrix] = [:]
        for (slot, name) in adapted.enumerated() {
            z[name] = joined ? GPUMatrix(buffer: x.buffer, at: x.at + k + slot * r, ld: x.ld)
                             : GPUMatrix(buffer: try device.allocate(rows * r, dtype), ld: r)
        }
        try device.loraDown(adapted.map { name in
            (z[name]!.buffer, z[name]!.at, adapters["\(l).\(name)"]!.aCompute,
             dropout(l, name, training: training, seed: seed).seed)
        }, x: x.buffer, rows: rows, k: k, r: r, ldx: x.ld, ldz: joined ? x.ld : r, keep: keep,
           scale: loraConfig.scale)
        return z
    }

    /// Keeps the z that `adaptersDown` made for `names` in `saved`: z beside x in its rows copied out (one buffer of
    /// count · R columns for the group), z in a buffer of its own kept as it is.
    func saveZ(_ l: Int, _ names: [String], _ z: [String: GPUMatrix], x: GPUMatrix, rows: Int,
               into saved: GPUSavedZ) throws {
        let adapted = names.filter { z[$0] != nil }
        guard let first = adapted.first else { return }
        let k = layers[l].projections[first]!.inFeatures, width = adapted.count * loraConfig.r
        if z[first]!.buffer === x.buffer {
            let compact = try device.allocate(rows * width, dtype)
            try device.copyColumns(from: (x.buffer, x.at + k, x.ld), to: (compact, 0, width), rows: rows,
                                   columns: width)
            for (slot, name) in adapted.enumerated() {
                saved.z[name] = GPUMatrix(buffer: compact, at: slot * loraConfig.r, ld: width)
            }
        } else {
            for name in adapted { saved.z[name] = z[name] }
        }
    }

    /// The z of `names` as `adaptersDown` would make them again from x (nil if `saved` lacks one): copied back
    /// into x's extra columns when z sits there.
    func restoreZ(_ l: Int, _ names: [String], x: GPUMatrix, rows: Int,
                  from saved: GPUSavedZ) throws -> [String: GPUMatrix]? {
        let adapted = names.filter { adapters["\(l).\($0)"] != nil }
        guard let first = adapted.first else { return [:] }
        guard adapted.allSatisfy({ saved.z[$0] != nil }) else { return nil }
        let k = layers[l].projections[first]!.inFeatures, r = loraConfig.r
        guard x.ld > k else { return Dictionary(uniqueKeysWithValues: adapted.map { ($0, saved.z[$0]!) }) }
        let compact = saved.z[first]!
        try device.copyColumns(from: (compact.buffer, 0, compact.ld), to: (x.buffer, x.at + k, x.ld), rows: rows,
                               columns: compact.ld)
        return Dictionary(uniqueKeysWithValues: adapted.enumerated().map { slot, name in
            (name, GPUMatrix(buffer: x.buffer, at: x.at + k + slot * r, ld: x.ld))
        })
    }

    /// y (N, out) = x Wᵀ + bias + z Bᵀ, z = s · dropout(x) Aᵀ from `adaptersDown` (nil: no adapter), W
    /// dequantized for this product only. Without `output`, only what the backward pass needs is kept (x and z),
    /// and nil returned. The adapter keeps x itself, not dropout(x): the mask is applied where the kernels read x
    /// (lora.cu), there and in the backward pass. When z sits beside x in its rows (slot j of x's extra columns),
    /// the adapter joins the base product: [x | z₀ … z_j … | 0] · [W | 0 … B … 0]ᵀ, W dequantized with
    /// room for B beside it (`dequantized(beside:)`), one product over x's whole rows. Otherwise the adapter's
    /// term is written first and the base product added onto it (beta = 1), so y is read only in the base
    /// product's epilogue. A
    /// `residual` (N, out) is added in the first product's epilogue (C = residual, D = y): y = residual + the
    /// projection, with no separate addition. With `keepWeight` (the recompute), the dequantized W stays in `act`
    /// for the backward's dx product, which then dequantizes nothing.
    func projectionForward(_ l: Int, _ name: String, _ x: GPUMatrix, z: GPUMatrix?, rows: Int,
                           act: GPULayerActivations, output: Bool, keeps: Bool, keepWeight: Bool = false,
                           residual: DeviceBuffer? = nil) throws -> DeviceBuffer? {
        let p = layers[l].projections[name]!
        let adapter = adapters["\(l).\(name)"], r = loraConfig.r
        if adapter != nil, let z, keeps { act.loraInput[name] = x; act.loraZ[name] = z }
        guard output else { return nil }
        let y = try device.allocate(rows * p.outFeatures, dtype)
        var onto = residual   // what the next product adds onto (C, beta 1), if anything yet
        var k = p.inFeatures, w: DeviceBuffer, ldw = p.inFeatures
        if let adapter, let z, z.buffer === x.buffer {
            let slot = (z.at - x.at - p.inFeatures) / r
            k = x.ld; ldw = x.ld
            w = try p.weight.dequantized(dtype, ld: ldw, beside: (adapter.bCompute, slot, r))
        } else {
            if let adapter, let z {
                device.gemmLabel = "lora y = z Bᵀ"
                try device.gemm(m: rows, n: p.outFeatures, k: r, a: z.buffer, aOffset: z.at, lda: z.ld,
                                b: adapter.bCompute, ldb: r, transB: true, c: onto ?? y, ldc: p.outFeatures,
                                beta: onto == nil ? 0 : 1, d: y)
                onto = y
            }
            w = try baseWeight(l, name)
        }
        if keepWeight { act.weights[name] = GPUMatrix(buffer: w, ld: ldw) }
        device.gemmLabel = "base"
        try device.gemm(m: rows, n: p.outFeatures, k: k, a: x.buffer, aOffset: x.at, lda: x.ld, b: w, ldb: ldw,
                        transB: true, c: onto ?? y, ldc: p.outFeatures, beta: onto == nil ? 0 : 1, d: y)
        if let bias = p.bias { try device.addBias(y, bias: bias, rows: rows, cols: p.outFeatures) }
        return y
    }

    /// The adapters' gradients of the projections in `dys` (name, dy) that share one input (q, k, v; gate, up):
    /// dB += dyᵀ z (z holds s already) and dz = s · dy B for each (in bf16 one kernel, reading dy once), then
    /// dA += dzᵀ · dropout(input) for all of them in one launch (the input read about once). Returns the dz's for
    /// `projectionBackward`; the projections' saved input and z are released, so the caller may drop the input
    /// before any dx is made.
    func adaptersBackward(_ l: Int, _ dys: [(String, DeviceBuffer)], rows: Int, act: GPULayerActivations,
                          training: Bool, seed: UInt64) throws -> [String: DeviceBuffer] {
        let r = loraConfig.r, s = loraConfig.scale
        var dz: [String: DeviceBuffer] = [:]
        var parts: [(gradA: DeviceBuffer, dz: DeviceBuffer, seed: UInt64)] = []
        var input: GPUMatrix? = nil, k = 0, keep: Float = 1
        for (name, dy) in dys {
            defer { act.loraInput[name] = nil; act.loraZ[name] = nil }
            guard let adapter = adapters["\(l).\(name)"], let z = act.loraZ[name],
                  let x = act.loraInput[name] else { continue }
            precondition(input == nil || input!.buffer === x.buffer, "adaptersBackward: \(name) has another input")
            let p = layers[l].projections[name]!
            let d = try device.allocate(rows * r, dtype)
            if CUDADevice.loraUpGradientApplies(dtype, out: p.outFeatures) {   // both from one read of dy
                try device.loraUpGradient(gradB: adapter.gradB, dz: d, dy: dy, z: z.buffer, zAt: z.at, ldz: z.ld,
                                          b: adapter.bCompute, rows: rows, out: p.outFeatures, r: r, scale: s)
            } else {
                device.gemmLabel = "lora dB += dyᵀ z"
                try device.gemm(m: p.outFeatures, n: r, k: rows, a: dy, lda: p.outFeatures, transA: true,
                                b: z.buffer, bOffset: z.at, ldb: z.ld, c: adapter.gradB, ldc: r, beta: 1)
                device.gemmLabel = "lora dz = s dy B"
                try device.gemm(m: rows, n: r, k: p.outFeatures, a: dy, lda: p.outFeatures, b: adapter.bCompute,
                                ldb: r, c: d, ldc: r, alpha: s)
            }
            dz[name] = d
            let (kept, maskSeed) = dropout(l, name, training: training, seed: seed)
            parts.append((adapter.gradA, d, maskSeed))
            input = x; k = p.inFeatures; keep = kept
        }
        if let input {
            try device.loraDownGradient(parts, x: input.buffer, rows: rows, k: k, r: r, ldx: input.ld, keep: keep)
        }
        return dz
    }

    /// dx (N, in) from dy and the adapter's dz (from `adaptersBackward`; nil without an adapter). With `into`, dx
    /// is added there instead (the gradients of projections sharing an input summed in the products, not by
    /// separate additions). `weight`: W as the recompute dequantized it (its first `in` columns are W), else W is
    /// dequantized here.
    func projectionBackward(_ l: Int, _ name: String, _ dy: DeviceBuffer, dz: DeviceBuffer?, weight: GPUMatrix?,
                            rows: Int, training: Bool, seed: UInt64,
                            into: DeviceBuffer? = nil) throws -> DeviceBuffer {
        let p = layers[l].projections[name]!
        let r = loraConfig.r
        let adapter = adapters["\(l).\(name)"]
        let (keep, maskSeed) = dropout(l, name, training: training, seed: seed)
        let dx = try into ?? device.allocate(rows * p.inFeatures, dtype)
        var onto: Float = into == nil ? 0 : 1   // beta of the base product: 1 once dx holds a part
        if let adapter, let dz {
            // dx (+)= dropout's mask ⊙ (dz A), first; the base product adds onto it
            try device.loraInputGradient(dx, dz: dz, a: adapter.aCompute, rows: rows, k: p.inFeatures, r: r,
                                         keep: keep, seed: maskSeed, accumulate: into != nil)
            onto = 1
        }
        device.gemmLabel = "base dx"
        let w = try weight ?? GPUMatrix(buffer: baseWeight(l, name), ld: p.inFeatures)
        try device.gemm(m: rows, n: p.inFeatures, k: p.outFeatures, a: dy, lda: p.outFeatures, b: w.buffer,
                        bOffset: w.at, ldb: w.ld, c: dx, ldc: p.inFeatures, beta: onto)
        return dx
    }
}
