import Foundation
import ModelFiles
import Quantization

/// What a QLoRA model is made of, from its config and file alone (nothing is quantized or loaded): the parameter
/// counts peft prints, the memory of the 4-bit base and the adapters, and the architecture as a Graphviz graph.
public enum LlamaInventory {
    /// peft's `get_nb_trainable_parameters` on the 4-bit model: every stored tensor's element count, a 4-bit weight
    /// counted as its packed bytes × 2 (bitsandbytes' Params4bit), plus the adapters' A and B.
    public static func parameterCounts(_ weights: LlamaWeights,
                                       adapters: [String: LoRAWeights]) throws -> (trainable: Int, all: Int) {
        let c = weights.config
        let trainable = adapters.values.reduce(0) { $0 + $1.a.count + $1.b.count }
        var all = c.vocabSize * c.hiddenSize * (try weights.lmHead() == nil ? 1 : 2) + c.hiddenSize
        for l in 0..<c.layerCount {
            all += 2 * c.hiddenSize
            for p in LlamaConfig.projectionNames {
                let (out, inF) = c.projectionShape(p)!
                all += (out * inF + 1) / 2 * 2
                if weights.source.contains(PEFTAdapter.modulePath(layer: l, projection: p) + ".bias") { all += out }
            }
        }
        return (trainable, all + trainable)
    }

    /// peft's `print_trainable_parameters` line.
    public static func peftLine(_ counts: (trainable: Int, all: Int)) -> String {
        func grouped(_ n: Int) -> String {
            let digits = Array(String(n))
            return digits.enumerated().map { i, d in (i > 0 && (digits.count - i) % 3 == 0 ? "," : "") + String(d) }
                .joined()
        }
        return "trainable params: \(grouped(counts.trainable)) || all params: \(grouped(counts.all)) || "
            + String(format: "trainable%%: %.4f", 100 * Double(counts.trainable) / Double(max(counts.all, 1)))
    }

    /// Bytes of one projection of `shape` in 4 bits: packed codes, and per 64-value block an absmax (float32, or
    /// with double quantization one byte, plus a float32 per 256 absmax values and the 256-entry code book).
    public static func fourBitBytes(elements: Int, settings: QuantizationSettings) -> Int {
        let blocks = (elements + settings.blocksize - 1) / settings.blocksize
        let scales = settings.doubleQuant ? blocks + (blocks + 255) / 256 * 4 + 256 * 4 + 4 : blocks * 4
        return (elements + 1) / 2 + scales + 16 * 4
    }

    /// The QLoRA architecture of the model as a Graphviz digraph, drawn like the LoRA paper's figure: for each
    /// distinct projection shape (d × k) the input x goes through the frozen 4-bit W0 and through the trainable
    /// A (r × k) then B (d × r), and the two meet in h = W0x + ΔWx with ΔW = s · B·A.
    public static func dot(_ config: LlamaConfig, name: String, lora: LoRAConfig?, adapted: Set<String>,
                           settings: QuantizationSettings) -> String {
        var groups: [(shape: (Int, Int), names: [String])] = []
        for p in LlamaConfig.projectionNames {
            let shape = config.projectionShape(p)!
            if let i = groups.firstIndex(where: { $0.shape == shape }) { groups[i].names.append(p) } else {
                groups.append((shape, [p]))
            }
        }
        func quote(_ s: String) -> String {
            "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }
        let quant = settings.type.rawValue.uppercased() + (settings.doubleQuant ? " + double quant" : "")
        var out = ["digraph qlora {", "  rankdir=BT;", "  newrank=true;",
                   "  node [fontname=\"Helvetica\", fontsize=11];", "  edge [arrowsize=0.7];"]
        var title = "\(name): \(config.modelType), \(config.layerCount) layers, hidden \(config.hiddenSize), "
            + "\(config.headCount) heads (\(config.kvHeadCount) KV), vocab \(config.vocabSize)"
        if let lora {
            title += ", LoRA r = \(lora.r), alpha = \(formatNumber(lora.alpha)), "
                + "s = \(formatNumber(Double(lora.scale)))"
        } else {
            title += ", no adapter"
        }
        out.append("  labelloc=t; label=\(quote(title));")
        for (g, group) in groups.enumerated() {
            let (d, k) = group.shape
            let targets = group.names.filter { adapted.contains($0) }
            let cluster = group.names.joined(separator: ", ") + "  (d = \(d), k = \(k)), in each of "
                + "\(config.layerCount) layers"
            let frozen = quote("Pretrained weights W0\nfrozen, \(quant) 4-bit\n\(d) × \(k)")
            out.append("  subgraph cluster_\(g) {")
            out.append("    label=\(quote(cluster)); labelloc=t; style=rounded; color=gray60;")
            out.append("    x\(g) [label=\(quote("x\n(k = \(k))")), shape=plaintext];")
            out.append("    w\(g) [label=\(frozen), shape=box, style=filled, fillcolor=\"#cfe2f3\", width=2.2, "
                       + "height=1.3];")
            out.append("    h\(g) [label=\(quote("h = W0x + ΔWx\n(d = \(d))")), shape=plaintext];")
            if let lora, !targets.isEmpty {
                let r = lora.r, scale = formatNumber(Double(lora.scale))
                let a = quote("A\ntrainable, float32\nr × k = \(r) × \(k)")
                let b = quote("B\ntrainable, float32\nd × r = \(d) × \(r)")
                let delta = quote("ΔW = \(scale) · B·A\nadapted: " + targets.joined(separator: ", "))
                out.append("    a\(g) [label=\(a), shape=invtrapezium, style=filled, fillcolor=\"#fce5cd\"];")
                out.append("    b\(g) [label=\(b), shape=trapezium, style=filled, fillcolor=\"#fce5cd\"];")
                out.append("    s\(g) [label=\(delta), shape=note, fontsize=10];")
                out.append("    p\(g) [label=\"+\", shape=circle, width=0.3, fixedsize=true];")
                out.append("    x\(g) -> w\(g); x\(g) -> a\(g); a\(g) -> b\(g); b\(g) -> p\(g); w\(g) -> p\(g); "
                           + "p\(g) -> h\(g); s\(g) -> b\(g) [style=dotted, arrowhead=none];")
            } else {
                out.append("    x\(g) -> w\(g); w\(g) -> h\(g);")
            }
            out.append("  }")
        }
        out.append("}")
        return out.joined(separator: "\n") + "\n"
    }

    static func formatNumber(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(format: "%.4g", v)
    }
}
