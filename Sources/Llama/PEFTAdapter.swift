import Foundation
import ModelFiles
import Tensors

/// LoRA adapters in peft's on-disk format: `adapter_config.json` and `adapter_model.safetensors` with keys
/// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (A: R × in) and `...lora_B.weight` (B: out × R).
public enum PEFTAdapter {
    /// The module path of projection `name` in layer `layer` (`model.layers.0.self_attn.q_proj`).
    public static func modulePath(layer: Int, projection name: String) -> String {
        let block = ["q_proj", "k_proj", "v_proj", "o_proj"].contains(name) ? "self_attn" : "mlp"
        return "model.layers.\(layer).\(block).\(name)"
    }

    /// The safetensors key of an adapter matrix, as `save_pretrained` writes it.
    public static func key(layer: Int, projection name: String, matrix: String) -> String {
        "base_model.model.\(modulePath(layer: layer, projection: name)).lora_\(matrix).weight"
    }

    /// Largest rank accepted (far above any real adapter; a bigger `r` is an error before anything is allocated).
    public static let maximumRank = 1 << 16

    /// Reads `adapter_config.json` into a LoRA configuration. With `layerCount` (the model's), `target_modules` is
    /// matched against the model's module paths as peft matches it (`resolveTargets`).
    public static func readConfig(directory: String, layerCount: Int? = nil) throws -> LoRAConfig {
        // "" + "/adapter_config.json" is the root's: --adapter "" (or --init-adapter "") read an adapter from /.
        guard !directory.isEmpty else {
            throw ModelFileError.invalidConfig(path: "\"\"", detail: "an empty path names no adapter folder (it "
                                               + "read /adapter_config.json, the root's): name the adapter folder")
        }
        let path = directory + "/adapter_config.json"
        // peft saves an adapter not named "default" into a folder of that name: the folder given held only it.
        if !FileSystem.isFile(path), FileSystem.irregularKind(path) == nil, FileSystem.isDirectory(directory),
           let inner = (try? FileManager.default.contentsOfDirectory(atPath: directory))?.sorted()
               .filter({ FileSystem.isFile(directory + "/" + $0 + "/adapter_config.json") }), !inner.isEmpty {
            throw ModelFileError.cannotOpen(path: path, reason: "no such file; the adapter folder"
                + (inner.count == 1 ? " " : "s ") + inner.map { directory + "/" + $0 }.joined(separator: ", ")
                + " inside hold" + (inner.count == 1 ? "s" : "") + " one (peft saves an adapter not named "
                + "default there): give that folder")
        }
        let json: JSONValue
        do { json = try JSONValue(parsing: FileSystem.readBytes(path)) } catch let e as JSONParseError {
            throw ModelFileError.invalidConfig(path: path, detail: "\(e)")
        }
        guard json["peft_type"]?.stringValue ?? "LORA" == "LORA" else {
            throw ModelFileError.invalidConfig(path: path, detail: "peft_type is \(json["peft_type"]!.compactText()), only LORA is supported")
        }
        var lora = LoRAConfig()
        guard let r = json["r"]?.intValue, r > 0 else { throw ModelFileError.invalidConfig(path: path, detail: "no positive \"r\"") }
        guard r <= maximumRank else {
            throw ModelFileError.invalidConfig(path: path,
                detail: "\"r\" is \(r), more than this tool accepts (\(maximumRank))")
        }
        lora.r = r
        // peft's default lora_alpha is 8 whatever r is: an adapter of r 4 without one was scaled by 1 here and by
        // 2 in peft. A value of another type (the string "16") read as absent as well, where peft fails.
        lora.alpha = try number("lora_alpha", in: json, path: path) ?? 8
        guard lora.alpha.isFinite else {
            throw ModelFileError.invalidConfig(path: path, detail: "\"lora_alpha\" is not finite")
        }
        switch json["use_rslora"] {
        case nil, .null?, .bool(false)?: lora.useRSLoRA = false
        case .bool(true)?: lora.useRSLoRA = true
        case let value?:
            throw ModelFileError.invalidConfig(path: path, detail: "\"use_rslora\" is \(value.compactText()), "
                + "not true or false")
        }
        // 1e308 is a finite Double whose scale (alpha / r) is float32's infinity: every merged weight NaN.
        guard lora.scale.isFinite else {
            throw ModelFileError.invalidConfig(path: path, detail: "\"lora_alpha\" \(lora.alpha) over r \(r) gives a "
                + "scale beyond float32's range")
        }
        lora.dropout = try number("lora_dropout", in: json, path: path) ?? 0
        guard lora.dropout >= 0, lora.dropout < 1 else {
            throw ModelFileError.invalidConfig(path: path,
                detail: "\"lora_dropout\" must be in [0, 1), found \(lora.dropout)")
        }
        if let single = json["target_modules"]?.stringValue {
            lora.targetModules = [single]
        } else if let list = json["target_modules"]?.arrayValue?.compactMap(\.stringValue) {
            lora.targetModules = list
        }
        if let layerCount {
            lora.targetModules = try resolveTargets(json["target_modules"], layerCount: layerCount, path: path)
        }
        if json["use_dora"] == .bool(true) { throw ModelFileError.invalidConfig(path: path, detail: "DoRA adapters are not supported") }
        // Settings that change what peft computes from the same tensors (another rank or scale for some modules,
        // layers or modules left out, extra trained weights): read as absent, an adapter with
        // "alpha_pattern": {"q_proj": 64} merged and generated with the wrong scale without a word.
        // So do peft's LoRA variants (aLoRA, BD-LoRA, Arrow, KaSA, MonteCLoRA), a bias on B (lora_bias) and
        // layer_replication (more layers than the base has): aLoRA's adapter was applied as plain LoRA.
        for key in ["rank_pattern", "alpha_pattern", "layers_to_transform", "exclude_modules", "modules_to_save",
                    "trainable_token_indices", "target_parameters", "layer_replication", "lora_bias",
                    "alora_invocation_tokens", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config"] {
            guard let value = json[key] else { continue }
            let empty = value == .null || value.arrayValue?.isEmpty == true || value.objectValue?.isEmpty == true
                || value.stringValue?.isEmpty == true || value == .bool(false)
            guard empty else {
                throw ModelFileError.invalidConfig(path: path, detail: "\"\(key)\" is \(value.compactText()): this " +
                    "tool reads adapters with one rank and scale for every targeted projection of every layer, and " +
                    "no other trained weights (\(key) must be null or empty)")
            }
        }
        if let bias = json["bias"]?.stringValue, bias != "none" {
            throw ModelFileError.invalidConfig(path: path, detail: "bias \"\(bias)\" is not supported (only \"none\")")
        }
        // PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA subtract their initial B·A from the base weights (peft does it
        // again when it loads the adapter), so the adapter belongs to a changed base: applied to the file's own
        // weights it gave other logits without a word. MiCA is a LoRA variant of its own.
        if let value = json["init_lora_weights"], ![.null, .bool(true), .bool(false)].contains(value) {
            let name = value.stringValue ?? value.compactText()
            // Compared as peft compares them: "gaussian" in any case, the others exactly.
            guard name.lowercased() == "gaussian" || ["eva", "orthogonal"].contains(name) else {
                throw ModelFileError.invalidConfig(path: path, detail: "\"init_lora_weights\" is "
                    + "\(value.compactText()), which is not supported: pissa, olora, corda, loftq and lora_ga change "
                    + "the base model's weights as well (convert the adapter with peft's save_pretrained("
                    + "path_initial_model_for_weight_conversion=...)), and mica is a LoRA variant; supported: true, "
                    + "false, \"gaussian\", \"eva\", \"orthogonal\"")
            }
        }
        return lora
    }

    /// The number at `key` of an adapter config, nil where the key is absent; null or another type is an error
    /// naming the key (peft fails on either).
    private static func number(_ key: String, in json: JSONValue, path: String) throws -> Double? {
        guard let value = json[key] else { return nil }
        guard let number = value.doubleValue else {
            throw ModelFileError.invalidConfig(path: path, detail: "\"\(key)\" is \(value.compactText()), not a number")
        }
        return number
    }

    /// The projections `target_modules` adapts in a model of `layerCount` layers, matched as peft matches it: a
    /// list entry adapts each module whose path (`model.layers.0.self_attn.q_proj`) is the entry or ends with
    /// `.` + the entry, a string is a regular expression the whole path must match, `all-linear` is every
    /// projection. peft 0.21.2 writes "all-linear" as the list of every module's full path, which read as no
    /// projection at all. The result must adapt a projection in every layer or in none, and nothing else.
    static func resolveTargets(_ value: JSONValue?, layerCount: Int, path: String) throws -> [String] {
        guard let value, value != .null else { return LoRAConfig().targetModules }
        let what = "\"target_modules\" \(value.compactText())"
        let matches: (String) -> Bool
        if let pattern = value.stringValue {
            if pattern == "all-linear" { return ["all-linear"] }
            guard let regex = try? NSRegularExpression(pattern: "^(?:" + pattern + ")$") else {
                throw ModelFileError.invalidConfig(path: path, detail: "\(what) is not a regular expression this "
                    + "tool can read (peft reads a string target_modules as one)")
            }
            matches = { module in
                regex.firstMatch(in: module, range: NSRange(module.startIndex..., in: module)) != nil
            }
        } else if let list = value.arrayValue {
            var entries: [String] = []
            for item in list {
                guard let entry = item.stringValue else {
                    throw ModelFileError.invalidConfig(path: path, detail: "\(what) holds \(item.compactText()), "
                        + "not a module name")
                }
                entries.append(entry)
            }
            if entries.contains("all-linear") { return ["all-linear"] }
            matches = { module in entries.contains { module == $0 || module.hasSuffix("." + $0) } }
        } else {
            throw ModelFileError.invalidConfig(path: path, detail: "\(what) is neither a list of module names nor a "
                + "regular expression")
        }
        for other in ["lm_head", "model.embed_tokens"] where matches(other) {
            throw ModelFileError.invalidConfig(path: path, detail: "\(what) adapts \(other), which this tool does "
                + "not adapt (only " + LlamaConfig.projectionNames.joined(separator: ", ") + ")")
        }
        var targets: [String] = []
        for name in LlamaConfig.projectionNames {
            let layers = (0..<layerCount).filter { matches(modulePath(layer: $0, projection: name)) }
            if layers.count == layerCount, layerCount > 0 {
                targets.append(name)
            } else if !layers.isEmpty {
                throw ModelFileError.invalidConfig(path: path, detail: "\(what) adapts \(name) in layer"
                    + (layers.count == 1 ? " " : "s ") + layers.map(String.init).joined(separator: ", ")
                    + " of \(layerCount) only: this tool adapts a projection in every layer or in none")
            }
        }
        return targets
    }

    /// The adapter's `adapter_model.safetensors` in `directory`. Where it is absent, or not a regular file, the
    /// error says what is there instead: a folder or FIFO by that name, or a PyTorch pickle `adapter_model.bin`
    /// (what peft writes with safe_serialization=False), which this tool does not read.
    public static func weightsPath(directory: String) throws -> String {
        let path = directory + "/adapter_model.safetensors"
        if let kind = FileSystem.irregularKind(path) {
            throw ModelFileError.cannotOpen(path: path, reason: "not a regular file (\(kind))")
        }
        let pickle = directory + "/adapter_model.bin"
        if !FileSystem.isFile(path), FileSystem.isFile(pickle) || FileSystem.irregularKind(pickle) != nil {
            throw ModelFileError.invalidConfig(
                path: pickle, detail: "a PyTorch pickle (.bin) adapter, which is not supported: only "
                    + "adapter_model.safetensors is read. Save the adapter with safe_serialization=True (the default "
                    + "of peft's save_pretrained), or convert this file to adapter_model.safetensors")
        }
        return path
    }

    /// Loads the adapter in `directory` into `model`, replacing its adapters (configuration and weights).
    public static func load(directory: String, into model: LlamaModel) throws {
        let (lora, adapters) = try read(directory: directory, config: model.config)
        model.resetAdapters(lora, seed: 0)
        model.adapters = adapters
    }

    /// The settings and matrices of the adapter in `directory`, for a model of architecture `config`.
    public static func read(directory: String,
                            config: LlamaConfig) throws -> (lora: LoRAConfig, adapters: [String: LoRAWeights]) {
        let lora = try readConfig(directory: directory, layerCount: config.layerCount)
        var shapes: [String: (outFeatures: Int, inFeatures: Int)] = [:]
        for l in 0..<config.layerCount {
            for name in lora.resolvedTargets { shapes["\(l).\(name)"] = config.projectionShape(name)! }
        }
        return (lora, try readWeights(directory: directory, r: lora.r, shapes: shapes))
    }

    /// Reads the matrices of the adapter in `directory` (rank `r`) for the projections `shapes` names (keyed like
    /// `LlamaModel.adapters`, each with its weight's `(out, in)`): A (R, in) and B (out, R) of every one, in a
    /// floating-point dtype, and no other tensor.
    public static func readWeights(directory: String, r: Int,
                                   shapes: [String: (outFeatures: Int, inFeatures: Int)]) throws -> [String: LoRAWeights] {
        let file = try SafeTensorsFile(path: try weightsPath(directory: directory))
        // A and B of every adapter must be allocatable: R × in and out × R, overflow-checked and bounded.
        for key in shapes.keys.sorted() {
            let (outFeatures, inFeatures) = shapes[key]!
            for (what, rows, columns) in [("A", r, inFeatures), ("B", outFeatures, r)] {
                let (count, overflow) = rows.multipliedReportingOverflow(by: columns)
                guard r > 0, rows >= 0, columns >= 0, !overflow, count <= LlamaConfig.maximumMatrixElements else {
                    throw ModelFileError.invalidCheckpoint(
                        path: file.path, tensor: Self.key(layer: Int(key.prefix { $0 != "." }) ?? 0,
                                                          projection: String(key.drop { $0 != "." }.dropFirst()),
                                                          matrix: what),
                        detail: "rank \(r) makes a \(rows) × \(columns) matrix, more than this tool accepts")
                }
            }
        }
        var used = Set<String>()
        let present = Set(file.names)
        var weights: [String: LoRAWeights] = [:]
        for key in shapes.keys.sorted() {
            let parts = key.split(separator: ".")
            let layer = Int(parts[0])!, name = String(parts[1])
            let (outFeatures, inFeatures) = shapes[key]!
            func read(_ matrix: String, _ shape: [Int]) throws -> [Float] {
                let k = Self.key(layer: layer, projection: name, matrix: matrix)
                // peft on the bare decoder (AutoModel) names it base_model.model.layers.N...: only "no tensor
                // named" was said.
                let bare = "base_model.model." + k.dropFirst("base_model.model.model.".count)
                if !present.contains(k), present.contains(bare) {
                    throw ModelFileError.invalidCheckpoint(path: file.path, tensor: k, detail: "is missing, and the "
                        + "file holds '\(bare)': an adapter of the bare decoder (peft on AutoModel), not of the "
                        + "causal LM (AutoModelForCausalLM) this tool reads")
                }
                let t = try file.tensor(named: k)
                guard t.shape == shape, t.dtype.isFloatingPoint else {
                    throw ModelFileError.invalidCheckpoint(path: file.path, tensor: k,
                                                           detail: "has \(t.dtype.rawValue) \(t.shape), expected \(shape)")
                }
                used.insert(k)
                let values = t.floats()
                // NaN or ±inf merges into NaN weights and logits without a word, and resuming from a checkpoint
                // that holds one diverged at its first step, naming that same checkpoint as the last good one.
                if let bad = values.firstIndex(where: { !$0.isFinite }) {
                    throw ModelFileError.invalidCheckpoint(path: file.path, tensor: k,
                                                           detail: "element \(bad) is \(values[bad]): not finite")
                }
                return values
            }
            weights[key] = LoRAWeights(a: try read("A", [r, inFeatures]), b: try read("B", [outFeatures, r]))
        }
        if let extra = file.names.first(where: { !used.contains($0) }) {
            throw ModelFileError.invalidCheckpoint(path: file.path, tensor: extra,
                                                   detail: "is not an adapter of a targeted projection of this model")
        }
        return weights
    }

    /// Saves the model's adapters in peft's format into `directory` (created if needed), each file atomically.
    public static func save(_ model: LlamaModel, to directory: String, baseModel: String = "") throws {
        try save(model.adapters, lora: model.loraConfig, to: directory, baseModel: baseModel)
    }

    /// Saves `adapters` (keyed like `LlamaModel.adapters`, A (R, in) and B (out, R) at `lora.r`) with the settings
    /// `lora` in peft's format into `directory` (created if needed), each file atomically.
    public static func save(_ adapters: [String: LoRAWeights], lora: LoRAConfig, to directory: String,
                            baseModel: String = "") throws {
        try FileSystem.createDirectory(directory)
        var tensors: [(name: String, tensor: Tensor)] = []
        for (key, w) in adapters {
            let parts = key.split(separator: ".")
            let layer = Int(parts[0])!, name = String(parts[1])
            tensors.append((Self.key(layer: layer, projection: name, matrix: "A"), Tensor(w.a, shape: [lora.r, w.a.count / lora.r])))
            tensors.append((Self.key(layer: layer, projection: name, matrix: "B"), Tensor(w.b, shape: [w.b.count / lora.r, lora.r])))
        }
        try SafeTensorsWriter.write(tensors, to: directory + "/adapter_model.safetensors")
        let config: JSONValue = .object([
            ("base_model_name_or_path", .string(baseModel)),
            ("bias", .string("none")),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            // A whole alpha is written as an integer (as peft writes it) where it fits one; 1e30 stays a float.
            ("lora_alpha", lora.alpha.rounded() == lora.alpha && abs(lora.alpha) < 9e15
                ? .int(Int(lora.alpha)) : .double(lora.alpha)),
            ("lora_dropout", .double(lora.dropout)),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .int(lora.r)),
            ("target_modules", .array(lora.resolvedTargets.map { .string($0) })),
            ("task_type", .string("CAUSAL_LM")),
            ("use_dora", .bool(false)),
            ("use_rslora", .bool(lora.useRSLoRA)),
        ])
        try AtomicFile.write(text: config.pythonText(indent: 2, sortKeys: true) + "\n", to: directory + "/adapter_config.json")
    }
}
