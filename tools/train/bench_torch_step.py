#!/usr/bin/env python3
"""PyTorch reference for `train_bench`: the same model (transformers Qwen2 + one MTP layer as in
tools/make_fixtures.py), batch, sequence length, f32, AdamW, the MTP loss; prints one JSON line.

    python tools/train/bench_torch_step.py CONFIG.json [STEPS] [BATCH] [SEQ]
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from make_fixtures import MtpLayer, causal_mask  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

cfg_path = sys.argv[1]
steps, batch, seq = (int(x) for x in (sys.argv[2:5] + ["6", "8", "256"][len(sys.argv[2:5]):]))
d = json.load(open(cfg_path))
k_mtp = d.get("num_nextn_predict_layers", 0)
for key in ("model_type", "architectures", "num_nextn_predict_layers", "dtype"):
    d.pop(key, None)
cfg = Qwen2Config(**d, attn_implementation="sdpa")
torch.manual_seed(0)
model = Qwen2ForCausalLM(cfg)
mtp = torch.nn.ModuleList([MtpLayer(cfg, 0) for _ in range(k_mtp)])
params = list(model.parameters()) + list(mtp.parameters())
opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
ids = torch.randint(cfg.vocab_size, (batch, seq + 1))
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    x = ids[:, :seq]
    captured = {}
    h = model.model.norm.register_forward_hook(lambda m, i, o: captured.update(pre=i[0]))
    logits = model(input_ids=x).logits
    h.remove()
    loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
    hidden = captured["pre"]
    for k, layer in enumerate(mtp):
        rows = seq - 1 - k
        emb = model.model.embed_tokens(x[:, 1 + k:])
        pe = model.model.rotary_emb(hidden, torch.arange(rows)[None])
        g = layer.mtp_forward(hidden[:, :rows], emb, pe, causal_mask(rows, hidden.dtype))
        ml = model.lm_head(g)
        loss = loss + 0.3 / len(mtp) * F.cross_entropy(ml.reshape(-1, cfg.vocab_size), ids[:, 2 + k:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    times.append(time.perf_counter() - t0)
steady = sum(times[1:]) / max(1, len(times) - 1)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "params": sum(p.numel() for p in params),
                  "s_per_step": steady, "tokens_per_s_steady": batch * seq / steady}))
