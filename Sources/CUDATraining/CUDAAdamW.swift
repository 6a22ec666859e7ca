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
    public let kind: OptimizerKind
    public let settings: AdamWSettings
    let device: CUDADevice
    var states: [String: State] = [:]
    var steps: [String: Int] = [:]
    let signedMap: DeviceBuffer, unsignedMap: DeviceBuffer

    public init(kind: OptimizerKind, settings: AdamWSettings, device: CUDADevice) throws {
        self.kind = kind; self.settings = settings; self.device = device
        signedMap = try device.upload(DynamicMap.signed)
        unsignedMap = try device.upload(DynamicMap.unsigned)
    }

    var paged: Bool { kind == .paged_adamw_8bit || kind == .paged_adamw_32bit }
    func usesEightBit(_ count: Int) -> Bool { kind.isEightBit && count >= AdamW.minimumEightBitSize }

    func state(_ name: String, count: Int) throws -> State {
        if let s = states[name] { return s }
        let s: State
        if usesEightBit(count) {
            let blocks = (count + AdamW.blocksize - 1) / AdamW.blocksize
            s = .eightBit(m: try device.zeros(count, .u8, managed: paged), v: try device.zeros(count, .u8, managed: paged),
                          absmaxM: try device.zeros(blocks, .f32, managed: paged),
                          absmaxV: try device.zeros(blocks, .f32, managed: paged))
        } else {
            s = .float32(m: try device.zeros(count, .f32, managed: paged), v: try device.zeros(count, .f32, managed: paged))
        }
        states[name] = s
        return s
    }

    /// One update of `parameter` (named `name`) with `gradient` × `gradientScale` at learning rate `lr`.
    public func update(_ name: String, parameter p: DeviceBuffer, gradient g: DeviceBuffer, lr: Float,
                       gradientScale: Float, copy: DeviceBuffer? = nil) throws {
        // The kernels' bf16 build writes a bf16 copy; the float32 build (no copy, or a float32 one) the rest.
        let bf16 = copy?.dtype == .bf16
        let step = (steps[name] ?? 0) + 1
        steps[name] = step
        let s = settings, n = p.count
        let st = try state(name, count: n)
        let grid = (n + 255) / 256
        switch st {
        case .float32(let m, let v):
            try device.prefetch(m); try device.prefetch(v)
            if kind == .adamw {
                let bc1 = 1 - Foundation.pow(Double(s.beta1), Double(step))
                let bc2Sqrt = (1 - Foundation.pow(Double(s.beta2), Double(step))).squareRoot()
                try device.launch(.optimizer, "adamw_torch", bf16: bf16, grid: grid, block: 256,
                                  [.buffer(p), .buffer(g), .buffer(m), .buffer(v), .long(n), .float(lr), .float(s.beta1),
                                   .float(s.beta2), .float(s.eps), .float(s.weightDecay), .float(Float(Double(lr) / bc1)),
                                   .float(Float(bc2Sqrt)), .float(gradientScale), .optional(copy)])
            } else {
                let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
                let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
                try device.launch(.optimizer, "adamw_bnb32", bf16: bf16, grid: grid, block: 256,
                                  [.buffer(p), .buffer(g), .buffer(m), .buffer(v), .long(n), .float(lr), .float(s.beta1),
                                   .float(s.beta2), .float(s.eps), .float(s.weightDecay),
                                   .float(-lr * correction2 / correction1), .float(correction2), .float(gradientScale),
                                   .optional(copy)])
            }
        case .eightBit(let m, let v, let am, let av):
            for b in [m, v, am, av] { try device.prefetch(b) }
            let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
            let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
            let stepSize = (-lr * correction2) * GPUReciprocal.reciprocal(correction1)
            try device.launch(.optimizer, "adamw_bnb8_blockwise", bf16: bf16, grid: grid, block: 256,
                              [.buffer(p), .buffer(g), .buffer(m), .buffer(v), .buffer(am), .buffer(av), .long(n),
                               .float(lr), .float(s.beta1), .float(s.beta2), .float(s.eps), .float(s.weightDecay),
                               .float(stepSize), .float(correction2), .float(gradientScale), .buffer(signedMap),
                               .buffer(unsignedMap), .optional(copy)])
        }
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
        states = [:]
        for (name, s) in o.states {
            switch s {
            case .float32(let m, let v):
                let mb = try device.allocate(m.count, .f32, managed: paged), vb = try device.allocate(v.count, .f32, managed: paged)
                try device.copy(m, to: mb); try device.copy(v, to: vb)
                states[name] = .float32(m: mb, v: vb)
            case .eightBit(let m, let v, let am, let av):
                let mb = try device.allocate(m.count, .u8, managed: paged), vb = try device.allocate(v.count, .u8, managed: paged)
                let ab = try device.allocate(am.count, .f32, managed: paged), bb = try device.allocate(av.count, .f32, managed: paged)
                try device.copy(m, to: mb); try device.copy(v, to: vb); try device.copy(am, to: ab); try device.copy(av, to: bb)
                states[name] = .eightBit(m: mb, v: vb, absmaxM: ab, absmaxV: bb)
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
        try communicator.allReduceSum(model.adapterKeys.flatMap { [model.adapters[$0]!.gradA, model.adapters[$0]!.gradB] })
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
        for key in model.adapterKeys {
            let a = model.adapters[key]!
            // The compute copies are written by the update itself (a float32 model reads the masters).
            try optimizer.update(key + ".A", parameter: a.a, gradient: a.gradA, lr: lr, gradientScale: gradientScale,
                                 copy: a.aCompute === a.a ? nil : a.aCompute)
            try optimizer.update(key + ".B", parameter: a.b, gradient: a.gradB, lr: lr, gradientScale: gradientScale,
                                 copy: a.bCompute === a.b ? nil : a.bCompute)
        }
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
