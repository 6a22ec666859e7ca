import Foundation

/// A token's text as a dictionary key, equal and hashed by its exact UTF-8 bytes.
///
/// `String`'s own `==` and hashing follow Unicode canonical equivalence, so "é" (U+00E9) and "e" + U+0301, or
/// "Å" (U+00C5) and the angstrom sign U+212B, are one key. Vocabularies list such spellings as separate tokens with
/// separate ids, and Hugging Face and llama.cpp tell them apart, so every lookup of a token (or of a word in the
/// word cache) goes through this type.
///
/// Both operations read the string's UTF-8 storage directly (native and small strings have it), which keeps the
/// word cache as fast as with `String` keys; anything else is made contiguous first.
struct TokenKey: Hashable {
    let text: String

    @inline(__always)
    init(_ text: String) { self.text = text }

    @inline(__always)
    static func == (lhs: TokenKey, rhs: TokenKey) -> Bool {
        let left = lhs.text.utf8, right = rhs.text.utf8
        guard left.count == right.count else { return false }
        let same = left.withContiguousStorageIfAvailable { a in
            right.withContiguousStorageIfAvailable { b in
                a.isEmpty || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
            }
        }
        return (same ?? nil) ?? left.elementsEqual(right)
    }

    @inline(__always)
    func hash(into hasher: inout Hasher) {
        let hashed: Void? = text.utf8.withContiguousStorageIfAvailable {
            hasher.combine(bytes: UnsafeRawBufferPointer($0))
        }
        if hashed == nil {
            var copy = text
            copy.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }
}
