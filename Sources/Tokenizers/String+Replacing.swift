extension String {
    /// Every occurrence of `pattern` replaced by `content`, matching by Unicode scalars (no Foundation, no
    /// canonical equivalence: token texts are compared exactly).
    func replacingAll(_ pattern: String, with content: String) -> String {
        let scalars = Array(unicodeScalars)
        let target = Array(pattern.unicodeScalars)
        guard !target.isEmpty, scalars.count >= target.count else { return self }
        var result = String.UnicodeScalarView()
        var index = 0
        while index < scalars.count {
            if index + target.count <= scalars.count && scalars[index..<(index + target.count)].elementsEqual(target) {
                result.append(contentsOf: content.unicodeScalars)
                index += target.count
            } else {
                result.append(scalars[index])
                index += 1
            }
        }
        return String(result)
    }
}
