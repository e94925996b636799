#!/usr/bin/env python3
"""Loads a checkpoint written by `mimo train` with transformers as Qwen2ForCausalLM (the main model; the MTP
tensors are ignored) and writes its logits for the given ids.

    python tools/train/hf_logits.py MODEL_DIR 1,2,3 OUT.safetensors
"""
import json
import sys
import warnings

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

warnings.filterwarnings("ignore")
model_dir, ids, out = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], sys.argv[3]
with open(f"{model_dir}/config.json") as f:
    cfg = json.load(f)
cfg.pop("model_type", None)
cfg.pop("architectures", None)
model = Qwen2ForCausalLM.from_pretrained(model_dir, config=Qwen2Config(**cfg), attn_implementation="eager")
model.eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0].float().contiguous()
save_file({"logits": logits}, out)
