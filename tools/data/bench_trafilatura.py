#!/usr/bin/env python3
"""Times trafilatura (single process) on a {"url","html"} JSONL file and prints JSON.

Usage: bench_trafilatura.py PAGES.jsonl [OUT.jsonl]"""
import json
import sys
import time

import trafilatura

pages = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8")]
out = open(sys.argv[2], "w", encoding="utf-8") if len(sys.argv) > 2 else None
t0 = time.perf_counter()
ok = 0
for p in pages:
    text = trafilatura.extract(p["html"], url=p["url"])
    ok += text is not None
    if out:
        out.write(json.dumps({"url": p["url"], "text": text}) + "\n")
dt = time.perf_counter() - t0
print(json.dumps({"trafilatura": trafilatura.__version__, "pages": len(pages), "docs_ok": ok,
                  "seconds": dt, "docs_per_s_per_core": len(pages) / dt}, indent=2))
