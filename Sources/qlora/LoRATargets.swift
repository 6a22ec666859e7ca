import ArgumentParser
import Llama

/// `--target-modules` (recipe `target_modules`), one parser for train, bench and plan: comma-separated projections
/// (`q_proj,v_proj`), `all-linear`, or hf_baseline.py's shortcuts `qv` (q_proj,v_proj) and `all` (all-linear).
/// train used to refuse the shortcuts bench and plan took under the same flag name.
enum LoRATargets {
    static let help = "Comma-separated projections (q_proj,v_proj,...), all-linear, or the shortcuts qv and all"

    /// The default, LoRAConfig's (peft's), as the flag spells it.
    static var defaultText: String { LoRAConfig().targetModules.joined(separator: ",") }

    /// The names `text` gives: split at commas (spaces around a name dropped, empty names skipped), the shortcuts
    /// expanded.
    static func parse(_ text: String) -> [String] {
        expand(text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
    }

    /// The names of a list (a recipe's), empty ones skipped and the shortcuts expanded.
    static func expand(_ names: [String]) -> [String] {
        names.filter { !$0.isEmpty }.flatMap { name -> [String] in
            switch name {
            case "qv": return ["q_proj", "v_proj"]
            case "all": return ["all-linear"]
            default: return [name]
            }
        }
    }

    /// Refuses an unknown name and an empty list (it would train nothing), naming `flag`.
    static func check(_ names: [String], flag: String) throws {
        let known = Set(LlamaConfig.projectionNames + ["all-linear"])
        let choices = LlamaConfig.projectionNames.joined(separator: ", ") + ", all-linear, qv or all"
        if let bad = names.first(where: { !known.contains($0) }) {
            throw ValidationError("\(flag): '\(bad)' is unknown (use \(choices))")
        }
        guard !names.isEmpty else {
            throw ValidationError("\(flag) names no projection: nothing would be trained; give one or more of "
                                  + choices)
        }
    }
}
