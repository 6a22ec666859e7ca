/// An expression of a template, with where it starts and how deep its tree is (bounded, so that evaluating it
/// cannot exhaust the stack).
final class JinjaExpr: Sendable {
    enum Kind: Sendable {
        case none, bool(Bool), int(Int), float(Double), string(String)
        case name(String)
        case list([JinjaExpr]), tuple([JinjaExpr]), dict([(JinjaExpr, JinjaExpr)])
        case attribute(JinjaExpr, String)
        case index(JinjaExpr, JinjaExpr)
        case slice(JinjaExpr, JinjaExpr?, JinjaExpr?, JinjaExpr?)
        case unary(String, JinjaExpr)
        case binary(String, JinjaExpr, JinjaExpr)
        case and(JinjaExpr, JinjaExpr), or(JinjaExpr, JinjaExpr), not(JinjaExpr)
        /// `a < b <= c`: the first operand, then each operator with its right operand.
        case compare(JinjaExpr, [(String, JinjaExpr)])
        case call(JinjaExpr, [JinjaExpr], [(String, JinjaExpr)])
        case filter(JinjaExpr, String, [JinjaExpr], [(String, JinjaExpr)])
        case test(JinjaExpr, String, [JinjaExpr], negated: Bool)
        case conditional(then: JinjaExpr, condition: JinjaExpr, otherwise: JinjaExpr?)
    }
    let kind: Kind
    let position: JinjaPosition
    let depth: Int

    init(_ kind: Kind, _ position: JinjaPosition, children: [JinjaExpr?] = []) {
        self.kind = kind
        self.position = position
        depth = 1 + children.reduce(0) { max($0, $1?.depth ?? 0) }
    }
}

/// A statement of a template.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpr)
    case ifChain([(JinjaExpr, [JinjaNode])], otherwise: [JinjaNode])
    case forLoop(targets: [String], iterable: JinjaExpr, condition: JinjaExpr?, body: [JinjaNode],
                 otherwise: [JinjaNode], position: JinjaPosition)
    /// `{% set a = ... %}`, `{% set a, b = ... %}`, or `{% set ns.attr = ... %}` (attribute non-nil).
    case set(targets: [String], attribute: String?, value: JinjaExpr, position: JinjaPosition)
    case setBlock(target: String, body: [JinjaNode])
    case macro(name: String, parameters: [(String, JinjaExpr?)], body: [JinjaNode])
    case loopBreak, loopContinue
}

/// Parses the tokens of a template into statements. Nesting of blocks and of expressions is bounded (blocks below
/// the renderer's call depth, so that every template that parses can render its blocks).
struct JinjaParser {
    static let maximumBlockDepth = 32
    static let maximumExpressionDepth = 96

    private let tokens: [JinjaToken]
    private var k = 0
    private var blockDepth = -1  // the template itself is depth 0
    private var expressionDepth = 0

    static func parse(_ source: String) throws -> [JinjaNode] {
        var parser = JinjaParser(tokens: try JinjaLexer.tokenize(source))
        let (nodes, end) = try parser.parseBody(until: [])
        if let end { throw parser.fail("unexpected {% \(end) %}") }
        return nodes
    }

    private init(tokens: [JinjaToken]) { self.tokens = tokens }

    private var current: JinjaToken { tokens[k] }

    private func fail(_ message: String, at pos: JinjaPosition? = nil) -> JinjaError {
        JinjaError(kind: .syntax, message: message, position: pos ?? current.position)
    }

    private func isSymbol(_ s: String) -> Bool { current.kind == .symbol(s) }
    private func isName(_ s: String) -> Bool { current.kind == .name(s) }

    private mutating func next() -> JinjaToken {
        let t = tokens[k]
        if k < tokens.count - 1 { k += 1 }
        return t
    }

    private mutating func expect(_ s: String) throws {
        guard isSymbol(s) else { throw fail("expected \"\(s)\", found \(describe(current))") }
        k += 1
    }

    private mutating func expectName() throws -> String {
        guard case .name(let n) = current.kind else { throw fail("expected a name, found \(describe(current))") }
        k += 1
        return n
    }

    private mutating func expectKeyword(_ s: String) throws {
        guard isName(s) else { throw fail("expected \"\(s)\", found \(describe(current))") }
        k += 1
    }

    private mutating func expectStatementEnd() throws {
        guard current.kind == .statementEnd else { throw fail("expected %}, found \(describe(current))") }
        k += 1
    }

    private func describe(_ t: JinjaToken) -> String {
        switch t.kind {
        case .text: return "text"
        case .expressionStart: return "{{"
        case .expressionEnd: return "}}"
        case .statementStart: return "{%"
        case .statementEnd: return "%}"
        case .name(let n): return "\"\(n)\""
        case .string: return "a string"
        case .int(let i): return "\(i)"
        case .float(let d): return "\(d)"
        case .symbol(let s): return "\"\(s)\""
        case .end: return "the end of the template"
        }
    }

    // MARK: Statements

    /// Nodes up to one of the `terminators` tags (returned, its name consumed, not its `%}`), or the end.
    private mutating func parseBody(until terminators: Set<String>) throws -> ([JinjaNode], String?) {
        blockDepth += 1
        defer { blockDepth -= 1 }
        guard blockDepth <= Self.maximumBlockDepth else {
            throw JinjaError(kind: .limit, message: "blocks nested deeper than \(Self.maximumBlockDepth)",
                             position: current.position)
        }
        var nodes: [JinjaNode] = []
        while true {
            let token = next()
            switch token.kind {
            case .end:
                if !terminators.isEmpty {
                    throw fail("the template ends before {% \(terminators.sorted().joined(separator: " / ")) %}",
                               at: token.position)
                }
                return (nodes, nil)
            case .text(let s): nodes.append(.text(s))
            case .expressionStart:
                let e = try parseExpression()
                guard current.kind == .expressionEnd else { throw fail("expected }}, found \(describe(current))") }
                k += 1
                nodes.append(.output(e))
            case .statementStart:
                let keywordPosition = current.position
                let keyword = try expectName()
                if terminators.contains(keyword) { return (nodes, keyword) }
                if let node = try parseStatement(keyword, at: keywordPosition) { nodes.append(node) }
            default: throw fail("unexpected \(describe(token))", at: token.position)
            }
        }
    }

    private mutating func parseStatement(_ keyword: String, at pos: JinjaPosition) throws -> JinjaNode? {
        switch keyword {
        case "if":
            var branches: [(JinjaExpr, [JinjaNode])] = []
            var condition = try parseExpression()
            while true {
                try expectStatementEnd()
                let (body, end) = try parseBody(until: ["elif", "else", "endif"])
                branches.append((condition, body))
                if end == "elif" { condition = try parseExpression(); continue }
                if end == "else" {
                    try expectStatementEnd()
                    let (otherwise, _) = try parseBody(until: ["endif"])
                    try expectStatementEnd()
                    return .ifChain(branches, otherwise: otherwise)
                }
                try expectStatementEnd()
                return .ifChain(branches, otherwise: [])
            }
        case "for":
            var targets = [try expectName()]
            while isSymbol(",") { k += 1; targets.append(try expectName()) }
            try expectKeyword("in")
            let iterable = try parseExpression(allowConditional: false)
            var condition: JinjaExpr? = nil
            if isName("if") { k += 1; condition = try parseExpression() }
            if isName("recursive") { throw fail("recursive loops are not supported") }
            try expectStatementEnd()
            let (body, end) = try parseBody(until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if end == "else" {
                try expectStatementEnd()
                (otherwise, _) = try parseBody(until: ["endfor"])
            }
            try expectStatementEnd()
            return .forLoop(targets: targets, iterable: iterable, condition: condition, body: body,
                            otherwise: otherwise, position: pos)
        case "set":
            let first = try expectName()
            if isSymbol(".") {
                k += 1
                let attribute = try expectName()
                try expect("=")
                let value = try parseExpression()
                try expectStatementEnd()
                return .set(targets: [first], attribute: attribute, value: value, position: pos)
            }
            var targets = [first]
            while isSymbol(",") { k += 1; targets.append(try expectName()) }
            if current.kind == .statementEnd, targets.count == 1 {
                k += 1
                let (body, _) = try parseBody(until: ["endset"])
                try expectStatementEnd()
                return .setBlock(target: first, body: body)
            }
            try expect("=")
            let value = try parseTupleOrExpression()
            try expectStatementEnd()
            return .set(targets: targets, attribute: nil, value: value, position: pos)
        case "macro":
            let name = try expectName()
            try expect("(")
            var parameters: [(String, JinjaExpr?)] = []
            while !isSymbol(")") {
                let p = try expectName()
                var value: JinjaExpr? = nil
                if isSymbol("=") { k += 1; value = try parseExpression() }
                parameters.append((p, value))
                if !isSymbol(")") { try expect(",") }
            }
            k += 1
            try expectStatementEnd()
            let (body, _) = try parseBody(until: ["endmacro"])
            try expectStatementEnd()
            return .macro(name: name, parameters: parameters, body: body)
        case "break", "continue":
            try expectStatementEnd()
            return keyword == "break" ? .loopBreak : .loopContinue
        case "generation", "endgeneration":
            // Hugging Face's assistant-mask markers: transparent here (masks come from prefix renders).
            try expectStatementEnd()
            return nil
        default:
            throw fail("unknown tag {% \(keyword) %}", at: pos)
        }
    }

    // MARK: Expressions

    private func node(_ kind: JinjaExpr.Kind, _ pos: JinjaPosition, _ children: [JinjaExpr?]) throws -> JinjaExpr {
        let e = JinjaExpr(kind, pos, children: children)
        guard e.depth <= Self.maximumExpressionDepth else {
            throw JinjaError(kind: .limit, message: "an expression nested deeper than \(Self.maximumExpressionDepth)",
                             position: pos)
        }
        return e
    }

    /// `a, b` as a tuple (in `set`), or one expression.
    private mutating func parseTupleOrExpression() throws -> JinjaExpr {
        let pos = current.position
        let first = try parseExpression()
        guard isSymbol(",") else { return first }
        var items = [first]
        while isSymbol(",") { k += 1; items.append(try parseExpression()) }
        return try node(.tuple(items), pos, items)
    }

    mutating func parseExpression(allowConditional: Bool = true) throws -> JinjaExpr {
        expressionDepth += 1
        defer { expressionDepth -= 1 }
        guard expressionDepth <= Self.maximumExpressionDepth else {
            throw JinjaError(kind: .limit, message: "an expression nested deeper than \(Self.maximumExpressionDepth)",
                             position: current.position)
        }
        let pos = current.position
        let value = try parseOr()
        guard allowConditional, isName("if") else { return value }
        k += 1
        let condition = try parseOr()
        var otherwise: JinjaExpr? = nil
        if isName("else") { k += 1; otherwise = try parseExpression() }
        return try node(.conditional(then: value, condition: condition, otherwise: otherwise), pos,
                        [value, condition, otherwise])
    }

    private mutating func parseOr() throws -> JinjaExpr {
        var left = try parseAnd()
        while isName("or") {
            let pos = next().position
            let right = try parseAnd()
            left = try node(.or(left, right), pos, [left, right])
        }
        return left
    }

    private mutating func parseAnd() throws -> JinjaExpr {
        var left = try parseNot()
        while isName("and") {
            let pos = next().position
            let right = try parseNot()
            left = try node(.and(left, right), pos, [left, right])
        }
        return left
    }

    private mutating func parseNot() throws -> JinjaExpr {
        if isName("not") {
            let pos = next().position
            expressionDepth += 1
            defer { expressionDepth -= 1 }
            guard expressionDepth <= Self.maximumExpressionDepth else {
                throw JinjaError(kind: .limit, message: "too many nested \"not\"", position: pos)
            }
            let operand = try parseNot()
            return try node(.not(operand), pos, [operand])
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> JinjaExpr {
        let pos = current.position
        let first = try parseMath1()
        var rest: [(String, JinjaExpr)] = []
        while true {
            if case .symbol(let s) = current.kind, ["==", "!=", "<", "<=", ">", ">="].contains(s) {
                k += 1
                rest.append((s, try parseMath1()))
            } else if isName("in") {
                k += 1
                rest.append(("in", try parseMath1()))
            } else if isName("not"), k + 1 < tokens.count, tokens[k + 1].kind == .name("in") {
                k += 2
                rest.append(("not in", try parseMath1()))
            } else { break }
        }
        if rest.isEmpty { return first }
        return try node(.compare(first, rest), pos, [first] + rest.map(\.1))
    }

    private mutating func parseBinary(_ ops: [String],
                                      _ operand: (inout JinjaParser) throws -> JinjaExpr) throws -> JinjaExpr {
        var left = try operand(&self)
        while case .symbol(let s) = current.kind, ops.contains(s) {
            let pos = next().position
            let right = try operand(&self)
            left = try node(.binary(s, left, right), pos, [left, right])
        }
        return left
    }

    private mutating func parseMath1() throws -> JinjaExpr { try parseBinary(["+", "-"]) { try $0.parseConcat() } }
    private mutating func parseConcat() throws -> JinjaExpr { try parseBinary(["~"]) { try $0.parseMath2() } }
    private mutating func parseMath2() throws -> JinjaExpr {
        try parseBinary(["*", "/", "//", "%"]) { try $0.parsePow() }
    }
    private mutating func parsePow() throws -> JinjaExpr {
        try parseBinary(["**"]) { try $0.parseUnary(filters: true) }
    }

    private mutating func parseUnary(filters: Bool) throws -> JinjaExpr {
        let pos = current.position
        var e: JinjaExpr
        if isSymbol("-") || isSymbol("+") {
            let op = next()
            guard case .symbol(let s) = op.kind else { throw fail("unreachable") }
            expressionDepth += 1
            defer { expressionDepth -= 1 }
            guard expressionDepth <= Self.maximumExpressionDepth else {
                throw JinjaError(kind: .limit, message: "too many nested signs", position: pos)
            }
            let operand = try parseUnary(filters: false)
            e = try node(.unary(s, operand), pos, [operand])
        } else {
            e = try parsePostfix(try parsePrimary())
        }
        return filters ? try parseFilters(e) : e
    }

    private mutating func parsePrimary() throws -> JinjaExpr {
        let token = next()
        let pos = token.position
        switch token.kind {
        case .name(let n):
            switch n {
            case "true", "True": return try node(.bool(true), pos, [])
            case "false", "False": return try node(.bool(false), pos, [])
            case "none", "None": return try node(.none, pos, [])
            default: return try node(.name(n), pos, [])
            }
        case .string(var s):
            while case .string(let more) = current.kind { s += more; k += 1 }
            return try node(.string(s), pos, [])
        case .int(let i): return try node(.int(i), pos, [])
        case .float(let d): return try node(.float(d), pos, [])
        case .symbol("("):
            if isSymbol(")") { k += 1; return try node(.tuple([]), pos, []) }
            let first = try parseExpression()
            if isSymbol(")") { k += 1; return first }
            var items = [first]
            while isSymbol(",") {
                k += 1
                if isSymbol(")") { break }
                items.append(try parseExpression())
            }
            try expect(")")
            return try node(.tuple(items), pos, items)
        case .symbol("["):
            var items: [JinjaExpr] = []
            while !isSymbol("]") {
                items.append(try parseExpression())
                if !isSymbol("]") { try expect(",") }
            }
            k += 1
            return try node(.list(items), pos, items)
        case .symbol("{"):
            var pairs: [(JinjaExpr, JinjaExpr)] = []
            while !isSymbol("}") {
                let key = try parseExpression()
                try expect(":")
                pairs.append((key, try parseExpression()))
                if !isSymbol("}") { try expect(",") }
            }
            k += 1
            return try node(.dict(pairs), pos, pairs.flatMap { [$0.0, $0.1] })
        default:
            throw fail("expected a value, found \(describe(token))", at: pos)
        }
    }

    private mutating func parsePostfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if isSymbol(".") {
                let pos = next().position
                switch next().kind {
                case .name(let n): e = try node(.attribute(e, n), pos, [e])
                case .int(let i):
                    let index = try node(.int(i), pos, [])
                    e = try node(.index(e, index), pos, [e, index])
                default: throw fail("expected an attribute name after \".\"", at: pos)
                }
            } else if isSymbol("[") {
                let pos = next().position
                e = try parseSubscript(e, pos)
            } else if isSymbol("(") {
                let pos = next().position
                let (args, kwargs) = try parseArguments()
                e = try node(.call(e, args, kwargs), pos, [e] + args + kwargs.map(\.1))
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ target: JinjaExpr, _ pos: JinjaPosition) throws -> JinjaExpr {
        var parts: [JinjaExpr?] = [nil]
        var isSlice = false
        while !isSymbol("]") {
            if isSymbol(":") {
                k += 1
                isSlice = true
                parts.append(nil)
                guard parts.count <= 3 else { throw fail("a slice has at most three parts") }
            } else {
                guard parts[parts.count - 1] == nil else { throw fail("expected \"]\", found \(describe(current))") }
                parts[parts.count - 1] = try parseExpression()
            }
        }
        k += 1
        if !isSlice {
            guard let index = parts[0] else { throw fail("empty subscript", at: pos) }
            return try node(.index(target, index), pos, [target, index])
        }
        while parts.count < 3 { parts.append(nil) }
        return try node(.slice(target, parts[0], parts[1], parts[2]), pos, [target] + parts)
    }

    /// `(a, b, key=value)` after the opening parenthesis.
    private mutating func parseArguments() throws -> ([JinjaExpr], [(String, JinjaExpr)]) {
        var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
        while !isSymbol(")") {
            if case .name(let n) = current.kind, k + 1 < tokens.count, tokens[k + 1].kind == .symbol("=") {
                k += 2
                kwargs.append((n, try parseExpression()))
            } else {
                guard kwargs.isEmpty else { throw fail("a positional argument after a keyword argument") }
                args.append(try parseExpression())
            }
            if !isSymbol(")") { try expect(",") }
        }
        k += 1
        return (args, kwargs)
    }

    private mutating func parseFilters(_ start: JinjaExpr) throws -> JinjaExpr {
        var e = start
        while true {
            if isSymbol("|") {
                let pos = next().position
                let name = try expectName()
                var args: [JinjaExpr] = [], kwargs: [(String, JinjaExpr)] = []
                if isSymbol("(") { k += 1; (args, kwargs) = try parseArguments() }
                e = try node(.filter(e, name, args, kwargs), pos, [e] + args + kwargs.map(\.1))
            } else if isName("is") {
                let pos = next().position
                var negated = false
                if isName("not") { k += 1; negated = true }
                let name = try expectName()
                var args: [JinjaExpr] = []
                if isSymbol("(") {
                    k += 1
                    let (a, kw) = try parseArguments()
                    guard kw.isEmpty else { throw fail("tests take no keyword arguments", at: pos) }
                    args = a
                } else if startsTestArgument() {
                    args = [try parsePostfix(try parsePrimary())]
                }
                e = try node(.test(e, name, args, negated: negated), pos, [e] + args)
            } else {
                return e
            }
        }
    }

    /// Whether a test name is followed by one bare argument (`x is divisibleby 3`, `x is equalto 'a'`).
    private func startsTestArgument() -> Bool {
        switch current.kind {
        case .string, .int, .float: return true
        case .symbol(let s): return s == "[" || s == "{"
        case .name(let n): return !["else", "or", "and", "if", "not", "in", "is"].contains(n)
        default: return false
        }
    }
}
