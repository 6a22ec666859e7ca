import ArgumentParser
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors

/// `qlora info`: what a model (and adapter) is, without loading it: architecture, peft's parameter line, every
/// tensor's storage type and shape, memory at rest; `--dot` draws its QLoRA architecture for Graphviz.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Architecture, parameter counts, tensors and memory of a model; --dot draws its QLoRA graph.")

    @Argument(help: "The model: a Hugging Face folder, a bitsandbytes 4-bit checkpoint or a GGUF file (or --model).")
    var path: String?
    // The model file's options only: info computes nothing, so it takes no --device or --compute-dtype.
    @OptionGroup var modelOptions: ModelFileOptions
    @Option(help: "A PEFT adapter folder to count and draw.") var adapter: String?
    @Option(help: "Write the QLoRA architecture as a Graphviz file (render: dot -Tsvg FILE -o FILE.svg).")
    var dot: String?

    func validate() throws {
        guard (path == nil) != (modelOptions.model == nil) else {
            throw ValidationError("give the model once: qlora info MODEL (or --model MODEL)")
        }
        // The graph replaces the file it is written to: never the model or adapter being read, nor a file in their
        // folders (`--dot MODEL/model.safetensors` used to replace the weights with a Graphviz text). An empty path
        // is refused by the write itself.
        if let dot, !dot.isEmpty, let model = path ?? modelOptions.model {
            try Quantize.checkOutput(dot, model: model, writing: "writing the graph", flag: "--dot")
            if let adapter {
                try Quantize.checkOutput(dot, model: adapter, writing: "writing the graph", flag: "--dot",
                                         source: "--adapter")
            }
        }
    }

    func run() throws {
        let model = path ?? modelOptions.model!
        let quantType = modelOptions.quantType ?? .nf4, doubleQuant = modelOptions.doubleQuant ?? true
        let settings = QuantizationSettings(type: quantType, doubleQuant: doubleQuant)
        let weights = try LlamaWeights.open(path: model, quantization: settings)
        printWarnings(try ModelOptions.quantizationWithoutEffect(
            weights, type: modelOptions.quantType.map { ($0, "--quant-type") },
            doubleQuant: modelOptions.doubleQuant.map { ($0, "--double-quant") }))
        let c = weights.config
        var lora: LoRAConfig?, adapters: [String: LoRAWeights] = [:]
        if let adapter {
            let read = try PEFTAdapter.read(directory: adapter, config: c)
            lora = read.0
            adapters = read.1
        }
        print("\(model): \(c.modelType), \(c.layerCount) layers, hidden \(c.hiddenSize), \(c.headCount) heads "
              + "(\(c.kvHeadCount) KV, head dim \(c.headDim)), MLP \(c.intermediateSize), vocab \(c.vocabSize), "
              + "context \(c.maxPositionEmbeddings), RoPE θ \(c.ropeTheta), RMSNorm ε \(c.rmsNormEps), "
              + "embeddings \(c.tieWordEmbeddings ? "tied" : "untied")")
        if let lora {
            print("adapter \(adapter!): r \(lora.r), alpha \(lora.alpha), scale \(lora.scale)"
                  + "\(lora.useRSLoRA ? " (rsLoRA)" : ""), targets \(lora.resolvedTargets.joined(separator: ", ")), "
                  + "\(adapters.count) adapted projections")
        }
        print(LlamaInventory.peftLine(try LlamaInventory.parameterCounts(weights, adapters: adapters)))

        // Every stored tensor: name, storage type, shape, bytes.
        var rows: [(String, String, [Int], Int)] = []
        if let archive = weights.source as? GGUFArchive {
            for t in archive.file.tensors { rows.append((t.name, t.type.name, t.shape, t.byteCount)) }
        } else {
            for name in weights.source.names {
                let t = try weights.source.tensor(named: name)
                rows.append((name, t.dtype.rawValue, t.shape, t.byteCount))
            }
        }
        if let adapter {
            let file = try SafeTensorsFile(path: try PEFTAdapter.weightsPath(directory: adapter))
            for e in file.entries { rows.append((e.name, e.dtype.rawValue, e.shape, e.dataRange.count)) }
        }
        let width = min(rows.map(\.0.count).max() ?? 0, 72)
        print("tensors (\(rows.count)):")
        for (name, type, shape, bytes) in rows {
            let shown = name.count > width ? "…" + name.suffix(width - 1) : name
            print("  " + shown.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                  + type.padding(toLength: 5, withPad: " ", startingAt: 0) + "  "
                  + "\(shape)".padding(toLength: 14, withPad: " ", startingAt: 0) + "  " + Self.size(bytes))
        }

        // Memory at rest: the file as stored, and the base as QLoRA holds it.
        let stored = rows.reduce(0) { $0 + $1.3 }
        var projectionBytes = 0, other = 0
        for l in 0..<c.layerCount {
            for p in LlamaConfig.projectionNames {
                let (out, inF) = c.projectionShape(p)!
                projectionBytes += LlamaInventory.fourBitBytes(elements: out * inF, settings: settings)
            }
            other += 2 * c.hiddenSize * 2
        }
        other += (c.vocabSize * c.hiddenSize * (try weights.lmHead() == nil ? 1 : 2) + c.hiddenSize) * 2
        let adapterBytes = adapters.values.reduce(0) { $0 + ($1.a.count + $1.b.count) * 4 }
        let total = projectionBytes + other + adapterBytes
        print("memory at rest: \(Self.size(stored)) as stored; for QLoRA \(Self.size(total)):"
              + " 4-bit projections \(Self.size(projectionBytes)) (\(quantType.rawValue)"
              + "\(doubleQuant ? ", double quant" : ""), blocks of 64), embeddings and norms \(Self.size(other)) "
              + "(bf16), adapters \(Self.size(adapterBytes)) (float32)")

        if let dot {
            let name = URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent
            let graph = LlamaInventory.dot(c, name: name, lora: lora, adapted: Set(adapters.keys.compactMap {
                $0.split(separator: ".").last.map(String.init) }), settings: settings)
            try AtomicFile.write(text: graph, to: dot)
            print("wrote the QLoRA graph → \(dot) (render: dot -Tsvg \(dot) -o \(dot).svg)")
        }
    }

    static func size(_ bytes: Int) -> String {
        bytes >= 1_000_000_000 ? String(format: "%.2f GB", Double(bytes) / 1e9)
            : bytes >= 1_000_000 ? String(format: "%.2f MB", Double(bytes) / 1e6)
            : bytes >= 1_000 ? String(format: "%.1f kB", Double(bytes) / 1e3) : "\(bytes) B"
    }
}
