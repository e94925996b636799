#!/usr/bin/env python3
"""Drives a running `mimo serve` with the official `openai` package through tool calling and structured
outputs. The served model is the scripted test model of `mimo_serve::testing` with the Qwen3 chat template:
outside its one scripted reply it emits near-uniform random tokens, so an output that satisfies a schema or a
tool signature shows the constraint works, not luck. Used by crates/mimo-serve/tests/openai_client.rs (once
plain, once with --mtp 1); exits non-zero on the first failure.

usage: openai_tools.py --base-url http://127.0.0.1:PORT/v1 --api-key KEY --model NAME --content TEXT
"""
import json
import re
import sys

import openai
from oai_common import parse_args

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12, "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Unit"},
    }, "required": ["city", "unit"], "additionalProperties": False},
}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time.",
    "parameters": {"type": "object", "properties": {
        "hour24": {"type": "boolean", "description": "24-hour clock"},
    }, "required": ["hour24"], "additionalProperties": False},
}}
TOOLS = [WEATHER, TIME]


def valid_args(name, args):
    """The arguments validate against the function's schema (written out: no jsonschema dependency)."""
    if name == "get_weather":
        return (set(args) == {"city", "unit"} and isinstance(args["city"], str) and len(args["city"]) <= 12
                and args["unit"] in ("celsius", "fahrenheit"))
    if name == "get_time":
        return set(args) == {"hour24"} and isinstance(args["hour24"], bool)
    return False


def main() -> int:
    a, client, check, passed = parse_args("--content", timeout=120)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]

    def chat(**kw):
        kw.setdefault("messages", msgs)
        kw.setdefault("max_tokens", 200)
        return client.chat.completions.create(model=a.model, **kw)

    # auto: the scripted reply has no call, so it is plain content.
    r = chat(tools=TOOLS, temperature=0)
    m = r.choices[0].message
    check("auto.content", m.content == a.content and not m.tool_calls, m)
    check("auto.finish", r.choices[0].finish_reason == "stop", r)
    check("auto.reasoning", getattr(m, "reasoning", None) == getattr(m, "reasoning_content", None), m)

    # Named function, several seeds: exactly one call to it, arguments valid.
    for seed in range(4):
        r = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                 temperature=1.0, seed=seed)
        c = r.choices[0]
        calls = c.message.tool_calls or []
        check(f"named[{seed}].one_call", len(calls) == 1, c)
        args = json.loads(calls[0].function.arguments)
        check(f"named[{seed}].call", calls[0].function.name == "get_weather" and valid_args("get_weather", args),
              calls[0])
        check(f"named[{seed}].finish", c.finish_reason == "tool_calls", c)
        check(f"named[{seed}].id", calls[0].id and calls[0].type == "function", calls[0])

    # required: one or more calls, each to an offered function with valid arguments; n > 1 and logprobs.
    r = chat(tools=TOOLS, tool_choice="required", temperature=1.0, seed=7, n=3, logprobs=True, top_logprobs=2)
    for i, c in enumerate(r.choices):
        calls = c.message.tool_calls or []
        check(f"required[{i}].calls", len(calls) >= 1 and c.finish_reason == "tool_calls", c)
        for call in calls:
            check(f"required[{i}].valid", valid_args(call.function.name, json.loads(call.function.arguments)),
                  call)
        check(f"required[{i}].logprobs", c.logprobs is not None and len(c.logprobs.content) > 0, c.logprobs)

    # Streaming: the client assembles delta.tool_calls fragments into the same kind of call.
    stream = chat(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}},
                  temperature=1.0, seed=3, stream=True)
    calls, finish, fragments = {}, None, 0
    for chunk in stream:
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or []:
                fragments += 1
                e = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                e["id"] = d.id or e["id"]
                if d.function:
                    e["name"] += d.function.name or ""
                    e["arguments"] += d.function.arguments or ""
    check("stream.calls", list(calls) == [0] and calls[0]["name"] == "get_time" and calls[0]["id"], calls)
    check("stream.args", valid_args("get_time", json.loads(calls[0]["arguments"])), calls)
    check("stream.fragments", fragments >= 2, fragments)
    check("stream.finish", finish == "tool_calls", finish)

    # The multi-turn follow-up with the call and its result (reasoning_content echoed) is accepted.
    call = r.choices[0].message.tool_calls[0]
    follow = msgs + [
        {"role": "assistant", "content": None, "reasoning_content": "call it",
         "tool_calls": [{"id": call.id, "type": "function",
                         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C"},
    ]
    r = chat(messages=follow, tools=TOOLS, temperature=0, max_tokens=8)
    check("followup.ok", r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r)

    # json_schema (strict): the content parses and validates.
    schema = {"type": "object", "properties": {
        "answer": {"type": "integer", "minimum": 0, "maximum": 999},
        "unit": {"type": "string", "enum": ["m", "km"]},
        "ok": {"type": "boolean"}}, "required": ["answer", "unit", "ok"], "additionalProperties": False}
    for seed in range(3):
        r = chat(response_format={"type": "json_schema",
                                  "json_schema": {"name": "a", "schema": schema, "strict": True}},
                 temperature=1.0, seed=seed)
        c = r.choices[0]
        v = json.loads(c.message.content)
        check(f"json_schema[{seed}]", set(v) == {"answer", "unit", "ok"} and 0 <= v["answer"] <= 999
              and v["unit"] in ("m", "km") and isinstance(v["ok"], bool) and c.finish_reason == "stop", c)

    # json_object: a JSON object, or cut by max_tokens (finish "length").
    r = chat(response_format={"type": "json_object"}, temperature=1.0, seed=1, max_tokens=400)
    c = r.choices[0]
    check("json_object.start", c.message.content.startswith("{"), c)
    if c.finish_reason == "stop":
        check("json_object.parse", isinstance(json.loads(c.message.content), dict), c)
    else:
        check("json_object.length", c.finish_reason == "length", c)

    # Regex and choice (vLLM's extensions, through extra_body), streaming too.
    for seed in range(3):
        r = chat(extra_body={"structured_outputs": {"regex": "[a-z]{3}-[0-9]{2}"}}, temperature=1.0, seed=seed)
        check(f"regex[{seed}]", re.fullmatch("[a-z]{3}-[0-9]{2}", r.choices[0].message.content), r)
    r = chat(extra_body={"guided_choice": ["alpha", "beta", "gamma"]}, temperature=1.0, seed=5, stream=True)
    text = "".join(ch.delta.content or "" for chunk in r for ch in chunk.choices)
    check("choice.stream", text in ("alpha", "beta", "gamma"), text)

    # max_tokens inside a constrained output: finish "length".
    r = chat(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
             temperature=1.0, seed=0, max_tokens=3)
    check("length", r.choices[0].finish_reason == "length", r)

    # A schema that cannot be compiled, a bad regex, an unknown function: 400 with the reason.
    for name, kw in [
        ("bad_schema", {"response_format": {"type": "json_schema",
                                            "json_schema": {"name": "a", "schema": {"type": "nosuchtype"}}}}),
        ("bad_regex", {"extra_body": {"structured_outputs": {"regex": "("}}}),
        ("bad_tool", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    ]:
        try:
            chat(**kw)
            raise AssertionError(f"{name}: accepted")
        except openai.BadRequestError as e:
            check(name, e.status_code == 400 and len(str(e)) > 20, e)

    print(f"openai tools/structured outputs: {len(passed)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
