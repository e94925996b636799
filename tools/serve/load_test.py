#!/usr/bin/env python3
"""Load test for `mimo serve` on loopback: N concurrent streaming clients for a bounded time and request count.

Each client loops: a streaming chat completion, then a streaming text completion (max_tokens tokens), each with
stream_options.include_usage. Reports throughput, time-to-first-token p50/p99, failures, the server's RSS over
time (with --pid) and, from /metrics at the end, whether every KV block was returned.

Serve the scripted test model first, e.g.
    cargo run --release -p mimo-serve --example serve_test_model -- --port 8000 --max-num-seqs 16 &
    .venv/bin/python tools/serve/load_test.py --pid $! --clients 32 --duration 60
--system-words N puts the same N-word system prompt before every request (chat: a system message; text: a
prefix), the case prefix caching serves; the report then carries the prefix-cache hit rate from /metrics.
Prints one JSON object on stdout; exit code 1 when a request failed or KV blocks leaked.
"""
import argparse
import asyncio
import json
import sys
import time
import urllib.parse

try:  # the `openai` package pins httpx2 (the httpx API under a new name)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return None


def hit_rate(m0, m):
    """Prefix-cache hit tokens over query tokens between two /metrics snapshots (None without the metrics)."""
    q = [metric(x, "mimo_prefix_cache_queries_total") for x in (m0, m)]
    h = [metric(x, "mimo_prefix_cache_hits_total") for x in (m0, m)]
    if None in q or None in h or q[1] == q[0]:
        return None
    return round((h[1] - h[0]) / (q[1] - q[0]), 3)


async def one_request(client, a, i, stats):
    chat = i % 2 == 0
    if chat:
        path = "/v1/chat/completions"
        messages = [{"role": "user", "content": f"Question {i}: what is 2+2?"}]
        if a.system:
            messages.insert(0, {"role": "system", "content": a.system})
        body = {"model": a.model, "messages": messages, "max_tokens": a.max_tokens}
    else:
        path = "/v1/completions"
        body = {"model": a.model, "prompt": f"{a.system}\nStory {i}:" if a.system else f"Story {i}:",
                "max_tokens": a.max_tokens}
    body.update({"stream": True, "stream_options": {"include_usage": True}, "temperature": 1.0})
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    done = False
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            v = json.loads(data)
            if "error" in v:
                raise RuntimeError(f"stream error: {v['error']}")
            if v.get("usage"):
                tokens = v["usage"]["completion_tokens"]
            for c in v.get("choices", []):
                piece = c.get("text") or (c.get("delta") or {}).get("content") or \
                    (c.get("delta") or {}).get("reasoning_content")
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    stats["ok"] += 1
    stats["tokens"] += tokens
    if ttft is not None:
        stats["ttft"].append(ttft)
    stats["latency"].append(time.perf_counter() - t0)


async def client_loop(cid, client, a, deadline, counter, stats):
    while time.monotonic() < deadline:
        i = counter[0]
        if i >= a.max_requests:
            return
        counter[0] += 1
        try:
            await asyncio.wait_for(one_request(client, a, i, stats), timeout=a.request_timeout)
        except Exception as e:  # noqa: BLE001 - every failure counts
            stats["failed"] += 1
            if len(stats["errors"]) < 5:
                stats["errors"].append(f"client {cid}: {type(e).__name__}: {e}")


async def rss_sampler(pid, start, deadline, samples):
    while time.monotonic() < deadline:
        v = rss_kib(pid)
        if v is not None:
            samples.append((round(time.monotonic() - start, 1), v))
        await asyncio.sleep(2.0)


async def main_async(a):
    host = urllib.parse.urlparse(a.base_url).hostname
    if host not in LOOPBACK:
        print(f"refusing non-loopback host {host!r}", file=sys.stderr)
        return 2
    limits = httpx.Limits(max_connections=a.clients + 4, max_keepalive_connections=a.clients + 4)
    async with httpx.AsyncClient(base_url=a.base_url, limits=limits, timeout=a.request_timeout) as client:
        m0 = (await client.get("/metrics")).text
        stats = {"ok": 0, "failed": 0, "tokens": 0, "ttft": [], "latency": [], "errors": []}
        start = time.monotonic()
        deadline = start + a.duration
        counter = [0]
        rss = []
        tasks = [client_loop(c, client, a, deadline, counter, stats) for c in range(a.clients)]
        if a.pid:
            tasks.append(rss_sampler(a.pid, start, deadline, rss))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        # Let the engine finish its last steps, then check that every KV block came back.
        free = total = running = None
        for _ in range(50):
            m = (await client.get("/metrics")).text
            free, total = metric(m, "mimo_kv_blocks_free"), metric(m, "mimo_kv_blocks_total")
            running = metric(m, "mimo_num_requests_running")
            if free == total and running == 0:
                break
            await asyncio.sleep(0.1)
    warm = [v for t, v in rss if t >= a.warmup]
    out = {
        "clients": a.clients,
        "duration_s": round(elapsed, 1),
        "requests_ok": stats["ok"],
        "requests_failed": stats["failed"],
        "requests_per_s": round(stats["ok"] / elapsed, 2),
        "generated_tokens": stats["tokens"],
        "tokens_per_s": round(stats["tokens"] / elapsed, 1),
        "ttft_p50_ms": round(1000 * pct(stats["ttft"], 50), 1) if stats["ttft"] else None,
        "ttft_p99_ms": round(1000 * pct(stats["ttft"], 99), 1) if stats["ttft"] else None,
        "latency_p50_ms": round(1000 * pct(stats["latency"], 50), 1) if stats["latency"] else None,
        "kv_blocks_free_at_end": free,
        "kv_blocks_total": total,
        "running_at_end": running,
        "prefix_cache_hit_rate": hit_rate(m0, m),
        "preemptions_delta": (metric(m, "mimo_num_preemptions_total") or 0)
        - (metric(m0, "mimo_num_preemptions_total") or 0),
        "mtp_accepted_delta": (metric(m, "mimo_mtp_accepted_tokens_total") or 0)
        - (metric(m0, "mimo_mtp_accepted_tokens_total") or 0),
        "rss_kib_after_warmup_first": warm[0] if warm else None,
        "rss_kib_after_warmup_last": warm[-1] if warm else None,
        "rss_kib_after_warmup_max": max(warm) if warm else None,
        "errors": stats["errors"],
    }
    print(json.dumps(out, indent=1))
    leaked = free is None or free != total
    return 1 if stats["failed"] or leaked else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="mimo-test")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (bounded)")
    ap.add_argument("--max-requests", type=int, default=100_000, help="total request bound")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--request-timeout", type=float, default=120.0)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS counts as warmed up")
    ap.add_argument("--pid", type=int, help="server pid, to sample its RSS")
    ap.add_argument("--system-words", type=int, default=0, help="shared system prompt of this many words")
    a = ap.parse_args()
    words = "careful assistant answer briefly check every step twice before you reply to the user".split()
    a.system = " ".join(words[k % len(words)] for k in range(a.system_words))
    a.duration = min(a.duration, 600.0)
    sys.exit(asyncio.run(main_async(a)))


if __name__ == "__main__":
    main()
