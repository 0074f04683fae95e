"""A response cache for model calls (``--cache``): a rerun of the same run is identical and free.

The key is a hash of everything that decides a reply: the model (resolved spec and sampling
settings), the whole conversation, the tools offered with their schemas, and the forced tool.
One JSON file per reply, written atomically, so concurrent runs share one cache folder safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ResponseCache:
    def __init__(self, folder: str | Path, model_identity: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.identity = json.dumps(model_identity, sort_keys=True, default=str)
        self.hits = 0
        self.misses = 0

    def key(self, messages: Sequence[Any], tools: Sequence[Any], choice: str | None) -> str:
        from langchain_core.messages import messages_to_dict
        from langchain_core.utils.function_calling import convert_to_openai_tool

        conversation = [{"type": m["type"], "content": m["data"].get("content"),
                         "tool_calls": m["data"].get("tool_calls"), "tool_call_id": m["data"].get("tool_call_id")}
                        for m in messages_to_dict(list(messages))]
        payload = json.dumps({"model": self.identity, "messages": conversation,
                              "tools": [convert_to_openai_tool(t) for t in tools], "choice": choice},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, messages: Sequence[Any], tools: Sequence[Any], choice: str | None) -> Any | None:
        from langchain_core.messages import messages_from_dict

        path = self.folder / f"{self.key(messages, tools, choice)}.json"
        try:
            data = json.loads(path.read_text("utf-8"))
            reply = messages_from_dict([data])[0]
        except (OSError, ValueError, KeyError, TypeError):  # absent, or cut short by a kill: ask the model
            self.misses += 1
            return None
        self.hits += 1
        return reply

    def put(self, messages: Sequence[Any], tools: Sequence[Any], choice: str | None, reply: Any) -> None:
        from langchain_core.messages import message_to_dict

        path = self.folder / f"{self.key(messages, tools, choice)}.json"
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(message_to_dict(reply), fh, default=str)
        os.replace(tmp, path)
