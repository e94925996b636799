"""Shared set-up of the scripts that drive a loopback `mimo serve` with the official `openai` client."""
import argparse

import openai


def parse_args(*extra, timeout=60):
    """`--base-url --api-key --model` plus `extra` required string options; returns (args, client, check,
    passed). Refuses a non-loopback base URL (exit 2): these scripts are tests, never pointed elsewhere."""
    ap = argparse.ArgumentParser()
    for name in ("--base-url", "--api-key", "--model", *extra):
        ap.add_argument(name, required=True)
    a = ap.parse_args()
    host = a.base_url.split("//", 1)[-1].split(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit(f"refusing non-loopback host {host}")
    client = openai.OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=timeout)
    passed = []

    def check(name, cond, detail=""):
        if not cond:
            raise AssertionError(f"{name}: {detail}")
        passed.append(name)

    return a, client, check, passed
