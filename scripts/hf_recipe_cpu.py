"""The main job's recipe on the Python stack (transformers + peft + bitsandbytes on the CPU), for
scripts/main-job-vs-python.sh: tokenizes GSM8K records with the model's chat template, or trains on records already
tokenized (input_ids, labels) in file order, batch by batch, padded to the batch's longest row.

  python hf_recipe_cpu.py tokenize GGUF DATA.jsonl OUT.jsonl [--limit N] [--max-length 384]
  python hf_recipe_cpu.py train GGUF TOKENS.jsonl --heldout HELDOUT.jsonl --steps N [--batch 4]

train prints one JSON line: steps, tokens (padded, as qlora counts them), the training loop's seconds and tokens/s,
the steps' mean loss and the held-out loss (mean over the held-out targets) before and after."""
import argparse, json, os, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, get_cosine_schedule_with_warmup
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training


def tokenizer_of(gguf):
    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


def tokenize(a):
    tok = tokenizer_of(a.gguf)
    with open(a.data) as src, open(a.out, "w") as dst:
        for n, line in enumerate(src):
            if a.limit is not None and n >= a.limit:
                break
            r = json.loads(line)
            prompt = tok.apply_chat_template([{"role": "user", "content": r["question"]}], tokenize=False,
                                             add_generation_prompt=True)
            full = tok.apply_chat_template([{"role": "user", "content": r["question"]},
                                           {"role": "assistant", "content": r["answer"]}], tokenize=False)
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            ids = tok(full, add_special_tokens=False)["input_ids"][:a.max_length]
            labels = [-100 if i < len(p) else t for i, t in enumerate(ids)]
            dst.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")


def batches(records, size):
    for start in range(0, len(records) - size + 1, size):
        rows = records[start:start + size]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.zeros((size, width), dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"]); labels[i, :n] = torch.tensor(r["labels"]); mask[i, :n] = 1
        yield ids, labels, mask


def heldout_loss(model, records):
    """Mean cross-entropy over every counted target of the held-out records (one record at a time, no dropout)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            ids = torch.tensor([r["input_ids"]]); labels = torch.tensor([r["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            keep = target != -100
            total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
            count += int(keep.sum())
    model.train()
    return total / max(count, 1)


def train(a):
    torch.manual_seed(42)
    records = [json.loads(line) for line in open(a.data)]
    heldout = [json.loads(line) for line in open(a.heldout)]
    # transformers quantizes no model it reads from a GGUF file: the GGUF's weights (dequantized to float32) are
    # written once as a Hugging Face folder beside the data, and that folder is loaded with bitsandbytes' NF4.
    folder = os.path.join(os.path.dirname(os.path.abspath(a.data)), "hf-model")
    if not os.path.exists(os.path.join(folder, "config.json")):
        read = AutoModelForCausalLM.from_pretrained(os.path.dirname(a.gguf), gguf_file=os.path.basename(a.gguf),
                                                    dtype=torch.float32)
        if hasattr(read.config, "quantization_config"):
            del read.config.quantization_config
        plain = type(read)(read.config)   # the same weights in a model not marked as read from a GGUF
        plain.load_state_dict(read.state_dict())
        plain.save_pretrained(folder)
    compute = torch.bfloat16 if a.dtype == "bf16" else torch.float32   # the 4-bit layers' products
    def build():
        torch.manual_seed(42)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, device_map={"": "cpu"},
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True,
                                                   bnb_4bit_compute_dtype=compute))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.config.use_cache = False
        return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    # The held-out loss before training is taken on a model of its own. bitsandbytes' CPU path repacks the 4-bit
    # weights for inference when a model is evaluated (`packing_format_for_cpu`) and from then on multiplies with
    # gemv_4bit, which has no backward ("an autograd kernel was not registered"): a model trained after an evaluation
    # gets no gradient through its base layers, trains faster and learns almost nothing (seen 2026-12-03 with
    # bitsandbytes 0.50.2: 12 steps, held-out 1.7258 -> 1.7044 where qlora reached 1.33).
    before = heldout_loss(build(), heldout)
    model = build()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        import bitsandbytes as bnb
        opt = bnb.optim.PagedAdamW8bit(params, lr=a.lr)
        optim = "paged_adamw_8bit"
    except Exception:
        opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0)
        optim = "adamw_torch"
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=a.steps)
    model.train()
    steps, tokens, losses = 0, 0, []
    start = time.time()
    for ids, labels, mask in batches(records, a.batch):
        if steps == a.steps:
            break
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); sched.step(); opt.zero_grad()
        steps += 1; tokens += ids.numel(); losses.append(out.loss.item())
    seconds = time.time() - start
    after = heldout_loss(model, heldout)
    print(json.dumps({"system": "python", "optim": optim, "threads": torch.get_num_threads(), "steps": steps,
                      "tokens": tokens, "train_s": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
                      "step_s": round(seconds / max(steps, 1), 3),
                      "mean_loss": round(sum(losses) / max(len(losses), 1), 4),
                      "heldout_before": round(before, 4), "heldout_after": round(after, 4)}))


ap = argparse.ArgumentParser()
sub = ap.add_subparsers(dest="command", required=True)
t = sub.add_parser("tokenize"); t.add_argument("gguf"); t.add_argument("data"); t.add_argument("out")
t.add_argument("--limit", type=int); t.add_argument("--max-length", type=int, default=384)
r = sub.add_parser("train"); r.add_argument("gguf"); r.add_argument("data"); r.add_argument("--heldout", required=True)
r.add_argument("--steps", type=int, required=True); r.add_argument("--batch", type=int, default=4)
r.add_argument("--lr", type=float, default=3e-4)
r.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
a = ap.parse_args()
tokenize(a) if a.command == "tokenize" else train(a)
