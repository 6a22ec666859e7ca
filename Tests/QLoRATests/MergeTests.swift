import Foundation
import Llama
import ModelFiles
import Tensors
import XCTest

/// `LlamaMerge`: the adapter folded into the base, against transformers + peft's `merge_and_unload`.
final class MergeTests: XCTestCase {
    /// tiny-llama + tiny-adapter merged onto the original (bf16) weights in float32 equals the folder peft's
    /// `merge_and_unload` wrote (`tiny-llama-merged-f32`), every tensor, to the last bits of the float32 product.
    func testMergeOntoOriginalEqualsPeft() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let out = makeTemporaryDirectory(self) + "/merged"
        let files = try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters, onto: .original, dtype: .f32,
                                         to: out)
        XCTAssertEqual(files, ["model.safetensors", "config.json", "generation_config.json"])
        let config = try JSONValue(parsing: FileSystem.readBytes(out + "/config.json"))
        XCTAssertNil(config["quantization_config"])
        XCTAssertEqual(config["torch_dtype"], .string("float32"))
        let ours = try SafeTensorsFile(path: out + "/model.safetensors")
        let peft = try SafeTensorsFile(path: golden + "/tiny-llama-merged-f32/model.safetensors")
        XCTAssertEqual(Set(ours.entries.map(\.name)), Set(peft.entries.map(\.name)))
        var merged = 0
        for e in peft.entries {
            let a = try ours.tensor(named: e.name), b = try peft.tensor(named: e.name)
            XCTAssertEqual(a.shape, b.shape, e.name)
            XCTAssertEqual(a.dtype, .f32, e.name)
            XCTAssertLessThan(relativeError(a.floats(), b.floats()), 1e-6, e.name)
            if e.name.hasSuffix("proj.weight") {
                // The delta is really there: the merged weight differs from the base.
                let base = try weights.dense(e.name, shape: b.shape).floats()
                XCTAssertGreaterThan(relativeError(base, b.floats()), 1e-4, e.name)
                merged += 1
            }
        }
        XCTAssertEqual(merged, 14)
    }

    /// Sharded output (an index and several files) holds the same tensors as one file; onto the dequantized weights
    /// a bitsandbytes folder merges, and onto the original ones it is an error (they are not in it).
    func testShardsAndBases() throws {
        let golden = try Shared.requireGolden()
        let dir = makeTemporaryDirectory(self)
        let bnb = try LlamaWeights.open(path: golden + "/tiny-llama-bnb-nf4")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: bnb.config)
        _ = try LlamaMerge.write(weights: bnb, lora: lora, adapters: adapters, onto: .dequantized, dtype: .bf16,
                                 to: dir + "/one")
        let files = try LlamaMerge.write(weights: bnb, lora: lora, adapters: adapters, onto: .dequantized, dtype: .bf16,
                                         to: dir + "/shards", shardBytes: 200_000)
        XCTAssertGreaterThan(files.count, 2)
        XCTAssertEqual(files.last, "model.safetensors.index.json")
        let bnbConfig = try JSONValue(parsing: FileSystem.readBytes(dir + "/shards/config.json"))
        XCTAssertNil(bnbConfig["quantization_config"], "the bnb base's quantization_config is not carried over")
        let one = try SafeTensorsArchive(directory: dir + "/one"),
            shards = try SafeTensorsArchive(directory: dir + "/shards")
        XCTAssertEqual(Set(one.names), Set(shards.names))
        for name in one.names {
            XCTAssertEqual(try one.tensor(named: name).bytesArray(), try shards.tensor(named: name).bytesArray(), name)
        }
        // The dequantized base plus the delta: what the CPU model computes with (its dequantized weights + B A s).
        let model = try LlamaModel(weights: bnb, lora: lora)
        let w = model.layers[1].projections["o_proj"]!
        let expected = LlamaMerge.merged(w.weight, outFeatures: w.outFeatures, inFeatures: w.inFeatures,
                                         adapter: adapters["1.o_proj"]!, r: lora.r, scale: lora.scale)
        let got = try one.tensor(named: "model.layers.1.self_attn.o_proj.weight").floats()
        XCTAssertLessThan(relativeError(got, expected), 4e-3, "bf16 rounding only")
        XCTAssertThrowsError(try LlamaMerge.write(weights: bnb, lora: lora, adapters: adapters, onto: .original,
                                                  dtype: .bf16, to: dir + "/original")) { error in
            XCTAssertTrue("\(error)".contains("--onto dequantized"), "\(error)")
        }
    }

    /// The export checks itself: loaded back dense, the merged model's logits equal base + adapter's (in float32,
    /// to rounding), onto either base; in bf16 the difference is bf16's rounding of the weights.
    func testCheckAgainstBaseAndAdapter() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let dir = makeTemporaryDirectory(self)
        let tokens = [1, 17, 250, 3, 99, 42, 7, 300, 5, 64]
        for onto in MergeBase.allCases {
            _ = try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters, onto: onto, dtype: .f32,
                                     to: dir + "/" + onto.rawValue)
            let r = try LlamaMerge.check(merged: dir + "/" + onto.rawValue, base: weights, lora: lora,
                adapters: adapters,
                                         onto: onto, tokens: tokens)
            XCTAssertLessThan(r.maxLogitDifference, 1e-4, onto.rawValue)
            XCTAssertEqual(r.loss, r.referenceLoss, accuracy: 1e-5, onto.rawValue)
        }
        // Against transformers: the merged folder's logits are peft's merged logits (extra.safetensors).
        let extra = try SafeTensorsFile(path: golden + "/extra.safetensors")
        var none = LoRAConfig(); none.targetModules = []
        let merged = try LlamaModel(denseWeights: LlamaWeights.open(path: dir + "/original"), lora: none)
        let ids = try extra.tensor(named: "bf16.input_ids").integers()
        let logits = merged.logits(inputIds: ids, batch: 2, tokens: ids.count / 2)
        XCTAssertLessThan(relativeError(logits, try extra.tensor(named: "merged.logits").floats()), 1e-4)
    }
}
