import Foundation
import ModelFiles

/// Draws training and validation loss against step as a self-contained SVG (no dependencies, opens in any browser).
public enum LossPlot {
    /// The SVG for the metrics lines of a run.
    public static func svg(_ metrics: [StepMetrics], title: String = "loss") -> String {
        let train = metrics.compactMap { m in m.loss.map { (Double(m.step), $0) } }
        let eval = metrics.compactMap { m in m.evalLoss.map { (Double(m.step), $0) } }
        let all = train + eval
        let width = 720.0, height = 420.0, left = 64.0, right = 20.0, top = 36.0, bottom = 48.0
        guard !all.isEmpty else {
            return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"60\"><text x=\"10\" y=\"30\">no metrics yet</text></svg>\n"
        }
        let minX = all.map(\.0).min()!, maxX = max(all.map(\.0).max()!, minX + 1)
        var minY = all.map(\.1).min()!, maxY = all.map(\.1).max()!
        if maxY - minY < 1e-9 { minY -= 0.5; maxY += 0.5 }
        let pad = (maxY - minY) * 0.05
        minY -= pad; maxY += pad
        func px(_ x: Double) -> Double { left + (x - minX) / (maxX - minX) * (width - left - right) }
        func py(_ y: Double) -> Double { top + (maxY - y) / (maxY - minY) * (height - top - bottom) }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        s += "<text x=\"\(f(width / 2))\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">\(escape(title))</text>\n"
        for i in 0...4 {
            let y = minY + (maxY - minY) * Double(i) / 4
            s += "<line x1=\"\(f(left))\" y1=\"\(f(py(y)))\" x2=\"\(f(width - right))\" y2=\"\(f(py(y)))\" stroke=\"#ddd\"/>\n"
            s += "<text x=\"\(f(left - 6))\" y=\"\(f(py(y) + 4))\" text-anchor=\"end\">\(String(format: "%.3f", y))</text>\n"
            let x = minX + (maxX - minX) * Double(i) / 4
            s += "<text x=\"\(f(px(x)))\" y=\"\(f(height - bottom + 16))\" text-anchor=\"middle\">"
                + String(format: "%.0f", x) + "</text>\n"
        }
        s += "<text x=\"\(f(width / 2))\" y=\"\(f(height - 8))\" text-anchor=\"middle\">step</text>\n"
        for (points, color, name, dy) in [(train, "#1f77b4", "training loss", 0.0), (eval, "#d62728", "validation loss", 16.0)] where !points.isEmpty {
            let path = points.map { "\(f(px($0.0))),\(f(py($0.1)))" }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(path)\"/>\n"
            for p in points where points.count <= 60 { s += "<circle cx=\"\(f(px(p.0)))\" cy=\"\(f(py(p.1)))\" r=\"2.5\" fill=\"\(color)\"/>\n" }
            s += "<text x=\"\(f(width - right - 130))\" y=\"\(f(top + 14 + dy))\" fill=\"\(color)\">\(name)</text>\n"
        }
        return s + "</svg>\n"
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }

    /// Reads `RUN/metrics.jsonl` and writes `RUN/loss.svg`; returns its path.
    @discardableResult
    public static func write(runDirectory: String) throws -> String {
        // Read as bytes (a missing, special or non-UTF-8 file is an error naming it, never a Foundation code).
        let text = String(decoding: try FileSystem.readBytes(runDirectory + "/metrics.jsonl"), as: UTF8.self)
        let metrics = text.split(separator: "\n").compactMap { StepMetrics(json: String($0)) }
        let path = runDirectory + "/loss.svg"
        try AtomicFile.write(text: svg(metrics, title: "loss — \((runDirectory as NSString).lastPathComponent)"),
                             to: path)
        return path
    }
}
