import Foundation
import ModelFiles
import Tokenizers

/// How records become training examples.
public struct DatasetOptions: Sendable {
    /// Field holding the prompt of instruction records (default: `instruction` (+ `input`), or `prompt`).
    public var promptField: String? = nil
    /// Field holding the completion (default: `output`, or `completion`).
    public var completionField: String? = nil
    /// Field holding plain text to train on (TRL's `dataset_text_field`, e.g. english_quotes' `quote`); default `text`.
    public var textField: String? = nil
    /// Take the loss on prompts too (default: completions / assistant turns only).
    public var trainOnInputs = false
    /// Cut examples to this many tokens.
    public var maxSeqLength = 512
    /// Concatenate examples and cut the stream into full `maxSeqLength` blocks.
    public var packing = false
    /// The model's chat format; instruction records are rendered as a user/assistant exchange with it.
    public var chatTemplate: ChatTemplate? = nil
    /// Roles whose chat turns take the loss (axolotl's `roles_to_train`).
    public var rolesToTrain: Set<String> = ["assistant"]
    /// Which end-of-turn markers take the loss (axolotl's `train_on_eos`).
    public var trainOnEOS = TrainOnEOS.turn
    /// Why the model's chat template could not be parsed, for the message when a chat record needs it.
    public var chatTemplateError: String? = nil
    /// Defaults as above.
    public init() {}
}

/// Reads text data and turns it into token ids and labels.
///
/// Files: JSONL (a JSON object a line), a JSON array of objects, or plain text (any file that is neither: the whole
/// text is one stream, cut into `maxSeqLength` blocks). Records: pre-tokenized (`input_ids`, optional `labels`),
/// chat (`messages`: [{role, content}], or ShareGPT's `conversations`: [{from, value}]), instruction
/// (`promptField`/`completionField`, or `instruction`/`input`/`output`, or `prompt`/`completion`), or plain `text`.
public enum TextDataset {
    /// All examples of `path` (examples that truncation leaves nothing to learn are dropped). Without a tokenizer
    /// only pre-tokenized records can be read; ids are checked against `vocabularySize`.
    /// The memory a data file takes once loaded, per byte of the file (a bound, for the size check).
    static let memoryPerFileByte = 8

    public static func load(path: String, tokenizer: Tokenizer?, vocabularySize: Int,
                            options: DatasetOptions) throws -> [TokenizedExample] {
        let bytes: [UInt8]
        // A data set is read whole; its records, tokens and labels take several times the file's size beside it.
        let limit = max(FileSystem.allocatableBytes / Self.memoryPerFileByte, 1 << 20)
        let size = try InputFile.requireRegular(path, what: "the data file")
        guard size <= limit else {
            throw DatasetError(path: path, "is \(size) bytes: data files are read into memory whole (about "
                + "\(Self.memoryPerFileByte) bytes for each byte of the file, with its records and tokens), and "
                + "this process may allocate \(FileSystem.allocatableBytes); at most \(limit) bytes are read: split it")
        }
        do { bytes = try FileSystem.readBytes(path) } catch {
            throw DatasetError(path: path, "cannot be read (\(error))")
        }
        guard options.maxSeqLength > 0 else {
            throw DatasetError(path: path, "the maximum sequence length must be positive, found " +
                "\(options.maxSeqLength)")
        }
        guard vocabularySize > 0 else { throw DatasetError(path: path, "the vocabulary is empty") }
        let records = try parseRecords(bytes, path: path)
        var examples: [TokenizedExample] = []
        var cutBeforeTheirTargets = 0   // records whose every trained token lies past --max-seq-length
        switch records {
        case .text(let text):
            guard let tokenizer else {
                throw DatasetError(path: path, "plain text needs a tokenizer, and the model has none")
            }
            let ids = tokenizer.encode(text, addSpecialTokens: tokenizer.addsBOS)
            if let bad = ids.first(where: { $0 < 0 || $0 >= vocabularySize }) {
                throw DatasetError(path: path, "the tokenizer gives token id \(bad), outside the model's " +
                    "vocabulary [0, \(vocabularySize))")
            }
            let block = max(2, options.maxSeqLength)
            for start in stride(from: 0, to: ids.count - 1, by: block) {
                let chunk = Array(ids[start..<min(ids.count, start + block)])
                if chunk.count >= 2 { examples.append(TokenizedExample(inputIds: chunk, labels: chunk)) }
            }
        case .json(let items):
            for (line, record) in items {
                let segments = try self.segments(of: record, options: options, tokenizer: tokenizer, path: path,
                                                 line: line)
                var ids: [Int] = [], labels: [Int] = []
                switch segments {
                case .tokens(let i, let l): ids = i; labels = l
                case .text(let parts), .chat(let parts):
                    guard let tokenizer else {
                        throw DatasetError(path: path, line: line, "text records need a tokenizer, and the model has " +
                            "none (use pre-tokenized input_ids)")
                    }
                    // By bytes, as the tokenizer matches added tokens: `hasPrefix` compares characters, and a text
                    // starting "<s>" + U+0301 does not start with the character ">" (BOS was put in twice).
                    let bosText = tokenizer.bosTokenId.flatMap { tokenizer.token(forId: $0) } ?? "\u{0}"
                    let startsWithBOS = parts.first?.text.utf8.starts(with: bosText.utf8) ?? false
                    if tokenizer.addsBOS, let bos = tokenizer.bosTokenId, !startsWithBOS {
                        ids.append(bos); labels.append(options.trainOnInputs ? bos : -100)
                    }
                    if case .chat = segments {
                        let (piece, trainable) = tokenize(parts, with: tokenizer)
                        ids += piece
                        labels += zip(piece, trainable).map { $1 || options.trainOnInputs ? $0 : -100 }
                    } else {
                        for part in parts {
                            let piece = tokenizer.encode(part.text, addSpecialTokens: false)
                            ids += piece
                            labels += part.trainable || options.trainOnInputs ? piece
                                : [Int](repeating: -100, count: piece.count)
                        }
                    }
                }
                for id in ids where id < 0 || id >= vocabularySize {
                    throw DatasetError(path: path, line: line, "token id \(id) is outside the vocabulary [0, " +
                        "\(vocabularySize))")
                }
                // Labels index the logits: each is -100 (ignored) or a token of the vocabulary.
                for label in labels where label != -100 && (label < 0 || label >= vocabularySize) {
                    throw DatasetError(path: path, line: line, "label \(label) is neither -100 nor a token id " +
                        "in [0, \(vocabularySize))")
                }
                if !options.packing && ids.count > options.maxSeqLength {
                    if labels.dropFirst().contains(where: { $0 != -100 }),
                       !labels.prefix(options.maxSeqLength).dropFirst().contains(where: { $0 != -100 }) {
                        cutBeforeTheirTargets += 1
                    }
                    ids = Array(ids.prefix(options.maxSeqLength)); labels = Array(labels.prefix(options.maxSeqLength))
                }
                guard ids.count >= 2, labels.dropFirst().contains(where: { $0 != -100 }) else { continue }
                examples.append(TokenizedExample(inputIds: ids, labels: labels))
            }
        }
        // Prompts longer than --max-seq-length left no trained token: the message used to blame the records alone.
        guard !examples.isEmpty || cutBeforeTheirTargets == 0 else {
            let which = cutBeforeTheirTargets == 1 ? "the record" : "each of the \(cutBeforeTheirTargets) records"
            throw DatasetError(path: path, "no usable examples: cut to \(options.maxSeqLength) tokens "
                               + "(--max-seq-length, at most the model's context), \(which) loses every trained "
                               + "token (raise --max-seq-length)")
        }
        guard !examples.isEmpty else {
            throw DatasetError(path: path, "no usable examples: every record has fewer than 2 tokens or no token "
                               + "that takes the loss")
        }
        if options.packing {
            let tokens = examples.reduce(0) { $0 + $1.inputIds.count }
            examples = pack(examples, length: options.maxSeqLength)
            guard !examples.isEmpty else {
                throw DatasetError(path: path, "no usable examples: packing cuts full blocks of --max-seq-length "
                                   + "\(options.maxSeqLength) tokens, and the data holds \(tokens) tokens")
            }
        }
        return examples
    }

    /// Concatenates examples and cuts full blocks of `length` tokens (the remainder is dropped, as TRL's packing
    /// does), without contamination: each token's position restarts with its document (so attention stays within
    /// it, and RoPE restarts), and a document's first token is not a target of the previous document's last.
    public static func pack(_ examples: [TokenizedExample], length: Int) -> [TokenizedExample] {
        var ids: [Int] = [], labels: [Int] = [], starts: [Bool] = []
        for e in examples {
            ids += e.inputIds; labels += e.labels
            starts += e.inputIds.indices.map { $0 == 0 }
        }
        return stride(from: 0, to: ids.count - length + 1, by: length).map { first in
            var blockLabels = Array(labels[first..<(first + length)]), positions: [Int] = []
            for t in 0..<length {
                let start = starts[first + t] || t == 0   // a block starts a document (the rest of one cut short)
                positions.append(start ? 0 : positions[t - 1] + 1)
                if starts[first + t] && t > 0 { blockLabels[t] = -100 }
            }
            return TokenizedExample(inputIds: Array(ids[first..<(first + length)]), labels: blockLabels,
                                    positions: positions)
        }
    }

    enum Records { case text(String), json([(Int, JSONValue)]) }

    static func parseRecords(_ file: [UInt8], path: String) throws -> Records {
        // A UTF-8 byte order mark (what some editors write first) is no part of the text: with it, a JSONL file was
        // taken for plain text and trained on with its braces and keys.
        let bytes = file.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(file.dropFirst(3)) : file
        // A pointer left by a clone without git-lfs was read as plain text and trained on.
        if let note = FileSystem.gitLFSPointerNote(bytes) { throw DatasetError(path: path, note) }
        guard let firstNonSpace = bytes.first(where: { ![0x20, 0x0A, 0x0D, 0x09].contains($0) }) else {
            // Nothing but white space: no records (it was trained on as a text of spaces and newlines).
            throw DatasetError(path: path, "holds no examples: the file is empty or white space only")
        }
        if firstNonSpace == UInt8(ascii: "[") {
            guard let array = (try? JSONValue(parsing: bytes))?.arrayValue else {
                throw DatasetError(path: path, "starts like a JSON array but is not valid JSON")
            }
            return .json(array.enumerated().map { ($0.offset + 1, $0.element) })
        }
        if firstNonSpace == UInt8(ascii: "{") {
            var items: [(Int, JSONValue)] = []
            for (n, line) in bytes.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
                if line.allSatisfy({ [0x20, 0x0D, 0x09].contains($0) }) { continue }
                do { items.append((n + 1, try JSONValue(parsing: line))) } catch let error as JSONParseError {
                    // JSON skips a CR as white space, so a file whose lines end in a lone CR (classic Mac OS) is
                    // one line, failing at the second record.
                    let lone = error.offset > 0 && line[line.startIndex + error.offset - 1] == 0x0D
                    throw DatasetError(path: path, line: n + 1, "\(error)" + (lone ? " (after a carriage return "
                        + "that ends no line: lines end with LF or CRLF here, not a lone CR; convert the file)" : ""))
                }
            }
            return .json(items)
        }
        // Plain text must be UTF-8, as the JSON reader requires of its strings: a binary or compressed file (say
        // data.jsonl.gz) was trained on as text, its bytes each turned into U+FFFD.
        if bytes.starts(with: [0x1F, 0x8B]) {
            throw DatasetError(path: path, "is gzip-compressed (it starts with bytes 0x1F 0x8B): decompress it first")
        }
        if let at = firstInvalidUTF8(bytes) {
            let line = bytes[..<at].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 }
            let hex = String(bytes[at], radix: 16, uppercase: true)
            throw DatasetError(path: path, line: line, "plain text that is not UTF-8: byte 0x"
                + (hex.count < 2 ? "0" : "") + hex + " at offset \(at) of the file; save it as UTF-8 (a binary "
                + "file is no training data)")
        }
        return .text(String(decoding: bytes, as: UTF8.self))
    }

    /// The offset of the first byte of `bytes` that is not part of well-formed UTF-8, or nil when all of it is.
    public static func firstInvalidUTF8(_ bytes: [UInt8]) -> Int? {
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        var offset = 0
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar): offset += UTF8.width(scalar)
            case .emptyInput: return nil
            case .error: return offset
            }
        }
    }

    /// Pre-tokenized ids and labels; text pieces tokenized one by one; or a rendered conversation, tokenized whole.
    enum Segments { case tokens([Int], [Int]), text([TextSegment]), chat([TextSegment]) }

    /// The token ids of the segments' text, tokenized as one text (as `apply_chat_template` does), and whether each
    /// token is trainable: a token is when any of its bytes lies in a trainable segment.
    public static func tokenize(_ segments: [TextSegment],
                                with tokenizer: Tokenizer) -> (ids: [Int], trainable: [Bool]) {
        var text = "", byteIsTrainable: [Bool] = []
        for s in segments {
            text += s.text
            byteIsTrainable += [Bool](repeating: s.trainable, count: s.text.utf8.count)
        }
        let ids = tokenizer.encode(text, addSpecialTokens: false)
        var start = 0
        let trainable = tokenizer.byteEnds(of: ids).map { end -> Bool in
            let a = min(start, byteIsTrainable.count), b = min(max(end, a), byteIsTrainable.count)
            start = end
            return byteIsTrainable[a..<b].contains(true)
        }
        return (ids, trainable)
    }

    static func segments(of record: JSONValue, options: DatasetOptions, tokenizer: Tokenizer?, path: String,
                         line: Int) throws -> Segments {
        func fail(_ why: String) -> DatasetError { DatasetError(path: path, line: line, why) }
        guard record.objectValue != nil else { throw fail("a record must be a JSON object") }
        if let ids = record["input_ids"]?.arrayValue {
            let i = try ids.map { v -> Int in guard let x = v.intValue else { throw fail("input_ids must be integers") }; return x }
            var l = i
            if let labels = record["labels"]?.arrayValue {
                guard labels.count == i.count else { throw fail("\"labels\" has \(labels.count) entries, \"input_ids\" \(i.count)") }
                l = try labels.map { v -> Int in
                    guard let x = v.intValue, x == -100 || x >= 0 else { throw fail("label \(v.compactText()) is neither -100 nor a token id") }
                    return x
                }
            }
            return .tokens(i, l)
        }
        if let field = options.textField {
            guard let text = record[field]?.stringValue else {
                throw fail("no string field \"\(field)\" (--dataset-text-field)")
            }
            let eos = tokenizer?.eosTokenId.flatMap { tokenizer?.token(forId: $0) } ?? ""
            return .text([TextSegment(text: text + eos, trainable: true)])
        }
        if let turns = record["conversations"]?.arrayValue {   // ShareGPT: [{"from": "human" | "gpt" | ..., "value"}]
            guard let template = options.chatTemplate else {
                throw fail(noTemplate(options))
            }
            let roles = ["human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "chatgpt": "assistant",
                         "model": "assistant", "system": "system"]
            let chat = try turns.map { m -> ChatMessage in
                guard let from = m["from"]?.stringValue, let value = m["value"]?.stringValue else {
                    throw fail("each ShareGPT turn needs \"from\" and \"value\" strings")
                }
                guard let role = roles[from] else {
                    throw fail("ShareGPT turn from \"\(from)\": use human, gpt or system (or user, assistant)")
                }
                return ChatMessage(role: role, content: value)
            }
            return .chat(try chatSegments(template, chat, options, fail: fail))
        }
        if let messages = record["messages"]?.arrayValue {
            guard let template = options.chatTemplate else {
                throw fail(noTemplate(options))
            }
            let chat = try messages.map { m -> ChatMessage in
                guard let role = m["role"]?.stringValue, let content = m["content"]?.stringValue else {
                    throw fail("each message needs \"role\" and \"content\" strings")
                }
                return ChatMessage(role: role, content: content)
            }
            return .chat(try chatSegments(template, chat, options, fail: fail))
        }
        if let (prompt, completion) = try instruction(record, options: options, fail: fail) {
            if let template = options.chatTemplate {
                let exchange = [ChatMessage(role: "user", content: prompt),
                                ChatMessage(role: "assistant", content: completion)]
                return .chat(try chatSegments(template, exchange, options, fail: fail))
            }
            let eos = tokenizer?.eosTokenId.flatMap { tokenizer?.token(forId: $0) } ?? ""
            return .text([TextSegment(text: prompt + "\n", trainable: false), TextSegment(text: completion + eos, trainable: true)])
        }
        if let text = record["text"]?.stringValue {
            let eos = tokenizer?.eosTokenId.flatMap { tokenizer?.token(forId: $0) } ?? ""
            return .text([TextSegment(text: text + eos, trainable: true)])
        }
        throw fail("no input_ids, messages, text, or prompt/completion fields (use --prompt-field and --completion-field)")
    }

    static func noTemplate(_ options: DatasetOptions) -> String {
        "chat records need a chat template; the model has none" +
            (options.chatTemplateError.map { " that parses: \($0)" } ?? "")
    }

    /// The conversation rendered by the model's template, a template error named with the record's place.
    static func chatSegments(_ template: ChatTemplate, _ chat: [ChatMessage], _ options: DatasetOptions,
                             fail: (String) -> DatasetError) throws -> [TextSegment] {
        do {
            return try template.segments(chat, rolesToTrain: options.rolesToTrain, trainOnEOS: options.trainOnEOS)
        } catch let error as JinjaError {
            throw fail("\(error)")
        }
    }

    /// The prompt and completion of an instruction record, or nil when it is not one.
    static func instruction(_ r: JSONValue, options: DatasetOptions, fail: (String) -> DatasetError) throws -> (String, String)? {
        if let p = options.promptField, let c = options.completionField {
            guard let prompt = r[p]?.stringValue, let completion = r[c]?.stringValue else {
                throw fail("missing string fields \"\(p)\" and \"\(c)\"")
            }
            return (prompt, completion)
        }
        if let instruction = r["instruction"]?.stringValue, let output = r["output"]?.stringValue {
            let input = r["input"]?.stringValue ?? ""
            return (input.isEmpty ? instruction : instruction + "\n\n" + input, output)
        }
        if let prompt = r["prompt"]?.stringValue, let completion = r["completion"]?.stringValue { return (prompt, completion) }
        return nil
    }
}
