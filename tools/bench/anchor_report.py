#!/usr/bin/env python3
"""Helpers of tools/bench/llamacpp.sh and tools/bench/mimo7b.sh (the llama.cpp CPU anchor).

    anchor_report.py dequant --gguf FILE --out-f32 DIR [--out-bf16 DIR] [--out-f16 DIR]
        GGUF -> HF checkpoint directories via transformers (needs torch, transformers, gguf, accelerate).
    anchor_report.py report --dir RUNDIR --files "f32 f16 ..." [--hf "f32 bf16"] [--prompt TEXT]
        Reads the raw outputs llamacpp.sh left in RUNDIR; prints one JSON object on stdout, a Markdown table on
        stderr.
    anchor_report.py report7b --dir RUNDIR
        The same for mimo7b.sh.
    anchor_report.py gguf-bytes FILE
        Bytes of a GGUF's tensors, by name (JSON), for the decode floor (needs gguf-py).

`report`/`report7b` use only the standard library, so any python3 runs them; a missing or failed run is reported
as null with its error instead of failing the whole report (mimo may not read a format yet).
"""
import argparse
import json
import math
import sys
from pathlib import Path


def dequant(args):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(args.gguf)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    q = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    cfg = q.config
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; a fresh model built from the
    # same config (without quantization_config) holding the dequantized weights saves normally.
    del cfg.quantization_config
    # The GGUF carries no HF architecture name; convert_hf_to_gguf.py needs one ("Failed to detect model
    # architecture" otherwise).
    cfg.architectures = [type(q).__name__]
    for out, dtype in ((args.out_f32, torch.float32), (args.out_bf16, torch.bfloat16), (args.out_f16, torch.float16)):
        if not out:
            continue
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        m.load_state_dict(q.state_dict(), strict=True)
        m = m.to(dtype)
        m.config.dtype = dtype
        m.save_pretrained(out)
        tok.save_pretrained(out)
        print(f"{out}: {type(m).__name__} {dtype}", file=sys.stderr)


def load_json(path):
    """(value, error): the JSON object in a file (the last line that parses, since tools may log before it)."""
    p = Path(path)
    if not p.exists():
        return None, "not run"
    text = p.read_text(errors="replace").strip()
    if not text:
        return None, last_error(p)
    try:
        return json.loads(text), None
    except json.JSONDecodeError:
        for line in reversed(text.splitlines()):
            try:
                return json.loads(line), None
            except json.JSONDecodeError:
                continue
    return None, last_error(p)


def last_error(p):
    err = p.with_suffix(".err")
    if err.exists():
        lines = [l for l in err.read_text(errors="replace").splitlines() if l.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"


def llama_bench(path):
    """{'pp': tok/s, 'tg': tok/s, ...} from `llama-bench -o json` (a list with one entry per test)."""
    runs, err = load_json(path)
    if runs is None:
        return {"error": err}
    out = {}
    for r in runs:
        key = "pp" if r.get("n_gen", 0) == 0 else "tg"
        out[key] = r["avg_ts"]
        out[f"{key}_stddev"] = r.get("stddev_ts")
        out[f"{key}_samples"] = r.get("samples_ts")
        out["model_size"] = r.get("model_size")
        out["model_type"] = r.get("model_type")
        out["threads"] = r.get("n_threads")
    return out


def mimo_bench(path):
    rep, err = load_json(path)
    if rep is None:
        return {"error": err}
    m = rep.get("mimo", {})
    return {
        "pp": m.get("prefill_tok_s"),
        "tg": (m.get("batch1") or {}).get("decode_tok_s"),
        "tg_runs": (m.get("batch1") or {}).get("decode_tok_s_runs"),
    }


def llama_simple_text(path, prompt):
    """The completion `llama-simple` printed: stdout is the prompt's pieces then the new ones, then a newline."""
    p = Path(path)
    if not p.exists():
        return None
    out = p.read_text(errors="replace")
    if out.endswith("\n"):
        out = out[:-1]
    i = out.find(prompt)
    return out[i + len(prompt):] if i >= 0 else None


def mimo_text(path):
    rep, _ = load_json(path)
    return None if rep is None else rep.get("text")


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return a / b
    return None


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if math.isfinite(x) else str(x)
    return str(x)


def report(args):
    d = Path(args.dir)
    files = {}
    for key in args.files.split():
        lc = llama_bench(d / f"llama-bench-{key}.json")
        mi = mimo_bench(d / f"mimo-bench-{key}.json") if not args.only_llamacpp else {"error": "skipped"}
        lt = llama_simple_text(d / f"llama-simple-{key}.txt", args.prompt)
        mt = mimo_text(d / f"mimo-generate-{key}.json") if not args.only_llamacpp else None
        files[key] = {
            "llamacpp": lc,
            "mimo": mi,
            "ratios": {"pp_mimo_vs_llamacpp": ratio(mi.get("pp"), lc.get("pp")),
                       "tg_mimo_vs_llamacpp": ratio(mi.get("tg"), lc.get("tg"))},
            "text": {"llamacpp": lt, "mimo": mt,
                     "equal": (lt == mt) if (lt is not None and mt is not None) else None},
        }
    hf = {}
    for dt in args.hf.split() if not args.only_llamacpp else []:
        hf[dt] = mimo_bench(d / f"mimo-bench-hf-{dt}.json")
        hf[dt]["text"] = mimo_text(d / f"mimo-generate-hf-{dt}.json")
    lc = {k: v["llamacpp"] for k, v in files.items()}
    half = {}
    for k in ("f16", "bf16"):
        if k in lc and "f32" in lc:
            half[f"llamacpp_{k}_vs_f32"] = {"pp": ratio(lc[k].get("pp"), lc["f32"].get("pp")),
                                            "tg": ratio(lc[k].get("tg"), lc["f32"].get("tg"))}
    for k in ("f16", "bf16"):
        if k in hf and "f32" in hf:
            half[f"mimo_hf_{k}_vs_f32"] = {"pp": ratio(hf[k].get("pp"), hf["f32"].get("pp")),
                                           "tg": ratio(hf[k].get("tg"), hf["f32"].get("tg"))}
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    out = {"meta": meta, "prompt": args.prompt, "files": files, "mimo_hf": hf, "half_precision_ratios": half}
    print(json.dumps(out, indent=1))

    w = sys.stderr.write
    w("\n| file | llama.cpp pp | llama.cpp tg | mimo pp | mimo tg | pp mimo/lc | tg mimo/lc | text equal |\n")
    w("|---|---|---|---|---|---|---|---|\n")
    for k, v in files.items():
        l, m, r = v["llamacpp"], v["mimo"], v["ratios"]
        w(f"| {k} | {fmt(l.get('pp'))} | {fmt(l.get('tg'))} | {fmt(m.get('pp'))} | {fmt(m.get('tg'))} | "
          f"{fmt(r['pp_mimo_vs_llamacpp'], 2)} | {fmt(r['tg_mimo_vs_llamacpp'], 2)} | {fmt(v['text']['equal'])} |\n")
    for dt, v in hf.items():
        w(f"| HF dir {dt} (mimo) | | | {fmt(v.get('pp'))} | {fmt(v.get('tg'))} | | | |\n")
    for k, v in half.items():
        w(f"\n{k}: pp {fmt(v['pp'], 2)}, tg {fmt(v['tg'], 2)}")
    w("\n")
    errors = {k: v["mimo"]["error"] for k, v in files.items() if "error" in v["mimo"] and not args.only_llamacpp}
    errors.update({f"HF dir {k}": v["error"] for k, v in hf.items() if "error" in v})
    for k, e in errors.items():
        w(f"mimo on {k}: {e}\n")
    for k, v in files.items():
        if v["text"]["llamacpp"] is not None:
            w(f"llama-simple {k}: {v['text']['llamacpp']!r}\n")


def report7b(args):
    d = Path(args.dir)
    meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
    lc = llama_bench(d / "llama-bench.json")
    mi = mimo_bench(d / "mimo-bench.json")
    bw, bw_err = load_json(d / "membw.json")
    tb, _ = load_json(d / "gguf-bytes.json")
    rss = peak_rss(d / "mimo-bench.time")
    gbs = (bw or {}).get("best_gb_s")
    floors = {}
    if tb and gbs:
        # Decode reads every weight once per token, except the embedding table (one row per token).
        per_tok = sum(v for k, v in tb["tensors"].items() if k != "token_embd.weight")
        floors["llamacpp_q4_k_m_bytes_per_token"] = per_tok
        floors["llamacpp_q4_k_m_tg_ceiling_tok_s"] = gbs * 1e9 / per_tok
    if meta.get("num_layers") and gbs:
        # mimo's --quant q4_k: assume every linear weight of the layers and the head in Q4_K (144 bytes per 256
        # weights; norms and biases ignored). MiMo-7B shapes (mimo-spec.md §1.1).
        h, kv, ff, vocab = 4096, 1024, 11008, 151680
        params = meta["num_layers"] * (2 * h * h + 2 * kv * h + 3 * ff * h) + vocab * h
        per_tok = params * 144 / 256
        floors["mimo_q4_k_bytes_per_token_assumed"] = per_tok
        floors["mimo_q4_k_tg_ceiling_tok_s"] = gbs * 1e9 / per_tok
    out = {
        "meta": meta,
        "llamacpp_q4_k_m": dict(lc, peak_rss_bytes=peak_rss(d / "llama-bench.time")),
        "mimo_q4_k": dict(mi, peak_rss_bytes=rss),
        "ratios": {"pp_mimo_vs_llamacpp": ratio(mi.get("pp"), lc.get("pp")),
                   "tg_mimo_vs_llamacpp": ratio(mi.get("tg"), lc.get("tg")),
                   "llamacpp_tg_vs_ceiling": ratio(lc.get("tg"), floors.get("llamacpp_q4_k_m_tg_ceiling_tok_s")),
                   "mimo_tg_vs_ceiling": ratio(mi.get("tg"), floors.get("mimo_q4_k_tg_ceiling_tok_s"))},
        "memory_bandwidth": bw if bw is not None else {"error": bw_err},
        "decode_floor": floors,
    }
    print(json.dumps(out, indent=1))
    w = sys.stderr.write
    w("\n| engine | pp tok/s | tg tok/s | tg ceiling from bandwidth | peak RSS |\n|---|---|---|---|---|\n")
    lrss = out["llamacpp_q4_k_m"]["peak_rss_bytes"]
    w(f"| llama.cpp Q4_K_M | {fmt(lc.get('pp'))} | {fmt(lc.get('tg'), 2)} | "
      f"{fmt(floors.get('llamacpp_q4_k_m_tg_ceiling_tok_s'), 2)} | {gib(lrss)} |\n")
    w(f"| mimo q4_k | {fmt(mi.get('pp'))} | {fmt(mi.get('tg'), 2)} | "
      f"{fmt(floors.get('mimo_q4_k_tg_ceiling_tok_s'), 2)} | {gib(rss)} |\n")
    if "error" in mi:
        w(f"mimo: {mi['error']}\n")
    if gbs:
        w(f"read bandwidth ({(bw or {}).get('threads')} threads): {gbs:.1f} GB/s\n")


def gib(b):
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def peak_rss(path):
    """Bytes, from the "Maximum resident set size (kbytes)" line of `/usr/bin/time -v`."""
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if "Maximum resident set size" in line:
                return int(line.split(":")[1].split()[0]) * 1024
    return None


def gguf_bytes(args):
    from gguf import GGUFReader

    r = GGUFReader(args.file)
    t = {x.name: int(x.n_bytes) for x in r.tensors}
    types = {}
    for x in r.tensors:
        types[x.tensor_type.name] = types.get(x.tensor_type.name, 0) + int(x.n_bytes)
    print(json.dumps({"file": args.file, "total": sum(t.values()), "by_type": types, "tensors": t}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dequant")
    p.add_argument("--gguf", required=True)
    p.add_argument("--out-f32", required=True)
    p.add_argument("--out-bf16")
    p.add_argument("--out-f16")
    p.set_defaults(fn=dequant)
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--files", required=True)
    p.add_argument("--hf", default="f32 bf16")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--only-llamacpp", action="store_true")
    p.set_defaults(fn=report)
    p = sub.add_parser("report7b")
    p.add_argument("--dir", required=True)
    p.set_defaults(fn=report7b)
    p = sub.add_parser("gguf-bytes")
    p.add_argument("file")
    p.set_defaults(fn=gguf_bytes)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
