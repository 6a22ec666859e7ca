import Foundation

/// A parsed Jinja template (the subset chat templates use), rendered the way Hugging Face's chat-template
/// environment renders it: `trim_blocks` and `lstrip_blocks` on, loop controls, Jinja's default `Undefined`,
/// `raise_exception(message)`, and `tojson` without ASCII escaping. Rendering is bounded (nesting, steps, output
/// size), so a hostile template throws a `JinjaError` and never traps.
public struct JinjaTemplate: Sendable {
    /// The largest template source accepted.
    public static let maximumSourceBytes = 1 << 20
    /// The most text one render may produce (and the longest string or list it may build).
    public static let maximumOutputBytes = 1 << 24
    /// The most evaluation steps (expressions and statements) one render may take: a chat template takes a few
    /// dozen a message, so this allows conversations of thousands of messages. It was 2,000,000, which three
    /// nested loops of empty bodies reached only after 20 s of a release build (a hang to a fuzzer).
    public static let maximumSteps = 250_000
    /// The deepest nesting of macro calls and blocks while rendering.
    public static let maximumCallDepth = 48
    /// The deepest nesting of expression evaluations, macro calls included (bounds the stack a render uses).
    public static let maximumEvaluationDepth = 256

    let nodes: [JinjaNode]

    /// Parses `source`; throws a `.syntax` (or `.limit`) `JinjaError` with the position of the problem.
    public init(_ source: String) throws {
        guard source.utf8.count <= Self.maximumSourceBytes else {
            throw JinjaError(kind: .limit, message: "the template is \(source.utf8.count) bytes; at most " +
                "\(Self.maximumSourceBytes) are read", position: JinjaPosition(line: 1, column: 1))
        }
        nodes = try JinjaParser.parse(source)
    }

    /// The text of the template with `variables` defined (anything else is undefined), within `maximumSteps`
    /// evaluation steps and `maximumOutputBytes` of output.
    public func render(_ variables: [String: JinjaValue], maximumSteps: Int = Self.maximumSteps,
                       maximumOutputBytes: Int = Self.maximumOutputBytes) throws -> String {
        try renderCountingSteps(variables, maximumSteps: maximumSteps, maximumOutputBytes: maximumOutputBytes).text
    }

    /// `render`, with the number of evaluation steps the render took (for a caller that bounds the work of
    /// several renders together).
    public func renderCountingSteps(_ variables: [String: JinjaValue], maximumSteps: Int = Self.maximumSteps,
                                    maximumOutputBytes: Int = Self.maximumOutputBytes) throws
        -> (text: String, steps: Int) {
        let renderer = JinjaRenderer(globals: variables, maximumSteps: maximumSteps,
                                     maximumOutputBytes: maximumOutputBytes)
        try renderer.run(nodes)
        return (renderer.output, renderer.steps)
    }
}

/// One render: scopes, the output and the budgets.
final class JinjaRenderer {
    var output = ""
    private var outputBytes = 0
    private var scopes: [[String: JinjaValue]]
    private(set) var steps = 0
    private var depth = 0
    private var evaluationDepth = 0
    private let maximumSteps: Int
    private let maximumOutputBytes: Int

    private enum Flow { case normal, breakLoop, continueLoop }

    init(globals: [String: JinjaValue], maximumSteps: Int, maximumOutputBytes: Int) {
        self.maximumSteps = maximumSteps
        self.maximumOutputBytes = maximumOutputBytes
        var g = globals
        g["raise_exception"] = .function(JinjaFunction(name: "raise_exception") { args, _, pos in
            throw JinjaError(kind: .raised, message: args.first?.text ?? "", position: pos)
        })
        g["namespace"] = .function(JinjaFunction(name: "namespace") { args, kwargs, pos in
            let ns = JinjaNamespace()
            for arg in args {
                guard case .dict(let d, _) = arg else {
                    throw JinjaError(kind: .runtime, message: "namespace() takes keyword arguments or a dict",
                                     position: pos)
                }
                for key in d.keys { ns.attributes[key] = d[key] }
            }
            for (key, value) in kwargs {
                try JinjaRenderer.checkStorable(value, at: pos)
                ns.attributes[key] = value
            }
            return .namespace(ns)
        })
        g["range"] = .function(JinjaFunction(name: "range") { args, _, pos in try JinjaBuiltins.range(args, pos) })
        g["dict"] = .function(JinjaFunction(name: "dict") { args, kwargs, pos in
            var d = JinjaDict()
            if case .dict(let base, _)? = args.first { d = base }
            for (key, value) in kwargs { try JinjaRenderer.checkStorable(value, at: pos); d[key] = value }
            return try JinjaValue.makeDict(d, at: pos)
        })
        g["strftime_now"] = .function(JinjaFunction(name: "strftime_now") { args, _, _ in
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            let format = args.first?.text ?? ""
            formatter.dateFormat = format.replacingOccurrences(of: "%d", with: "dd")
                .replacingOccurrences(of: "%b", with: "MMM").replacingOccurrences(of: "%Y", with: "yyyy")
                .replacingOccurrences(of: "%B", with: "MMMM").replacingOccurrences(of: "%m", with: "MM")
            return .string(formatter.string(from: Date()))
        })
        scopes = [g]
    }

    /// Namespaces stay bound to names: a list, dict or namespace attribute holding one could make a cycle.
    static func checkStorable(_ value: JinjaValue, at pos: JinjaPosition) throws {
        if case .namespace = value {
            throw JinjaError(kind: .runtime, message: "a namespace cannot be stored inside another value",
                             position: pos)
        }
    }

    private func step(_ pos: JinjaPosition) throws {
        steps += 1
        guard steps <= maximumSteps else {
            throw JinjaError(kind: .limit, message: "rendering took more than \(maximumSteps) steps",
                             position: pos)
        }
    }

    /// Counts the work of an operation that walks its operands (`in`, `==`, `~`, most filters) against the steps:
    /// one step for every `weightPerStep` of their weight. Steps alone let a loop of 80,000 `-1 in l`
    /// over a list of a million items (each a single step) run for minutes.
    private func charge(_ values: JinjaValue..., at pos: JinjaPosition) throws {
        var weight = 0
        for v in values { weight = min(weight + v.weight, JinjaValue.maximumWeight) }
        steps += weight / Self.weightPerStep
        guard steps <= maximumSteps else {
            throw JinjaError(kind: .limit, message: "rendering took more than \(maximumSteps) steps (an operation " +
                "on a large value counts one step for every \(Self.weightPerStep) items or " +
                "\(Self.weightPerStep * JinjaShape.bytesPerUnit) bytes it walks)", position: pos)
        }
    }

    /// The weight (`JinjaShape`) one evaluation step stands for.
    static let weightPerStep = 16

    /// Filters whose work does not grow with their input.
    private static let constantTimeFilters: Set<String> = ["length", "count", "first", "last", "default", "d",
                                                           "safe", "int", "float", "abs"]

    private func write(_ s: String, _ pos: JinjaPosition) throws {
        outputBytes += s.utf8.count
        guard outputBytes <= maximumOutputBytes else {
            throw JinjaError(kind: .limit, message: "the output is longer than \(maximumOutputBytes) " +
                "bytes", position: pos)
        }
        output += s
    }

    func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() { if let v = scope[name] { return v } }
        return .undefined(name)
    }

    private func assign(_ name: String, _ value: JinjaValue) { scopes[scopes.count - 1][name] = value }

    // MARK: Statements

    func run(_ nodes: [JinjaNode]) throws { _ = try execute(nodes) }

    private func execute(_ nodes: [JinjaNode]) throws -> Flow {
        for node in nodes {
            let flow = try execute(node)
            if flow != .normal { return flow }
        }
        return .normal
    }

    private func nested<T>(_ pos: JinjaPosition, _ body: () throws -> T) throws -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= JinjaTemplate.maximumCallDepth else {
            throw JinjaError(kind: .limit, message: "calls nested deeper than \(JinjaTemplate.maximumCallDepth)",
                             position: pos)
        }
        return try body()
    }

    private func execute(_ node: JinjaNode) throws -> Flow {
        switch node {
        case .text(let s):
            try write(s, JinjaPosition(line: 0, column: 0))
        case .output(let e):
            try write(try evaluate(e).text, e.position)
        case .ifChain(let branches, let otherwise):
            for (condition, body) in branches where try evaluate(condition).truthy {
                return try nested(condition.position) { try execute(body) }
            }
            return try execute(otherwise)
        case .forLoop(let targets, let iterable, let condition, let body, let otherwise, let pos):
            try step(pos)
            return try nested(pos) { try loop(targets, iterable, condition, body, otherwise, pos) }
        case .set(let targets, let attribute, let valueExpr, let pos):
            let value = try evaluate(valueExpr)
            if let attribute {
                guard case .namespace(let ns) = lookup(targets[0]) else {
                    throw JinjaError(kind: .runtime, message: "cannot set \(targets[0]).\(attribute): " +
                        "\(targets[0]) is not a namespace", position: pos)
                }
                try Self.checkStorable(value, at: pos)
                ns.attributes[attribute] = value
            } else if targets.count == 1 {
                assign(targets[0], value)
            } else {
                let items = try JinjaBuiltins.iterate(value, pos)
                guard items.count == targets.count else {
                    throw JinjaError(kind: .runtime, message: "cannot unpack \(items.count) values into " +
                        "\(targets.count) names", position: pos)
                }
                for (t, v) in zip(targets, items) { assign(t, v) }
            }
        case .setBlock(let target, let body):
            assign(target, .string(try capture { _ = try execute(body) }))
        case .macro(let name, let parameters, let body):
            assign(name, makeMacro(name, parameters, body))
        case .loopBreak: return .breakLoop
        case .loopContinue: return .continueLoop
        }
        return .normal
    }

    /// The text `body` writes, taken out of the output (it still counts against the output bound).
    private func capture(_ body: () throws -> Void) throws -> String {
        let saved = output
        output = ""
        defer { output = saved }
        try nested(JinjaPosition(line: 1, column: 1), body)
        return output
    }

    private func loop(_ targets: [String], _ iterable: JinjaExpr, _ condition: JinjaExpr?, _ body: [JinjaNode],
                      _ otherwise: [JinjaNode], _ pos: JinjaPosition) throws -> Flow {
        var items = try JinjaBuiltins.iterate(try evaluate(iterable), iterable.position)
        func bind(_ item: JinjaValue) throws {
            if targets.count == 1 { assign(targets[0], item); return }
            let parts = try JinjaBuiltins.iterate(item, pos)
            guard parts.count == targets.count else {
                throw JinjaError(kind: .runtime, message: "cannot unpack \(parts.count) values into " +
                    "\(targets.count) loop variables", position: pos)
            }
            for (t, v) in zip(targets, parts) { assign(t, v) }
        }
        if let condition {
            var kept: [JinjaValue] = []
            for item in items {
                try step(pos)
                scopes.append([:])
                defer { scopes.removeLast() }
                try bind(item)
                if try evaluate(condition).truthy { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty { return try execute(otherwise) }
        let n = items.count
        for (index, item) in items.enumerated() {
            try step(pos)
            var info = JinjaDict()
            info["index"] = .int(index + 1)
            info["index0"] = .int(index)
            info["revindex"] = .int(n - index)
            info["revindex0"] = .int(n - index - 1)
            info["first"] = .bool(index == 0)
            info["last"] = .bool(index == n - 1)
            info["length"] = .int(n)
            info["previtem"] = index > 0 ? items[index - 1] : .undefined("loop.previtem")
            info["nextitem"] = index < n - 1 ? items[index + 1] : .undefined("loop.nextitem")
            scopes.append(["loop": .dict(info, shape: JinjaShape(holding: info.entries.values))])
            defer { scopes.removeLast() }
            try bind(item)
            if try execute(body) == .breakLoop { break }
        }
        return .normal
    }

    private func makeMacro(_ name: String, _ parameters: [(String, JinjaExpr?)], _ body: [JinjaNode]) -> JinjaValue {
        .function(JinjaFunction(name: name) { [unowned self] args, kwargs, pos in
            guard args.count <= parameters.count else {
                throw JinjaError(kind: .runtime, message: "macro \(name) takes \(parameters.count) arguments, " +
                    "given \(args.count)", position: pos)
            }
            var scope: [String: JinjaValue] = [:]
            for (i, (p, defaultValue)) in parameters.enumerated() {
                if i < args.count { scope[p] = args[i] }
                else if let v = kwargs.first(where: { $0.0 == p })?.1 { scope[p] = v }
                else if let defaultValue { scope[p] = try self.evaluate(defaultValue) }
                else { scope[p] = .undefined(p) }
            }
            return try self.nested(pos) {
                self.scopes.append(scope)
                defer { self.scopes.removeLast() }
                return .string(try self.capture { _ = try self.execute(body) })
            }
        })
    }

    // MARK: Expressions

    func evaluate(_ e: JinjaExpr) throws -> JinjaValue {
        try step(e.position)
        evaluationDepth += 1
        defer { evaluationDepth -= 1 }
        guard evaluationDepth <= JinjaTemplate.maximumEvaluationDepth else {
            throw JinjaError(kind: .limit, message: "expressions and calls nested deeper than " +
                "\(JinjaTemplate.maximumEvaluationDepth)", position: e.position)
        }
        let pos = e.position
        switch e.kind {
        case .none: return .none
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .float(let d): return .float(d)
        case .string(let s): return .string(s)
        case .name(let n): return lookup(n)
        case .list(let items), .tuple(let items):
            let values = try items.map { try evaluate($0) }
            for v in values { try Self.checkStorable(v, at: pos) }
            return try JinjaValue.makeList(values, at: pos)
        case .dict(let pairs):
            var d = JinjaDict()
            for (k, v) in pairs {
                guard case .string(let key) = try evaluate(k) else {
                    throw JinjaError(kind: .runtime, message: "dict keys must be strings", position: k.position)
                }
                let value = try evaluate(v)
                try Self.checkStorable(value, at: pos)
                d[key] = value
            }
            return try JinjaValue.makeDict(d, at: pos)
        case .attribute(let target, let name):
            let value = try evaluate(target)
            if case .string = value { try charge(value, at: pos) }   // a string method walks the string
            return try JinjaBuiltins.attribute(value, name, pos)
        case .index(let target, let index):
            return try JinjaBuiltins.item(try evaluate(target), try evaluate(index), pos)
        case .slice(let target, let a, let b, let c):
            return try JinjaBuiltins.slice(try evaluate(target), try a.map(evaluate), try b.map(evaluate),
                                           try c.map(evaluate), pos)
        case .unary(let op, let operand):
            let v = try evaluate(operand)
            if let i = v.integer {
                if op == "+" { return .int(i) }
                guard i != Int.min else { throw JinjaError(kind: .runtime, message: "integer overflow", position: pos) }
                return .int(-i)
            }
            if case .float(let d) = v { return .float(op == "-" ? -d : d) }
            throw JinjaError(kind: .runtime, message: "bad operand type for unary \(op): \(v.typeName)" +
                JinjaBuiltins.undefinedNote(v), position: pos)
        case .binary(let op, let l, let r):
            let result = try JinjaBuiltins.arithmetic(op, try evaluate(l), try evaluate(r), pos)
            try charge(result, at: pos)
            return result
        case .and(let l, let r):
            let a = try evaluate(l)
            return a.truthy ? try evaluate(r) : a
        case .or(let l, let r):
            let a = try evaluate(l)
            return a.truthy ? a : try evaluate(r)
        case .not(let operand): return .bool(!(try evaluate(operand).truthy))
        case .compare(let first, let rest):
            var left = try evaluate(first)
            for (op, rightExpr) in rest {
                let right = try evaluate(rightExpr)
                try charge(left, right, at: rightExpr.position)
                guard try JinjaBuiltins.compare(op, left, right, rightExpr.position) else { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .call(let callee, let argExprs, let kwargExprs):
            let f = try evaluate(callee)
            let args = try argExprs.map { try evaluate($0) }
            let kwargs = try kwargExprs.map { ($0.0, try evaluate($0.1)) }
            guard case .function(let function) = f else {
                let why = f.isUndefined ? "'\(JinjaBuiltins.name(f))' is undefined" : "a \(f.typeName) is not callable"
                throw JinjaError(kind: .runtime, message: why, position: pos)
            }
            let result = try nested(pos) { try function.call(args, kwargs, pos) }
            try charge(result, at: pos)   // range(1000000) in a loop of 60,000 made a million items each time
            return result
        case .filter(let target, let name, let argExprs, let kwargExprs):
            let value = try evaluate(target)
            let args = try argExprs.map { try evaluate($0) }
            let kwargs = try kwargExprs.map { ($0.0, try evaluate($0.1)) }
            let string: Bool
            if case .string = value { string = true } else { string = false }
            if string || !Self.constantTimeFilters.contains(name) { try charge(value, at: pos) }
            return try JinjaBuiltins.filter(name, value, args, kwargs, pos)
        case .test(let target, let name, let argExprs, let negated):
            let value = try evaluate(target)
            let args = try argExprs.map { try evaluate($0) }
            try charge(value, at: pos)
            return .bool(try JinjaBuiltins.test(name, value, args, pos) != negated)
        case .conditional(let then, let condition, let otherwise):
            if try evaluate(condition).truthy { return try evaluate(then) }
            return try otherwise.map(evaluate) ?? .undefined("the else branch")
        }
    }
}
