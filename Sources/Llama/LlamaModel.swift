import CPUBackend
import Foundation
import ModelFiles
import Quantization
import Tensors

/// Why a model could not be built.
public struct ModelError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How the frozen base is computed with.
public enum ComputeDType: String, Sendable, CaseIterable {
    /// float32 throughout (the conformance setting).
    case fp32
    /// The frozen base's products in bf16, as a bf16 model's matmuls run (transformers' autocast, the GPU step):
    /// dequantized weights rounded to bf16 (as bitsandbytes gives them to a bf16 model), each product's other input
    /// rounded to bf16 too (nearest even), the sums in float32 (CGEMM's bf16 products: `vdpbf16ps` where the
    /// processor has AVX512_BF16). Everything else (adapters, attention, norms) in float32.
    case bf16

    /// A dequantized weight as the CPU's products read it: as it is, or rounded to bf16.
    public func cpuWeight(_ dequantized: [Float]) -> [Float] {
        self == .bf16 ? dequantized.map { float(fromBF16: bf16Bits(from: $0)) } : dequantized
    }
}

/// A frozen linear layer of the base: its 4-bit weight, dequantized once for the CPU's products, and its bias.
public struct FrozenLinear: Sendable {
    /// Output features.
    public let outFeatures: Int
    /// Input features.
    public let inFeatures: Int
    /// The quantized weight (the source of truth); nil in a dense model (`LlamaModel(denseWeights:)`).
    public let quantized: Quantized4BitTensor?
    /// W (out, in), dequantized (or as the file holds it, dense), for products through the CBLAS; empty where
    /// `packed` holds it.
    public let weight: [Float]
    /// W packed once for bf16 products, both ways the step multiplies by it (`FrozenMatrix`), or nil.
    public let packed: FrozenMatrix?
    /// Bias (out), if any (Qwen2's q/k/v).
    public let bias: [Float]?

    /// Memberwise (W unpacked).
    public init(outFeatures: Int, inFeatures: Int, quantized: Quantized4BitTensor?, weight: [Float], bias: [Float]?) {
        self.outFeatures = outFeatures; self.inFeatures = inFeatures; self.quantized = quantized
        self.weight = weight; packed = nil; self.bias = bias
    }

    /// This layer with W held packed for bf16 products (`FrozenMatrix`) instead of as `weight` (itself if it is).
    func packedForBF16() -> FrozenLinear {
        FrozenLinear(self, packed: packed ?? FrozenMatrix(weight, rows: outFeatures, columns: inFeatures))
    }

    private init(_ layer: FrozenLinear, packed: FrozenMatrix) {
        outFeatures = layer.outFeatures; inFeatures = layer.inFeatures; quantized = layer.quantized
        weight = []; self.packed = packed; bias = layer.bias
    }

    /// y (N, out) (+)= x (N, in) · Wᵀ: in bf16 where W is packed for it, else in float32.
    func forward(_ y: inout [Float], _ x: [Float], rows: Int, accumulate: Bool) {
        if let packed { packed.forward(&y, x, rows: rows, accumulate: accumulate); return }
        CPUOps.linearForward(&y, x, weight, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures,
                             accumulate: accumulate)
    }

    /// dx (N, in) = dy (N, out) · W, as `forward` multiplies.
    func backwardInput(_ dx: inout [Float], _ dy: [Float], rows: Int) {
        if let packed { packed.backwardInput(&dx, dy, rows: rows); return }
        CPUOps.linearBackwardInput(&dx, dy, weight, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
    }
}

/// A frozen matrix W (rows = out, columns = in) packed once for bf16 products both ways the step multiplies by it:
/// as x · Wᵀ (forward) and as dy · W (the backward's dx), in the kernel's bf16 pairs. The products equal
/// GEMM.sgemm's bf16 ones on W bit for bit, without rounding and pairing W again in every product (measured on a Zen
/// 5 EPYC, 2026-12-03: the bf16 step 1.15× faster); the two bf16 copies take W's float32 bytes. (Packed float32 did
/// not pay there: no faster, at twice the memory.)
public final class FrozenMatrix: @unchecked Sendable {
    let rows: Int, columns: Int
    let forwardPack: GEMM.PackedMatrix, backwardPack: GEMM.PackedMatrix

    init(_ w: [Float], rows: Int, columns: Int) {
        self.rows = rows; self.columns = columns
        (forwardPack, backwardPack) = w.withUnsafeBufferPointer { p in
            (GEMM.PackedMatrix(transposeB: true, n: rows, k: columns, b: p.baseAddress!, ldb: columns, bf16: true),
             GEMM.PackedMatrix(transposeB: false, n: columns, k: rows, b: p.baseAddress!, ldb: columns, bf16: true))
        }
    }

    /// y (N, rows) (+)= x (N, columns) · Wᵀ.
    func forward(_ y: inout [Float], _ x: [Float], rows n: Int, accumulate: Bool) {
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
            GEMM.sgemm(transposeA: false, m: n, a: xp.baseAddress!, lda: columns, packed: forwardPack,
                       beta: accumulate ? 1 : 0, c: yp.baseAddress!, ldc: rows)
        } }
    }

    /// dx (N, columns) = dy (N, rows) · W.
    func backwardInput(_ dx: inout [Float], _ dy: [Float], rows n: Int) {
        dy.withUnsafeBufferPointer { dp in dx.withUnsafeMutableBufferPointer { xp in
            GEMM.sgemm(transposeA: false, m: n, a: dp.baseAddress!, lda: rows, packed: backwardPack, beta: 0,
                       c: xp.baseAddress!, ldc: columns)
        } }
    }
}

/// One decoder layer's frozen parameters.
public struct DecoderLayer: Sendable {
    /// RMSNorm weights (C).
    public let inputNorm: [Float]
    public let postAttentionNorm: [Float]
    /// The seven projections by Hugging Face name.
    public let projections: [String: FrozenLinear]

    /// Memberwise.
    public init(inputNorm: [Float], postAttentionNorm: [Float], projections: [String: FrozenLinear]) {
        self.inputNorm = inputNorm; self.postAttentionNorm = postAttentionNorm; self.projections = projections
    }
}

/// A Llama-family causal LM with a frozen 4-bit base and trainable LoRA adapters.
public final class LlamaModel: @unchecked Sendable {
    /// Architecture.
    public let config: LlamaConfig
    /// Token embedding (V, C).
    public let embedding: [Float]
    /// Decoder layers.
    public let layers: [DecoderLayer]
    /// Final RMSNorm (C).
    public let finalNorm: [Float]
    /// lm_head (V, C); the embedding when tied.
    public let lmHead: [Float]
    /// lm_head packed for bf16 products (`FrozenMatrix`), or nil.
    let lmHeadPacked: FrozenMatrix?
    /// The lm_head chunk's logits and their gradient (100 MiB and more each), kept from one step to the next: fresh
    /// ones are mapped anew and cleared by the kernel, then zeroed again, every step.
    let logitScratch = ScratchBuffers()
    /// LoRA settings.
    public private(set) var loraConfig: LoRAConfig
    /// How the frozen base's products are computed (`ComputeDType`).
    public let compute: ComputeDType
    /// Adapters keyed by `layerIndex.projection` (e.g. `0.q_proj`).
    public var adapters: [String: LoRAWeights]
    /// RoPE tables (T, D): cos and sin of position · inverse frequency, duplicated over both halves. They grow on
    /// demand to the positions a step or a generation reaches, so a large `max_position_embeddings` costs nothing
    /// until it is used.
    let ropeCos: RoPETable
    let ropeSin: RoPETable

    /// Builds the model from loaded parts.
    public init(config: LlamaConfig, embedding: [Float], layers: [DecoderLayer], finalNorm: [Float], lmHead: [Float],
                lora: LoRAConfig, seed: UInt64 = 0, compute: ComputeDType = .fp32) {
        self.config = config
        self.compute = compute
        self.embedding = embedding
        // bf16: the base's matrices packed for bf16 products, the one way they are computed in bf16.
        self.layers = compute == .bf16
            ? layers.map { DecoderLayer(inputNorm: $0.inputNorm, postAttentionNorm: $0.postAttentionNorm,
                                        projections: $0.projections.mapValues { $0.packedForBF16() }) }
            : layers
        self.finalNorm = finalNorm
        self.lmHead = lmHead
        lmHeadPacked = compute == .bf16 ? FrozenMatrix(lmHead, rows: config.vocabSize, columns: config.hiddenSize)
                                         : nil
        self.loraConfig = lora
        self.adapters = [:]
        let invFreq = Self.ropeInverseFrequencies(config: config)
        ropeCos = RoPETable(invFreq: invFreq, function: Foundation.cos)
        ropeSin = RoPETable(invFreq: invFreq, function: Foundation.sin)
        resetAdapters(lora, seed: seed)
    }

    /// Replaces the adapters with fresh ones as peft initializes them: A kaiming-uniform (a = √5, i.e. uniform in
    /// ±1/√in), B zero.
    public func resetAdapters(_ lora: LoRAConfig, seed: UInt64) {
        loraConfig = lora
        adapters = LoRAWeights.initial(config: config, lora: lora, seed: seed)
    }

    /// Number of trainable parameters and of all parameters, as peft's `get_nb_trainable_parameters` counts them
    /// (a 4-bit weight counts as its packed bytes × 2, as bitsandbytes' Params4bit numel does).
    public var parameterCounts: (trainable: Int, all: Int) {
        let trainable = adapters.values.reduce(0) { $0 + $1.a.count + $1.b.count }
        var all = embedding.count + finalNorm.count + (config.tieWordEmbeddings ? 0 : lmHead.count)
        for layer in layers {
            all += layer.inputNorm.count + layer.postAttentionNorm.count
            for p in layer.projections.values {
                all += (p.quantized.map { $0.packed.count * 2 } ?? p.outFeatures * p.inFeatures) + (p.bias?.count ?? 0)
            }
        }
        return (trainable, all + trainable)
    }

    /// cos/sin tables for positions 0..<positions, with Llama 3 / linear frequency scaling, in float32 as
    /// transformers computes them (inv_freq = 1 / θ^(2i/D)).
    public static func ropeTables(config: LlamaConfig, positions: Int) -> ([Float], [Float]) {
        let d = config.headDim
        let invFreq = ropeInverseFrequencies(config: config)
        var cosTable = [Float](repeating: 0, count: positions * d)
        var sinTable = cosTable
        for t in 0..<positions {
            for i in 0..<(d / 2) {
                let angle = Float(t) * invFreq[i]
                cosTable[t * d + i] = Foundation.cos(angle); cosTable[t * d + i + d / 2] = Foundation.cos(angle)
                sinTable[t * d + i] = Foundation.sin(angle); sinTable[t * d + i + d / 2] = Foundation.sin(angle)
            }
        }
        return (cosTable, sinTable)
    }

    /// The D/2 inverse frequencies of the rotary embedding, scaled as `config.ropeScaling` says.
    static func ropeInverseFrequencies(config: LlamaConfig) -> [Float] {
        let d = config.headDim
        var invFreq = (0..<(d / 2)).map { i -> Float in 1 / Float(Foundation.pow(config.ropeTheta, Double(Float(2 * i) / Float(d)))) }
        if let s = config.ropeScaling {
            switch s.ropeType {
            case "linear": invFreq = invFreq.map { $0 / Float(s.factor) }
            case "llama3":
                let original = Float(s.originalMaxPositionEmbeddings!)
                let low = Float(s.lowFreqFactor!), high = Float(s.highFreqFactor!), factor = Float(s.factor)
                let lowWavelen = original / low, highWavelen = original / high
                invFreq = invFreq.map { f in
                    let wavelen = 2 * Float.pi / f
                    if wavelen > lowWavelen { return f / factor }
                    if wavelen < highWavelen { return f }
                    let smooth = (original / wavelen - low) / (high - low)
                    return (1 - smooth) * f / factor + smooth * f
                }
            default: break
            }
        }
        return invFreq
    }
}

/// One RoPE table (cos or sin of position · inverse frequency, (T, D), duplicated over both halves of a row),
/// computed on demand: it holds the rows asked for so far and grows, under a lock, when more are needed. Values equal
/// `LlamaModel.ropeTables`' bit for bit.
final class RoPETable: @unchecked Sendable {
    private let invFreq: [Float]
    private let function: (Float) -> Float
    private let lock = NSLock()
    private var values: [Float] = []
    private var rows = 0

    init(invFreq: [Float], function: @escaping (Float) -> Float) {
        self.invFreq = invFreq
        self.function = function
    }

    /// Width of a row (D).
    var width: Int { invFreq.count * 2 }

    /// The table ((T, D), row-major) with at least its first `positions` rows computed (the whole of it, uncopied).
    func prefix(positions: Int) -> [Float] {
        lock.lock(); defer { lock.unlock() }
        grow(to: positions)
        return values
    }

    /// The values in `range` (flat indices into the (T, D) table), computing rows up to its end if needed.
    subscript(range: Range<Int>) -> ArraySlice<Float> {
        lock.lock(); defer { lock.unlock() }
        grow(to: (range.upperBound + width - 1) / width)
        return values[range]
    }

    /// Makes the table hold at least `positions` rows (doubling, so a generation's one-at-a-time growth stays
    /// linear).
    private func grow(to positions: Int) {
        guard positions > rows else { return }
        let target = max(positions, min(2 * rows, positions + 4096))
        let d = width, half = invFreq.count
        values += [Float](repeating: 0, count: (target - rows) * d)
        for t in rows..<target {
            for i in 0..<half {
                let v = function(Float(t) * invFreq[i])
                values[t * d + i] = v; values[t * d + i + half] = v
            }
        }
        rows = target
    }
}

extension LlamaModel {
    /// Loads a model folder: plain Hugging Face weights (quantized here with `quantType`, `doubleQuant`,
    /// `blocksize`) or a bitsandbytes 4-bit checkpoint (its own quantization is used).
    public static func load(directory: String, quantType: QuantType = .nf4, doubleQuant: Bool = true,
                            blocksize: Int = 64, compute: ComputeDType = .fp32, lora: LoRAConfig = LoRAConfig(),
                            seed: UInt64 = 0) throws -> LlamaModel {
        try load(config: LlamaConfig(contentsOf: directory), source: SafeTensorsArchive(directory: directory),
                 quantType: quantType, doubleQuant: doubleQuant, blocksize: blocksize, compute: compute, lora: lora,
                 seed: seed)
    }

    /// Builds the model from `config` and the Hugging Face-named tensors of `source`.
    public static func load(config: LlamaConfig, source archive: TensorSource, quantType: QuantType = .nf4,
                            doubleQuant: Bool = true, blocksize: Int = 64, compute: ComputeDType = .fp32,
                            lora: LoRAConfig = LoRAConfig(), seed: UInt64 = 0) throws -> LlamaModel {
        let weights = LlamaWeights(config: config, source: archive,
                                   quantization: QuantizationSettings(type: quantType, doubleQuant: doubleQuant,
                                                                      blocksize: blocksize))
        return try LlamaModel(weights: weights, compute: compute, lora: lora, seed: seed)
    }

    /// The CPU model of `weights`: every projection quantized on the host (unless the file holds it in 4 bits) and
    /// dequantized once to float32 for the CPU's products (rounded through bf16 with `compute` bf16).
    public convenience init(weights: LlamaWeights, compute: ComputeDType = .fp32, lora: LoRAConfig = LoRAConfig(),
                            seed: UInt64 = 0) throws {
        try self.init(weights, lora: lora, seed: seed, compute: compute) { l, name in
            let q = try weights.quantizedProjection(layer: l, name)
            return (q, compute.cpuWeight(q.dequantizedFloat32()))
        }
    }

    /// A CPU model that computes with the file's dense weights as they are, not quantized (a 4-bit file's are
    /// dequantized, a GGUF's blocks decoded from their own type): how a merged export is checked against the base
    /// and adapter it came from, and how generate and eval run a finished model. `compute` bf16 rounds the weights
    /// to bf16 and multiplies in bf16 as the 4-bit path does.
    public convenience init(denseWeights weights: LlamaWeights, compute: ComputeDType = .fp32,
                            lora: LoRAConfig = LoRAConfig(), seed: UInt64 = 0) throws {
        try self.init(weights, lora: lora, seed: seed, compute: compute) { l, name in
            switch try weights.projection(layer: l, name) {
            case .dense(let t): return (nil, compute.cpuWeight(t.floats()))
            case .quantized(let q): return (nil, compute.cpuWeight(q.dequantizedFloat32()))
            }
        }
    }

    /// The model of `weights` with each projection's 4-bit tensor (if kept) and float32 weight from `projection`.
    private convenience init(_ weights: LlamaWeights, lora: LoRAConfig, seed: UInt64, compute: ComputeDType,
                             projection: (Int, String) throws -> (Quantized4BitTensor?, [Float])) throws {
        let config = weights.config
        let embedding = try weights.embedding().floats()
        var layers: [DecoderLayer] = []
        for l in 0..<config.layerCount {
            var projections: [String: FrozenLinear] = [:]
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let (q, weight) = try projection(l, name)
                projections[name] = FrozenLinear(outFeatures: out, inFeatures: inF, quantized: q, weight: weight,
                                                 bias: try weights.bias(layer: l, name))
            }
            let norms = try weights.norms(layer: l)
            layers.append(DecoderLayer(inputNorm: norms.input, postAttentionNorm: norms.postAttention,
                                       projections: projections))
        }
        let lmHead = try weights.lmHead()?.floats() ?? embedding
        self.init(config: config, embedding: embedding, layers: layers, finalNorm: try weights.finalNorm(),
                  lmHead: lmHead, lora: lora, seed: seed, compute: compute)
    }
}

/// Float buffers kept for reuse (two at most), each handed out whole to one user at a time. What it hands out holds
/// the values last written in it: for buffers every use overwrites.
final class ScratchBuffers: @unchecked Sendable {
    private var free: [[Float]] = []
    private let lock = NSLock()

    /// A buffer of `count` floats: a kept one large enough (resized within its capacity), or a new one.
    func take(_ count: Int) -> [Float] {
        lock.lock()
        let index = free.firstIndex { $0.capacity >= count }
        var buffer = index.map { free.remove(at: $0) }
        lock.unlock()
        guard buffer != nil else { return [Float](repeating: 0, count: count) }
        if buffer!.count > count { buffer!.removeLast(buffer!.count - count) }
        if buffer!.count < count { buffer!.append(contentsOf: repeatElement(0, count: count - buffer!.count)) }
        return buffer!
    }

    /// Keeps `buffer` for a later `take` (the two largest are kept).
    func give(_ buffer: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        free.append(buffer)
        free.sort { $0.capacity > $1.capacity }
        if free.count > 2 { free.removeLast(free.count - 2) }
    }
}
