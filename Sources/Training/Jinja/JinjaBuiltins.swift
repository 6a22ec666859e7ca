import Foundation
import ModelFiles

/// Operators, attribute access, filters, tests and methods of the template language, with Python's semantics.
enum JinjaBuiltins {
    static func fail(_ message: String, _ pos: JinjaPosition) -> JinjaError {
        JinjaError(kind: .runtime, message: message, position: pos)
    }

    static func name(_ v: JinjaValue) -> String { if case .undefined(let n) = v { return n }; return "" }

    static func undefinedNote(_ v: JinjaValue) -> String { v.isUndefined ? " ('\(name(v))' is undefined)" : "" }

    static func undefinedError(_ v: JinjaValue, _ pos: JinjaPosition) -> JinjaError {
        fail("'\(name(v))' is undefined", pos)
    }

    /// The most items a list (or a string iterated) may have.
    static let maximumItems = 1 << 20
    /// The most item comparisons one `unique` filter makes.
    static let maximumUniqueComparisons = 1 << 24

    static func checkCount(_ n: Int, _ pos: JinjaPosition) throws {
        guard n <= maximumItems else {
            throw JinjaError(kind: .limit, message: "a list longer than \(maximumItems) items", position: pos)
        }
    }

    static func checkSize(_ n: Int, _ pos: JinjaPosition) throws {
        guard n <= JinjaTemplate.maximumOutputBytes else {
            throw JinjaError(kind: .limit, message: "a value longer than \(JinjaTemplate.maximumOutputBytes)",
                             position: pos)
        }
    }

    /// The items a `for` loop visits: list items, dict keys, string characters; undefined is empty.
    static func iterate(_ v: JinjaValue, _ pos: JinjaPosition) throws -> [JinjaValue] {
        switch v {
        case .undefined: return []
        case .list(let items, _): return items
        case .dict(let d, _): return d.keys.map { .string($0) }
        case .string(let s):
            try checkCount(s.utf8.count, pos)
            return s.unicodeScalars.map { .string(String($0)) }
        default: throw fail("a \(v.typeName) is not iterable", pos)
        }
    }

    static func range(_ args: [JinjaValue], _ pos: JinjaPosition) throws -> JinjaValue {
        let ints = try args.map { a -> Int in
            guard let i = a.integer else { throw fail("range() takes integers", pos) }
            return i
        }
        var (start, stop, stride) = (0, 0, 1)
        switch ints.count {
        case 1: stop = ints[0]
        case 2: (start, stop) = (ints[0], ints[1])
        case 3: (start, stop, stride) = (ints[0], ints[1], ints[2])
        default: throw fail("range() takes 1 to 3 arguments", pos)
        }
        guard stride != 0 else { throw fail("range() step must not be zero", pos) }
        let (span, overflow) = stop.subtractingReportingOverflow(start)
        guard !overflow else { throw JinjaError(kind: .limit, message: "range() too long", position: pos) }
        let count = span == 0 || (span > 0) != (stride > 0) ? 0 : (span.magnitude - 1) / stride.magnitude + 1
        try checkCount(Int(clamping: count), pos)
        return .list((0..<Int(count)).map { .int(start + $0 * stride) })
    }

    // MARK: Access

    /// `x.name`: a dict's method or key, a string's method, a namespace's attribute; undefined when absent. Only
    /// an undefined target fails, as in Jinja.
    static func attribute(_ v: JinjaValue, _ name: String, _ pos: JinjaPosition) throws -> JinjaValue {
        switch v {
        case .undefined: throw undefinedError(v, pos)
        case .dict(let d, _):
            if let m = dictMethod(d, name) { return m }
            return d[name] ?? .undefined(name)
        case .string(let s): return stringMethod(s, name) ?? .undefined(name)
        case .namespace(let ns): return ns.attributes[name] ?? .undefined(name)
        default: return .undefined(name)
        }
    }

    /// `x[i]`: list and string index (negative from the end), dict key; undefined when absent.
    static func item(_ v: JinjaValue, _ index: JinjaValue, _ pos: JinjaPosition) throws -> JinjaValue {
        switch (v, index) {
        case (.undefined, _): throw undefinedError(v, pos)
        case (.list(let items, _), _):
            guard let i = index.integer else { throw fail("list indices must be integers, not \(index.typeName)", pos) }
            let j = i < 0 ? items.count + i : i
            return j >= 0 && j < items.count ? items[j] : .undefined("an item past the end")
        case (.string(let s), _):
            if case .string(let n) = index { return stringMethod(s, n) ?? .undefined(n) }
            guard let i = index.integer else { throw fail("string indices must be integers", pos) }
            let scalars = Array(s.unicodeScalars)
            let j = i < 0 ? scalars.count + i : i
            return j >= 0 && j < scalars.count ? .string(String(scalars[j])) : .undefined("a character past the end")
        case (.dict, .string(let key)):
            guard case .dict(let d, _) = v else { return .undefined(key) }
            return d[key] ?? dictMethod(d, key) ?? .undefined(key)
        case (.namespace, .string(let key)): return try attribute(v, key, pos)
        default: return .undefined("an item")
        }
    }

    /// Python's slice of a list or string.
    static func slice(_ v: JinjaValue, _ a: JinjaValue?, _ b: JinjaValue?, _ c: JinjaValue?,
                      _ pos: JinjaPosition) throws -> JinjaValue {
        func bound(_ x: JinjaValue?) throws -> Int? {
            switch x {
            case nil, .none?, .undefined?: return nil
            case let value?:
                guard let i = value.integer else { throw fail("slice indices must be integers", pos) }
                return i
            }
        }
        let step = try bound(c) ?? 1
        guard step != 0 else { throw fail("slice step cannot be zero", pos) }
        func indices(_ n: Int) throws -> [Int] {
            // Python's PySlice_AdjustIndices.
            func adjust(_ i: Int?, _ fallback: Int) -> Int {
                guard var j = i else { return fallback }
                if j < 0 { j += n; if j < 0 { j = step < 0 ? -1 : 0 } } else if j >= n { j = step < 0 ? n - 1 : n }
                return j
            }
            let start = adjust(try bound(a), step < 0 ? n - 1 : 0)
            let stop = adjust(try bound(b), step < 0 ? -1 : n)
            var out: [Int] = []
            var k = start
            while step > 0 ? k < stop : k > stop {
                out.append(k)
                let (next, overflow) = k.addingReportingOverflow(step)
                if overflow { break }
                k = next
            }
            return out
        }
        switch v {
        case .undefined: throw undefinedError(v, pos)
        case .list(let items, _): return .list(try indices(items.count).map { items[$0] })
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in try indices(scalars.count) { out.append(scalars[i]) }
            return .string(String(out))
        default: throw fail("a \(v.typeName) cannot be sliced", pos)
        }
    }

    // MARK: Operators

    static func arithmetic(_ op: String, _ a: JinjaValue, _ b: JinjaValue, _ pos: JinjaPosition) throws -> JinjaValue {
        if op == "~" {
            let s = a.text + b.text
            try checkSize(s.utf8.count, pos)
            return .string(s)
        }
        if a.isUndefined || b.isUndefined { throw undefinedError(a.isUndefined ? a : b, pos) }
        func overflow() -> JinjaError { JinjaError(kind: .limit, message: "integer overflow in \(op)", position: pos) }
        switch (op, a, b) {
        case ("+", .string(let x), .string(let y)):
            try checkSize(x.utf8.count + y.utf8.count, pos)
            return .string(x + y)
        case ("+", .list(let x, _), .list(let y, _)):
            try checkCount(x.count + y.count, pos)
            return try JinjaValue.makeList(x + y, at: pos)
        case ("*", .string(let s), _), ("*", _, .string(let s)):
            guard let n = (a.integer != nil ? a : b).integer else { break }
            let (total, o) = max(0, n).multipliedReportingOverflow(by: s.utf8.count)
            guard !o else { throw overflow() }
            try checkSize(total, pos)
            return .string(String(repeating: s, count: max(0, n)))
        case ("*", .list(let l, _), _), ("*", _, .list(let l, _)):
            guard let n = (a.integer != nil ? a : b).integer else { break }
            let (total, o) = max(0, n).multipliedReportingOverflow(by: l.count)
            guard !o else { throw overflow() }
            try checkCount(total, pos)
            return try JinjaValue.makeList(Array([[JinjaValue]](repeating: l, count: max(0, n)).joined()), at: pos)
        default: break
        }
        if let x = a.integer, let y = b.integer {
            switch op {
            case "+": let (r, o) = x.addingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "-": let (r, o) = x.subtractingReportingOverflow(y); if o { throw overflow() }; return .int(r)
            case "*": let (r, o) = x.multipliedReportingOverflow(by: y); if o { throw overflow() }; return .int(r)
            case "/":
                guard y != 0 else { throw fail("division by zero", pos) }
                return .float(Double(x) / Double(y))
            case "//", "%":
                guard y != 0 else { throw fail("integer division or modulo by zero", pos) }
                guard !(x == Int.min && y == -1) else { throw overflow() }
                var q = x / y, r = x % y
                if r != 0 && (r < 0) != (y < 0) { q -= 1; r += y }
                return .int(op == "//" ? q : r)
            case "**":
                guard y >= 0 else { return .float(pow(Double(x), Double(y))) }
                var result = 1
                for _ in 0..<min(y, 64) {
                    let (r, o) = result.multipliedReportingOverflow(by: x)
                    if o { throw overflow() }
                    result = r
                }
                if y > 64 && x != 0 && x != 1 && x != -1 { throw overflow() }
                if y > 64 && x == -1 { result = y % 2 == 0 ? 1 : -1 }
                return .int(result)
            default: break
            }
        }
        if let x = a.numeric, let y = b.numeric {
            switch op {
            case "+": return .float(x + y)
            case "-": return .float(x - y)
            case "*": return .float(x * y)
            case "/":
                guard y != 0 else { throw fail("float division by zero", pos) }
                return .float(x / y)
            case "//", "%":
                guard y != 0 else { throw fail("float modulo by zero", pos) }
                let q = (x / y).rounded(.down)
                return .float(op == "//" ? q : x - q * y)
            case "**": return .float(pow(x, y))
            default: break
            }
        }
        throw fail("unsupported operand types for \(op): \(a.typeName) and \(b.typeName)", pos)
    }

    static func compare(_ op: String, _ a: JinjaValue, _ b: JinjaValue, _ pos: JinjaPosition) throws -> Bool {
        switch op {
        case "==": return a.equals(b)
        case "!=": return !a.equals(b)
        case "in": return try contains(b, a, pos)
        case "not in": return !(try contains(b, a, pos))
        default: break
        }
        let order: Int
        if let x = a.numeric, let y = b.numeric {
            order = x < y ? -1 : x > y ? 1 : 0
        } else if case .string(let x) = a, case .string(let y) = b {
            order = x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1
                : x.unicodeScalars.elementsEqual(y.unicodeScalars) ? 0 : 1
        } else {
            if a.isUndefined || b.isUndefined { throw undefinedError(a.isUndefined ? a : b, pos) }
            throw fail("'\(op)' is not supported between \(a.typeName) and \(b.typeName)", pos)
        }
        switch op {
        case "<": return order < 0
        case "<=": return order <= 0
        case ">": return order > 0
        default: return order >= 0
        }
    }

    static func contains(_ container: JinjaValue, _ x: JinjaValue, _ pos: JinjaPosition) throws -> Bool {
        switch container {
        case .undefined: return false
        case .string(let s):
            guard case .string(let needle) = x else {
                throw fail("'in <string>' needs a string, not \(x.typeName)", pos)
            }
            // By scalars in linear time: a 100 KB needle in a 16 MB text took minutes with `contains`.
            return needle.isEmpty
                || !occurrences(of: Array(needle.unicodeScalars), in: Array(s.unicodeScalars), first: true).isEmpty
        case .list(let items, _): return items.contains { $0.equals(x) }
        case .dict(let d, _):
            guard case .string(let key) = x else { return false }
            return d[key] != nil
        default: throw fail("a \(container.typeName) does not support 'in'", pos)
        }
    }

    // MARK: Strings

    /// Python's `str.isspace()` characters.
    static func isSpace(_ c: Unicode.Scalar) -> Bool {
        c.properties.isWhitespace || (0x1C...0x1F).contains(c.value)
    }

    static func strip(_ s: String, _ chars: JinjaValue?, leading: Bool = true, trailing: Bool = true) -> String {
        let set: ((Unicode.Scalar) -> Bool)
        if case .string(let cs)? = chars { let allowed = Set(cs.unicodeScalars); set = { allowed.contains($0) } }
        else { set = isSpace }
        var scalars = Substring(s).unicodeScalars[...]
        if leading { while let f = scalars.first, set(f) { scalars.removeFirst() } }
        if trailing { while let l = scalars.last, set(l) { scalars.removeLast() } }
        return String(String.UnicodeScalarView(scalars))
    }

    /// Python's `str.split(sep=None, maxsplit=-1)`.
    static func split(_ s: String, _ sep: JinjaValue?, _ maxSplit: Int, _ pos: JinjaPosition) throws -> [String] {
        var parts: [String] = []
        if case .string(let separator)? = sep {
            guard !separator.isEmpty else { throw fail("empty separator", pos) }
            // By scalars, in one pass (Foundation's range(of:) from each cut made 8 million cuts take minutes).
            let text = Array(s.unicodeScalars), pattern = Array(separator.unicodeScalars)
            var start = 0
            for match in occurrences(of: pattern, in: text) where maxSplit < 0 || parts.count < maxSplit {
                guard match >= start else { continue }
                parts.append(String(String.UnicodeScalarView(text[start..<match])))
                start = match + pattern.count
            }
            try checkCount(parts.count + 1, pos)
            parts.append(String(String.UnicodeScalarView(text[start...])))
            return parts
        }
        var current = String.UnicodeScalarView()
        var scalars = Substring(s).unicodeScalars[...]
        while let f = scalars.first, isSpace(f) { scalars.removeFirst() }
        while let c = scalars.first {
            scalars.removeFirst()
            if isSpace(c) {
                parts.append(String(current))
                current = String.UnicodeScalarView()
                while let f = scalars.first, isSpace(f) { scalars.removeFirst() }
                if maxSplit >= 0, parts.count >= maxSplit {
                    var tail = String(String.UnicodeScalarView(scalars))
                    tail = strip(tail, nil, leading: false)
                    if !tail.isEmpty { parts.append(tail) }
                    return parts
                }
            } else {
                current.append(c)
            }
        }
        if !current.isEmpty { parts.append(String(current)) }
        return parts
    }

    /// Where `pattern` starts in `text`, overlapping matches included, in linear time (Knuth-Morris-Pratt).
    static func occurrences(of pattern: [Unicode.Scalar], in text: [Unicode.Scalar], first: Bool = false) -> [Int] {
        guard !pattern.isEmpty, pattern.count <= text.count else { return [] }
        var border = [Int](repeating: 0, count: pattern.count)
        var k = 0
        for i in 1..<pattern.count {
            while k > 0 && pattern[i] != pattern[k] { k = border[k - 1] }
            if pattern[i] == pattern[k] { k += 1 }
            border[i] = k
        }
        var found: [Int] = []
        k = 0
        for (i, c) in text.enumerated() {
            while k > 0 && c != pattern[k] { k = border[k - 1] }
            if c == pattern[k] { k += 1 }
            if k == pattern.count {
                found.append(i + 1 - k)
                if first { break }
                k = border[k - 1]
            }
        }
        return found
    }

    /// Python's `str.title()`: a letter after a non-letter is upper case, other letters lower case.
    static func pythonTitle(_ s: String) -> String {
        var out = ""
        var previousCased = false
        for c in s {
            let cased = c.isLetter
            out += cased ? (previousCased ? c.lowercased() : c.uppercased()) : String(c)
            previousCased = cased
        }
        return out
    }

    /// Jinja's `title` filter: words start after whitespace, `-`, or an opening bracket.
    static func jinjaTitle(_ s: String) -> String {
        var out = ""
        var atStart = true
        for c in s {
            if c.isWhitespace || "-({[<".contains(c) { out.append(c); atStart = true; continue }
            out += atStart ? c.uppercased() : c.lowercased()
            atStart = false
        }
        return out
    }

    static func capitalize(_ s: String) -> String {
        guard let f = s.first else { return s }
        return f.uppercased() + s.dropFirst().lowercased()
    }

    static func replace(_ s: String, _ old: String, _ new: String, count: Int, _ pos: JinjaPosition) throws -> String {
        let occurrences = old.isEmpty ? s.unicodeScalars.count + 1 : s.components(separatedBy: old).count - 1
        try checkSize(s.utf8.count + min(occurrences, count < 0 ? occurrences : count) * new.utf8.count, pos)
        if count < 0 { return old.isEmpty ? new + s.unicodeScalars.map { String($0) + new }.joined()
            : s.replacingOccurrences(of: old, with: new) }
        var out = "", rest = Substring(s), done = 0
        while done < count, !old.isEmpty, let r = rest.range(of: old) {
            out += rest[..<r.lowerBound] + new
            rest = rest[r.upperBound...]
            done += 1
        }
        return out + rest
    }

    static func method(_ name: String, _ body: @escaping ([JinjaValue], [(String, JinjaValue)], JinjaPosition) throws
                       -> JinjaValue) -> JinjaValue {
        .function(JinjaFunction(name: name, call: body))
    }

    static func stringMethod(_ s: String, _ name: String) -> JinjaValue? {
        switch name {
        case "strip", "lstrip", "rstrip":
            return method(name) { a, _, _ in
                .string(strip(s, a.first, leading: name != "rstrip", trailing: name != "lstrip"))
            }
        case "upper": return method(name) { _, _, _ in .string(s.uppercased()) }
        case "lower": return method(name) { _, _, _ in .string(s.lowercased()) }
        case "title": return method(name) { _, _, _ in .string(pythonTitle(s)) }
        case "capitalize": return method(name) { _, _, _ in .string(capitalize(s)) }
        case "startswith", "endswith":
            return method(name) { a, _, pos in
                let candidates: [JinjaValue]
                switch a.first {
                case .string?: candidates = [a[0]]
                case .list(let l, _)?: candidates = l
                default: throw fail("\(name)() takes a string or a tuple of strings", pos)
                }
                return .bool(candidates.contains { c in
                    guard case .string(let p) = c else { return false }
                    return name == "startswith" ? s.unicodeScalars.starts(with: p.unicodeScalars)
                        : s.unicodeScalars.reversed().starts(with: p.unicodeScalars.reversed())
                })
            }
        case "split":
            return method(name) { a, kw, pos in
                let sep = kw.first { $0.0 == "sep" }?.1 ?? a.first
                let maxSplit = (kw.first { $0.0 == "maxsplit" }?.1 ?? (a.count > 1 ? a[1] : .int(-1))).integer ?? -1
                return .strings(try split(s, sep, maxSplit, pos))
            }
        case "replace":
            return method(name) { a, _, pos in
                guard a.count >= 2, case .string(let old) = a[0], case .string(let new) = a[1] else {
                    throw fail("replace() takes two strings", pos)
                }
                return .string(try replace(s, old, new, count: a.count > 2 ? a[2].integer ?? -1 : -1, pos))
            }
        case "join":
            return method(name) { a, _, pos in
                let parts = try iterate(a.first ?? .undefined("join"), pos).map(\.text)
                try checkSize(parts.reduce(0) { $0 + $1.utf8.count + s.utf8.count }, pos)
                return .string(parts.joined(separator: s))
            }
        case "find":
            return method(name) { a, _, pos in
                guard case .string(let needle)? = a.first else { throw fail("find() takes a string", pos) }
                if needle.isEmpty { return .int(0) }
                let found = occurrences(of: Array(needle.unicodeScalars), in: Array(s.unicodeScalars), first: true)
                return .int(found.first ?? -1)
            }
        default: return nil
        }
    }

    static func dictMethod(_ d: JinjaDict, _ name: String) -> JinjaValue? {
        switch name {
        case "items":
            return method(name) { _, _, pos in
                try JinjaValue.makeList(try d.keys.map { try JinjaValue.makeList([.string($0), d[$0]!], at: pos) },
                                        at: pos)
            }
        case "keys": return method(name) { _, _, _ in .strings(d.keys) }
        case "values": return method(name) { _, _, pos in try JinjaValue.makeList(d.keys.map { d[$0]! }, at: pos) }
        case "get":
            return method(name) { a, _, pos in
                guard case .string(let key)? = a.first else { throw fail("get() takes a key", pos) }
                return d[key] ?? (a.count > 1 ? a[1] : .none)
            }
        default: return nil
        }
    }

    // MARK: JSON

    /// Python's `json.dumps(v, ensure_ascii=False, indent=indent)` (a negative indent, as Python's, indents by
    /// nothing). An indentation wider than a rendered value may be is a `.limit` error, before anything is made.
    static func json(_ v: JinjaValue, indent: Int?, level: Int = 0, _ pos: JinjaPosition) throws -> String {
        var newline: String? = nil, closing = ""
        if let indent, v.isContainer {
            let width = max(0, indent)
            try checkSize(width, pos)   // bounded, so width · (level + 1) cannot overflow at any nesting depth
            try checkSize(width * (level + 1), pos)
            newline = "\n" + String(repeating: " ", count: width * (level + 1))
            closing = "\n" + String(repeating: " ", count: width * level)
        }
        let separator = indent == nil ? ", " : ","
        switch v {
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return "\(i)"
        case .float(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
            return v.repr
        case .string(let s): return JSONValue.quoted(s)
        case .list(let items, _):
            if items.isEmpty { return "[]" }
            let parts = try items.map { (newline ?? "") + (try json($0, indent: indent, level: level + 1, pos)) }
            return "[" + parts.joined(separator: separator) + closing + "]"
        case .dict(let d, _):
            if d.keys.isEmpty { return "{}" }
            let parts = try d.keys.map {
                (newline ?? "") + (try json(.string($0), indent: nil, pos)) + ": " +
                    (try json(d[$0]!, indent: indent, level: level + 1, pos))
            }
            return "{" + parts.joined(separator: separator) + closing + "}"
        default:
            throw fail("Object of type \(v.typeName) is not JSON serializable" + undefinedNote(v), pos)
        }
    }

    // MARK: Filters

    static func filter(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ kwargs: [(String, JinjaValue)],
                       _ pos: JinjaPosition) throws -> JinjaValue {
        func arg(_ i: Int, _ key: String) -> JinjaValue? {
            kwargs.first { $0.0 == key }?.1 ?? (i < args.count ? args[i] : nil)
        }
        func string() throws -> String {
            if case .string(let s) = v { return s }
            return v.text
        }
        switch name {
        case "trim": return .string(strip(try string(), arg(0, "chars")))
        case "upper": return .string(try string().uppercased())
        case "lower": return .string(try string().lowercased())
        case "title": return .string(jinjaTitle(try string()))
        case "capitalize": return .string(capitalize(try string()))
        case "string": return .string(v.text)
        case "safe": return v
        case "length", "count":
            switch v {
            case .string(let s): return .int(s.unicodeScalars.count)
            case .list(let l, _): return .int(l.count)
            case .dict(let d, _): return .int(d.keys.count)
            case .undefined: return .int(0)
            default: throw fail("a \(v.typeName) has no length", pos)
            }
        case "default", "d":
            let useFalsy = arg(1, "boolean")?.truthy ?? false
            if v.isUndefined || (useFalsy && !v.truthy) { return arg(0, "default_value") ?? .string("") }
            return v
        case "join":
            let separator = arg(0, "d")?.text ?? ""
            var items = try iterate(v, pos)
            if let attribute = arg(1, "attribute") { items = try items.map { try self.item($0, attribute, pos) } }
            let parts = items.map(\.text)
            try checkSize(parts.reduce(0) { $0 + $1.utf8.count + separator.utf8.count }, pos)
            return .string(parts.joined(separator: separator))
        case "first":
            if v.isUndefined { return .undefined("first") }
            return try iterate(v, pos).first ?? .undefined("first")
        case "last":
            if v.isUndefined { throw undefinedError(v, pos) }
            return try iterate(v, pos).last ?? .undefined("last")
        case "list": return try JinjaValue.makeList(try iterate(v, pos), at: pos)
        case "reverse":
            if case .string(let s) = v { return .string(String(s.unicodeScalars.reversed().map(Character.init))) }
            return try JinjaValue.makeList(try iterate(v, pos).reversed(), at: pos)
        case "tojson":
            let indent = arg(0, "indent")?.integer
            let text = try json(v, indent: indent, pos)
            try checkSize(text.utf8.count, pos)
            return .string(text)
        case "int":
            switch v {
            case .int, .bool: return .int(v.integer!)
            case .float(let d): return d.isFinite && abs(d) < 9e18 ? .int(Int(d)) : arg(0, "default") ?? .int(0)
            case .string(let s): return Int(strip(s, nil)).map { .int($0) } ?? arg(0, "default") ?? .int(0)
            default: return arg(0, "default") ?? .int(0)
            }
        case "float":
            if let d = v.numeric { return .float(d) }
            if case .string(let s) = v, let d = Double(strip(s, nil)) { return .float(d) }
            return arg(0, "default") ?? .float(0)
        case "abs":
            if let i = v.integer {
                guard i != Int.min else { throw fail("integer overflow", pos) }
                return .int(abs(i))
            }
            if case .float(let d) = v { return .float(abs(d)) }
            throw fail("abs of a \(v.typeName)", pos)
        case "replace":
            guard case .string(let old)? = arg(0, "old"), case .string(let new)? = arg(1, "new") else {
                throw fail("replace takes two strings", pos)
            }
            return .string(try replace(try string(), old, new, count: arg(2, "count")?.integer ?? -1, pos))
        case "items":
            if v.isUndefined { return .list([]) }
            guard case .dict(let d, _) = v else { throw fail("items of a \(v.typeName)", pos) }
            return try dictMethod(d, "items")!.callFunction(pos)
        case "select", "reject", "selectattr", "rejectattr":
            let byAttribute = name.hasSuffix("attr")
            let testArgs = Array(args.dropFirst(byAttribute ? 1 : 0))
            let kept = try iterate(v, pos).filter { element in
                let subject = byAttribute ? try item(element, args.first ?? .none, pos) : element
                let ok: Bool
                if case .string(let test)? = testArgs.first {
                    ok = try self.test(test, subject, Array(testArgs.dropFirst()), pos)
                } else {
                    ok = subject.truthy
                }
                return ok == name.hasPrefix("select")
            }
            return try JinjaValue.makeList(kept, at: pos)
        case "map":
            let items = try iterate(v, pos)
            if let attribute = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                let fallback = kwargs.first { $0.0 == "default" }?.1
                return try JinjaValue.makeList(try items.map { element in
                    let x = try item(element, attribute, pos)
                    return x.isUndefined ? fallback ?? x : x
                }, at: pos)
            }
            guard case .string(let filterName)? = args.first else { throw fail("map needs a filter or attribute", pos) }
            return try JinjaValue.makeList(try items.map {
                try filter(filterName, $0, Array(args.dropFirst()), [], pos)
            }, at: pos)
        case "unique":
            // Each item is compared with those kept so far: bounded, as a million distinct items took hours.
            var seen: [JinjaValue] = [], comparisons = 0
            for x in try iterate(v, pos) {
                comparisons += seen.count
                guard comparisons <= maximumUniqueComparisons else {
                    throw JinjaError(kind: .limit, message: "unique compares every item with those kept before it: " +
                        "more than \(maximumUniqueComparisons) comparisons", position: pos)
                }
                if !seen.contains(where: { $0.equals(x) }) { seen.append(x) }
            }
            return try JinjaValue.makeList(seen, at: pos)
        default:
            throw fail("no filter named '\(name)'", pos)
        }
    }

    // MARK: Tests

    static func test(_ name: String, _ v: JinjaValue, _ args: [JinjaValue], _ pos: JinjaPosition) throws -> Bool {
        func other() throws -> JinjaValue {
            guard let a = args.first else { throw fail("the test '\(name)' takes an argument", pos) }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "string": if case .string = v { return true }; return false
        case "integer": if case .int = v { return true }; return false
        case "float": if case .float = v { return true }; return false
        case "number": switch v { case .int, .float, .bool: return true; default: return false }
        case "mapping": if case .dict = v { return true }; return false
        case "sequence", "iterable":
            switch v { case .list, .dict, .string: return true; default: return false }
        case "callable": if case .function = v { return true }; return false
        case "odd", "even":
            guard let i = v.integer else { throw fail("\(name) needs an integer", pos) }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = v.integer, let n = try other().integer, n != 0 else {
                throw fail("divisibleby needs integers", pos)
            }
            return n == -1 || i % n == 0
        case "lower": if case .string(let s) = v { return s == s.lowercased() }; return false
        case "upper": if case .string(let s) = v { return s == s.uppercased() }; return false
        case "eq", "equalto", "==": return v.equals(try other())
        case "ne", "!=": return !v.equals(try other())
        case "lt", "lessthan", "<": return try compare("<", v, try other(), pos)
        case "le", "<=": return try compare("<=", v, try other(), pos)
        case "gt", "greaterthan", ">": return try compare(">", v, try other(), pos)
        case "ge", ">=": return try compare(">=", v, try other(), pos)
        case "in": return try contains(try other(), v, pos)
        case "sameas":
            let o = try other()
            switch (v, o) {
            case (.none, .none): return true
            case (.bool(let a), .bool(let b)): return a == b
            case (.namespace(let a), .namespace(let b)): return a === b
            default: return false
            }
        default: throw fail("no test named '\(name)'", pos)
        }
    }
}

extension JinjaValue {
    func callFunction(_ pos: JinjaPosition) throws -> JinjaValue {
        guard case .function(let f) = self else { throw JinjaBuiltins.fail("not callable", pos) }
        return try f.call([], [], pos)
    }
}
