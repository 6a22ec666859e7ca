import CUDABackend
import Foundation
import Llama
import Quantization
import Training

/// The AdamW variants of `AdamW` (Training/Optimizers.swift) on the GPU, with the same numbers: torch's AdamW for
/// `adamw`; bitsandbytes' 32-bit kernel, and its blockwise 8-bit kernel for tensors of at least 4096 elements, for
/// the others. The "paged" variants keep their state in unified (managed) memory, prefetched to the GPU before
/// each update, as bitsandbytes' paged optimizers do.
public final class CUDAAdamW {
    enum State {
        case float32(m: DeviceBuffer, v: DeviceBuffer)
        case eightBit(m: DeviceBuffer, v: DeviceBuffer, absmaxM: DeviceBuffer, absmaxV: DeviceBuffer)
    }
    /// One tensor to update: its name, float32 parameter and gradient, and the compute copy to write (or nil).
    public typealias Item = (name: String, parameter: DeviceBuffer, gradient: DeviceBuffer, copy: DeviceBuffer?)
    public let kind: OptimizerKind
    public let settings: AdamWSettings
    let device: CUDADevice
    /// Views of `pools`: the states of the tensors allocated together are parts of one buffer per kind of value.
    var states: [String: State] = [:]
    var pools: [DeviceBuffer] = []
    var steps: [String: Int] = [:]
    let signedMap: DeviceBuffer, unsignedMap: DeviceBuffer
    /// The table of the last 8-bit launch (`tensorTable`): uploaded again only when its tensors change.
    var table: (key: [UInt64], buffer: DeviceBuffer)? = nil

    public init(kind: OptimizerKind, settings: AdamWSettings, device: CUDADevice) throws {
        self.kind = kind; self.settings = settings; self.device = device
        signedMap = try device.upload(DynamicMap.signed)
        unsignedMap = try device.upload(DynamicMap.unsigned)
    }

    var paged: Bool { kind == .paged_adamw_8bit || kind == .paged_adamw_32bit }
    func usesEightBit(_ count: Int) -> Bool { kind.isEightBit && count >= AdamW.minimumEightBitSize }

    /// Zeroed states for the tensors in `items` (name, element count) that have none, in one buffer per kind of
    /// value (each part on a multiple of 256 elements), so that a paged update prefetches a few buffers, not four
    /// per tensor.
    func allocateStates(_ items: [(name: String, count: Int)]) throws {
        let missing = items.filter { states[$0.name] == nil }
        guard !missing.isEmpty else { return }
        func aligned(_ n: Int) -> Int { (n + 255) / 256 * 256 }
        func blocks(_ n: Int) -> Int { (n + AdamW.blocksize - 1) / AdamW.blocksize }
        let eight = missing.filter { usesEightBit($0.count) }, full = missing.filter { !usesEightBit($0.count) }
        if !eight.isEmpty {
            let codes = eight.reduce(0) { $0 + aligned($1.count) }
            let scales = eight.reduce(0) { $0 + aligned(blocks($1.count)) }
            let m = try device.zeros(codes, .u8, managed: paged), v = try device.zeros(codes, .u8, managed: paged)
            let am = try device.zeros(scales, .f32, managed: paged), av = try device.zeros(scales, .f32, managed: paged)
            pools += [m, v, am, av]
            var at = 0, scaleAt = 0
            for (name, n) in eight {
                states[name] = .eightBit(m: m.view(at: at, count: n), v: v.view(at: at, count: n),
                                         absmaxM: am.view(at: scaleAt, count: blocks(n)),
                                         absmaxV: av.view(at: scaleAt, count: blocks(n)))
                at += aligned(n); scaleAt += aligned(blocks(n))
            }
        }
        if !full.isEmpty {
            let total = full.reduce(0) { $0 + aligned($1.count) }
            let m = try device.zeros(total, .f32, managed: paged), v = try device.zeros(total, .f32, managed: paged)
            pools += [m, v]
            var at = 0
            for (name, n) in full {
                states[name] = .float32(m: m.view(at: at, count: n), v: v.view(at: at, count: n))
                at += aligned(n)
            }
        }
    }

    /// One update of `parameter` (named `name`) with `gradient` × `gradientScale` at learning rate `lr`.
    public func update(_ name: String, parameter p: DeviceBuffer, gradient g: DeviceBuffer, lr: Float,
                       gradientScale: Float, copy: DeviceBuffer? = nil) throws {
        try update([(name, p, g, copy)], lr: lr, gradientScale: gradientScale)
    }

    /// One update of every tensor in `items` with its gradient × `gradientScale` at learning rate `lr`: the
    /// blockwise 8-bit ones of the same step in one launch (`adamw_bnb8_blockwise` reads a table of them), the
    /// others one launch each.
    public func update(_ items: [Item], lr: Float, gradientScale: Float) throws {
        guard !items.isEmpty else { return }
        try allocateStates(items.map { ($0.name, $0.parameter.count) })
        for pool in pools { try device.prefetch(pool) }
        // The kernels' bf16 build writes a bf16 copy; the float32 build (no copy, or a float32 one) the rest.
        let bf16 = items[0].copy?.dtype == .bf16
        precondition(items.allSatisfy { ($0.copy?.dtype == .bf16) == bf16 }, "update: mixed compute copies")
        let s = settings
        var eightBit: [Int: [Item]] = [:]   // by step
        for item in items {
            let step = (steps[item.name] ?? 0) + 1
            steps[item.name] = step
            let (p, g, n, copy) = (item.parameter, item.gradient, item.parameter.count, item.copy)
            let grid = (n + 255) / 256
            switch states[item.name]! {
            case .float32(let m, let v):
                if kind == .adamw {
                    let bc1 = 1 - Foundation.pow(Double(s.beta1), Double(step))
                    let bc2Sqrt = (1 - Foundation.pow(Double(s.beta2), Double(step))).squareRoot()
                    try device.launch(.optimizer, "adamw_torch", bf16: bf16, grid: grid, block: 256,
                                      [.buffer(p), .buffer(g), .buffer(m), .buffer(v), .long(n), .float(lr),
                                       .float(s.beta1), .float(s.beta2), .float(s.eps), .float(s.weightDecay),
                                       .float(Float(Double(lr) / bc1)), .float(Float(bc2Sqrt)),
                                       .float(gradientScale), .optional(copy)])
                } else {
                    let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
                    let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
                    try device.launch(.optimizer, "adamw_bnb32", bf16: bf16, grid: grid, block: 256,
                                      [.buffer(p), .buffer(g), .buffer(m), .buffer(v), .long(n), .float(lr),
                                       .float(s.beta1), .float(s.beta2), .float(s.eps), .float(s.weightDecay),
                                       .float(-lr * correction2 / correction1), .float(correction2),
                                       .float(gradientScale), .optional(copy)])
                }
            case .eightBit:
                eightBit[step, default: []].append(item)
            }
        }
        for (step, group) in eightBit.sorted(by: { $0.key < $1.key }) {
            let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
            let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
            let stepSize = (-lr * correction2) * GPUReciprocal.reciprocal(correction1)
            let (table, blocks) = try tensorTable(group)
            try device.launch(.optimizer, "adamw_bnb8_blockwise", bf16: bf16, grid: blocks, block: 256,
                              [.buffer(table), .int(group.count), .float(lr), .float(s.beta1), .float(s.beta2),
                               .float(s.eps), .float(s.weightDecay), .float(stepSize), .float(correction2),
                               .float(gradientScale), .buffer(signedMap), .buffer(unsignedMap)])
        }
    }

    /// The 8-bit kernel's table (`AdamTensor` in optimizer.cu: seven addresses, the element count and the first
    /// block of each tensor, 9 × 8 bytes) and the blocks of all of them.
    func tensorTable(_ items: [Item]) throws -> (DeviceBuffer, Int) {
        var words: [UInt64] = [], first = 0
        for item in items {
            guard case .eightBit(let m, let v, let am, let av) = states[item.name]! else { preconditionFailure() }
            let n = item.parameter.count
            words += [item.parameter.address, item.gradient.address, m.address, v.address, am.address, av.address,
                      item.copy?.address ?? 0, UInt64(n), UInt64(first)]
            first += (n + 255) / 256
        }
        if let table, table.key == words { return (table.buffer, first) }
        let buffer = try device.allocate(words.count * 8, .u8)
        try words.withUnsafeBytes { try device.copy(Array($0), to: buffer) }
        table = (words, buffer)
        return (buffer, first)
    }

    /// The state as the host optimizer holds it (for checkpoints).
    public func snapshot() throws -> AdamW {
        var out: [String: OptimizerState] = [:]
        for (name, s) in states {
            switch s {
            case .float32(let m, let v): out[name] = .float32(m: try device.download(m), v: try device.download(v))
            case .eightBit(let m, let v, let am, let av):
                out[name] = .eightBit(m: try device.downloadBytes(m), v: try device.downloadBytes(v),
                                      absmaxM: try device.download(am), absmaxV: try device.download(av))
            }
        }
        return AdamW(kind: kind, settings: settings, states: out, steps: steps)
    }

    /// Loads a host optimizer's state.
    public func restore(_ o: AdamW) throws {
        guard o.kind == kind else {
            throw TrainingError(description: "optimizer \(o.kind.rawValue) restored into an engine using \(kind.rawValue)")
        }
        states = [:]; pools = []; table = nil
        try allocateStates(o.states.keys.sorted().map { name in
            switch o.states[name]! {
            case .float32(let m, _): return (name, m.count)
            case .eightBit(let m, _, _, _): return (name, m.count)
            }
        })
        for (name, s) in o.states {
            switch (s, states[name]!) {
            case (.float32(let m, let v), .float32(let mb, let vb)):
                try device.copy(m, to: mb); try device.copy(v, to: vb)
            case (.eightBit(let m, let v, let am, let av), .eightBit(let mb, let vb, let ab, let bb)):
                try device.copy(m, to: mb); try device.copy(v, to: vb); try device.copy(am, to: ab); try device.copy(av, to: bb)
            default:
                throw TrainingError(description: "optimizer state \(name) (\(s)) does not fit a tensor of that size")
            }
        }
        steps = o.steps
    }
}

/// The GPU engine the trainer drives: a `CUDALlama` and a `CUDAAdamW`. Gradients stay on the GPU; the host sees
/// one loss and one norm a step.
public final class CUDATrainingEngine: TrainingEngine {
    public let model: CUDALlama
    public let optimizer: CUDAAdamW
    /// The data-parallel group's communicator, when this engine is one rank of several.
    public let communicator: NCCLCommunicator?

    public init(model: CUDALlama, optimizer: CUDAAdamW, communicator: NCCLCommunicator? = nil) throws {
        self.model = model; self.optimizer = optimizer; self.communicator = communicator
        try model.zeroGradients()
    }

    /// Sums every adapter gradient over the ranks (one NCCL group of all-reduces, on the model's stream).
    public func allReduceGradients() throws {
        guard let communicator, communicator.worldSize > 1 else { return }
        try communicator.allReduceSum([model.gradientBuffer])
    }

    public var config: LlamaConfig { model.config }
    public var loraConfig: LoRAConfig { model.loraConfig }
    public var parameterCounts: (trainable: Int, all: Int) { model.parameterCounts }

    /// The dropout seed is the next draw of `rng`, so runs and resumed runs repeat exactly.
    public func accumulateGradients(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int, tokens: Int,
                                    rng: inout SeededGenerator, checkpointing: Bool,
                                    gradientScale: Float) throws -> (loss: Double, tokenCount: Int) {
        // Every rank draws the same value (their generators stay in step); the rank is mixed in so that the ranks'
        // dropout masks differ.
        let seed = rng.next() ^ (UInt64(communicator?.rank ?? 0) &* 0xD6E8_FEB8_6659_FD93)
        let r = try model.step(inputIds: inputIds, labels: labels, positions: positions, batch: batch, tokens: tokens,
                               seed: seed, checkpointing: checkpointing, gradientScale: gradientScale)
        return (r.loss, r.tokenCount)
    }

    public func gradientNorm() throws -> Float { try model.gradientNorm() }

    /// Σ w² over the float32 masters, reduced on the GPU (one number comes back).
    public func adapterSumOfSquares() throws -> Double {
        try model.device.sumOfSquares(model.adapterKeys.flatMap { [model.adapters[$0]!.a, model.adapters[$0]!.b] })
    }

    public func applyOptimizer(lr: Float, gradientScale: Float) throws {
        let tag = model.device.allocationTag
        model.device.allocationTag = "optimizer state (paged: managed memory)"
        defer { model.device.allocationTag = tag }
        // The compute copies are written by the update itself (a float32 model reads the masters).
        try optimizer.update(model.adapterKeys.flatMap { key -> [CUDAAdamW.Item] in
            let a = model.adapters[key]!
            return [(key + ".A", a.a, a.gradA, a.aCompute === a.a ? nil : a.aCompute),
                    (key + ".B", a.b, a.gradB, a.bCompute === a.b ? nil : a.bCompute)]
        }, lr: lr, gradientScale: gradientScale)
        try model.zeroGradients()
        try model.device.synchronize()
    }

    public func loss(inputIds: [Int], labels: [Int], positions: [Int]?, batch: Int,
                     tokens: Int) throws -> (loss: Double, tokenCount: Int) {
        let r = try model.step(inputIds: inputIds, labels: labels, positions: positions, batch: batch, tokens: tokens,
                               withGradients: false, training: false)
        return (r.loss, r.tokenCount)
    }

    public func adapterWeights() throws -> [String: LoRAWeights] { try model.adapterWeights() }
    public func setAdapterWeights(_ weights: [String: LoRAWeights]) throws { try model.setAdapterWeights(weights) }
    public func optimizerSnapshot() throws -> AdamW { try optimizer.snapshot() }
    public func restoreOptimizer(_ o: AdamW) throws { try optimizer.restore(o) }
}

/// The data-parallel group of NCCL ranks, for the trainer's host sums (loss, target and token counts).
public final class NCCLGroup: DataParallelGroup {
    public let communicator: NCCLCommunicator
    public init(_ communicator: NCCLCommunicator) { self.communicator = communicator }
    public var rank: Int { communicator.rank }
    public var worldSize: Int { communicator.worldSize }
    public func sum(_ values: [Double]) throws -> [Double] { try communicator.sum(values) }
}
