"""Tool calls written as text: recognised and executed like native ones.

Serving stacks without a tool parser (llama.cpp without ``--jinja``, vLLM without
``--enable-auto-tool-choice``, many fine-tunes) return the model's tool calls inside the content.
Reading them as a final answer would score the serving stack, not the model. Recognised formats:

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (one block per call)
- Mistral: ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`` and the newer
  ``[TOOL_CALLS]name[ARGS]{...}``
- Llama 3.x: ``<|python_tag|>{"name": ..., "parameters": {...}}`` or a reply that is nothing but
  such JSON objects (separated by ``;`` or new lines)

Only calls that name a tool the agent holds count, so a JSON *answer* is never taken for a call.
"""

from __future__ import annotations

import json
import re
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_MISTRAL_ARGS = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z_][\w.-]*)\s*\[ARGS\]\s*", re.DOTALL)


def _objects(text: str) -> list[Any]:
    """Every JSON value that starts at a ``{`` or ``[`` of ``text`` and parses whole, in order."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            out.append(value)
            i = end
        else:
            i += 1
    return out


def _call(obj: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name = fn.get("name")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if name not in names or not isinstance(args, dict):
        return None
    return {"name": name, "args": args}


def parse_text_tool_calls(text: str, names: set[str] | list[str]) -> tuple[list[dict[str, Any]], str, str | None]:
    """``(calls, text without them, format)``; no calls: ``([], text, None)``."""
    names = set(names)
    if not text or not names:
        return [], text, None
    if "<tool_call>" in text:
        calls = [c for block in _HERMES.findall(text) for obj in _objects(block)[:1] if (c := _call(obj, names))]
        if calls:
            return calls, _HERMES.sub("", text).strip(), "hermes"
    if "[TOOL_CALLS]" in text:
        head, _, tail = text.partition("[TOOL_CALLS]")
        if _MISTRAL_ARGS.search(text):
            calls = []
            for match in _MISTRAL_ARGS.finditer(text):
                found = _objects(text[match.end():])[:1]
                if found and (c := _call({"name": match.group(1), "arguments": found[0]}, names)):
                    calls.append(c)
        else:
            found = _objects(tail)[:1]
            items = found[0] if found and isinstance(found[0], list) else found
            calls = [c for obj in items if (c := _call(obj, names))]
        if calls:
            return calls, head.strip(), "mistral"
    stripped = text.strip()
    if "<|python_tag|>" in stripped or stripped.startswith("{"):
        head, _, tail = stripped.partition("<|python_tag|>") if "<|python_tag|>" in stripped else ("", "", stripped)
        objects = _objects(tail)
        calls = [c for obj in objects if (c := _call(obj, names))]
        leftover = re.sub(r"[\s;]+", "", _strip_json(tail))
        if calls and len(calls) == len(objects) and not leftover:
            return calls, head.strip(), "llama"
    return [], text, None


def _strip_json(text: str) -> str:
    """``text`` with every whole JSON value removed (to check nothing but calls was written)."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i] in "{[":
            try:
                _, end = decoder.raw_decode(text, i)
                i = end
                continue
            except ValueError:
                pass
        out.append(text[i])
        i += 1
    return "".join(out)
