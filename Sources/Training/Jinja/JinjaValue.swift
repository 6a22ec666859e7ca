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
    /// A list (or tuple), with its nesting depth and weight.
    case list([JinjaValue], shape: JinjaShape)
    /// A mapping with string keys in insertion order, with its nesting depth and weight.
    case dict(JinjaDict, shape: JinjaShape)
    /// A `namespace()` object: attributes assignable with `{% set ns.attr = ... %}`.
    case namespace(JinjaNamespace)
    /// A function: a built-in (`raise_exception`, a string method bound to its string) or a macro.
    case function(JinjaFunction)

    /// The deepest nesting of lists and dicts a value may have.
    public static let maximumDepth = 64

    /// The heaviest value a list or dict may be (`JinjaShape.weight`): what printing, comparing or serializing it
    /// visits. Lists of lists share their items, so `[a, a]` built forty times over weighs 2^40 while it holds
    /// only forty lists; `|string` on it never finished.
    public static let maximumWeight = 1 << 24

    /// A list value; throws when it would nest deeper than `maximumDepth` or weigh more than `maximumWeight`.
    static func makeList(_ items: [JinjaValue], at pos: JinjaPosition) throws -> JinjaValue {
        .list(items, shape: try checked(JinjaShape(holding: items), at: pos))
    }

    /// A dict value; throws when it would nest deeper than `maximumDepth` or weigh more than `maximumWeight`.
    static func makeDict(_ dict: JinjaDict, at pos: JinjaPosition) throws -> JinjaValue {
        .dict(dict, shape: try checked(JinjaShape(holding: dict.entries.values), at: pos))
    }

    static func checked(_ shape: JinjaShape, at pos: JinjaPosition) throws -> JinjaShape {
        guard shape.depth <= maximumDepth else {
            throw JinjaError(kind: .limit, message: "a value nested deeper than \(maximumDepth)", position: pos)
        }
        guard shape.weight <= maximumWeight else {
            throw JinjaError(kind: .limit, message: "a value of weight \(shape.weight), more than " +
                "\(maximumWeight) (each item counts once for every place it appears, a string once for every " +
                "\(JinjaShape.bytesPerUnit) bytes)", position: pos)
        }
        return shape
    }

    /// A string list (each element a `.string`).
    public static func strings(_ items: [String]) -> JinjaValue {
        let values = items.map { JinjaValue.string($0) }
        return .list(values, shape: JinjaShape(holding: values))
    }

    /// A list of `items` (depth and weight worked out, not checked).
    public static func list(_ items: [JinjaValue]) -> JinjaValue { .list(items, shape: JinjaShape(holding: items)) }

    /// A dict of string values.
    public static func stringDict(_ pairs: [(String, String)]) -> JinjaValue {
        var d = JinjaDict()
        for (k, v) in pairs { d[k] = .string(v) }
        return .dict(d, shape: JinjaShape(holding: d.entries.values))
    }

    var depth: Int {
        switch self {
        case .list(_, let s), .dict(_, let s): return s.depth
        default: return 0
        }
    }

    /// What walking the whole value costs, in `JinjaShape` units.
    var weight: Int {
        switch self {
        case .list(_, let s), .dict(_, let s): return s.weight
        case .string(let s): return 1 + s.utf8.count / JinjaShape.bytesPerUnit
        default: return 1
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
        case .namespace(let ns):
            return "<Namespace \(JinjaValue.dict(ns.attributes, shape: JinjaShape(depth: 1, weight: 1)).repr)>"
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
/// How deep a list or dict nests and how heavy it is: its weight counts every value reached by walking it (items
/// shared between places counted once per place), each string as one unit per `bytesPerUnit` bytes.
public struct JinjaShape: Equatable {
    var depth: Int
    var weight: Int
    static let bytesPerUnit = 64

    init(depth: Int, weight: Int) { self.depth = depth; self.weight = weight }

    /// The shape of a container of `items` (the weight saturates instead of overflowing).
    init<S: Sequence>(holding items: S) where S.Element == JinjaValue {
        var depth = 0, weight = 1
        for item in items {
            depth = max(depth, item.depth)
            weight = weight.addingReportingOverflow(item.weight).overflow ? Int.max : weight + item.weight
        }
        self.depth = depth + 1
        self.weight = weight
    }
}

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
