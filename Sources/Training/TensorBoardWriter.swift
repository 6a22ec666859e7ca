import Foundation
import ModelFiles

/// Scalars in TensorBoard's event-file format, so `tensorboard --logdir DIR` plots a run (what `report_to:
/// tensorboard` gives in the Hugging Face Trainer). A file is a sequence of TFRecords — an 8-byte little-endian
/// length, its masked CRC-32C, the bytes, their masked CRC-32C — each holding a serialized `tensorflow.Event`
/// protocol buffer: first `file_version = "brain.Event:2"`, then one event per logged step with a `Summary` of
/// `simple_value`s. The protobuf fields are written by hand (the few this needs).
public final class TensorBoardWriter {
    /// The event file.
    public let path: String
    private let handle: FileHandle

    /// Creates `directory` and a new event file in it, named as TensorFlow names them.
    public init(directory: String) throws {
        try FileSystem.createDirectory(directory)
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "localhost"
        path = directory + "/events.out.tfevents.\(Int(Date().timeIntervalSince1970)).\(host).\(getpid()).qlora"
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let h = FileHandle(forWritingAtPath: path) else {
            throw ModelFileError.writeFailed(path: path, reason: "cannot create the TensorBoard event file")
        }
        handle = h
        var version = Protobuf()
        version.double(1, Date().timeIntervalSince1970)
        version.string(3, "brain.Event:2")
        try write(record: version.bytes)
    }

    deinit { try? handle.close() }

    /// One event at `step` with the scalar values `tag → value` (e.g. "train/loss").
    public func add(step: Int, scalars: [(tag: String, value: Double)], wallTime: Double = Date().timeIntervalSince1970)
        throws {
        var summary = Protobuf()
        for (tag, value) in scalars {
            var v = Protobuf()
            v.string(1, tag)
            v.float(2, Float(value))
            summary.message(1, v)
        }
        var event = Protobuf()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.message(5, summary)
        try write(record: event.bytes)
    }

    /// The scalars of a training log line, under the Hugging Face Trainer's tags.
    public func add(_ m: StepMetrics) throws {
        var scalars: [(String, Double)] = []
        if let loss = m.loss { scalars.append(("train/loss", loss)) }
        if let lr = m.learningRate { scalars.append(("train/learning_rate", Double(lr))) }
        if let norm = m.gradNorm { scalars.append(("train/grad_norm", Double(norm))) }
        if let rate = m.tokensPerSecond { scalars.append(("train/tokens_per_second", rate)) }
        if let eval = m.evalLoss { scalars.append(("eval/loss", eval)) }
        if !scalars.isEmpty { try add(step: m.step, scalars: scalars) }
    }

    func write(record data: [UInt8]) throws {
        var length = UInt64(data.count).littleEndian
        let lengthBytes = withUnsafeBytes(of: &length) { Array($0) }
        var out = lengthBytes
        out += Self.littleEndian(Self.maskedCRC32C(lengthBytes))
        out += data
        out += Self.littleEndian(Self.maskedCRC32C(data))
        do { try handle.write(contentsOf: Data(out)); try handle.synchronize() } catch {
            throw ModelFileError.writeFailed(path: path, reason: "\(error)")
        }
    }

    static func littleEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: records are small.
    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        }
        return ~crc
    }

    /// TFRecord's masking of a CRC: rotated right by 15 bits, plus a constant.
    public static func maskedCRC32C(_ bytes: [UInt8]) -> UInt32 {
        let crc = crc32c(bytes)
        return ((crc >> 15) | (crc << 17)) &+ 0xA282_EAD8
    }
}

/// The protocol-buffer wire format, as far as events need it: varints, 64-bit doubles, 32-bit floats and
/// length-delimited strings and messages, each after its key (field number << 3 | wire type).
struct Protobuf {
    var bytes: [UInt8] = []

    mutating func key(_ field: Int, _ wireType: UInt64) { appendVarint(UInt64(field) << 3 | wireType) }
    mutating func appendVarint(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func varint(_ field: Int, _ v: UInt64) { key(field, 0); appendVarint(v) }
    mutating func double(_ field: Int, _ v: Double) {
        key(field, 1)
        bytes += (0..<8).map { UInt8(truncatingIfNeeded: v.bitPattern >> (8 * UInt64($0))) }
    }
    mutating func float(_ field: Int, _ v: Float) {
        key(field, 5)
        bytes += (0..<4).map { UInt8(truncatingIfNeeded: v.bitPattern >> (8 * UInt32($0))) }
    }
    mutating func string(_ field: Int, _ s: String) { lengthDelimited(field, Array(s.utf8)) }
    mutating func message(_ field: Int, _ m: Protobuf) { lengthDelimited(field, m.bytes) }
    mutating func lengthDelimited(_ field: Int, _ b: [UInt8]) {
        key(field, 2); appendVarint(UInt64(b.count)); bytes += b
    }
}
