#!/usr/bin/env python3
"""A seeded fuzzer of the qlora release binary aimed at the commands and settings the other two fuzzers left
alone: merge, export, generate, eval, info, quantize, tokenize, plan and bench, and train options met together.

fuzz-cli.py mutates one valid input at a time; fuzz-structured.py combines lengths, resume chains, output folders
and GGUF grammars for train. This one builds inputs that each pass validation and meet deep in the engine:

  tokenizer  special-token ids a tokenizer.json names outside its own vocabulary (post_processor
             TemplateProcessing "ids", BertProcessing cls/sep, padding.pad_id, tokenizer_config tokens), with
             generate (plain, --chat, --prompts-from), eval, train, tokenize --add-special-tokens and export.
  inside     train runs whose --init-adapter is a folder the run itself writes (OUTPUT_DIR/best, a checkpoint),
             with --overwrite-output-dir, --save-steps, --save-total-limit, --load-best-model-at-end: the
             starting adapter must never change or vanish.
  shape      plan, bench --device cpu and info on configs at the accepted limits (layer counts, tiny vocabularies,
             explicit head_dim, GQA, rope_scaling variants): no trap, and no hang on a 300-byte config.
  pipeline   a synthetic model of odd but consistent shape (GQA, explicit head_dim, tied or not, biases) quantized
             with a random --blocksize / --quant-type / --double-quant, trained a step, then merged, exported
             (every --type / --embedding-type, --adapter-only), generated from, evaluated and described (info --dot).
  adapter    adapters whose adapter_config.json disagrees with adapter_model.safetensors (r, targets, shapes,
             missing and extra tensors, lora_alpha 0, use_rslora, fan_in_fan_out) for merge, export, generate,
             eval, info and train --init-adapter.
  generate   prompts at and over the context, empty prompts, models without BOS/EOS, chat templates that render
             nothing, --prompts-from with --limit, sampling settings at their edges.
  layers     a model whose config claims far more layers than its file holds (num_hidden_layers up to 2^24 over
             tiny-llama's two) for info, merge, export, quantize, generate and eval: a quick error, never minutes
             of name lists or a failed allocation.
  memory     batches and shapes past the process's memory limit (ulimit -v): eval and train with --batch-size in
             the thousands over a few MB of data, bench --device cpu on the named 7B/8B shapes: a clear refusal,
             never "Fatal error: failed to allocate".
  priors     commands that fail after an earlier output exists: export onto a previous GGUF with a check that cannot
             run (an unusable --check-data, a context of one token), plot into a run whose loss.svg is a link to
             another file. A failed run must leave the previous output as it was; no run may write through a link.
  trainopts  train options together: --packing with --eval-data, --load-best-model-at-end with
             --save-total-limit, --early-stopping-*, --train-on-eos, --roles-to-train, --report-to tensorboard with
             odd --logging-dir, --validation-split tiny or near 1, gradient accumulation on tiny data.

Every run is classified as fuzz-cli.py does: ok, error (exit 1..127), crash (a signal, exit >= 128, or
"Fatal error" / "Segmentation" / "Illegal instruction" / "runtime failure" in the output), hang (timeout), lost (a
watched input, or a prior output of a failed run, changed or vanished). Crashes, hangs and lost files keep their
reproducer under WORK/findings/KIND-N/ (files and a cmd.sh). The same --seed gives the same cases.

Usage:
  python3 scripts/fuzz-commands.py [--binary .build/release/qlora] [--work /tmp/qlora-fuzz3] [--seed 1]
                                   [--cases 20] [--kinds tokenizer,inside,...] [--timeout 60]
                                   [--memory-gib 8] [--only KIND-N] [--verbose]

Needs ../shared/golden/hf-qlora (or $QLORA_SHARED/golden/hf-qlora) and scripts/fuzz-structured.py (its fixtures
and runner are reused). Standard library only. Runs one case at a time, under nice.
"""

import importlib.util
import json
import os
import random
import shlex
import shutil
import struct
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("fuzz_structured", os.path.join(REPO, "scripts", "fuzz-structured.py"))
fs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fs)

write_json, write_bytes, copy_tree = fs.write_json, fs.write_bytes, fs.copy_tree
CHAT_TEMPLATE = fs.CHAT_TEMPLATE


def load_json(path):
    with open(path) as f:
        return json.load(f)


def text_data(path, rng, n=8, kind="text"):
    words = fs.TEXT.split(" ")
    with open(path, "w") as f:
        for _ in range(n):
            a = " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
            b = " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))
            if kind == "text":
                f.write(json.dumps({"text": a}) + "\n")
            elif kind == "qa":
                f.write(json.dumps({"question": a, "answer": b}) + "\n")
            elif kind == "chat":
                msgs = [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
                if rng.random() < 0.3:
                    msgs = [{"role": "system", "content": b}] + msgs
                f.write(json.dumps({"messages": msgs}) + "\n")
            else:
                f.write(json.dumps({"prompt": a, "completion": b}) + "\n")
    return path


def config_with(base, d, changes, name="model", source="model"):
    model = os.path.join(d, name)
    copy_tree(os.path.join(base, source), model)
    path = os.path.join(model, "config.json")
    c = load_json(path)
    c.update(changes)
    write_json(path, c)
    return model


# ---------------------------------------------------------------------------------------------------------------
# safetensors writing


def st_write(path, tensors):
    """tensors: list of (name, dtype, shape, values as floats)."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, dtype, shape, values in tensors:
        if dtype == "F32":
            blob = struct.pack("<%df" % len(values), *values)
        else:
            raw = struct.pack("<%df" % len(values), *values)
            words = struct.unpack("<%dI" % len(values), raw)
            if dtype == "BF16":
                blob = struct.pack("<%dH" % len(values), *[(w >> 16) & 0xFFFF for w in words])
            else:
                blob = struct.pack("<%de" % len(values), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    write_bytes(path, struct.pack("<Q", len(h)) + h + b"".join(blobs))


def synthetic_model(rng, d, name="model", tokenizer_from=None):
    """A model of odd but consistent shape: the config and the tensors agree."""
    heads = rng.choice([1, 2, 3, 4, 6])
    kv = rng.choice([h for h in range(1, heads + 1) if heads % h == 0])
    head_dim = rng.choice([2, 4, 6, 8, 16, 32])
    explicit = rng.random() < 0.6
    hidden = rng.choice([heads * head_dim, 8, 12, 24, 30, 33, 64]) if explicit else heads * head_dim
    inter = rng.choice([1, 3, 7, 16, 33, 64])
    vocab = rng.choice([384, 384, 390, 400])
    layers = rng.choice([1, 1, 2, 3])
    tie = rng.random() < 0.4
    bias = rng.random() < 0.25
    dtype = rng.choice(["F32", "BF16", "F16"])
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "qwen2" if bias and rng.random() < 0.5 else "llama",
              "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
              "num_key_value_heads": kv, "num_hidden_layers": layers, "vocab_size": vocab,
              "max_position_embeddings": rng.choice([8, 16, 32, 64, 256]), "rms_norm_eps": 1e-5,
              "tie_word_embeddings": tie, "attention_bias": bias, "bos_token_id": 1, "eos_token_id": 2,
              "torch_dtype": {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype], "rope_theta": 10000.0}
    if explicit:
        config["head_dim"] = head_dim
    r = rng.random()
    if r < 0.2:
        config["rope_scaling"] = {"rope_type": "llama3", "factor": rng.choice([2.0, 8.0]), "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": rng.choice([1, 4, 8192])}
    elif r < 0.35:
        config["rope_scaling"] = {"type": "linear", "factor": rng.choice([0.5, 2.0, 1e-3])}
    shapes = [("model.embed_tokens.weight", [vocab, hidden]), ("model.norm.weight", [hidden])]
    if not tie or rng.random() < 0.3:      # tied models sometimes still ship an lm_head
        shapes.append(("lm_head.weight", [vocab, hidden]))
    q, kvw = heads * head_dim, kv * head_dim
    for i in range(layers):
        p = "model.layers.%d." % i
        shapes += [(p + "input_layernorm.weight", [hidden]), (p + "post_attention_layernorm.weight", [hidden]),
                   (p + "self_attn.q_proj.weight", [q, hidden]), (p + "self_attn.k_proj.weight", [kvw, hidden]),
                   (p + "self_attn.v_proj.weight", [kvw, hidden]), (p + "self_attn.o_proj.weight", [hidden, q]),
                   (p + "mlp.gate_proj.weight", [inter, hidden]), (p + "mlp.up_proj.weight", [inter, hidden]),
                   (p + "mlp.down_proj.weight", [hidden, inter])]
        if bias:
            shapes += [(p + "self_attn.q_proj.bias", [q]), (p + "self_attn.k_proj.bias", [kvw]),
                       (p + "self_attn.v_proj.bias", [kvw])]
    tensors = []
    for tname, shape in shapes:
        n = 1
        for s in shape:
            n *= s
        if tname.endswith("norm.weight"):
            values = [1.0] * n
        else:
            values = [rng.gauss(0, 0.05) for _ in range(n)]
        tensors.append((tname, dtype, shape, values))
    model = os.path.join(d, name)
    os.makedirs(model, exist_ok=True)
    write_json(os.path.join(model, "config.json"), config)
    st_write(os.path.join(model, "model.safetensors"), tensors)
    if tokenizer_from:
        shutil.copy(os.path.join(tokenizer_from, "tokenizer.json"), model)
        shutil.copy(os.path.join(tokenizer_from, "tokenizer_config.json"), model)
    return model, config


def adapter_for(rng, d, config, name="adapter", r=None, targets=None, tweak=None):
    """A PEFT adapter for `config` (consistent unless `tweak` breaks it)."""
    r = r or rng.choice([1, 2, 4, 8])
    targets = targets or rng.choice([["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"], ["o_proj"], ["down_proj"]])
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    hd = config.get("head_dim", hidden // heads)
    shape = {"q_proj": (heads * hd, hidden), "k_proj": (kv * hd, hidden), "v_proj": (kv * hd, hidden),
             "o_proj": (hidden, heads * hd), "gate_proj": (inter, hidden), "up_proj": (inter, hidden),
             "down_proj": (hidden, inter)}
    tensors = []
    for layer in range(config["num_hidden_layers"]):
        for t in targets:
            out, inn = shape[t]
            block = "self_attn" if t in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = "base_model.model.model.layers.%d.%s.%s" % (layer, block, t)
            tensors.append((key + ".lora_A.weight", "F32", [r, inn], [rng.gauss(0, 0.1) for _ in range(r * inn)]))
            tensors.append((key + ".lora_B.weight", "F32", [out, r], [rng.gauss(0, 0.1) for _ in range(out * r)]))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": rng.choice([r, 2 * r, 16]), "target_modules": targets,
           "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM", "fan_in_fan_out": False,
           "use_rslora": False}
    if tweak:
        cfg, tensors = tweak(rng, cfg, tensors)
    path = os.path.join(d, name)
    os.makedirs(path, exist_ok=True)
    write_json(os.path.join(path, "adapter_config.json"), cfg)
    st_write(os.path.join(path, "adapter_model.safetensors"), tensors)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Kind: tokenizer — special ids outside the vocabulary


def case_tokenizer(rng, base, d, runner):
    model = os.path.join(d, "model")
    copy_tree(os.path.join(base, "model"), model)
    tok_path = os.path.join(model, "tokenizer.json")
    tok = load_json(tok_path)
    bad = rng.choice([384, 385, 1000, 100000, 2**24 - 1, -1, -5, 2**31, 2**40])
    r = rng.random()
    if r < 0.45:
        ids = rng.choice([[bad], [1, bad], [bad, bad]])
        tok["post_processor"]["special_tokens"]["<s>"]["ids"] = ids
        if rng.random() < 0.3:   # an EOS after the sequence too
            tok["post_processor"]["single"].append({"SpecialToken": {"id": "</s>", "type_id": 0}})
            tok["post_processor"]["special_tokens"]["</s>"] = {"id": "</s>", "ids": [bad], "tokens": ["</s>"]}
    elif r < 0.7:
        tok["post_processor"] = {"type": "BertProcessing", "cls": ["<s>", rng.choice([bad, 1])],
                                 "sep": ["</s>", rng.choice([bad, 2])]}
    elif r < 0.85:
        tok["padding"] = {"pad_id": bad, "pad_token": "<pad>"}
    else:
        tok["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel"}, {"type": "TemplateProcessing",
                                    "single": [{"SpecialToken": {"id": "<zz>", "type_id": 0}},
                                               {"Sequence": {"id": "A", "type_id": 0}}],
                                    "special_tokens": {"<zz>": {"id": "<zz>", "ids": [bad], "tokens": ["<zz>"]}}}]}
    write_json(tok_path, tok)
    data = text_data(os.path.join(d, "data.jsonl"), rng, kind=rng.choice(["text", "qa", "chat", "pc"]))
    prompts = os.path.join(d, "prompts.jsonl")
    with open(prompts, "w") as f:
        for p in ["the river", "", "bread"]:
            f.write(json.dumps({"prompt": p}) + "\n")
    c = rng.random()
    if c < 0.4:
        argv = ["generate", "--model", model, "--max-new-tokens", "2"] + rng.choice([
            ["--prompt", "the river"], ["--prompt", ""], ["--prompt", "x", "--chat"],
            ["--prompts-from", prompts, "--limit", "2"]])
    elif c < 0.55:
        argv = ["eval", "--model", model, "--data", data, "--batch-size", "2"]
    elif c < 0.7:
        argv = ["train", "--model", model, "--data", data, "--output-dir", os.path.join(d, "out"), "--max-steps",
                "1", "--batch-size", "2"] + rng.choice([[], ["--packing", "--max-seq-length", "8"],
                                                        ["--padding-free"]])
    elif c < 0.8:
        argv = ["tokenize", "--tokenizer", rng.choice([model, tok_path]), "--input",
                os.path.join(base, "tokenize.jsonl"), "--add-special-tokens"]
    elif c < 0.9:
        argv = ["export", "--model", model, "--output", os.path.join(d, "m.gguf"), "--check", "always"]
    else:
        argv = ["merge", "--model", model, "--adapter", os.path.join(base, "adapter"), "--output",
                os.path.join(d, "merged"), "--check", "always"]
    return argv, [model]


# ---------------------------------------------------------------------------------------------------------------
# Kind: inside — the starting adapter is a folder the run writes


def case_inside(rng, base, d, runner):
    out = os.path.join(d, "run")
    data = text_data(os.path.join(d, "data.jsonl"), rng, n=6)
    first = ["train", "--model", os.path.join(base, "model"), "--data", data, "--output-dir", out, "--max-steps",
             "3", "--batch-size", "1", "--save-steps", "1", "--validation-split", "0.34", "--eval-steps", "1",
             "--load-best-model-at-end"]
    rc, o, e, _ = runner.run(first, d)
    if rc != 0:
        return None
    init = os.path.join(out, rng.choice(["best", "checkpoint-1", "checkpoint-2", "checkpoint-3"]))
    argv = ["train", "--model", os.path.join(base, "model"), "--data", data, "--output-dir", out, "--init-adapter",
            init, "--max-steps", str(rng.choice([2, 3, 4])), "--batch-size", "1", "--learning-rate", "0.01"]
    argv += rng.choice([["--overwrite-output-dir"], ["--overwrite-output-dir"], []])
    argv += rng.choice([["--save-steps", "1"], ["--save-steps", "1", "--save-total-limit", "1"], []])
    argv += rng.choice([["--validation-split", "0.34", "--eval-steps", "1", "--load-best-model-at-end"], []])
    return argv, [init]


# ---------------------------------------------------------------------------------------------------------------
# Kind: shape — plan, bench and info on configs at the accepted limits


def case_shape(rng, base, d, runner):
    c = load_json(os.path.join(base, "model", "config.json"))
    small = {"hidden_size": 32, "intermediate_size": 8, "num_attention_heads": 1, "num_key_value_heads": 1,
             "head_dim": 32, "vocab_size": 8}
    r = rng.random()
    if r < 0.3:
        c.update(small)
        c["num_hidden_layers"] = rng.choice([2**24, 2**22, 300000, 2**20])
    elif r < 0.5:
        c.update({"vocab_size": rng.choice([1, 2, 3]), "max_position_embeddings": rng.choice([2, 3, 4096])})
    elif r < 0.7:
        c.update({"head_dim": rng.choice([2, 30, 34, 66, 256, 2**12]), "num_attention_heads": rng.choice([1, 3, 6]),
                  "num_key_value_heads": 1})
    elif r < 0.85:
        c.update({"hidden_size": rng.choice([2**24, 2**20]), "intermediate_size": 1, "num_attention_heads": 1,
                  "num_key_value_heads": 1, "head_dim": 2, "vocab_size": 1, "num_hidden_layers": 1})
    else:
        c["rope_scaling"] = rng.choice([{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 1.0000001, "original_max_position_embeddings": 1},
                                        {"type": "linear", "factor": 1e-300}, {"type": "linear", "factor": 1e300}])
    path = os.path.join(d, "config.json")
    write_json(path, c)
    seq = str(rng.choice([2, 4, 16]))
    k = rng.random()
    if k < 0.45:
        argv = ["plan", "--model-config", path, "--batch-size", "1", "--max-seq-length", seq] + \
            rng.choice([[], ["--no-ckpt"], ["--targets", "all"], ["--json"], ["--optim", "adamw"]])
    elif k < 0.55:
        argv = ["bench", "--shape", rng.choice(["llama2-7b", "llama3-8b", "tinyllama-1.1b", "smollm2-135m"]),
                "--device", "cpu", "--batch-size", "1", "--max-seq-length", seq] + \
            rng.choice([["--steps", "1", "--warmup", "0"], ["--generate", "1"]])
    elif k < 0.8:
        argv = ["bench", "--model-config", path, "--device", "cpu", "--batch-size", "1", "--max-seq-length", seq] + \
            rng.choice([["--steps", "1", "--warmup", "0"], ["--generate", "2"], ["--steps", "1", "--warmup", "0",
                                                                                  "--layers", "1"]])
    else:
        argv = ["info", "--model-config", path] if rng.random() < 0.5 else ["plan", "--model-config", path,
                                                                           "--layers", "1", "--max-seq-length", seq]
    return argv, [path]


# ---------------------------------------------------------------------------------------------------------------
# Kind: pipeline — a synthetic model through quantize, train, merge, export, generate, eval, info


def case_pipeline(rng, base, d, runner):
    model, config = synthetic_model(rng, d, tokenizer_from=os.path.join(base, "model"))
    src = model
    if rng.random() < 0.6:
        q = os.path.join(d, "q")
        rc, o, e, _ = runner.run(["quantize", "--model", model, "--output", q, "--blocksize",
                                  str(rng.choice([32, 64, 128, 4096])), "--quant-type", rng.choice(["nf4", "fp4"]),
                                  "--double-quant", rng.choice(["true", "false"])], d)
        if fs.classify(rc, o, e) in ("crash", "hang"):
            return ["quantize", "--model", model, "--output", os.path.join(d, "q2")], [model]
        if rc == 0:
            src = q
    data = text_data(os.path.join(d, "data.jsonl"), rng, kind=rng.choice(["text", "pc", "chat"]))
    adapter = None
    if rng.random() < 0.7:
        out = os.path.join(d, "run")
        rc, o, e, _ = runner.run(["train", "--model", src, "--data", data, "--output-dir", out, "--max-steps", "1",
                                  "--batch-size", "2", "--max-seq-length", "8", "--target-modules",
                                  rng.choice(["all", "qv", "o_proj,down_proj"]), "--lora-r",
                                  rng.choice(["1", "3", "8"])] + rng.choice([[], ["--use-rslora"]]), d)
        if fs.classify(rc, o, e) in ("crash", "hang"):
            return None
        if rc == 0:
            adapter = out
    if adapter is None and rng.random() < 0.5:
        adapter = adapter_for(rng, d, config)
    ad = ["--adapter", adapter] if adapter else []
    c = rng.random()
    if c < 0.2 and adapter:
        argv = ["merge", "--model", src, "--adapter", adapter, "--output", os.path.join(d, "merged"), "--check",
                "always", "--dtype", rng.choice(["bf16", "f16", "f32"])] + \
            rng.choice([[], ["--onto", "original"], ["--max-shard-size", "1000"]])
    elif c < 0.45:
        argv = ["export", "--model", src, "--output", os.path.join(d, "m.gguf"), "--check", "always", "--type",
                rng.choice(["f16", "bf16", "f32", "q8_0"])] + ad
        if adapter and rng.random() < 0.3:
            argv = [a for a in argv if a != "q8_0"] + ["--adapter-only"]
            if "--type" in argv and argv[-2] == "--type":
                argv = argv[:-2]
        elif rng.random() < 0.4:
            argv += ["--embedding-type", rng.choice(["f16", "bf16", "f32", "q8_0"])]
        if rng.random() < 0.3:
            argv += ["--check-data", data]
        if rng.random() < 0.2:
            argv += ["--onto", "original"]
    elif c < 0.65:
        argv = ["generate", "--model", src, "--max-new-tokens", str(rng.choice([1, 4, 100])), "--prompt",
                rng.choice(["the river", "", "x " * 40])] + ad + \
            rng.choice([[], ["--chat"], ["--temperature", "0.7", "--top-p", "0.5"], ["--base-weights", "file"],
                        ["--base-weights", "4bit"], ["--compute-dtype", "bf16"]])
    elif c < 0.8:
        argv = ["eval", "--model", src, "--data", data, "--batch-size", str(rng.choice([1, 3]))] + ad + \
            rng.choice([[], ["--limit", "1"], ["--train-on-inputs"], ["--max-seq-length", "2"],
                        ["--base-weights", "file"]])
    elif c < 0.9:
        argv = ["info", src] + ad + rng.choice([[], ["--dot", os.path.join(d, "g.dot")]])
    else:
        gg = os.path.join(d, "e.gguf")
        rc, o, e, _ = runner.run(["export", "--model", src, "--output", gg, "--check", "never", "--type",
                                  rng.choice(["f16", "q8_0", "f32"])] + ad, d)
        if rc != 0:
            return None
        argv = rng.choice([["generate", "--model", gg, "--prompt", "the river", "--max-new-tokens", "3"],
                           ["eval", "--model", gg, "--data", data], ["info", gg],
                           ["train", "--model", gg, "--data", data, "--output-dir", os.path.join(d, "run2"),
                            "--max-steps", "1", "--batch-size", "1"]])
    return argv, [model, data] + ([adapter] if adapter else [])


# ---------------------------------------------------------------------------------------------------------------
# Kind: adapter — adapter_config.json against adapter_model.safetensors


def tweak_adapter(rng, cfg, tensors):
    r = rng.random()
    if r < 0.15:
        cfg["r"] = cfg["r"] * 2
    elif r < 0.3:
        cfg["target_modules"] = rng.choice([["q_proj"], "q_proj", "all-linear", [], ["q_proj", "nope"], ".*"])
    elif r < 0.4:
        tensors = tensors[:-1]
    elif r < 0.5:
        tensors.append(("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", "F32", [1, 1], [0.0]))
    elif r < 0.6:
        name, dt, shape, values = tensors[0]
        tensors[0] = (name, dt, list(reversed(shape)), values)
    elif r < 0.7:
        cfg["lora_alpha"] = rng.choice([0, -16, 1e-30, 1e30])
    elif r < 0.8:
        cfg["use_rslora"] = True
        cfg["r"] = cfg["r"]
    elif r < 0.9:
        cfg["fan_in_fan_out"] = True
    else:
        tensors = [(n.replace("base_model.model.", ""), dt, s, v) for n, dt, s, v in tensors]
    return cfg, tensors


def case_adapter(rng, base, d, runner):
    model = os.path.join(base, "model")
    config = load_json(os.path.join(model, "config.json"))
    adapter = adapter_for(rng, d, config, tweak=tweak_adapter)
    data = text_data(os.path.join(d, "data.jsonl"), rng)
    c = rng.random()
    if c < 0.2:
        argv = ["merge", "--model", rng.choice([model, os.path.join(base, "bnb")]), "--adapter", adapter,
                "--output", os.path.join(d, "merged"), "--check", "always"]
    elif c < 0.4:
        argv = ["export", "--model", model, "--adapter", adapter, "--output", os.path.join(d, "a.gguf"),
                "--check", "always"] + rng.choice([[], ["--adapter-only"]])
    elif c < 0.55:
        argv = ["generate", "--model", model, "--adapter", adapter, "--prompt", "the", "--max-new-tokens", "2"]
    elif c < 0.7:
        argv = ["eval", "--model", model, "--adapter", adapter, "--data", data]
    elif c < 0.8:
        argv = ["info", model, "--adapter", adapter] + rng.choice([[], ["--dot", os.path.join(d, "g.dot")]])
    else:
        argv = ["train", "--model", model, "--init-adapter", adapter, "--data", data, "--output-dir",
                os.path.join(d, "out"), "--max-steps", "1", "--batch-size", "2"] + \
            rng.choice([[], ["--lora-r", "3"], ["--target-modules", "all"], ["--use-rslora"]])
    return argv, [adapter, data]


# ---------------------------------------------------------------------------------------------------------------
# Kind: generate — prompts and models at the edges


def case_generate(rng, base, d, runner):
    positions = rng.choice([2, 3, 4, 8, 256])
    model = config_with(base, d, {"max_position_embeddings": positions},
                        source=rng.choice(["model", "model", "bnb"]))
    r = rng.random()
    if r < 0.3:   # no BOS / EOS anywhere
        c = load_json(os.path.join(model, "config.json"))
        c.pop("bos_token_id", None)
        c.pop("eos_token_id", None)
        write_json(os.path.join(model, "config.json"), c)
        tok = load_json(os.path.join(model, "tokenizer.json"))
        tok["post_processor"] = None
        for t in tok["added_tokens"]:
            t["content"] = t["content"].replace("s>", "q>")
        v = tok["model"]["vocab"]
        for k in ["<s>", "</s>"]:
            v[k.replace("s>", "q>")] = v.pop(k)
        write_json(os.path.join(model, "tokenizer.json"), tok)
        write_json(os.path.join(model, "tokenizer_config.json"), {"chat_template": rng.choice(
            [CHAT_TEMPLATE, "", "{% if false %}x{% endif %}", "{{ bos_token }}{{ eos_token }}"])})
        if os.path.exists(os.path.join(model, "generation_config.json")):
            os.remove(os.path.join(model, "generation_config.json"))
    elif r < 0.5:
        write_json(os.path.join(model, "tokenizer_config.json"), {
            "bos_token": "<s>", "eos_token": "</s>", "chat_template": rng.choice([
                "", "{% for m in messages %}{% endfor %}", "{{ '' }}", "{{ eos_token * 50 }}",
                "{% for m in messages %}{{ m['content'] }}{% endfor %}"])})
    prompts = os.path.join(d, "prompts.jsonl")
    with open(prompts, "w") as f:
        for p in ["", "the", "the river rose slowly", "x" * rng.choice([1, 3, 7, 300])]:
            f.write(json.dumps({"prompt": p, "q": p}) + "\n")
    argv = ["generate", "--model", model, "--max-new-tokens", str(rng.choice([1, 2, 5, 300]))]
    argv += rng.choice([["--prompt", rng.choice(["", "t", "the", "the river rose", "<s>", "</s></s>"])],
                        ["--prompts-from", prompts, "--limit", str(rng.choice([1, 3, 10]))],
                        ["--prompts-from", prompts, "--prompt-field", "q"]])
    argv += rng.choice([[], ["--chat"], ["--chat"], ["--temperature", rng.choice(["1e-30", "1e-45", "0.5", "1e30"]),
                                                      "--top-p", rng.choice(["1e-30", "0.5", "1"])],
                        ["--batch-size", "3"], ["--seed", "5"]])
    if rng.random() < 0.3:
        argv += ["--adapter", os.path.join(base, "adapter")] + rng.choice([[], ["--base-weights", "file"]])
    return argv, [model, prompts]


# ---------------------------------------------------------------------------------------------------------------
# Kind: trainopts — train options met together


def case_trainopts(rng, base, d, runner):
    model = os.path.join(base, rng.choice(["model", "bnb", "model.gguf"]))
    kind = rng.choice(["text", "qa", "chat", "pc"])
    n = rng.choice([1, 2, 3, 5, 8])
    data = text_data(os.path.join(d, "data.jsonl"), rng, n=n, kind=kind)
    out = os.path.join(d, "out")
    argv = ["train", "--model", model, "--data", data, "--output-dir", out, "--max-steps",
            str(rng.choice([1, 2, 4])), "--batch-size", str(rng.choice([1, 2, 5]))]
    opts = [
        lambda: ["--packing", "--max-seq-length", str(rng.choice([2, 4, 8, 64]))],
        lambda: ["--eval-data", text_data(os.path.join(d, "eval.jsonl"), rng, n=rng.choice([1, 3]),
                                          kind=rng.choice(["text", "qa", "chat"]))],
        lambda: ["--validation-split", rng.choice(["1e-9", "0.01", "0.5", "0.99", "0.999999"])],
        lambda: ["--load-best-model-at-end"],
        lambda: ["--save-steps", "1", "--save-total-limit", rng.choice(["1", "2"])],
        lambda: ["--early-stopping-patience", rng.choice(["0", "1", "2"]), "--early-stopping-threshold",
                 rng.choice(["0", "1e9", "-1", "1e-300"])],
        lambda: ["--train-on-eos", rng.choice(["turn", "last", "all", "none"])],
        lambda: ["--roles-to-train", rng.choice(["assistant", "user", "system", "user,assistant", "nobody", ""])],
        lambda: ["--report-to", "tensorboard", "--logging-dir", rng.choice([
            os.path.join(d, "tb"), out, os.path.join(out, "checkpoint-1"), os.path.join(d, "tb", "..", "tb2"),
            os.path.join(d, "a" * 200)])],
        lambda: ["--gradient-accumulation-steps", rng.choice(["2", "7", "64"])],
        lambda: ["--train-on-inputs"],
        lambda: ["--padding-free"],
        lambda: ["--eval-steps", "1", "--eval-strategy", rng.choice(["steps", "epoch", "no"])],
        lambda: ["--save-strategy", "epoch"],
        lambda: ["--num-train-epochs", rng.choice(["0.01", "3"])],
        lambda: ["--max-seq-length", rng.choice(["2", "3"])],
        lambda: ["--gradient-checkpointing"],
        lambda: ["--optim", rng.choice(["adamw", "adamw_8bit", "paged_adamw_32bit"])],
    ]
    if kind == "qa":
        argv += ["--prompt-field", "question", "--completion-field", "answer"]
    for f in rng.sample(opts, rng.randint(2, 6)):
        argv += f()
    if "--max-steps" in argv and "--num-train-epochs" in argv:
        i = argv.index("--max-steps")
        del argv[i:i + 2]
    return argv, [model, data]


def case_layers(rng, base, d, runner):
    model = config_with(base, d, {"num_hidden_layers": rng.choice([3, 1000, 300000, 2**20, 2**24])},
                        source=rng.choice(["model", "model", "bnb"]))
    data = text_data(os.path.join(d, "data.jsonl"), rng)
    argv = rng.choice([["info", model], ["info", model, "--dot", os.path.join(d, "g.dot")],
                       ["merge", "--model", model, "--adapter", os.path.join(base, "adapter"), "--output",
                        os.path.join(d, "merged")],
                       ["export", "--model", model, "--output", os.path.join(d, "m.gguf")],
                       ["quantize", "--model", model, "--output", os.path.join(d, "q")],
                       ["generate", "--model", model, "--prompt", "the", "--max-new-tokens", "1"],
                       ["eval", "--model", model, "--data", data],
                       ["bench", "--model", model, "--device", "cpu", "--steps", "1", "--warmup", "0",
                        "--batch-size", "1", "--max-seq-length", "4"],
                       ["plan", "--model", model, "--batch-size", "1", "--max-seq-length", "4"]])
    return argv, [model, data]


def case_priors(rng, base, d, runner):
    model = os.path.join(base, "model")
    if rng.random() < 0.6:
        out = os.path.join(d, "out.gguf")
        first = ["export", "--model", model, "--output", out, "--check", "never"]
        if rng.random() < 0.5:
            first += ["--adapter", os.path.join(base, "adapter")]
        rc, o, e, _ = runner.run(first, d)
        if rc != 0:
            return None
        bad = os.path.join(d, "bad.jsonl")
        with open(bad, "w") as f:
            f.write(rng.choice(['{"foo": 1}\n', '{"messages": [{"role": "user", "content": "x"}]}\n', " \n",
                                '{"input_ids": [1]}\n', '{"input_ids": [1, 99999]}\n']))
        src = model
        if rng.random() < 0.3:
            src = config_with(base, d, {"max_position_embeddings": 1})
            argv = ["export", "--model", src, "--output", out]
        else:
            argv = ["export", "--model", src, "--output", out, "--check-data", bad]
        argv += rng.choice([[], ["--adapter", os.path.join(base, "adapter")],
                            ["--adapter", os.path.join(base, "adapter"), "--adapter-only"], ["--type", "q8_0"]])
        return argv, [src, bad], [out]
    run = os.path.join(d, "run")
    os.makedirs(run)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.0, "eval_loss": 2.2}\n')
    victim = rng.choice([os.path.join(d, "model-config.json"), os.path.join(run, "metrics.jsonl")])
    if victim.endswith("model-config.json"):
        shutil.copy(os.path.join(model, "config.json"), victim)
    os.symlink(os.path.relpath(victim, run), os.path.join(run, "loss.svg"))
    return ["plot", run], [victim]


def case_memory(rng, base, d, runner):
    words = fs.TEXT.split(" ")
    data = os.path.join(d, "big.jsonl")
    n = rng.choice([500, 1500, 3000])
    with open(data, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.choice([50, 200])))}) + "\n")
    batch = str(rng.choice([n, 2 * n, 100000]))
    model = os.path.join(base, rng.choice(["model", "bnb", "model.gguf"]))
    argv = rng.choice([["eval", "--model", model, "--data", data, "--batch-size", batch],
                       ["eval", "--model", model, "--data", data, "--batch-size", batch, "--limit", str(n // 2)],
                       ["train", "--model", model, "--data", data, "--batch-size", batch, "--max-steps", "1",
                        "--output-dir", os.path.join(d, "out")],
                       ["bench", "--shape", rng.choice(["llama2-7b", "llama3-8b"]), "--device", "cpu",
                        "--batch-size", "1", "--max-seq-length", "4"] + rng.choice([["--steps", "1", "--warmup", "0"],
                                                                                   ["--generate", "1"]])])
    return argv, [model, data]


KINDS = ["tokenizer", "inside", "shape", "pipeline", "adapter", "generate", "trainopts", "layers", "priors",
         "memory"]


def main():
    args = fs.parse_args(__doc__.split("\n")[0], "/tmp/qlora-fuzz3", 20, KINDS)
    runner = fs.Runner(args)
    os.makedirs(args.work, exist_ok=True)
    base = fs.build_base(runner, args.work)
    findings = os.path.join(args.work, "findings")
    counts = {}
    kinds = args.kinds.split(",")
    todo = [(k, n) for n in range(args.cases) for k in kinds]
    if args.only:
        k, n = args.only.rsplit("-", 1)
        todo = [(k, int(n))]
    for kind, n in todo:
        rng = random.Random("%d-%s-%d" % (args.seed, kind, n))
        d = os.path.join(args.work, "cases", "%s-%d" % (kind, n))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        made = globals()["case_" + kind](rng, base, d, runner)
        if made is None:
            counts["skipped"] = counts.get("skipped", 0) + 1
            shutil.rmtree(d, ignore_errors=True)
            continue
        argv, watched = made[0], made[1]
        prior = made[2] if len(made) > 2 else []
        before, before_prior = fs.fingerprint(watched), fs.fingerprint(prior)
        rc, out, err, secs = runner.run(argv, d)
        result = fs.classify(rc, out, err)
        if result != "hang" and fs.fingerprint(watched) != before:
            result = "lost"
        if result in ("error", "crash") and fs.fingerprint(prior) != before_prior:
            result = "lost"      # a failed run changed an earlier output
        counts[result] = counts.get(result, 0) + 1
        tag = "%s-%d" % (kind, n)
        if args.verbose or result in ("crash", "hang", "lost"):
            tail = (out + err).strip().splitlines()[-3:]
            if result == "crash":
                tail = [l for l in (out + err).splitlines() if "runtime failure" in l or "Fatal error" in l
                        or (" at /" in l and "<compiler-generated>" not in l)][:3]
            print("%-12s %-6s rc=%s %.1fs qlora %s" % (tag, result, rc, secs, " ".join(shlex.quote(a) for a in argv))
                  [:500])
            for line in tail:
                print("    " + line[:300])
            sys.stdout.flush()
        if result in ("crash", "hang", "lost"):
            fs.keep_finding(os.path.join(findings, tag), d, result, rc, args.seed, runner.binary, argv, out, err)
        else:
            shutil.rmtree(d, ignore_errors=True)
    print("summary:", json.dumps(counts, sort_keys=True))
    return 1 if any(counts.get(k, 0) for k in ("crash", "hang", "lost")) else 0


if __name__ == "__main__":
    sys.exit(main())
