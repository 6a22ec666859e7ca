#!/usr/bin/env python3
"""Reference ids for Tests/QLoRATests/TokenizerEquivalenceTests.swift: vocabularies holding canonically equivalent
spellings ("é" U+00E9 and "e" + U+0301; "Å" U+00C5, "A" + U+030A and the angstrom sign U+212B; "K" and the
Kelvin sign U+212A) as separate tokens, tokenized by Hugging Face `tokenizers`, which compares token texts
exactly.

The fixtures are built here the same way the Swift test builds them (same pieces, same JSON sections); the merges
of the SentencePiece-style vocabulary are every cut of a piece into two pieces, ranked by the piece's position,
which is also what qlora derives from a GGUF "llama" vocabulary's scores. The output is Swift source to paste into
the test: non-ASCII scalars are written as \\u{...} escapes, so no editor can change their spelling.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install tokenizers
    /tmp/tv/bin/python scripts/make-equivalence-vectors.py
"""
import json

from tokenizers import Tokenizer

# SentencePiece-style vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then these pieces (ids 259 on), then the
# two added tokens. Scores are minus the id, so earlier pieces merge first.
SPM_BASE = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
SPM_PIECES = [
    "\u2581", "e", "\u0301", "\u00e9", "A", "\u030a", "\u00c5", "\u212b", "K", "\u212a", "c", "a", "f",
    "ca", "caf", "e\u0301", "A\u030a", "\u2581\u00e9", "\u2581e\u0301", "\u2581\u00c5", "\u2581\u212b",
    "\u2581A\u030a", "\u2581K", "\u2581\u212a", "caf\u00e9", "cafe\u0301",
]
SPM_ADDED = ["<\u00e9>", "<e\u0301>"]

# The JSON sections of each SentencePiece-style tokenizer.json (the Swift test holds the same text).
SPM_PREPEND_NORMALIZER = (
    '{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\\u2581"}, '
    '{"type": "Replace", "pattern": {"String": " "}, "content": "\\u2581"}]}')
SPM_PREPEND_DECODER = (
    '{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "\\u2581"}, "content": " "}, '
    '{"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}')
METASPACE = '{"type": "Metaspace", "replacement": "\\u2581", "prepend_scheme": "always", "split": true}'
METASPACE_DECODER = '{"type": "Sequence", "decoders": [{"type": "ByteFallback"}, ' + METASPACE + ']}'

SPM_TEXTS = [
    "\u00e9", "e\u0301", "\u00c5", "A\u030a", "\u212b", "K", "\u212a", "caf\u00e9", "cafe\u0301",
    "\u00e9 e\u0301", "e\u0301 \u00e9", "\u00c5 A\u030a \u212b", "\u212b \u00c5", "K \u212a", "\u212a K",
    "caf\u00e9 cafe\u0301 caf\u00e9", "<\u00e9>x<e\u0301>", "<e\u0301>\u00e9", "e\u0301\u00e9A\u030a\u00c5",
]

# Byte-level vocabulary: the 256 one-byte tokens (id = byte), then each of these words built up byte by byte.
BYTE_WORDS = ["\u00e9", "\u00c5", "\u212b", "\u212a", "\u0301", "\u030a"]
BYTE_LEVEL = '{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}'
BYTE_TEXTS = [
    "K,\u212a", "\u212a,K", "\u00c5,\u212b", "\u212b,\u00c5", "\u00e9,e\u0301", "\u00c5 A\u030a \u212b",
    "K \u212a K",
]


def byte_alphabet():
    """GPT-2's byte-to-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def spm_merges(pieces):
    """Every cut of a piece into two pieces, in the order of the pieces; each piece may have one cut at most."""
    known = set(pieces)
    merges = []
    for piece in pieces:
        cuts = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in known and piece[i:] in known]
        assert len(cuts) <= 1, piece
        merges += [list(cut) for cut in cuts]
    return merges


def added_token(id, content, special):
    return {"id": id, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def spm_tokenizer(normalizer, pre_tokenizer, decoder, byte_fallback):
    tokens = SPM_BASE + SPM_PIECES + SPM_ADDED
    added = [added_token(i, t, True) for i, t in enumerate(SPM_BASE[:3])]
    added += [added_token(len(SPM_BASE) + len(SPM_PIECES) + i, t, False) for i, t in enumerate(SPM_ADDED)]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": byte_fallback, "ignore_merges": False,
             "vocab": {t: i for i, t in enumerate(tokens)}, "merges": spm_merges(SPM_PIECES)}
    return Tokenizer.from_str(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": json.loads(normalizer) if normalizer else None,
        "pre_tokenizer": json.loads(pre_tokenizer) if pre_tokenizer else None,
        "post_processor": None, "decoder": json.loads(decoder), "model": model}))


def byte_level_tokens():
    """The vocabulary and merges of the byte-level fixture."""
    alphabet = byte_alphabet()
    tokens = [alphabet[b] for b in range(256)]
    merges = []
    for word in BYTE_WORDS:
        spelled = [alphabet[b] for b in word.encode()]
        for end in range(2, len(spelled) + 1):
            left, right = "".join(spelled[:end - 1]), spelled[end - 1]
            if left + right not in tokens:
                tokens.append(left + right)
                merges.append([left, right])
    return tokens, merges


def byte_tokenizer():
    tokens, merges = byte_level_tokens()
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}
    return Tokenizer.from_str(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": json.loads(BYTE_LEVEL), "post_processor": None, "decoder": json.loads(BYTE_LEVEL),
        "model": model}))


def swift(text):
    return '"' + "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "\\u{%X}" % ord(c) for c in text) + '"'


def print_cases(name, tokenizer, texts):
    print("    static let %s: [(String, [Int])] = [" % name)
    for text in texts:
        print("        (%s, %s)," % (swift(text), tokenizer.encode(text, add_special_tokens=False).ids))
    print("    ]")


def print_ids(name, tokenizer, tokens):
    print("    static let %s: [(String, Int)] = [" % name)
    for token in tokens:
        print("        (%s, %d)," % (swift(token), tokenizer.token_to_id(token)))
    print("    ]")


def print_merges(name, merges):
    print("    static let %s: [(String, String)] = [" % name)
    for left, right in merges:
        print("        (%s, %s)," % (swift(left), swift(right)))
    print("    ]")


def main():
    prepend = spm_tokenizer(SPM_PREPEND_NORMALIZER, None, SPM_PREPEND_DECODER, True)
    metaspace = spm_tokenizer(None, METASPACE, METASPACE_DECODER, True)
    no_fallback = spm_tokenizer(None, METASPACE, METASPACE_DECODER, False)
    print_cases("prependCases", prepend, SPM_TEXTS)
    print_cases("metaspaceCases", metaspace, SPM_TEXTS)
    print_cases("noFallbackCases", no_fallback, SPM_TEXTS)
    print_ids("spmTokenIds", prepend, SPM_PIECES + SPM_ADDED)
    print_merges("spmMerges", spm_merges(SPM_PIECES))
    bytes_ = byte_tokenizer()
    print_cases("byteLevelCases", bytes_, BYTE_TEXTS)
    tokens, merges = byte_level_tokens()
    print_ids("byteLevelTokenIds", bytes_, tokens[256:])
    print_merges("byteLevelMerges", merges)


if __name__ == "__main__":
    main()
