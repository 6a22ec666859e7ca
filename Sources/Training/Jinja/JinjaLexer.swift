/// A place in a template's source: 1-based line and column (columns count Unicode scalars).
public struct JinjaPosition: Equatable, Sendable, CustomStringConvertible {
    /// The line, from 1.
    public var line: Int
    /// The column, from 1.
    public var column: Int
    /// `line L, column C`.
    public var description: String { "line \(line), column \(column)" }
}

/// Why a template could not be parsed or rendered; never a trap.
public struct JinjaError: Error, Equatable, CustomStringConvertible {
    /// What kind of failure.
    public enum Kind: Equatable, Sendable {
        /// The source is not a template this interpreter reads.
        case syntax
        /// Rendering failed: an undefined value used, a type mismatch, an unknown filter.
        case runtime
        /// The template called `raise_exception(message)`.
        case raised
        /// A bound was reached: nesting depth, output size or the number of evaluation steps.
        case limit
    }
    /// What kind of failure.
    public let kind: Kind
    /// The message (for `.raised`, the template's own message).
    public let message: String
    /// Where in the template.
    public let position: JinjaPosition
    /// `chat template, line L, column C: message`.
    public var description: String {
        let what = kind == .raised ? "the chat template raised an exception" : "chat template"
        return "\(what), \(position): \(message)"
    }
}

/// One lexical token of a template.
struct JinjaToken: Equatable {
    enum Kind: Equatable {
        /// Literal text between tags (whitespace control already applied).
        case text(String)
        case expressionStart, expressionEnd, statementStart, statementEnd
        case name(String)
        case string(String)
        case int(Int)
        case float(Double)
        /// An operator or punctuation: `+`, `//`, `==`, `(`, `|`, ...
        case symbol(String)
        case end
    }
    let kind: Kind
    let position: JinjaPosition
}

/// Splits a template into text and tag tokens the way Hugging Face's chat-template environment does: `trim_blocks`
/// (the newline after a block or comment tag is dropped), `lstrip_blocks` (spaces and tabs before a block or comment
/// tag at the start of a line are dropped), `-` and `+` whitespace control, and one trailing newline of the
/// source removed.
struct JinjaLexer {
    private let bytes: [UInt8]
    private var i = 0
    private var line = 1
    private var column = 1
    private var tokens: [JinjaToken] = []
    /// Strip leading whitespace of the next text (after `-%}`), or drop one newline (trim_blocks after `%}`).
    private enum Lead { case keep, stripAll, dropNewline }
    private var lead = Lead.keep

    static func tokenize(_ source: String) throws -> [JinjaToken] {
        var text = Array(source.utf8)
        if text.last == 0x0A { text.removeLast(); if text.last == 0x0D { text.removeLast() } }
        var lexer = JinjaLexer(bytes: text)
        try lexer.run()
        return lexer.tokens
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private var position: JinjaPosition { JinjaPosition(line: line, column: column) }

    private func fail(_ message: String, at pos: JinjaPosition? = nil) -> JinjaError {
        JinjaError(kind: .syntax, message: message, position: pos ?? position)
    }

    private func peek(_ offset: Int = 0) -> UInt8? { i + offset < bytes.count ? bytes[i + offset] : nil }

    private mutating func advance(_ n: Int = 1) {
        for _ in 0..<n where i < bytes.count {
            if bytes[i] == 0x0A { line += 1; column = 1 } else if bytes[i] & 0xC0 != 0x80 { column += 1 }
            i += 1
        }
    }

    private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (0x09...0x0D).contains(b) }

    private static func isDigit(_ b: UInt8) -> Bool { (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) }

    private static func isNameStart(_ b: UInt8) -> Bool {
        b == UInt8(ascii: "_") || (b | 0x20 >= UInt8(ascii: "a") && b | 0x20 <= UInt8(ascii: "z"))
    }

    private mutating func run() throws {
        while i < bytes.count {
            let textStart = i, textPosition = position
            var tagStart = i
            while tagStart < bytes.count {
                if bytes[tagStart] == UInt8(ascii: "{"), tagStart + 1 < bytes.count,
                   [UInt8(ascii: "{"), UInt8(ascii: "%"), UInt8(ascii: "#")].contains(bytes[tagStart + 1]) { break }
                tagStart += 1
            }
            var text = Array(bytes[textStart..<tagStart])
            switch lead {
            case .keep: break
            case .stripAll: text = Array(text.drop(while: Self.isSpace))
            case .dropNewline: if text.first == 0x0A { text.removeFirst() }
            }
            lead = .keep
            advance(tagStart - textStart)
            guard i < bytes.count else { emitText(text, textPosition); break }
            let opener = bytes[i + 1]
            let control = peek(2)
            if control == UInt8(ascii: "-") {
                while let last = text.last, Self.isSpace(last) { text.removeLast() }
            } else if opener != UInt8(ascii: "{") && control != UInt8(ascii: "+") {
                // lstrip_blocks: drop spaces and tabs back to the start of the line when only they precede the tag.
                var k = text.count
                while k > 0, text[k - 1] == 0x20 || text[k - 1] == 0x09 { k -= 1 }
                let atLineStart = k == 0 ? (textStart == 0 || bytes[textStart - 1] == 0x0A) : text[k - 1] == 0x0A
                if atLineStart { text.removeSubrange(k...) }
            }
            emitText(text, textPosition)
            let tagPosition = position
            advance(2)
            if control == UInt8(ascii: "-") || control == UInt8(ascii: "+") { advance() }
            switch opener {
            case UInt8(ascii: "#"): try skipComment(tagPosition)
            case UInt8(ascii: "{"):
                tokens.append(JinjaToken(kind: .expressionStart, position: tagPosition))
                try lexTag(closing: UInt8(ascii: "}"), endKind: .expressionEnd, opened: tagPosition)
            default:
                tokens.append(JinjaToken(kind: .statementStart, position: tagPosition))
                try lexTag(closing: UInt8(ascii: "%"), endKind: .statementEnd, opened: tagPosition)
            }
        }
        tokens.append(JinjaToken(kind: .end, position: position))
    }

    private mutating func emitText(_ text: [UInt8], _ pos: JinjaPosition) {
        if text.isEmpty { return }
        tokens.append(JinjaToken(kind: .text(String(decoding: text, as: UTF8.self)), position: pos))
    }

    private mutating func skipComment(_ opened: JinjaPosition) throws {
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "#"), peek(1) == UInt8(ascii: "}") {
                let before = i > 0 ? bytes[i - 1] : 0
                lead = before == UInt8(ascii: "-") ? .stripAll : before == UInt8(ascii: "+") ? .keep : .dropNewline
                advance(2)
                return
            }
            advance()
        }
        throw fail("the comment opened here is never closed with #}", at: opened)
    }

    /// Lexes expression tokens up to the tag's end (`}}` or `%}`, optionally after `-` or `+`), outside brackets.
    private mutating func lexTag(closing: UInt8, endKind: JinjaToken.Kind, opened: JinjaPosition) throws {
        var brackets = 0
        while true {
            while let b = peek(), Self.isSpace(b) { advance() }
            guard let b = peek() else {
                throw fail("the tag opened here is never closed with \(closing == UInt8(ascii: "}") ? "}}" : "%}")",
                           at: opened)
            }
            let pos = position
            let control = b == UInt8(ascii: "-") || b == UInt8(ascii: "+")
            if brackets == 0, (control ? peek(1) : b) == closing, (control ? peek(2) : peek(1)) == UInt8(ascii: "}") {
                if control { advance() }
                advance(2)
                if endKind == .expressionEnd {
                    lead = b == UInt8(ascii: "-") ? .stripAll : .keep
                } else {
                    lead = b == UInt8(ascii: "-") ? .stripAll : b == UInt8(ascii: "+") ? .keep : .dropNewline
                }
                tokens.append(JinjaToken(kind: endKind, position: pos))
                return
            }
            if b == UInt8(ascii: "'") || b == UInt8(ascii: "\"") {
                tokens.append(JinjaToken(kind: .string(try lexString(quote: b)), position: pos))
            } else if Self.isDigit(b) {
                tokens.append(JinjaToken(kind: try lexNumber(), position: pos))
            } else if Self.isNameStart(b) {
                let start = i
                while let c = peek(), Self.isNameStart(c) || Self.isDigit(c) { advance() }
                tokens.append(JinjaToken(kind: .name(String(decoding: bytes[start..<i], as: UTF8.self)), position: pos))
            } else {
                let two = peek(1).map { String(decoding: [b, $0], as: UTF8.self) } ?? ""
                if ["//", "**", "==", "!=", "<=", ">="].contains(two) {
                    advance(2)
                    tokens.append(JinjaToken(kind: .symbol(two), position: pos))
                } else if "+-*/%~<>=()[]{},.:|".utf8.contains(b) {
                    advance()
                    if "([{".utf8.contains(b) { brackets += 1 }
                    if ")]}".utf8.contains(b) { brackets = max(0, brackets - 1) }
                    tokens.append(JinjaToken(kind: .symbol(String(UnicodeScalar(b))), position: pos))
                } else {
                    let text = String(decoding: bytes[i..<min(bytes.count, i + 4)], as: UTF8.self)
                    throw fail("unexpected character \"\(text.first.map(String.init) ?? "?")\" in a tag")
                }
            }
        }
    }

    /// A quoted string with Python's escapes (`\n`, `\t`, `\\`, `\'`, `\"`, `\xHH`, `\uHHHH`, ...); an unknown
    /// escape keeps its backslash, as Python does.
    private mutating func lexString(quote: UInt8) throws -> String {
        let opened = position
        advance()
        var out: [UInt8] = []
        while true {
            guard let b = peek() else { throw fail("the string opened here is never closed", at: opened) }
            if b == quote { advance(); break }
            if b != UInt8(ascii: "\\") { out.append(b); advance(); continue }
            guard let e = peek(1) else { throw fail("the string opened here is never closed", at: opened) }
            let simple: [UInt8: UInt8] = [UInt8(ascii: "n"): 0x0A, UInt8(ascii: "t"): 0x09, UInt8(ascii: "r"): 0x0D,
                                          UInt8(ascii: "\\"): 0x5C, UInt8(ascii: "'"): 0x27, UInt8(ascii: "\""): 0x22,
                                          UInt8(ascii: "a"): 0x07, UInt8(ascii: "b"): 0x08, UInt8(ascii: "f"): 0x0C,
                                          UInt8(ascii: "v"): 0x0B, UInt8(ascii: "0"): 0x00]
            if let s = simple[e] { out.append(s); advance(2); continue }
            if e == 0x0A { advance(2); continue }
            let digits = e == UInt8(ascii: "x") ? 2 : e == UInt8(ascii: "u") ? 4 : e == UInt8(ascii: "U") ? 8 : 0
            if digits > 0 {
                let hexStart = i + 2
                guard hexStart + digits <= bytes.count,
                      let value = UInt32(String(decoding: bytes[hexStart..<(hexStart + digits)], as: UTF8.self),
                                         radix: 16),
                      let scalar = Unicode.Scalar(value) else {
                    throw fail("a malformed \\\(UnicodeScalar(e)) escape in a string")
                }
                out += Array(String(Character(scalar)).utf8)
                advance(2 + digits)
                continue
            }
            out.append(b); advance()
        }
        return String(decoding: out, as: UTF8.self)
    }

    private mutating func lexNumber() throws -> JinjaToken.Kind {
        let start = i, startPosition = position
        func digits() { while let c = peek(), Self.isDigit(c) || c == UInt8(ascii: "_") { advance() } }
        digits()
        var isFloat = false
        if peek() == UInt8(ascii: "."), let d = peek(1), Self.isDigit(d) {
            isFloat = true; advance(); digits()
        }
        if let e = peek(), e | 0x20 == UInt8(ascii: "e") {
            var k = 1
            if peek(1) == UInt8(ascii: "+") || peek(1) == UInt8(ascii: "-") { k = 2 }
            if let d = peek(k), Self.isDigit(d) { isFloat = true; advance(k); digits() }
        }
        let text = String(decoding: bytes[start..<i].filter { $0 != UInt8(ascii: "_") }, as: UTF8.self)
        if isFloat, let d = Double(text) { return .float(d) }
        if let n = Int(text) { return .int(n) }
        throw fail("the number \(text) does not fit in a 64-bit integer", at: startPosition)
    }
}
