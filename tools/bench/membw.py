#!/usr/bin/env python3
"""Memory read bandwidth, for the decode floor of a weight-streaming engine: `membw.py [--gb 2] [--threads 2]`.

What it measures: the time to stream-read a float32 array far larger than any cache (2 GB by default) with a
reduction that touches every byte once and does almost no arithmetic (`np.max`; `np.sum` is also timed, it is
slightly slower because of its pairwise summation). With `--threads T` the array is split into T disjoint
slices reduced concurrently by T Python threads (numpy releases the GIL inside the reduction loop), which is how
a T-thread decode reads its weights. Best of `--repeat` passes, after one untimed pass that faults the pages in.
Prints one JSON object: GB/s (1e9 bytes/s) for 1 thread and for T threads, and the best of all (`best_gb_s`).
"""
import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = int(args.gb * 1e9) // 4
    a = np.ones(n, dtype=np.float32)  # written once: the pages are resident before timing
    parts = np.array_split(a, args.threads)
    pool = ThreadPoolExecutor(args.threads)

    def threaded(op):
        return lambda: list(pool.map(op, parts))

    out = {"bytes": a.nbytes, "threads": args.threads, "method": "numpy reduction over a resident float32 array"}
    for name, op in (("max", np.max), ("sum", np.sum)):
        op(a)
        out[f"{name}_1thread_gb_s"] = a.nbytes / timed(lambda: op(a), args.repeat) / 1e9
        out[f"{name}_{args.threads}threads_gb_s"] = a.nbytes / timed(threaded(op), args.repeat) / 1e9
    out["best_gb_s"] = max(v for k, v in out.items() if k.endswith("_gb_s"))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
