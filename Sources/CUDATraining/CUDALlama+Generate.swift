import CUDABackend
import Llama

extension CUDALlama {
    /// Greedy or sampled continuation of `prompt` on the GPU, as `LlamaModel.generate` does on the CPU. Each new
    /// token runs the whole sequence again (no KV cache on the GPU yet): fine for short answers, slow for long ones.
    public func generate(prompt: [Int], options: SamplingOptions) throws -> [Int] {
        precondition(!prompt.isEmpty, "generation needs at least one prompt token")
        var rng = SeededGenerator(seed: options.seed)
        var sequence = prompt
        var out: [Int] = []
        while out.count < options.maxNewTokens && sequence.count < config.maxPositionEmbeddings {
            let logits = try self.logits(inputIds: sequence, batch: 1, tokens: sequence.count)
            let next = LlamaModel.pick(from: Array(logits.suffix(config.vocabSize)), options: options, rng: &rng)
            out.append(next)
            if options.stopTokenIds.contains(next) { break }
            sequence.append(next)
        }
        return out
    }
}
