import CUDABackend
import Foundation
import Llama
import Quantization

/// One trainable adapter on the GPU: float32 masters, their compute-type copies for the products, and the
/// float32 gradient accumulators.
final class GPUAdapter {
    let a: DeviceBuffer, b: DeviceBuffer          // A (R, in), B (out, R), float32
    var aCompute: DeviceBuffer, bCompute: DeviceBuffer
    let gradA: DeviceBuffer, gradB: DeviceBuffer  // views of the model's one gradient buffer (`makeAdapters`)
    init(a: DeviceBuffer, b: DeviceBuffer, gradA: DeviceBuffer, gradB: DeviceBuffer, compute: GPUDType,
         device: CUDADevice) throws {
        self.a = a; self.b = b; self.gradA = gradA; self.gradB = gradB
        aCompute = compute == .f32 ? a : try device.allocate(a.count, compute)
        bCompute = compute == .f32 ? b : try device.allocate(b.count, compute)
        try refresh(device)
    }
    /// Rounds the masters into the compute copies (after an update).
    func refresh(_ device: CUDADevice) throws {
        if aCompute !== a { try device.cast(aCompute, from: a); try device.cast(bCompute, from: b) }
    }
}

/// A frozen projection on the GPU.
struct GPUProjection {
    let weight: GPUQuantizedWeight
    let bias: DeviceBuffer?
    var outFeatures: Int { weight.rows }
    var inFeatures: Int { weight.columns }
}

/// One decoder layer's frozen parameters on the GPU.
struct GPULayer {
    let inputNorm: DeviceBuffer, postAttentionNorm: DeviceBuffer   // (C) float32
    let projections: [String: GPUProjection]
}

/// What a decoder layer's backward needs from its forward (the GPU twin of `LayerActivations`).
final class GPULayerActivations {
    var x: DeviceBuffer!                       // (N, C) layer input
    var rstd1: DeviceBuffer!, h1: DeviceBuffer!
    var q: DeviceBuffer!, k: DeviceBuffer!, v: DeviceBuffer!    // after RoPE
    var lse: DeviceBuffer!                     // (B, H, T) float32: log-sum-exp of each query row's scores
    var attention: DeviceBuffer!
    var xMid: DeviceBuffer!, rstd2: DeviceBuffer!, h2: DeviceBuffer!
    var gate: DeviceBuffer!, up: DeviceBuffer!, act: DeviceBuffer!
    var loraInput: [String: GPUMatrix] = [:]   // x per adapted projection (its dropout mask is drawn again)
    var loraZ: [String: GPUMatrix] = [:]       // s · dropout(x) · Aᵀ (N, R), maybe columns of x's buffer
    var weights: [String: GPUMatrix] = [:]     // dequantized W the recompute made, for the backward's dx product
    init(x: DeviceBuffer) { self.x = x }
}

/// A layer's adapters' z (`adaptersDown`), kept from the forward pass for gradient checkpointing's recompute.
final class GPUSavedZ {
    var z: [String: GPUMatrix] = [:]
}

/// A matrix inside a buffer: from element `at` on, rows `ld` elements apart.
struct GPUMatrix {
    let buffer: DeviceBuffer
    var at = 0
    let ld: Int
}

/// The Llama training step on an NVIDIA GPU: the same computation as `LlamaModel.step` (the CPU reference), with
/// activations in float32 or bf16, the frozen weights in 4 bits and dequantized per product, products through
/// cuBLASLt and everything else in the kernels of `CUDABackend`. LoRA weights and their gradients are float32.
public final class CUDALlama: @unchecked Sendable {
    public let device: CUDADevice
    public let config: LlamaConfig
    public let loraConfig: LoRAConfig
    /// Activation type (f32 or bf16).
    public let dtype: GPUDType
    let embedding: DeviceBuffer      // (V, C) dtype
    let lmHead: DeviceBuffer         // (V, C) dtype; the embedding when tied
    let finalNorm: DeviceBuffer
    let layers: [GPULayer]
    let adapters: [String: GPUAdapter]
    /// Every adapter's gradA and gradB, one after the other in `adapterKeys` order (float32): zeroed with one
    /// memset, reduced for the norm in one launch, summed over ranks in one all-reduce.
    let gradientBuffer: DeviceBuffer
    /// Adapter keys in a fixed order ("0.q_proj", ...).
    public let adapterKeys: [String]
    var ropeCos: DeviceBuffer, ropeSin: DeviceBuffer
    var ropePositions: Int
    /// Where gradient checkpointing keeps the layer inputs between the passes: pinned host memory (true), the GPU
    /// (false), or nil for the default, host memory (the copies overlap compute, one layer ahead).
    public var offloadCheckpoints: Bool? = nil
    /// The pinned host buffers of offloaded checkpoints, one per layer, kept from step to step.
    var hostCheckpoints: [PinnedHostBuffer] = []
    let hostParameterCounts: (trainable: Int, all: Int)
    /// Frozen weights dequantized once and kept ("layer.projection"), while generation runs with room on the GPU
    /// for them; empty otherwise (every product dequantizes its weight).
    var keptWeights: [String: DeviceBuffer] = [:]

    /// Builds the model on the GPU from a file, one tensor at a time: a dense projection is uploaded as the file
    /// stores it (bf16 or f32; f16 widened on the host), quantized there (the same bytes as the CPU quantizer) and
    /// its upload buffer freed; a bitsandbytes 4-bit projection is uploaded as it is; embeddings are rounded to
    /// `dtype` on the GPU. After each tensor the file's pages are dropped from host memory, so loading holds about one
    /// tensor on the host whatever the model's size. `adapters` are the starting LoRA weights (fresh or a PEFT file).
    public init(weights: LlamaWeights, lora: LoRAConfig, adapters initial: [String: LoRAWeights], device: CUDADevice,
                dtype: GPUDType) throws {
        precondition(dtype == .f32 || dtype == .bf16)
        self.device = device; config = weights.config; loraConfig = lora; self.dtype = dtype
        let c = config.hiddenSize, v = config.vocabSize
        device.allocationTag = Self.embeddingTag
        embedding = try device.upload(try weights.embedding(), as: dtype)
        weights.evictPages()
        lmHead = try weights.lmHead().map { try device.upload($0, as: dtype) } ?? embedding
        weights.evictPages()
        device.allocationTag = Self.baseTag
        finalNorm = try device.upload(try weights.finalNorm())
        var all = v * c + c + (config.tieWordEmbeddings ? 0 : v * c)
        var layers: [GPULayer] = []
        let q = weights.quantization
        var pending: [GPUQuantizedWeight] = []   // quantized here, double quantized in batches on the host cores
        for l in 0..<config.layerCount {
            var projections: [String: GPUProjection] = [:]
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let w: GPUQuantizedWeight
                switch try weights.projection(layer: l, name) {
                case .quantized(let host): w = try GPUQuantizedWeight(host, device: device)
                case .dense(let t):
                    w = try GPUQuantizedWeight(quantizing: try device.upload(t), rows: out, columns: inF, type: q.type,
                                               blocksize: q.blocksize, device: device)
                    if q.doubleQuant { pending.append(w) }
                }
                let bias = try weights.bias(layer: l, name)
                projections[name] = GPUProjection(weight: w, bias: try bias.map { try device.upload($0) })
                all += w.parameterCount + (bias?.count ?? 0)
                weights.evictPages()
            }
            if pending.count >= 16 || l == config.layerCount - 1 {
                try GPUQuantizedWeight.doubleQuantize(pending)
                pending = []
            }
            let norms = try weights.norms(layer: l)
            layers.append(GPULayer(inputNorm: try device.upload(norms.input),
                                   postAttentionNorm: try device.upload(norms.postAttention),
                                   projections: projections))
            all += 2 * c
        }
        self.layers = layers
        device.allocationTag = Self.adapterTag
        var masters: [String: (a: DeviceBuffer, b: DeviceBuffer)] = [:]
        var trainable = 0
        for (key, w) in initial {
            masters[key] = (try device.upload(w.a), try device.upload(w.b))
            trainable += w.a.count + w.b.count
        }
        adapterKeys = Self.sortedKeys(masters.keys)
        (adapters, gradientBuffer) = try Self.makeAdapters(masters, keys: adapterKeys, compute: dtype, device: device)
        hostParameterCounts = (trainable, all + trainable)
        ropePositions = 0
        ropeCos = try device.allocate(1, .f32); ropeSin = ropeCos
        device.allocationTag = Self.activationTag
        try device.synchronize()
    }

    /// What the model's allocations hold, for the breakdown of the peak (`qlora plan`, `bench`).
    static let embeddingTag = "embedding + lm_head", baseTag = "4-bit base + norms"
    static let adapterTag = "LoRA adapters (f32, compute copies, gradients)", activationTag = "activations + scratch"

    /// A random-weight model of `config`'s shape built directly on the GPU in 4 bits (NF4, double quantized, blocks
    /// of 64), with fresh adapters (A uniform in ±1/√in, B zero) on `lora`'s targets: the benchmark's model.
    public init(randomConfig config: LlamaConfig, lora: LoRAConfig, device: CUDADevice, dtype: GPUDType, seed: UInt64 = 1) throws {
        self.device = device; self.config = config; loraConfig = lora; self.dtype = dtype
        let c = config.hiddenSize, v = config.vocabSize
        var s = seed
        func nextSeed() -> UInt64 { s = s &* 6364136223846793005 &+ 1442695040888963407; return s }
        device.allocationTag = Self.embeddingTag
        embedding = try device.allocate(v * c, dtype)
        try device.fillUniform(embedding, low: -0.04, high: 0.04, seed: nextSeed())
        if config.tieWordEmbeddings { lmHead = embedding } else {
            lmHead = try device.allocate(v * c, dtype)
            try device.fillUniform(lmHead, low: -0.04, high: 0.04, seed: nextSeed())
        }
        device.allocationTag = Self.baseTag
        finalNorm = try device.upload([Float](repeating: 1, count: c))
        var all = v * c + c + (config.tieWordEmbeddings ? 0 : v * c)
        var layers: [GPULayer] = []
        for _ in 0..<config.layerCount {
            var projections: [String: GPUProjection] = [:]
            for name in LlamaConfig.projectionNames {
                let (out, inF) = config.projectionShape(name)!
                let w = try GPUQuantizedWeight(randomRows: out, columns: inF, scale: 0.04, seed: nextSeed(), device: device)
                projections[name] = GPUProjection(weight: w, bias: nil)
                all += w.parameterCount
            }
            layers.append(GPULayer(inputNorm: try device.upload([Float](repeating: 1, count: c)),
                                   postAttentionNorm: try device.upload([Float](repeating: 1, count: c)),
                                   projections: projections))
            all += 2 * c
        }
        self.layers = layers
        device.allocationTag = Self.adapterTag
        var masters: [String: (a: DeviceBuffer, b: DeviceBuffer)] = [:]
        var trainable = 0
        for l in 0..<config.layerCount {
            for name in lora.resolvedTargets {
                let (out, inF) = config.projectionShape(name)!
                let a = try device.allocate(lora.r * inF, .f32)
                let bound = 1 / Float(inF).squareRoot()
                try device.fillUniform(a, low: -bound, high: bound, seed: nextSeed())
                masters["\(l).\(name)"] = (a, try device.zeros(out * lora.r, .f32))
                trainable += lora.r * (inF + out)
            }
        }
        adapterKeys = Self.sortedKeys(masters.keys)
        (adapters, gradientBuffer) = try Self.makeAdapters(masters, keys: adapterKeys, compute: dtype, device: device)
        hostParameterCounts = (trainable, all + trainable)
        ropePositions = 0
        ropeCos = try device.allocate(1, .f32); ropeSin = ropeCos
        device.allocationTag = Self.activationTag
    }

    static func sortedKeys<S: Sequence>(_ keys: S) -> [String] where S.Element == String {
        keys.sorted { l, r in
            let a = l.split(separator: "."), b = r.split(separator: ".")
            let la = Int(a[0]) ?? 0, lb = Int(b[0]) ?? 0
            if la != lb { return la < lb }
            return (LlamaConfig.projectionNames.firstIndex(of: String(a[1])) ?? 0) < (LlamaConfig.projectionNames.firstIndex(of: String(b[1])) ?? 0)
        }
    }

    /// Trainable and all parameters, as peft counts them.
    public var parameterCounts: (trainable: Int, all: Int) { hostParameterCounts }

    func ensureRope(_ positions: Int) throws {
        guard positions > ropePositions else { return }
        let n = max(positions, min(config.maxPositionEmbeddings, 4096))
        let (cosT, sinT) = LlamaModel.ropeTables(config: config, positions: n)
        (ropeCos, ropeSin) = try device.tagging("RoPE tables") { (try device.upload(cosT), try device.upload(sinT)) }
        ropePositions = n
    }

    /// W (out, in) of projection `name` in layer `l` in the activation type: the kept copy, or dequantized for this
    /// product.
    func baseWeight(_ l: Int, _ name: String) throws -> DeviceBuffer {
        if let w = keptWeights["\(l).\(name)"] { return w }
        return try layers[l].projections[name]!.weight.dequantized(dtype)
    }

    /// Dequantizes every frozen weight once and keeps it, when that leaves `margin` bytes of the GPU free (true);
    /// else keeps none (false). `releaseWeights` gives them back.
    func keepWeights(margin: Int) throws -> Bool {
        guard keptWeights.isEmpty else { return true }
        let bytes = layers.reduce(0) { $0 + $1.projections.values.reduce(0) { $0 + $1.weight.parameterCount } }
            * dtype.size
        guard try device.memoryInfo().free > bytes + margin else { return false }
        try device.tagging("kept dequantized weights (generation)") {
            for l in layers.indices {
                for name in LlamaConfig.projectionNames {
                    keptWeights["\(l).\(name)"] = try layers[l].projections[name]!.weight.dequantized(dtype)
                }
            }
        }
        return true
    }

    func releaseWeights() { keptWeights = [:] }

    // MARK: Adapters

    /// Host copies of the adapters.
    public func adapterWeights() throws -> [String: LoRAWeights] {
        var out: [String: LoRAWeights] = [:]
        for (k, a) in adapters { out[k] = LoRAWeights(a: try device.download(a.a), b: try device.download(a.b)) }
        return out
    }

    /// Replaces the adapters' values (same keys and sizes).
    public func setAdapterWeights(_ weights: [String: LoRAWeights]) throws {
        for (k, a) in adapters {
            guard let w = weights[k] else { throw CUDAError.invalidArgument("adapter \(k) is missing") }
            guard w.a.count == a.a.count, w.b.count == a.b.count else {
                throw CUDAError.invalidArgument("adapter \(k) has \(w.a.count) + \(w.b.count) values, expected " +
                                                "\(a.a.count) + \(a.b.count)")
            }
            try device.copy(w.a, to: a.a); try device.copy(w.b, to: a.b)
            try a.refresh(device)
        }
    }

    /// Host copies of the accumulated gradients.
    public func gradients() throws -> [String: LoRAWeights] {
        var out: [String: LoRAWeights] = [:]
        for (k, a) in adapters { out[k] = LoRAWeights(a: try device.download(a.gradA), b: try device.download(a.gradB)) }
        return out
    }

    /// Sets the gradient accumulators to zero.
    public func zeroGradients() throws { try device.fillZero(gradientBuffer) }

    /// √(Σ g²) over every accumulator (the gaps between them in `gradientBuffer` hold zeros).
    public func gradientNorm() throws -> Float { Float(try device.sumOfSquares([gradientBuffer]).squareRoot()) }

    /// The adapters over their masters (A, B float32), their gradients views of one zeroed buffer, each starting on a
    /// multiple of 64 elements (256 bytes, so that the kernels' vector loads stay aligned).
    static func makeAdapters(_ masters: [String: (a: DeviceBuffer, b: DeviceBuffer)], keys: [String],
                             compute: GPUDType, device: CUDADevice) throws -> ([String: GPUAdapter], DeviceBuffer) {
        func aligned(_ n: Int) -> Int { (n + 63) / 64 * 64 }
        let total = keys.reduce(0) { $0 + aligned(masters[$1]!.a.count) + aligned(masters[$1]!.b.count) }
        let gradients = try device.zeros(max(total, 1), .f32)
        var adapters: [String: GPUAdapter] = [:], at = 0
        for key in keys {
            let (a, b) = masters[key]!
            let gradA = gradients.view(at: at, count: a.count)
            at += aligned(a.count)
            let gradB = gradients.view(at: at, count: b.count)
            at += aligned(b.count)
            adapters[key] = try GPUAdapter(a: a, b: b, gradA: gradA, gradB: gradB, compute: compute, device: device)
        }
        return (adapters, gradients)
    }
}
