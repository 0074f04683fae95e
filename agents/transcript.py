"""Agent transcripts, the writing side: one JSONL line per event an agent emits.

A workflow run writes ``<dir>/<thread_id>.jsonl``; the agents of one run share the file and write
from their own threads. Reading, summaries, the HTML page and ``fedagentbench show`` are in
:mod:`eval.transcripts`. Standard library and pydantic only (imported by every run).
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["system", "user", "assistant", "tool", "note", "outcome"]

# --------------------------------------------------------------------------------------------- schema


class ToolCall(BaseModel):
    """One tool call requested by an assistant message."""

    model_config = ConfigDict(extra="allow")

    id: str = ""
    name: str
    args: dict[str, Any] = Field(default_factory=dict)


class TranscriptEvent(BaseModel):
    """One line of a transcript. Unknown extra keys are kept (``model_extra``) and shown by the viewers."""

    model_config = ConfigDict(extra="allow")

    ts: float = Field(default_factory=time.time)  # epoch seconds
    thread: str  # the run's thread id
    role: str  # S1, C1, S2, C2, C3, S3, S4
    client: str | None = None  # hospital name for C roles
    step: int  # model-call index within that agent (0-based)
    kind: Kind
    content: str = ""  # message text (assistant: the final text with thinking removed)
    reasoning: str = ""  # assistant only: the model's thinking
    tool_calls: list[ToolCall] = Field(default_factory=list)  # assistant
    tool: str | None = None  # kind "tool": the tool's name
    tool_call_id: str | None = None
    ok: bool | None = None  # tool: whether the tool succeeded; outcome: whether the agent succeeded
    usage: dict[str, Any] = Field(default_factory=dict)  # assistant: input_tokens, output_tokens, reasoning_tokens
    seconds: float = 0.0  # assistant: model-call time; tool: tool time; outcome: agent wall time
    cached: bool = False  # assistant: reply served from the response cache
    error: str | None = None  # outcome: why the agent failed; note: e.g. "retry after RateLimitError"
    result: dict[str, Any] | None = None  # outcome: the parsed answer
    failure: str | None = None  # outcome: failure class (e.g. "budget_exhausted", "unparseable_answer")


# --------------------------------------------------------------------------------------------- writing

_LOCKS: dict[str, threading.Lock] = {}
_HEALED: set[str] = set()
_LOCKS_GUARD = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.Lock()
        return lock


def transcript_path(directory: str | os.PathLike, thread: str) -> Path:
    """``<directory>/<thread>.jsonl``, with characters unsafe in a file name replaced by ``_``."""
    safe = re.sub(r"[^A-Za-z0-9_.:@-]+", "_", thread).strip(".") or "_"
    return Path(directory) / f"{safe[:200]}.jsonl"


class TranscriptWriter:
    """Appends events to one JSONL file; safe to use from many threads and many instances at once.

    All writers of the same file in this process share one lock; each event is one ``write`` of one line
    followed by a flush, in append mode. The first write to a file in a process starts on a fresh line when
    a previous (killed) process left a line cut short, so that one cut line never swallows the next event.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = os.path.realpath(self.path)
        self._lock = _lock_for(self._key)

    def write(self, event: TranscriptEvent | dict[str, Any]) -> TranscriptEvent:
        """Validate (a dict) and append one event; returns the validated event. Raises ValidationError."""
        ev = event if isinstance(event, TranscriptEvent) else TranscriptEvent.model_validate(event)
        line = ev.model_dump_json(fallback=str) + "\n"
        with self._lock:
            if self._key not in _HEALED:
                if _ends_mid_line(self.path):
                    line = "\n" + line
                _HEALED.add(self._key)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
        return ev

    def __repr__(self) -> str:
        return f"TranscriptWriter({str(self.path)!r})"


def _ends_mid_line(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False
