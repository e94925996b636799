#!/usr/bin/env python3
"""Renders tool-calling conversations with real chat templates through transformers' `apply_chat_template`
and writes fixtures/templates/expected.json (read by crates/mimo-text/tests/tool_templates.rs).

Templates (fixtures/templates/*.jinja, as shipped with the checkpoints, via llama.cpp's models/templates):
Qwen3-0.6B (Qwen3/MiMo style: <tool_call> tags, reasoning_content, enable_thinking), QwQ-32B (Qwen2.5 style)
and Hermes-3-Llama-3.1-8B tool_use. The tokenizer is fixtures/tokenizer (its special tokens give bos/eos).

Tool-call arguments are sent as JSON text, the way OpenAI clients send them, and turned into objects before
rendering, as vLLM does (mimo-serve does the same in `normalize_messages`).

usage: .venv/bin/python tools/make_tool_template_fixture.py
"""
import copy
import json
import pathlib
import shutil
import tempfile

from transformers import AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "fixtures" / "templates"
TOKENIZER = ROOT / "fixtures" / "tokenizer"

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
        }, "required": ["city"]},
    }},
    {"type": "function", "function": {
        "name": "get_time",
        "description": "Local time in a time zone.",
        "parameters": {"type": "object", "properties": {
            "tz": {"type": "string", "description": "IANA time zone"},
        }, "required": ["tz"]},
    }},
]

CALL_1 = {"id": "call_1", "type": "function",
          "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}
CALL_2 = {"id": "call_2", "type": "function",
          "function": {"name": "get_time", "arguments": "{\"tz\": \"Europe/Paris\"}"}}

CASES = [
    {"name": "tools_first_turn", "tools": True, "gen": True, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Weather in Paris?"}]},
    {"name": "tools_no_system", "tools": True, "gen": True, "messages": [
        {"role": "user", "content": "What time is it in Paris?"}]},
    {"name": "one_call_and_result", "tools": True, "gen": True, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL_1]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 18}"}]},
    {"name": "two_calls_two_results", "tools": True, "gen": True, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time in Paris?"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [CALL_1, CALL_2]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}]},
    {"name": "reasoning_then_final_answer", "tools": True, "gen": False, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should call the tool.",
         "tool_calls": [CALL_1]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C.", "reasoning_content": "The tool said 18."}]},
    {"name": "multi_turn_with_earlier_reasoning", "tools": True, "gen": True, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nGreet.\n</think>\n\nHello!"},
        {"role": "user", "content": "Time in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Use get_time.", "tool_calls": [CALL_2]},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}]},
    {"name": "no_tools", "tools": False, "gen": True, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!"}]},
    {"name": "thinking_disabled", "tools": True, "gen": True, "kwargs": {"enable_thinking": False},
     "messages": [{"role": "user", "content": "Weather in Paris?"}]},
]


def as_objects(messages):
    """Tool-call arguments from JSON text to objects (vLLM's and mimo-serve's normalisation)."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls") or []:
            args = c["function"].get("arguments")
            if isinstance(args, str):
                c["function"]["arguments"] = json.loads(args)
    return out


def main():
    results = []
    for path in sorted(TEMPLATES.glob("*.jinja")):
        source = path.read_text()
        with tempfile.TemporaryDirectory() as d:
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(TOKENIZER / f, d)
            (pathlib.Path(d) / "chat_template.jinja").write_text(source)
            tok = AutoTokenizer.from_pretrained(d)
            assert tok.chat_template == source
            for case in CASES:
                try:
                    text = tok.apply_chat_template(
                        as_objects(case["messages"]), tools=TOOLS if case["tools"] else None, tokenize=False,
                        add_generation_prompt=case["gen"], **case.get("kwargs", {}))
                except Exception as e:
                    # The template fails on `tools=None` in Python (Hermes-3 loops over tools unconditionally);
                    # minijinja iterates none as an empty list, so mimo renders what Python renders for
                    # `tools=[]` (a deliberate difference: a prompt instead of an error).
                    text = tok.apply_chat_template(
                        as_objects(case["messages"]), tools=[], tokenize=False,
                        add_generation_prompt=case["gen"], **case.get("kwargs", {}))
                    ids = tok(text, add_special_tokens=False)["input_ids"]
                    results.append({"template": path.name, "case": case["name"], "python_error": str(e),
                                    "text": text, "ids": ids})
                    continue
                ids = tok(text, add_special_tokens=False)["input_ids"]
                results.append({"template": path.name, "case": case["name"], "text": text, "ids": ids})
    out = {"tools": TOOLS, "cases": CASES, "rendered": results}
    (TEMPLATES / "expected.json").write_text(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} renderings to {TEMPLATES / 'expected.json'}")


if __name__ == "__main__":
    main()
