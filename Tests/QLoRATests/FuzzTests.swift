import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Tokenizers
import Training
import XCTest
#if canImport(Glibc)
import Glibc
#endif

// A seeded, repeatable fuzz suite over every input the tool reads (issue 12, item 6).
//
// For each kind of input it starts from a valid file, applies a few hundred seeded mutations (bit flips, byte
// overwrites with 0x00/0xFF/0x7F/0x80, 8-byte length fields set to huge values, truncation, insertion, deletion and
// duplication of byte runs; for JSON and YAML also token-level mutations: numbers replaced with -1, 0, 1e30, 1e308,
// 9223372036854775807, NaN, ..., huge strings, duplicated and deleted keys, deep nesting) and calls the project's
// real loader in-process on each mutant. A mutant must load or throw: a trap kills the test process, which is the
// failure this suite exists to catch. Each kind prints one summary line (mutants, loaded, threw).
//
// Repeatable: the same seed gives the same mutants. `QLORA_FUZZ_MUTANTS` changes the count per kind (default 400),
// `QLORA_FUZZ_SEED` the seed, and `QLORA_FUZZ_VERBOSE=1` prints each mutant's number before it is loaded (so the
// last line before a crash names it; the mutant itself is left in the kind's temporary folder).
final class FuzzTests: XCTestCase {
    static let mutantCount: Int = ProcessInfo.processInfo.environment["QLORA_FUZZ_MUTANTS"].flatMap { Int($0) } ?? 400
    static let seed: UInt64 = ProcessInfo.processInfo.environment["QLORA_FUZZ_SEED"].flatMap { UInt64($0) } ?? 12_06
    static let verbose = ProcessInfo.processInfo.environment["QLORA_FUZZ_VERBOSE"] == "1"

    // MARK: - safetensors

    /// A small file with every dtype, a scalar and an empty tensor.
    static func safeTensorsBase(in dir: String) throws -> [UInt8] {
        var rng = TestRandom(seed: 3)
        let tensors: [(name: String, tensor: Tensor)] = [
            ("w.bf16", Tensor((0..<6).map { _ in rng.normal() }, shape: [2, 3], dtype: .bf16)),
            ("w.f16", Tensor((0..<4).map { _ in rng.normal() }, shape: [4, 1], dtype: .f16)),
            ("w.f32", Tensor((0..<5).map { _ in rng.normal() }, shape: [5])),
            ("s.f32", Tensor([2.5], shape: [])),
            ("e.f32", Tensor(zeros: [0, 3], dtype: .f32)),
            ("b.u8", Tensor(copying: [UInt8](arrayLiteral: 1, 2, 3), shape: [3], dtype: .u8)),
            ("i.i32", Tensor(copying: [Int32](arrayLiteral: 7, -7), shape: [2], dtype: .i32)),
            ("l.i64", Tensor(copying: [Int64](arrayLiteral: -1, 1 << 40), shape: [2], dtype: .i64)),
        ]
        let path = dir + "/base.safetensors"
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt"], to: path)
        return try FileSystem.readBytes(path)
    }

    /// Reads everything a safetensors file holds, as the loaders do.
    static func readAllTensors(_ path: String) throws {
        let file = try SafeTensorsFile(path: path)
        for name in file.names {
            let t = try file.tensor(named: name)
            _ = t.floats()
            if [.u8, .i32, .i64].contains(t.dtype) { _ = t.integers() }
        }
    }

    func testFuzzSafeTensors() throws {
        let dir = fuzzDirectory("safetensors")
        let base = try Self.safeTensorsBase(in: dir)
        let headerEnd = 8 + Int(base.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONValue(parsing: base[8..<headerEnd])
        let data = Array(base[headerEnd...])
        var fuzz = Fuzzer(seed: Self.seed &+ 1)
        var tally = Tally("safetensors")
        let path = dir + "/model.safetensors"
        for i in 0..<Self.mutantCount {
            let mutant: [UInt8]
            switch fuzz.below(3) {
            case 0: mutant = fuzz.mutateBytes(base, focus: 0..<headerEnd)
            case 1: mutant = Fuzzer.safeTensors(header: Array(fuzz.mutateTree(header).compactText().utf8), data: data)
            default: mutant = Fuzzer.safeTensors(header: fuzz.mutateText(Array(header.compactText().utf8)), data: data)
            }
            try writeMutant(mutant, to: path, kind: "safetensors", index: i)
            tally.run {
                try Self.readAllTensors(path)
                // The folder view as well: it indexes the names of the file.
                let archive = try SafeTensorsArchive(directory: dir)
                for name in archive.names { _ = try archive.tensor(named: name).floats() }
            }
        }
        tally.report()
    }

    // MARK: - bitsandbytes 4-bit checkpoint

    func testFuzzBnB4BitCheckpoint() throws {
        let source = try Shared.requireGolden() + "/tiny-llama-bnb-nf4"
        let dir = fuzzDirectory("bnb4bit")
        let base = try FileSystem.readBytes(source + "/model.safetensors")
        try FileSystem.copyFile(from: source + "/config.json", to: dir + "/config.json")
        let headerEnd = 8 + Int(base.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONValue(parsing: base[8..<headerEnd])
        let data = Array(base[headerEnd...])
        let file = try SafeTensorsFile(path: source + "/model.safetensors")
        let tensors = try file.names.map { (name: $0, tensor: try file.tensor(named: $0)) }
        let states = tensors.indices.filter { tensors[$0].name.contains(".quant_state.") }
        var fuzz = Fuzzer(seed: Self.seed &+ 2)
        var tally = Tally("bnb-4bit")
        let path = dir + "/model.safetensors"
        var modelsBuilt = 0
        for i in 0..<Self.mutantCount {
            switch fuzz.below(4) {
            case 0:
                try writeMutant(fuzz.mutateBytes(base, focus: 0..<headerEnd), to: path, kind: "bnb-4bit", index: i)
            case 1:
                try writeMutant(Fuzzer.safeTensors(header: Array(fuzz.mutateTree(header).compactText().utf8),
                    data: data),
                                to: path, kind: "bnb-4bit", index: i)
            case 2:
                // A quant_state's JSON, mutated as a tree or as text.
                var mutated = tensors
                let k = fuzz.pick(states)
                let json = try JSONValue(parsing: mutated[k].tensor.bytesArray())
                let text = fuzz.chance(0.5) ? Array(fuzz.mutateTree(json).pythonText().utf8)
                                            : fuzz.mutateText(Array(json.pythonText().utf8))
                mutated[k].tensor = Tensor(copying: text, shape: [text.count], dtype: .u8)
                try writeMutant(tensors: mutated, to: path, kind: "bnb-4bit", index: i)
            default:
                // One part of a weight replaced, resized, retyped or removed.
                var mutated = tensors
                let k = fuzz.below(mutated.count)
                let t = mutated[k].tensor
                switch fuzz.below(5) {
                case 0: mutated.remove(at: k)
                case 1: mutated[k].tensor = Tensor(zeros: [t.elementCount + fuzz.pick([1, -1, 7])].map { max(0, $0) },
                    dtype: t.dtype)
                case 2:
                    mutated[k].tensor = Tensor(zeros: t.shape, dtype: fuzz.pick([.f32, .f16, .bf16, .u8, .i32, .i64]))
                case 3: mutated[k].tensor = Tensor(zeros: [fuzz.pick([0, 1, 16, 255, 256, 257])], dtype: t.dtype)
                default: mutated[k].tensor = Tensor(copying: [UInt8](repeating: 0xFF, count: t.byteCount),
                    shape: [t.byteCount], dtype: .u8)
                }
                try writeMutant(tensors: mutated, to: path, kind: "bnb-4bit", index: i)
            }
            tally.run {
                let archive = try SafeTensorsArchive(directory: dir)
                var failure: Error?
                for name in archive.names where BnB4BitCheckpoint.isQuantized(name, in: archive) {
                    do {
                        let q = try BnB4BitCheckpoint.readWeight(name, from: archive)
                        _ = q.dequantizedFloat32()
                    } catch { failure = failure ?? error }
                }
                if let failure { throw failure }
                // Every few mutants that read, the whole model as the trainer builds it.
                if modelsBuilt < 40 {
                    modelsBuilt += 1
                    _ = try LlamaModel(weights: try LlamaWeights.open(path: dir))
                }
            }
        }
        tally.report()
    }

    // MARK: - GGUF

    /// A one-layer Llama GGUF with tensors of every dequantizable type and metadata of every value type.
    static func ggufBase() -> GGUFSpec {
        var rng = SeededGenerator(seed: 77)
        func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
        func small(_ n: Int) -> [UInt8] {
            // Finite half-precision values (0x3C00 ± a little), so F16/BF16 reads are ordinary numbers.
            (0..<n).flatMap { _ in [UInt8(truncatingIfNeeded: rng.next()), 0x3C] }
        }
        // Quantized blocks of random bytes with finite half-precision scales (bytes at `scales` of each block of
        // `size` set to 0x3C.. as in `small`): a non-finite scale is a damaged file, which the weights' reader refuses.
        func blocks(_ count: Int, size: Int, scales: [Int]) -> [UInt8] {
            var bytes = random(count * size)
            for b in 0..<count { for o in scales { bytes[b * size + o + 1] = 0x3C } }
            return bytes
        }
        var s = GGUFSpec()
        s.string("general.architecture", "llama")
        s.u32("general.alignment", 32)
        s.u32("llama.block_count", 1)
        s.u32("llama.context_length", 64)
        s.u32("llama.embedding_length", 32)
        s.u32("llama.feed_forward_length", 256)
        s.u32("llama.attention.head_count", 4)
        s.u32("llama.attention.head_count_kv", 2)
        s.f32("llama.rope.freq_base", 10000)
        s.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        s.u32("llama.vocab_size", 64)
        s.u32("llama.rope.dimension_count", 8)
        s.u32("tokenizer.ggml.bos_token_id", 1)
        s.u32("tokenizer.ggml.eos_token_id", 2)
        s.metadata.append(("general.file_type", 11, fuzzLE(Int64(-1))))
        s.metadata.append(("general.flag", 7, [1]))
        s.metadata.append(("general.scale", 12, fuzzLE((0.5 as Double).bitPattern)))
        s.metadata.append(("general.small", 1, [0xFE]))
        // An array of strings and a nested array of int32 arrays.
        let words = ["<unk>", "<s>", "</s>", "a", "b"]
        s.metadata.append(("tokenizer.ggml.tokens", 9,
            fuzzLE(UInt32(8)) + fuzzLE(UInt64(words.count)) + words.flatMap(fuzzString)))
        let inner = fuzzLE(UInt32(5)) + fuzzLE(UInt64(2)) + fuzzLE(Int32(3)) + fuzzLE(Int32(-4))
        s.metadata.append(("general.nested", 9, fuzzLE(UInt32(9)) + fuzzLE(UInt64(2)) + inner + inner))
        // (name, dimensions fastest first, ggml type, bytes)
        let h = 32, ff = 256, v = 64
        s.tensors = [
            .init(name: "token_embd.weight", dimensions: [h, v], type: 8,
                data: blocks(v, size: 34, scales: [0])),  // q8_0
            .init(name: "output_norm.weight", dimensions: [h], type: 0,
                data: (0..<h).flatMap { _ in fuzzLE(Float(1).bitPattern) }),
            .init(name: "output.weight", dimensions: [h, v], type: 2, data: blocks(v, size: 18, scales: [0])),  // q4_0
            .init(name: "blk.0.attn_norm.weight", dimensions: [h], type: 1, data: small(h)),  // f16
            .init(name: "blk.0.ffn_norm.weight", dimensions: [h], type: 30, data: small(h)),  // bf16
            .init(name: "blk.0.attn_q.weight", dimensions: [h, 32], type: 30, data: small(h * 32)),
            .init(name: "blk.0.attn_k.weight", dimensions: [h, 16], type: 3,
                data: blocks(16, size: 20, scales: [0, 2])),  // q4_1
            .init(name: "blk.0.attn_v.weight", dimensions: [h, 16], type: 1, data: small(h * 16)),
            .init(name: "blk.0.attn_output.weight", dimensions: [32, h], type: 8,
                data: blocks(h, size: 34, scales: [0])),
            .init(name: "blk.0.ffn_gate.weight", dimensions: [h, ff], type: 1, data: small(h * ff)),
            .init(name: "blk.0.ffn_up.weight", dimensions: [h, ff], type: 2, data: blocks(ff, size: 18, scales: [0])),
            .init(name: "blk.0.ffn_down.weight", dimensions: [ff, h], type: 12,
                data: blocks(h, size: 144, scales: [0, 2])),  // q4_K
            .init(name: "extra.q5k.weight", dimensions: [256, 1], type: 13,
                data: blocks(1, size: 176, scales: [0, 2])),  // q5_K
            .init(name: "extra.q6k.weight", dimensions: [256, 2], type: 14,
                data: blocks(2, size: 210, scales: [208])),  // q6_K
            .init(name: "extra.empty.weight", dimensions: [0, 3], type: 0, data: []),
            .init(name: "extra.iq2.weight", dimensions: [256], type: 16, data: random(66)),  // not dequantizable
        ]
        return s
    }

    static func readGGUF(_ path: String, buildModel: Bool) throws {
        let file = try GGUFFile(path: path)
        for info in file.tensors {
            do { _ = try file.tensor(named: info.name).floats() } catch let e as ModelFileError {
                // A type this reader cannot dequantize is an error it names; anything else is a real failure.
                guard case .invalidCheckpoint = e else { throw e }
            }
        }
        let archive = try GGUFArchive(file: file)
        for name in archive.names { _ = try archive.tensor(named: name).floats() }
        let config = try LlamaConfig(gguf: file)
        guard buildModel, let count = parameterCount(config), count <= 50_000_000 else { return }
        _ = try LlamaModel(weights: try LlamaWeights.open(path: path))
    }

    func testFuzzGGUF() throws {
        let dir = fuzzDirectory("gguf")
        let spec = Self.ggufBase()
        let (base, headerEnd) = spec.encoded()
        let path = dir + "/model.gguf"
        try writeMutant(base, to: path, kind: "gguf", index: -1)
        try Self.readGGUF(path, buildModel: true)  // the base itself is valid
        var fuzz = Fuzzer(seed: Self.seed &+ 3)
        var tally = Tally("gguf")
        var modelsBuilt = 0
        for i in 0..<Self.mutantCount {
            let mutant = fuzz.chance(0.5) ? fuzz.mutateBytes(base, focus: 0..<headerEnd)
                                          : fuzz.mutateGGUF(spec).encoded().bytes
            try writeMutant(mutant, to: path, kind: "gguf", index: i)
            let build = modelsBuilt < 40
            tally.run {
                try Self.readGGUF(path, buildModel: build)
                modelsBuilt += build ? 1 : 0
            }
        }
        tally.report()
    }

    // MARK: - config.json

    func testFuzzLlamaConfig() throws {
        let source = try Shared.requireGolden() + "/tiny-llama"
        let dir = fuzzDirectory("config")
        try FileManager.default.createSymbolicLink(atPath: dir + "/model.safetensors",
            withDestinationPath: source + "/model.safetensors")
        let text = try FileSystem.readBytes(source + "/config.json")
        let json = try JSONValue(parsing: text)
        let baseConfig = try LlamaConfig(contentsOf: source)
        var fuzz = Fuzzer(seed: Self.seed &+ 4)
        var tally = Tally("config.json")
        var sameAsBase = 0
        var built = 0
        for i in 0..<Self.mutantCount {
            let mutant = fuzz.chance(0.5) ? Array(fuzz.mutateTree(json).pythonText(indent: 2).utf8)
                                          : fuzz.mutateText(text)
            try writeMutant(mutant, to: dir + "/config.json", kind: "config.json", index: i)
            tally.run {
                let config = try LlamaConfig(contentsOf: dir)
                // Building the model costs a little: do it for configs that differ from the base, and a few that
                // do not, and never for one whose weights would not fit in memory.
                if config == baseConfig { sameAsBase += 1; if sameAsBase > 2 { return } }
                guard let count = parameterCount(config), count <= 50_000_000, built < 40 else { return }
                built += 1
                _ = try LlamaModel(weights: try LlamaWeights.open(path: dir))
            }
        }
        tally.report()
    }

    // MARK: - tokenizer.json

    /// A byte-level BPE tokenizer.json (the 384-token one GGUFExportTests builds), mutated and then loaded and
    /// used to encode and decode: no trap, and any error names the file.
    func testFuzzTokenizerJSON() throws {
        let source = try GGUFExportTests.tinyLlamaWithTokenizer(self) + "/tokenizer.json"
        let dir = fuzzDirectory("tokenizer")
        let text = try FileSystem.readBytes(source)
        let json = try JSONValue(parsing: text)
        var fuzz = Fuzzer(seed: Self.seed &+ 9)
        var tally = Tally("tokenizer.json")
        let path = dir + "/tokenizer.json"
        for i in 0..<Self.mutantCount {
            let mutant = fuzz.chance(0.5) ? Array(fuzz.mutateTree(json).pythonText(indent: 2).utf8)
                                          : fuzz.mutateText(text)
            try writeMutant(mutant, to: path, kind: "tokenizer.json", index: i)
            tally.run {
                do {
                    let tokenizer = try Tokenizer(tokenizerJSONPath: path)
                    for sample in ["hello world", "  tabs\tand\nnewlines", "ünïcödé 😀", ""] {
                        _ = tokenizer.decode(tokenizer.encode(sample))
                    }
                } catch {
                    XCTAssertTrue("\(error)".contains(path) || "\(error)".contains("tokenizer"), "\(error)")
                    throw error
                }
            }
        }
        tally.report()
    }

    // MARK: - PEFT adapter

    func testFuzzPEFTAdapter() throws {
        let golden = try Shared.requireGolden()
        let source = golden + "/tiny-adapter"
        let config = try LlamaConfig(contentsOf: golden + "/tiny-llama")
        let dir = fuzzDirectory("adapter")
        let configText = try FileSystem.readBytes(source + "/adapter_config.json")
        let configJSON = try JSONValue(parsing: configText)
        let weights = try FileSystem.readBytes(source + "/adapter_model.safetensors")
        let headerEnd = 8 + Int(weights.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
        let header = try JSONValue(parsing: weights[8..<headerEnd])
        let data = Array(weights[headerEnd...])
        var fuzz = Fuzzer(seed: Self.seed &+ 5)
        var tally = Tally("adapter")
        for i in 0..<Self.mutantCount {
            var mutantConfig = configText, mutantWeights = weights
            switch fuzz.below(5) {
            case 0: mutantConfig = Array(fuzz.mutateTree(configJSON).pythonText(indent: 2).utf8)
            case 1: mutantConfig = fuzz.mutateText(configText)
            case 2: mutantWeights = fuzz.mutateBytes(weights, focus: 0..<headerEnd)
            case 3: mutantWeights = Fuzzer.safeTensors(header: Array(fuzz.mutateTree(header).compactText().utf8),
                data: data)
            default: mutantWeights = Fuzzer.safeTensors(header: fuzz.mutateText(Array(header.compactText().utf8)),
                data: data)
            }
            try writeMutant(mutantConfig, to: dir + "/adapter_config.json", kind: "adapter", index: i)
            try writeMutant(mutantWeights, to: dir + "/adapter_model.safetensors", kind: "adapter", index: i)
            tally.run { _ = try PEFTAdapter.read(directory: dir, config: config) }
        }
        tally.report()
    }

    // MARK: - data JSONL

    /// A byte-level tokenizer (GPT-2's byte alphabet, no merges) over 3 special tokens and the 256 bytes.
    static func byteTokenizer() -> Tokenizer? {
        let printable = Array(33...126) + Array(161...172) + Array(174...255)
        var map = [Int](repeating: 0, count: 256)
        for b in printable { map[b] = b }
        var next = 256
        for b in 0..<256 where !printable.contains(b) { map[b] = next; next += 1 }
        let tokens = ["<unk>", "<s>", "</s>"] + (0..<256).map { String(Character(Unicode.Scalar(UInt32(map[$0]))!)) }
        let types = [3, 3, 3] + [Int](repeating: 1, count: 256)
        return try? Tokenizer(ggufModel: "gpt2", pre: "smollm", tokens: tokens, tokenTypes: types, scores: nil,
                              merges: [], bosTokenId: 1, eosTokenId: 2, unknownTokenId: 0, paddingTokenId: 2,
                              addBOS: true, addSpacePrefix: false)
    }

    func testFuzzDataJSONL() throws {
        let dir = fuzzDirectory("data")
        let tokenizer = Self.byteTokenizer()
        let chatTemplates = try ChatTemplateTests.names.map {
            try ChatTemplate(jinja: try ChatFixtures.template($0), bosToken: "<s>", eosToken: "</s>")
        }
        let pretokenized = """
            {"input_ids": [1, 5, 9, 3, 7], "labels": [-100, -100, 9, 3, 7]}
            {"input_ids": [1, 200, 201, 2], "labels": [-100, 200, 201, 2]}
            {"input_ids": [4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]}

            """
        let instructions = """
            {"instruction": "Say hi", "input": "", "output": "hi"}
            {"instruction": "Add", "input": "2 and 3", "output": "5"}
            {"prompt": "Q: x?", "completion": "A: y"}
            {"text": "plain text record"}
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
            {"text": "<s>h\\u00e9llo \\ud83d\\ude00 </s> \\u0000"}

            """
        let chats = """
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, \
            {"role": "assistant", "content": "Hello"}]}
            {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, \
            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"}, \
            {"from": "gpt", "value": "yo"}]}
            {"body": "a record read through textField"}

            """
        XCTAssertNotNil(tokenizer, "the byte-level test tokenizer")
        let bases = [Array(pretokenized.utf8), Array(instructions.utf8), Array(chats.utf8),
                     Array("[{\"input_ids\": [1, 2, 3]}, {\"prompt\": \"p\", \"completion\": \"c\"}]".utf8)]
        var fuzz = Fuzzer(seed: Self.seed &+ 6)
        var tally = Tally("data JSONL")
        let path = dir + "/train.jsonl"
        for i in 0..<Self.mutantCount {
            let base = fuzz.pick(bases)
            var mutant: [UInt8]
            if fuzz.chance(0.5) {
                // Tree mutation of one line.
                var lines = base.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
                let k = fuzz.below(max(1, lines.count - 1))
                if let json = try? JSONValue(parsing: lines[k]) {
                    lines[k] = Array(fuzz.mutateTree(json).compactText().utf8)
                }
                mutant = Array(lines.joined(separator: [0x0A]))
            } else {
                mutant = fuzz.mutateText(base)
            }
            try writeMutant(mutant, to: path, kind: "data JSONL", index: i)
            var options = DatasetOptions()
            options.maxSeqLength = fuzz.pick([512, 4, 2, 1])
            options.packing = fuzz.chance(0.3)
            options.trainOnInputs = fuzz.chance(0.3)
            if fuzz.chance(0.2) { options.promptField = "prompt"; options.completionField = "completion" }
            if fuzz.chance(0.2) { options.textField = "body" }
            if fuzz.chance(0.4) { options.chatTemplate = fuzz.pick(chatTemplates) }
            let useTokenizer = fuzz.chance(0.7) ? tokenizer : nil
            let vocabularySize = fuzz.pick([259, 259, 259, 10])
            tally.run {
                _ = try TextDataset.load(path: path, tokenizer: useTokenizer, vocabularySize: vocabularySize,
                    options: options)
            }
        }
        tally.report()
    }

    // MARK: - recipe YAML and JSON

    func testFuzzRecipe() throws {
        let dir = fuzzDirectory("recipe")
        let yaml = """
            model_name_or_path: ../models/tiny
            train_file: data/train.jsonl
            output_dir: out/run1
            per_device_train_batch_size: 4
            gradient_accumulation_steps: 2
            learning_rate: 2.0e-4
            num_train_epochs: 3
            max_steps: -1
            warmup_ratio: 0.03
            lr_scheduler_type: cosine
            bf16: true
            lora_r: 16
            lora_alpha: 32
            lora_dropout: 0.05
            target_modules: [q_proj, k_proj, v_proj, o_proj]
            bnb_4bit_quant_type: nf4
            max_seq_length: 512
            packing: false
            seed: 42
            report_to: none
            eval_strategy: steps
            eval_steps: 50
            save_strategy: epoch
            load_best_model_at_end: true
            metric_for_best_model: eval_loss
            early_stopping_patience: 3
            early_stopping_threshold: 0.01

            """
        let json = """
            {
              "model_name_or_path": "../models/tiny",
              "output_dir": "out/run2",
              "per_device_train_batch_size": 2,
              "learning_rate": 0.0001,
              "max_steps": 100,
              "lora_r": 8,
              "target_modules": "q_proj,v_proj",
              "use_rslora": false,
              "weight_decay": 0.0
            }

            """
        let jsonValue = try JSONValue(parsing: json)
        let bases: [(ext: String, bytes: [UInt8])] = [("yaml", Array(yaml.utf8)), ("json", Array(json.utf8))]
        var fuzz = Fuzzer(seed: Self.seed &+ 7)
        var tally = Tally("recipe")
        for i in 0..<Self.mutantCount {
            let base = fuzz.pick(bases)
            let mutant = base.ext == "json" && fuzz.chance(0.4)
                ? Array(fuzz.mutateTree(jsonValue).pythonText(indent: 2).utf8)
                : fuzz.mutateText(base.bytes, yaml: base.ext == "yaml")
            let path = dir + "/recipe." + base.ext
            try writeMutant(mutant, to: path, kind: "recipe", index: i)
            tally.run {
                let recipe = try TrainingRecipe(contentsOf: path)
                var failure: Error?
                func read(_ body: () throws -> Any?) { do { _ = try body() } catch { failure = failure ?? error } }
                for key in ["batch_size", "gradient_accumulation_steps", "max_steps", "r", "seed", "max_seq_length",
                            "eval_steps", "early_stopping_patience"] {
                    read { try recipe.int(key) }
                }
                for key in ["learning_rate", "warmup_ratio", "lora_alpha", "lora_dropout", "weight_decay",
                    "num_train_epochs", "early_stopping_threshold"] {
                    read { try recipe.double(key) }
                }
                for key in ["model", "data", "output_dir", "lr_scheduler_type", "bnb_4bit_quant_type", "eval_strategy",
                            "save_strategy", "metric_for_best_model"] {
                    read { try recipe.string(key) }
                }
                for key in ["bf16", "packing", "use_rslora", "load_best_model_at_end"] { read { try recipe.bool(key) } }
                read { try recipe.list("target_modules") }
                if let failure { throw failure }
            }
        }
        tally.report()
    }

    // MARK: - chat templates

    /// The fixture chat templates mutated as text, parsed, and rendered with a conversation and its prefixes.
    func testFuzzChatTemplates() throws {
        let bases = try ChatTemplateTests.names.map { Array(try ChatFixtures.template($0).utf8) }
        let chat = [ChatMessage(role: "system", content: "s"), ChatMessage(role: "user", content: "u"),
                    ChatMessage(role: "assistant", content: "a"), ChatMessage(role: "user", content: "v")]
        var fuzz = Fuzzer(seed: Self.seed &+ 8)
        var tally = Tally("chat templates")
        // An eighth of the count: each mutant renders its conversation several times (the prefix renders).
        for i in 0..<max(1, Self.mutantCount / 8) {
            let mutant = String(decoding: fuzz.mutateText(fuzz.pick(bases)), as: UTF8.self)
            if Self.verbose { print("chat template mutant \(i)") }
            tally.run {
                let template = try ChatTemplate(jinja: mutant, bosToken: "<s>", eosToken: "</s>")
                _ = try template.render(chat, addGenerationPrompt: true)
                _ = try template.segments(chat, rolesToTrain: ["user", "assistant"], trainOnEOS: .all)
            }
        }
        tally.report()
    }

    // MARK: - Regressions: minimized mutants that once trapped

    /// A header naming one tensor twice made `SafeTensorsArchive` trap building its name index
    /// (SafeTensorsArchive.swift:21, `Dictionary(uniqueKeysWithValues:)`: "Duplicate values for key").
    func testRegressionSafeTensorsDuplicateName() throws {
        let dir = fuzzDirectory("regression-st")
        let entry = #"{"dtype":"F32","shape":[0],"data_offsets":[0,0]}"#
        let header = Array(#"{"e.f32":\#(entry),"e.f32":\#(entry)}"#.utf8)
        try writeMutant(Fuzzer.safeTensors(header: header, data: []), to: dir + "/model.safetensors",
            kind: "regression", index: 0)
        assertThrows([dir + "/model.safetensors", "'e.f32' twice"]) { _ = try SafeTensorsArchive(directory: dir) }
        assertThrows(["'e.f32' twice"]) { _ = try SafeTensorsFile(path: dir + "/model.safetensors") }
    }

    /// A GGUF `llama.attention.head_count` of 2^63 - 1 overflowed `2 * heads` undoing the rotary permutation of q
    /// (GGUFArchive.swift:89, "arithmetic overflow").
    func testRegressionGGUFHugeHeadCount() throws {
        let dir = fuzzDirectory("regression-gguf")
        var spec = Self.ggufBase()
        let k = spec.metadata.firstIndex { $0.0 == "llama.attention.head_count" }!
        spec.metadata[k] = ("llama.attention.head_count", 10, fuzzLE(UInt64(Int64.max)))
        let path = dir + "/model.gguf"
        try writeMutant(spec.encoded().bytes, to: path, kind: "regression", index: 0)
        let archive = try GGUFArchive(path: path)
        assertThrows([path, "blk.0.attn_q.weight", "head_count"]) {
            _ = try archive.tensor(named: "model.layers.0.self_attn.q_proj.weight")
        }
    }

    /// A YAML mapping key that is a list or a mapping made Yams trap (Yams Constructor.swift:426, a force unwrap
    /// of `String.construct(from: key)`); the recipe reader now refuses it, naming the line.
    func testRegressionRecipeNonScalarKey() throws {
        let dir = fuzzDirectory("regression-recipe")
        for (n, text) in ["[a]: 1\n", "seed: 1\n? {b: 2}\n: 3\n", "{[x, y]: 1}\n",
            "lora_r: 8\nbad:\n  [q]: v\n"].enumerated() {
            let path = dir + "/r\(n).yaml"
            try writeMutant(Array(text.utf8), to: path, kind: "regression", index: n)
            assertThrows([path, "mapping key"]) { _ = try TrainingRecipe(contentsOf: path) }
        }
    }

    /// A plain YAML integer in base 60 (`1:30`) with eleven or more parts, or parts too large, overflowed inside Yams
    /// (Yams Constructor.swift:590-591, `baseAndValue.0 * 60`: "arithmetic overflow"); the recipe reader now refuses
    /// it, naming the line. Base-60 values that fit still read as integers, as YAML 1.1 says.
    func testRegressionRecipeSexagesimalOverflow() throws {
        let dir = fuzzDirectory("regression-sexagesimal")
        for (n, text) in ["seed: 1:0:0:0:0:0:0:0:0:0:0:0\n", "max_steps: 9223372036854775807:59\n",
                          "lora_r: 8\nsave_steps: -153722867280912930:7:0\n"].enumerated() {
            let path = dir + "/r\(n).yaml"
            try writeMutant(Array(text.utf8), to: path, kind: "regression", index: n)
            assertThrows([path, "line", "base-60"]) { _ = try TrainingRecipe(contentsOf: path) }
        }
        let path = dir + "/ok.yaml"
        try writeMutant(Array("seed: 1:30\n".utf8), to: path, kind: "regression", index: 9)
        XCTAssertEqual(try TrainingRecipe(contentsOf: path).int("seed"), 90)
    }

    // MARK: - Helpers

    /// The kind's temporary folder (left behind if the process dies, so the last mutant can be inspected).
    func fuzzDirectory(_ kind: String) -> String {
        let path = NSTemporaryDirectory() + "qlora-fuzz-\(kind)-\(getpid())"
        try? FileManager.default.removeItem(atPath: path)
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func writeMutant(_ bytes: [UInt8], to path: String, kind: String, index: Int) throws {
        if Self.verbose { print("fuzz \(kind): mutant \(index) → \(path) (\(bytes.count) bytes)") }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func writeMutant(tensors: [(name: String, tensor: Tensor)], to path: String, kind: String, index: Int) throws {
        if Self.verbose { print("fuzz \(kind): mutant \(index) → \(path) (\(tensors.count) tensors)") }
        try SafeTensorsWriter.write(tensors, metadata: ["format": "pt"], to: path)
    }
}

/// Elements of all weights `config` describes (embedding, lm_head and the seven projections of every layer), or nil
/// on overflow.
func parameterCount(_ config: LlamaConfig) -> Int? {
    var total = 0
    func add(_ a: Int, _ b: Int, times: Int = 1) -> Bool {
        let (p, o1) = a.multipliedReportingOverflow(by: b)
        let (q, o2) = p.multipliedReportingOverflow(by: times)
        let (s, o3) = total.addingReportingOverflow(q)
        total = s
        return !(o1 || o2 || o3)
    }
    guard add(config.vocabSize, config.hiddenSize, times: 2) else { return nil }
    for name in LlamaConfig.projectionNames {
        guard let (out, inF) = config.projectionShape(name), add(out, inF, times: config.layerCount) else { return nil }
    }
    return total
}

/// Counts what the mutants did.
struct Tally {
    let kind: String
    var mutants = 0, loaded = 0, threw = 0
    var errors: [String: Int] = [:]
    let startPeak = peakResidentBytes()

    init(_ kind: String) { self.kind = kind }

    mutating func run(_ body: () throws -> Void) {
        mutants += 1
        do {
            try body()
            loaded += 1
        } catch {
            threw += 1
            errors[String(describing: type(of: error)), default: 0] += 1
            if FuzzTests.verbose { print("fuzz \(kind): threw \(String(String(describing: error).prefix(300)))") }
        }
    }

    func report(file: StaticString = #filePath, line: UInt = #line) {
        let kinds = errors.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        let grown = max(0, peakResidentBytes() - startPeak)
        print("fuzz \(kind): \(mutants) mutants, \(loaded) loaded, \(threw) threw (\(kinds)); peak memory grew " +
            "\(grown >> 20) MiB")
        XCTAssertEqual(mutants, loaded + threw, file: file, line: line)
        XCTAssertLessThan(grown, 1 << 30, "\(kind): a mutant made the loader allocate more than 1 GiB", file: file,
            line: line)
    }
}

/// The process's peak resident set, in bytes.
func peakResidentBytes() -> Int {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return usage.ru_maxrss * 1024
}

func fuzzLE<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }
func fuzzString(_ s: String) -> [UInt8] { fuzzLE(UInt64(s.utf8.count)) + Array(s.utf8) }

/// A GGUF file described field by field, so that a mutation can change one field and keep the rest well formed.
struct GGUFSpec {
    struct TensorEntry {
        var name: String
        var dimensions: [Int]
        var type: UInt32
        var data: [UInt8]
        var dimensionCount: UInt32? = nil  // overrides the count written
        var rawDimensions: [UInt64]? = nil  // overrides the dimensions written
        var offset: UInt64? = nil  // overrides the packed offset
    }
    var version: UInt32 = 3
    var alignment = 32
    /// (key, value type tag, encoded value)
    var metadata: [(String, UInt32, [UInt8])] = []
    var tensors: [TensorEntry] = []
    var tensorCount: UInt64? = nil
    var metadataCount: UInt64? = nil

    mutating func u32(_ key: String, _ v: UInt32) { metadata.append((key, 4, fuzzLE(v))) }
    mutating func f32(_ key: String, _ v: Float) { metadata.append((key, 6, fuzzLE(v.bitPattern))) }
    mutating func string(_ key: String, _ v: String) { metadata.append((key, 8, fuzzString(v))) }

    func encoded() -> (bytes: [UInt8], headerEnd: Int) {
        func alignUp(_ x: Int) -> Int { (x + alignment - 1) / alignment * alignment }
        var out = Array("GGUF".utf8) + fuzzLE(version)
        out += fuzzLE(tensorCount ?? UInt64(tensors.count)) + fuzzLE(metadataCount ?? UInt64(metadata.count))
        for (key, type, value) in metadata { out += fuzzString(key) + fuzzLE(type) + value }
        var cursor = 0
        var placed: [(Int, [UInt8])] = []
        for t in tensors {
            let dims = t.rawDimensions ?? t.dimensions.map { UInt64($0) }
            out += fuzzString(t.name) + fuzzLE(t.dimensionCount ?? UInt32(dims.count))
            for d in dims { out += fuzzLE(d) }
            out += fuzzLE(t.type)
            out += fuzzLE(t.offset ?? UInt64(cursor))
            placed.append((cursor, t.data))
            cursor = alignUp(cursor + t.data.count)
        }
        let headerEnd = out.count
        let dataStart = alignUp(out.count)
        out += [UInt8](repeating: 0, count: dataStart - out.count)
        var data = [UInt8](repeating: 0, count: cursor)
        for (offset, bytes) in placed { data.replaceSubrange(offset..<(offset + bytes.count), with: bytes) }
        return (out + data, headerEnd)
    }
}

/// Seeded mutations of bytes, JSON trees, JSON/YAML text and GGUF fields.
struct Fuzzer {
    var rng: SeededGenerator

    init(seed: UInt64) { rng = SeededGenerator(seed: seed) }

    mutating func below(_ n: Int) -> Int { n <= 1 ? 0 : Int(rng.next() % UInt64(n)) }
    mutating func chance(_ p: Double) -> Bool { Double(rng.next() >> 11) / Double(1 << 53) < p }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    static let interestingBytes: [UInt8] = [0x00, 0xFF, 0x7F, 0x80]
    static let interestingU64: [UInt64] = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000,
                                           0xFFFF_FFFF, 1 << 32, 1 << 40, 1 << 53, 1 << 62, UInt64(Int64.max), 1 << 63,
                                           UInt64.max, UInt64.max - 7]

    /// A position in `0..<count`, inside `focus` four times in five.
    mutating func position(_ count: Int, focus: Range<Int>?) -> Int {
        if let focus, chance(0.8) {
            let lower = min(focus.lowerBound, count - 1), upper = min(focus.upperBound, count)
            if upper > lower { return lower + below(upper - lower) }
        }
        return below(count)
    }

    /// One to three byte-level mutations.
    mutating func mutateBytes(_ input: [UInt8], focus: Range<Int>? = nil) -> [UInt8] {
        var b = input
        for _ in 0..<(1 + below(3)) {
            guard !b.isEmpty else { b = [pick(Self.interestingBytes)]; continue }
            let p = position(b.count, focus: focus)
            switch below(8) {
            case 0: b[p] ^= 1 << UInt8(below(8))
            case 1: b[p] = pick(Self.interestingBytes)
            case 2:
                // A length or count field set to an interesting value (8 or 4 bytes, little-endian).
                let width = chance(0.6) ? 8 : 4
                let value = fuzzLE(pick(Self.interestingU64)).prefix(width)
                for (k, v) in value.enumerated() where p + k < b.count { b[p + k] = v }
            case 3: b = Array(b.prefix(p))
            case 4:
                let n = 1 + below(64)
                let run = chance(0.5) ? [UInt8](repeating: pick(Self.interestingBytes), count: n)
                                      : (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                b.insert(contentsOf: run, at: p)
            case 5: b.removeSubrange(p..<min(b.count, p + 1 + below(64)))
            case 6:
                let run = Array(b[p..<min(b.count, p + 1 + below(64))])
                b.insert(contentsOf: run, at: below(b.count + 1))
            default: b[p] = UInt8(truncatingIfNeeded: rng.next())
            }
        }
        return b
    }

    /// Number replacements, as text (some are not numbers at all, or not JSON).
    static let numberTokens = ["-1", "0", "1", "1e30", "1e308", "1e309", "-1e308", "9223372036854775807",
                               "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "NaN", "Infinity",
                               "-Infinity", "4294967296", "1099511627776", "0.5", "-0", "1e-400", "2.5e-324", "-100",
                               "255", "256", "65536", String(repeating: "9", count: 400), "0x10", "1_000", ".inf",
                                   ".nan",
                               "null", "true", "[]", "{}", "\"\"", "1:30", "1:0:0:0:0:0:0:0:0:0:0:0",
                               "9223372036854775807:59", "0x7FFFFFFFFFFFFFFF", "0o777", "0b101", "+12_345",
                                   "2001-12-14t21:59:43.10-05:00"]
    /// Text inserted at random places: structure characters, escapes and YAML's constructs.
    static let oddTokens = ["\\u", "\\ud800", "\\udc00\\ud800", "\u{0}", "\"", "{", "}", "[", "]", ",", ":", "-", "\\",
                            "\u{FEFF}", "\u{FFFF}", "\t", "\r", "\n", "&a ", "*a", "!!binary ",
                                "!!python/object:os.system ",
                            "<<: ", "---\n", "...\n", "? ", "|\n", ">-\n", "%YAML 1.2\n", "%TAG ! x\n", "!!set ", "~",
                            "!!float ", "!!int ", "!!map ", "!!seq ", "!!str ", "!!null ", "!!timestamp ", "'", "#"]

    /// One text-level mutation of JSON or YAML.
    mutating func mutateText(_ input: [UInt8], yaml: Bool = false) -> [UInt8] {
        var b = input
        let lines = b.indices.filter { b[$0] == 0x0A }
        switch below(9) {
        case 0, 1:
            // A number replaced.
            let numbers = Self.numberSpans(b)
            let replacement = Array((chance(0.1) ? "\"" + String(repeating: "x", count: 100_000) + "\""
                                                 : pick(Self.numberTokens)).utf8)
            if numbers.isEmpty { b.insert(contentsOf: replacement, at: below(b.count + 1)) } else {
                b.replaceSubrange(pick(numbers), with: replacement)
            }
        case 2, 3:
            // A line (a key, in these files) duplicated or deleted.
            guard !lines.isEmpty else { return mutateBytes(b) }
            let k = below(lines.count)
            let start = k == 0 ? 0 : lines[k - 1] + 1, end = lines[k] + 1
            let line = Array(b[start..<end])
            if below(2) == 0 {
                b.insert(contentsOf: line, at: chance(0.5) ? start : end)
            } else {
                b.removeSubrange(start..<end)
            }
        case 4:
            // Deep nesting.
            let depth = pick([50, 100, 600, 5_000, 100_000])
            let open = chance(0.5) ? "[" : (yaml ? "{a: " : "{\"a\":")
            let close = open == "[" ? "]" : "}"
            let nest = String(repeating: open, count: depth) + "1"
                + String(repeating: close, count: chance(0.8) ? depth : depth / 2)
            let value = Self.numberSpans(b)
            if value.isEmpty { b.insert(contentsOf: Array(nest.utf8), at: below(b.count + 1)) } else {
                b.replaceSubrange(pick(value), with: Array(nest.utf8))
            }
        case 5:
            // A string's content replaced by a huge one, an empty one or escapes.
            let quotes = b.indices.filter { b[$0] == UInt8(ascii: "\"") }
            let content = pick([String(repeating: "x", count: pick([10_000, 300_000])), "", "\\ud800", "\\u00",
                "\\\\\\",
                                String(repeating: "é", count: 1000), "a\\u0000b"])
            if quotes.count >= 2 {
                let k = below(quotes.count - 1)
                b.replaceSubrange((quotes[k] + 1)..<quotes[k + 1], with: Array(content.utf8))
            } else {
                b.insert(contentsOf: Array(content.utf8), at: below(b.count + 1))
            }
        case 6:
            let token = Array(pick(Self.oddTokens).utf8)
            let at = !lines.isEmpty && chance(0.5) ? lines[below(lines.count)] + 1 : below(b.count + 1)
            b.insert(contentsOf: token, at: min(at, b.count))
        case 7:
            // A whole value's line repeated many times (a long list or many keys).
            guard !lines.isEmpty else { return mutateBytes(b) }
            let k = below(lines.count)
            let start = k == 0 ? 0 : lines[k - 1] + 1, end = lines[k] + 1
            let line = Array(b[start..<end])
            b.insert(contentsOf: Array([[UInt8]](repeating: line, count: pick([2, 50, 2_000])).joined()), at: end)
        default:
            b = mutateBytes(b)
        }
        return b
    }

    /// Byte ranges of the numbers in a text.
    static func numberSpans(_ b: [UInt8]) -> [Range<Int>] {
        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }
        func isWord(_ c: UInt8) -> Bool {
            isDigit(c) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        }
        var spans: [Range<Int>] = []
        var i = 0
        while i < b.count {
            let startsNumber = isDigit(b[i]) || (b[i] == UInt8(ascii: "-") && i + 1 < b.count && isDigit(b[i + 1]))
            if startsNumber && (i == 0 || !isWord(b[i - 1])) {
                var j = i + 1
                while j < b.count, isDigit(b[j]) || [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"),
                                                     UInt8(ascii: "+"), UInt8(ascii: "-")].contains(b[j]) { j += 1 }
                spans.append(i..<j)
                i = j
            } else {
                i += 1
            }
        }
        return spans
    }

    // MARK: JSON trees

    mutating func interestingValue() -> JSONValue {
        func deep(_ depth: Int, array: Bool) -> JSONValue {
            var v = JSONValue.int(1)
            for _ in 0..<depth { v = array ? .array([v]) : .object([("a", v)]) }
            return v
        }
        switch below(31) {
        case 27:
            // A name another field of these files uses: dtypes, quant types, model and RoPE types, module names.
            return .string(pick(["F32", "F16", "BF16", "U8", "I32", "I64", "F64", "BOOL", "F8_E4M3", "float16",
                "bfloat16",
                                 "float32", "uint8", "nf4", "fp4", "llama", "qwen2", "mistral", "gpt2", "LORA", "none",
                                 "all-linear", "q_proj", "lm_head", "default", "linear", "llama3", "dynamic", "silu"]))
        case 28, 29: return .int(pick([2, 3, 7, 8, 16, 31, 32, 64, 128, 192, 255, 256, 384, 4096, 65536, 1 << 24]))
        case 30: return .double(pick([1e-5, 1e-300, 5e-324, 2.0, 1e15, 4097.0, 64.0]))
        case 0: return .int(-1)
        case 1: return .int(0)
        case 2: return .int(1)
        case 3: return .double(1e30)
        case 4: return .double(1e308)
        case 5: return .int(Int.max)
        case 6: return .int(Int.min)
        case 7: return .double(.nan)
        case 8: return .double(.infinity)
        case 9: return .double(-.infinity)
        case 10: return .double(0.5)
        case 11: return .double(-0.0)
        case 12: return .int(1 << 40)
        case 13: return .int(1 << 32)
        case 14: return .int(-100)
        case 15: return .string("")
        case 16: return .string(String(repeating: "x", count: 100_000))
        case 17: return .string("\u{FFFD}\u{0}x")
        case 18: return .null
        case 19: return .bool(true)
        case 20: return .array([])
        case 21: return .object([])
        case 22: return deep(100, array: chance(0.5))
        case 23: return deep(600, array: chance(0.5))
        case 24: return .array([.int(-1), .int(Int.max)])
        case 25: return .double(9.3e18)
        default: return .array([JSONValue](repeating: .int(1 << 20), count: 3))
        }
    }

    /// The tree with one node changed: replaced by an interesting value, or (objects and arrays) a member
    /// duplicated, deleted, replaced, or renamed.
    mutating func mutateTree(_ value: JSONValue) -> JSONValue {
        var counter = 0
        return rewrite(value, target: below(Self.nodeCount(value)), counter: &counter)
    }

    static func nodeCount(_ v: JSONValue) -> Int {
        switch v {
        case .array(let items): return 1 + items.reduce(0) { $0 + nodeCount($1) }
        case .object(let pairs): return 1 + pairs.reduce(0) { $0 + nodeCount($1.1) }
        default: return 1
        }
    }

    private mutating func rewrite(_ v: JSONValue, target: Int, counter: inout Int) -> JSONValue {
        let me = counter
        counter += 1
        if me == target { return mutateNode(v) }
        switch v {
        case .array(var items):
            for k in items.indices { items[k] = rewrite(items[k], target: target, counter: &counter) }
            return .array(items)
        case .object(var pairs):
            for k in pairs.indices { pairs[k].1 = rewrite(pairs[k].1, target: target, counter: &counter) }
            return .object(pairs)
        default:
            return v
        }
    }

    private mutating func mutateNode(_ v: JSONValue) -> JSONValue {
        switch v {
        case .object(var pairs) where !pairs.isEmpty && chance(0.6):
            let k = below(pairs.count)
            switch below(5) {
            case 0: pairs.insert(pairs[k], at: below(pairs.count + 1))  // a duplicate key
            case 1: pairs.remove(at: k)
            case 2: pairs[k].0 = pick(["", "__metadata__", pairs[k].0 + "x", String(repeating: "k", count: 10_000)])
            case 3: pairs.insert((pairs[k].0, interestingValue()), at: below(pairs.count + 1))  // duplicate, new value
            default: pairs[k].1 = interestingValue()
            }
            return .object(pairs)
        case .array(var items) where !items.isEmpty && chance(0.6):
            let k = below(items.count)
            switch below(4) {
            case 0: items.insert(items[k], at: below(items.count + 1))
            case 1: items.remove(at: k)
            case 2: items.reverse()
            default: items[k] = interestingValue()
            }
            return .array(items)
        default:
            return interestingValue()
        }
    }

    /// A safetensors file from a header text and a data section (the length field always right).
    static func safeTensors(header: [UInt8], data: [UInt8]) -> [UInt8] {
        fuzzLE(UInt64(header.count)) + header + data
    }

    // MARK: GGUF fields

    mutating func mutateGGUF(_ base: GGUFSpec) -> GGUFSpec {
        var s = base
        for _ in 0..<(1 + below(2)) {
            switch below(12) {
            case 0:
                s.tensorCount = pick(Self.interestingU64
                                     + [UInt64(s.tensors.count + 1), UInt64(max(0, s.tensors.count - 1))])
            case 1:
                s.metadataCount = pick(Self.interestingU64
                                       + [UInt64(s.metadata.count + 1), UInt64(max(0, s.metadata.count - 1))])
            case 2:
                let k = below(s.tensors.count)
                var dims = s.tensors[k].dimensions.map { UInt64($0) }
                dims[below(dims.count)] = pick(Self.interestingU64 + [32, 33, 64, 256, 512])
                s.tensors[k].rawDimensions = dims
            case 3:
                let k = below(s.tensors.count)
                s.tensors[k].dimensionCount = UInt32(truncatingIfNeeded: pick(Self.interestingU64 + [0, 3, 4, 5]))
            case 4: s.tensors[below(s.tensors.count)].type = UInt32(pick([0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 15,
                16, 20, 24, 28, 30, 31, 39, 1000, 0xFFFF_FFFF]))
            case 5: s.tensors[below(s.tensors.count)].offset = pick(Self.interestingU64 + [32, 64, 96, 1 << 20])
            case 6:
                let k = below(s.tensors.count)
                s.tensors.insert(s.tensors[k], at: below(s.tensors.count + 1))
            case 7: s.tensors.remove(at: below(s.tensors.count))
            case 8:
                // A metadata value retyped or reset to an interesting integer of its type.
                let k = below(s.metadata.count)
                let type = UInt32(pick([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 0xFFFF_FFFF]))
                s.metadata[k].1 = type
                s.metadata[k].2 = Array(fuzzLE(pick(Self.interestingU64)).prefix(pick([1, 2, 4, 8])))
            case 9:
                let k = below(s.metadata.count)
                s.metadata.insert(s.metadata[k], at: below(s.metadata.count + 1))
            case 10:
                // An important value set to something hostile.
                let keys = ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                    "llama.attention.head_count",
                            "llama.attention.head_count_kv", "llama.vocab_size", "llama.context_length",
                                "llama.rope.dimension_count",
                            "general.alignment", "tokenizer.ggml.bos_token_id"]
                let key = pick(keys)
                let value = pick([0, 1, 3, 7, 0x7FFF_FFFF, 0xFFFF_FFFF] as [UInt32])
                if let k = s.metadata.firstIndex(where: { $0.0 == key }) { s.metadata[k] = (key, 4, fuzzLE(value)) }
                if chance(0.3), let k = s.metadata.firstIndex(where: { $0.0 == key }) {
                    s.metadata[k] = (key, 10, fuzzLE(pick(Self.interestingU64)))
                }
            default:
                let k = below(s.metadata.count)
                s.metadata[k].2 = mutateBytes(s.metadata[k].2)
            }
        }
        return s
    }
}
