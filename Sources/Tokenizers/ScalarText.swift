/// The classes of Unicode scalars the split patterns tell apart: `\p{L}` (letters), `\p{N}` (numbers), `\s`
/// (white space) and everything else.
enum ScalarKind: UInt8 {
    case letter, number, space, other

    /// The class of the scalar with value `value`.
    ///
    /// `\s` in Oniguruma (the regex engine of Hugging Face tokenizers) is U+0009–U+000D, U+0085 and the Zs, Zl, Zp
    /// categories, which is exactly Unicode's White_Space property.
    @inline(__always)
    static func of(_ value: UInt32) -> ScalarKind {
        if value < 128 { return asciiKinds[Int(value)] }
        guard let scalar = Unicode.Scalar(value) else { return .other }
        let properties = scalar.properties
        if properties.isWhitespace { return .space }
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return .number
        default:
            return .other
        }
    }

    /// ASCII by table, since almost every scalar of most texts is ASCII.
    private static let asciiKinds: [ScalarKind] = (0..<128).map { value -> ScalarKind in
        switch UInt8(value) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): return .letter
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        case 0x09...0x0D, 0x20: return .space
        default: return .other
        }
    }
}

/// A text decoded once into what the splitters and the BPE model read: its UTF-8 bytes, its Unicode scalars, where
/// each scalar starts among the bytes, and each scalar's class. Pieces of the text are ranges of scalar indices.
struct ScalarText {
    /// The UTF-8 encoding of the text.
    let bytes: [UInt8]
    /// The scalar values, in order.
    let scalars: [UInt32]
    /// Where each scalar's bytes start, plus the total byte count at the end (so `scalars.count + 1` entries).
    let byteOffsets: [Int]
    /// The class of each scalar.
    let kinds: [ScalarKind]

    init(_ text: String) {
        bytes = Array(text.utf8)
        var scalars: [UInt32] = []
        var offsets: [Int] = []
        var kinds: [ScalarKind] = []
        scalars.reserveCapacity(bytes.count)
        offsets.reserveCapacity(bytes.count + 1)
        kinds.reserveCapacity(bytes.count)
        var offset = 0
        for scalar in text.unicodeScalars {
            scalars.append(scalar.value)
            offsets.append(offset)
            kinds.append(ScalarKind.of(scalar.value))
            offset += UTF8.width(scalar)
        }
        offsets.append(offset)
        self.scalars = scalars
        self.byteOffsets = offsets
        self.kinds = kinds
    }

    /// The scalar count.
    var count: Int { scalars.count }

    /// The UTF-8 bytes of the scalars in `range`.
    func bytes(of range: Range<Int>) -> ArraySlice<UInt8> {
        bytes[byteOffsets[range.lowerBound]..<byteOffsets[range.upperBound]]
    }
}
