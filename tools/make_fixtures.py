#!/usr/bin/env python3
"""Tiny MiMo/Qwen2/Llama reference checkpoints and their logits, made with HF transformers.

The main model is transformers' own Qwen2ForCausalLM / LlamaForCausalLM. The MTP layers are a small PyTorch
module written from the spec (shared/mimo-spec.md §1.3 and §7.2): RMSNorm of the hidden state and of the next
token's embedding, input_proj over concat[hidden, embedding], one Qwen2 decoder layer, final_layernorm and the
shared lm_head. Reference logits follow the row alignment of §7.2: MTP layer k at row p takes (h_p, x_{p+1+k})
at RoPE position p and predicts x_{p+2+k}.

    python tools/make_fixtures.py                       # rewrite the committed fixtures under fixtures/
    python tools/make_fixtures.py --random SEED.. --out D # unseen checkpoints with random shapes, for tests

Each case directory holds an HF model directory (config.json + safetensors) and `reference.safetensors` with
`ids` (int64 [n]), `logits` (f32 [n, V]), `mtp_logits.{k}` (f32 [n-1-k, V]) and `greedy_ids` (int64 [24]),
transformers' greedy `generate` continuation of `ids[:5]`.
"""

import argparse
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

ROOT = Path(__file__).resolve().parent.parent
GREEDY_NEW = 24


class MtpLayer(Qwen2DecoderLayer):
    """One MiMo MTP layer: a Qwen2 decoder layer plus token/hidden norms, input_proj and final_layernorm."""

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        h = config.hidden_size
        self.token_layernorm = Qwen2RMSNorm(h, eps=config.rms_norm_eps)
        self.hidden_layernorm = Qwen2RMSNorm(h, eps=config.rms_norm_eps)
        self.input_proj = nn.Linear(2 * h, h, bias=False)
        self.final_layernorm = Qwen2RMSNorm(h, eps=config.rms_norm_eps)

    def mtp_forward(self, hidden, embeds, position_embeddings, mask):
        u = self.input_proj(torch.cat([self.hidden_layernorm(hidden), self.token_layernorm(embeds)], dim=-1))
        u = super().forward(u, attention_mask=mask, position_embeddings=position_embeddings)
        if isinstance(u, tuple):
            u = u[0]
        return self.final_layernorm(u)


def causal_mask(t, dtype):
    m = torch.full((t, t), float("-inf"), dtype=dtype).triu(1)
    return m[None, None]


def randomize(module, gen, std):
    """Random weights everywhere (HF init leaves norms at 1 and biases at 0, which would hide bugs)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def build(case, seed):
    """Returns (hf model, mtp layers, config dict to write)."""
    gen = torch.Generator().manual_seed(seed)
    common = dict(
        vocab_size=case["vocab"],
        hidden_size=case["hidden"],
        intermediate_size=case["inter"],
        num_hidden_layers=case["layers"],
        num_attention_heads=case["heads"],
        num_key_value_heads=case["kv_heads"],
        rms_norm_eps=case["eps"],
        max_position_embeddings=256,
        tie_word_embeddings=case["tied"],
        rope_theta=case["rope_theta"],
        attn_implementation="eager",
    )
    if case["arch"] == "llama":
        if "head_dim" in case:
            common["head_dim"] = case["head_dim"]
        cfg = LlamaConfig(**common, attention_bias=False)
        model = LlamaForCausalLM(cfg)
    else:
        cfg = Qwen2Config(**common)
        model = Qwen2ForCausalLM(cfg)
    model.eval()
    mtp = nn.ModuleList([MtpLayer(cfg, 0) for _ in range(case["mtp"])])
    mtp.eval()
    randomize(model, gen, case["std"])
    randomize(mtp, gen, case["std"])
    if case.get("bf16_weights"):
        # Store bf16; the f32 reference uses the same rounded weights.
        with torch.no_grad():
            for p in list(model.parameters()) + list(mtp.parameters()):
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    d = cfg.to_dict()
    d["model_type"] = "mimo" if case["arch"] == "mimo" else case["arch"]
    if case["arch"] == "mimo":
        d["architectures"] = ["MiMoForCausalLM"]
        d["num_nextn_predict_layers"] = case["mtp"]
    for key in ("mtp_hidden", "mtp_zero_pos0_embedding"):
        if key in case:
            d[key] = case[key]
    if case.get("legacy_rope"):
        d.pop("rope_parameters", None)
        d["rope_theta"] = case["rope_theta"]
    d["torch_dtype" if case.get("legacy_rope") else "dtype"] = "bfloat16" if case.get("bf16_weights") else "float32"
    d.pop("attn_implementation", None)
    d.pop("_attn_implementation", None)
    return model, mtp, d


@torch.no_grad()
def reference(model, mtp, case, ids):
    """Main logits and per-MTP-layer logits (design §7.2 alignment)."""
    captured = {}
    hook = model.model.norm.register_forward_hook(lambda m, inp, out: captured.update(pre=inp[0]))
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0].float()
    hook.remove()
    hidden = captured["pre"]
    if case.get("mtp_hidden") == "post_norm":
        hidden = model.model.norm(hidden)
    n = len(ids)
    out = {"ids": torch.tensor(ids, dtype=torch.int64), "logits": logits.contiguous()}
    for k, layer in enumerate(mtp):
        rows = n - 1 - k
        if rows <= 0:
            out[f"mtp_logits.{k}"] = torch.zeros((0, case["vocab"]))
            continue
        h = hidden[:, :rows]
        emb = model.model.embed_tokens(x[:, 1 + k :])
        if case.get("mtp_zero_pos0_embedding"):
            emb[:, 0] = 0.0
        pos = torch.arange(rows)[None]
        pe = model.model.rotary_emb(h, pos)
        g = layer.mtp_forward(h, emb, pe, causal_mask(rows, h.dtype))
        out[f"mtp_logits.{k}"] = model.lm_head(g)[0].float().contiguous()
    # Greedy continuation of the first 5 ids by transformers' generate (main model, f32, no EOS).
    prompt = x[:, :5]
    gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=GREEDY_NEW,
                         min_new_tokens=GREEDY_NEW, eos_token_id=None, pad_token_id=0)
    out["greedy_ids"] = gen[0, prompt.shape[1]:].to(torch.int64).contiguous()
    return out


def write_checkpoint(model, mtp, cfg_dict, case, out_dir):
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items() if "rotary_emb" not in k}
    if case["tied"]:
        sd.pop("lm_head.weight", None)
    for k, layer in enumerate(mtp):
        for name, t in layer.state_dict().items():
            sd[f"model.mtp_layers.{k}.{name}"] = t
    dtype = torch.bfloat16 if case.get("bf16_weights") else torch.float32
    sd = {k: v.detach().to(dtype).contiguous() for k, v in sd.items()}
    with open(out_dir / "config.json", "w") as f:
        json.dump(cfg_dict, f, indent=2, sort_keys=True)
    shards = case.get("shards", 1)
    if shards == 1:
        save_file(sd, out_dir / "model.safetensors", metadata={"format": "pt"})
        return
    names = sorted(sd)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: sd[n] for n in names[i::shards]}
        save_file(part, out_dir / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    with open(out_dir / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)


CASES = {
    # MiMo as released, in miniature: GQA 4/2, q/k/v bias, untied head, odd vocab, 2 MTP layers,
    # transformers-5 config layout (rope_parameters), f32, one file.
    "mimo-untied": dict(arch="mimo", vocab=397, hidden=64, inter=176, layers=2, heads=4, kv_heads=2,
                        eps=1e-5, tied=False, rope_theta=640000.0, mtp=2, std=0.1, n=13),
    # Tied embeddings, 3 MTP layers, bf16 weights in 3 shards with an index, legacy top-level rope_theta,
    # and the two MTP switches flipped (post-norm hidden, zeroed position-0 embedding).
    "mimo-tied-sharded-bf16": dict(arch="mimo", vocab=263, hidden=48, inter=96, layers=3, heads=6, kv_heads=2,
                                   eps=1e-6, tied=True, rope_theta=10000.0, mtp=3, std=0.12, n=11,
                                   bf16_weights=True, shards=3, legacy_rope=True,
                                   mtp_hidden="post_norm", mtp_zero_pos0_embedding=True),
    # Llama family: no q/k/v bias, tied, multi-query attention (1 KV head), explicit head_dim != hidden/heads.
    "llama-tied": dict(arch="llama", vocab=301, hidden=32, inter=80, layers=2, heads=4, kv_heads=1, head_dim=16,
                       eps=1e-5, tied=True, rope_theta=100000.0, mtp=0, std=0.15, n=9),
}


def random_case(seed):
    r = random.Random(seed)
    kv = r.choice([1, 2, 3])
    heads = kv * r.choice([1, 2, 3])
    head_dim = r.choice([8, 12, 16])
    return dict(arch=r.choice(["mimo", "mimo", "qwen2"]), vocab=r.randrange(101, 700, 2),
                hidden=heads * head_dim, inter=r.choice([40, 72, 120]), layers=r.choice([1, 2, 3]), heads=heads,
                kv_heads=kv, eps=r.choice([1e-5, 1e-6]), tied=r.random() < 0.5,
                rope_theta=r.choice([10000.0, 640000.0]), mtp=r.choice([1, 2, 3]), std=0.1, n=r.randrange(5, 20),
                legacy_rope=r.random() < 0.5, shards=r.choice([1, 2]))


def make(name, case, seed, out_root):
    d = out_root / name
    if d.exists():
        shutil.rmtree(d)
    model, mtp, cfg_dict = build(case, seed)
    if case["arch"] == "qwen2":
        cfg_dict.pop("num_nextn_predict_layers", None)
        mtp = nn.ModuleList()
    ids = torch.randint(0, case["vocab"], (case["n"],), generator=torch.Generator().manual_seed(seed + 1)).tolist()
    write_checkpoint(model, mtp, cfg_dict, case, d)
    ref = reference(model, mtp, case, ids)
    save_file(ref, d / "reference.safetensors")
    print(f"{d}: {sum(p.numel() for p in model.parameters())} main params, {len(mtp)} MTP layers, n={len(ids)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "fixtures")
    ap.add_argument("--random", type=int, nargs="+", metavar="SEED", help="make random-shaped cases named random-SEED")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.random is not None:
        for seed in args.random:
            make(f"random-{seed}", random_case(seed), seed, args.out)
        return
    for i, (name, case) in enumerate(CASES.items()):
        make(name, case, 1000 + i, args.out)


if __name__ == "__main__":
    main()
