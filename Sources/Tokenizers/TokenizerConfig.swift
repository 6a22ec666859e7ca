#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ModelFiles

/// A model folder's `tokenizer_config.json`: the special tokens by name and the chat template.
public enum TokenizerConfig {
    /// `folder`'s tokenizer_config.json, or nil when the folder has none. A file that is there but cannot be read,
    /// is not JSON, or whose top level is not an object is an error naming it: it used to read as absent, its
    /// BOS/EOS tokens and chat template dropped without a word.
    public static func read(folder: String) throws -> JSONValue? {
        let path = folder + "/tokenizer_config.json"
        var info = stat()
        guard lstat(path, &info) == 0 else { return nil }
        let json = try jsonFile(path)
        guard json.objectValue != nil else {
            throw TokenizerError(source: path, message: "the top level is \(kind(of: json)), expected an object")
        }
        return json
    }

    /// The JSON text of the file at `path` (tokenizer.json, tokenizer_config.json); a file that cannot be read or
    /// is not JSON is an error naming it.
    static func jsonFile(_ path: String) throws -> JSONValue {
        let bytes: [UInt8]
        do {
            bytes = try FileSystem.readBytes(path)
        } catch {
            throw TokenizerError(source: path, message: "cannot read the file: \(error)")
        }
        do {
            return try JSONValue(parsing: bytes)
        } catch {
            throw TokenizerError(source: path, message: "not valid JSON: \(error)")
        }
    }

    /// The chat template that `config` (read from `path`) names under `chat_template`: a string, or transformers'
    /// list of named templates (`[{"name": "default", "template": "..."}, {"name": "tool_use", ...}]`), of which
    /// the one named "default" is used, or the only one of a list of one. nil when the key is missing or null.
    /// Any other value, an entry that is not an object with a string `name` and `template`, or a list of several
    /// with none named "default" is an error naming the key.
    public static func chatTemplate(in config: JSONValue, path: String) throws -> String? {
        guard let value = config["chat_template"], value != .null else { return nil }
        if let text = value.stringValue { return text }
        func error(_ message: String) -> TokenizerError { TokenizerError(source: path, message: message) }
        guard let entries = value.arrayValue else {
            throw error("chat_template is \(kind(of: value)), expected a string or a list of {\"name\": ..., "
                        + "\"template\": ...} objects")
        }
        var named: [(name: String, template: String)] = []
        for (i, entry) in entries.enumerated() {
            guard entry.objectValue != nil else {
                throw error("chat_template[\(i)] is \(kind(of: entry)), expected {\"name\": ..., \"template\": ...}")
            }
            guard let name = entry["name"]?.stringValue, let template = entry["template"]?.stringValue else {
                throw error("chat_template[\(i)] needs a string \"name\" and a string \"template\"")
            }
            named.append((name, template))
        }
        // As transformers turns the list into a dictionary by name, a repeated name means its last entry.
        if let chosen = named.last(where: { $0.name == "default" }) { return chosen.template }
        if named.count == 1 { return named[0].template }
        let names = named.map { JSONValue.quoted($0.name) }.joined(separator: ", ")
        throw error(named.isEmpty ? "chat_template is an empty list: give a template or leave the key out"
                    : "chat_template lists \(named.count) templates (\(names)) and none is named \"default\"; "
                        + "name the one to use \"default\"")
    }

    /// What a JSON value is, in words ("an array", "a string"), for messages that should not print all of it.
    static func kind(of value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int, .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}
