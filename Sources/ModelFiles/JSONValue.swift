/// A JSON document that keeps object key order and tells integers from floats, with a writer that formats as
/// Python's `json.dumps` does (what transformers, peft and bitsandbytes write), and as compact JSON (safetensors).
public indirect enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y || (x.isNaN && y.isNaN)
        case let (.int(x), .double(y)), let (.double(y), .int(x)): return Double(x) == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            // Objects are equal as maps: key order does not matter.
            guard x.count == y.count else { return false }
            let ym = Dictionary(y, uniquingKeysWith: { _, last in last })
            return x.allSatisfy { k, v in ym[k] == v }
        default: return false
        }
    }

    /// The value under `key` of an object, or nil. Keys are compared by their exact UTF-8 bytes, as JSON readers
    /// elsewhere do (`String`'s `==` would take "é" and "e\u{301}" for one key).
    public subscript(key: String) -> JSONValue? {
        if case .object(let pairs) = self { return pairs.last(where: { $0.0.utf8.elementsEqual(key.utf8) })?.1 }
        return nil
    }

    /// The string, or nil.
    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    /// The integer (or an integral float), or nil.
    public var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9e15: return Int(d)
        default: return nil
        }
    }
    /// The number as a Double, or nil.
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    /// The elements of an array, or nil.
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    /// The key/value pairs of an object, or nil.
    public var objectValue: [(String, JSONValue)]? { if case .object(let o) = self { return o }; return nil }

    /// Sets `key` in an object (replacing it in place, or appending it).
    public mutating func set(_ key: String, _ value: JSONValue) {
        guard case .object(var pairs) = self else { return }
        if let i = pairs.firstIndex(where: { $0.0 == key }) { pairs[i].1 = value } else { pairs.append((key, value)) }
        self = .object(pairs)
    }
}

// MARK: - Parsing

/// Why a JSON text could not be read.
public struct JSONParseError: Error, CustomStringConvertible {
    /// What was wrong.
    public let message: String
    /// Byte offset in the text.
    public let offset: Int
    /// Line of that byte, from 1 (lines end at each LF).
    public let line: Int
    /// Column of that byte within its line, from 1, counted in bytes.
    public let column: Int

    public init(message: String, offset: Int, line: Int = 1, column: Int? = nil) {
        self.message = message
        self.offset = offset
        self.line = line
        self.column = column ?? offset + 1
    }

    /// An error at `offset` in `bytes`, with the line and column worked out from the text.
    init(message: String, offset: Int, in bytes: [UInt8]) {
        let end = min(max(offset, 0), bytes.count)
        var line = 1, lineStart = 0
        for i in 0..<end where bytes[i] == 0x0A { line += 1; lineStart = i + 1 }
        self.init(message: message, offset: offset, line: line, column: end - lineStart + 1)
    }

    public var description: String { "invalid JSON at byte \(offset) (line \(line), column \(column)): \(message)" }
}

extension JSONValue {
    /// Parses a UTF-8 JSON text.
    ///
    /// Lenient where Python's `json.loads` is (NaN, Infinity, lone surrogates), strict where a hostile text could
    /// otherwise trap: a `\u` escape needs exactly four hex digits; a surrogate escape that is not half of a
    /// high-low pair becomes U+FFFD (Python keeps it, but a Swift String cannot hold one); arrays and objects nest at
    /// most 512 deep. Strings must be well-formed UTF-8, as Python's decoding of the bytes requires: an invalid
    /// byte is an error, not a U+FFFD in its place. Each error is a `JSONParseError` naming the byte offset, line and
    /// column.
    public init(parsing bytes: some Collection<UInt8>) throws {
        var parser = JSONParser(bytes: Array(bytes))
        do {
            parser.skipWhitespace()
            self = try parser.parseValue(depth: 0)
            parser.skipWhitespace()
            guard parser.index == parser.bytes.count else { throw parser.error("unexpected text after the value") }
        } catch let error as JSONParseError {
            // Every JSON file of a model folder (config.json, tokenizer.json, an index) may be an LFS pointer.
            guard let note = FileSystem.gitLFSPointerNote(parser.bytes) else { throw error }
            throw JSONParseError(message: error.message + "; " + note, offset: error.offset, line: error.line,
                                 column: error.column)
        }
    }

    /// Parses a JSON string.
    public init(parsing text: String) throws {
        try self.init(parsing: Array(text.utf8))
    }
}

private struct JSONParser {
    let bytes: [UInt8]
    var index = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    func error(_ message: String) -> JSONParseError { JSONParseError(message: message, offset: index, in: bytes) }

    mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x0A, 0x0D, 0x09].contains(bytes[index]) { index += 1 }
    }

    mutating func expect(_ literal: String) throws {
        for b in literal.utf8 {
            guard index < bytes.count, bytes[index] == b else { throw error("expected '\(literal)'") }
            index += 1
        }
    }

    /// Deepest nesting of arrays and objects read (a bound on the recursion, so a hostile text of many `[` is an
    /// error rather than a stack overflow; serde_json's default limit is 128, Python's about 1000).
    static let maximumDepth = 512

    mutating func parseValue(depth: Int) throws -> JSONValue {
        guard depth < Self.maximumDepth else {
            throw error("arrays and objects nested deeper than \(Self.maximumDepth)")
        }
        guard index < bytes.count else { throw error("unexpected end of text") }
        switch bytes[index] {
        case UInt8(ascii: "{"):
            index += 1
            var pairs: [(String, JSONValue)] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return .object(pairs) }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a key") }
                let key = try parseString()
                skipWhitespace()
                try expect(":")
                skipWhitespace()
                pairs.append((key, try parseValue(depth: depth + 1)))
                skipWhitespace()
                guard index < bytes.count else { throw error("unterminated object") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(pairs) }
                throw error("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            while true {
                skipWhitespace()
                items.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard index < bytes.count else { throw error("unterminated array") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
                throw error("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"): try expect("true"); return .bool(true)
        case UInt8(ascii: "f"): try expect("false"); return .bool(false)
        case UInt8(ascii: "n"): try expect("null"); return .null
        case UInt8(ascii: "N"): try expect("NaN"); return .double(.nan)
        case UInt8(ascii: "I"): try expect("Infinity"); return .double(.infinity)
        default:
            return try parseNumber()
        }
    }

    mutating func parseNumber() throws -> JSONValue {
        let start = index
        var isFloat = false
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "I") { try expect("Infinity"); return .double(-.infinity) }
        }
        while index < bytes.count {
            let c = bytes[index]
            if c >= 0x30 && c <= 0x39 || c == UInt8(ascii: "+") || c == UInt8(ascii: "-") { index += 1 }
            else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { isFloat = true; index += 1 }
            else { break }
        }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        guard !text.isEmpty, text != "-" else { throw error("unexpected character") }
        if !isFloat, let i = Int(text) { return .int(i) }
        guard let d = Double(text) else { throw error("bad number '\(text)'") }
        return .double(d)
    }

    mutating func parseString() throws -> String {
        index += 1  // opening quote
        var out: [UInt8] = []
        while true {
            guard index < bytes.count else { throw error("unterminated string") }
            let c = bytes[index]
            index += 1
            if c == UInt8(ascii: "\"") { break }
            if c >= 0x80 { try appendMultiByteCharacter(lead: c, into: &out); continue }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard index < bytes.count else { throw error("unterminated escape") }
            let e = bytes[index]
            index += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"):
                // A high surrogate joins a following low surrogate escape into one scalar. A surrogate that is not
                // part of such a pair (a lone low one, a high one at the end or before anything else, including
                // another high one) is accepted, as Python's json accepts it, but a Swift String cannot hold it:
                // it becomes U+FFFD, and whatever follows is read on its own.
                var scalar = try hex4()
                if scalar >= 0xD800 && scalar < 0xDC00, index + 5 < bytes.count,
                   bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
                    let resume = index
                    index += 2
                    let low = try hex4()
                    if low >= 0xDC00 && low < 0xE000 {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else {
                        index = resume   // not a pair: the second escape is read by itself next
                    }
                }
                let u = Unicode.Scalar(scalar) ?? "\u{FFFD}"
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: out.append(e)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The UTF-8 character whose lead byte `lead` (0x80 or above) was just read, at `index - 1`, appended to `out`.
    /// Anything but a well-formed character is an error at the lead byte's offset: a stray continuation byte, an
    /// overlong form (C0 AF for "/"), an encoded surrogate (ED A0 80), a value past U+10FFFF (F4 90 ..., F5-FF),
    /// a character cut off by another byte or the end of the text. Checked as the string is read, not in a second
    /// pass over the text.
    mutating func appendMultiByteCharacter(lead: UInt8, into out: inout [UInt8]) throws {
        let start = index - 1
        func invalid(_ why: String) -> JSONParseError {
            JSONParseError(message: "invalid UTF-8 in a string: " + why, offset: start, in: bytes)
        }
        var leadText: String { hexByte(lead) }   // only for the messages: not built for each character
        // How many continuation bytes follow, and the range the first of them must lie in (the rest: 80-BF).
        var count = 0, low: UInt8 = 0x80, high: UInt8 = 0xBF
        switch lead {
        case 0x80...0xBF: throw invalid("byte \(leadText) continues no character")
        case 0xC0, 0xC1: throw invalid("byte \(leadText) starts an overlong encoding")
        case 0xC2...0xDF: count = 1
        case 0xE0: count = 2; low = 0xA0
        case 0xED: count = 2; high = 0x9F
        case 0xE1...0xEF: count = 2
        case 0xF0: count = 3; low = 0x90
        case 0xF1...0xF3: count = 3
        case 0xF4: count = 3; high = 0x8F
        default: throw invalid("byte \(leadText) is never part of UTF-8 (it would start a value past U+10FFFF)")
        }
        out.append(lead)
        for k in 0..<count {
            guard index < bytes.count else {
                throw invalid("the \(count + 1)-byte character starting \(leadText) is cut off by the end of the text")
            }
            let b = bytes[index]
            if b < (k == 0 ? low : 0x80) || b > (k == 0 ? high : 0xBF) {
                if k == 0 && b >= 0x80 && b <= 0xBF {
                    throw invalid(lead == 0xED ? "\(leadText) \(hexByte(b)) encodes a surrogate (U+D800-U+DFFF)"
                        : lead == 0xF4 ? "\(leadText) \(hexByte(b)) encodes a value past U+10FFFF"
                        : "\(leadText) \(hexByte(b)) is an overlong encoding")
                }
                throw invalid("the \(count + 1)-byte character starting \(leadText) is cut off by byte "
                              + "\(hexByte(b)) at offset \(index)")
            }
            out.append(b)
            index += 1
        }
    }

    func hexByte(_ b: UInt8) -> String {
        let h = String(b, radix: 16, uppercase: true)
        return "0x" + (h.count < 2 ? "0" : "") + h
    }

    /// Four hexadecimal digits (exactly: no sign, no fewer).
    mutating func hex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error("bad \\u escape: fewer than 4 hex digits before the end") }
        var v: UInt32 = 0
        for b in bytes[index..<index + 4] {
            let digit: UInt8
            switch b {
            case 0x30...0x39: digit = b - 0x30
            case 0x41...0x46: digit = b - 0x41 + 10
            case 0x61...0x66: digit = b - 0x61 + 10
            default: throw error("bad \\u escape: '\(String(decoding: bytes[index..<index + 4], as: UTF8.self))' is " +
                "not 4 hex digits")
            }
            v = v << 4 | UInt32(digit)
        }
        index += 4
        return v
    }
}

// MARK: - Writing

extension JSONValue {
    /// Compact JSON with no spaces, non-ASCII written as UTF-8 (as serde_json writes the safetensors header).
    public func compactText() -> String {
        var out = ""
        write(into: &out, indent: nil, level: 0, sortKeys: false, python: false)
        return out
    }

    /// JSON as Python's `json.dumps(value, indent=indent, sort_keys=sortKeys)` writes it: `", "` and `": "`
    /// separators, floats as Python's repr, non-ASCII escaped as `\uXXXX`.
    public func pythonText(indent: Int? = nil, sortKeys: Bool = false) -> String {
        var out = ""
        write(into: &out, indent: indent, level: 0, sortKeys: sortKeys, python: true)
        return out
    }

    private func write(into out: inout String, indent: Int?, level: Int, sortKeys: Bool, python: Bool) {
        let itemSeparator = python && indent == nil ? ", " : ","
        let keySeparator = python ? ": " : ":"
        func newline(_ l: Int) {
            if let indent { out += "\n" + String(repeating: " ", count: indent * l) }
        }
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d): out += JSONValue.pythonRepr(d)
        case .string(let s): JSONValue.writeString(s, into: &out, asciiOnly: python)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (k, item) in items.enumerated() {
                if k > 0 { out += itemSeparator }
                newline(level + 1)
                item.write(into: &out, indent: indent, level: level + 1, sortKeys: sortKeys, python: python)
            }
            newline(level)
            out += "]"
        case .object(let pairs):
            if pairs.isEmpty { out += "{}"; return }
            let ordered = sortKeys ? pairs.sorted { Array($0.0.utf16).lexicographicallyPrecedes(Array($1.0.utf16)) } : pairs
            out += "{"
            for (k, (key, value)) in ordered.enumerated() {
                if k > 0 { out += itemSeparator }
                newline(level + 1)
                JSONValue.writeString(key, into: &out, asciiOnly: python)
                out += keySeparator
                value.write(into: &out, indent: indent, level: level + 1, sortKeys: sortKeys, python: python)
            }
            newline(level)
            out += "}"
        }
    }

    /// `s` as a JSON string literal (Python's `json.dumps` escapes; `asciiOnly` as its `ensure_ascii`).
    public static func quoted(_ s: String, asciiOnly: Bool = false) -> String {
        var out = ""
        writeString(s, into: &out, asciiOnly: asciiOnly)
        return out
    }

    private static func writeString(_ s: String, into out: inout String, asciiOnly: Bool) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || (asciiOnly && u.value > 0x7E) {
                    if u.value > 0xFFFF {
                        let v = u.value - 0x10000
                        out += hexEscape(0xD800 + (v >> 10)) + hexEscape(0xDC00 + (v & 0x3FF))
                    } else {
                        out += hexEscape(u.value)
                    }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }

    private static func hexEscape(_ v: UInt32) -> String {
        let h = String(v, radix: 16)
        return "\\u" + String(repeating: "0", count: 4 - h.count) + h
    }

    /// A double as Python's `repr` writes it: the shortest digits that round-trip, positional for decimal
    /// exponents from -4 to 15, scientific (`1e-05`, `1.5e+16`) otherwise, and `.0` on integral values.
    public static func pythonRepr(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
        // Swift's description also gives the shortest round-trip digits; re-lay them out Python's way.
        var text = "\(abs(d))"
        var exponent = 0
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exponent = Int(text[text.index(after: e)...])!
            text = String(text[..<e])
        }
        var intPart = text
        var fracPart = ""
        if let dot = text.firstIndex(of: ".") {
            intPart = String(text[..<dot])
            fracPart = String(text[text.index(after: dot)...])
        }
        var digits = intPart + fracPart
        var pointPosition = intPart.count + exponent  // digits before the decimal point
        while digits.hasPrefix("0") && digits.count > 1 { digits.removeFirst(); pointPosition -= 1 }
        while digits.hasSuffix("0") && digits.count > 1 { digits.removeLast() }
        let decimalExponent = pointPosition - 1
        var body: String
        if decimalExponent >= -4 && decimalExponent < 16 {
            if pointPosition <= 0 {
                body = "0." + String(repeating: "0", count: -pointPosition) + digits
            } else if pointPosition >= digits.count {
                body = digits + String(repeating: "0", count: pointPosition - digits.count) + ".0"
            } else {
                let i = digits.index(digits.startIndex, offsetBy: pointPosition)
                body = digits[..<i] + "." + digits[i...]
            }
        } else {
            let mantissa = digits.count == 1 ? digits : String(digits.first!) + "." + digits.dropFirst()
            let sign = decimalExponent < 0 ? "-" : "+"
            let e = abs(decimalExponent)
            body = mantissa + "e" + sign + (e < 10 ? "0" : "") + String(e)
        }
        return (d < 0 ? "-" : "") + body
    }
}
