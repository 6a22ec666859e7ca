import CUDABackend
import Llama
import Training

/// The GPU memory a training step needs, predicted by running the step's own code on a virtual device
/// (`CUDADevice(planningFor:)`): every allocation the step makes is booked by the same caching pool, nothing is
/// computed. Two steps run (the first makes what is kept from step to step: optimizer state, RoPE tables), and the
/// peak of the second is reported, as `qlora bench` measures it after its warm-up steps.
public struct MemoryPlan {
    /// Peak bytes in live buffers, bytes the pool holds from the driver, and pinned host bytes at the end.
    public let peakAllocated: Int, reserved: Int, pinnedHost: Int
    /// What the bytes at the peak hold, by allocation tag, largest first.
    public let breakdown: [(tag: String, bytes: Int)]

    /// Plans `lora` on a random model of `config` in NF4 with double quantization (as training quantizes a model).
    public init(config: LlamaConfig, lora: LoRAConfig, batch: Int, tokens: Int, dtype: GPUDType = .bf16,
                checkpointing: Bool = true, offloadCheckpoints: Bool? = nil,
                optimizer: OptimizerKind = .paged_adamw_8bit) throws {
        let device = CUDADevice(planningFor: "virtual GPU")
        let model = try CUDALlama(randomConfig: config, lora: lora, device: device, dtype: dtype)
        model.offloadCheckpoints = offloadCheckpoints
        let engine = try CUDATrainingEngine(model: model,
                                            optimizer: try CUDAAdamW(kind: optimizer, settings: AdamWSettings(),
                                                                     device: device))
        let ids = [Int](repeating: 1, count: batch * tokens)
        var rng = SeededGenerator(seed: 1)
        for s in 0..<2 {
            if s == 1 { device.resetPeak() }
            _ = try engine.accumulateGradients(inputIds: ids, labels: ids, batch: batch, tokens: tokens, rng: &rng,
                                               checkpointing: checkpointing, gradientScale: 1)
            try engine.applyOptimizer(lr: 1e-4, gradientScale: 1)
        }
        peakAllocated = device.peakAllocatedBytes
        reserved = device.reservedBytes
        pinnedHost = device.pinnedHostBytes
        breakdown = device.peakBreakdown.filter { $0.value > 0 }.sorted { $0.value > $1.value }
            .map { ($0.key, $0.value) }
    }
}
