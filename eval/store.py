"""The results store: one JSON line per finished run, plus a manifest of every setting.

Lines are appended under a lock and flushed to disk at once; reading keeps the last line per run
key, so a run that was recorded twice (a crash between writing and acknowledging) counts once.
Runs scored by another grader version are kept apart and never mixed into one table.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

RESULTS = "results.jsonl"
MANIFEST = "manifest.json"


class RunKey(BaseModel):
    model: str
    environment: str
    task: str
    guidance: str
    mode: str
    run: int

    @property
    def text(self) -> str:
        return f"{self.model}|{self.environment}|{self.task}|{self.guidance}|{self.mode}|{self.run}"


class RunResult(BaseModel):
    key: RunKey
    grader_version: str
    thread_id: str
    subtasks: dict[str, bool] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    usage: dict[str, Any] = Field(default_factory=dict)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    wall_seconds: float = 0.0
    privacy_violations: int = 0
    errors: list[str] = Field(default_factory=list)
    #: the run ended on an infrastructure error (provider, harness): not a score; the next bench
    #: runs it again (resuming its thread from the last checkpoint)
    failed: str | None = None
    #: failed sub-task -> failure class (eval.taxonomy)
    failures: dict[str, str] = Field(default_factory=dict)
    #: one compact record per agent: role, client, ok, error, steps, tool errors by kind, answered_by
    agents: list[dict[str, Any]] = Field(default_factory=list)
    #: the run's transcript (JSONL; an HTML page of the same name beside it)
    transcript: str | None = None
    #: the chat model's sampling settings for this run: a distinct seed per repeat, so that a model
    #: sampling at temperature > 0 draws differently on each repeat (None: recorded before they were)
    sampling_seed: int | None = None
    temperature: float | None = None
    #: the environment seed: runs of one task on environments of different seeds are different task
    #: instances, never repeats of one (None: recorded before it was)
    env_seed: int | None = None
    #: the trained model on the held-out test set, with the ratio to the oracle's (eval.outcome.Outcome)
    outcome: dict[str, Any] | None = None
    #: the context window the model's requests used (agents.context.ContextWindow: tokens, source, ...)
    context_window: dict[str, Any] | None = None
    #: USD at the pricing table's list prices (0 for self-hosted models; None: no price known)
    cost_usd: float | None = None
    #: the run's wall-clock limit (--run-timeout) cut it: agents not done by then failed as run_timeout
    timed_out: bool = False


class ResultStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / RESULTS
        self._lock = threading.Lock()

    def append(self, result: RunResult) -> None:
        line = (result.model_dump_json() + "\n").encode("utf-8")
        with self._lock, self.path.open("ab+") as fh:
            if fh.tell() > 0:  # a line cut short by a killed process must not swallow this one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = b"\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def load(self, grader_version: str | None = None) -> list[RunResult]:
        """Finished runs, one per key (the last recorded), optionally of one grader version."""
        if not self.path.is_file():
            return []
        latest: dict[str, RunResult] = {}
        for line in self.path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                result = RunResult.model_validate_json(line)
            except ValueError:
                continue  # a line cut short by a kill: that run simply runs again
            if grader_version is None or result.grader_version == grader_version:
                latest[f"{result.grader_version}|{result.key.text}"] = result
        return list(latest.values())

    def done_keys(self, grader_version: str) -> set[str]:
        """Keys of finished runs; a run that ended on an infrastructure error is not finished."""
        return {r.key.text for r in self.load(grader_version) if not r.failed}

    def version_counts(self) -> dict[str, int]:
        """How many readable results lines each grader version has (every line, duplicates included)."""
        counts: dict[str, int] = {}
        if not self.path.is_file():
            return counts
        for line in self.path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                version = str(json.loads(line)["grader_version"])
            except (ValueError, KeyError, TypeError):
                continue
            counts[version] = counts.get(version, 0) + 1
        return counts

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text("utf-8"))
        except ValueError:
            return None

    def write_manifest(self, settings: dict[str, Any]) -> None:
        manifest = {"settings": settings, "versions": package_versions(), "git_commit": git_commit()}
        (self.folder / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", "utf-8")


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("fedagentbench", "langgraph", "langchain-core", "langchain-openai", "flwr", "monai", "torch",
                 "numpy", "pydantic"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
