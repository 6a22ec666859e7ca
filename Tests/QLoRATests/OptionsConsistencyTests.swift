import Foundation
import XCTest

/// `qlora <command> --help` shows the same values and default for an option wherever it means the same thing
/// (issue 12): every subcommand's options are read from ArgumentParser's description of the command line, and each
/// option two subcommands share is compared (default and values), unless it is listed as meaning another thing.
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

    /// One option of one subcommand as ArgumentParser describes it (`qlora --experimental-dump-help`).
    struct OptionInfo {
        let names: [String]        // every long name, with its dashes
        let defaultValue: String?  // the default ArgumentParser shows, else the one the help text states
        let values: [String]?      // the values an enum option takes
        let abstract: String
    }

    /// The default a help text states: "(default 4)", "(default: x)", "...; default text)", "(true, the default)",
    /// "turn (each trained turn's, the default)".
    static func statedDefault(_ text: String) -> String? {
        // A default runs to ";", ")" or ", " (a list such as q_proj,v_proj has no space after its commas).
        let patterns = [#"\(default:? ((?:[^;),]|,(?! ))+)"#, #"; default ((?:[^;),]|,(?! ))+)"#,
                        #"\(([^\s(),]+), the default\)"#,
                        #"([^\s(),]+) \([^)]*[,;] the default\)"#]
        for pattern in patterns {
            guard let regex = try? NSRegularExpression(pattern: pattern),
                  let match = regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)),
                  let range = Range(match.range(at: 1), in: text) else { continue }
            return String(text[range]).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// Two spellings of one default are the same default ("0" and "0.0").
    static func sameDefault(_ a: String?, _ b: String?) -> Bool {
        if let a, let b, let x = Double(a), let y = Double(b) { return x == y }
        return a == b
    }

    /// Every subcommand's options by long name, from ArgumentParser's own description of the command line.
    func allOptions() throws -> [String: [String: OptionInfo]] {
        let (status, _, output) = try run(["--experimental-dump-help"])
        XCTAssertEqual(status, 0, output)
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
        let command = try XCTUnwrap(root["command"] as? [String: Any])
        var result: [String: [String: OptionInfo]] = [:]
        for sub in try XCTUnwrap(command["subcommands"] as? [[String: Any]]) {
            let name = try XCTUnwrap(sub["commandName"] as? String)
            guard name != "help" else { continue }
            var options: [String: OptionInfo] = [:]
            for argument in sub["arguments"] as? [[String: Any]] ?? [] {
                let names = (argument["names"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "long" }
                    .compactMap { $0["name"] as? String }.map { "--" + $0 }
                guard !names.isEmpty, names != ["--help"] else { continue }
                let abstract = argument["abstract"] as? String ?? ""
                let shown = argument["defaultValue"] as? String, stated = Self.statedDefault(abstract)
                // A default written in the text and another one shown by ArgumentParser must agree.
                if let shown, let stated {   // the text may say more ("$QLORA_SHARED or ../shared")
                    XCTAssertTrue(Self.sameDefault(shown, stated) || stated.hasSuffix(" " + shown),
                                  "\(name) \(names[0]): the help says default \(stated), the option's is \(shown)")
                }
                let info = OptionInfo(names: names, defaultValue: shown ?? stated,
                                      values: argument["allValues"] as? [String], abstract: abstract)
                for n in names { options[n] = info }
            }
            result[name] = options
        }
        return result
    }

    /// Options that share a name but not a meaning, by option and subcommand, with the reason; the help of each says
    /// what it is (checked: the texts differ). Anything else that shares a name must share its default and values.
    static let ownMeaning: [String: [String: String]] = [
        // quantize records it in quantization_config for other tools (fp16 included); the others compute in it.
        "--compute-dtype": ["quantize": "the dtype written into quantization_config"],
        // generate's is the number of prompts decoded together on a GPU, not the training or evaluation batch.
        "--batch-size": ["generate": "prompts decoded together on a GPU"],
        // generate's draws the samples of --temperature > 0; train's draws adapters, dropout and the data order.
        "--seed": ["generate": "the sampling seed"],
        // generate's names the field of --prompts-from records; the data options' names instruction records' field.
        "--prompt-field": ["generate": "the field of --prompts-from records"],
        // The output's dtype, after each format's convention: bf16 as Llama checkpoints ship (merge's Hugging Face
        // folder; f16 overflows where bf16 does not), f16 as llama.cpp's converter writes GGUF (export).
        "--dtype": ["merge": "a Hugging Face folder's dtype", "export": "a GGUF file's tensor type"],
        "--type": ["merge": "a Hugging Face folder's dtype", "export": "a GGUF file's tensor type"],
        // bench-gemm's rows are the step's activations (batch × tokens), bench-quantize's a weight matrix's.
        "--rows": ["bench-gemm": "the activations' rows", "bench-quantize": "the benchmark matrix's rows"],
    ]

    /// For every pair of subcommands, an option with the same name has the same default and the same values, unless
    /// `ownMeaning` lists it (then its help must differ from the others'). Future drift fails here.
    func testEveryPairOfSubcommandsAgreesOnSharedOptions() throws {
        let options = try allOptions()
        XCTAssertGreaterThanOrEqual(options.count, 14)
        let commands = options.keys.sorted()
        var compared = 0
        for (i, first) in commands.enumerated() {
            for second in commands[(i + 1)...] {
                for name in Set(options[first]!.keys).intersection(options[second]!.keys).sorted() {
                    let a = options[first]![name]!, b = options[second]![name]!
                    let own = Self.ownMeaning[name] ?? [:]
                    if own[first] != nil || own[second] != nil {
                        XCTAssertNotEqual(a.abstract, b.abstract,
                                          "\(name) means another thing in \(first) and \(second): its help must say so")
                        continue
                    }
                    compared += 1
                    XCTAssertTrue(Self.sameDefault(a.defaultValue, b.defaultValue),
                                  "\(name): default \(a.defaultValue ?? "none") in \(first), "
                                  + "\(b.defaultValue ?? "none") in \(second)")
                    XCTAssertEqual(a.values, b.values, "\(name): values in \(first) and \(second)")
                }
            }
        }
        XCTAssertGreaterThan(compared, 50, "shared options compared")
        // The exceptions still exist (a stale entry would hide nothing, but says something false).
        for (name, commands) in Self.ownMeaning {
            for command in commands.keys { XCTAssertNotNil(options[command]?[name], "\(command) \(name)") }
        }
    }

    /// The reader of stated defaults finds each way the help texts write one.
    func testStatedDefaultsAreRead() {
        XCTAssertEqual(Self.statedDefault("Sequences per micro-batch (default 4)."), "4")
        XCTAssertEqual(Self.statedDefault("Tokens (default 512, train's --max-seq-length)."), "512")
        XCTAssertEqual(Self.statedDefault("Projections (default q_proj,v_proj)."), "q_proj,v_proj")
        XCTAssertEqual(Self.statedDefault("Field (TRL's dataset_text_field; default text)."), "text")
        XCTAssertEqual(Self.statedDefault("in pinned host memory (true, the default) or on the GPU"), "true")
        XCTAssertEqual(Self.statedDefault("Which: turn (each trained turn's, the default), last"), "turn")
        XCTAssertNil(Self.statedDefault("Training data file."))
        XCTAssertTrue(Self.sameDefault("0", "0.0"))
        XCTAssertFalse(Self.sameDefault("4", "8"))
    }

    /// bench and plan take train's names (their hf_baseline.py names are second names of the same options).
    func testBenchAndPlanTakeTrainsNames() throws {
        var help: [String: [String: String]] = [:]
        for command in ["train", "bench", "plan"] { help[command] = try helpOptions(command) }
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
