#!/usr/bin/env python3
"""A random-weight MiMo checkpoint at benchmark size (not committed): `--out DIR [--preset small]`.

small: hidden 512, 8 layers, 8 heads / 2 KV heads, FFN 1408, vocab 16384, untied head, 1 MTP layer (~40M params).
deep: hidden 256, 16 layers, 4 heads / 2 KV heads, FFN 704, vocab 16384, untied head, 1 MTP layer (~21M params;
      a deep-and-thin shape as MobileLLM recommends for small models).
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import make_fixtures as mf  # noqa: E402

PRESETS = {
    "small": dict(arch="mimo", vocab=16384, hidden=512, inter=1408, layers=8, heads=8, kv_heads=2, eps=1e-5,
                  tied=False, rope_theta=640000.0, mtp=1, std=0.05, n=8),
    "deep": dict(arch="mimo", vocab=16384, hidden=256, inter=704, layers=16, heads=4, kv_heads=2, eps=1e-5,
                 tied=False, rope_theta=640000.0, mtp=1, std=0.05, n=8),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    case = PRESETS[args.preset]
    model, mtp, cfg = mf.build(case, 0)
    cfg["max_position_embeddings"] = 4096
    mf.write_checkpoint(model, mtp, cfg, case, args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) + sum(p.numel() for p in mtp.parameters())} params")


if __name__ == "__main__":
    main()
