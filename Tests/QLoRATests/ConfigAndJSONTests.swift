import Foundation
import Llama
import ModelFiles
import XCTest

final class LlamaConfigTests: XCTestCase {
    private func decode(_ json: String) throws -> LlamaConfig {
        let dir = makeTemporaryDirectory(self)
        try AtomicFile.write(text: json, to: dir + "/config.json")
        return try LlamaConfig(contentsOf: dir)
    }

    func testTinyLlama() throws {
        let c = try LlamaConfig(contentsOf: try Shared.requireGolden() + "/tiny-llama")
        XCTAssertEqual(c.hiddenSize, 192)
        XCTAssertEqual(c.headCount, 6)
        XCTAssertEqual(c.kvHeadCount, 2)
        XCTAssertEqual(c.headDim, 32)
        XCTAssertEqual(c.intermediateSize, 512)
        XCTAssertEqual(c.vocabSize, 384)
        XCTAssertEqual(c.layerCount, 2)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertFalse(c.tieWordEmbeddings)
        XCTAssertEqual(c.eosTokenIds, [2])
        XCTAssertEqual(c.projectionShape("k_proj")?.outFeatures, 64)
    }

    func testFamiliesAndDefaults() throws {
        let llama3 = try decode(#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "eos_token_id": [128001, 128008, 128009], "tie_word_embeddings": false}"#)
        XCTAssertEqual(llama3.headDim, 128)
        XCTAssertEqual(llama3.ropeTheta, 500000)
        XCTAssertEqual(llama3.ropeScaling?.ropeType, "llama3")
        XCTAssertEqual(llama3.ropeScaling?.originalMaxPositionEmbeddings, 8192)
        XCTAssertEqual(llama3.eosTokenIds, [128001, 128008, 128009])
        let qwen = try decode(#"{"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": true, "rope_theta": 1000000.0}"#)
        XCTAssertTrue(qwen.attentionBias, "Qwen2 has q/k/v biases")
        XCTAssertTrue(qwen.tieWordEmbeddings)
        let mistral = try decode(#"{"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 100, "sliding_window": 4096}"#)
        XCTAssertEqual(mistral.kvHeadCount, 4, "defaults to the query head count")
        XCTAssertEqual(mistral.ropeTheta, 10000)
    }

    func testInvalidConfigsNameTheProblem() throws {
        let cases: [(String, String)] = [
            (#"{"model_type": "gpt2", "hidden_size": 64}"#, "model_type \"gpt2\" is not supported"),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4}"#, "missing \"vocab_size\""),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 6, "num_key_value_heads": 4, "vocab_size": 10}"#, "not a multiple of num_key_value_heads"),
            (#"{"hidden_size": "big", "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10}"#, "\"hidden_size\" has the wrong type"),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 0, "num_attention_heads": 4, "vocab_size": 10}"#, "\"num_hidden_layers\" must be positive"),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "hidden_act": "gelu"}"#, "hidden_act \"gelu\""),
            (#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}"#, "RoPE type \"yarn\""),
        ]
        for (json, message) in cases {
            XCTAssertThrowsError(try decode(json), json) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error) should say \(message)")
                XCTAssertTrue("\(error)".contains("config.json"), "\(error) should name the file")
            }
        }
    }

    /// A syntax error names where parsing stopped (byte, line and column), and a value of the wrong kind names the
    /// key, the kind wanted and the value found (192.5 for hidden_size read as "not valid JSON").
    func testConfigErrorsNameTheKeyAndThePlace() throws {
        let sizes = #""intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 10"#
        let cases: [(String, [String])] = [
            ("{\n  \"hidden_size\": 64,\n  \"vocab_size\" 10\n}",
             ["not valid JSON", "invalid JSON at byte 38 (line 3, column 16): expected ':'"]),
            ("{\"hidden_size\": 192.5, " + sizes + "}",
             ["\"hidden_size\" has the wrong type: expected an integer, found 192.5"]),
            ("{\"hidden_size\": 1e30, " + sizes + "}",
             ["\"hidden_size\" has the wrong type: expected an integer, found 1e+30"]),
            ("{\"hidden_size\": \"big\", " + sizes + "}",
             ["\"hidden_size\" has the wrong type: expected an integer, found the string \"big\""]),
            ("{\"hidden_size\": 64, " + sizes + ", \"rms_norm_eps\": [1]}",
             ["\"rms_norm_eps\" has the wrong type: expected a number, found an array [1]"]),
            ("{\"hidden_size\": 64, " + sizes + ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
                + "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192.5}}",
             ["\"rope_scaling.original_max_position_embeddings\" has the wrong type: expected an integer, "
                + "found 8192.5"]),
        ]
        for (json, messages) in cases {
            XCTAssertThrowsError(try decode(json), json) { error in
                XCTAssertTrue("\(error)".contains("config.json: "), "\(error) should name the file")
                for message in messages {
                    XCTAssertTrue("\(error)".contains(message), "\(error) should say \(message)")
                }
                XCTAssertFalse("\(error)".contains("The given data"), "\(error)")
            }
        }
    }
}

final class JSONValueTests: XCTestCase {
    func testPythonRepr() {
        // What Python's repr prints for these doubles.
        let cases: [(Double, String)] = [
            (0.052082620561122894, "0.052082620561122894"), (1e-05, "1e-05"), (6.0, "6.0"), (0.1, "0.1"),
            (1e16, "1e+16"), (1234567890123456.0, "1234567890123456.0"), (0.0001, "0.0001"), (-2.5e-07, "-2.5e-07"),
            (500000.0, "500000.0"), (1.5e300, "1.5e+300"), (0, "0.0"), (-0.0, "-0.0"), (123.456, "123.456"),
        ]
        for (value, text) in cases { XCTAssertEqual(JSONValue.pythonRepr(value), text) }
    }

    func testParseAndWrite() throws {
        let text = #"{"b": [1, 2.5, "x\u00e9\n", null, true], "a": {"k": -3}, "c": 1e-05}"#
        let v = try JSONValue(parsing: text)
        XCTAssertEqual(v["b"]?.arrayValue?.count, 5)
        XCTAssertEqual(v["a"]?["k"]?.intValue, -3)
        XCTAssertEqual(v["c"]?.doubleValue, 1e-05)
        XCTAssertEqual(v.pythonText(), #"{"b": [1, 2.5, "x\u00e9\n", null, true], "a": {"k": -3}, "c": 1e-05}"#)
        XCTAssertEqual(v.compactText(), "{\"b\":[1,2.5,\"xé\\n\",null,true],\"a\":{\"k\":-3},\"c\":1e-05}")
        XCTAssertEqual(JSONValue.object([("z", .int(1)), ("a", .array([]))]).pythonText(indent: 2, sortKeys: true),
                       "{\n  \"a\": [],\n  \"z\": 1\n}")
        for bad in ["{", "[1,]", "{\"a\" 1}", "tru", "\"abc", "1 2"] {
            XCTAssertThrowsError(try JSONValue(parsing: bad), bad)
        }
        // An error says its line and column as well as its byte offset.
        XCTAssertThrowsError(try JSONValue(parsing: "[1,\n 2,\n  x]")) { error in
            guard let error = error as? JSONParseError else { return XCTFail("\(error)") }
            XCTAssertEqual([error.offset, error.line, error.column], [10, 3, 3], "\(error)")
            XCTAssertEqual("\(error)", "invalid JSON at byte 10 (line 3, column 3): unexpected character")
        }
    }
}
