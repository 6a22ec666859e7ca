import Foundation

/// One chat turn.
public struct ChatMessage: Equatable, Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

/// A piece of rendered text, and whether the model is trained to produce it.
public struct TextSegment: Equatable, Sendable {
    public var text: String
    public var trainable: Bool
}

/// The chat formats of the supported families, recognized from the model's own Jinja template (the
/// `chat_template` of tokenizer_config.json or GGUF's `tokenizer.chat_template`) by its markers, and rendered by
/// hand: ChatML (SmolLM2, Qwen2), Llama 3, and Llama 2 / Mistral `[INST]`.
public enum ChatTemplate: Equatable, Sendable {
    /// `<|im_start|>role\ncontent<|im_end|>\n`; some templates add a default system turn.
    case chatML(defaultSystem: String?)
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>` after `<|begin_of_text|>`.
    case llama3
    /// `<s>[INST] <<SYS>>…<</SYS>> user [/INST] assistant </s>`.
    case llama2
    /// `<s>[INST] user [/INST]assistant</s>`.
    case mistral

    /// Recognizes a Jinja chat template; nil when it is none of the supported families.
    public init?(jinja template: String) {
        if template.contains("<|im_start|>") {
            self = .chatML(defaultSystem: Self.defaultSystemTurn(in: template))
        } else if template.contains("<|start_header_id|>") {
            self = .llama3
        } else if template.contains("[INST]") {
            self = template.contains("<<SYS>>") ? .llama2 : .mistral
        } else {
            return nil
        }
    }

    /// The literal system turn a ChatML template inserts when the conversation has none (SmolLM2's does), read
    /// from the first quoted string that starts with `<|im_start|>system`.
    static func defaultSystemTurn(in template: String) -> String? {
        guard template.contains("!= 'system'") || template.contains("!= \"system\""),
              let start = template.range(of: "'<|im_start|>system") ?? template.range(of: "\"<|im_start|>system") else { return nil }
        let quote = template[start.lowerBound]
        var text = ""
        var i = template.index(after: start.lowerBound)
        while i < template.endIndex, template[i] != quote {
            if template[i] == "\\", template.index(after: i) < template.endIndex {
                let next = template[template.index(after: i)]
                text.append(next == "n" ? "\n" : next)
                i = template.index(i, offsetBy: 2)
            } else {
                text.append(template[i])
                i = template.index(after: i)
            }
        }
        guard text.hasPrefix("<|im_start|>system\n"), text.hasSuffix("<|im_end|>\n") else { return nil }
        return String(text.dropFirst("<|im_start|>system\n".count).dropLast("<|im_end|>\n".count))
    }

    /// The conversation as segments; assistant turns (content and end marker) are trainable. With
    /// `addGenerationPrompt` the text ends with the opening of an assistant turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> [TextSegment] {
        var out: [TextSegment] = []
        func fixed(_ s: String) { if !s.isEmpty { out.append(TextSegment(text: s, trainable: false)) } }
        func learned(_ s: String) { out.append(TextSegment(text: s, trainable: true)) }
        switch self {
        case .chatML(let defaultSystem):
            if let defaultSystem, messages.first?.role != "system" { fixed("<|im_start|>system\n\(defaultSystem)<|im_end|>\n") }
            for m in messages {
                fixed("<|im_start|>\(m.role)\n")
                if m.role == "assistant" { learned("\(m.content)<|im_end|>\n") } else { fixed("\(m.content)<|im_end|>\n") }
            }
            if addGenerationPrompt { fixed("<|im_start|>assistant\n") }
        case .llama3:
            fixed("<|begin_of_text|>")
            for m in messages {
                fixed("<|start_header_id|>\(m.role)<|end_header_id|>\n\n")
                let body = m.content.trimmingCharacters(in: .whitespacesAndNewlines) + "<|eot_id|>"
                if m.role == "assistant" { learned(body) } else { fixed(body) }
            }
            if addGenerationPrompt { fixed("<|start_header_id|>assistant<|end_header_id|>\n\n") }
        case .llama2, .mistral:
            var system: String? = nil
            var pendingUser: String? = nil
            for m in messages {
                switch m.role {
                case "system": system = m.content
                case "user":
                    var user = m.content
                    if let s = system, self == .llama2 { user = "<<SYS>>\n\(s)\n<</SYS>>\n\n" + user; system = nil }
                    else if let s = system { user = s + "\n\n" + user; system = nil }
                    pendingUser = user
                    fixed("<s>[INST] \(user) [/INST]")
                default:
                    learned(self == .llama2 ? " \(m.content) </s>" : "\(m.content)</s>")
                    pendingUser = nil
                }
            }
            _ = pendingUser
        }
        return out
    }

    /// Token strings that end an assistant turn (generation stops there).
    public var endOfTurnMarkers: [String] {
        switch self {
        case .chatML: return ["<|im_end|>"]
        case .llama3: return ["<|eot_id|>"]
        case .llama2, .mistral: return ["</s>"]
        }
    }
}
