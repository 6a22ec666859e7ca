import Foundation

/// This process's host memory, as `/usr/bin/time -v` and `/proc/self/status` report it.
enum HostMemory {
    /// The most resident memory the process has had so far (VmHWM, bytes; what `/usr/bin/time -v` calls maximum
    /// resident set size).
    static func peakResidentBytes() -> Int { statusField("VmHWM:") }
    /// Resident memory now (VmRSS, bytes).
    static func residentBytes() -> Int { statusField("VmRSS:") }

    static func statusField(_ name: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name) }),
              let kb = Int(line.split(separator: " ").dropFirst().first(where: { !$0.isEmpty }) ?? "") else {
            return -1
        }
        return kb * 1024
    }
}
