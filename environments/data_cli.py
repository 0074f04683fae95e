"""``fedagentbench data``: fetch the real image pools and see which ones a build would use."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedagentbench_cli import DefaultsHelpFormatter
from fedagentbench_cli import console as wide_console


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="real image pools: fetch them, check them")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    data.set_defaults(func=lambda args: data.print_help() or 0)

    fetch = sub.add_parser("fetch", help="download the real pools from their official sources, verify, install",
                           formatter_class=DefaultsHelpFormatter)
    fetch.add_argument("--to", type=Path, default=None,
                       help="folder for the pools (default: the user cache, where builds look by default)")
    fetch.add_argument("--only", default=None, help="comma-separated environments (default: every fetchable one)")
    fetch.add_argument("--mirror", default=None,
                       help="base URL serving the same file names (default: Zenodo; or $FEDAGENTBENCH_DATA_MIRROR)")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a download fails")
    fetch.set_defaults(func=_fetch)

    status = sub.add_parser("status", help="which real pools a build would use, and why not where it cannot")
    status.add_argument("--data-dir", type=Path, default=None,
                        help="folder to check (default: $FEDAGENTBENCH_DATA, else the fetched pools)")
    status.set_defaults(func=_status)


def _fetch(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from environments.fetch import SOURCES, FetchError, default_data_dir, fetch_pool

    names = list(SOURCES) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        print(f"error: no fetchable pool for {', '.join(unknown)}; fetchable: {', '.join(SOURCES)} "
              "(see docs/data.md for the others)", file=sys.stderr)
        return 2
    folder = (args.to or default_data_dir()).expanduser().resolve()
    console = wide_console()
    failures = []
    with Progress(TextColumn("{task.description:<22}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console) as progress:
        bars = {n: progress.add_task(SOURCES[n].remote, total=None) for n in names}
        for name in names:
            def update(_: str, done: int, total: int | None, bar=bars[name]) -> None:
                progress.update(bar, completed=done, total=total)

            try:
                path = fetch_pool(SOURCES[name], folder, args.mirror, update, args.timeout)
            except FetchError as exc:
                failures.append(str(exc))
                progress.console.print(f"[red]{exc}[/red]")
            else:
                progress.console.print(f"{name}: {path.name} verified and installed")
    console.print(f"pools in {folder}" + ("" if args.to is None else
                                          f" (pass --data-dir {folder} or set FEDAGENTBENCH_DATA to use them)"))
    if failures:
        print(f"error: {len(failures)} of {len(names)} pools not fetched: " + " | ".join(failures), file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from environments.fetch import pool_status
    from environments.pools import resolve_data_dir

    folder = resolve_data_dir(args.data_dir)
    console = wide_console()
    if folder is None:
        console.print("no real pools: none fetched (`fedagentbench data fetch`), no --data-dir, no FEDAGENTBENCH_DATA; "
                      "builds use procedural images")
        return 1
    table = Table(title=f"real pools in {folder}")
    table.add_column("environment")
    table.add_column("status", overflow="fold")
    status = pool_status(folder)
    for env, state in status.items():
        table.add_row(env, state)
    table.add_row("histopathology", "procedural by design (no real labelled pool fits its task)")
    console.print(table)
    return 0 if all(v == "ok" for v in status.values()) else 1
