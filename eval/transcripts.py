"""Agent transcripts: what every agent of a run said, thought, called and got back.

A workflow run writes ``<dir>/<thread_id>.jsonl`` (conventionally ``<results or runs folder>/transcripts/``),
one :class:`TranscriptEvent` per line. The agents of one run share the file and write from their own threads,
so their lines interleave; :func:`group_by_agent` sorts them back out by (role, client).

Producer side (:mod:`agents.transcript`, where the agents write): :class:`TranscriptWriter` and
:func:`transcript_path`. Consumer side (here): :func:`read_transcript`, :func:`summarize`, :func:`render_html` / :func:`write_html` (one
self-contained offline page), :func:`print_transcript` (rich), :func:`find_transcript` and the ``show``
subcommand (:mod:`eval.show_cli`).

Top-level imports: the standard library and pydantic only (the CLI must start fast); rich is imported inside
the functions that print.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agents.transcript import ToolCall, TranscriptEvent, TranscriptWriter, transcript_path

__all__ = [
    "AgentSummary",
    "ToolCall",
    "TranscriptEvent",
    "TranscriptWriter",
    "find_transcript",
    "group_by_agent",
    "print_transcript",
    "read_transcript",
    "render_html",
    "summarize",
    "transcript_path",
    "write_html",
]

#: contents longer than this are shown as a preview plus a collapsed remainder in the HTML page
LONG_CHARS = 4000
#: size of that preview
PREVIEW_CHARS = 1500


# --------------------------------------------------------------------------------------------- reading


def read_transcript(path: str | os.PathLike) -> list[TranscriptEvent]:
    """All events of a transcript, in file order.

    Lines that are not JSON (a line cut short by a killed process: the last line, or a line followed by the
    events of a resumed run) are skipped. A JSON line that is not a valid event raises ValueError naming the
    line. A missing file raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise FileNotFoundError(f"{path} is a folder, not a transcript (.jsonl) file")
        raise FileNotFoundError(f"transcript {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    events: list[TranscriptEvent] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue  # cut short by a killed writer
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{number}: not a transcript event (a JSON {type(data).__name__})")  # noqa: TRY004
        try:
            event = TranscriptEvent.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"{path}:{number}: not a valid transcript event: {exc}") from exc
        events.append(_with_failure_class(event))
    return events


def _with_failure_class(event: TranscriptEvent) -> TranscriptEvent:
    """An agent's outcome with its failure class (:mod:`eval.taxonomy`), from what the agent recorded."""
    if event.kind != "outcome" or event.ok is not False or event.failure:
        return event
    from eval.taxonomy import agent_classes

    extra = event.model_extra or {}
    found = agent_classes({"ok": False, "error": event.error, "repeated_calls": extra.get("repeated_calls", 0),
                           "tool_error_kinds": extra.get("tool_error_kinds") or {}})
    return event.model_copy(update={"failure": found[0] if found else None})


def group_by_agent(events: Iterable[TranscriptEvent]) -> list[tuple[str, str | None, list[TranscriptEvent]]]:
    """(role, client, events) per agent, agents in order of first appearance, events in file order."""
    groups: dict[tuple[str, str | None], list[TranscriptEvent]] = {}
    for ev in events:
        groups.setdefault((ev.role, ev.client), []).append(ev)
    return [(role, client, evs) for (role, client), evs in groups.items()]


@dataclass
class AgentSummary:
    """One row of the summary table. ``ok`` is None when the agent wrote no outcome (still running, killed)."""

    role: str
    client: str | None
    ok: bool | None
    steps: int  # model calls (assistant events)
    tool_calls: int
    tool_errors: int
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    seconds: float  # the outcome's wall time, else the sum of model and tool times
    failure: str | None
    error: str | None
    cached: int  # replies served from the response cache


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _summarize_one(role: str, client: str | None, events: list[TranscriptEvent]) -> AgentSummary:
    assistant = [e for e in events if e.kind == "assistant"]
    outcomes = [e for e in events if e.kind == "outcome"]
    last = outcomes[-1] if outcomes else None
    seconds = last.seconds if last and last.seconds else sum(
        e.seconds for e in events if e.kind in ("assistant", "tool"))
    return AgentSummary(
        role=role,
        client=client,
        ok=last.ok if last else None,
        steps=len(assistant),
        tool_calls=sum(len(e.tool_calls) for e in assistant),
        tool_errors=sum(1 for e in events if e.kind == "tool" and e.ok is False),
        input_tokens=sum(_int(e.usage.get("input_tokens")) for e in assistant),
        output_tokens=sum(_int(e.usage.get("output_tokens")) for e in assistant),
        reasoning_tokens=sum(_int(e.usage.get("reasoning_tokens")) for e in assistant),
        seconds=float(seconds),
        failure=last.failure if last else None,
        error=last.error if last else None,
        cached=sum(1 for e in assistant if e.cached),
    )


def summarize(events: Iterable[TranscriptEvent]) -> list[AgentSummary]:
    """One :class:`AgentSummary` per agent, in the order of :func:`group_by_agent`."""
    return [_summarize_one(role, client, evs) for role, client, evs in group_by_agent(events)]


def _threads(events: list[TranscriptEvent]) -> list[str]:
    return list(dict.fromkeys(e.thread for e in events))


def _agent_label(role: str, client: str | None) -> str:
    return f"{role} {client}" if client else role


def _ok_word(ok: bool | None) -> str:
    return "yes" if ok else ("NO" if ok is False else "?")


def _pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------------------------- HTML

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem;
color:#1d2129;background:#f6f7f9;font-size:14px}
h1{font-size:1.3rem;margin:.2rem 0}
.hdr p{margin:.2rem 0;color:#444}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:.3rem 0;padding:.4rem .5rem;background:#fff;
border:1px solid #e1e4e8;border-radius:4px}
table.sum{border-collapse:collapse;margin:.6rem 0;background:#fff}
table.sum th,table.sum td{border:1px solid #d0d4da;padding:.25rem .5rem;text-align:left;vertical-align:top}
table.sum th{background:#eef0f3}
table.sum td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sum tr.total td{font-weight:600;background:#f3f4f6}
.okyes{color:#137333;font-weight:600}.okno{color:#b3261e;font-weight:600}.ok_{color:#8a6d00;font-weight:600}
.small{font-size:11.5px;color:#666}
details.agent{background:#fff;border:1px solid #cfd4da;border-radius:6px;margin:.7rem 0;padding:.2rem .6rem}
details.agent>summary{cursor:pointer;font-weight:600;padding:.3rem 0;font-size:1.02rem}
details.agent.failed{border-color:#e0a19c}
.ev{border-left:4px solid #bbb;margin:.45rem 0;padding:.25rem .6rem;background:#fafbfc;border-radius:3px}
.ev .meta{font-size:12px;color:#555}
.ev .meta .kind{font-weight:700;text-transform:uppercase;letter-spacing:.03em;margin-right:.4rem}
.ev .meta span{margin-right:.6rem}
.k-system{border-left-color:#8e8e8e;background:#f4f4f4}
.k-user{border-left-color:#3b73d9;background:#f1f6ff}
.k-assistant{border-left-color:#7b4fd6;background:#f8f5ff}
.k-tool{border-left-color:#1a8f5a;background:#f1fbf5}
.k-note{border-left-color:#c99a00;background:#fffbea}
.k-outcome{border-left-color:#137333;background:#eefaf1}
.ev.fail{border-left-color:#b3261e;background:#fff1f0}
.ev.fail pre{border-color:#f0b8b3}
.badge{display:inline-block;padding:0 .35rem;border-radius:3px;background:#e6e8eb;font-size:11px}
.badge.bad{background:#b3261e;color:#fff}.badge.good{background:#137333;color:#fff}
.call{margin:.3rem 0 .3rem .6rem}
.call .head{font-size:12.5px}
details.thinking>summary,details.more>summary{cursor:pointer;color:#6b4fa8;font-size:12px}
details.thinking pre{background:#fbf9ff;color:#4a3a70}
.btns{margin:.4rem 0}
"""

_JS = """
function openHash(){var e=document.getElementById(location.hash.slice(1));if(e&&e.tagName==="DETAILS")e.open=true;}
function setAll(o){document.querySelectorAll("details.agent").forEach(function(d){d.open=o;});}
window.addEventListener("hashchange",openHash);openHash();
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _split_preview(text: str) -> tuple[str, str]:
    cut = PREVIEW_CHARS
    newline = text.rfind("\n", PREVIEW_CHARS - 300, PREVIEW_CHARS)
    if newline > 0:
        cut = newline + 1
    return text[:cut], text[cut:]


def _pre(text: str, cls: str = "") -> str:
    """A <pre> block; a long text as a preview and the rest (in full) in a collapsed <details>."""
    attr = f' class="{cls}"' if cls else ""
    if len(text) <= LONG_CHARS:
        return f"<pre{attr}>{_esc(text)}</pre>"
    head, rest = _split_preview(text)
    return (f"<pre{attr}>{_esc(head)}</pre><details class=\"more\"><summary>show the remaining {len(rest):,} of "
            f"{len(text):,} characters</summary><pre{attr}>{_esc(rest)}</pre></details>")


def _fmt_time(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts).astimezone().isoformat(sep=" ", timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return str(ts)


def _usage_text(usage: dict[str, Any]) -> str:
    if not usage:
        return ""
    tin, tout, tr = (_int(usage.get(k)) for k in ("input_tokens", "output_tokens", "reasoning_tokens"))
    text = f"tokens {tin:,} in / {tout:,} out"
    return text + (f" / {tr:,} thinking" if tr else "")


def _window_text(ev: TranscriptEvent) -> str:
    """``prompt ~N of a W-token window`` for a model call that recorded its context (agents.runner)."""
    context = (ev.model_extra or {}).get("context") or {}
    sent, window = _int(context.get("estimated_prompt_tokens")), context.get("window")
    if not sent:
        return ""
    return f"prompt ~{sent:,} tokens" + (f" of a {_int(window):,}-token window" if window else "")


def _event_html(ev: TranscriptEvent, t0: float) -> str:
    classes = ["ev", f"k-{ev.kind}"]
    if ev.kind in ("tool", "outcome") and ev.ok is False:
        classes.append("fail")
    meta = [f'<span class="kind">{_esc(ev.kind)}</span>', f"<span>step {ev.step}</span>",
            f'<span title="{_esc(_fmt_time(ev.ts))}">+{ev.ts - t0:.1f} s</span>']
    body: list[str] = []
    if ev.kind == "tool":
        meta.insert(1, f"<span><b>{_esc(ev.tool or '?')}</b></span>")
        if ev.ok is not None:
            meta.append('<span class="badge good">ok</span>' if ev.ok else '<span class="badge bad">FAILED</span>')
        if ev.tool_call_id:
            meta.append(f'<span class="small">call {_esc(ev.tool_call_id)}</span>')
    if ev.kind == "outcome":
        meta.append('<span class="badge good">agent ok</span>' if ev.ok
                    else ('<span class="badge bad">agent FAILED</span>' if ev.ok is False else
                          '<span class="badge">no verdict</span>'))
        if ev.failure:
            meta.append(f"<span>failure <b>{_esc(ev.failure)}</b></span>")
    if ev.seconds:
        meta.append(f"<span>{ev.seconds:.2f} s</span>")
    if ev.usage:
        meta.append(f"<span>{_esc(_usage_text(ev.usage))}</span>")
    if _window_text(ev):
        meta.append(f"<span>{_esc(_window_text(ev))}</span>")
    if ev.cached:
        meta.append('<span class="badge">cached</span>')
    if ev.reasoning:
        body.append(f'<details class="thinking"><summary>thinking ({len(ev.reasoning):,} chars)</summary>'
                    f"{_pre(ev.reasoning)}</details>")
    if ev.content:
        body.append(_pre(ev.content))
    for call in ev.tool_calls:
        ident = f' <span class="small">{_esc(call.id)}</span>' if call.id else ""
        body.append(f'<div class="call"><div class="head">&rarr; call <b>{_esc(call.name)}</b>{ident}</div>'
                    f"{_pre(_pretty_json(call.args))}</div>")
    if ev.error:
        body.append(f'<div class="small">error</div>{_pre(ev.error)}')
    if ev.result is not None:
        body.append(f'<div class="small">result</div>{_pre(_pretty_json(ev.result))}')
    if ev.model_extra:
        body.append(f'<div class="small">extra: {_esc(_compact_json(ev.model_extra))}</div>')
    return f'<div class="{" ".join(classes)}"><div class="meta">{"".join(meta)}</div>{"".join(body)}</div>'


def _summary_table_html(summaries: list[AgentSummary]) -> str:
    head = ("agent", "client", "ok", "steps", "tool calls", "tool errors", "tokens in / out / reasoning",
            "seconds", "failure")
    rows = ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for i, s in enumerate(summaries):
        ok_cls = {True: "okyes", False: "okno"}.get(s.ok, "ok_")  # type: ignore[arg-type]
        failure = _esc(s.failure or "")
        if s.error:
            first = s.error.strip().splitlines()[0] if s.error.strip() else s.error
            failure += f'<div class="small" title="{_esc(s.error)}">{_esc(first[:200])}</div>'
        cached = f' <span class="small">({s.cached} cached)</span>' if s.cached else ""
        rows.append(
            f'<tr><td><a href="#agent-{i}">{_esc(s.role)}</a></td><td>{_esc(s.client or "")}</td>'
            f'<td class="{ok_cls}">{_ok_word(s.ok)}</td><td class="n">{s.steps}{cached}</td>'
            f'<td class="n">{s.tool_calls}</td><td class="n">{s.tool_errors}</td>'
            f'<td class="n">{s.input_tokens:,} / {s.output_tokens:,} / {s.reasoning_tokens:,}</td>'
            f'<td class="n">{s.seconds:.1f}</td><td>{failure}</td></tr>')
    if len(summaries) > 1:
        rows.append(
            f'<tr class="total"><td>total</td><td></td><td></td><td class="n">{sum(s.steps for s in summaries)}</td>'
            f'<td class="n">{sum(s.tool_calls for s in summaries)}</td>'
            f'<td class="n">{sum(s.tool_errors for s in summaries)}</td>'
            f'<td class="n">{sum(s.input_tokens for s in summaries):,} / {sum(s.output_tokens for s in summaries):,}'
            f' / {sum(s.reasoning_tokens for s in summaries):,}</td>'
            f'<td class="n">{sum(s.seconds for s in summaries):.1f}</td><td></td></tr>')
    return f'<table class="sum">{"".join(rows)}</table>'


def render_html(events: list[TranscriptEvent], title: str) -> str:
    """One self-contained offline HTML page (inline CSS, a few lines of inline JS, no external resources)."""
    events = list(events)
    groups = group_by_agent(events)
    summaries = [_summarize_one(role, client, evs) for role, client, evs in groups]
    t0 = min((e.ts for e in events), default=0.0)
    t1 = max((e.ts for e in events), default=0.0)
    threads = _threads(events)
    agents = ", ".join(_agent_label(r, c) for r, c, _ in groups) or "none"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f'<div class="hdr"><h1>{_esc(title)}</h1>',
        f"<p>thread: <code>{_esc(', '.join(threads) or '-')}</code></p>",
        f"<p>agents: {_esc(agents)}</p>",
    ]
    if events:
        parts.append(f"<p>{len(events):,} events from {_esc(_fmt_time(t0))}, spanning {t1 - t0:.1f} s</p>")
    parts.append(_summary_table_html(summaries))
    parts.append('<div class="btns"><button type="button" onclick="setAll(true)">expand all</button> '
                 '<button type="button" onclick="setAll(false)">collapse all</button></div></div>')
    for i, ((role, client, evs), s) in enumerate(zip(groups, summaries)):
        failed = s.ok is False
        ok_cls = {True: "okyes", False: "okno"}.get(s.ok, "ok_")  # type: ignore[arg-type]
        label = _agent_label(role, client)
        extra = f" &middot; failure {_esc(s.failure)}" if s.failure else ""
        parts.append(
            f'<details class="agent{" failed" if failed else ""}" id="agent-{i}"{" open" if failed else ""}>'
            f'<summary>{_esc(label)} &middot; <span class="{ok_cls}">{_ok_word(s.ok)}</span> &middot; '
            f"{s.steps} steps &middot; {s.tool_calls} tool calls &middot; {s.tool_errors} tool errors"
            f"{extra}</summary>")
        parts.extend(_event_html(ev, t0) for ev in evs)
        parts.append("</details>")
    if not events:
        parts.append("<p>(empty transcript)</p>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_html(jsonl_path: str | os.PathLike) -> Path:
    """Render a transcript to ``<same stem>.html`` beside it (atomically); returns the HTML path."""
    src = Path(jsonl_path)
    events = read_transcript(src)
    threads = _threads(events)
    title = f"transcript {threads[0] if len(threads) == 1 else src.stem}"
    out = src.with_suffix(".html")
    page = render_html(events, title)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out


# --------------------------------------------------------------------------------------------- terminal


def _short(text: str, limit: int, full: bool) -> str:
    if full:
        return text
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit]}… (+{len(flat) - limit:,} chars)"


def print_transcript(events: list[TranscriptEvent], console: Any, full: bool = False) -> None:
    """Print a transcript with rich: a rule per agent, a line (or panel) per event, then a summary table."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    events = list(events)
    groups = group_by_agent(events)
    summaries = [_summarize_one(role, client, evs) for role, client, evs in groups]
    threads = _threads(events)
    console.print(Text.assemble(("thread ", "bold"), (", ".join(threads) or "-", "cyan"),
                                f"  {len(events)} events, {len(groups)} agents"), overflow="fold")
    kind_style = {"system": "bright_black", "user": "blue", "assistant": "magenta", "tool": "green",
                  "note": "yellow", "outcome": "bold"}
    limit = {"system": 160, "user": 300, "assistant": 400, "tool": 300, "note": 300, "outcome": 300}

    for (role, client, evs), s in zip(groups, summaries):
        verdict = {True: "[green]ok[/green]", False: "[red]FAILED[/red]"}.get(s.ok, "[yellow]no outcome[/yellow]")
        console.rule(f"[bold]{_esc_markup(_agent_label(role, client))}[/bold]  {verdict}")
        who = _agent_label(role, client)
        for ev in evs:
            style = kind_style.get(ev.kind, "")
            failed = ev.ok is False and ev.kind in ("tool", "outcome")
            if ev.kind == "outcome":
                body = Text()
                body.append("agent ok" if ev.ok else ("agent FAILED" if ev.ok is False else "no verdict"),
                            style="bold green" if ev.ok else "bold red")
                if ev.seconds:
                    body.append(f"  {ev.seconds:.1f} s")
                if ev.failure:
                    body.append(f"  failure: {ev.failure}", style="red")
                if ev.error:
                    body.append("\nerror: ", style="red")
                    body.append(_short(ev.error, limit["outcome"], full))
                if ev.content:
                    body.append("\n" + _short(ev.content, limit["outcome"], full))
                if ev.result is not None:
                    body.append("\nresult: ", style="bold")
                    body.append(_pretty_json(ev.result) if full else _short(_compact_json(ev.result), 300, False))
                console.print(Panel(body, title=f"{who} step {ev.step} outcome", title_align="left",
                                    border_style="green" if ev.ok else "red"))
                continue
            line = Text()
            line.append(f"{who} ", style="bold cyan")
            line.append(f"#{ev.step} ", style="dim")
            line.append(ev.kind, style=style)
            if ev.kind == "tool":
                line.append(f" {ev.tool or '?'}", style="bold green" if ev.ok is not False else "bold red")
                if ev.ok is not None:
                    line.append(" ok" if ev.ok else " FAILED", style="green" if ev.ok else "bold red")
            if ev.seconds:
                line.append(f" {ev.seconds:.1f}s", style="dim")
            if ev.usage:
                tin, tout, tr = (_int(ev.usage.get(k)) for k in ("input_tokens", "output_tokens", "reasoning_tokens"))
                line.append(f" {tin}→{tout}" + (f" (+{tr} thinking)" if tr else "") + " tok", style="dim")
            if _window_text(ev):
                line.append(f" [{_window_text(ev)}]", style="dim")
            if ev.cached:
                line.append(" cached", style="yellow")
            if ev.reasoning and not full:
                line.append(f" [thinking {len(ev.reasoning):,} chars]", style="dim italic")
            text = ev.content or (ev.error or "")
            if ev.kind == "note" and ev.content and ev.error:
                text = f"{ev.content} ({ev.error})"
            if text:
                if full:
                    line.append("\n")
                    line.append(text, style="red" if failed else "")
                else:
                    line.append("  ")
                    line.append(_short(text, limit.get(ev.kind, 300), False), style="red" if failed else "")
            console.print(line, overflow="fold")
            if ev.reasoning and full:
                console.print(Text("thinking:\n" + ev.reasoning, style="dim italic"), overflow="fold")
            for call in ev.tool_calls:
                c = Text("   → ", style="dim")
                c.append(call.name, style="bold green")
                args = _pretty_json(call.args) if full else _short(_compact_json(call.args), 240, False)
                c.append(" " + args)
                console.print(c, overflow="fold")
            if ev.model_extra:
                console.print(Text("   extra: " + _short(_compact_json(ev.model_extra), 240, full), style="dim"),
                              overflow="fold")

    table = Table(title="agents", title_justify="left")
    for name, justify in (("agent", "left"), ("client", "left"), ("ok", "left"), ("steps", "right"),
                          ("tool\ncalls", "right"), ("tool\nerrors", "right"),
                          ("tokens in/\nout/reasoning", "right"), ("seconds", "right"), ("failure", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for s in summaries:
        ok = Text(_ok_word(s.ok), style="green" if s.ok else ("red" if s.ok is False else "yellow"))
        failure = s.failure or ""
        if s.error:
            failure = f"{failure}: {_short(s.error, 120, full)}" if failure else _short(s.error, 120, full)
        table.add_row(s.role, s.client or "", ok, str(s.steps), str(s.tool_calls), str(s.tool_errors),
                      f"{s.input_tokens}/{s.output_tokens}/{s.reasoning_tokens}", f"{s.seconds:.1f}",
                      Text(failure, style="red" if failure else ""))
    console.print(table)


def _esc_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# --------------------------------------------------------------------------------------------- finding


def _looks_like_transcript(path: Path) -> bool:
    """A .jsonl file whose first line is an event (or an empty file inside a transcripts/ folder)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return False
    if not first.strip():
        return path.parent.name == "transcripts"
    try:
        data = json.loads(first)
    except json.JSONDecodeError:
        return path.parent.name == "transcripts"
    return isinstance(data, dict) and "role" in data and "kind" in data


def _candidates_message(ref: str, matches: list[Path]) -> str:
    shown = "\n  ".join(str(p) for p in matches[:10])
    more = f"\n  ... and {len(matches) - 10} more" if len(matches) > 10 else ""
    return f"{ref!r} matches {len(matches)} transcripts; give more of the thread id or a path:\n  {shown}{more}"


def find_transcript(ref: str, search_root: Path = Path("runs")) -> Path:
    """The transcript a user means by ``ref``.

    ``ref`` is a .jsonl path, an .html path (its .jsonl beside it), a folder holding exactly one transcript
    (directly or in its ``transcripts/``), or a thread id searched as ``search_root/**/transcripts/<ref>.jsonl``
    (exact, else a unique prefix, else a unique substring). Several matches raise ValueError (listing up to 10);
    none raises FileNotFoundError naming where it looked.
    """
    path = Path(ref)
    if path.suffix == ".html":
        jsonl = path.with_suffix(".jsonl")
        if jsonl.is_file():
            return jsonl
        raise FileNotFoundError(f"no transcript {jsonl} beside {path}")
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted({p for p in [*path.glob("*.jsonl"), *path.glob("transcripts/*.jsonl")]
                        if p.is_file() and _looks_like_transcript(p)})
        if len(found) == 1:
            return found[0]
        if not found:
            raise FileNotFoundError(f"no transcript (*.jsonl) in {path} or {path / 'transcripts'}")
        raise ValueError(_candidates_message(ref, found))
    if path.suffix == ".jsonl":
        raise FileNotFoundError(f"transcript {path} does not exist")

    root = Path(search_root)
    where = f"{root}/**/transcripts/"
    if not root.is_dir():
        raise FileNotFoundError(f"{ref!r} is not a file or folder, and the search root {root} does not exist "
                                f"(looked for {where}{ref}.jsonl; set --root)")
    everything = sorted(p for p in root.glob("**/transcripts/*.jsonl") if p.is_file())
    for rule in (lambda stem: stem == ref, lambda stem: stem.startswith(ref), lambda stem: ref in stem):
        matches = [p for p in everything if rule(p.stem)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise ValueError(_candidates_message(ref, matches))
    raise FileNotFoundError(f"no transcript for {ref!r}: not a file or folder, and no thread id containing it "
                            f"under {where} ({len(everything)} transcripts there)")


# --------------------------------------------------------------------------------------------- CLI
