"""``fedagentbench show``: print a run's agent transcript, or write its HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from eval.transcripts import _esc_markup, find_transcript, print_transcript, read_transcript, write_html


def register_show(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``show`` to a CLI's subparsers; returns its parser."""
    show = subparsers.add_parser("show", help="print a run's agent transcript (messages, tool calls, results)")
    show.add_argument("run", help="a transcript .jsonl/.html path, a folder holding one, or a thread id (or a "
                                  "unique part of one)")
    show.add_argument("--root", type=Path, default=Path("runs"),
                      help="where thread ids are searched, as ROOT/**/transcripts/<id>.jsonl (default: runs)")
    show.add_argument("--full", action="store_true", help="no truncation: full messages, thinking and tool args")
    show.add_argument("--html", action="store_true",
                      help="write (or refresh) the self-contained HTML page beside the transcript and print its path")
    show.set_defaults(func=_show)
    return show


def _show(args: argparse.Namespace) -> int:
    path = find_transcript(args.run, Path(args.root))
    if args.html:
        print(write_html(path))
        return 0
    events = read_transcript(path)
    from fedagentbench_cli import console as wide_console

    console = wide_console()
    console.print(f"[dim]{_esc_markup(str(path))}[/dim]")
    print_transcript(events, console, full=args.full)
    return 0
