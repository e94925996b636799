#!/usr/bin/env python3
"""Differential test data for the math verifier: generated (gold, pred) pairs in the formats real models
write, each with the Python `math-verify` package's verdict. Used by
crates/mimo-reward/tests/math_differential.rs, which compares ours and lists every disagreement.

Golds cover integers, negatives, thousands, decimals, fractions, roots, pi, percents, intervals, tuples,
sets, expressions in x, equations, inequalities and matrices; predictions wrap the gold, an equivalent
rewriting of it, or a wrong answer in answer formats (boxed, "The final answer is $…$. I hope it is
correct.", <think> blocks, "**Answer:**", `$x = …$`, chains of equalities, trailing chat tokens).
Deterministic for a seed. Math-Verify runs with its defaults (`parse(text)`, `verify(gold, pred)`), as our
`verify` is used in RL and eval.

usage: math_differential.py --n 2000 --seed 0 --out pairs.jsonl
"""
import argparse
import json
import random
import sys
import time

from math_verify import parse, verify


def gold_pool(r):
    """(gold latex, [equivalent rewritings], [wrong answers])."""
    a, b = r.randint(1, 99), r.randint(2, 12)
    k = r.randint(1000, 999999)
    pool = [
        (str(a), [f"{a}.0", f"\\frac{{{2 * a}}}{{2}}", f"{a}"], [str(a + 1), str(-a)]),
        (str(-a), [f"-{a}", f"- {a}", f"(-{a})"], [str(a)]),
        (str(k), [f"{k:,}", f"{k}", f"{k}.00"], [str(k + 10)]),
        (f"\\frac{{{a}}}{{{b}}}", [f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{2 * a}}}{{{2 * b}}}",
                                   f"{a / b:.6f}"], [f"\\frac{{{b}}}{{{a}}}", f"\\frac{{{a + 1}}}{{{b}}}"]),
        (f"{a}\\sqrt{{{b}}}", [f"\\sqrt{{{a * a * b}}}", f"{a} \\sqrt{{{b}}}"], [f"\\sqrt{{{a * b}}}"]),
        (f"{a}\\pi", [f"\\pi {a}", f"{a} \\pi"], [f"{a + 1}\\pi", str(a)]),
        (f"{a}\\%", [f"{a}\\%", f"{a}%", f"{a}"], [f"{a + 5}\\%"]),
        (f"{a}.{b}", [f"{a}.{b}0", f"{a + b / 10:.1f}"], [f"{a}.{b + 1}"]),
        (f"({a}, {b})", [f"({a},{b})", f"\\left({a}, {b}\\right)"], [f"({b}, {a})", f"({a}, {b + 1})"]),
        (f"\\{{{a}, {b}\\}}", [f"\\{{{b}, {a}\\}}", f"\\{{{a},{b}\\}}"], [f"\\{{{a}, {b + 1}\\}}"]),
        (f"[{a}, {a + b})", [f"[{a},{a + b})", f"\\left[{a}, {a + b}\\right)"], [f"({a}, {a + b})",
                                                                                   f"[{a}, {a + b}]"]),
        (f"(-\\infty, {a}]", [f"(-\\infty,{a}]"], [f"(-\\infty, {a})"]),
        (f"{a}x+{b}", [f"{b}+{a}x", f"{a} x + {b}"], [f"{a}x-{b}", f"{b}x+{a}"]),
        (f"x^2+{a}x", [f"x(x+{a})", f"x^{{2}} + {a} x"], [f"x^2-{a}x"]),
        (f"x={a}", [f"x = {a}", str(a)], [f"x={a + 1}"]),
        (f"\\begin{{pmatrix}} {a} & {b} \\\\ {b} & {a} \\end{{pmatrix}}",
         [f"\\begin{{pmatrix}}{a}&{b}\\\\{b}&{a}\\end{{pmatrix}}",
          f"\\begin{{bmatrix}} {a} & {b} \\\\ {b} & {a} \\end{{bmatrix}}"],
         [f"\\begin{{pmatrix}} {b} & {a} \\\\ {a} & {b} \\end{{pmatrix}}"]),
        (f"\\frac{{\\sqrt{{{b}}}}}{{{a}}}", [f"\\frac{{1}}{{{a}}}\\sqrt{{{b}}}", f"\\sqrt{{{b}}}/{a}"],
         [f"\\frac{{\\sqrt{{{b + 1}}}}}{{{a}}}"]),
        (f"{a}^{{{b % 4 + 2}}}", [str(a ** (b % 4 + 2))], [str(a ** (b % 4 + 2) + 1)]),
    ]
    return r.choice(pool)


WRAPPERS = [
    "{work} Therefore, the answer is $\\boxed{{{ans}}}$.",
    "{work}\n\nThe final answer is $\\boxed{{{ans}}}$",
    "<think>\n{work} maybe {wrong}? no.\n</think>\n\nThe answer is $\\boxed{{{ans}}}$.",
    "{work} Final Answer: The final answer is ${ans}$. I hope it is correct.",
    "{work} Final Answer: The final answer is ${ans}$. I hope it is correct.<|im_end|>",
    "{work}\n\n**Answer:** ${ans}$",
    "{work} So we get $\\boxed{{{ans}}}$ as the result.",
    "{work} Hence $\\boxed{{ {ans} }}$",
    "{work}\n\\[\n\\boxed{{{ans}}}\n\\]",
    "{work} Thus the answer is \\({ans}\\).",
]

WORK = [
    "We compute step by step: $3 + 4 = 7$ and $7 \\cdot 2 = 14$.",
    "Let $y$ be the unknown. Then $2y = 10$, so $y = 5$.",
    "Expanding, $(x+1)^2 = x^2 + 2x + 1$.",
    "By the formula, $s = \\frac{n(n+1)}{2}$ for $n = 10$ gives $55$.",
    "Consider the cases separately.",
    "",
]


def make_pairs(n, seed):
    r = random.Random(seed)
    pairs = []
    for i in range(n):
        gold, same, wrong = gold_pool(r)
        kind = r.random()
        ans = r.choice(same) if kind < 0.6 else r.choice(wrong)
        pred = r.choice(WRAPPERS).format(work=r.choice(WORK), ans=ans, wrong=r.choice(wrong))
        g = r.choice([f"${gold}$", gold, f"\\boxed{{{gold}}}"])
        pairs.append({"id": i, "gold": g, "pred": pred, "intended": kind < 0.6})
    return pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    pairs = make_pairs(a.n, a.seed)
    t0 = time.perf_counter()
    for p in pairs:
        try:
            p["math_verify"] = bool(verify(parse(p["gold"]), parse(p["pred"])))
        except Exception as e:  # noqa: BLE001 - a package failure counts as "not equal"
            p["math_verify"] = False
            p["math_verify_error"] = str(e)
    dt = time.perf_counter() - t0
    with open(a.out, "w") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    print(json.dumps({"pairs": len(pairs), "math_verify_seconds": dt, "math_verify_cases_per_s": len(pairs) / dt}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
