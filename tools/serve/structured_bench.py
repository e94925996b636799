#!/usr/bin/env python3
"""Cost of constrained decoding on a running `mimo serve`: decode tokens/s with and without a JSON schema, at
concurrency 1 and 16, and the grammar's mask time per token from /metrics. Prints one JSON object.

Both arms generate exactly --max-tokens tokens per request: the plain arm with `ignore_eos`, the schema arm
with a schema whose one string field needs more than that many characters, so the grammar is active for every
token and never ends early.

usage: structured_bench.py --base-url http://127.0.0.1:PORT [--max-tokens 96] [--requests 4] [--rounds 3]
"""
import argparse
import json
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40},
    "body": {"type": "string", "minLength": 2000, "maxLength": 4000},
}, "required": ["title", "body"], "additionalProperties": False}


def post(base, body):
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def metrics(base):
    with urllib.request.urlopen(base + "/metrics", timeout=60) as r:
        text = r.read().decode()
    out = {}
    for name in ("mimo_structured_masks_total", "mimo_structured_mask_nanoseconds_total"):
        m = re.search(rf"^{name}\S* (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def arm(base, conc, n, max_tokens, schema):
    body = {"messages": [{"role": "user", "content": "Write a short JSON note about the sea."}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": 0}
    if schema:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "note", "schema": SCHEMA}}
    else:
        body["ignore_eos"] = True
    m0 = metrics(base)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        rs = list(ex.map(lambda i: post(base, dict(body, seed=i)), range(n * conc)))
    dt = time.perf_counter() - t0
    m1 = metrics(base)
    toks = sum(r["usage"]["completion_tokens"] for r in rs)
    masks = m1["mimo_structured_masks_total"] - m0["mimo_structured_masks_total"]
    nanos = m1["mimo_structured_mask_nanoseconds_total"] - m0["mimo_structured_mask_nanoseconds_total"]
    out = {"tok_s": toks / dt, "completion_tokens": toks, "seconds": dt}
    if schema:
        out["masks"] = masks
        out["mask_us_per_token"] = nanos / masks / 1e3 if masks else None
        out["finish"] = sorted({r["choices"][0]["finish_reason"] for r in rs})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--requests", type=int, default=4, help="requests per concurrent client")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    base = a.base_url.rstrip("/")
    base = base[:-3] if base.endswith("/v1") else base
    report = {"max_tokens": a.max_tokens}
    # A warm-up request (weights paged in, the prompt's blocks in the prefix cache), then the two arms
    # interleaved over --rounds rounds; each arm's figure is its median round.
    arm(base, 1, 1, 8, False)
    for conc in (1, 16):
        n = a.requests if conc == 1 else max(1, a.requests // 4)
        runs = {"plain": [], "json_schema": []}
        for _ in range(a.rounds):
            runs["plain"].append(arm(base, conc, n, a.max_tokens, False))
            runs["json_schema"].append(arm(base, conc, n, a.max_tokens, True))
        med = {k: sorted(v, key=lambda r: r["tok_s"])[len(v) // 2] for k, v in runs.items()}
        report[f"concurrency_{conc}"] = dict(med, ratio=med["json_schema"]["tok_s"] / med["plain"]["tok_s"],
                                             rounds_tok_s={k: [r["tok_s"] for r in v] for k, v in runs.items()})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
