import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import XCTest

/// `LlamaWeights`: what a file gives, one tensor at a time, from which each device builds its model.
final class LlamaWeightsTests: XCTestCase {
    /// A dense folder and transformers' 4-bit checkpoint of the same model give the same 4-bit projections (the
    /// dense one quantized on the host exactly as bitsandbytes does), the same norms and embedding; the CPU model built
    /// from the weights holds those projections and the adapters `LoRAWeights.initial` draws.
    func testDenseAndPreQuantizedFoldersGiveTheSameWeights() throws {
        let golden = try Shared.requireGolden()
        let dense = try LlamaWeights.open(path: golden + "/tiny-llama")
        let bnb = try LlamaWeights.open(path: golden + "/tiny-llama-bnb-nf4")
        XCTAssertEqual(dense.config.layerCount, 2)
        for l in 0..<dense.config.layerCount {
            for name in LlamaConfig.projectionNames {
                guard case .dense(let t) = try dense.projection(layer: l, name) else {
                    return XCTFail("\(l).\(name) is not dense")
                }
                guard case .quantized(let q) = try bnb.projection(layer: l, name) else {
                    return XCTFail("\(l).\(name) is not 4-bit")
                }
                XCTAssertEqual(q, try Quantized4BitTensor(quantizing: t, type: .nf4, doubleQuant: true), "\(l).\(name)")
                XCTAssertEqual(try dense.quantizedProjection(layer: l, name), q, "\(l).\(name)")
            }
            let a = try dense.norms(layer: l), b = try bnb.norms(layer: l)
            XCTAssertEqual(a.input, b.input); XCTAssertEqual(a.postAttention, b.postAttention)
        }
        XCTAssertEqual(try dense.embedding().floats(), try bnb.embedding().floats())
        XCTAssertEqual(try dense.finalNorm(), try bnb.finalNorm())
        XCTAssertEqual(try dense.lmHead()?.floats(), try bnb.lmHead()?.floats())

        var lora = LoRAConfig(); lora.r = 4; lora.targetModules = ["all-linear"]
        let model = try LlamaModel(weights: dense, lora: lora, seed: 9)
        XCTAssertEqual(model.adapters, LoRAWeights.initial(config: dense.config, lora: lora, seed: 9))
        XCTAssertEqual(model.adapters.count, 14)
        XCTAssertEqual(model.layers[1].projections["down_proj"]!.quantized,
                       try bnb.quantizedProjection(layer: 1, "down_proj"))
    }

    /// A GGUF file of the same model (bf16 tensors, llama.cpp's names and q/k row order) gives the same 4-bit
    /// projections (codes and scales), embedding and norms as the Hugging Face folder.
    func testGGUFGivesTheSameWeightsAsTheFolder() throws {
        let folder = try Shared.requireGolden() + "/tiny-llama"
        let path = makeTemporaryDirectory(self) + "/tiny-llama.gguf"
        try GGUFTests.writeTinyLlamaGGUF(folder: folder, to: path)
        let gguf = try LlamaWeights.open(path: path), hf = try LlamaWeights.open(path: folder)
        XCTAssertEqual(gguf.config.layerCount, hf.config.layerCount)
        for l in 0..<hf.config.layerCount {
            for name in LlamaConfig.projectionNames {
                let a = try gguf.quantizedProjection(layer: l, name), b = try hf.quantizedProjection(layer: l, name)
                XCTAssertEqual(a.packed, b.packed, "\(l).\(name)")
                XCTAssertEqual(a.scales, b.scales, "\(l).\(name)")
            }
            XCTAssertEqual(try gguf.norms(layer: l).input, try hf.norms(layer: l).input)
        }
        XCTAssertEqual(try gguf.embedding().floats(), try hf.embedding().floats())
        XCTAssertEqual(try gguf.lmHead()?.floats(), try hf.lmHead()?.floats())
    }

    /// A tensor of the wrong shape is an error naming the file and the tensor.
    func testWrongShapeNamesTheTensor() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        XCTAssertThrowsError(try weights.dense("model.norm.weight", shape: [7])) { error in
            XCTAssertTrue("\(error)".contains("model.norm.weight"), "\(error)")
        }
    }

    /// The loader drops a mapped file's pages after reading a tensor, so streaming a model to a GPU holds about one
    /// tensor in host memory: the resident size falls back after `evictPages`, and the tensor still reads the same.
    func testEvictingPagesReleasesResidentMemory() throws {
        let dir = makeTemporaryDirectory(self)
        let n = 16 << 20   // 64 MiB of float32
        let values = (0..<n).map { Float($0 % 1000) }
        try SafeTensorsWriter.write([("big", Tensor(values, shape: [n]))], to: dir + "/model.safetensors")
        let archive = try SafeTensorsArchive(directory: dir)
        let t = try archive.tensor(named: "big")
        func residentMiB() -> Double {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Double(line.split(separator: " ").dropFirst().first { !$0.isEmpty }.flatMap { Int($0) } ?? 0) / 1024
        }
        func checksum() -> Double {
            t.withUnsafeBytes { raw in
                var s = 0.0
                for i in stride(from: 0, to: n, by: 1024) {
                    s += Double(raw.loadUnaligned(fromByteOffset: 4 * i, as: Float.self))
                }
                return s
            }
        }
        let before = residentMiB()
        let expected = checksum()   // touches every page of the mapping
        let touched = residentMiB()
        XCTAssertGreaterThan(touched - before, 48, "reading the mapped tensor should make it resident")
        archive.evictPages()
        let after = residentMiB()
        XCTAssertLessThan(after, touched - 48,
                          "evictPages should drop the mapped pages (\(before) → \(touched) → \(after) MiB)")
        XCTAssertEqual(checksum(), expected)
    }
}
