#!/usr/bin/env python3
"""Ports Math-Verify's own test cases (data, not code) into tools/reward/math_verify_cases.jsonl, with the
configuration each test uses and Math-Verify's own verdict on it.

Reads the `tests/` directory of the math-verify sdist (pip download --no-binary :all: math-verify==0.9.0),
finds every `@pytest.mark.parametrize` test that calls `compare_strings(gold, pred, match_types=…,
precision=…, strict=…, allow_set_relation_comp=…)`, and writes one line per case:
{"file", "test", "gold", "pred", "expected", "match_types", "precision", "strict", "allow_set_relation_comp",
"math_verify"} where `math_verify` is what the installed package (0.9.0) answers with that configuration
(`compare_strings` as the suite defines it). crates/mimo-reward/tests/math_verify_suite.rs reads the file.

usage: .venv/bin/python tools/reward/port_math_verify_cases.py PATH/TO/math_verify-0.9.0/tests
"""
import ast
import json
import math
import pathlib
import sys

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

OUT = pathlib.Path(__file__).resolve().parent / "math_verify_cases.jsonl"
DEFAULTS = {"match_types": ["latex", "expr"], "precision": 6, "strict": True, "allow_set_relation_comp": False}


def compare_strings(gold, pred, match_types, precision, strict, allow_set_relation_comp):
    """The suite's own helper (tests/test_all.py), with the same extraction configs."""
    targets = []
    for t in match_types:
        targets.append(LatexExtractionConfig(boxed_match_priority=0) if t == "latex" else ExprExtractionConfig())
    return verify(parse(gold, targets), parse(pred, targets), float_rounding=precision, strict=strict,
                  allow_set_relation_comp=allow_set_relation_comp)


def cases_of(path):
    tree = ast.parse(path.read_text())
    for fn in tree.body:
        if not isinstance(fn, ast.FunctionDef):
            continue
        params = None
        for dec in fn.decorator_list:
            if (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"):
                names = [n.strip() for n in ast.literal_eval(dec.args[0]).split(",")]
                # Case lists are data, some written with f-strings: evaluate without any builtins or names.
                try:
                    rows = eval(compile(ast.Expression(dec.args[1]), str(path), "eval"), {"__builtins__": {}, "math": math})
                except NameError as e:
                    print(f"skipping {path.name}::{fn.name}: {e}", file=sys.stderr)
                    continue
                params = (names, rows)
        call = next((n for n in ast.walk(fn) if isinstance(n, ast.Call)
                     and getattr(n.func, "id", "") == "compare_strings"), None)
        if params is None or call is None:
            continue
        names, rows = params
        for row in rows:
            values = dict(zip(names, row))
            cfg = dict(DEFAULTS)
            for kw in call.keywords:
                v = kw.value
                cfg[kw.arg] = values[v.id] if isinstance(v, ast.Name) else ast.literal_eval(v)
            expected = values.get("expected", values.get("result"))
            yield {"file": path.name, "test": fn.name, "gold": values["gold"], "pred": values["pred"],
                   "expected": bool(expected), **cfg}


def main():
    tests = pathlib.Path(sys.argv[1])
    rows = []
    for path in sorted(tests.glob("test_*.py")):
        for case in cases_of(path):
            try:
                mv = bool(compare_strings(case["gold"], case["pred"], case["match_types"], case["precision"],
                                          case["strict"], case["allow_set_relation_comp"]))
            except Exception as e:  # noqa: BLE001 - the package's own failure counts as "not equal"
                print(f"math-verify raised on {case['gold']!r} / {case['pred']!r}: {e}", file=sys.stderr)
                mv = False
            rows.append({**case, "math_verify": mv})
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    agree = sum(r["math_verify"] == r["expected"] for r in rows)
    print(f"{len(rows)} cases → {OUT}; math-verify agrees with the expected verdict on {agree} "
          f"({100 * agree / len(rows):.1f} %)")


if __name__ == "__main__":
    main()
