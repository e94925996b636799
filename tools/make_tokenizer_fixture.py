#!/usr/bin/env python3
"""Small byte-level BPE tokenizer fixture (Qwen2 style, ChatML) and its Python reference outputs.

Trains a ~1000-token byte-level BPE with HF `tokenizers` on the installed `transformers` package's top-level
Python sources (sorted, so the corpus is fixed by the pinned transformers version) plus a few fixed lines of
multilingual text, adds the ChatML/reasoning tokens, and writes under fixtures/tokenizer/:

    tokenizer.json, tokenizer_config.json, generation_config.json   an HF model directory minus the weights
    expected.json   ids from Python `tokenizers` for a list of strings, decodes, and chat templates rendered
                    by `transformers` `apply_chat_template` (read by crates/mimo-engine/tests/)

    python tools/make_tokenizer_fixture.py            # rewrite the committed fixture
    python tools/make_tokenizer_fixture.py --check    # only recompute expected.json from the committed files
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # deterministic training order
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "fixtures" / "tokenizer"

# Qwen2's pre-tokenizer split pattern.
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
REASONING = ["<think>", "</think>"]  # added tokens, not special: decode(skip_special=True) keeps them (Qwen3 style)

EXTRA_CORPUS = [
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "Solve $x^2 + 2x + 1 = 0$. The answer is \\boxed{-1}. \\frac{a}{b} \\sqrt{2} \\int_0^1 f(x)\\,dx",
    "你好，世界！机器学习和数学推理。小米 MiMo 模型。",
    "こんにちは世界。カタカナとひらがな。",
    "Привет, мир! Ünïcödé façade naïve café.",
    "Emoji 😀🎉🚀 👩‍💻 🇫🇷",
]

# Strings whose ids the Rust tokenizer must reproduce exactly.
ENCODE_CASES = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "def foo(x: int) -> int:\n    return x * 2  # double\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "Solve $\\frac{1}{2} + \\sqrt{x^2 + 1} = \\boxed{42}$",
    "\\begin{align} a &= b \\\\ c &= d \\end{align}",
    "你好，世界！这是一个测试。",
    "日本語のテキスト",
    "Emoji: 😀 🎉 👩‍💻 🇯🇵 ❤️",
    "   leading spaces, trailing   ",
    "tabs\t\tand\n\n\nnewlines\r\n  \n",
    "     ",
    "\n",
    "e\u0301 (combining) vs \u00e9",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nLet me think.\n</think>\n\nThe answer is 4.<|im_end|>",
    "<|endoftext|><|endoftext|>text<|im_end|>",
    "numbers 3.14159 1e-10 -42 100000",
    "mixed English 和中文 with 😀 emoji and $\\alpha$",
    "don't won't it's they're I'm we'll he'd",
    "\u0000\u0001 control \u007f chars",
]

MAIN_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}\n"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "{%- if message.role == 'system' %}\n"
    "{%- if not loop.first %}{{ raise_exception('System message must be first') }}{% endif %}\n"
    "{%- elif message.role == 'user' %}\n"
    "{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- elif message.role == 'assistant' %}\n"
    "{%- set content = message.content %}\n"
    "{%- if '</think>' in content %}\n"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "{%- endif %}\n"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "{{- raise_exception('Unknown role: ' + message.role) }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}\n"
    "{{- '<think>\\n\\n</think>\\n\\n' }}\n"
    "{%- endif %}\n"
    "{%- endif %}\n"
)

# Exercises what HF's Jinja environment does beyond plain ChatML: trim_blocks/lstrip_blocks (block tags on their
# own lines, no '-'), loop controls, namespace, Python string methods, HF's tojson, tools=None by default.
FEATURE_TEMPLATE = """{{ bos_token }}{% set ns = namespace(n=0) %}
{% if tools %}
<tools>
{% for tool in tools %}
{{ tool | tojson }}
{% endfor %}
</tools>
{% endif %}
{% for m in messages %}
    {% if m.role == 'skip' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ ns.n }}] {{ m.role | upper }}: {{ m.content | trim }}{% if m.content.startswith('Q') %} (question){% endif %}

    {% if ns.n >= 3 %}{% break %}{% endif %}
{% endfor %}
{% for k, v in {'a': 1, 'b': [1, 2.5, none, true, 'é"<>&\\'']}.items() %}{{ k }}={{ v | tojson }};{% endfor %}

{{ messages | length }} {{ eos_token }} {{ tools is none }} {{ 'x' if documents is none else 'y' }}
{{ {'k': [1, {'z': 'w'}]} | tojson(indent=2) }}
{{ 'a,b,,c'.split(',') | join('|') }} {{ '  pad  '.strip() }}| {{ 'Title Me'.lower() }} {{ 'abc'.replace('b', 'B') }}
"""

SYSTEM_CONVO = [
    {"role": "system", "content": "You are MiMo, an AI assistant developed by Xiaomi."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "<think>\nSimple arithmetic.\n</think>\n\n2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3? 你好 😀"},
]

CHAT_CASES = [
    {"name": "single_user", "template": "main", "messages": [{"role": "user", "content": "Hello!"}],
     "add_generation_prompt": True, "kwargs": {}},
    {"name": "empty_system", "template": "main",
     "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Prove that $\\sqrt{2}$ is irrational."}],
     "add_generation_prompt": True, "kwargs": {}},
    {"name": "system_multi_turn_think", "template": "main", "messages": SYSTEM_CONVO,
     "add_generation_prompt": True, "kwargs": {}},
    {"name": "no_generation_prompt", "template": "main", "messages": SYSTEM_CONVO[:3],
     "add_generation_prompt": False, "kwargs": {}},
    {"name": "thinking_disabled", "template": "main", "messages": [{"role": "user", "content": "Hi"}],
     "add_generation_prompt": True, "kwargs": {"enable_thinking": False}},
    {"name": "features_no_tools", "template": "feature",
     "messages": [{"role": "user", "content": "  Q: why?  "}, {"role": "skip", "content": "hidden"},
                  {"role": "assistant", "content": "Because."}, {"role": "user", "content": "ok"},
                  {"role": "user", "content": "never shown"}],
     "add_generation_prompt": False, "kwargs": {}},
    {"name": "features_tools", "template": "feature",
     "messages": [{"role": "user", "content": "Weather?"}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & \"later\"",
                                                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                                 "required": ["city"]}}}],
     "add_generation_prompt": True, "kwargs": {}},
]

ERROR_CASES = [
    {"name": "system_not_first", "template": "main",
     "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "message": "System message must be first"},
    {"name": "unknown_role", "template": "main",
     "messages": [{"role": "robot", "content": "a"}], "message": "Unknown role: robot"},
]


def corpus():
    import transformers

    pkg = Path(transformers.__file__).parent
    lines = []
    for path in sorted(pkg.glob("*.py")):
        lines.extend(path.read_text(encoding="utf-8").splitlines(keepends=True))
    return lines + [line + "\n" for line in EXTRA_CORPUS] * 20


def train(out: Path):
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING])
    tok.save(str(out / "tokenizer.json"))

    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "chat_template": MAIN_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    gen = {
        "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
        "pad_token_id": tok.token_to_id("<|endoftext|>"),
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "do_sample": True,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")


def encode_cases(tok: Tokenizer):
    cases = []
    for text in ENCODE_CASES:
        for add in (False, True):
            ids = tok.encode(text, add_special_tokens=add).ids
            cases.append({
                "text": text, "add_special_tokens": add, "ids": ids,
                "decode": tok.decode(ids, skip_special_tokens=False),
                "decode_skip_special": tok.decode(ids, skip_special_tokens=True),
            })
    return cases


def chat_cases(out: Path):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out))
    templates = {"main": hf.chat_template, "feature": FEATURE_TEMPLATE}
    assert templates["main"] == MAIN_TEMPLATE
    results = []
    for case in CHAT_CASES:
        text = hf.apply_chat_template(case["messages"], chat_template=templates[case["template"]],
                                      tools=case.get("tools"), add_generation_prompt=case["add_generation_prompt"],
                                      tokenize=False, **case["kwargs"])
        results.append({**case, "expected": text})
    for case in ERROR_CASES:
        try:
            hf.apply_chat_template(case["messages"], chat_template=templates[case["template"]], tokenize=False)
        except Exception as e:  # jinja2 TemplateError
            assert case["message"] in str(e), str(e)
        else:
            raise AssertionError(f"{case['name']} rendered without error")
    return templates, results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="keep tokenizer files, only recompute expected.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.check:
        train(OUT)
    tok = Tokenizer.from_file(str(OUT / "tokenizer.json"))
    templates, chats = chat_cases(OUT)
    expected = {
        "eos_ids": json.loads((OUT / "generation_config.json").read_text())["eos_token_id"],
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "encode": encode_cases(tok),
        "templates": templates,
        "chat": chats,
        "chat_errors": ERROR_CASES,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
