#!/usr/bin/env python3
"""Reference run for `mimo bench`: HF transformers (eager attention, CPU) greedy decoding of the same checkpoint.

Prints one JSON object: prefill tok/s, batch-1 decode tok/s and batch-B decode throughput. A `mimo` checkpoint is
loaded as Qwen2ForCausalLM (the MTP layers are unused by HF generate, design §6).
"""
import argparse
import json
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, LlamaForCausalLM, LlamaConfig
from safetensors.torch import load_file
from pathlib import Path


def load(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    is_llama = cfg["model_type"] == "llama"
    cfg = {k: v for k, v in cfg.items() if k not in ("model_type", "architectures", "num_nextn_predict_layers")}
    conf = (LlamaConfig if is_llama else Qwen2Config)(**cfg, attn_implementation="eager")
    model = (LlamaForCausalLM if is_llama else Qwen2ForCausalLM)(conf)
    sd = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        sd.update({k: v for k, v in load_file(f).items() if not k.startswith("model.mtp_layers.")})
    model.load_state_dict(sd, strict=False)
    return model.float().eval()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per batch size, interleaved; median reported")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    out = {"impl": "transformers-eager", "torch": torch.__version__, "threads": args.threads}
    runs = {1: [], args.batch: []}
    inputs = {b: torch.randint(0, vocab, (b, args.prompt_len), generator=g) for b in runs}
    for rep in range(args.repeat):
        # Interleaved like mimo's runs, so that a slow spell of the machine hits both sizes alike.
        for b, ids in inputs.items():
            kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
            if rep == 0:
                model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
            t0 = time.perf_counter()
            model(ids)
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kw)
            total = time.perf_counter() - t0
            decode_tok_s = b * (args.new_tokens - 1) / max(total - prefill, 1e-9)
            runs[b].append({"prefill_tok_s": b * args.prompt_len / prefill, "decode_tok_s": decode_tok_s})
    for b, rs in runs.items():
        med = sorted(rs, key=lambda r: r["decode_tok_s"])[len(rs) // 2]
        out[f"batch{b}"] = dict(med, decode_tok_s_runs=[r["decode_tok_s"] for r in rs])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
