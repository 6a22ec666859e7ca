#!/usr/bin/env python3
"""Reference vectors for qlora's chat templates (Tests/QLoRATests/Fixtures/chat-templates/vectors.json).

For each template in Fixtures/chat-templates/*.jinja and each conversation below this renders, with the real
Python stack (transformers' apply_chat_template, which runs Jinja2), the text, and derives the trainable mask by
the prefix-render method (independently of qlora's Swift code): turn i is what render(messages[:i+1]) adds after
render(messages[:i], add_generation_prompt=role == "assistant"). The token ids are the SmolLM2 tokenizer's
(shared/golden/smollm2-tokenizer/tokenizer.json) on the whole text, and a token is trainable when any of its
characters is.

    python3 -m venv /tmp/jvenv && /tmp/jvenv/bin/pip install transformers jinja2 tokenizers
    /tmp/jvenv/bin/python scripts/make-chat-template-vectors.py [path/to/shared]
"""
import json
import os
import sys

from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "QLoRATests", "Fixtures", "chat-templates")
SHARED = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(ROOT), "shared")

# Each model's BOS and EOS strings, as its tokenizer_config.json names them (None: the model has none).
TEMPLATES = {
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "qwen2.5": (None, "<|im_end|>"),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"),
    "mistral-v0.3": ("<s>", "</s>"),
    "phi3": ("<s>", "<|endoftext|>"),
    "gemma3": ("<bos>", "<eos>"),
}


def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "system-user-assistant": ([m("system", "You are a concise assistant."), m("user", "What is 2+2?"),
                               m("assistant", "2+2 equals 4.")], False),
    "multi-turn": ([m("user", "Hi!"), m("assistant", "Hello! How can I help?"),
                    m("user", "Name a prime number."), m("assistant", "7 is prime.")], False),
    "no-system": ([m("user", "Write a haiku about rain."),
                   m("assistant", "Soft rain on the roof,\nwhispers through the sleeping town,\n"
                                  "puddles hold the sky.")], False),
    "trailing-user": ([m("system", "Answer in one word."), m("user", "Capital of France?"),
                       m("assistant", "Paris."), m("user", "And of Italy?")], True),
    "system-multi-turn": ([m("system", "Be brief."), m("user", "Color of the sky?"), m("assistant", "Blue."),
                           m("user", "And grass?"), m("assistant", "Green.")], False),
    "unicode-whitespace": ([m("user", "  Héllo — ça va? 🙂  "), m("assistant", " Très bien, merci !  \n")],
                           False),
}

# Interpreter cases: each template is rendered by Jinja2 with transformers' chat-template settings (trim_blocks,
# lstrip_blocks, loop controls, tojson without ASCII escaping) and JINJA_CONTEXT.
JINJA_CASES = [
    "a  {%- if true -%}  b  {%- endif -%}  c",
    "a\n  {% if true %}\n  x\n  {% endif %}\nb\n",
    "{{ 'x' }}\n{{- ' y' }}  {{ 'z' -}}\n !",
    "a {# note #}\n  {#- c -#}  b",
    ("{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}{{ x }} {% endfor %}"),
    "{% for x in [] %}no{% else %}empty{% endfor %}",
    "{% for x in range(10) if x is odd %}{{ x }}{% if loop.last %}.{% endif %}{% endfor %}",
    ("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 5 %}{% break %}{% endif %}"
     "{{ x }}{% endfor %}"),
    "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    "{% set x = 0 %}{% for i in [1,2,3] %}{% set x = x + i %}{{x}},{% endfor %}{{x}}",
    ("{% set ns = namespace(t=0, s='') %}{% for i in [1,2,3] %}{% set ns.t = ns.t + i %}"
     "{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.t }} {{ ns.s }}"),
    "{% set a, b = 1, 'two' %}{{ a }}{{ b }}{% set c %}block {{ a }}{% endset %} [{{ c }}]",
    ("{{ '  hi  ' | trim }}|{{ 'Hi' | upper }}{{ 'Hi' | lower }}|{{ [1, 2, 3] | length }}{{ 'héllo' | length }}"
     "|{{ undefined_thing | default('dflt') }}|{{ '' | default('e', true) }}|{{ [1, 'a', none] | join('-') }}"
     "|{{ [3, 4] | first }}{{ [3, 4] | last }}|{{ 12 | string ~ 'x' }}"),
    "{{ {'a': [1, 2.5, none, true], 'b': 'q\"\\n é'} | tojson }}|{{ [1, {'x': 2}] | tojson(indent=2) }}",
    ("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ 'abc'.startswith('ab') }}"
     "{{ 'abc'.endswith(('x', 'c')) }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}"
     "|{{ 'aXbX'.replace('X', '-') }}|{{ 'mIxEd'.upper() }}{{ 'mIxEd'.lower() }}|{{ \"they're bob\".title() }}"
     "|{{ \"they're bob\" | title }}"),
    ("{{ [1, 2, 3, 4, 5][1:] }}{{ [1, 2, 3, 4, 5][-2:] }}{{ [1, 2, 3, 4, 5][::-2] }}{{ 'abcdef'[1:4] }}"
     "{{ 'abcdef'[-1] }}{{ [1,2][5] }}"),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 3 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 - 4 }}"
     " {{ 'a' ~ 1 ~ none }} {{ 'ab' * 3 }} {{ [0] * 2 + [1] }} {{ 1.5 + 1 }} {{ 0.1 + 0.2 }}"),
    ("{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' in 'cat' }} {{ 'b' not in ['a'] }} {{ 'k' in {'k': 1} }}"
     " {{ not 1 == 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }}"),
    ("{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ 'a' is string }}{{ 1 is string }}"
     "{{ 1 is number }}{{ {} is mapping }}{{ [1] is iterable }}{{ 'a' is not none }}{{ 3 is divisibleby 3 }}"
     "{{ 2 is even }}{{ 'a' is equalto 'a' }}"),
    ("{{ 'yes' if 1 else 'no' }}{{ 'yes' if 0 else 'no' }}[{{ 'only' if false }}]{{ 0 or 'b' }}{{ 1 and 'c' }}"
     "{{ none or [] }}"),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }}"
     " {{ greet('Bo', punct='?') }}"),
    "{% if x %}x{% elif y %}y{% else %}z{% endif %}{% if none %}n{% endif %}",
    ("{{ [{'role': 'user'}, {'role': 'bot'}, {'role': 'user'}] "
     "| selectattr('role', 'equalto', 'user') | list | length }}"
     "{{ [1, 0, 2] | select | list }}{{ [{'a': 1}, {'a': 2}] | map(attribute='a') | join(',') }}"),
    ("{{ messages[0]['role'] }}{{ messages[0].content }}{{ messages | length }}{{ messages[1:] | length }}"
     "{{ messages[0].missing is defined }}"),
    ("{{ none }} {{ true }} {{ [1, 'a', none, 1.0] }} {{ {'a': 'b'} }} {{ 1e20 }} {{ 3.0 }}"
     "{{ \"it's\" }}{{ ['it\\'s'] }}"),
    "{{ 'tab\\there' }}|{{ \"\\u00e9\\x41\" }}|{{ 'a' 'b' }}|{{ '\\q' }}",
    # Constructs of other models' templates (Qwen3, DeepSeek, Llama 3.2).
    ("{% for m in messages[::-1] %}{{ m.role }}{{ loop.revindex }}{% if loop.previtem is defined %}+{% endif %}"
     "{% endfor %}"),
    ("{{ 'a<think>b</think>\\nc'.split('</think>')[-1].lstrip('\\n') }}|{{ (messages|length - 1) - 0 }}"
     "|{{ {'k': 1}.get('k') }}{{ {'k': 1}.get('z', 'd') }}|{{ 'role' in messages[0] }}{{ 'x' in messages[0] }}"),
    ("{{ [1, 2, 3] | reverse | list }}{{ 'abc' | reverse }}"
     "|{% for k, v in {'b': 1, 'a': 2} | items %}{{ k }}{{ v }}{% endfor %}|{{ 3.7 | int }}"
     "{{ '5' | int + 1 }}{{ 2 | float }}{{ -3 | abs }}|{{ 'hello world' | capitalize }}|{{ 'a' ~ 'b' if true }}"),
    "a\n  {%+ if true %}x{% endif %}\n  {%- if true +%}\ny{% endif %}",
    ("{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
     "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
     "{%- if ns.multi_step_tool and message.role == 'user' and not(message.content.startswith('<tool')) %}"
     "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
     "{{ ns.last_query_index }}"),
]
JINJA_CONTEXT = {"x": 1, "messages": [m("system", "S"), m("user", "U")]}

# Mask settings: (roles_to_train, train_on_eos).
SETTINGS = [(["assistant"], "turn"), (["assistant"], "none"), (["assistant"], "last"), (["assistant"], "all"),
            (["assistant", "user"], "turn")]


def main():
    tok_path = os.path.join(SHARED, "golden", "smollm2-tokenizer", "tokenizer.json")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tok_path, bos_token="<|im_start|>", eos_token="<|im_end|>")
    out = {"tokenizer": "shared/golden/smollm2-tokenizer/tokenizer.json", "templates": []}
    for name, (bos, eos) in TEMPLATES.items():
        with open(os.path.join(FIXTURES, name + ".jinja"), encoding="utf-8") as f:
            source = f.read()

        def render(messages, generation=False):
            kwargs = {"bos_token": bos, "eos_token": eos}
            return tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False,
                                                 add_generation_prompt=generation, **kwargs)

        marker = end_of_turn(render, eos)
        cases = []
        for case, (messages, generation) in CONVERSATIONS.items():
            full = render(messages)
            masks = {}
            for roles, train_on_eos in SETTINGS:
                chars = char_mask(render, messages, full, set(roles), train_on_eos, marker)
                enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
                token_mask = [int(any(chars[a:b])) for a, b in enc["offset_mapping"]]
                trained = "".join(c for c, t in zip(full, chars) if t)
                masks[",".join(roles) + ":" + train_on_eos] = {"mask": token_mask, "trained_text": trained}
            cases.append({
                "name": case, "messages": messages, "add_generation_prompt": generation,
                "text": render(messages, generation), "full_text": full,
                "ids": tokenizer(full, add_special_tokens=False)["input_ids"], "masks": masks,
            })
        out["templates"].append({"name": name, "bos_token": bos, "eos_token": eos, "end_of_turn": marker,
                                 "cases": cases})
    with open(os.path.join(FIXTURES, "vectors.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    jinja_cases()


def jinja_cases():
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    cases = [{"template": t, "text": env.from_string(t).render(**JINJA_CONTEXT)} for t in JINJA_CASES]
    with open(os.path.join(FIXTURES, "jinja-cases.json"), "w", encoding="utf-8") as f:
        json.dump({"context": JINJA_CONTEXT, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")


def end_of_turn(render, eos):
    """What follows an assistant turn's content, up to the first whitespace."""
    content = "\ue000"
    text = render([m("user", "hi"), m("assistant", content)])
    rest = text[text.rindex(content) + 1:].lstrip()
    marker = rest.split()[0] if rest.split() else ""
    return marker or eos


def common_prefix(a, b):
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def turn_range(render, messages, i, full, marker):
    role = messages[i]["role"]
    up_to = render(messages[:i + 1])
    try:
        # transformers refuses to render an empty conversation: the first turn takes the fallback below.
        before = render(messages[:i], role == "assistant") if i > 0 else None
    except Exception:
        before = None
    if before is not None and up_to.startswith(before):
        start = len(before)
    else:
        # The template renders earlier turns differently once this one follows (Mistral moves the system message
        # into the last user turn): the turn starts where the render ending in an empty turn of this role departs.
        start = common_prefix(render(messages[:i] + [m(role, "")]), up_to)
    assert full.startswith(up_to[:start]), (i, role)
    length = common_prefix(up_to[start:], full[start:])
    if start + length < len(up_to) and marker:
        # The turn renders differently when it is not the last (Phi-3 ends the conversation with EOS): it ends
        # with its end-of-turn marker and the whitespace after it.
        k = full.rfind(marker, start, start + length)
        if k >= 0:
            end = k + len(marker)
            while end < start + length and full[end] in " \t\n\r":
                end += 1
            length = end - start
    return (start, start + length) if length else None


def char_mask(render, messages, full, roles, train_on_eos, marker):
    mask = [False] * len(full)
    eos_ranges = []
    for i, message in enumerate(messages):
        if message["role"] not in roles:
            continue
        r = turn_range(render, messages, i, full, marker)
        if r is None:
            continue
        start, end = r
        eos_start = full.rfind(marker, start, end) if marker else -1
        if eos_start < 0:
            eos_start = end
        for k in range(start, eos_start):
            mask[k] = True
        if eos_start < end:
            eos_ranges.append((eos_start, end))
    chosen = eos_ranges if train_on_eos in ("turn", "all") else eos_ranges[-1:] if train_on_eos == "last" else []
    for a, b in chosen:
        for k in range(a, b):
            mask[k] = True
    if train_on_eos == "all" and marker:
        k = full.find(marker)
        while k >= 0:
            for j in range(k, k + len(marker)):
                mask[j] = True
            k = full.find(marker, k + len(marker))
    return mask


if __name__ == "__main__":
    main()
