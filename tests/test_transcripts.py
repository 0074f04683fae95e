"""Agent transcripts: concurrent writing, reading back cut files, the HTML page, the terminal view, ``show``."""

from __future__ import annotations

import argparse
import json
import re
import threading
from pathlib import Path

import pytest

from eval.show_cli import register_show
from eval.transcripts import (
    TranscriptEvent,
    TranscriptWriter,
    find_transcript,
    group_by_agent,
    print_transcript,
    read_transcript,
    render_html,
    summarize,
    transcript_path,
    write_html,
)

THREAD = "heuristic.xray.t1.goal.e2e.run1"


def _run_events(thread: str = THREAD) -> list[dict]:
    """A small run: S1 with a failed tool and a failed outcome, C1 at one hospital, C1 at another."""
    s1 = {"thread": thread, "role": "S1"}
    c1a = {"thread": thread, "role": "C1", "client": "hospital_a"}
    c1b = {"thread": thread, "role": "C1", "client": "hospital_b"}
    return [
        {**s1, "ts": 100.0, "step": 0, "kind": "system", "content": "You are S1, the server planner."},
        {**s1, "ts": 100.1, "step": 0, "kind": "user", "content": "Choose an algorithm."},
        {**s1, "ts": 101.0, "step": 0, "kind": "assistant", "content": "Listing the task files.",
         "reasoning": "I should look at the task first SECRET_THOUGHT",
         "tool_calls": [{"id": "call_1", "name": "list_files", "args": {"path": "/server/tasks", "deep": True}}],
         "usage": {"input_tokens": 1500, "output_tokens": 200, "reasoning_tokens": 80}, "seconds": 1.5},
        {**c1a, "ts": 101.2, "step": 0, "kind": "assistant", "content": "<script>alert(1)</script>",
         "usage": {"input_tokens": 10, "output_tokens": 5}, "cached": True},
        {**s1, "ts": 101.3, "step": 0, "kind": "tool", "tool": "list_files", "tool_call_id": "call_1", "ok": False,
         "content": "PermissionError: /server/tasks", "seconds": 0.02},
        {**c1b, "ts": 101.4, "step": 0, "kind": "assistant", "content": "ok",
         "tool_calls": [{"id": "c2", "name": "read_metadata", "args": {"file": "meta.csv"}}]},
        {**s1, "ts": 101.5, "step": 1, "kind": "note", "error": "retry after RateLimitError"},
        {**c1a, "ts": 102.0, "step": 1, "kind": "outcome", "ok": True, "seconds": 2.0,
         "result": {"selected": ["ds1"]}},
        {**s1, "ts": 103.0, "step": 1, "kind": "outcome", "ok": False, "seconds": 3.0,
         "failure": "budget_exhausted", "error": "ran out of model calls"},
    ]


def _write_run(path: Path, thread: str = THREAD) -> Path:
    writer = TranscriptWriter(path)
    for event in _run_events(thread):
        writer.write(event)
    return path


# ----------------------------------------------------------------------------------- writing and reading


def test_eight_threads_writing_one_file_give_intact_lines(tmp_path):
    path = tmp_path / "transcripts" / "t.jsonl"
    n = 200
    roles = ["S1", "C1", "S2", "C2", "C3", "S3", "S4", "C1"]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            writer = TranscriptWriter(path)  # one instance per agent: the lock is per path, not per instance
            barrier.wait()
            for step in range(n):
                writer.write(TranscriptEvent(thread="t", role=roles[i], client=f"h{i}", step=step, kind="assistant",
                                             content=f"agent {i} step {step} " + "x" * (i * 500),
                                             reasoning="y" * 300))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # every writer of one file shares one lock, however the path is spelt
    assert TranscriptWriter(path)._lock is TranscriptWriter(tmp_path / "transcripts" / ".." / "transcripts" /
                                                            "t.jsonl")._lock
    assert TranscriptWriter(path)._lock is not TranscriptWriter(tmp_path / "other.jsonl")._lock
    threads = [threading.Thread(target=agent, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8 * n
    parsed = [json.loads(line) for line in lines]  # every line whole JSON
    assert all(p["content"].endswith("x" * (int(p["client"][1:]) * 500)) for p in parsed)
    events = read_transcript(path)
    assert len(events) == 8 * n
    for i in range(8):
        steps = [e.step for e in events if e.client == f"h{i}"]
        assert steps == list(range(n))  # each agent's events in its own order
    first_seen = list(dict.fromkeys((e.role, e.client) for e in events))
    groups = group_by_agent(events)
    assert [(r, c) for r, c, _ in groups] == first_seen and len(groups) == 8
    assert all(len(evs) == n for _, _, evs in groups)


def test_cut_last_line_is_skipped_and_a_resumed_writer_starts_a_fresh_line(tmp_path):
    path = _write_run(tmp_path / "t.jsonl")
    full = read_transcript(path)
    assert len(full) == len(_run_events())
    text = path.read_text(encoding="utf-8")
    cut = text + text.splitlines()[2][:57]  # a killed process left half a line, no newline
    path.write_text(cut, encoding="utf-8")
    assert len(read_transcript(path)) == len(full)

    # a new process (here: a path this process has not written yet) appending after the cut line
    moved = tmp_path / "resumed.jsonl"
    moved.write_text(cut, encoding="utf-8")
    TranscriptWriter(moved).write({"thread": THREAD, "role": "S2", "step": 0, "kind": "user", "content": "resumed"})
    events = read_transcript(moved)
    assert len(events) == len(full) + 1 and events[-1].content == "resumed"


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_transcript(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"thread": "t", "role": "S1", "step": 0, "kind": "shouting"}\n{"thread": "t"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        read_transcript(bad)


def test_event_model_keeps_extra_keys_and_defaults():
    ev = TranscriptEvent.model_validate({"thread": "t", "role": "C2", "client": "h", "step": 3, "kind": "tool",
                                         "tool": "clean", "ok": True, "future_field": [1, 2]})
    assert ev.model_extra == {"future_field": [1, 2]}
    assert ev.content == "" and ev.tool_calls == [] and ev.usage == {} and ev.seconds == 0.0 and not ev.cached
    again = TranscriptEvent.model_validate_json(ev.model_dump_json())
    assert again == ev


def test_transcript_path_is_filename_safe(tmp_path):
    assert transcript_path(tmp_path, THREAD) == tmp_path / f"{THREAD}.jsonl"
    assert transcript_path(tmp_path, "a/b c").name == "a_b_c.jsonl"


def test_summary_counts(tmp_path):
    events = read_transcript(_write_run(tmp_path / "t.jsonl"))
    rows = {(s.role, s.client): s for s in summarize(events)}
    assert list(rows) == [("S1", None), ("C1", "hospital_a"), ("C1", "hospital_b")]
    s1 = rows[("S1", None)]
    assert (s1.ok, s1.steps, s1.tool_calls, s1.tool_errors) == (False, 1, 1, 1)
    assert (s1.input_tokens, s1.output_tokens, s1.reasoning_tokens, s1.seconds) == (1500, 200, 80, 3.0)
    assert s1.failure == "budget_exhausted"
    assert rows[("C1", "hospital_a")].ok is True and rows[("C1", "hospital_a")].cached == 1
    assert rows[("C1", "hospital_b")].ok is None  # no outcome written (killed / still running)


# ----------------------------------------------------------------------------------- HTML


def test_html_is_offline_escaped_and_has_a_section_per_agent(tmp_path):
    events = read_transcript(_write_run(tmp_path / "t.jsonl"))
    page = render_html(events, "transcript <b>x</b>")
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|img|iframe)[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link\b", page, re.IGNORECASE) and "@import" not in page and "url(" not in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page and "transcript &lt;b&gt;x&lt;/b&gt;" in page
    assert THREAD in page
    sections = re.findall(r'<details class="agent[^"]*"[^>]*>\s*<summary>(.*?)</summary>', page, re.DOTALL)
    assert len(sections) == 3
    assert sections[0].startswith("S1") and "hospital_a" in sections[1] and "hospital_b" in sections[2]
    # the reasoning sits inside its own <details> (collapsed: no "open")
    thinking = re.search(r'<details class="thinking"><summary>thinking[^<]*</summary>(.*?)</details>', page, re.DOTALL)
    assert thinking and "SECRET_THOUGHT" in thinking.group(1)
    assert page.count("SECRET_THOUGHT") == 1
    # tool call arguments pretty-printed, failed tool highlighted, summary table present
    assert "list_files" in page and "&quot;path&quot;: &quot;/server/tasks&quot;" in page
    assert re.search(r'<div class="ev k-tool fail">', page)
    assert "<th>tool errors</th>" in page and "budget_exhausted" in page


def test_html_long_content_kept_in_full_but_collapsed(tmp_path):
    body = "".join(f"line {i:05d} of a long tool output\n" for i in range(400))  # > 4000 chars
    ev = TranscriptEvent(thread="t", role="C3", client="h", step=0, kind="tool", tool="ls", ok=True, content=body)
    page = render_html([ev], "t")
    assert "line 00000" in page and "line 00399" in page  # nothing dropped
    preview, rest = re.search(r"<pre>(.*?)</pre><details class=\"more\"><summary>[^<]*</summary><pre>(.*?)</pre>",
                              page, re.DOTALL).groups()
    assert "line 00000" in preview and "line 00399" not in preview and "line 00399" in rest
    assert preview + rest == body


def test_write_html_beside_the_transcript(tmp_path):
    path = _write_run(tmp_path / "transcripts" / f"{THREAD}.jsonl")
    out = write_html(path)
    assert out == path.with_suffix(".html") and out.is_file()
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert not [p for p in out.parent.iterdir() if p.suffix == ".tmp"]
    assert write_html(path) == out  # refresh


# ----------------------------------------------------------------------------------- finding


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "bench-a" / "transcripts" / "qwq.xray.t1.goal.e2e.run1.jsonl", "qwq.xray.t1.goal.e2e.run1")
    _write_run(root / "bench-a" / "transcripts" / "qwq.xray.t1.fine.e2e.run1.jsonl", "qwq.xray.t1.fine.e2e.run1")
    _write_run(root / "transcripts" / "oracle.mri.t2.goal.phase.run1.jsonl", "oracle.mri.t2.goal.phase.run1")
    (root / "bench-a" / "results.jsonl").write_text('{"score": 1}\n')
    return root


def test_find_transcript(runs, tmp_path):
    goal = runs / "bench-a" / "transcripts" / "qwq.xray.t1.goal.e2e.run1.jsonl"
    oracle = runs / "transcripts" / "oracle.mri.t2.goal.phase.run1.jsonl"
    assert find_transcript(str(goal), runs) == goal  # a path
    assert find_transcript(str(goal.with_suffix(".html")), runs) == goal  # the page (even before it is written)
    write_html(goal)
    assert find_transcript(str(goal.with_suffix(".html")), runs) == goal
    assert find_transcript("qwq.xray.t1.goal.e2e.run1", runs) == goal  # a thread id
    assert find_transcript("oracle", runs) == oracle  # a unique prefix
    assert find_transcript("t1.fine", runs) == runs / "bench-a" / "transcripts" / "qwq.xray.t1.fine.e2e.run1.jsonl"
    assert find_transcript(str(runs / "transcripts"), runs) == oracle  # a folder holding one
    with pytest.raises(ValueError, match="qwq.xray.t1.fine.e2e.run1") as exc:
        find_transcript("qwq", runs)
    assert "qwq.xray.t1.goal.e2e.run1" in str(exc.value)
    with pytest.raises(ValueError):
        find_transcript(str(runs / "bench-a"), runs)  # two transcripts (results.jsonl is not one)
    with pytest.raises(FileNotFoundError, match="transcripts"):
        find_transcript("llama", runs)
    with pytest.raises(FileNotFoundError):
        find_transcript("llama", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        find_transcript(str(tmp_path / "missing.jsonl"), runs)


def test_find_lists_at_most_ten_candidates(tmp_path):
    root = tmp_path / "runs"
    for i in range(14):
        _write_run(root / "transcripts" / f"m.env.t{i:02d}.jsonl", f"m.env.t{i:02d}")
    with pytest.raises(ValueError) as exc:
        find_transcript("m.env", root)
    message = str(exc.value)
    assert message.count("m.env.t") == 10 and "4 more" in message


# ----------------------------------------------------------------------------------- terminal and CLI


def test_print_transcript_at_100_columns(tmp_path):
    from rich.console import Console

    events = read_transcript(_write_run(tmp_path / "t.jsonl"))
    console = Console(width=100, record=True, force_terminal=False, color_system=None)
    print_transcript(events, console)
    out = console.export_text()
    assert all(len(line) <= 100 for line in out.splitlines())
    for name in ("list_files", "read_metadata", "hospital_a", "hospital_b", "budget_exhausted", "S1", "C1"):
        assert name in out
    assert "…" not in out  # nothing short is cut (columns fold rather than ellipsise)
    assert "1500/200/80" in out and "FAILED" in out
    assert "[thinking" in out and "SECRET_THOUGHT" not in out  # thinking hidden unless --full
    assert "<script>alert(1)</script>" in out  # printed as text, not interpreted

    full = Console(width=100, record=True, color_system=None)
    print_transcript(events, full, full=True)
    assert "SECRET_THOUGHT" in full.export_text()


def test_print_truncates_long_content_unless_full():
    from rich.console import Console

    ev = TranscriptEvent(thread="t", role="S3", step=0, kind="user", content="word " * 400 + "THE_END")
    short = Console(width=100, record=True, color_system=None)
    print_transcript([ev], short)
    text = short.export_text()
    assert "THE_END" not in text and "(+1,707 chars)" in text
    full = Console(width=100, record=True, color_system=None)
    print_transcript([ev], full, full=True)
    assert "THE_END" in full.export_text()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedagentbench")
    register_show(parser.add_subparsers(dest="command"))
    return parser


def test_show_command_prints_and_returns_zero(runs, capsys):
    args = _parser().parse_args(["show", "oracle", "--root", str(runs)])
    assert args.root == runs and not args.full and not args.html
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "list_files" in out and "oracle.mri.t2.goal.phase.run1" in out and "budget_exhausted" in out

    args = _parser().parse_args(["show", "oracle", "--root", str(runs), "--html"])
    assert args.func(args) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == runs / "transcripts" / "oracle.mri.t2.goal.phase.run1.html" and printed.is_file()

    args = _parser().parse_args(["show", str(printed), "--full"])
    assert args.func(args) == 0
    assert "SECRET_THOUGHT" in capsys.readouterr().out


def test_show_help_names_the_default_root():
    parser = _parser()
    sub = parser._subparsers._group_actions[0].choices["show"]  # type: ignore[union-attr]
    assert "default: runs" in sub.format_help()
    assert Path(sub.parse_args(["x"]).root) == Path("runs")
