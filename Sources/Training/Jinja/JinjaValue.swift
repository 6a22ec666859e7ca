import ModelFiles

/// A value of the template language, as Python's Jinja sees it: strings index by Unicode scalar, dicts keep their
/// insertion order, `undefined` is Jinja's default `Undefined` (falsy, renders empty, fails when used further).
public enum JinjaValue {
    /// A name that has no value (it carries the name, for messages).
    case undefined(String)
    /// Python's `None`.
    case none
    /// A boolean.
    case bool(Bool)
    /// An integer.
    case int(Int)
    /// A float.
    case float(Double)
    /// A string.
    case string(String)
    /// A list (or tuple), with its nesting depth.
    case list([JinjaValue], depth: Int)
    /// A mapping with string keys in insertion order, with its nesting depth.
    case dict(JinjaDict, depth: Int)
    /// A `namespace()` object: attributes assignable with `{% set ns.attr = ... %}`.
    case namespace(JinjaNamespace)
    /// A function: a built-in (`raise_exception`, a string method bound to its string) or a macro.
    case function(JinjaFunction)

    /// The deepest nesting of lists and dicts a value may have.
    public static let maximumDepth = 64

    /// A list value; throws when it would nest deeper than `maximumDepth`.
    static func makeList(_ items: [JinjaValue], at pos: JinjaPosition) throws -> JinjaValue {
        let depth = 1 + items.reduce(0) { max($0, $1.depth) }
        guard depth <= maximumDepth else {
            throw JinjaError(kind: .limit, message: "a value nested deeper than \(maximumDepth)", position: pos)
        }
        return .list(items, depth: depth)
    }

    /// A dict value; throws when it would nest deeper than `maximumDepth`.
    static func makeDict(_ dict: JinjaDict, at pos: JinjaPosition) throws -> JinjaValue {
        let depth = 1 + dict.entries.values.reduce(0) { max($0, $1.depth) }
        guard depth <= maximumDepth else {
            throw JinjaError(kind: .limit, message: "a value nested deeper than \(maximumDepth)", position: pos)
        }
        return .dict(dict, depth: depth)
    }

    /// A string list (each element a `.string`).
    public static func strings(_ items: [String]) -> JinjaValue { .list(items.map { .string($0) }, depth: 1) }

    /// A dict of string values.
    public static func stringDict(_ pairs: [(String, String)]) -> JinjaValue {
        var d = JinjaDict()
        for (k, v) in pairs { d[k] = .string(v) }
        return .dict(d, depth: 1)
    }

    var depth: Int {
        switch self {
        case .list(_, let d), .dict(_, let d): return d
        default: return 0
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true }; return false }
    /// A list or a dict.
    var isContainer: Bool {
        switch self {
        case .list, .dict: return true
        default: return false
        }
    }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .float(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let l, _): return !l.isEmpty
        case .dict(let d, _): return !d.keys.isEmpty
        case .namespace, .function: return true
        }
    }

    /// The Python type name, for messages.
    var typeName: String {
        switch self {
        case .undefined: return "undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .float: return "float"
        case .string: return "str"
        case .list: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }

    /// Python's `str()`: what `{{ }}` writes (undefined writes nothing).
    var text: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python's `repr()`.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return "\(i)"
        case .float(let d): return JSONValue.pythonRepr(d)
        case .string(let s): return Self.pythonQuoted(s)
        case .list(let l, _): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
        case .dict(let d, _):
            return "{" + d.keys.map { Self.pythonQuoted($0) + ": " + d[$0]!.repr }.joined(separator: ", ") + "}"
        case .namespace(let ns): return "<Namespace \(JinjaValue.dict(ns.attributes, depth: 1).repr)>"
        case .function(let f): return "<function \(f.name)>"
        }
    }

    /// A string as Python's repr quotes it: single quotes unless the text has one and no double quote.
    static func pythonQuoted(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(c) == quote { out += "\\" + String(quote) }
                else if c.value < 0x20 || c.value == 0x7F { out += "\\x" + hex(c.value, 2) }
                else { out.unicodeScalars.append(c) }
            }
        }
        return out + String(quote)
    }

    static func hex(_ v: UInt32, _ width: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }

    /// Python `==` (numbers compare across int, float and bool; undefined equals only undefined).
    func equals(_ other: JinjaValue) -> Bool {
        switch (self, other) {
        case (.undefined, .undefined), (.none, .none): return true
        case (.string(let a), .string(let b)): return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case (.list(let a, _), .list(let b, _)):
            return a.count == b.count && zip(a, b).allSatisfy { $0.equals($1) }
        case (.dict(let a, _), .dict(let b, _)):
            return a.keys.count == b.keys.count && a.keys.allSatisfy { k in
                guard let x = a[k], let y = b[k] else { return false }
                return x.equals(y)
            }
        case (.namespace(let a), .namespace(let b)): return a === b
        default:
            if let x = numeric, let y = other.numeric { return x == y }
            return false
        }
    }

    /// The value as a number (bool counts as 0 or 1, as in Python).
    var numeric: Double? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return Double(i)
        case .float(let d): return d
        default: return nil
        }
    }

    /// The value as an integer when it is an int or bool.
    var integer: Int? {
        switch self {
        case .bool(let b): return b ? 1 : 0
        case .int(let i): return i
        default: return nil
        }
    }
}

/// An ordered mapping of string keys to values.
public struct JinjaDict {
    /// Keys in insertion order.
    public private(set) var keys: [String] = []
    /// The values by key.
    public private(set) var entries: [String: JinjaValue] = [:]
    /// An empty dict.
    public init() {}
    /// The value of `key`; setting a new key appends it.
    public subscript(key: String) -> JinjaValue? {
        get { entries[key] }
        set {
            if entries[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil, entries[key] != nil { keys.removeAll { $0 == key } }
            entries[key] = newValue
        }
    }
}

/// The mutable object `namespace()` makes.
public final class JinjaNamespace {
    var attributes = JinjaDict()
    init() {}
}

/// A callable value.
public struct JinjaFunction {
    let name: String
    let call: ([JinjaValue], [(String, JinjaValue)], JinjaPosition) throws -> JinjaValue
}
