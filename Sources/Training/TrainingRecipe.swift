import Foundation
import Yams

/// A training recipe file (YAML, or JSON, which YAML reads too) with the Hugging Face key names of
/// `TrainingArguments`, `LoraConfig` and `BitsAndBytesConfig`, so an existing Python recipe ports as is. Every
/// value is optional; command-line flags override it. An unknown key is an error that names it.
public struct TrainingRecipe: Sendable {
    public var values: [String: RecipeValue] = [:]

    /// A scalar or list from the file.
    public enum RecipeValue: Sendable, Equatable {
        case int(Int), double(Double), bool(Bool), string(String), list([String])
        var int: Int? { if case .int(let i) = self { return i }; if case .double(let d) = self, d == d.rounded() { return Int(d) }; return nil }
        var double: Double? { switch self { case .int(let i): return Double(i); case .double(let d): return d; default: return nil } }
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
        "max_seq_length": "max_seq_length", "packing": "packing", "train_on_inputs": "train_on_inputs",
        "prompt_field": "prompt_field", "completion_field": "completion_field",
        "resume_from_checkpoint": "resume_from_checkpoint", "shuffle": "shuffle",
        "offload_checkpoints": "offload_checkpoints",
    ]

    /// Keys that only steer Python tooling (reporting, logging folders): accepted and ignored.
    public static let ignored: Set<String> = [
        "report_to", "logging_dir", "run_name", "do_train", "do_eval", "evaluation_strategy", "eval_strategy",
        "save_strategy", "logging_strategy", "overwrite_output_dir", "dataloader_num_workers", "remove_unused_columns",
        "group_by_length", "push_to_hub",
    ]

    /// An empty recipe.
    public init() {}

    /// Reads `path`.
    public init(contentsOf path: String) throws {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw TrainingError(description: "\(path): cannot read the recipe: \(error.localizedDescription)")
        }
        let parsed: Any?
        do { parsed = try Yams.load(yaml: text) } catch {
            throw TrainingError(description: "\(path): not valid YAML or JSON: \(error)")
        }
        guard let top = parsed as? [String: Any] else { throw TrainingError(description: "\(path): the recipe must be a mapping of keys to values") }
        var unknown: [String] = []
        for (key, raw) in top {
            if Self.ignored.contains(key) { continue }
            guard let setting = Self.aliases[key] else { unknown.append(key); continue }
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

    private func require<T>(_ key: String, _ value: T?, _ kind: String) throws -> T? {
        guard values[key] != nil else { return nil }
        guard let value else { throw TrainingError(description: "recipe key for \(key) must be \(kind), found \(values[key]!)") }
        return value
    }

    public func int(_ key: String) throws -> Int? { try require(key, values[key]?.int, "an integer") }
    public func double(_ key: String) throws -> Double? { try require(key, values[key]?.double, "a number") }
    public func bool(_ key: String) throws -> Bool? { try require(key, values[key]?.bool, "true or false") }
    public func string(_ key: String) throws -> String? { try require(key, values[key]?.string, "a string") }
    /// A list, or a comma-separated string.
    public func list(_ key: String) throws -> [String]? {
        switch values[key] {
        case nil: return nil
        case .list(let l)?: return l
        case .string(let s)?: return s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        default: throw TrainingError(description: "recipe key for \(key) must be a list")
        }
    }
}
