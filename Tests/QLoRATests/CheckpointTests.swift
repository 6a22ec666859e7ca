import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import XCTest

/// `qlora quantize` on tiny-llama against the checkpoint transformers + bitsandbytes saved for it.
final class CheckpointTests: XCTestCase {
    func testQuantizedTinyLlamaEqualsTransformersCheckpoint() throws {
        let golden = try Shared.requireGolden()
        let out = makeTemporaryDirectory(self) + "/out"
        let summary = try ModelQuantizer().quantize(modelDirectory: golden + "/tiny-llama", outputDirectory: out)
        XCTAssertEqual(summary.quantizedCount, 14)
        XCTAssertEqual(summary.copiedCount, 7)

        let ours = try SafeTensorsFile(path: out + "/model.safetensors")
        let theirs = try SafeTensorsFile(path: golden + "/tiny-llama-bnb-nf4/model.safetensors")
        XCTAssertEqual(Set(ours.names), Set(theirs.names))
        for name in theirs.names {
            let a = try ours.tensor(named: name)
            let b = try theirs.tensor(named: name)
            XCTAssertEqual(a.dtype, b.dtype, name)
            XCTAssertEqual(a.shape, b.shape, name)
            if name.contains(".quant_state.") {
                XCTAssertEqual(try JSONValue(parsing: a.bytesArray()), try JSONValue(parsing: b.bytesArray()), name)
            } else {
                assertBytesEqual(a.bytesArray(), b.bytesArray(), name)
            }
        }
        XCTAssertEqual(ours.metadata, theirs.metadata)
        // Beyond the tensors: the whole file is laid out byte for byte as transformers wrote it.
        XCTAssertEqual(try FileSystem.readBytes(out + "/model.safetensors"),
                       try FileSystem.readBytes(golden + "/tiny-llama-bnb-nf4/model.safetensors"))
        // config.json carries quantization_config as transformers writes it.
        let config = try JSONValue(parsing: FileSystem.readBytes(out + "/config.json"))
        let expected = try JSONValue(parsing: FileSystem.readBytes(golden + "/tiny-llama-bnb-nf4/config.json"))
        XCTAssertEqual(config, expected)
        XCTAssertTrue(FileSystem.isFile(out + "/generation_config.json"), "non-weight files are copied")
        XCTAssertNoThrow(try LlamaConfig(contentsOf: out))
    }

    /// Reading a 4-bit checkpoint gives the weights quantization gives: transformers' checkpoint and ours alike.
    func testLoadingCheckpointsGivesTheQuantizedWeights() throws {
        let golden = try Shared.requireGolden()
        let base = try SafeTensorsArchive(directory: golden + "/tiny-llama")
        let transformers = try SafeTensorsArchive(directory: golden + "/tiny-llama-bnb-nf4")
        let outDir = makeTemporaryDirectory(self) + "/fp4"
        var quantizer = ModelQuantizer()
        quantizer.quantType = .fp4
        quantizer.doubleQuant = false
        quantizer.blocksize = 128
        try quantizer.quantize(modelDirectory: golden + "/tiny-llama", outputDirectory: outDir)
        let ours = try SafeTensorsArchive(directory: outDir)
        var count = 0
        for name in base.names where BnB4BitCheckpoint.isQuantizedLinearWeight(name, shape: try base.tensor(named: name).shape) {
            let weight = try base.tensor(named: name)
            XCTAssertTrue(BnB4BitCheckpoint.isQuantized(name, in: transformers))
            let loaded = try BnB4BitCheckpoint.readWeight(name, from: transformers)
            XCTAssertEqual(loaded, try Quantized4BitTensor(quantizing: weight, type: .nf4, doubleQuant: true), name)
            XCTAssertEqual(loaded.shape, weight.shape)
            XCTAssertEqual(loaded.dtype, .bf16)
            let loadedFP4 = try BnB4BitCheckpoint.readWeight(name, from: ours)
            XCTAssertEqual(loadedFP4, try Quantized4BitTensor(quantizing: weight, type: .fp4, blocksize: 128, doubleQuant: false), name)
            count += 1
        }
        XCTAssertEqual(count, 14)
        XCTAssertFalse(BnB4BitCheckpoint.isQuantized("lm_head.weight", in: transformers))
        let config = try JSONValue(parsing: FileSystem.readBytes(outDir + "/config.json"))
        XCTAssertEqual(config["quantization_config"]?["bnb_4bit_quant_type"], .string("fp4"))
        XCTAssertEqual(config["quantization_config"]?["bnb_4bit_use_double_quant"], .bool(false))
    }

    func testBrokenCheckpointsAreReportedByTensor() throws {
        let dir = makeTemporaryDirectory(self)
        let w = try Quantized4BitTensor(quantizing: Tensor((0..<256).map { Float($0) / 256 }, shape: [4, 64], dtype: .bf16),
                                        type: .nf4, doubleQuant: true)
        var parts = BnB4BitCheckpoint.tensors(storing: w, as: "model.layers.0.mlp.up_proj.weight")
        parts.removeAll { $0.name.hasSuffix(".nested_absmax") }
        try SafeTensorsWriter.write(parts, to: dir + "/model.safetensors")
        let archive = try SafeTensorsArchive(directory: dir)
        XCTAssertThrowsError(try BnB4BitCheckpoint.readWeight("model.layers.0.mlp.up_proj.weight", from: archive)) {
            XCTAssertEqual($0 as? ModelFileError, .missingTensor(name: "model.layers.0.mlp.up_proj.weight.nested_absmax", location: dir))
        }
        XCTAssertThrowsError(try BnB4BitCheckpoint.readWeight("model.layers.0.mlp.down_proj.weight", from: archive)) {
            guard case .invalidCheckpoint(_, let tensor, _)? = $0 as? ModelFileError else { return XCTFail("\($0)") }
            XCTAssertEqual(tensor, "model.layers.0.mlp.down_proj.weight")
        }
    }

    func testQuantizeRefusesAQuantizedModelAndKeepsOutputIntact() throws {
        let golden = try Shared.requireGolden()
        let out = makeTemporaryDirectory(self)
        XCTAssertThrowsError(try ModelQuantizer().quantize(modelDirectory: golden + "/tiny-llama-bnb-nf4", outputDirectory: out)) {
            XCTAssertTrue("\($0)".contains("already quantized"), "\($0)")
        }
        XCTAssertEqual(try FileSystem.contents(of: out), [])
    }
}
