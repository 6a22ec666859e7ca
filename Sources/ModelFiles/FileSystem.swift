#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The few file-system operations the model readers need, with errors that name the path.
public enum FileSystem {
    /// True when `path` is a regular file.
    public static func isFile(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }

    /// True when `path` is a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The whole file.
    public static func readBytes(_ path: String) throws -> [UInt8] {
        let file = try MappedFile(path: path)
        return Array(file.bytes)
    }

    /// Creates `path` and its parents if missing.
    public static func createDirectory(_ path: String) throws {
        // An empty path names no folder; files written "into" it (path + "/name") would land in the root folder.
        guard !path.isEmpty else { throw ModelFileError.writeFailed(path: path, reason: "the folder path is empty") }
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if isDirectory(current) { continue }
            if mkdir(current, 0o755) != 0 && errno != EEXIST {
                throw ModelFileError.writeFailed(path: current, reason: String(cString: strerror(errno)))
            }
        }
    }

    /// Names of the entries of a directory (no `.` or `..`), sorted.
    public static func contents(of directory: String) throws -> [String] {
        guard let dir = opendir(directory) else {
            throw ModelFileError.cannotOpen(path: directory, reason: String(cString: strerror(errno)))
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Copies a file atomically.
    public static func copyFile(from source: String, to destination: String) throws {
        let file = try MappedFile(path: source)
        try AtomicFile.write(to: destination) { emit in if file.bytes.count > 0 { try emit(file.bytes) } }
    }
}
