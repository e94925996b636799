"""Reference timing: the Python `math-verify` package on tools/reward/math_cases.jsonl.

Usage: python tools/reward/bench_math_verify.py [REPEATS]   (pip install "math-verify[antlr4_13_2]")
Prints JSON: {"cases": N, "seconds": S, "cases_per_s": R, "correct": [...]}.
"""
import json, sys, time, pathlib
from math_verify import parse, verify

cases = [json.loads(l) for l in (pathlib.Path(__file__).parent / "math_cases.jsonl").read_text().splitlines() if l.strip()]
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
correct = []
t = time.perf_counter()
for r in range(reps):
    for c in cases:
        ok = verify(parse("$" + c["gold"] + "$"), parse(c["pred"]))
        if r == 0:
            correct.append(bool(ok))
dt = time.perf_counter() - t
n = reps * len(cases)
print(json.dumps({"impl": "python math-verify", "cases": n, "seconds": dt, "cases_per_s": n / dt, "correct": correct}))
