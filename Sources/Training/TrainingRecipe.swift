import CYaml
import ModelFiles
import Foundation
import Yams
#if canImport(Glibc)
import Glibc
#endif

/// A training recipe file (YAML, or JSON, which YAML reads too) with the Hugging Face key names of
/// `TrainingArguments`, `LoraConfig` and `BitsAndBytesConfig`, so an existing Python recipe ports as is. Every
/// value is optional; command-line flags override it. An unknown key is an error that names it.
public struct TrainingRecipe: Sendable {
    public var values: [String: RecipeValue] = [:]
    /// The key the file used for each setting (`per_device_train_batch_size` for `batch_size`), for messages.
    public var fileKeys: [String: String] = [:]
    /// The file read (nil for an empty recipe): a value's error names it.
    public private(set) var path: String? = nil

    /// A scalar or list from the file.
    public enum RecipeValue: Sendable, Equatable {
        case int(Int), double(Double), bool(Bool), string(String), list([String])
        /// An integer, or a float with an exact integer value in Int's range (`1e30`, `.inf`, `2.5` are not).
        var int: Int? {
            if case .int(let i) = self { return i }
            if case .double(let d) = self { return Int(exactly: d) }
            return nil
        }
        var double: Double? { switch self { case .int(let i): return Double(i); case .double(let d): return d; default: return nil } }
        /// The value as the file wrote it, for messages.
        public var text: String {
            switch self {
            case .int(let i): return "\(i)"
            case .double(let d): return "\(d)"
            case .bool(let b): return "\(b)"
            case .string(let s): return "\"\(s)\""
            case .list(let l): return "[\(l.joined(separator: ", "))]"
            }
        }
        var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
        var string: String? { if case .string(let s) = self { return s }; return nil }
    }

    /// Keys understood, by the setting they feed (aliases map to one setting).
    public static let aliases: [String: String] = [
        "model": "model", "model_name_or_path": "model",
        "data": "data", "train_file": "data", "dataset": "data", "data_path": "data",
        "eval_data": "eval_data", "eval_file": "eval_data", "validation_file": "eval_data",
        "validation_split": "validation_split", "output_dir": "output_dir",
        "per_device_train_batch_size": "batch_size", "batch_size": "batch_size",
        "per_device_eval_batch_size": "eval_batch_size",
        "gradient_accumulation_steps": "gradient_accumulation_steps", "learning_rate": "learning_rate",
        "num_train_epochs": "num_train_epochs", "max_steps": "max_steps", "logging_steps": "logging_steps",
        "save_steps": "save_steps", "eval_steps": "eval_steps", "save_total_limit": "save_total_limit",
        "optim": "optim", "lr_scheduler_type": "lr_scheduler_type", "warmup_steps": "warmup_steps",
        "warmup_ratio": "warmup_ratio", "weight_decay": "weight_decay", "max_grad_norm": "max_grad_norm",
        "seed": "seed", "gradient_checkpointing": "gradient_checkpointing", "bf16": "bf16", "fp16": "fp16",
        "r": "r", "lora_r": "r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout",
        "target_modules": "target_modules", "use_rslora": "use_rslora", "bias": "bias", "task_type": "task_type",
        "bnb_4bit_quant_type": "bnb_4bit_quant_type", "bnb_4bit_use_double_quant": "bnb_4bit_use_double_quant",
        "bnb_4bit_compute_dtype": "bnb_4bit_compute_dtype", "load_in_4bit": "load_in_4bit",
        "max_seq_length": "max_seq_length", "packing": "packing", "padding_free": "padding_free",
        "train_on_inputs": "train_on_inputs",
        "prompt_field": "prompt_field", "completion_field": "completion_field",
        "resume_from_checkpoint": "resume_from_checkpoint", "shuffle": "shuffle",
        "offload_checkpoints": "offload_checkpoints", "report_to": "report_to", "logging_dir": "logging_dir",
        "dataset_text_field": "dataset_text_field", "overwrite_output_dir": "overwrite_output_dir",
        "roles_to_train": "roles_to_train", "train_on_eos": "train_on_eos",
        "eval_strategy": "eval_strategy", "evaluation_strategy": "eval_strategy", "save_strategy": "save_strategy",
        "load_best_model_at_end": "load_best_model_at_end", "metric_for_best_model": "metric_for_best_model",
        "greater_is_better": "greater_is_better", "early_stopping_patience": "early_stopping_patience",
        "early_stopping_threshold": "early_stopping_threshold",
    ]

    /// The largest recipe file read (a recipe is a page of settings).
    public static let maximumFileSize = 1 << 20
    /// The deepest nesting of mappings and sequences accepted (a recipe is a flat mapping with a few lists).
    public static let maximumDepth = 64

    /// Keys that only steer Python tooling (data loader workers, the hub, run names): accepted with a warning that
    /// they have no effect here (`ignoredKeys`).
    public static let ignored: Set<String> = [
        "run_name", "do_train", "do_eval", "logging_strategy", "dataloader_num_workers", "remove_unused_columns",
        "group_by_length", "push_to_hub",
    ]

    /// The keys of this file that have no effect here (from `ignored`), for a warning.
    public private(set) var ignoredKeys: [String] = []

    /// An empty recipe.
    public init() {}

    /// Reads `path`.
    public init(contentsOf path: String) throws {
        self.path = path
        let size = try InputFile.requireRegular(path, what: "the recipe (--config)")
        guard size <= Self.maximumFileSize else {
            throw TrainingError(description: "\(path): the recipe is \(size) bytes; at most \(Self.maximumFileSize) " +
                "(1 MiB) are read")
        }
        // Read up to the limit, not to the end: a /proc file says it is empty and may never end.
        let bytes: [UInt8]
        do { bytes = try FileSystem.readAtMost(path, Self.maximumFileSize) } catch {
            throw TrainingError(description: "\(path): cannot read the recipe: \(error)")
        }
        guard bytes.count <= Self.maximumFileSize else {
            throw TrainingError(description: "\(path): the recipe holds more than \(Self.maximumFileSize) bytes "
                + "(1 MiB, the most that are read) although its size reads \(size) (a file of /proc or /sys?)")
        }
        guard let text = String(bytes: bytes, encoding: .utf8) else {
            throw TrainingError(description: "\(path): cannot read the recipe: it is not UTF-8 text")
        }
        try Self.checkStructure(text, path: path)
        let parsed: Any?
        do { parsed = try Yams.load(yaml: text) } catch {
            throw TrainingError(description: "\(path): not valid YAML or JSON: \(error)")
        }
        guard let top = parsed as? [String: Any] else { throw TrainingError(description: "\(path): the recipe must be a mapping of keys to values") }
        var unknown: [String] = []
        for (key, raw) in top {
            if Self.ignored.contains(key) { ignoredKeys.append(key); continue }
            guard let setting = Self.aliases[key] else { unknown.append(key); continue }
            fileKeys[setting] = key
            switch raw {
            case let b as Bool: values[setting] = .bool(b)
            case let i as Int: values[setting] = .int(i)
            case let d as Double: values[setting] = .double(d)
            case let s as String: values[setting] = .string(s)
            case let list as [Any]: values[setting] = .list(list.map { "\($0)" })
            case is NSNull: continue
            default: throw TrainingError(description: "\(path): the value of \"\(key)\" has an unsupported type")
            }
        }
        if !unknown.isEmpty {
            throw TrainingError(description: "\(path): unknown key\(unknown.count > 1 ? "s" : "") \(unknown.sorted().map { "\"\($0)\"" }.joined(separator: ", ")) (known: \(Self.aliases.keys.sorted().joined(separator: ", ")))")
        }
    }

    /// Walks the YAML events (libyaml's parser keeps its own stacks, so this never recurses) and refuses what could
    /// exhaust the stack or the memory when the document is built: nesting deeper than `maximumDepth`, and anchors
    /// or aliases (an alias chain expands exponentially; a recipe has no use for them).
    static func checkStructure(_ text: String, path: String) throws {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else {
            throw TrainingError(description: "\(path): cannot start the YAML parser")
        }
        defer { yaml_parser_delete(&parser) }
        let bytes = Array(text.utf8)
        try bytes.withUnsafeBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var depth = 0
            // Per open collection: nil for a sequence; for a mapping, whether its next node is a key. Yams builds a
            // mapping's keys as strings and traps on any other key (`[a]: 1`, `? {b: 2}`), so those are refused here.
            var expectsKey: [Bool?] = []
            while true {
                var event = yaml_event_t()
                guard yaml_parser_parse(&parser, &event) == 1 else {
                    let problem = parser.problem.map { String(cString: $0) } ?? "unknown error"
                    throw TrainingError(description: "\(path): not valid YAML or JSON: \(problem) (line " +
                        "\(parser.problem_mark.line + 1))")
                }
                defer { yaml_event_delete(&event) }
                let line = event.start_mark.line + 1
                var anchor: UnsafeMutablePointer<yaml_char_t>? = nil
                let startsNode = [YAML_SCALAR_EVENT, YAML_ALIAS_EVENT, YAML_SEQUENCE_START_EVENT,
                    YAML_MAPPING_START_EVENT]
                    .contains(event.type)
                if startsNode, let top = expectsKey.last, let isKey = top {
                    guard !isKey || event.type == YAML_SCALAR_EVENT || event.type == YAML_ALIAS_EVENT else {
                        throw TrainingError(description: "\(path): line \(line): a mapping key must be a plain " +
                            "value, not a list or a mapping")
                    }
                    expectsKey[expectsKey.count - 1] = !isKey
                }
                switch event.type {
                case YAML_STREAM_END_EVENT: return
                case YAML_ALIAS_EVENT:
                    throw TrainingError(description: "\(path): line \(line): YAML aliases (*name) are not accepted " +
                        "in a recipe")
                case YAML_SCALAR_EVENT:
                    anchor = event.data.scalar.anchor
                    if event.data.scalar.style == YAML_PLAIN_SCALAR_STYLE, let value = event.data.scalar.value {
                        let text = String(decoding: UnsafeBufferPointer(start: value, count: event.data.scalar.length),
                            as: UTF8.self)
                        if Self.sexagesimalOverflows(text) {
                            throw TrainingError(description: "\(path): line \(line): \(text) is a base-60 integer " +
                                "(YAML 1.1's 1:30 = 90) too large for 64 bits; quote it if it is text")
                        }
                    }
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    anchor = event.type == YAML_SEQUENCE_START_EVENT ? event.data.sequence_start.anchor
                                                                     : event.data.mapping_start.anchor
                    depth += 1
                    guard depth <= Self.maximumDepth else {
                        throw TrainingError(description: "\(path): line \(line): nested deeper than " +
                            "\(Self.maximumDepth) levels; a recipe is a flat mapping of keys to values")
                    }
                    expectsKey.append(event.type == YAML_MAPPING_START_EVENT ? true : nil)
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    depth -= 1
                    _ = expectsKey.popLast()
                default: break
                }
                if anchor != nil {
                    throw TrainingError(description: "\(path): line \(line): YAML anchors (&name) are not accepted " +
                        "in a recipe")
                }
            }
        }
    }

    /// True when `text` is a plain base-60 integer (`1:30`, YAML 1.1) whose value, computed as Yams computes it
    /// (each part times a power of 60, that power advanced past the last part too), overflows Int: Yams would trap.
    static func sexagesimalOverflows(_ text: String) -> Bool {
        var digits = Substring(text.replacingOccurrences(of: "_", with: ""))
        if digits.hasPrefix("-") || digits.hasPrefix("+") { digits = digits.dropFirst() }
        let parts = digits.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count > 1, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0 >= "0" && $0 <= "9" } }) else {
            return false
        }
        var base = 1, value = 0
        for part in parts.reversed() {
            guard let digit = Int(part) else { return true }
            let (term, o1) = digit.multipliedReportingOverflow(by: base)
            let (sum, o2) = value.addingReportingOverflow(term)
            let (next, o3) = base.multipliedReportingOverflow(by: 60)
            if o1 || o2 || o3 { return true }
            (base, value) = (next, sum)
        }
        return false
    }

    private func require<T>(_ key: String, _ value: T?, _ kind: String) throws -> T? {
        guard values[key] != nil else { return nil }
        guard let value else {
            throw TrainingError(description: (path.map { "\($0): " } ?? "") + "recipe key \"\(keyName(key))\": must be "
                                + "\(kind), found \(values[key]!.text)")
        }
        return value
    }

    /// The key the file used for setting `key` (the setting's name when it is not from the file).
    public func keyName(_ key: String) -> String { fileKeys[key] ?? key }

    /// True when the recipe sets `key` (a null value sets nothing).
    public func sets(_ key: String) -> Bool { values[key] != nil }

    public func int(_ key: String) throws -> Int? {
        try require(key, values[key]?.int, "an integer (whole, at most \(Int.max) in size)")
    }
    public func double(_ key: String) throws -> Double? { try require(key, values[key]?.double, "a number") }
    public func bool(_ key: String) throws -> Bool? { try require(key, values[key]?.bool, "true or false") }
    public func string(_ key: String) throws -> String? { try require(key, values[key]?.string, "a string") }
    /// A list, or a comma-separated string.
    public func list(_ key: String) throws -> [String]? {
        switch values[key] {
        case nil: return nil
        case .list(let l)?: return l
        case .string(let s)?: return s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        default:
            throw TrainingError(description: (path.map { "\($0): " } ?? "") + "recipe key \"\(keyName(key))\": must "
                                + "be a list, found \(values[key]!.text)")
        }
    }
}


/// Checks on the files a command reads, before reading them: a FIFO, a device (`/dev/zero`) or a folder named where
/// a file is expected would block or never end, so only regular files are read.
public enum InputFile {
    /// The size of `path` when it is a regular file; else an error naming `what`, the path and what it is.
    @discardableResult
    public static func requireRegular(_ path: String, what: String) throws -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw TrainingError(description: "\(what) \(path): \(String(cString: strerror(errno)))")
        }
        if info.st_mode & S_IFMT == S_IFREG { return Int(info.st_size) }
        let kind = MappedFile.kind(info.st_mode)
        throw TrainingError(description: "\(what) \(path) is \(kind); it must be a regular file")
    }
}
