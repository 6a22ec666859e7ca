import Foundation
@testable import Llama
import ModelFiles
import Tensors
import Tokenizers
import XCTest

/// `qlora export --format gguf` (`LlamaGGUFExport`, `GGUFWriter`, `GGUFVocabulary`): tiny-llama + tiny-adapter
/// written as GGUF and read back with the project's own GGUF reader against merge's weights and logits; the Q8_0
/// quantizer against the gguf Python package's; the adapter file in llama.cpp's LoRA layout.
/// (scripts/check-gguf-export.py checks the same files with gguf-py's reader.)
final class GGUFExportTests: XCTestCase {
    static let chatTemplate = "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"

    /// GPT-2's byte-to-character table (printable Latin-1 bytes stand for themselves, the rest are shifted to 256+).
    static func byteCharacters() -> [String] {
        var out = [String](repeating: "", count: 256)
        var next = 256
        for b in 0..<256 {
            let printable = (33...126).contains(b) || (161...172).contains(b) || (174...255).contains(b)
            out[b] = String(UnicodeScalar(UInt32(printable ? b : next))!)
            if !printable { next += 1 }
        }
        return out
    }

    /// A copy of tiny-llama with a byte-level BPE tokenizer of exactly its 384 ids: <unk>, <s>, </s>, the 256
    /// bytes, and 125 merges chained along the words of an English text; tokenizer_config.json names BOS/EOS and a
    /// chat template.
    static func tinyLlamaWithTokenizer(_ test: XCTestCase) throws -> String {
        let golden = try Shared.requireGolden()
        let folder = makeTemporaryDirectory(test) + "/tiny-llama"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for file in ["config.json", "generation_config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: golden + "/tiny-llama/" + file, toPath: folder + "/" + file)
        }
        var vocab: [(String, Int)] = [("<unk>", 0), ("<s>", 1), ("</s>", 2)]
        let bytes = byteCharacters()
        for (b, c) in bytes.enumerated() { vocab.append((c, 3 + b)) }
        var known = Set(vocab.map(\.0)), merges: [String] = []
        let text = "the river rose slowly through the night and by morning the lower fields were under water " +
            "farmers moved their animals to the hills while the children watched the boats drift past the church " +
            "nobody had seen a flood like it in forty years and the old men argued about whether the bridge would " +
            "hold a recipe for bread needs only four things flour water salt and yeast mix them and bake"
        outer: for (index, word) in text.split(separator: " ").enumerated() {
            let pieces = ((index == 0 ? "" : " ") + word).utf8.map { bytes[Int($0)] }
            var left = pieces[0]
            for right in pieces.dropFirst() {
                let joined = left + right
                if !known.contains(joined) {
                    guard vocab.count < 384 else { break outer }
                    merges.append(left + " " + right)
                    vocab.append((joined, vocab.count))
                    known.insert(joined)
                }
                left = joined
            }
        }
        precondition(vocab.count == 384)
        let added: [JSONValue] = ["<unk>", "<s>", "</s>"].enumerated().map { id, content in
            .object([("id", .int(id)), ("content", .string(content)), ("single_word", .bool(false)),
                     ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)),
                     ("special", .bool(true))])
        }
        let byteLevel: JSONValue = .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
                                            ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])
        let post: JSONValue = .object([
            ("type", .string("TemplateProcessing")),
            ("single", .array([.object([("SpecialToken", .object([("id", .string("<s>")), ("type_id", .int(0))]))]),
                               .object([("Sequence", .object([("id", .string("A")), ("type_id", .int(0))]))])])),
            ("special_tokens", .object([("<s>", .object([("id", .string("<s>")), ("ids", .array([.int(1)])),
                                                          ("tokens", .array([.string("<s>")]))]))]))])
        let json: JSONValue = .object([
            ("version", .string("1.0")), ("added_tokens", .array(added)), ("normalizer", .null),
            ("pre_tokenizer", byteLevel), ("post_processor", post), ("decoder", byteLevel),
            ("model", .object([("type", .string("BPE")), ("unk_token", .string("<unk>")),
                               ("vocab", .object(vocab.map { ($0.0, .int($0.1)) })),
                               ("merges", .array(merges.map { .string($0) }))]))])
        try json.pythonText(indent: 2).write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        let config: JSONValue = .object([("bos_token", .string("<s>")), ("eos_token", .string("</s>")),
                                         ("chat_template", .string(chatTemplate))])
        try config.pythonText(indent: 2).write(toFile: folder + "/tokenizer_config.json", atomically: true,
                                               encoding: .utf8)
        return folder
    }

    /// The tokenizer metadata export writes for `folder`.
    static func tokenizerMetadata(_ folder: String, vocabularySize: Int) throws -> [(String, GGUFValue)] {
        try GGUFVocabulary(tokenizerJSONPath: folder + "/tokenizer.json", vocabularySize: vocabularySize).metadata
            + [("tokenizer.chat_template", .string(chatTemplate))]
    }

    /// The tokenizer `qlora` builds from a GGUF file's metadata.
    static func tokenizer(fromGGUF m: [String: GGUFValue]) throws -> Tokenizer {
        try Tokenizer(ggufModel: m["tokenizer.ggml.model"]!.string!, pre: m["tokenizer.ggml.pre"]?.string,
                      tokens: m["tokenizer.ggml.tokens"]!.strings!, tokenTypes: m["tokenizer.ggml.token_type"]?.ints,
                      scores: nil, merges: m["tokenizer.ggml.merges"]?.strings,
                      bosTokenId: m["tokenizer.ggml.bos_token_id"]?.int,
                      eosTokenId: m["tokenizer.ggml.eos_token_id"]?.int,
                      unknownTokenId: m["tokenizer.ggml.unknown_token_id"]?.int,
                      paddingTokenId: m["tokenizer.ggml.padding_token_id"]?.int,
                      addBOS: m["tokenizer.ggml.add_bos_token"]?.bool ?? false, addSpacePrefix: false)
    }

    /// Whether two arrays hold the same bits (a fast compare: debug builds are slow element by element).
    func sameBits(_ a: [Float], _ b: [Float]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!,
                                                                                      x.count) == 0 } }
    }

    /// The largest |Q8_0 value - original| of each 32-value block, in steps (max |x| / 127) of its block.
    func worstQ8_0Error(_ values: [Float], _ expected: [Float]) -> Float {
        var worst: Float = 0
        values.withUnsafeBufferPointer { v in
            expected.withUnsafeBufferPointer { e in
                for start in stride(from: 0, to: e.count, by: 32) {
                    var amax: Float = 0
                    for i in start..<(start + 32) { amax = max(amax, abs(e[i])) }
                    for i in start..<(start + 32) where amax > 0 { worst = max(worst, abs(v[i] - e[i]) * 127 / amax) }
                }
            }
        }
        return worst
    }

    /// F32, F16 and Q8_0 round-trip: tensors equal merge's (F32 bit for bit, F16 to its rounding, Q8_0 to half a
    /// quantization step), config, tokenizer and chat template come back, and the loaded GGUF computes merge's
    /// logits (F32 to 1e-5).
    func testMergedModelRoundTripsThroughTheReader() throws {
        let folder = try Self.tinyLlamaWithTokenizer(self)
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: folder)
        let config = weights.config
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: config)
        let dir = makeTemporaryDirectory(self)
        let mergedFolder = dir + "/merged"
        _ = try LlamaMerge.write(weights: weights, lora: lora, adapters: adapters, onto: .original, dtype: .f32,
                                 to: mergedFolder)
        let merged = try SafeTensorsArchive(directory: mergedFolder)
        var none = LoRAConfig(); none.targetModules = []
        let tokens = [1, 17, 250, 3, 99, 42, 7, 300, 5, 64, 383, 0]
        let mergedLogits = try LlamaModel(denseWeights: LlamaWeights.open(path: mergedFolder), lora: none)
            .logits(inputIds: tokens, batch: 1, tokens: tokens.count)
        let reference = try Tokenizer(tokenizerJSONPath: folder + "/tokenizer.json")

        for type in [GGUFExportType.f32, .f16, .q8_0] {
            let path = dir + "/tiny-\(type.rawValue).gguf"
            let plan = try LlamaGGUFExport.write(
                weights: weights, lora: lora, adapters: adapters, onto: .original, type: type, name: "tiny-llama",
                tokenizerMetadata: try Self.tokenizerMetadata(folder, vocabularySize: config.vocabSize), to: path)
            XCTAssertEqual(plan.count, 21)
            let archive = try GGUFArchive(path: path)
            let file = archive.file
            XCTAssertEqual(file.version, 3)
            XCTAssertEqual(file.alignment, 32)
            XCTAssertEqual(file.metadata["general.architecture"], .string("llama"))
            XCTAssertEqual(file.metadata["general.file_type"], .uint32(type.fileType))
            XCTAssertEqual(Set(archive.names), Set(merged.names), type.rawValue)
            XCTAssertEqual(archive.unmappedNames, [])
            XCTAssertTrue(FileManager.default.fileExists(atPath: path))
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp") },
                           [], "no temporary file left")
            for info in file.tensors {
                let hf = GGUFArchive.huggingFaceName(info.name)!
                let want = try merged.tensor(named: hf)
                let got = try archive.tensor(named: hf)
                XCTAssertEqual(got.shape, want.shape, hf)
                let what = "\(type.rawValue) \(info.name)"
                let matrix = info.dimensions.count == 2
                XCTAssertEqual(info.type, matrix ? type.ggml : .f32, what)
                let expected = want.floats(), values = got.floats()
                switch matrix ? type : .f32 {
                case .f32: XCTAssertTrue(sameBits(values, expected), what)
                case .f16: XCTAssertTrue(sameBits(values, expected.map { Float(Float16($0)) }), what)
                case .bf16: XCTAssertTrue(sameBits(values, expected.map { float(fromBF16: bf16Bits(from: $0)) }), what)
                case .q8_0:
                    // Half a step, plus the f16 rounding of the scale times 127 (2^-11 · 127 < 0.063 steps).
                    XCTAssertLessThanOrEqual(worstQ8_0Error(values, expected), 0.563, what)
                }
            }

            // The config and the tokenizer come back.
            var expectedConfig = config
            expectedConfig.rmsNormEps = Double(Float(config.rmsNormEps))
            expectedConfig.torchDtype = nil
            XCTAssertEqual(try LlamaConfig(gguf: file), expectedConfig, type.rawValue)
            let tokenizer = try Self.tokenizer(fromGGUF: file.metadata)
            for text in ["the river rose slowly through the night", "Farmers moved 12 animals!\n<s>", "ÿ€ the"] {
                XCTAssertEqual(tokenizer.encode(text, addSpecialTokens: true),
                               reference.encode(text, addSpecialTokens: true), text)
            }
            XCTAssertEqual(tokenizer.bosTokenId, 1)
            XCTAssertEqual(tokenizer.eosTokenId, 2)
            XCTAssertEqual(file.metadata["tokenizer.ggml.unknown_token_id"], .uint32(0))
            XCTAssertEqual(file.metadata["tokenizer.chat_template"], .string(Self.chatTemplate))

            // Logits of the loaded GGUF against merge's (Q8_0's against base + adapter: the check test).
            if type == .f32 {
                let logits = try LlamaModel(denseWeights: LlamaWeights.open(path: path), lora: none)
                    .logits(inputIds: tokens, batch: 1, tokens: tokens.count)
                XCTAssertLessThan(zip(logits, mergedLogits).map { abs($0 - $1) }.max()!, 1e-5)
            }
        }
    }

    /// The Q8_0 blocks equal, byte for byte, what gguf.quants.quantize of the gguf Python package gives
    /// (Fixtures/q8_0-reference.safetensors, made by scripts/make-q8_0-reference.py): random, zero, tie and outlier
    /// blocks.
    func testQ8_0MatchesTheGGUFPackage() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/q8_0-reference.safetensors").path
        let fixture = try SafeTensorsFile(path: path)
        let input = try fixture.tensor(named: "input").floats()
        let expected = try fixture.tensor(named: "q8_0").bytesArray()
        let got = try GGMLType.q8_0.encode(input)
        XCTAssertEqual(got.count, input.count / 32 * 34)
        assertBytesEqual(got, expected, "Q8_0 blocks")
        // Decoding with the reader's dequantizer gives back the values within half a step.
        var decoded = [Float](repeating: 0, count: input.count)
        got.withUnsafeBytes { raw in
            decoded.withUnsafeMutableBufferPointer { GGMLType.q8_0.dequantize(raw, into: $0) }
        }
        var worst: Float = 0
        for start in stride(from: 0, to: input.count, by: 32) {
            // Half a step, the f16 rounding of the scale (relative 2^-11, or 2^-25 absolute below f16's normals).
            let step = input[start..<(start + 32)].map(abs).max()! / 127
            for i in start..<(start + 32) where step > 0 {
                worst = max(worst, abs(decoded[i] - input[i]) / (step * 0.563 + 127 * 3e-8))
            }
        }
        XCTAssertLessThanOrEqual(worst, 1)
        XCTAssertThrowsError(try GGMLType.q8_0.encode([1, 2, 3])) { XCTAssertTrue("\($0)".contains("blocks of 32")) }
        XCTAssertThrowsError(try GGMLType.q4_K.encode([Float](repeating: 0, count: 256))) {
            XCTAssertTrue("\($0)".contains("F32, F16, BF16, Q8_0"), "\($0)")
        }
    }

    /// The self-check: read back in F32 the export is base + adapter to rounding; in Q8_0 its loss and perplexity
    /// move by the quantization's (small, non-zero) cost.
    func testCheckAgainstBaseAndAdapter() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let dir = makeTemporaryDirectory(self)
        var rng = TestRandom(seed: 3)
        let sequences = (0..<2).map { _ -> ([Int], [Int]) in
            let ids = (0..<40).map { _ in Int(rng.next() % 384) }
            var labels = ids
            labels[0..<10] = [Int](repeating: -100, count: 10)[...]
            return (ids, labels)
        }
        var results: [GGUFExportType: LlamaGGUFExport.Check] = [:]
        for (type, onto) in [(GGUFExportType.f32, MergeBase.dequantized), (.q8_0, .dequantized)] {
            do {
                let path = dir + "/\(type.rawValue)-\(onto.rawValue).gguf"
                try LlamaGGUFExport.write(weights: weights, lora: lora, adapters: adapters, onto: onto, type: type,
                                          name: "tiny", tokenizerMetadata: [], to: path)
                let r = try LlamaGGUFExport.check(exported: path, base: weights, lora: lora, adapters: adapters,
                                                  onto: onto, sequences: sequences.map { ($0.0, $0.1) })
                XCTAssertEqual(r.sequences, 2)
                XCTAssertEqual(r.tokens, 2 * 30, "targets are labels[1...] (39), of which 9 are -100")
                XCTAssertEqual(r.positions, 2 * 40, "every position's top token is compared")
                if type == .f32 {
                    XCTAssertLessThan(r.maxLogitDifference, 1e-4, onto.rawValue)
                    XCTAssertEqual(r.loss, r.referenceLoss, accuracy: 1e-5)
                    XCTAssertEqual(r.topTokenChanges, 0)
                }
                // A change of top token can only happen where the two logits moved by at least their gap.
                XCTAssertLessThanOrEqual(r.widestChangedGap, 2 * r.maxLogitDifference)
                if onto == .dequantized { results[type] = r }
            }
        }
        let q8 = try XCTUnwrap(results[.q8_0])
        XCTAssertGreaterThan(q8.maxLogitDifference, 1e-4, "Q8_0 rounds the weights")
        XCTAssertLessThan(q8.maxLogitDifference, 0.1)
        XCTAssertNotEqual(q8.loss, q8.referenceLoss)
        XCTAssertLessThan(abs(q8.perplexity / q8.referencePerplexity - 1), 0.01, "Q8_0 costs well under 1%")
    }

    /// `--embedding-type`: a Q8_0 export with the token embedding and output matrix in F32 stores them as the
    /// merged model's own values (tiny-llama's bf16, widened exactly) and every projection in Q8_0.
    func testVocabularyMatricesKeepTheirOwnType() throws {
        let golden = try Shared.requireGolden()
        let weights = try LlamaWeights.open(path: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: weights.config)
        let path = makeTemporaryDirectory(self) + "/q8-f32-vocabulary.gguf"
        try LlamaGGUFExport.write(weights: weights, lora: lora, adapters: adapters, onto: .dequantized, type: .q8_0,
                                  embeddings: .f32, name: "tiny", tokenizerMetadata: [], to: path)
        let file = try GGUFFile(path: path)
        let original = try SafeTensorsArchive(directory: golden + "/tiny-llama")
        for (gguf, hf) in [("token_embd.weight", "model.embed_tokens.weight"), ("output.weight", "lm_head.weight")] {
            XCTAssertEqual(file.tensorInfo(named: gguf)?.type, .f32, gguf)
            XCTAssertTrue(sameBits(try file.tensor(named: gguf).floats(), try original.tensor(named: hf).floats()),
                          gguf)
        }
        for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"] {
            XCTAssertEqual(file.tensorInfo(named: name)?.type, .q8_0, name)
        }
        XCTAssertEqual(file.tensorInfo(named: "blk.0.attn_norm.weight")?.type, .f32)
    }

    /// The adapter alone in llama.cpp's LoRA layout: general.type adapter, adapter.type lora, adapter.lora.alpha,
    /// `blk.N.<proj>.weight.lora_a` with ggml dims [in, r] and `.lora_b` with [r, out] (so a.ne[1] == b.ne[0] and
    /// they match the base tensor's ne), A as peft's, B as peft's with the q/k rows in llama.cpp's order.
    func testAdapterFile() throws {
        let golden = try Shared.requireGolden()
        let config = try LlamaConfig(contentsOf: golden + "/tiny-llama")
        let (lora, adapters) = try PEFTAdapter.read(directory: golden + "/tiny-adapter", config: config)
        let path = makeTemporaryDirectory(self) + "/lora.gguf"
        let plan = try LlamaGGUFExport.writeAdapter(config: config, lora: lora, adapters: adapters, type: .f32,
                                                    name: "tiny-lora", to: path)
        XCTAssertEqual(plan.count, 28)
        let file = try GGUFFile(path: path)
        XCTAssertEqual(file.metadata["general.architecture"], .string("llama"))
        XCTAssertEqual(file.metadata["general.type"], .string("adapter"))
        XCTAssertEqual(file.metadata["adapter.type"], .string("lora"))
        XCTAssertEqual(file.metadata["adapter.lora.alpha"], .float32(16))
        let peft = try SafeTensorsFile(path: golden + "/tiny-adapter/adapter_model.safetensors")
        for l in 0..<config.layerCount {
            for proj in LlamaConfig.projectionNames {
                let base = LlamaGGUFExport.llamaCppName(PEFTAdapter.modulePath(layer: l, projection: proj)
                                                        + ".weight")!
                let (out, inF) = config.projectionShape(proj)!
                let a = try XCTUnwrap(file.tensorInfo(named: base + ".lora_a"), base)
                let b = try XCTUnwrap(file.tensorInfo(named: base + ".lora_b"), base)
                XCTAssertEqual(a.dimensions, [inF, 8], base)
                XCTAssertEqual(b.dimensions, [8, out], base)
                XCTAssertEqual(a.type, .f32)
                let prefix = "base_model.model." + PEFTAdapter.modulePath(layer: l, projection: proj)
                assertBitsEqual(try file.tensor(named: a.name).floats(),
                                try peft.tensor(named: prefix + ".lora_A.weight").floats(), a.name)
                var wantB = try peft.tensor(named: prefix + ".lora_B.weight").floats()
                if proj == "q_proj" || proj == "k_proj" {
                    let heads = proj == "q_proj" ? config.headCount : config.kvHeadCount
                    // Hugging Face row s·D/2 + i is llama.cpp row 2i + s, per head.
                    let d = out / heads
                    var permuted = wantB
                    for h in 0..<heads {
                        for i in 0..<(d / 2) {
                            for s in 0..<2 {
                                let to = (h * d + 2 * i + s) * 8, from = (h * d + s * d / 2 + i) * 8
                                for k in 0..<8 { permuted[to + k] = wantB[from + k] }
                            }
                        }
                    }
                    wantB = permuted
                }
                assertBitsEqual(try file.tensor(named: b.name).floats(), wantB, b.name)
            }
        }
        // Read back, the adapter is peft's exactly (F32), and base + it computes what base + the adapter does.
        let (alpha, readBack) = try LlamaGGUFExport.readAdapter(path: path, config: config)
        XCTAssertEqual(alpha, 16)
        XCTAssertEqual(readBack, adapters)
        let check = try LlamaGGUFExport.checkAdapter(
            exported: path, base: LlamaWeights.open(path: golden + "/tiny-llama"), lora: lora, adapters: adapters,
            sequences: [([1, 5, 9, 200, 17, 3], [1, 5, 9, 200, 17, 3])])
        XCTAssertEqual(check.maxLogitDifference, 0)
        XCTAssertEqual(check.loss, check.referenceLoss)
        // rsLoRA: llama.cpp scales by alpha / r, so the alpha written is alpha·√r.
        var rs = lora; rs.useRSLoRA = true
        let rsPath = makeTemporaryDirectory(self) + "/rs.gguf"
        try LlamaGGUFExport.writeAdapter(config: config, lora: rs, adapters: adapters, type: .f16, name: "rs",
                                         to: rsPath)
        let rsFile = try GGUFFile(path: rsPath)
        XCTAssertEqual(rsFile.metadata["adapter.lora.alpha"]?.float ?? 0, 16 * Double(8).squareRoot(), accuracy: 1e-4)
        XCTAssertEqual(rsFile.tensors.first?.type, .f16)
        XCTAssertThrowsError(try LlamaGGUFExport.writeAdapter(config: config, lora: lora, adapters: adapters,
                                                              type: .q8_0, name: "x", to: rsPath + "2"))
    }

    /// The real SmolLM2 tokenizer.json becomes a GGUF vocabulary whose tokenizer encodes the reference cases to the
    /// ids Hugging Face's tokenizers library gives (cases.jsonl).
    func testSmolLM2VocabularyRoundTrips() throws {
        let folder = Shared.root + "/golden/smollm2-tokenizer"
        guard FileSystem.isFile(folder + "/tokenizer.json") else { throw XCTSkip("no SmolLM2 tokenizer at \(folder)") }
        let vocabulary = try GGUFVocabulary(tokenizerJSONPath: folder + "/tokenizer.json", vocabularySize: 49152)
        XCTAssertEqual(vocabulary.pre, "gpt-2", "a ByteLevel pre-tokenizer with the GPT-2 pattern")
        XCTAssertEqual(vocabulary.tokens.count, 49152)
        let m = Dictionary(vocabulary.metadata, uniquingKeysWith: { a, _ in a })
        let fromGGUF = try Self.tokenizer(fromGGUF: m)
        let cases = String(decoding: try FileSystem.readBytes(folder + "/cases.jsonl"), as: UTF8.self)
        var count = 0
        for line in cases.split(separator: "\n").prefix(40) {
            let json = try JSONValue(parsing: String(line))
            let text = try XCTUnwrap(json["text"]?.stringValue)
            let ids = try XCTUnwrap(json["ids"]?.arrayValue).compactMap(\.intValue)
            XCTAssertEqual(fromGGUF.encode(text), ids, text)
            count += 1
        }
        XCTAssertGreaterThan(count, 5)
    }

    /// The other direction, as `merge` from a GGUF base writes it: SmolLM2's vocabulary in GGUF terms, written back
    /// as tokenizer.json + tokenizer_config.json, read by our tokenizer.json reader, encodes the reference cases to
    /// Hugging Face's ids; the special tokens and the pre-tokenizer come back as they went in.
    func testGGUFVocabularyWritesATokenizerJSON() throws {
        let folder = Shared.root + "/golden/smollm2-tokenizer"
        guard FileSystem.isFile(folder + "/tokenizer.json") else { throw XCTSkip("no SmolLM2 tokenizer at \(folder)") }
        let read = try GGUFVocabulary(tokenizerJSONPath: folder + "/tokenizer.json", vocabularySize: 49152)
        let vocabulary = try GGUFVocabulary(
            ggufModel: "gpt2", pre: read.pre, tokens: read.tokens, tokenTypes: read.tokenTypes, merges: read.merges,
            bosTokenId: read.bosTokenId, eosTokenId: read.eosTokenId, unknownTokenId: read.unknownTokenId,
            paddingTokenId: read.paddingTokenId, addBOS: read.addBOS, addEOS: read.addEOS)
        let out = NSTemporaryDirectory() + "qlora-tokenizer-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        try FileSystem.createDirectory(out)
        try AtomicFile.write(text: try vocabulary.tokenizerJSON().pythonText(), to: out + "/tokenizer.json")
        try AtomicFile.write(text: vocabulary.tokenizerConfig(chatTemplate: "{{ x }}", maxLength: 8192).pythonText(),
                             to: out + "/tokenizer_config.json")
        let again = try GGUFVocabulary(tokenizerJSONPath: out + "/tokenizer.json", vocabularySize: 49152)
        XCTAssertEqual(again, read)
        let tokenizer = try Tokenizer(tokenizerJSONPath: out + "/tokenizer.json")
        let cases = String(decoding: try FileSystem.readBytes(folder + "/cases.jsonl"), as: UTF8.self)
        var count = 0
        for line in cases.split(separator: "\n") {
            let json = try JSONValue(parsing: String(line))
            let text = try XCTUnwrap(json["text"]?.stringValue)
            XCTAssertEqual(tokenizer.encode(text), try XCTUnwrap(json["ids"]?.arrayValue).compactMap(\.intValue), text)
            count += 1
        }
        XCTAssertGreaterThan(count, 5)
        XCTAssertThrowsError(try GGUFVocabulary(
            ggufModel: "llama", pre: nil, tokens: ["a"], tokenTypes: nil, merges: nil, bosTokenId: nil,
            eosTokenId: nil, unknownTokenId: nil, paddingTokenId: nil, addBOS: true, addEOS: false)) { error in
            XCTAssertTrue("\(error)".contains("SentencePiece"), "\(error)")
        }
    }

    /// Names map both ways and the q/k permutation is the reader's inverse.
    func testNamesAndPermutation() {
        for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                     "model.layers.3.self_attn.k_proj.weight", "model.layers.0.self_attn.q_proj.bias",
                     "model.layers.11.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"] {
            let gguf = LlamaGGUFExport.llamaCppName(name)
            XCTAssertNotNil(gguf, name)
            XCTAssertEqual(gguf.flatMap(GGUFArchive.huggingFaceName), name)
        }
        XCTAssertNil(LlamaGGUFExport.llamaCppName("model.layers.0.self_attn.rotary_emb.inv_freq"))
        let rows = (0..<12).map(Float.init)
        // 2 heads of 6 rows: HF rows (0 1 2 | 3 4 5) interleave to (0 3 1 4 2 5).
        XCTAssertEqual(LlamaGGUFExport.permutedRows(rows, heads: 2, rowLength: 1),
                       [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11])
    }
}

extension BadSettingsTests {
    /// `qlora export` refuses to write inside the model folder or over its input, names the allowed types, and
    /// end to end writes a Q8_0 file with its tokenizer that checks itself (logits, loss, perplexity, Q8_0's cost).
    func testExportCommand() throws {
        let golden = try Shared.requireGolden()
        let model = golden + "/tiny-llama", adapter = golden + "/tiny-adapter"
        try expectError(["export", "--model", model, "--adapter", adapter, "--output", model + "/merged.gguf"],
                        ["--output", "inside the --model folder"])
        try expectError(["export", "--model", model, "--adapter", adapter, "--output", adapter + "/m.gguf"],
                        ["--output", "inside the --adapter folder \(adapter)"])
        try expectError(["export", "--model", model, "--output", "/tmp/x.gguf", "--type", "q4_k"],
                        ["--type q4_k", "f32, f16, bf16, q8_0"])
        try expectError(["export", "--model", model, "--output", "/tmp/x.gguf", "--format", "onnx"],
                        ["--format onnx", "gguf"])
        try expectError(["export", "--model", model, "--output", "/tmp/x.gguf", "--adapter-only"],
                        ["--adapter-only needs --adapter"])
        let dir = makeTemporaryDirectory(self)
        let folder = try GGUFExportTests.tinyLlamaWithTokenizer(self)
        let out = dir + "/tiny-q8_0.gguf"
        let data = dir + "/heldout.jsonl"
        try "{\"text\": \"the river rose slowly through the night\"}\n{\"text\": \"farmers moved the boats\"}\n"
            .write(toFile: data, atomically: true, encoding: .utf8)
        let (status, _, output) = try run(["export", "--format", "gguf", "--model", folder, "--adapter", adapter,
                                           "--output", out, "--type", "q8_0", "--onto", "original",
                                           "--check", "always", "--check-data", data])
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("on 2 sequences") && output.contains("heldout.jsonl"), output)
        XCTAssertTrue(output.contains("largest |Δ logit|") && output.contains("perplexity"), output)
        XCTAssertTrue(output.contains("Q8_0's cost: perplexity"), output)
        XCTAssertEqual(try GGUFFile(path: out).metadata["tokenizer.ggml.model"], .string("gpt2"))
        // Over its own input: a GGUF model exported onto itself is refused.
        try expectError(["export", "--model", out, "--output", out], ["--output", "the --model folder itself"])
    }
}
