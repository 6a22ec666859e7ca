import ArgumentParser
import CUDABackend
import CUDATraining
import Foundation
import Training

/// `--devices N|all` (with `--nnodes`, `--node-rank`, `--rendezvous` across machines): data-parallel training, one
/// worker process per GPU. The command started by the user is the launcher: it starts one copy of itself per local
/// GPU with `QLORA_RANK`, `QLORA_WORLD_SIZE`, `QLORA_RENDEZVOUS` and `CUDA_VISIBLE_DEVICES` set, waits for them, and
/// fails if any fails. Each worker joins the NCCL group through the rendezvous: rank 0 writes NCCL's unique id to the
/// shared file (under a temporary name, then renamed), the others wait for it; or, with `tcp:HOST:PORT`, rank 0 serves
/// the id on that port (`TCPRendezvous`). A process that a cluster launcher started (torchrun and the like: `RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` in its environment) is one rank by itself: GPU
/// `LOCAL_RANK`, rendezvous `tcp:MASTER_ADDR:MASTER_PORT`.
struct DataParallelOptions: ParsableArguments {
    @Option(help: "Data-parallel training on N GPUs of this machine (or all): one worker per GPU, gradients all-reduced with NCCL.")
    var devices: String?
    @Option(help: "Machines taking part (each runs the same command with its --node-rank).") var nnodes: Int = 1
    @Option(help: "This machine's index, 0 ..< --nnodes.") var nodeRank: Int = 0
    @Option(help: """
        file:PATH on a file system every machine sees (a fresh path per run), or tcp:HOST:PORT (HOST is node 0's \
        address; rank 0 serves the id there); needed with --nnodes > 1.
        """)
    var rendezvous: String?

    func validate() throws {
        if let devices, devices != "all", (Int(devices) ?? 0) < 1 { throw ValidationError("--devices \(devices): a positive number or all") }
        // Bounded so that ranks (node rank × GPUs per node + local rank) can never overflow.
        guard (1...Self.maximumRanks).contains(nnodes) else {
            throw ValidationError("--nnodes is \(nnodes): must be in 1 ... \(Self.maximumRanks)")
        }
        if let devices, let n = Int(devices), n > Self.maximumRanks {
            throw ValidationError("--devices is \(n): must be at most \(Self.maximumRanks) (or all)")
        }
        guard (0..<nnodes).contains(nodeRank) else {
            throw ValidationError("--node-rank is \(nodeRank): must be in 0 ..< --nnodes (\(nnodes))")
        }
        if nnodes > 1 && rendezvous == nil {
            throw ValidationError("--nnodes > 1 needs --rendezvous file:PATH (a shared file system) or tcp:HOST:PORT")
        }
        if let rendezvous, !rendezvous.hasPrefix("file:"), Self.tcpAddress(rendezvous) == nil {
            throw ValidationError("--rendezvous \(rendezvous): use file:PATH or tcp:HOST:PORT")
        }
        // Rank 0 replaces the file with the id and deletes it at the end: a path that is there (a user's file, a
        // folder, a stale id of another run) used to be overwritten and deleted. Checked by node 0's launcher only
        // (its workers, and the other nodes, find the id there).
        if let rendezvous, rendezvous.hasPrefix("file:"), devices != nil, nodeRank == 0, Self.worker == nil {
            let path = String(rendezvous.dropFirst(5))
            guard !path.isEmpty else { throw ValidationError("--rendezvous file: names no path") }
            var info = stat()
            if lstat(path, &info) == 0 {
                throw ValidationError("--rendezvous \(rendezvous): \(path) already exists; rank 0 would replace it "
                    + "with NCCL's id and delete it at the end: give a fresh path (one per run)")
            }
        }
        // Without --devices nothing is launched, so these would be read by nobody (a cluster launcher's workers take
        // their place from RANK, WORLD_SIZE and MASTER_ADDR instead).
        let unused = [("--nnodes", nnodes != 1), ("--node-rank", nodeRank != 0), ("--rendezvous", rendezvous != nil)]
            .filter(\.1).map(\.0)
        if devices == nil, !unused.isEmpty {
            throw ValidationError("\(unused.joined(separator: ", ")) \(unused.count == 1 ? "has" : "have") no effect "
                                  + "without --devices (the GPUs of each machine): add --devices N or all")
        }
    }

    /// Most machines, and most GPUs on one machine, a run may name (far beyond any real cluster).
    static let maximumRanks = 65_536

    /// This process's place, when it is a worker started by a launcher (ours, or a cluster's), and its GPU.
    struct Worker { let rank: Int, worldSize: Int, rendezvous: String, deviceOrdinal: Int }

    static var worker: Worker? {
        let env = ProcessInfo.processInfo.environment
        if let r = env["QLORA_RANK"].flatMap(Int.init), let w = env["QLORA_WORLD_SIZE"].flatMap(Int.init),
           let path = env["QLORA_RENDEZVOUS"] {
            return Worker(rank: r, worldSize: w, rendezvous: path, deviceOrdinal: 0)   // CUDA_VISIBLE_DEVICES: one GPU
        }
        if let r = env["RANK"].flatMap(Int.init), let w = env["WORLD_SIZE"].flatMap(Int.init), w > 1,
           let host = env["MASTER_ADDR"], !host.isEmpty, let port = env["MASTER_PORT"].flatMap(Int.init),
           (1...65535).contains(port) {
            return Worker(rank: r, worldSize: w, rendezvous: "tcp:\(host):\(port)",
                          deviceOrdinal: env["LOCAL_RANK"].flatMap(Int.init) ?? 0)
        }
        return nil
    }

    /// `worker`, checked before its numbers are used: a world size from 1 to `maximumRanks` and a rank below it.
    /// QLORA_WORLD_SIZE=9223372036854775807 used to trap on the first product of sizes.
    static func validatedWorker() throws -> Worker? {
        guard let worker else {
            if let problem = incompleteLauncherEnvironment(ProcessInfo.processInfo.environment) {
                throw ValidationError(problem)
            }
            return nil
        }
        guard (1...maximumRanks).contains(worker.worldSize), (0..<worker.worldSize).contains(worker.rank),
              worker.deviceOrdinal >= 0 else {
            throw ValidationError("this worker's environment gives rank \(worker.rank) of world size "
                + "\(worker.worldSize) (device \(worker.deviceOrdinal)): the world size must be from 1 to "
                + "\(maximumRanks), the rank from 0 to the world size - 1 (QLORA_RANK / QLORA_WORLD_SIZE, or "
                + "RANK / WORLD_SIZE / LOCAL_RANK)")
        }
        return worker
    }

    /// What is wrong with a launcher's variables that are there but make no worker (`worker` is nil): a rank or
    /// world size that is no number, or a part missing. Such a process used to train alone, as if no launcher had
    /// started it: under torchrun every rank trained the whole run by itself. Also a MASTER_PORT that is no port
    /// (it was taken for a rendezvous file named tcp:HOST:PORT). nil: nothing wrong.
    static func incompleteLauncherEnvironment(_ env: [String: String]) -> String? {
        let ours = ["QLORA_RANK", "QLORA_WORLD_SIZE", "QLORA_RENDEZVOUS"]
        func describe(_ names: [String]) -> String {
            names.map { "\($0)=" + (env[$0].map { "'\($0.prefix(40))'" } ?? "(unset)") }.joined(separator: " ")
        }
        let numbers = "a whole number"
        if ours.contains(where: { env[$0] != nil }), env["QLORA_RANK"].flatMap(Int.init) == nil
            || env["QLORA_WORLD_SIZE"].flatMap(Int.init) == nil || env["QLORA_RENDEZVOUS"] == nil {
            return "this process's environment has \(describe(ours)): a data-parallel worker needs all three (the "
                + "rank and world size \(numbers) each); they are set by qlora train --devices, so unset them to train "
                + "in one process"
        }
        let cluster = ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
        guard let world = env["WORLD_SIZE"] else { return nil }
        guard let size = Int(world) else {
            return "this process's environment has \(describe(["WORLD_SIZE"])): a cluster launcher's world size must "
                + "be \(numbers)"
        }
        guard size > 1 else { return nil }   // one process: nothing to join
        if env["RANK"].flatMap(Int.init) == nil || env["MASTER_ADDR"].map({ !$0.isEmpty }) != true
            || env["MASTER_PORT"].flatMap(Int.init).map({ (1...65535).contains($0) }) != true {
            return "this process's environment has \(describe(cluster)): a cluster launcher's worker (WORLD_SIZE > 1) "
                + "needs RANK (\(numbers)), MASTER_ADDR (a host) and MASTER_PORT (a port from 1 to 65535)"
        }
        return nil
    }

    /// (host, port) of a tcp:HOST:PORT rendezvous.
    static func tcpAddress(_ rendezvous: String) -> (host: String, port: Int)? {
        guard rendezvous.hasPrefix("tcp:"), let colon = rendezvous.lastIndex(of: ":"),
              colon > rendezvous.index(rendezvous.startIndex, offsetBy: 3),
              let port = Int(rendezvous[rendezvous.index(after: colon)...]),
                  (1...65535).contains(port) else { return nil }
        let host = String(rendezvous[rendezvous.index(rendezvous.startIndex, offsetBy: 4)..<colon])
        return host.isEmpty ? nil : (host, port)
    }

    /// True when this process should start the workers (and not train itself).
    var isLauncher: Bool { devices != nil && Self.worker == nil }

    /// Starts one worker per local GPU running this same command line, waits for all, and exits with the first
    /// failure's status (stopping the others).
    func launchWorkers() throws -> Never {
        // One worker per GPU that is there: a count beyond the machine's GPUs would start that many processes.
        let available = CUDADevice.count()
        let local = devices == "all" ? available : Int(devices ?? "") ?? 0
        guard available >= 1 else {
            throw CUDAError.noDevice("--devices \(devices ?? ""): the driver sees no GPU (data-parallel training needs "
                                     + "NVIDIA GPUs; leave --devices out to train on the CPU)")
        }
        guard local <= available else {
            throw CUDAError.noDevice("--devices \(local): this machine has \(available) "
                                     + (available == 1 ? "GPU" : "GPUs"))
        }
        let world = local * nnodes
        let path = rendezvous.map { $0.hasPrefix("file:") ? String($0.dropFirst(5)) : $0 }
            ?? NSTemporaryDirectory() + "qlora-rendezvous-\(getpid())-\(UInt64(Date().timeIntervalSince1970 * 1000))"
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var workers: [Process] = []
        let forwarded = DispatchGroup()
        for localRank in 0..<local {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = Array(CommandLine.arguments.dropFirst())
            var env = ProcessInfo.processInfo.environment
            env["QLORA_RANK"] = String(nodeRank * local + localRank)
            env["QLORA_WORLD_SIZE"] = String(world)
            env["QLORA_RENDEZVOUS"] = path
            env["CUDA_VISIBLE_DEVICES"] = String(localRank)
            env["NCCL_NVLS_ENABLE"] = env["NCCL_NVLS_ENABLE"] ?? "0"   // no NVLink multicast (it can hang shared hosts)
            p.environment = env
            // Each worker's standard error comes back whole, a line at a time, prefixed with its rank (not
            // interleaved character by character with the other workers').
            let pipe = Pipe()
            p.standardError = pipe
            try p.run()
            workers.append(p)
            let prefix = "[rank \(nodeRank * local + localRank)] "
            forwarded.enter()
            Thread {
                Self.forwardLines(from: pipe.fileHandleForReading, prefix: prefix)
                forwarded.leave()
            }.start()
        }
        FileHandle.standardError.write("started \(local) workers (ranks \(nodeRank * local)..<\(nodeRank * local + local) of \(world))\n".data(using: .utf8)!)
        var status: Int32 = 0
        var remaining = Set(workers.indices)
        while !remaining.isEmpty {
            for i in remaining where !workers[i].isRunning {
                remaining.remove(i)
                let s = workers[i].terminationStatus
                if s != 0 && status == 0 {
                    status = s
                    FileHandle.standardError.write("worker \(i) failed (status \(s)); stopping the others\n".data(using: .utf8)!)
                    for w in workers where w.isRunning { w.terminate() }
                }
            }
            usleep(100_000)
        }
        _ = forwarded.wait(timeout: .now() + 10)   // the workers' last lines
        if !path.hasPrefix("tcp:") { try? FileManager.default.removeItem(atPath: path) }
        Foundation.exit(status)
    }

    /// One lock for the lines of all workers on this process's standard error.
    static let standardErrorLock = NSLock()

    /// Copies `handle` to standard error until it ends, each line (ended by a newline or, for progress lines, a
    /// carriage return) written at once with `prefix` before it.
    static func forwardLines(from handle: FileHandle, prefix: String) {
        var pending: [UInt8] = []
        func emit(_ line: ArraySlice<UInt8>) {
            standardErrorLock.lock()
            FileHandle.standardError.write(Data(prefix.utf8) + Data(line))
            standardErrorLock.unlock()
        }
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            pending += chunk
            var start = 0
            for (i, byte) in pending.enumerated() where byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") {
                emit(pending[start...i])
                start = i + 1
            }
            pending.removeFirst(start)
        }
        if !pending.isEmpty { emit(pending[...] + [UInt8(ascii: "\n")]) }
    }

    /// Joins the group as the worker the environment names: the GPU, then NCCL through the rendezvous (a file, or
    /// rank 0 serving the id over TCP while it joins NCCL itself).
    static func join(_ worker: Worker) throws -> (CUDADevice, NCCLCommunicator) {
        let device: CUDADevice
        do { device = try CUDADevice(ordinal: worker.deviceOrdinal) } catch {
            // A worker of a launcher's making trains on its GPU whatever --device says: said, lest the error's
            // advice (run without --device cuda) puzzle a user who gave --device cpu.
            throw CUDAError.noDevice("rank \(worker.rank) of \(worker.worldSize) (a data-parallel worker, from "
                + "QLORA_RANK / RANK in this process's environment) needs GPU \(worker.deviceOrdinal): \(error)")
        }
        var id: [UInt8]
        var server: Thread? = nil
        if let (host, port) = tcpAddress(worker.rendezvous) {
            if worker.rank == 0 {
                id = try NCCLCommunicator.makeUniqueId()
                let listener = try TCPRendezvous.listen(port: port)
                let payload = id, clients = worker.worldSize - 1
                // The others fetch the id while this rank joins NCCL (which waits for all of them).
                server = Thread {
                    do { try listener.serve(payload: payload, clients: clients) } catch {
                        FileHandle.standardError.write("\(error)\n".data(using: .utf8)!)
                    }
                }
                server?.start()
            } else {
                id = try TCPRendezvous.fetch(host: host, port: port, count: 128)
            }
        } else {
            let idPath = worker.rendezvous
            if worker.rank == 0 {
                id = try NCCLCommunicator.makeUniqueId()
                let temp = idPath + ".tmp\(getpid())"
                guard FileManager.default.createFile(atPath: temp, contents: Data(id)), rename(temp, idPath) == 0 else {
                    throw CUDAError.rendezvous("rendezvous: cannot write \(idPath)")
                }
            } else {
                let deadline = Date().addingTimeInterval(300)
                while true {
                    if let d = FileManager.default.contents(atPath: idPath), d.count == 128 { id = [UInt8](d); break }
                    guard Date() < deadline else {
                        throw CUDAError.rendezvous("rendezvous: rank 0 wrote no id to \(idPath) within 300 s")
                    }
                    usleep(50_000)
                }
            }
        }
        let communicator = try NCCLCommunicator(device: device, rank: worker.rank, worldSize: worker.worldSize, uniqueId: id)
        if worker.rank == 0 {
            FileHandle.standardError.write(("rank 0 of \(worker.worldSize): \(device.description); " +
                "\(communicator.description)\n")
                .data(using: .utf8)!)
            if server == nil { try? FileManager.default.removeItem(atPath: worker.rendezvous) }   // the id is spent
        }
        return (device, communicator)
    }

    /// Rank 0 alone prints: the other workers' standard output goes nowhere.
    static func quietUnlessRankZero() {
        if let w = worker, w.rank != 0 { freopen("/dev/null", "w", stdout) }
    }
}
