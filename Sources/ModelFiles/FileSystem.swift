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

    /// What `path` is when it exists but is no regular file ("a folder", "a FIFO (named pipe)", ...), else nil
    /// (a regular file, or nothing there).
    public static func irregularKind(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) != S_IFREG else { return nil }
        return MappedFile.kind(info.st_mode)
    }

    /// True when `path` is a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The whole file, copied into memory: at most `limit` bytes (default `readLimit`). A larger file is an error
    /// naming it and both sizes; a 5 GB file named as a config.json or tokenizer.json used to fail the allocation
    /// of its copy (a trap) where the process may allocate less.
    public static func readBytes(_ path: String, limit: Int? = nil) throws -> [UInt8] {
        let file = try MappedFile(path: path)
        let most = limit ?? readLimit
        guard file.bytes.count <= most else {
            throw ModelFileError.cannotOpen(path: path, reason: "the file is \(file.bytes.count) bytes, more than "
                + "the \(most) that are read" + (limit == nil ? " into memory (half of what this process may "
                + "allocate)" : ""))
        }
        return Array(file.bytes)
    }

    /// The bytes of `path` up to a little over `most`, read with read(2) rather than mapped: enough to tell a file
    /// longer than `most` from one that is not, whatever size the file system gives it. Files under /proc say they
    /// hold 0 bytes and hold more (/proc/self/pagemap: 8 bytes for each page of the address space), so a read to
    /// their end never ended.
    public static func readAtMost(_ path: String, _ most: Int) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            let kind = MappedFile.kind(info.st_mode)
            throw ModelFileError.cannotOpen(path: path, reason: "not a regular file (\(kind))")
        }
        // Chunks of 64 KiB (a multiple of 8, which /proc/self/pagemap requires of every read).
        var bytes: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 1 << 16)
        while bytes.count <= most {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                throw ModelFileError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        return bytes
    }

    /// The memory this process may allocate: the machine's physical memory, or less where an address-space or
    /// data-size limit (`ulimit -v`, `ulimit -d`) is set.
    public static var allocatableBytes: Int {
        var most = Int(sysconf(Int32(_SC_PHYS_PAGES))) &* Int(sysconf(Int32(_SC_PAGESIZE)))
        if most <= 0 { most = Int.max }
        #if canImport(Glibc)
        for resource in [RLIMIT_AS, RLIMIT_DATA] {
            var r = rlimit()
            if getrlimit(__rlimit_resource_t(resource.rawValue), &r) == 0, r.rlim_cur != rlim_t.max {
                most = min(most, Int(clamping: r.rlim_cur))
            }
        }
        #endif
        return most
    }

    /// The most bytes `readBytes` copies by default: half of `allocatableBytes` (the copy, and what is parsed
    /// from it, must fit beside each other).
    public static var readLimit: Int { max(allocatableBytes / 2, 1 << 20) }

    /// What a Git LFS pointer file is, in words, when `bytes` is one, else nil. A repository of the Hugging Face
    /// Hub cloned without git-lfs holds such a pointer (about 130 bytes of text: "version
    /// https://git-lfs.github.com/spec/v1", the object's sha256 and size) in place of each large file, which then
    /// failed as a header length of billions of bytes, as JSON with a bad first character, or trained as text.
    public static func gitLFSPointerNote(_ bytes: some Collection<UInt8>) -> String? {
        let prefix = Array("version https://git-lfs.github.com/spec/".utf8)
        guard bytes.count <= 1024, bytes.starts(with: prefix) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self)
        let size = text.split(separator: "\n").first { $0.hasPrefix("size ") }.map { " of \($0.dropFirst(5)) bytes" }
        return "the file is a Git LFS pointer (\(bytes.count) bytes of text standing for the real file\(size ?? "")), "
            + "not its contents: the repository was cloned without git-lfs; run `git lfs install` and `git lfs pull` "
            + "in it, or download the file itself"
    }

    /// `path` without its final slashes ("out/" → "out"; "/" stays "/"): where a sibling such as `path + ".tmp"`
    /// must go beside the folder, not into it.
    public static func withoutTrailingSlashes(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1, p.hasSuffix("/") { p = p.dropLast() }
        return String(p)
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
