/// GPT-2's reversible mapping between the 256 byte values and 256 printable Unicode characters, which byte-level BPE
/// vocabularies are written in (so the space byte appears as "Ġ", U+0120, and the newline as "Ċ", U+010A).
///
/// Bytes that are already printable and not blank (`!`…`~`, `¡`…`¬`, `®`…`ÿ`) stand for themselves; the other 68
/// take the characters U+0100, U+0101, … in increasing byte order.
enum ByteLevelAlphabet {
    /// The character standing for each byte, indexed by the byte.
    static let scalarForByte: [Unicode.Scalar] = {
        var table: [Unicode.Scalar] = []
        table.reserveCapacity(256)
        var nextSubstitute: UInt32 = 256
        for byte in UInt32(0)..<256 {
            if standsForItself(byte) {
                table.append(Unicode.Scalar(byte)!)
            } else {
                table.append(Unicode.Scalar(nextSubstitute)!)
                nextSubstitute += 1
            }
        }
        return table
    }()

    /// The byte each character of the alphabet stands for, indexed by the character's scalar value (all are below
    /// U+0144); -1 for characters outside the alphabet.
    static let byteForScalarValue: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar.value)] = Int16(byte) }
        return table
    }()

    /// The byte `scalar` stands for, or nil when it is not one of the alphabet's characters.
    @inline(__always)
    static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        let value = Int(scalar.value)
        guard value < byteForScalarValue.count else { return nil }
        let byte = byteForScalarValue[value]
        return byte < 0 ? nil : UInt8(byte)
    }

    /// `bytes` written in the alphabet: the form a byte-level vocabulary stores its tokens in.
    static func encode<Bytes: Sequence>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var scalars = String.UnicodeScalarView()
        for byte in bytes { scalars.append(scalarForByte[Int(byte)]) }
        return String(scalars)
    }

    private static func standsForItself(_ byte: UInt32) -> Bool {
        (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
    }
}
