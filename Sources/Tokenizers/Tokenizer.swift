/// Text ↔ token ids (placeholder until the BPE tokenizer lands).
public final class Tokenizer {}
