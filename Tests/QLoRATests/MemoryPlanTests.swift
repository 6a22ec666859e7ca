import CUDATraining
import Foundation
import Llama
import ModelFiles
import XCTest

/// `MemoryPlan` (the step run on a virtual GPU) against the peaks measured on an H200 by `qlora bench` in
/// `docs/gpu-lean-bench-h200.jsonl`: within 10% for every benchmark shape there (the planner books the same pool
/// the real step allocates from, so it should be exact; a step whose memory changed must be measured again).
final class MemoryPlanTests: XCTestCase {
    func testPlanMatchesTheMeasuredPeaks() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/gpu-lean-bench-h200.jsonl").path
        var checked = 0
        for line in try FileSystem.readBytes(docs).split(separator: 0x0A) {
            guard let r = try? JSONValue(parsing: Array(line)), r["system"]?.stringValue == "qlora-swift-cuda",
                  let shape = r["shape"]?.stringValue, LlamaConfig.benchmarkShapes[shape] != nil,
                  // the default: offloaded
                  r["offload_checkpoints"] != .bool(false),
                  let batch = r["batch"]?.intValue, let seq = r["seq"]?.intValue,
                  let measured = r["peak_alloc_gib"]?.doubleValue else { continue }
            var lora = LoRAConfig()
            lora.r = 16; lora.alpha = 32; lora.dropout = r["lora_dropout"]?.doubleValue ?? 0.05
            lora.targetModules = r["targets"]?.stringValue == "qv" ? ["q_proj", "v_proj"] : ["all-linear"]
            let config = try LlamaConfig.benchmarkShape(shape, maxPositions: max(4096, seq))
            let plan = try MemoryPlan(config: config, lora: lora, batch: batch, tokens: seq)
            let predicted = Double(plan.peakAllocated) / 1073741824
            XCTAssertEqual(predicted, measured, accuracy: 0.1 * measured,
                           "\(shape) \(lora.resolvedTargets) \(batch)×\(seq)")
            XCTAssertGreaterThan(plan.pinnedHost, 0, "checkpoints are offloaded by default")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 4, "the four benchmark shapes")
    }

    /// Offloading the checkpoints moves them from the GPU to pinned host memory: the GPU peak drops by about the
    /// layer inputs (layers × tokens × hidden × 2 bytes, each a pool block rounded up to 2 MiB) less the two kept on
    /// the GPU around the current layer. The host holds per layer its input, attention output, log-sum-exp (float32
    /// per head and token), xMid, keys and values, each from a 256-byte boundary (the selective recompute's
    /// `OffloadLayout`).
    func testOffloadingMovesTheCheckpointsToTheHost() throws {
        let config = try LlamaConfig.benchmarkShape("smollm2-135m")
        var lora = LoRAConfig(); lora.r = 16; lora.targetModules = ["all-linear"]
        let onHost = try MemoryPlan(config: config, lora: lora, batch: 2, tokens: 512, offloadCheckpoints: true)
        let onGPU = try MemoryPlan(config: config, lora: lora, batch: 2, tokens: 512, offloadCheckpoints: false)
        let layerInput = 2 * 512 * config.hiddenSize * 2
        func rounded(_ b: Int) -> Int { (b + 255) / 256 * 256 }
        let attention = 2 * 512 * config.headCount * config.headDim * 2, lse = 2 * config.headCount * 512 * 4
        let keys = 2 * 512 * config.kvHeadCount * config.headDim * 2
        let perLayer = rounded(layerInput) + rounded(attention) + rounded(lse) + rounded(layerInput) + rounded(keys)
            + keys
        XCTAssertEqual(onHost.pinnedHost, config.layerCount * perLayer)
        XCTAssertEqual(onGPU.pinnedHost, 0)
        let block = (layerInput + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        let saved = onGPU.peakAllocated - onHost.peakAllocated
        XCTAssertGreaterThan(saved, (config.layerCount - 4) * block)
        XCTAssertLessThan(saved, (config.layerCount + 1) * block)
    }
}
