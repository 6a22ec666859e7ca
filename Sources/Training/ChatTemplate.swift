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
    /// A segment of `text`.
    public init(text: String, trainable: Bool) { self.text = text; self.trainable = trainable }
}

/// Which end-of-turn markers take the loss (axolotl's `train_on_eos`).
public enum TrainOnEOS: String, Sendable, CaseIterable {
    /// The marker ending each trained turn.
    case turn
    /// Only the marker ending the last trained turn.
    case last
    /// Every end-of-turn marker, after untrained turns too.
    case all
    /// None.
    case none
}

/// A model's chat format: its own Jinja `chat_template` (tokenizer_config.json, chat_template.jinja or GGUF's
/// `tokenizer.chat_template`), rendered by `JinjaTemplate` with `messages`, `bos_token`, `eos_token`,
/// `add_generation_prompt` and `tools` = none, as transformers' `apply_chat_template` renders it.
///
/// Which text a turn contributes is found by rendering prefixes of the conversation: turn `i` is what
/// `render(messages[..<i+1])` adds after `render(messages[..<i], add_generation_prompt: role == "assistant")`. For
/// the first turn, and for a template that renders earlier turns differently once more follow (Mistral's moves the
/// system message into the last user turn), the turn starts where the render that ends in an empty turn of that
/// role departs from `render(messages[..<i+1])`.
public struct ChatTemplate: Sendable {
    /// The Jinja source.
    public let source: String
    /// What `bos_token` holds (nil: undefined).
    public let bosToken: String?
    /// What `eos_token` holds (nil: undefined).
    public let eosToken: String?
    let template: JinjaTemplate
    /// The text that ends an assistant turn, found by rendering a probe exchange (nil when the probe fails).
    public let endOfTurnMarker: String?

    /// Parses `source`; throws a `JinjaError` (with line and column) when it is not a template this reads.
    public init(jinja source: String, bosToken: String? = nil, eosToken: String? = nil) throws {
        self.source = source
        self.bosToken = bosToken
        self.eosToken = eosToken
        template = try JinjaTemplate(source)
        endOfTurnMarker = Self.probeEndOfTurn(template, bosToken: bosToken, eosToken: eosToken)
    }

    /// The conversation as the model sees it; with `addGenerationPrompt` it ends with the opening of an assistant
    /// turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        try Self.render(template, messages, addGenerationPrompt, bosToken, eosToken)
    }

    static func render(_ template: JinjaTemplate, _ messages: [ChatMessage], _ addGenerationPrompt: Bool,
                       _ bosToken: String?, _ eosToken: String?) throws -> String {
        try template.render(variables(messages, addGenerationPrompt, bosToken, eosToken))
    }

    static func variables(_ messages: [ChatMessage], _ addGenerationPrompt: Bool, _ bosToken: String?,
                          _ eosToken: String?) -> [String: JinjaValue] {
        var variables: [String: JinjaValue] = [
            "messages": .list(messages.map { .stringDict([("role", $0.role), ("content", $0.content)]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "tools": .none,
        ]
        if let bosToken { variables["bos_token"] = .string(bosToken) }
        if let eosToken { variables["eos_token"] = .string(eosToken) }
        return variables
    }

    /// The most evaluation steps that finding the turns of one conversation may take, all its renders together
    /// (each one is also bounded by `JinjaTemplate.maximumSteps`). The conversation's prefixes are rendered, two or
    /// three per trained turn, so the work grows with the square of its length: one record of 8,000 one-word
    /// messages kept `train` and `eval` busy for minutes. This allows a few hundred turns under a large template.
    public static let maximumSegmentationSteps = 8 * JinjaTemplate.maximumSteps

    /// The steps left to one conversation's renders (`maximumSegmentationSteps` at first).
    struct StepBudget {
        let messageCount: Int
        var remaining = ChatTemplate.maximumSegmentationSteps

        /// Counts a render's steps, and throws once the conversation has taken more than its share.
        mutating func spend(_ steps: Int) throws {
            remaining -= steps
            guard remaining >= 0 else {
                throw JinjaError(kind: .limit, message: "finding the turns of this \(messageCount)-message " +
                    "conversation took more than \(ChatTemplate.maximumSegmentationSteps) template steps (its " +
                    "prefixes are rendered, so the work grows with the square of its length): split it into " +
                    "shorter conversations", position: JinjaPosition(line: 1, column: 1))
            }
        }
    }

    /// One render of a prefix of the conversation being segmented, counted against its budget.
    func render(_ messages: [ChatMessage], addGenerationPrompt: Bool, budget: inout StepBudget) throws -> String {
        try budget.spend(0)   // a budget spent by a render whose error was ignored stops here
        let (text, steps) = try template.renderCountingSteps(
            Self.variables(messages, addGenerationPrompt, bosToken, eosToken))
        try budget.spend(steps)
        return text
    }

    /// What follows the content of an assistant turn, up to the first whitespace (`<|im_end|>`, `<|eot_id|>`).
    static func probeEndOfTurn(_ template: JinjaTemplate, bosToken: String?, eosToken: String?) -> String? {
        let content = "\u{E000}"
        let exchange = [ChatMessage(role: "user", content: "hi"), ChatMessage(role: "assistant", content: content)]
        guard let text = try? render(template, exchange, false, bosToken, eosToken),
              let r = text.range(of: content, options: .backwards) else { return nil }
        let marker = text[r.upperBound...].drop { $0.isWhitespace }.prefix { !$0.isWhitespace }
        return marker.isEmpty ? eosToken : String(marker)
    }

    /// Token strings that end an assistant turn (generation stops there).
    public var endOfTurnMarkers: [String] {
        var markers: [String] = []
        if let endOfTurnMarker { markers.append(endOfTurnMarker) }
        if let eosToken, !markers.contains(eosToken) { markers.append(eosToken) }
        return markers
    }

    /// The conversation rendered, cut into segments: the turns of `rolesToTrain` are trainable, their end-of-turn
    /// marker (and what follows it in the turn) as `trainOnEOS` says.
    public func segments(_ messages: [ChatMessage], rolesToTrain: Set<String> = ["assistant"],
                         trainOnEOS: TrainOnEOS = .turn) throws -> [TextSegment] {
        var budget = StepBudget(messageCount: messages.count)
        let full = Array(try render(messages, addGenerationPrompt: false, budget: &budget).utf8)
        var mask = [Bool](repeating: false, count: full.count)
        let marker = endOfTurnMarker.map { Array($0.utf8) } ?? []
        var markerRanges: [Range<Int>] = []
        for i in messages.indices where rolesToTrain.contains(messages[i].role) {
            guard let turn = try turnRange(messages, i, in: full, budget: &budget) else { continue }
            var eosStart = turn.upperBound
            if !marker.isEmpty, let m = Self.lastOccurrence(of: marker, in: full, within: turn) { eosStart = m }
            for k in turn.lowerBound..<eosStart { mask[k] = true }
            if eosStart < turn.upperBound { markerRanges.append(eosStart..<turn.upperBound) }
        }
        switch trainOnEOS {
        case .turn: for r in markerRanges { for k in r { mask[k] = true } }
        case .last: if let r = markerRanges.last { for k in r { mask[k] = true } }
        case .none: break
        case .all:
            for r in markerRanges { for k in r { mask[k] = true } }
            if !marker.isEmpty {
                var k = 0
                while k + marker.count <= full.count {
                    if full[k] == marker[0], full[k..<(k + marker.count)].elementsEqual(marker) {
                        for j in k..<(k + marker.count) { mask[j] = true }
                        k += marker.count
                    } else { k += 1 }
                }
            }
        }
        var segments: [TextSegment] = []
        var start = 0
        for k in 0...full.count where k == full.count || mask[k] != mask[start] {
            if k > start {
                segments.append(TextSegment(text: String(decoding: full[start..<k], as: UTF8.self),
                                            trainable: mask[start]))
            }
            start = k
        }
        return segments
    }

    /// Where turn `i` lies in `full` (UTF-8 offsets), or nil when it adds no text: what it adds to the render of
    /// the turns before it, as far as `full` has the same text.
    func turnRange(_ messages: [ChatMessage], _ i: Int, in full: [UInt8], budget: inout StepBudget) throws
        -> Range<Int>? {
        let role = messages[i].role
        let upTo = Array(try render(Array(messages[...i]), addGenerationPrompt: false, budget: &budget).utf8)
        var start: Int
        // The first turn has no prefix to render (transformers refuses an empty conversation): it starts where the
        // render ending in an empty turn departs, like a turn whose prefix renders differently.
        if i > 0, let before = try? render(Array(messages[..<i]), addGenerationPrompt: role == "assistant",
                                           budget: &budget),
           upTo.starts(with: before.utf8) {
            start = before.utf8.count
        } else {
            let empty = try render(Array(messages[..<i]) + [ChatMessage(role: role, content: "")],
                                   addGenerationPrompt: false, budget: &budget)
            start = Self.commonPrefix(Array(empty.utf8)[...], upTo[...])
        }
        guard full.starts(with: upTo[..<start]) else {
            throw JinjaError(kind: .runtime, message: "turn \(i + 1) (\(role)) cannot be found in the rendered " +
                "conversation: the template renders the turns before it differently once it is added",
                position: JinjaPosition(line: 1, column: 1))
        }
        var end = start + Self.commonPrefix(upTo[start...], full[start...])
        if end < upTo.count, let marker = endOfTurnMarker.map({ Array($0.utf8) }),
           let k = Self.lastOccurrence(of: marker, in: full, within: start..<end) {
            // The turn renders differently when it is not the last (Phi-3 ends the conversation with EOS): it ends
            // with its end-of-turn marker and the whitespace after it.
            let matched = end
            end = k + marker.count
            while end < matched, [0x20, 0x09, 0x0A, 0x0D].contains(full[end]) { end += 1 }
        }
        return end > start ? start..<end : nil
    }

    /// The length of the common prefix, backed off to a Unicode scalar boundary.
    static func commonPrefix(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Int {
        var n = 0
        while n < a.count, n < b.count, a[a.startIndex + n] == b[b.startIndex + n] { n += 1 }
        while n > 0, n < a.count || n < b.count {
            let next = n < a.count ? a[a.startIndex + n] : b[b.startIndex + n]
            if next & 0xC0 != 0x80 { break }
            n -= 1
        }
        return n
    }

    static func lastOccurrence(of needle: [UInt8], in text: [UInt8], within range: Range<Int>) -> Int? {
        var k = range.upperBound - needle.count
        while k >= range.lowerBound {
            if text[k..<(k + needle.count)].elementsEqual(needle) { return k }
            k -= 1
        }
        return nil
    }
}
