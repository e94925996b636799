#!/usr/bin/env python3
"""Drives a running `mimo serve` (serving the scripted test model of `mimo_serve::testing`) with the official
`openai` package. Used by crates/mimo-serve/tests/openai_client.rs; exits non-zero on the first failure.

usage: openai_smoke.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY --model NAME
       --reasoning TEXT --content TEXT
"""
import json
import sys

import openai
from oai_common import parse_args


def main() -> int:
    a, client, check, passed = parse_args("--reasoning", "--content")
    msgs = [{"role": "user", "content": "What is 2+2?"}]

    # Models.
    models = client.models.list()
    check("models", [m.id for m in models.data] == [a.model], models)

    # Non-streaming chat with reasoning separation.
    r = client.chat.completions.create(model=a.model, messages=msgs, temperature=0)
    m = r.choices[0].message
    check("chat.content", m.content == a.content, m)
    check("chat.reasoning", getattr(m, "reasoning_content", None) == a.reasoning, m)
    check("chat.finish", r.choices[0].finish_reason == "stop", r)
    check("chat.usage", r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage)

    # Streaming chat, with usage in the last chunk.
    content, reasoning, finish, usage = "", "", None, None
    stream = client.chat.completions.create(
        model=a.model, messages=msgs, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            content += c.delta.content or ""
            reasoning += getattr(c.delta, "reasoning_content", None) or ""
            finish = c.finish_reason or finish
    check("stream.content", content == a.content, content)
    check("stream.reasoning", reasoning == a.reasoning, reasoning)
    check("stream.finish", finish == "stop", finish)
    check("stream.usage", usage is not None and usage.completion_tokens > 0, usage)

    # n=2 with a seed.
    r = client.chat.completions.create(model=a.model, messages=msgs, n=2, temperature=0.8, seed=11, max_tokens=20)
    check("n2", sorted(c.index for c in r.choices) == [0, 1], r.choices)

    # Stop strings.
    r = client.chat.completions.create(model=a.model, messages=msgs, temperature=0, stop=["result"])
    check("stop.content", r.choices[0].message.content == "The ", r.choices[0].message)
    check("stop.finish", r.choices[0].finish_reason == "stop", r.choices[0])

    # max_tokens → length.
    r = client.chat.completions.create(model=a.model, messages=msgs, temperature=0, max_tokens=2)
    check("length", r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2, r)

    # Logprobs.
    r = client.chat.completions.create(
        model=a.model, messages=msgs, temperature=0, logprobs=True, top_logprobs=3, max_tokens=5
    )
    lp = r.choices[0].logprobs.content
    check("logprobs.count", len(lp) == 5, lp)
    check("logprobs.top", all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp), lp)

    # Thinking budget (extra body field).
    r = client.chat.completions.create(
        model=a.model, messages=msgs, temperature=0, extra_body={"max_thinking_tokens": 1}
    )
    check("budget.reasoning", r.choices[0].message.reasoning_content == a.reasoning[:1], r.choices[0].message)
    check("budget.content", r.choices[0].message.content == a.content, r.choices[0].message)

    # Text completions.
    r = client.completions.create(model=a.model, prompt="Hello", max_tokens=4, seed=1, logprobs=2)
    check("completions", r.object == "text_completion" and 1 <= r.usage.completion_tokens <= 4, r)

    # 400: a wrong-typed field and an over-long request.
    try:
        client.chat.completions.create(model=a.model, messages=msgs, temperature="hot")
        check("400.type", False, "no error")
    except openai.BadRequestError as e:
        check("400.type", e.status_code == 400 and "invalid type" in str(e), e)
    try:
        client.chat.completions.create(model=a.model, messages=[], temperature=0)
        check("400.empty", False, "no error")
    except openai.BadRequestError as e:
        check("400.empty", e.status_code == 400, e)

    # 401: a wrong key.
    bad = openai.OpenAI(base_url=a.base_url, api_key="wrong-key", max_retries=0, timeout=30)
    try:
        bad.chat.completions.create(model=a.model, messages=msgs)
        check("401", False, "no error")
    except openai.AuthenticationError as e:
        check("401", e.status_code == 401, e)

    print(json.dumps({"passed": passed}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAILED {e}", file=sys.stderr)
        sys.exit(1)
