import Foundation
import ModelFiles
import Tokenizers
@testable import Training
import XCTest

/// The chat-template fixtures: the models' Jinja templates and what the Python stack made of them
/// (scripts/make-chat-template-vectors.py: transformers' apply_chat_template and Jinja2).
enum ChatFixtures {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/chat-templates").path

    static func json(_ name: String) throws -> JSONValue {
        try JSONValue(parsing: FileSystem.readBytes(folder + "/" + name))
    }

    static func template(_ name: String) throws -> String {
        try String(contentsOfFile: folder + "/\(name).jinja", encoding: .utf8)
    }

    static func messages(_ v: JSONValue) -> [ChatMessage] {
        (v.arrayValue ?? []).map { ChatMessage(role: $0["role"]!.stringValue!, content: $0["content"]!.stringValue!) }
    }
}

final class ChatTemplateTests: XCTestCase {
    /// The SmolLM2 tokenizer of shared/, read once for the tests that need it.
    nonisolated(unsafe) private static var smolTokenizer: Tokenizer?

    private func tokenizer() throws -> Tokenizer {
        if let t = Self.smolTokenizer { return t }
        let folder = Shared.root + "/golden/smollm2-tokenizer"
        guard FileSystem.isDirectory(folder) else {
            throw XCTSkip("no SmolLM2 tokenizer at \(folder): set QLORA_SHARED to the shared/ folder")
        }
        let t = try Tokenizer(tokenizerJSONPath: folder + "/tokenizer.json")
        Self.smolTokenizer = t
        return t
    }

    static let names = ["smollm2", "qwen2.5", "llama3.1", "mistral-v0.3", "phi3", "gemma3"]

    private func templates() throws -> [(name: String, template: ChatTemplate, vectors: JSONValue)] {
        let vectors = try ChatFixtures.json("vectors.json")
        let all = vectors["templates"]!.arrayValue!
        XCTAssertEqual(all.compactMap { $0["name"]?.stringValue }, Self.names)
        return try all.map { t in
            let name = t["name"]!.stringValue!
            let source = try ChatFixtures.template(name)
            let template = try ChatTemplate(jinja: source, bosToken: t["bos_token"]?.stringValue,
                                            eosToken: t["eos_token"]?.stringValue)
            return (name, template, t)
        }
    }

    private static func settings(_ key: String) -> (Set<String>, TrainOnEOS) {
        let parts = key.split(separator: ":")
        return (Set(parts[0].split(separator: ",").map(String.init)), TrainOnEOS(rawValue: String(parts[1]))!)
    }

    /// Every template × conversation renders to transformers' text, with and without the generation prompt.
    func testRenderingMatchesTransformers() throws {
        var checked = 0
        for (name, template, vectors) in try templates() {
            XCTAssertEqual(template.endOfTurnMarker, vectors["end_of_turn"]?.stringValue, name)
            for c in vectors["cases"]!.arrayValue! {
                let messages = ChatFixtures.messages(c["messages"]!)
                let what = "\(name) / \(c["name"]!.stringValue!)"
                let generation = c["add_generation_prompt"] == .bool(true)
                XCTAssertEqual(try template.render(messages, addGenerationPrompt: generation), c["text"]!.stringValue!,
                               what)
                XCTAssertEqual(try template.render(messages, addGenerationPrompt: false), c["full_text"]!.stringValue!,
                               what)
                checked += 1
            }
        }
        XCTAssertEqual(checked, 36)
    }

    /// The trainable text of every template × conversation × (roles_to_train, train_on_eos) equals the Python
    /// prefix-render reference, and the segments put together are the whole rendered text.
    func testTrainableTextMatchesPrefixRenderReference() throws {
        var checked = 0
        for (name, template, vectors) in try templates() {
            for c in vectors["cases"]!.arrayValue! {
                let messages = ChatFixtures.messages(c["messages"]!)
                for (key, mask) in c["masks"]!.objectValue! {
                    let (roles, eos) = Self.settings(key)
                    let segments = try template.segments(messages, rolesToTrain: roles, trainOnEOS: eos)
                    let what = "\(name) / \(c["name"]!.stringValue!) / \(key)"
                    XCTAssertEqual(segments.map(\.text).joined(), c["full_text"]!.stringValue!, what)
                    XCTAssertEqual(segments.filter(\.trainable).map(\.text).joined(),
                                   mask["trained_text"]!.stringValue!, what)
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 36 * 5)
    }

    /// Token ids and the trainable mask (the rendered text tokenized whole with the SmolLM2 tokenizer, a token
    /// trainable when any of its bytes is) equal the Hugging Face tokenizer's ids and the mask of its offsets.
    func testTokenIdsAndMasksMatchTransformers() throws {
        let tokenizer = try tokenizer()
        var checked = 0
        for (name, template, vectors) in try templates() {
            for c in vectors["cases"]!.arrayValue! {
                let messages = ChatFixtures.messages(c["messages"]!)
                let ids = c["ids"]!.arrayValue!.map { $0.intValue! }
                for (key, mask) in c["masks"]!.objectValue! {
                    let (roles, eos) = Self.settings(key)
                    let segments = try template.segments(messages, rolesToTrain: roles, trainOnEOS: eos)
                    let (gotIds, trainable) = TextDataset.tokenize(segments, with: tokenizer)
                    let what = "\(name) / \(c["name"]!.stringValue!) / \(key)"
                    XCTAssertEqual(gotIds, ids, what)
                    XCTAssertEqual(trainable.map { $0 ? 1 : 0 }, mask["mask"]!.arrayValue!.map { $0.intValue! }, what)
                    checked += 1
                }
            }
        }
        XCTAssertEqual(checked, 36 * 5)
    }

    func testEndOfTurnMarkersAndErrors() throws {
        let smol = try ChatTemplate(jinja: try ChatFixtures.template("smollm2"), bosToken: "<|im_start|>",
                                    eosToken: "<|im_end|>")
        XCTAssertEqual(smol.endOfTurnMarkers, ["<|im_end|>"])
        let gemma = try ChatTemplate(jinja: try ChatFixtures.template("gemma3"), bosToken: "<bos>", eosToken: "<eos>")
        XCTAssertEqual(gemma.endOfTurnMarkers, ["<end_of_turn>", "<eos>"])
        // Gemma's template refuses turns that do not alternate: the template's own message, as a typed error.
        let bad = [ChatMessage(role: "user", content: "a"), ChatMessage(role: "user", content: "b")]
        XCTAssertThrowsError(try gemma.render(bad, addGenerationPrompt: false)) { error in
            guard let e = error as? JinjaError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.kind, .raised)
            XCTAssertEqual(e.message, "Conversation roles must alternate user/assistant/user/assistant/...")
            XCTAssertEqual(e.position.line, 19)
        }
        // A template that renders nothing gives no segments (a fuzz mutant once trapped here).
        XCTAssertEqual(try ChatTemplate(jinja: "").segments([ChatMessage(role: "assistant", content: "x")]), [])
        XCTAssertThrowsError(try ChatTemplate(jinja: "{% for m in messages %}{{ m.content }}")) { error in
            XCTAssertEqual((error as? JinjaError)?.kind, .syntax, "\(error)")
        }
    }

    /// axolotl's recipe keys are known to the recipe reader.
    func testRecipeReadsRolesToTrainAndTrainOnEOS() throws {
        let dir = makeTemporaryDirectory(self)
        try "roles_to_train: [user, assistant]\ntrain_on_eos: last\n".write(toFile: dir + "/r.yaml", atomically: true,
                                                                          encoding: .utf8)
        let recipe = try TrainingRecipe(contentsOf: dir + "/r.yaml")
        XCTAssertEqual(try recipe.list("roles_to_train"), ["user", "assistant"])
        XCTAssertEqual(try recipe.string("train_on_eos"), "last")
    }

    /// Chat records of a data file go through the template with roles_to_train and train_on_eos.
    func testDatasetUsesRolesToTrainAndTrainOnEOS() throws {
        let tokenizer = try tokenizer()
        let dir = makeTemporaryDirectory(self)
        try #"{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}"#
            .write(toFile: dir + "/chat.jsonl", atomically: true, encoding: .utf8)
        var options = DatasetOptions()
        options.chatTemplate = try ChatTemplate(jinja: try ChatFixtures.template("qwen2.5"), eosToken: "<|im_end|>")
        func trained() throws -> String {
            let examples = try TextDataset.load(path: dir + "/chat.jsonl", tokenizer: tokenizer,
                                                vocabularySize: tokenizer.vocabularySize, options: options)
            return tokenizer.decode(examples[0].labels.filter { $0 != -100 })
        }
        XCTAssertEqual(try trained(), "4<|im_end|>\n")
        options.trainOnEOS = .none
        XCTAssertEqual(try trained(), "4")
        options.rolesToTrain = ["user", "assistant"]
        options.trainOnEOS = .turn
        XCTAssertEqual(try trained(), "2+2?<|im_end|>\n4<|im_end|>\n")
    }
}

final class JinjaTests: XCTestCase {
    private func render(_ source: String, _ variables: [String: JinjaValue] = [:]) throws -> String {
        try JinjaTemplate(source).render(variables)
    }

    private func error(_ source: String, _ variables: [String: JinjaValue] = [:], steps: Int = 100_000,
                       output: Int = 1 << 16) -> JinjaError? {
        do {
            _ = try JinjaTemplate(source).render(variables, maximumSteps: steps, maximumOutputBytes: output)
            XCTFail("rendered: \(source.prefix(80))")
            return nil
        } catch let e as JinjaError {
            return e
        } catch {
            XCTFail("\(error)")
            return nil
        }
    }

    /// Whitespace control, loops, set and namespace, filters, string methods, slicing, operators, tests, macros:
    /// each case's text is what Jinja2 rendered (Fixtures/chat-templates/jinja-cases.json).
    func testCasesMatchJinja2() throws {
        let fixture = try ChatFixtures.json("jinja-cases.json")
        let messages = ChatFixtures.messages(fixture["context"]!["messages"]!)
        let variables: [String: JinjaValue] = [
            "x": .int(1),
            "messages": .list(messages.map { .stringDict([("role", $0.role), ("content", $0.content)]) }),
        ]
        let cases = fixture["cases"]!.arrayValue!
        XCTAssertGreaterThan(cases.count, 20)
        for c in cases {
            let source = c["template"]!.stringValue!
            XCTAssertEqual(try render(source, variables), c["text"]!.stringValue!, source)
        }
    }

    func testUndefinedBehavesAsJinjaDefault() throws {
        XCTAssertEqual(try render("[{{ nothing }}]{% if nothing %}x{% endif %}{% for a in nothing %}y{% endfor %}"),
                       "[]")
        XCTAssertEqual(try render("{{ nothing | length }}{{ nothing ~ 'a' }}{{ not nothing }}"), "0aTrue")
        let e = error("line one\n  {{ 'a' + nothing }}")
        XCTAssertEqual(e?.kind, .runtime)
        XCTAssertEqual(e?.message, "'nothing' is undefined")
        XCTAssertEqual(e?.position, JinjaPosition(line: 2, column: 10))
        XCTAssertEqual(error("{{ nothing.attr }}")?.message, "'nothing' is undefined")
    }

    func testErrorsCarryPositions() {
        let syntax = error("ok\n{{ 1 + }}")
        XCTAssertEqual(syntax?.kind, .syntax)
        XCTAssertEqual(syntax?.position, JinjaPosition(line: 2, column: 8))
        XCTAssertEqual(error("{% if x %}never closed")?.kind, .syntax)
        XCTAssertEqual(error("ab {% frobnicate %}")?.position, JinjaPosition(line: 1, column: 7))
        XCTAssertEqual(error("{{ 'open }}")?.kind, .syntax)
        XCTAssertEqual(error("{{ x | nofilter }}")?.message, "no filter named 'nofilter'")
        XCTAssertEqual(error("{{ 1 // 0 }}")?.kind, .runtime)
        XCTAssertEqual(error("{{ 9223372036854775807 + 1 }}")?.kind, .limit)
        let raised = error("{%- if true -%}\n   {{ raise_exception('Only user and assistant roles!') }}{% endif %}")
        XCTAssertEqual(raised?.kind, .raised)
        XCTAssertEqual(raised?.message, "Only user and assistant roles!")
        XCTAssertEqual(raised?.position.line, 2)
        XCTAssertTrue("\(raised!)".contains("Only user and assistant roles!"))
    }

    /// Hostile templates hit a bound and throw: nesting, recursion, output size, step count.
    func testBoundsThrowInsteadOfCrashing() {
        XCTAssertEqual(error("{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000)
            + " }}")?.kind, .limit)
        XCTAssertEqual(error("{{ " + String(repeating: "1 + ", count: 50000) + "1 }}")?.kind, .limit)
        XCTAssertEqual(error("{{ " + String(repeating: "not ", count: 5000) + "1 }}")?.kind, .limit)
        XCTAssertEqual(error(String(repeating: "{% if true %}", count: 500))?.kind, .limit)
        XCTAssertEqual(try render(String(repeating: "{% if true %}", count: 32) + "x" +
            String(repeating: "{% endif %}", count: 32)), "x")
        XCTAssertEqual(error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")?.kind, .limit)
        let deep = String(repeating: "(", count: 90) + "f(n)" + String(repeating: ")", count: 90)
        XCTAssertEqual(error("{% macro f(n) %}{{ \(deep) }}{% endmacro %}{{ f(0) }}")?.kind, .limit)
        XCTAssertEqual(try render("{{ [1, 2, 3][2::9223372036854775807] }}{{ [1, 2, 3][::-9223372036854775807] }}" +
            "{{ (-9223372036854775807 - 1) is divisibleby(-1) }}"), "[3][3]True")
        XCTAssertEqual(error("{{ 'a' * 100000000 }}")?.kind, .limit)
        XCTAssertEqual(error("{% set ns = namespace(x=[]) %}{% for i in range(100) %}{% set ns.x = [ns.x] %}" +
            "{% endfor %}")?.kind, .limit)
        XCTAssertEqual(error("{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}")?.message,
                       "rendering took more than 100000 steps")
        // With the default budget: three nested loops of a thousand used to take 20 s (release) to be refused.
        XCTAssertThrowsError(try render("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in " +
                                        "range(1000) %}{% endfor %}{% endfor %}{% endfor %}")) {
            XCTAssertEqual(($0 as? JinjaError)?.message,
                           "rendering took more than \(JinjaTemplate.maximumSteps) steps")
        }
        XCTAssertEqual(error("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}")?.message,
                       "the output is longer than 65536 bytes")
        XCTAssertEqual(error("{% set ns = namespace() %}{% set ns.me = ns %}")?.kind, .runtime)
        XCTAssertEqual(error("{% for c in 'x' * 10000000 %}{% endfor %}")?.message, "a list longer than 1048576 items")
        XCTAssertEqual(error("{{ range(10000000) | length }}")?.kind, .limit)
        // tojson's indentation is bounded before it is made (10**12 used to fail a 1 TB allocation); a negative
        // one indents by nothing, as Python's json.dumps does, and a scalar takes none.
        XCTAssertEqual(error("{{ [1] | tojson(indent=10**12) }}")?.kind, .limit)
        XCTAssertEqual(error("{{ {'a': [1]} | tojson(indent=9223372036854775807) }}")?.kind, .limit)
        XCTAssertEqual(try render("{{ 5 | tojson(indent=10**12) }}"), "5")
        XCTAssertEqual(try render("{{ [1, [2]] | tojson(indent=-3) }}"), "[\n1,\n[\n2\n]\n]")
        XCTAssertEqual(try render("{{ {'a': [1]} | tojson(indent=0) }}"), "{\n\"a\": [\n1\n]\n}")
    }
}
