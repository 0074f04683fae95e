"""`federate run --approve`: a person approves, rejects or edits what C2 removes and what S4 trains,
in the terminal, through the CLI as a subprocess; a pause survives the process ending."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .test_federate import REPO, _cli

PROMPT = "approve, reject or edit? [a/r/e]"


class Terminal:
    """The CLI in a subprocess, read as it writes (the prompt ends without a newline)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fedagentbench_cli", *args], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.out = ""
        self.seen = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := self.proc.stdout.read(1):
            with self._lock:
                self.out += chunk

    def question(self, timeout: float = 400) -> dict | None:
        """The next question (agent, tool, arguments), or None when the process ended first."""
        end = time.time() + timeout
        while time.time() < end:
            with self._lock:
                at = self.out.find(PROMPT, self.seen)
                if at >= 0:
                    block, self.seen = self.out[self.seen:at], at + len(PROMPT)
                    head = re.findall(r"approval needed: (\S+) wants to call (\S+)", block)[-1]
                    args = re.findall(r"Arguments: (.*)", block)[-1]
                    what = re.findall(r"What: (.*)", block)[-1]
                    return {"agent": head[0], "tool": head[1], "args": json.loads(args), "what": what}
            if self.proc.poll() is not None:
                time.sleep(0.5)  # the reader's last characters
                with self._lock:
                    if self.out.find(PROMPT, self.seen) < 0:
                        return None
            time.sleep(0.1)
        raise AssertionError("no question and no exit:\n" + self.out[-3000:])

    def answer(self, *lines: str) -> None:
        self.proc.stdin.write("".join(line + "\n" for line in lines))
        self.proc.stdin.flush()

    def finish(self, timeout: float = 600) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    from scripts.make_example_federation import make_example

    root = tmp_path_factory.mktemp("approve")
    make_example(root / "sites", per_class=8)
    out = root / "federation.yaml"
    proc = _cli("federate", "init", str(root / "sites" / "hospital_a"), str(root / "sites" / "hospital_b"),
                "--out", str(out), "--request", "Train a pneumonia classifier on chest X-rays.")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = re.sub(r"classes: \[.*\]", 'classes: ["normal", "pneumonia"]', out.read_text())  # as a person reviews it
    out.write_text(text.replace("rounds: 3", "rounds: 1"))
    return out


def _files(question: dict) -> list[str]:
    """The files a removal would delete: its paths, or the flagged files the question lists."""
    if question["tool"] == "remove_files":
        return question["args"]["paths"]
    return re.findall(r"(work/\S+) \(\w+\)", question["what"])


def _cleaned_file(work: Path, site: str, rel: str) -> bool:
    """Whether the site's run still holds ``rel`` (its workspace's ``work/`` is the run's folder of the site)."""
    rest = rel.removeprefix("work/")
    return any(p.as_posix().endswith(f"/{site}/{rest}") for p in work.rglob(Path(rel).name))


def test_rejected_removals_stay_approved_ones_go_and_a_restart_asks_again(federation: Path, tmp_path: Path) -> None:
    work = tmp_path / "run.work"
    command = ("federate", "run", str(federation), "--model", "skyline", "--work", str(work), "--approve")

    # the person walks away at the first question: the run stays paused, and says so
    first = Terminal(*command)
    asked = first.question()
    assert asked is not None and asked["agent"].startswith("C2@"), first.out[-3000:]
    assert first.finish() == 3, first.out[-3000:]
    assert "paused" in first.out and "same command" in first.out

    # the same command asks that question again, first; then every other question in turn
    second = Terminal(*command)
    again = second.question()
    assert again == asked
    decisions: list[tuple[dict, str]] = []
    question = again
    while question is not None:
        removal = question["tool"] in ("remove_files", "remove_flagged_files") and _files(question)
        if removal and not any(d == "reject" for _, d in decisions):
            second.answer("r", "keep these for the review board")
            decisions.append((question, "reject"))
        else:
            second.answer("a")
            decisions.append((question, "approve"))
        question = second.question()
    assert second.finish() == 0, second.out[-4000:]
    assert any(q["tool"] == "launch_training" for q, _ in decisions)  # S4 asked before training
    rejected = [q for q, d in decisions if d == "reject"]
    approved = [q for q, d in decisions if d == "approve" and q["tool"] != "launch_training" and _files(q)]
    assert rejected and approved, [(q["agent"], q["tool"], d, q["what"]) for q, d in decisions]
    for q in rejected:  # a rejected removal left every file in place
        site = q["agent"].split("@")[1]
        assert all(_cleaned_file(work, site, p) for p in _files(q)), q
    for q in approved:  # an approved one removed them
        site = q["agent"].split("@")[1]
        assert not any(_cleaned_file(work, site, p) for p in _files(q)), q

    report = json.loads((work / "report.json").read_text())
    recorded = [(a["agent"], a["tool"], a["decision"]) for a in report["approvals"]]
    assert sorted(recorded) == sorted((q["agent"], q["tool"], d) for q, d in decisions)
    assert next(a for a in report["approvals"] if a["decision"] == "reject")["note"] == "keep these for the review board"
    assert report["training_status"] == "completed" and not report["paused_at"]
    assert "Decisions asked of a person" in (work / "report.md").read_text()

    # a run resumes with the settings it started with: dropping --approve is refused, not ignored
    proc = _cli(*command[:-1])
    assert proc.returncode == 2 and "started with --approve" in proc.stderr, proc.stdout + proc.stderr
