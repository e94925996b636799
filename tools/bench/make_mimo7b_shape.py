#!/usr/bin/env python3
"""A random-weight checkpoint at the real MiMo-7B shape, for speed (not quality) comparisons with llama.cpp.

    make_mimo7b_shape.py --out DIR [--num-layers N] [--seed S] [--gguf FILE] [--shard-gb G]

DIR gets a MiMo HF checkpoint (config.json, bf16 safetensors shards, model.safetensors.index.json) with the
dimensions of /work/shared/mimo-spec.md §1.1 (hidden 4096, FFN 11008, 32 heads / 8 KV heads of 128, vocab 151680,
rope theta 640000, q/k/v bias, untied head) and one MTP layer. `--num-layers` cuts the decoder depth only
(36 = the real model; each layer is 354 MB of bf16), because a full 36-layer copy plus its GGUF does not fit
everywhere.

`--gguf FILE` also writes the main model (no MTP: llama.cpp has no MTP for this arch) as a bf16 GGUF for
llama.cpp's `qwen2` arch, read back from the shards just written so both engines see the same weights. It is
written with gguf-py's GGUFWriter directly rather than through convert_hf_to_gguf.py, because the converter
needs a real tokenizer whose pre-tokenizer hash it recognises; here a synthetic byte-level BPE vocabulary of the
right size (151680 tokens, Qwen2-style special tokens at 151643..) is enough: llama-bench never tokenises text.
gguf-py must be importable (PYTHONPATH=<llama.cpp>/gguf-py).

Memory stays bounded: tensors are generated in row chunks and a shard is flushed once it reaches `--shard-gb`.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# MiMo-7B dimensions (mimo-spec.md §1.1).
HIDDEN = 4096
INTER = 11008
HEADS = 32
KV_HEADS = 8
HEAD_DIM = 128
VOCAB = 151680
ROPE_THETA = 640000.0
EPS = 1e-5
MAX_POS = 32768
BOS, EOS = 151643, 151645
STD = 0.02  # small random weights: keeps activations finite through 36 layers (the values do not matter for speed)


def layer_tensors(prefix):
    """(name, shape, kind) of one decoder layer; kind 'norm' is all ones, 'w' random normal."""
    kv = KV_HEADS * HEAD_DIM
    return [
        (f"{prefix}.input_layernorm.weight", (HIDDEN,), "norm"),
        (f"{prefix}.self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN), "w"),
        (f"{prefix}.self_attn.q_proj.bias", (HEADS * HEAD_DIM,), "w"),
        (f"{prefix}.self_attn.k_proj.weight", (kv, HIDDEN), "w"),
        (f"{prefix}.self_attn.k_proj.bias", (kv,), "w"),
        (f"{prefix}.self_attn.v_proj.weight", (kv, HIDDEN), "w"),
        (f"{prefix}.self_attn.v_proj.bias", (kv,), "w"),
        (f"{prefix}.self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM), "w"),
        (f"{prefix}.post_attention_layernorm.weight", (HIDDEN,), "norm"),
        (f"{prefix}.mlp.gate_proj.weight", (INTER, HIDDEN), "w"),
        (f"{prefix}.mlp.up_proj.weight", (INTER, HIDDEN), "w"),
        (f"{prefix}.mlp.down_proj.weight", (HIDDEN, INTER), "w"),
    ]


def all_tensors(num_layers):
    out = [("model.embed_tokens.weight", (VOCAB, HIDDEN), "w")]
    for i in range(num_layers):
        out += layer_tensors(f"model.layers.{i}")
    out += [("model.norm.weight", (HIDDEN,), "norm"), ("lm_head.weight", (VOCAB, HIDDEN), "w")]
    p = "model.mtp_layers.0"  # the 16 tensors of one MTP layer (spec §1.3)
    out += [
        (f"{p}.token_layernorm.weight", (HIDDEN,), "norm"),
        (f"{p}.hidden_layernorm.weight", (HIDDEN,), "norm"),
        (f"{p}.input_proj.weight", (HIDDEN, 2 * HIDDEN), "w"),
    ]
    out += layer_tensors(p)
    out += [(f"{p}.final_layernorm.weight", (HIDDEN,), "norm")]
    return out


def make_tensor(shape, kind, gen):
    if kind == "norm":
        return torch.ones(shape, dtype=torch.bfloat16)
    t = torch.empty(shape, dtype=torch.bfloat16)
    # Row chunks: an f32 temporary of the whole 151680x4096 embedding would be 2.5 GB.
    flat = t.view(-1) if t.dim() == 1 else t
    step = max(1, (1 << 24) // (flat.shape[-1] if t.dim() > 1 else 1))
    for r in range(0, flat.shape[0], step):
        chunk = flat[r : r + step]
        chunk.copy_(torch.randn(chunk.shape, generator=gen) * STD)
    return t


def config(num_layers):
    # The keys mimo's config.rs reads, in the transformers-5 layout of the fixtures (rope_parameters).
    return {
        "architectures": ["MiMoForCausalLM"],
        "model_type": "mimo",
        "attention_bias": True,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOS,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "head_dim": HEAD_DIM,
        "initializer_range": STD,
        "intermediate_size": INTER,
        "max_position_embeddings": MAX_POS,
        "max_window_layers": num_layers,
        "num_attention_heads": HEADS,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": KV_HEADS,
        "num_nextn_predict_layers": 1,
        "rms_norm_eps": EPS,
        "rope_parameters": {"rope_theta": ROPE_THETA, "rope_type": "default"},
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }


def write_safetensors(out, num_layers, seed, shard_bytes):
    out.mkdir(parents=True, exist_ok=True)
    specs = all_tensors(num_layers)
    # Plan shards first so that the file names can carry the final count (HF's model-0000i-of-0000n layout).
    shards, cur, cur_bytes = [], [], 0
    for idx, (name, shape, kind) in enumerate(specs):
        nbytes = 2 * int(torch.Size(shape).numel())
        if cur and cur_bytes + nbytes > shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((idx, name, shape, kind))
        cur_bytes += nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        part = {}
        for idx, name, shape, kind in shard:
            # One generator per tensor, seeded by its position: the values do not depend on the shard size.
            gen = torch.Generator().manual_seed(seed * 1_000_003 + idx)
            part[name] = make_tensor(shape, kind, gen)
            weight_map[name] = fname
            total += part[name].numel() * 2
        save_file(part, str(out / fname), metadata={"format": "pt"})
        print(f"{out / fname}: {len(part)} tensors", file=sys.stderr)
        del part
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
    )
    (out / "config.json").write_text(json.dumps(config(num_layers), indent=2, sort_keys=True))
    return weight_map


def byte_level_vocab(n_normal):
    """GPT-2 byte-level BPE tokens: the 256 byte symbols, then pairs and triples of them, each with its merge."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    base = [chr(c) for c in cs]
    tokens, merges = list(base), []
    pairs = [(a, b) for a in base for b in base]
    for a, b in pairs:
        if len(tokens) == n_normal:
            return tokens, merges
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    for a, b in pairs:
        for c in base:
            if len(tokens) == n_normal:
                return tokens, merges
            tokens.append(a + b + c)
            merges.append(f"{a + b} {c}")
    raise AssertionError("vocabulary too large for pairs and triples")


def write_gguf(path, src, weight_map, num_layers):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_name(f"mimo7b-shape-L{num_layers}")
    w.add_context_length(MAX_POS)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(num_layers)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(EPS)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16)
    # Qwen2's token layout: normal tokens, then <|endoftext|> (BOS/EOS/pad in Qwen2 terms), chat markers, padding.
    tokens, merges = byte_level_vocab(BOS)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += specials + [f"[PAD{i}]" for i in range(VOCAB - BOS - len(specials))]
    types += [gguf.TokenType.CONTROL] * (VOCAB - BOS)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(BOS)
    w.add_add_bos_token(False)

    # HF name -> llama.cpp name (what convert_hf_to_gguf.py's Qwen2 mapping produces).
    names = [("model.embed_tokens.weight", "token_embd.weight")]
    for i in range(num_layers):
        h, g = f"model.layers.{i}", f"blk.{i}"
        names += [
            (f"{h}.input_layernorm.weight", f"{g}.attn_norm.weight"),
            (f"{h}.self_attn.q_proj.weight", f"{g}.attn_q.weight"),
            (f"{h}.self_attn.q_proj.bias", f"{g}.attn_q.bias"),
            (f"{h}.self_attn.k_proj.weight", f"{g}.attn_k.weight"),
            (f"{h}.self_attn.k_proj.bias", f"{g}.attn_k.bias"),
            (f"{h}.self_attn.v_proj.weight", f"{g}.attn_v.weight"),
            (f"{h}.self_attn.v_proj.bias", f"{g}.attn_v.bias"),
            (f"{h}.self_attn.o_proj.weight", f"{g}.attn_output.weight"),
            (f"{h}.post_attention_layernorm.weight", f"{g}.ffn_norm.weight"),
            (f"{h}.mlp.gate_proj.weight", f"{g}.ffn_gate.weight"),
            (f"{h}.mlp.up_proj.weight", f"{g}.ffn_up.weight"),
            (f"{h}.mlp.down_proj.weight", f"{g}.ffn_down.weight"),
        ]
    names += [("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")]
    shapes = {n: s for n, s, _ in all_tensors(num_layers)}

    def is_matrix(hf):
        return len(shapes[hf]) == 2

    # llama.cpp wants 1-d tensors (norms, biases) in f32; matrices stay bf16 (raw bits written as uint16).
    for hf, gg in names:
        shape = shapes[hf]
        numel = int(torch.Size(shape).numel())
        if is_matrix(hf):
            w.add_tensor_info(gg, shape, np.dtype(np.uint16), 2 * numel, raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:
            w.add_tensor_info(gg, shape, np.dtype(np.float32), 4 * numel)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    handles = {}
    for hf, gg in names:
        f = weight_map[hf]
        if f not in handles:
            handles[f] = safe_open(str(src / f), framework="pt")
        t = handles[f].get_tensor(hf)
        arr = t.view(torch.int16).numpy().view(np.uint16) if is_matrix(hf) else t.float().numpy()
        w.write_tensor_data(arr)
        del t, arr
    w.close()
    print(f"{path}: {len(names)} tensors", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--num-layers", type=int, default=36, help="decoder layers (36 = MiMo-7B)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", type=Path, help="also write the main model as a bf16 GGUF (llama.cpp qwen2 arch)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="safetensors shard size")
    ap.add_argument("--gguf-only", action="store_true", help="DIR exists already: only write the GGUF from it")
    args = ap.parse_args()
    if not 1 <= args.num_layers <= 64:
        ap.error("--num-layers must be in 1..64")
    torch.set_num_threads(2)
    if args.gguf_only:
        index = json.loads((args.out / "model.safetensors.index.json").read_text())
        weight_map = index["weight_map"]
        if json.loads((args.out / "config.json").read_text())["num_hidden_layers"] != args.num_layers:
            sys.exit(f"{args.out}: num_hidden_layers differs from --num-layers {args.num_layers}")
    else:
        weight_map = write_safetensors(args.out, args.num_layers, args.seed, int(args.shard_gb * 2**30))
    if args.gguf:
        write_gguf(args.gguf, args.out, weight_map, args.num_layers)


if __name__ == "__main__":
    main()
