import Foundation
import XCTest

/// `qlora <command> --help` shows the same values and default for an option wherever it means the same thing
/// (issue 12): the help of every subcommand is read, and each shared option's value list and default compared.
extension BadSettingsTests {
    /// Each option's help paragraph (names, value name, text), by option name, from `qlora <command> --help`.
    func helpOptions(_ command: String) throws -> [String: String] {
        let (status, _, output) = try run([command, "--help"])
        XCTAssertEqual(status, 0, output)
        var options: [String: String] = [:], current: String?
        for line in output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("  --") {
                current = String(trimmed.split(separator: " ")[0].split(separator: ",")[0])
                options[current!] = trimmed
            } else if let name = current, line.hasPrefix("    "), !trimmed.isEmpty {
                options[name]! += " " + trimmed
            } else {
                current = nil
            }
        }
        return options
    }

    func testSharedOptionsShowTheSameValuesAndDefaults() throws {
        let commands = ["quantize", "train", "merge", "export", "info", "eval", "generate", "tokenize", "plot",
                        "bench", "plan", "check-cuda", "bench-gemm", "bench-quantize"]
        var help: [String: [String: String]] = [:]
        for command in commands { help[command] = try helpOptions(command) }
        func part(_ text: String, _ pattern: String) -> String? {
            guard let range = text.range(of: pattern, options: .regularExpression) else { return nil }
            return String(text[range])
        }
        // Options that mean the same thing wherever they appear (quantize's --compute-dtype is the dtype it records
        // in quantization_config for other tools, fp16 included: not this one).
        let shared = ["--device", "--compute-dtype", "--target-modules", "--lora-dropout", "--quant-type",
                      "--double-quant"]
        for option in shared {
            var seen: [(command: String, values: String?, fallback: String?)] = []
            for command in commands where !(command == "quantize" && option == "--compute-dtype") {
                guard let text = help[command]?[option] else { continue }
                let values = part(text, #"\(values: [^;)]*"#)?.replacingOccurrences(of: "(values: ", with: "")
                let fallback = part(text, #"default:? [^;).,]+"#)?
                    .replacingOccurrences(of: "default: ", with: "default ")
                seen.append((command, values, fallback))
            }
            XCTAssertGreaterThan(seen.count, 1, option)
            for other in seen.dropFirst() {
                XCTAssertEqual(other.values, seen[0].values,
                               "\(option): values in \(other.command) and \(seen[0].command)")
                XCTAssertEqual(other.fallback, seen[0].fallback,
                               "\(option): default in \(other.command) and \(seen[0].command)")
            }
        }
        // bench and plan take train's names (their hf_baseline.py names are second names of the same options).
        for command in ["bench", "plan"] {
            for option in ["--target-modules", "--batch-size", "--max-seq-length", "--compute-dtype",
                           "--lora-dropout"] {
                XCTAssertNotNil(help[command]?[option], "\(command) \(option)")
            }
        }
    }
}

extension BadSettingsTests {
    /// train takes the --target-modules values bench and plan take (the shortcuts qv and all), through one parser.
    func testTrainTakesTheTargetShortcutsBenchTakes() throws {
        let (model, dir, data) = try tinyModelAndData()
        let every = #""q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj""#
        for (value, targets) in [("qv", #""q_proj","v_proj""#), ("all", every)] {
            let out = dir + "/out-" + value
            let (status, _, output) = try run(["train", "--model", model, "--data", data, "--output-dir", out,
                                               "--max-steps", "1", "--batch-size", "1", "--target-modules", value])
            XCTAssertEqual(status, 0, output)
            let config = try String(contentsOfFile: out + "/adapter_config.json", encoding: .utf8)
                .replacingOccurrences(of: " ", with: "").replacingOccurrences(of: "\n", with: "")
            XCTAssertTrue(config.contains(targets), config)
        }
        try expectError(["train", "--model", model, "--data", data, "--output-dir", dir + "/x", "--target-modules",
                         "q_proj,nope"], ["--target-modules (recipe target_modules): 'nope' is unknown"])
    }
}
