import ArgumentParser
import CUDABackend
import Foundation
import Llama
import ModelFiles
import Quantization
import Tensors

extension QuantType: ExpressibleByArgument {}

/// Compute dtypes as the command line spells them.
enum ComputeDTypeOption: String, ExpressibleByArgument, CaseIterable {
    case bf16, fp32, fp16
    var dtype: DType {
        switch self {
        case .bf16: return .bf16
        case .fp32: return .f32
        case .fp16: return .f16
        }
    }
}

/// `qlora quantize`: a Hugging Face model folder in, a bitsandbytes 4-bit checkpoint folder out.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a Hugging Face model folder to a bitsandbytes 4-bit checkpoint (NF4/FP4, double quant).")

    @Option(help: "Model folder: config.json and model.safetensors (or a sharded index).")
    var model: String

    // A folder, as train's --output-dir: both names are taken.
    @Option(name: [.customLong("output"), .customLong("output-dir")], help: "Output folder for the 4-bit checkpoint.")
    var output: String

    @Option(help: "4-bit data type: nf4 or fp4.")
    var quantType: QuantType = QuantizationSettings().type

    @Option(help: "Quantize the block scales to 8 bits too: true or false.")
    var doubleQuant: Bool = QuantizationSettings().doubleQuant

    @Option(help: "Values per quantization block: a power of two from 32 to 4096.")
    var blocksize: Int = QuantizationSettings().blocksize

    @Option(help: "Compute dtype recorded in quantization_config: bf16, fp32 or fp16.")
    var computeDtype: ComputeDTypeOption = .bf16

    @Option(help: ArgumentHelp("Where to quantize (the same bits either way): \(DeviceChoice.help)."))
    var device: DeviceChoice = .cpu

    func validate() throws {
        guard Quantized4BitTensor.isSupported(blocksize: blocksize) else {
            throw ValidationError("--blocksize \(blocksize) is not supported: use a power of two from 32 to 4096")
        }
        guard FileSystem.isDirectory(model) else { throw ValidationError("--model \(model) is not a folder") }
        try Self.checkOutput(output, model: model)
        try Self.refuseExistingModel(output)
    }

    /// Refuses an output folder that is the model folder or inside it (writing there would replace, or mix with,
    /// the files being read), before anything is written. Both are compared after resolving links and `..`; an
    /// output that does not exist yet is resolved through its nearest existing parent. `flag` and `source` name the
    /// two in the message (`--output`, `--model`); `insideAllowed` refuses only the folder itself.
    /// A model folder is written only where no model is: an existing folder holding a config.json or weights
    /// (another model, another merge) is refused rather than overwritten file by file.
    /// Anything else in an existing folder is refused too (a model's files mixed into a folder of other files, or
    /// into `/`, cannot be told apart afterwards), and so is a path that is not a folder (found before the work,
    /// not when the first file is written).
    static func refuseExistingModel(_ output: String, flag: String = "--output") throws {
        try refuseNonFolder(output, flag: flag)
        guard FileSystem.isDirectory(output) else { return }
        let files = (try? FileSystem.contents(of: output)) ?? []
        let holdsModel = { (f: String) in f == "config.json" || f.hasSuffix(".safetensors") || f.hasSuffix(".gguf") }
        if let file = files.first(where: holdsModel) {
            throw ValidationError("\(flag) \(output) already holds a model (\(file)): writing there would overwrite " +
                "it; choose a new folder or remove that one first")
        }
        if let file = files.sorted().first {
            throw ValidationError("\(flag) \(output) is a folder that is not empty (it holds \(file)): a model is " +
                "written into a new or empty folder; choose one")
        }
    }

    /// Refuses an output folder path that names something other than a folder (a file, /dev/null, a FIFO).
    static func refuseNonFolder(_ output: String, flag: String) throws {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: output, isDirectory: &isFolder), !isFolder.boolValue else {
            return
        }
        throw ValidationError("\(flag) \(output) exists and is not a folder: name a folder to write into")
    }

    /// `path` made absolute with links and `..` resolved; a path that does not exist yet is resolved through its
    /// nearest existing parent.
    static func resolvedPath(_ path: String) -> String {
        var head = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var tail: [String] = []
        while true {
            if let real = realpath(head, nil) {
                defer { free(real) }
                let base = String(cString: real)
                return ([base == "/" ? "" : base] + tail.reversed()).joined(separator: "/")
            }
            let url = URL(fileURLWithPath: head)
            let last = url.lastPathComponent
            if last != "." && last != "" { tail.append(last) }
            let parent = url.deletingLastPathComponent().path
            if parent == head || parent.isEmpty { return path }
            head = parent
        }
    }

    static func checkOutput(_ output: String, model: String, writing: String = "quantizing", flag: String = "--output",
                            source sourceFlag: String = "--model", insideAllowed: Bool = false) throws {
        // An empty path is no folder: the files written into it ("" + "/config.json") used to land in the root.
        guard !output.isEmpty else { throw ValidationError("\(flag) is empty: name the folder to write") }
        // An empty source resolved to the working folder: --adapter "" read as "--output is inside the --adapter
        // folder" (and elsewhere as the root's /adapter_config.json).
        guard !model.isEmpty else { throw ValidationError("\(sourceFlag) is empty: name the folder to read") }
        let out = resolvedPath(output), source = resolvedPath(model)
        let inside = !insideAllowed && out.hasPrefix(source.hasSuffix("/") ? source : source + "/")
        guard out != source, !inside else {
            throw ValidationError("\(flag) \(output) is " +
                "\(out == source ? "the \(sourceFlag) folder itself" : "inside the \(sourceFlag) folder \(model)"): "
                                  + "\(writing) there would overwrite or mix with the files being read; choose "
                                  + (insideAllowed ? "another folder" : "a folder outside \(model)"))
        }
    }

    func run() throws {
        // Refuse configs we could not train on, and a model missing a tensor, before spending time on the weights.
        let weights = try LlamaWeights.open(path: model)
        try weights.checkComplete()
        try weights.checkShapes()
        var quantizer = ModelQuantizer()
        quantizer.quantType = quantType
        quantizer.doubleQuant = doubleQuant
        quantizer.blocksize = blocksize
        quantizer.computeDType = computeDtype.dtype
        if let gpu = try device.open() {
            FileHandle.standardError.write("quantizing on \(gpu.description)\n".data(using: .utf8)!)
            quantizer.quantizeWeight = { tensor, type, blocksize, dq in
                let x = try gpu.upload(tensor)   // the file's bf16/f32 bytes as they are (f16 widened)
                let (packed, absmax) = try gpu.quantize4Bit(x, type: type, blocksize: blocksize)
                return Quantized4BitTensor(quantType: type, blocksize: blocksize, shape: tensor.shape, dtype: tensor.dtype,
                                           packed: packed, scales: dq ? .doubleQuantized(DoubleQuantizedScales(compressing: absmax)) : .float32(absmax))
            }
        }
        let start = Date()
        let reporter = ProgressReporter(label: "quantize")
        let summary = try quantizer.quantize(modelDirectory: model, outputDirectory: output) { done, total, name in
            reporter.update(done: done, total: total, detail: name)
        }
        reporter.finish()
        let seconds = Date().timeIntervalSince(start)
        let mb = { (bytes: Int) in String(format: "%.1f MB", Double(bytes) / 1e6) }
        print("quantized \(summary.quantizedCount) weights to \(quantType.rawValue)\(doubleQuant ? " + double quant" : "") "
              + "(\(mb(summary.bytesBefore)) → \(mb(summary.bytesAfter))), kept \(summary.copiedCount) tensors, "
              + String(format: "%.2f s", seconds) + " → \(output)")
    }
}

/// A progress line on stderr: redrawn in place on a terminal, a line every 10% otherwise.
final class ProgressReporter {
    let label: String
    let start = Date()
    let isTerminal = isatty(2) == 1
    var lastDecile = -1

    init(label: String) { self.label = label }

    func update(done: Int, total: Int, detail: String) {
        let elapsed = Date().timeIntervalSince(start)
        let remaining = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        let line = String(format: "%@ %ld/%ld (%.0f%%) elapsed %.1fs, left %.1fs  %@", label, done, total,
                          100 * Double(done) / Double(max(total, 1)), elapsed, remaining, detail)
        if isTerminal {
            FileHandle.standardError.write(("\r\u{1B}[K" + line).data(using: .utf8)!)
        } else {
            let decile = done * 10 / max(total, 1)
            if decile != lastDecile { lastDecile = decile; FileHandle.standardError.write((line + "\n").data(using: .utf8)!) }
        }
    }

    func finish() {
        if isTerminal { FileHandle.standardError.write("\n".data(using: .utf8)!) }
    }
}
