import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors
import Training
import XCTest

// Hostile files (issue 12): sizes, shapes, escapes and ids that used to trap (a Swift runtime trap, a failed
// allocation, a segfault) must be thrown errors naming the file and the field or tensor.

private func bytesLE<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

private func ggufString(_ s: String) -> [UInt8] { bytesLE(UInt64(s.utf8.count)) + Array(s.utf8) }

/// A GGUF file of `metadata` (each value already encoded with its type tag) and `tensors` (name, dimensions
/// fastest first, ggml type, offset), the data section empty.
private func ggufBytes(metadata: [(String, UInt32, [UInt8])],
                       tensors: [(String, [UInt64], UInt32, UInt64)] = []) -> [UInt8] {
    var out = Array("GGUF".utf8) + bytesLE(UInt32(3)) + bytesLE(UInt64(tensors.count)) + bytesLE(UInt64(metadata.count))
    for (key, type, value) in metadata { out += ggufString(key) + bytesLE(type) + value }
    for (name, dims, type, offset) in tensors {
        out += ggufString(name) + bytesLE(UInt32(dims.count)) + dims.flatMap { bytesLE($0) } + bytesLE(type)
            + bytesLE(offset)
    }
    return out
}

private func u32(_ key: String, _ v: UInt32) -> (String, UInt32, [UInt8]) { (key, 4, bytesLE(v)) }
private func i64(_ key: String, _ v: Int64) -> (String, UInt32, [UInt8]) { (key, 11, bytesLE(v)) }
private func u64(_ key: String, _ v: UInt64) -> (String, UInt32, [UInt8]) { (key, 10, bytesLE(v)) }
private func str(_ key: String, _ v: String) -> (String, UInt32, [UInt8]) { (key, 8, ggufString(v)) }

/// A safetensors file whose header is `header` (any text) followed by `data`.
private func safetensorsBytes(header: String, data: [UInt8] = []) -> [UInt8] {
    bytesLE(UInt64(header.utf8.count)) + Array(header.utf8) + data
}

private func write(_ bytes: [UInt8], to path: String) {
    XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)), path)
}

final class BadInputFileTests: XCTestCase {
    // MARK: 1. JSON

    func testJSONSurrogatesAndDeepNesting() throws {
        // Surrogates that are not a pair are accepted (as Python's json accepts them) and become U+FFFD.
        let cases: [(String, String)] = [
            (#""\ud800\u0041""#, "\u{FFFD}A"),
            (#""\ud800\ud800""#, "\u{FFFD}\u{FFFD}"),
            (#""\ud800\ud800\udc00""#, "\u{FFFD}\u{10000}"),
            (#""\udc00""#, "\u{FFFD}"),
            (#""x\ud800""#, "x\u{FFFD}"),
            (#""\ud800\n""#, "\u{FFFD}\n"),
            (#""\ud83d\ude00""#, "\u{1F600}"),
            (#""\u00e9\u20AC""#, "é€"),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(try JSONValue(parsing: text), .string(expected), text)
        }
        for bad in [#""\ud800\u00""#, #""\u+041""#, #""\u-041""#, #""\u12""#, #""\ud800\uzzzz""#] {
            XCTAssertThrowsError(try JSONValue(parsing: bad), bad) { XCTAssertTrue($0 is JSONParseError, "\($0)") }
        }
        // Deep nesting is an error at a fixed depth, not a stack overflow.
        for open in ["[", "{\"a\":"] {
            let deep = String(repeating: open, count: 100_000)
            XCTAssertThrowsError(try JSONValue(parsing: deep)) {
                XCTAssertTrue("\($0)".contains("nested deeper than 512"), "\($0)")
            }
        }
        let ok = String(repeating: "[", count: 500) + String(repeating: "]", count: 500)
        XCTAssertNoThrow(try JSONValue(parsing: ok))

        // In files: an adapter config and a model config nested 100,000 deep, a safetensors header with lone
        // surrogates in a tensor name.
        let dir = makeTemporaryDirectory(self)
        try AtomicFile.write(text: "{\"r\": " + String(repeating: "[", count: 100_000),
            to: dir + "/adapter_config.json")
        assertThrows([dir + "/adapter_config.json", "nested deeper"]) { _ = try PEFTAdapter.readConfig(directory: dir) }
        try AtomicFile.write(text: "{\"hidden_size\": " + String(repeating: "[", count: 100_000),
            to: dir + "/config.json")
        assertThrows([dir + "/config.json"]) { _ = try LlamaConfig(contentsOf: dir) }
        let st = dir + "/surrogate.safetensors"
        write(safetensorsBytes(header: #"{"\ud800\u0041":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                               data: [0, 0, 128, 63]), to: st)
        let file = try SafeTensorsFile(path: st)
        XCTAssertEqual(file.names, ["\u{FFFD}A"])
        XCTAssertEqual(try file.tensor(named: "\u{FFFD}A").floats(), [1])
    }

    // MARK: 2. Model config

    private let base = #""model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": "# +
        #"1, "num_attention_heads": 4, "vocab_size": 100"#

    func testConfigSizesAreValidatedWhileDecoding() throws {
        let dir = makeTemporaryDirectory(self)
        let path = dir + "/config.json"
        func check(_ extra: String, _ parts: [String], line: UInt = #line) throws {
            try AtomicFile.write(text: "{" + base + ", " + extra + "}", to: path)
            assertThrows([path] + parts, line: line) { _ = try LlamaConfig(contentsOf: dir) }
        }
        try check(#""max_position_embeddings": -1"#, ["max_position_embeddings", "-1"])
        try check(#""max_position_embeddings": 0"#, ["max_position_embeddings"])
        try check(#""max_position_embeddings": 1000000000000"#, ["max_position_embeddings", "1000000000000"])
        try check(#""max_position_embeddings": 10000000"#, ["max_position_embeddings", "4194304"])
        try check(#""head_dim": 7"#, ["head_dim", "even"])
        try check(#""head_dim": -2"#, ["head_dim"])
        try check(#""head_dim": 4611686018427387904"#, ["head_dim"])
        try check(#""num_key_value_heads": 3"#, ["num_key_value_heads"])
        try check(#""num_key_value_heads": 0"#, ["num_key_value_heads"])
        try check(#""rms_norm_eps": 0"#, ["rms_norm_eps"])
        try check(#""rope_theta": -1"#, ["rope_theta"])
        try check(#""rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": "# +
            #"1, "original_max_position_embeddings": 8192}"#,
                  ["low_freq_factor"])
        try check(#""rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": "# +
            #"4, "original_max_position_embeddings": -5}"#,
                  ["original_max_position_embeddings"])

        // Products: each size alone is allowed, their products overflow or exceed the bound.
        for (json, field) in [
            (#"{"hidden_size": 8388608, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": "# +
                #"4096, "vocab_size": 8388608}"#,
             "vocab_size × hidden_size"),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 8192, "# +
                #""num_key_value_heads": 1, "head_dim": 8192, "vocab_size": 100}"#,
             "num_attention_heads × head_dim"),
            (#"{"hidden_size": 64, "intermediate_size": 9223372036854775807, "num_hidden_layers": 1, "# +
                #""num_attention_heads": 4, "vocab_size": 100}"#,
             "intermediate_size"),
        ] {
            try AtomicFile.write(text: json, to: path)
            assertThrows([path, field]) { _ = try LlamaConfig(contentsOf: dir) }
        }

        // The largest context accepted builds a CPU model without RoPE tables for all of it, and it still trains.
        try AtomicFile.write(text: "{" + base + #", "max_position_embeddings": 4194304, "head_dim": 128}"#, to: path)
        let config = try LlamaConfig(contentsOf: dir)
        XCTAssertEqual(config.maxPositionEmbeddings, 1 << 22)
        let engine = tinyEngine(config)
        let r = try engine.loss(inputIds: [1, 2, 3, 4], labels: [1, 2, 3, 4], batch: 1, tokens: 4)
        XCTAssertEqual(r.tokenCount, 3)
        XCTAssertTrue(r.loss.isFinite)
    }

    func testGGUFContextLengthIsBounded() throws {
        let dir = makeTemporaryDirectory(self)
        let meta = [str("general.architecture", "llama"), u32("llama.embedding_length", 64),
                    u32("llama.feed_forward_length", 128), u32("llama.block_count", 1),
                    u32("llama.attention.head_count", 4), u32("llama.vocab_size", 100)]
        for (i, context) in [i64("llama.context_length", -1), i64("llama.context_length", 1_000_000_000_000),
                             u64("llama.context_length", UInt64.max)].enumerated() {
            let path = dir + "/c\(i).gguf"
            write(ggufBytes(metadata: meta + [context]), to: path)
            assertThrows([path, "context_length"]) { _ = try LlamaConfig(gguf: GGUFFile(path: path)) }
        }
        let path = dir + "/heads.gguf"
        write(ggufBytes(metadata: meta + [u32("llama.attention.head_count_kv", 3)]), to: path)
        assertThrows([path, "num_key_value_heads"]) { _ = try LlamaConfig(gguf: GGUFFile(path: path)) }
        let good = dir + "/good.gguf"
        write(ggufBytes(metadata: meta + [u32("llama.context_length", 4096)]), to: good)
        XCTAssertEqual(try LlamaConfig(gguf: GGUFFile(path: good)).maxPositionEmbeddings, 4096)
    }

    // MARK: 3. bitsandbytes 4-bit checkpoints

    func testBnB4BitQuantStateShapeAndBlocksize() throws {
        let name = "model.layers.0.mlp.up_proj.weight"
        let w = try Quantized4BitTensor(quantizing: Tensor((0..<256).map { Float($0) / 256 }, shape: [4, 64],
            dtype: .f32),
                                        type: .nf4, doubleQuant: true)
        func archive(_ edit: (inout [(String, JSONValue)]) -> Void) throws -> (SafeTensorsArchive, String) {
            let dir = makeTemporaryDirectory(self)
            var parts = BnB4BitCheckpoint.tensors(storing: w, as: name)
            let i = parts.firstIndex { $0.name.hasSuffix(".quant_state.bitsandbytes__nf4") }!
            var state = try JSONValue(parsing: parts[i].tensor.bytesArray()).objectValue!
            edit(&state)
            let json = Array(JSONValue.object(state).pythonText().utf8)
            parts[i] = (parts[i].name, Tensor(copying: json, shape: [json.count], dtype: .u8))
            try SafeTensorsWriter.write(parts, to: dir + "/model.safetensors")
            return (try SafeTensorsArchive(directory: dir), dir)
        }
        func set(_ key: String, _ value: JSONValue) -> (inout [(String, JSONValue)]) -> Void {
            { state in state.removeAll { $0.0 == key }; state.append((key, value)) }
        }
        let (good, _) = try archive { _ in }
        XCTAssertEqual(try BnB4BitCheckpoint.readWeight(name, from: good), w)
        for (edit, detail) in [
            (set("shape", .array([.int(1 << 40), .int(1 << 40)])), "more elements"),
            (set("shape", .array([.int(Int.max), .int(3)])), "more elements"),
            (set("shape", .array([.int(4), .int(128)])), "expected U8 with 256 bytes"),
            (set("shape", .array([.int(4), .string("64")])), "no valid shape"),
            (set("shape", .array([.int(-4), .int(-64)])), "no valid shape"),
            (set("blocksize", .int(48)), "blocksize 48"),
            (set("blocksize", .int(0)), "blocksize 0"),
            (set("blocksize", .int(1 << 62)), "blocksize"),
            (set("nested_blocksize", .int(Int.max)), "nested_blocksize"),
            (set("nested_blocksize", .int(-1)), "nested_blocksize"),
        ] {
            let (a, dir) = try archive(edit)
            assertThrows([dir, name, detail]) { _ = try BnB4BitCheckpoint.readWeight(name, from: a) }
        }
    }

    /// A sharded model's index listing a tensor twice was read as two tensors of that name (found by
    /// scripts/fuzz-cli.py): `quantize` failed only when writing its output. It is an error naming the index.
    func testShardIndexListingATensorTwiceIsAnError() throws {
        let dir = makeTemporaryDirectory(self)
        try SafeTensorsWriter.write([(name: "w", tensor: Tensor([1, 2], shape: [2]))],
                                    to: dir + "/model-00001-of-00001.safetensors")
        let index = dir + "/model.safetensors.index.json"
        try AtomicFile.write(text: #"{"weight_map": {"w": "model-00001-of-00001.safetensors", "#
                             + #""w": "model-00001-of-00001.safetensors"}}"#, to: index)
        assertThrows([index, "weight_map lists 'w' twice"]) { _ = try SafeTensorsArchive(directory: dir) }
        try AtomicFile.write(text: #"{"weight_map": {"w": "model-00001-of-00001.safetensors"}}"#, to: index)
        XCTAssertEqual(try SafeTensorsArchive(directory: dir).tensor(named: "w").floats(), [1, 2])
    }

    /// A config saying the output matrix is untied, over a file without lm_head.weight, used to run with the
    /// embedding in its place (another model, silently); it is refused, naming the tensor and the key.
    func testUntiedModelWithoutLMHeadIsRefused() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        let dir = makeTemporaryDirectory(self)
        let source = try SafeTensorsArchive(directory: golden)
        let kept = try source.names.filter { $0 != "lm_head.weight" }
            .map { (name: $0, tensor: try source.tensor(named: $0)) }
        try SafeTensorsWriter.write(kept, metadata: ["format": "pt"], to: dir + "/model.safetensors")
        try FileManager.default.copyItem(atPath: golden + "/config.json", toPath: dir + "/config.json")
        let weights = try LlamaWeights.open(path: dir)
        XCTAssertFalse(weights.config.tieWordEmbeddings)
        assertThrows(["lm_head.weight", "tie_word_embeddings false", dir]) { try weights.checkComplete() }
        assertThrows(["lm_head.weight", "tie_word_embeddings false"]) { _ = try weights.lmHead() }
        XCTAssertNotNil(try LlamaWeights.open(path: golden).lmHead())
    }

    /// A folder or a FIFO named model.safetensors (or its index) is reported as not a regular file, with its path;
    /// it read as "no model.safetensors in the folder". A shard that is a FIFO is refused the same way.
    func testAWeightsFileThatIsNotARegularFileIsNamedAsSuch() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        for (name, makeFIFO) in [("model.safetensors", false), ("model.safetensors", true),
                                 ("model.safetensors.index.json", true)] {
            let dir = makeTemporaryDirectory(self)
            try FileManager.default.copyItem(atPath: golden + "/config.json", toPath: dir + "/config.json")
            let path = dir + "/" + name
            if makeFIFO { XCTAssertEqual(mkfifo(path, 0o644), 0) } else {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            }
            let kind = makeFIFO ? "a FIFO (named pipe)" : "a folder"
            assertThrows([path + ": cannot open: not a regular file (\(kind))"]) {
                _ = try LlamaWeights.open(path: dir)
            }
        }
        let dir = makeTemporaryDirectory(self)
        let shard = dir + "/model-00001-of-00001.safetensors"
        try AtomicFile.write(text: #"{"weight_map": {"w": "model-00001-of-00001.safetensors"}}"#,
                             to: dir + "/model.safetensors.index.json")
        XCTAssertEqual(mkfifo(shard, 0o644), 0)
        assertThrows([shard + ": cannot open: not a regular file (a FIFO (named pipe))"]) {
            _ = try SafeTensorsArchive(directory: dir).tensor(named: "w")
        }
    }

    /// A tensor of the right size in another shape (an embedding stored flat as [V·C]) used to be reshaped and read;
    /// it is refused, naming the tensor, the shape expected and the shape found.
    func testATensorStoredFlatIsRefused() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        let dir = makeTemporaryDirectory(self)
        let source = try SafeTensorsArchive(directory: golden)
        let tensors = try source.names.map { name -> (name: String, tensor: Tensor) in
            let t = try source.tensor(named: name)
            return (name, name == "model.embed_tokens.weight" ? t.reshaped([t.elementCount]) : t)
        }
        try SafeTensorsWriter.write(tensors, to: dir + "/model.safetensors")
        try FileManager.default.copyItem(atPath: golden + "/config.json", toPath: dir + "/config.json")
        let weights = try LlamaWeights.open(path: dir)
        assertThrows([dir, "tensor 'model.embed_tokens.weight'", "is BF16 [73728]",
                      "expected a float tensor of shape [384, 192]"]) {
            _ = try weights.embedding()
        }
        assertThrows(["model.embed_tokens.weight", "[73728]", "[384, 192]"]) {
            _ = try LlamaModel.load(directory: dir, lora: LoRAConfig(), seed: 0)
        }
    }

    /// attention_bias (or mlp_bias) true over a file without the biases used to run without them; the first missing
    /// bias is named, with the key that asks for it. qwen2 asks for q/k/v biases by default.
    func testABiasTheConfigPromisesMustBeInTheFile() throws {
        let golden = try Shared.requireGolden() + "/tiny-llama"
        let dir = makeTemporaryDirectory(self)
        try FileManager.default.createSymbolicLink(atPath: dir + "/model.safetensors",
                                                   withDestinationPath: golden + "/model.safetensors")
        var config = try JSONValue(parsing: FileSystem.readBytes(golden + "/config.json"))
        let cases: [(key: String, projection: String, tensor: String)] = [
            ("attention_bias", "q_proj", "model.layers.0.self_attn.q_proj.bias"),
            ("mlp_bias", "gate_proj", "model.layers.0.mlp.gate_proj.bias"),
        ]
        for (key, projection, tensor) in cases {
            var edited = config
            edited.set(key, .bool(true))
            let words = key + " true: the projection needs its bias"
            try AtomicFile.write(text: edited.pythonText(indent: 2), to: dir + "/config.json")
            let weights = try LlamaWeights.open(path: dir)
            assertThrows([dir, "tensor '\(tensor)'", "is missing", words]) { try weights.checkComplete() }
            assertThrows([tensor, "is missing", words]) { _ = try weights.bias(layer: 0, projection) }
        }
        config.set("model_type", .string("qwen2"))
        config.set("attention_bias", .null)
        try AtomicFile.write(text: config.pythonText(indent: 2), to: dir + "/config.json")
        assertThrows(["model.layers.0.self_attn.q_proj.bias", "attention_bias true (qwen2's default when absent)"]) {
            try LlamaWeights.open(path: dir).checkComplete()
        }
        XCTAssertNoThrow(try LlamaWeights.open(path: golden).checkComplete())
        XCTAssertNil(try LlamaWeights.open(path: golden).bias(layer: 0, "q_proj"))
    }

    // MARK: 4. peft adapters

    /// An adapter saved as a PyTorch pickle (adapter_model.bin) was reported as a missing adapter_model.safetensors;
    /// the error names the .bin file, says pickles are not read, and how to save one that is. A folder by the
    /// safetensors name is named as not a regular file.
    func testAPickleAdapterIsNamedAsUnsupported() throws {
        let dir = makeTemporaryDirectory(self)
        try AtomicFile.write(text: #"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}"#,
                             to: dir + "/adapter_config.json")
        write([0x80, 0x02, 0x7D, 0x71, 0x00], to: dir + "/adapter_model.bin")
        let config = try LlamaConfig(contentsOf: try Shared.requireGolden() + "/tiny-llama")
        assertThrows([dir + "/adapter_model.bin: ", "PyTorch pickle (.bin) adapter", "not supported",
                      "safe_serialization=True", "save_pretrained"]) {
            _ = try PEFTAdapter.read(directory: dir, config: config)
        }
        let safetensors = dir + "/adapter_model.safetensors"
        try FileManager.default.createDirectory(atPath: safetensors, withIntermediateDirectories: false)
        assertThrows([safetensors + ": cannot open: not a regular file (a folder)"]) {
            _ = try PEFTAdapter.read(directory: dir, config: config)
        }
    }

    func testPEFTAdapterRankAndShapes() throws {
        let dir = makeTemporaryDirectory(self)
        let config = dir + "/adapter_config.json"
        for r in ["1000000000000", "65537", "0", "-3"] {
            try AtomicFile.write(text: #"{"peft_type": "LORA", "r": "# + r + #", "target_modules": ["q_proj"]}"#,
                to: config)
            assertThrows([config, "\"r\""]) { _ = try PEFTAdapter.readConfig(directory: dir) }
        }
        try AtomicFile.write(text: #"{"r": 8, "lora_dropout": 1.5}"#, to: config)
        assertThrows([config, "lora_dropout"]) { _ = try PEFTAdapter.readConfig(directory: dir) }

        // A rank the config allows but that makes an impossible matrix for this model: an error before any read.
        try SafeTensorsWriter.write([], to: dir + "/adapter_model.safetensors")
        assertThrows([dir + "/adapter_model.safetensors", "lora_A", "rank"]) {
            _ = try PEFTAdapter.readWeights(directory: dir, r: 1 << 16,
                                            shapes: ["0.q_proj": (outFeatures: 64, inFeatures: 1 << 24)])
        }
        assertThrows([dir + "/adapter_model.safetensors", "lora_B"]) {
            _ = try PEFTAdapter.readWeights(directory: dir, r: 1 << 16,
                                            shapes: ["0.q_proj": (outFeatures: Int.max, inFeatures: 1)])
        }

        // An adapter tensor whose shape product overflows.
        let key = PEFTAdapter.key(layer: 0, projection: "q_proj", matrix: "A")
        let file = dir + "/adapter_model.safetensors"
        write(safetensorsBytes(header: #"{""# + key
                                   + #"":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#),
              to: file)
        assertThrows([file, key, "shape"]) {
            _ = try PEFTAdapter.readWeights(directory: dir, r: 8,
                                            shapes: ["0.q_proj": (outFeatures: 64, inFeatures: 64)])
        }
    }

    /// peft settings that change what the same tensors compute were read as absent (found by scripts/fuzz-cli.py):
    /// `"alpha_pattern": {"q_proj": 64}` merged and generated q_proj with alpha 16's scale without a word. Each is an
    /// error naming the key and its value; null or empty, as peft writes them when unused, is accepted.
    func testPEFTSettingsThatChangeTheAdapterAreRefused() throws {
        let dir = makeTemporaryDirectory(self)
        let config = dir + "/adapter_config.json"
        let refused = [#""alpha_pattern": {"q_proj": 64}"#, #""rank_pattern": {"v_proj": 4}"#,
                       #""layers_to_transform": [0]"#, #""layers_to_transform": 1"#, #""exclude_modules": "q_proj""#,
                       #""modules_to_save": ["lm_head"]"#, #""trainable_token_indices": [5]"#,
                       #""target_parameters": ["experts"]"#]
        for setting in refused {
            try AtomicFile.write(text: #"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "# + setting + "}",
                                 to: config)
            let key = String(setting.dropFirst().prefix { $0 != "\"" })
            assertThrows([config, "\"\(key)\" is ", "must be null or empty"]) {
                _ = try PEFTAdapter.readConfig(directory: dir)
            }
        }
        try AtomicFile.write(text: #"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "alpha_pattern": {}, "#
                             + #""rank_pattern": {}, "layers_to_transform": null, "exclude_modules": null, "#
                             + #""modules_to_save": null, "trainable_token_indices": null}"#, to: config)
        XCTAssertEqual(try PEFTAdapter.readConfig(directory: dir).alpha, 16)
    }

    // MARK: 5. Ids and labels against the vocabulary

    /// A CPU engine over a model of `config` with no decoder layers (embedding, final norm and lm_head only).
    private func tinyEngine(_ config: LlamaConfig) -> CPUTrainingEngine {
        var rng = TestRandom(seed: 5)
        let c = config.hiddenSize, v = config.vocabSize
        let embedding = (0..<(v * c)).map { _ in rng.uniform() }
        let model = LlamaModel(config: config, embedding: embedding, layers: [],
                               finalNorm: [Float](repeating: 1, count: c),
                               lmHead: embedding, lora: LoRAConfig())
        return CPUTrainingEngine(model: model, optimizer: AdamW(kind: .adamw))
    }

    func testLabelsAndIdsOutsideTheVocabularyAreErrors() throws {
        let config = try JSONDecoder().decode(LlamaConfig.self, from: Data(("{" + base + "}").utf8))
        let engine = tinyEngine(config)
        let ids = [1, 2, 3, 4]
        var rng = SeededGenerator(seed: 1)
        XCTAssertEqual(try engine.loss(inputIds: ids, labels: [-100, 2, -100, 99], batch: 1, tokens: 4).tokenCount, 2)
        for bad in [100, 1_000_000_000, -5, -1, -101, Int.min, Int.max] {
            let labels = [1, 2, bad, 4]
            assertThrows(["label \(bad)", "position 2"]) {
                _ = try engine.loss(inputIds: ids, labels: labels, batch: 1, tokens: 4)
            }
            assertThrows(["label \(bad)"]) {
                _ = try engine.accumulateGradients(inputIds: ids, labels: labels, batch: 2, tokens: 2, rng: &rng,
                                                   checkpointing: false, gradientScale: 1)
            }
        }
        for bad in [100, -1, 1_000_000_000] {
            assertThrows(["input id \(bad)"]) {
                _ = try engine.loss(inputIds: [1, bad], labels: [1, 2], batch: 1, tokens: 2)
            }
        }
        assertThrows(["3 input ids"]) {
            _ = try engine.loss(inputIds: [1, 2, 3], labels: [1, 2, 3, 4], batch: 2, tokens: 2)
        }
        assertThrows(["max_position_embeddings"]) {
            _ = try engine.loss(inputIds: [Int](repeating: 1, count: 4096), labels: [Int](repeating: 1, count: 4096),
                batch: 1, tokens: 4096)
        }
        assertThrows(["empty"]) { _ = try engine.loss(inputIds: [], labels: [], batch: 0, tokens: 0) }
    }

    func testPreTokenizedDataOutsideTheVocabularyIsRejectedOnLoad() throws {
        let dir = makeTemporaryDirectory(self)
        let path = dir + "/data.jsonl"
        let good = #"{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}"#
        for (record, detail) in [(#"{"input_ids": [1, 2, 3], "labels": [-100, 2, 10]}"#, "label 10"),
                                 (#"{"input_ids": [1, 2, 3], "labels": [-100, 2, 1000000000]}"#, "label 1000000000"),
                                 (#"{"input_ids": [1, 2, 3], "labels": [-100, 2, -5]}"#, "label -5"),
                                 (#"{"input_ids": [1, 10, 3]}"#, "token id 10"),
                                 (#"{"input_ids": [1, -1, 3], "labels": [-100, 2, 3]}"#, "token id -1")] {
            try AtomicFile.write(text: good + "\n" + record + "\n", to: path)
            assertThrows([path + ":2", detail]) {
                _ = try TextDataset.load(path: path, tokenizer: nil, vocabularySize: 10, options: DatasetOptions())
            }
        }
        try AtomicFile.write(text: good + "\n", to: path)
        XCTAssertEqual(try TextDataset.load(path: path, tokenizer: nil, vocabularySize: 10,
            options: DatasetOptions()).count, 1)
        var options = DatasetOptions()
        options.packing = true; options.maxSeqLength = 0
        assertThrows([path, "sequence length"]) { _ = try TextDataset.load(path: path, tokenizer: nil,
            vocabularySize: 10, options: options) }
    }

    // MARK: 6. safetensors and GGUF headers

    func testHostileSafeTensorsAndGGUFHeaders() throws {
        let dir = makeTemporaryDirectory(self)
        let st = dir + "/bad.safetensors"
        for (header, parts) in [
            (#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,16]}}"#, ["'w'",
                "shape"]),
            (#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, ["'w'", "shape"]),
            (#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[9007199254740000,9007199254740004]}}"#, ["'w'",
                "data_offsets"]),
            (#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, ["'w'", "data_offsets"]),
            (#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,1e300]}}"#, ["'w'", "data_offsets"]),
            (#"{"w":{"dtype":"F32","shape":[1e300],"data_offsets":[0,4]}}"#, ["'w'", "shape"]),
            (#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, ["'w'", "needs 8 bytes"]),
        ] {
            write(safetensorsBytes(header: header, data: [0, 0, 0, 0]), to: st)
            assertThrows([st] + parts) { _ = try SafeTensorsFile(path: st) }
        }
        // A header length near UInt64.max.
        write(bytesLE(UInt64.max) + [0x7B, 0x7D], to: st)
        assertThrows([st, "header claims"]) { _ = try SafeTensorsFile(path: st) }

        // GGUF: an alignment so large the padding arithmetic would overflow (an empty tensor then pointed past the
        // end of the file), dimensions whose product overflows, an offset far past the file.
        let gguf = dir + "/bad.gguf"
        for (meta, tensors, parts) in [
            ([u64("general.alignment", 1 << 62)], [("t", [UInt64(0)], UInt32(0), UInt64(0))], ["general.alignment"]),
            ([u64("general.alignment", 3)], [], ["general.alignment"]),
            ([], [("t", [UInt64(1) << 32, UInt64(1) << 32], UInt32(0), UInt64(0))], ["'t'", "impossibly large shape"]),
            ([], [("t", [UInt64.max], UInt32(0), UInt64(0))], ["'t'", "impossibly large shape"]),
            ([], [("t", [UInt64(4)], UInt32(0), UInt64.max & ~31)], ["'t'", "data offset"]),
            ([], [("t", [UInt64(4)], UInt32(0), UInt64(1) << 40)], ["'t'"]),
            ([], [("t", [UInt64(1) << 50], UInt32(0), UInt64(0))], ["'t'"]),
        ] as [([(String, UInt32, [UInt8])], [(String, [UInt64], UInt32, UInt64)], [String])] {
            write(ggufBytes(metadata: meta, tensors: tensors), to: gguf)
            assertThrows([gguf] + parts) {
                let file = try GGUFFile(path: gguf)
                for name in file.names { _ = try file.tensor(named: name) }
            }
        }
        // The empty tensor at the normal alignment reads as an empty tensor.
        write(ggufBytes(metadata: [], tensors: [("t", [0], 0, 0)]), to: gguf)
        XCTAssertEqual(try GGUFFile(path: gguf).tensor(named: "t").elementCount, 0)
    }
}
