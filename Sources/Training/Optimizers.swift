import CVector
import Foundation
import Llama
import Quantization
import Tensors

/// Hyper-parameters shared by the AdamW variants.
public struct AdamWSettings: Equatable, Sendable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var eps: Float = 1e-8
    public var weightDecay: Float = 0
    /// Defaults as torch's (weight decay 0 here; Hugging Face's Trainer also defaults to 0).
    public init(beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
    }
}

/// The optimizers of the training step, by their Hugging Face `optim` names.
public enum OptimizerKind: String, CaseIterable, Sendable {
    case adamw, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit

    /// True for the blockwise 8-bit state variants.
    public var isEightBit: Bool { self == .adamw_8bit || self == .paged_adamw_8bit }
}

/// One named tensor's optimizer state.
public enum OptimizerState: Sendable {
    /// First and second moments in float32.
    case float32(m: [Float], v: [Float])
    /// Moments as 8-bit codes with a float32 absmax per block of 256 (bitsandbytes' blockwise 8-bit state).
    case eightBit(m: [UInt8], v: [UInt8], absmaxM: [Float], absmaxV: [Float])
}

/// AdamW over named float32 tensors. `adamw` follows torch.optim.AdamW; the others follow bitsandbytes
/// (`AdamW8bit`, `PagedAdamW8bit`, `PagedAdamW32bit`): decoupled weight decay applied after the update, and for the
/// 8-bit ones, tensors of at least 4096 elements keep their moments in 8 bits (the signed dynamic map for the first,
/// the unsigned one for the second, blocks of 256) while smaller ones keep 32-bit moments. "Paged" state lives in
/// unified memory on a GPU; on the CPU it is ordinary memory, so the paged and unpaged variants compute the same.
public struct AdamW: Sendable {
    /// Which variant.
    public let kind: OptimizerKind
    /// Hyper-parameters.
    public var settings: AdamWSettings
    /// Per-tensor state and step count.
    public private(set) var states: [String: OptimizerState] = [:]
    public private(set) var steps: [String: Int] = [:]

    /// Tensors below this size keep 32-bit moments in the 8-bit variants (bitsandbytes' `min_8bit_size`).
    public static let minimumEightBitSize = 4096
    /// Values per 8-bit state block.
    public static let blocksize = 256

    /// A fresh optimizer.
    public init(kind: OptimizerKind, settings: AdamWSettings = AdamWSettings()) {
        self.kind = kind
        self.settings = settings
    }

    /// Restores saved state (checkpoints).
    public init(kind: OptimizerKind, settings: AdamWSettings, states: [String: OptimizerState], steps: [String: Int]) {
        self.kind = kind; self.settings = settings; self.states = states; self.steps = steps
    }

    /// One update of `parameter` (named `name`) with gradient `gradient` at learning rate `lr`.
    public mutating func update(_ name: String, parameter: inout [Float], gradient: [Float], lr: Float) {
        let step = (steps[name] ?? 0) + 1
        steps[name] = step
        switch kind {
        case .adamw:
            torchUpdate(name, &parameter, gradient, lr: lr, step: step)
        case .paged_adamw_32bit:
            bitsandbytes32Update(name, &parameter, gradient, lr: lr, step: step)
        case .adamw_8bit, .paged_adamw_8bit:
            if parameter.count < Self.minimumEightBitSize {
                bitsandbytes32Update(name, &parameter, gradient, lr: lr, step: step)
            } else {
                bitsandbytes8Update(name, &parameter, gradient, lr: lr, step: step)
            }
        }
    }

    /// Updates every adapter of `model` from `gradients` (scaled by `gradientScale`, e.g. for clipping); adapter
    /// matrices are named `layer.projection.A` / `.B`.
    public mutating func update(_ model: LlamaModel, gradients: LoRAGradients, lr: Float, gradientScale: Float = 1) {
        for key in model.adapters.keys.sorted() {
            // Taken out of the dictionary while updated, so that its arrays are not copied when written.
            guard let g = gradients[key], var w = model.adapters.removeValue(forKey: key) else { continue }
            update(key + ".A", parameter: &w.a, gradient: gradientScale == 1 ? g.a : g.a.map { $0 * gradientScale }, lr: lr)
            update(key + ".B", parameter: &w.b, gradient: gradientScale == 1 ? g.b : g.b.map { $0 * gradientScale }, lr: lr)
            model.adapters[key] = w
        }
    }

    /// torch.optim.AdamW: p ← p·(1 − lr·wd); m ← m + (1−β1)(g − m); v ← β2·v + (1−β2)·g²;
    /// p ← p − lr/(1−β1ᵗ) · m / (√v / √(1−β2ᵗ) + ε).
    private mutating func torchUpdate(_ name: String, _ p: inout [Float], _ g: [Float], lr: Float, step: Int) {
        var (m, v) = float32State(name, count: p.count)
        let s = settings
        let bc1 = 1 - Foundation.pow(Double(s.beta1), Double(step))
        let bc2Sqrt = (1 - Foundation.pow(Double(s.beta2), Double(step))).squareRoot()
        let stepSize = Float(Double(lr) / bc1)
        for i in p.indices {
            if s.weightDecay != 0 { p[i] *= 1 - lr * s.weightDecay }
            m[i] += (g[i] - m[i]) * (1 - s.beta1)
            v[i] = v[i] * s.beta2 + g[i] * g[i] * (1 - s.beta2)
            let denom = v[i].squareRoot() / Float(bc2Sqrt) + s.eps
            p[i] -= stepSize * m[i] / denom
        }
        states[name] = .float32(m: m, v: v)
    }

    /// bitsandbytes' 32-bit Adam kernel: p ← p + (−lr·√(1−β2ᵗ)/(1−β1ᵗ)) · m / (√v + ε·√(1−β2ᵗ)), then
    /// p ← p·(1 − lr·wd).
    private mutating func bitsandbytes32Update(_ name: String, _ p: inout [Float], _ g: [Float], lr: Float, step: Int) {
        var (m, v) = float32State(name, count: p.count)
        let s = settings
        let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
        let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
        let stepSize = -lr * correction2 / correction1
        for i in p.indices {
            m[i] = m[i] * s.beta1 + (1 - s.beta1) * g[i]
            v[i] = v[i] * s.beta2 + (1 - s.beta2) * (g[i] * g[i])
            p[i] += stepSize * (m[i] / (v[i].squareRoot() + s.eps * correction2))
            if s.weightDecay > 0 { p[i] *= 1 - lr * s.weightDecay }
        }
        states[name] = .float32(m: m, v: v)
    }

    private func float32State(_ name: String, count: Int) -> ([Float], [Float]) {
        if case .float32(let m, let v)? = states[name] { return (m, v) }
        return ([Float](repeating: 0, count: count), [Float](repeating: 0, count: count))
    }

    /// bitsandbytes' blockwise 8-bit Adam kernel (`kOptimizerStatic8bit2StateBlockwise`), block by block as
    /// `eightBitBlocks` describes.
    private mutating func bitsandbytes8Update(_ name: String, _ p: inout [Float], _ g: [Float], lr: Float, step: Int) {
        let n = p.count, bs = Self.blocksize
        let blocks = (n + bs - 1) / bs
        var cm: [UInt8], cv: [UInt8], am: [Float], av: [Float]
        // Taken out of `states` so that the arrays are not copied when written.
        if case .eightBit(let m0, let v0, let a0, let b0)? = states.removeValue(forKey: name) {
            (cm, cv, am, av) = (m0, v0, a0, b0)
        } else {
            (cm, cv, am, av) = ([UInt8](repeating: 0, count: n), [UInt8](repeating: 0, count: n),
                                [Float](repeating: 0, count: blocks), [Float](repeating: 0, count: blocks))
        }
        let s = settings
        let correction1 = 1 - Foundation.powf(s.beta1, Float(step))
        let correction2 = (1 - Foundation.powf(s.beta2, Float(step))).squareRoot()
        let stepSize = (-lr * correction2) * GPUReciprocal.reciprocal(correction1)
        // Blocks are independent (as the kernel's thread blocks are): split them over the cores. Each block's loop is
        // CVector's cv_adam8_blocks, `eightBitBlocks` operation for operation (a test holds them equal).
        p.withUnsafeMutableBufferPointer { p in g.withUnsafeBufferPointer { g in
        cm.withUnsafeMutableBufferPointer { cm in cv.withUnsafeMutableBufferPointer { cv in
        am.withUnsafeMutableBufferPointer { am in av.withUnsafeMutableBufferPointer { av in
        DynamicMap.signed.withUnsafeBufferPointer { signedMap in DynamicMap.unsigned.withUnsafeBufferPointer { unsignedMap in
        GPUReciprocal.corrections32.withUnsafeBufferPointer { delta in
            var c = cv_adam8_settings(beta1: s.beta1, beta2: s.beta2, eps: s.eps, weight_decay: s.weightDecay, lr: lr,
                                      correction2: correction2, step_size: stepSize,
                                      signed_map: signedMap.baseAddress, unsigned_map: unsignedMap.baseAddress,
                                      reciprocal_delta: delta.baseAddress,
                                      vector: Self.eightBitLoop == .vector ? 1 : 0)
            parallelChunks(count: blocks, grain: 64) { blockRange in
                if Self.eightBitLoop == .swift {
                    Self.eightBitBlocks(settings: s, lr: lr, correction2: correction2, stepSize: stepSize, p: p, g: g,
                                        cm: cm, cv: cv, am: am, av: av, blocks: blockRange, signedMap: signedMap,
                                        unsignedMap: unsignedMap)
                } else {
                    cv_adam8_blocks(&c, p.baseAddress, g.baseAddress, cm.baseAddress, cv.baseAddress, am.baseAddress,
                                    av.baseAddress, n, blockRange.lowerBound, blockRange.upperBound)
                }
            }
        } } } } } } } } }
        states[name] = .eightBit(m: cm, v: cv, absmaxM: am, absmaxV: av)
    }

    /// Which loop runs the 8-bit update: CVector's (16 lanes a vector where the processor has AVX-512, the
    /// default), CVector's plain one, or the Swift reference below (the last two for the test that holds all equal).
    enum EightBitLoop { case vector, plain, swift }
    nonisolated(unsafe) static var eightBitLoop = EightBitLoop.vector

    /// The reference of one range of blocks of the 8-bit update: per block of 256, the moments dequantized (code ×
    /// absmax), updated (fused multiply-adds, as nvcc contracts them), the parameter updated with the new moments,
    /// and the moments requantized against the block's new absmax by the kernel's binary search; a first-moment code
    /// whose sign differs from the value's is moved one step toward it.
    static func eightBitBlocks(settings s: AdamWSettings, lr: Float, correction2: Float, stepSize: Float,
                               p: UnsafeMutableBufferPointer<Float>, g: UnsafeBufferPointer<Float>,
                               cm: UnsafeMutableBufferPointer<UInt8>, cv: UnsafeMutableBufferPointer<UInt8>,
                               am: UnsafeMutableBufferPointer<Float>, av: UnsafeMutableBufferPointer<Float>,
                               blocks: Range<Int>, signedMap: UnsafeBufferPointer<Float>,
                               unsignedMap: UnsafeBufferPointer<Float>) {
        let bs = blocksize, n = p.count
        var m = [Float](repeating: 0, count: bs), v = m
        for b in blocks {
            let range = (b * bs)..<min(n, (b + 1) * bs)
            var maxM: Float = 0, maxV: Float = 0
            for (j, i) in range.enumerated() {
                let gi = g[i]
                if gi.isFinite {
                    let v0 = unsignedMap[Int(cv[i])] * av[b]
                    v[j] = ((1 - s.beta2) * gi * gi).addingProduct(v0, s.beta2)
                    let m0 = signedMap[Int(cm[i])] * am[b]
                    m[j] = ((1 - s.beta1) * gi).addingProduct(m0, s.beta1)
                } else {
                    m[j] = 0; v[j] = 0
                }
                maxM = max(maxM, abs(m[j])); maxV = max(maxV, abs(v[j]))
            }
            am[b] = maxM; av[b] = maxV
            let rm = GPUReciprocal.reciprocal(maxM), rv = GPUReciprocal.reciprocal(maxV)
            for (j, i) in range.enumerated() {
                if g[i].isFinite {
                    let denom = v[j].squareRoot() + correction2 * s.eps
                    p[i] = p[i] + stepSize * (m[j] * GPUReciprocal.reciprocal(denom))
                    if s.weightDecay > 0 { p[i] = p[i] * (1 - lr * s.weightDecay) }
                }
                var c1 = Int(quantize2D(m[j] * rm, map: signedMap, signed: true))
                if (signedMap[c1].sign == .minus) != (m[j].sign == .minus) { c1 += m[j] > 0 ? 1 : -1 }
                cm[i] = UInt8(clamping: c1)
                cv[i] = quantize2D(v[j] * rv, map: unsignedMap, signed: false)
            }
        }
    }

    /// The optimizer kernel's code search (`quantize_2D`): the same seven-step binary search from index 127 as
    /// `DynamicMap.code(for:in:)`, but starting its lower bracket at 0 for the unsigned map and never re-reading
    /// the end entries.
    static func quantize2D(_ x: Float, map: UnsafeBufferPointer<Float>, signed: Bool) -> UInt8 {
        var pivot = 127, upperPivot = 255, lowerPivot = 0
        var lower: Float = signed ? -1 : 0, upper: Float = 1
        var value = map[pivot]
        var step = 64
        while step > 0 {
            if x > value { lowerPivot = pivot; lower = value; pivot += step }
            else { upperPivot = pivot; upper = value; pivot -= step }
            value = map[pivot]
            step >>= 1
        }
        if x > value { return UInt8(x > (upper + value) * 0.5 ? upperPivot : pivot) }
        return UInt8(x < (lower + value) * 0.5 ? lowerPivot : pivot)
    }
}
