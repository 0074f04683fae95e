"""``fedagentbench envs``: build, inspect and list the simulated hospital environments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from environments.concepts import ENVIRONMENTS
from fedagentbench_cli import DefaultsHelpFormatter
from fedagentbench_cli import console as wide_console

ISSUE_ABBREV = {"duplicate": "dup", "off_topic": "offtopic", "label_error": "badlabel", "corrupt": "corrupt",
                "truncated": "trunc", "zero_byte": "empty", "non_image": "junk"}
ENV_CHOICES = (*ENVIRONMENTS, "all")


def register(subparsers: argparse._SubParsersAction) -> None:
    envs = subparsers.add_parser("envs", help="build and inspect the simulated hospital environments")
    sub = envs.add_subparsers(dest="envs_command", metavar="ACTION")
    envs.set_defaults(func=lambda args: envs.print_help() or 0)

    build = sub.add_parser("build", help="build environments (hospital workspaces + answer keys) on disk",
                           formatter_class=DefaultsHelpFormatter)
    build.add_argument("--modality", choices=ENV_CHOICES, default="all")
    build.add_argument("--scale", choices=("tiny", "small", "full", "real"), default="tiny",
                       help="images per site: tiny 6-9 per class ... real: 150-300, as the pools allow")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", type=Path, default=Path("out/envs"))
    build.add_argument("--data-dir", default=None,
                       help="folder with the real image pools and SHA256SUMS (default: $FEDAGENTBENCH_DATA)")
    build.set_defaults(func=_build)

    show = sub.add_parser("show", help="table of hospitals, datasets, formats and injected issues")
    show.add_argument("path", type=Path, help="an environment folder (out/envs/xray) or a folder of them")
    show.set_defaults(func=_show)

    cat = sub.add_parser("catalogue", help="list the dataset catalogue")
    cat.add_argument("--modality", choices=ENV_CHOICES, default="all")
    cat.add_argument("--json", action="store_true", help="print the cards as JSON")
    cat.set_defaults(func=_catalogue)


def _build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from environments.builder import build_environment
    from environments.concepts import ENVIRONMENTS
    from environments.pools import fallback_line

    names = ENVIRONMENTS if args.modality == "all" else (args.modality,)
    console = wide_console()
    summaries = []
    started = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bars = {name: progress.add_task(f"{name:<15}", total=None) for name in names}

        def report(env: str, done: int, total: int) -> None:
            progress.update(bars[env], completed=done, total=total)

        for name in names:
            t0 = time.perf_counter()
            summary = build_environment(name, args.scale, args.seed, args.out, args.data_dir, progress=report)
            summaries.append((summary, time.perf_counter() - t0))
    table = Table(title=f"environments built in {args.out} (scale {args.scale}, seed {args.seed})")
    for col in ("environment", "hospitals", "datasets", "relevant", "files", "MB", "pixels", "seconds"):
        table.add_column(col, justify="right" if col not in ("environment", "pixels") else "left", overflow="fold")
    for s, secs in summaries:
        pixels = s.pool if not s.fallback_reason else f"{s.pool} ({s.fallback_reason})"
        table.add_row(s.environment, str(s.hospitals), str(s.datasets), str(s.relevant_datasets), str(s.files),
                      f"{s.bytes / 1e6:.1f}", pixels, f"{secs:.1f}")
    console.print(table)
    console.print(f"total {time.perf_counter() - started:.1f} s, "
                  f"{sum(s.bytes for s, _ in summaries) / 1e6:.1f} MB")
    line = fallback_line({s.environment: s.fallback_reason for s, _ in summaries if s.fallback_reason})
    if line:
        print(line, file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    from rich.table import Table

    from environments.answer_key import load_environment_key

    root: Path = args.path
    if (root / "environment.json").is_file():
        env_dirs = [root]
    else:
        env_dirs = sorted(p.parent for p in root.glob("*/environment.json"))
    if not env_dirs:
        raise FileNotFoundError(f"no environment under {root} (expected environment.json)")
    console = wide_console()
    for env_dir in env_dirs:
        manifest = json.loads((env_dir / "environment.json").read_text("utf-8"))
        key = load_environment_key(env_dir)
        table = Table(title=f"{key.environment}: seed {key.seed}, scale {key.scale}, pixels {manifest['pool']['kind']}")
        for col in ("hospital", "dataset", "relevant to", "layout", "formats", "classes (site names)", "images", "injected issues"):
            table.add_column(col, overflow="fold")
        for ds in key.datasets:
            images = sum(1 for f in ds.files if f.kind == "image")
            issues = " ".join(f"{ISSUE_ABBREV.get(k, k)}:{v}" for k, v in sorted(ds.injected.items()))
            table.add_row(ds.hospital, ds.name, ", ".join(ds.relevant_to) or "-", ds.layout, ", ".join(ds.formats),
                          ", ".join(ds.local_classes) or "-", str(images), issues)
        console.print(table)
        missing = [k for k, v in key.heterogeneity.items() if not v]
        console.print(f"heterogeneity kinds present: {sum(1 for v in key.heterogeneity.values() if v)}"
                      f"/{len(key.heterogeneity)}" + (f" (absent: {', '.join(missing)})" if missing else ""))
    return 0


def _catalogue(args: argparse.Namespace) -> int:
    from rich.table import Table

    from environments.catalogue import load_catalogue

    cards = load_catalogue().cards
    if args.modality != "all":
        cards = [c for c in cards if c.environment == args.modality]
    if args.json:
        print(json.dumps([c.model_dump() for c in cards], indent=1, ensure_ascii=False))
        return 0
    table = Table(title=f"dataset catalogue: {len(cards)} cards")
    for col in ("environment", "name", "modality", "task", "classes", "layout", "format", "images"):
        table.add_column(col, overflow="fold")
    for c in cards:
        classes = ", ".join(c.classes) if len(c.classes) <= 6 else ", ".join(c.classes[:6]) + f" (+{len(c.classes) - 6})"
        modality = c.modality if c.species == "human" else f"{c.modality} ({c.species})"
        table.add_row(c.environment, c.name, modality, ", ".join(c.task_types), classes or "-", c.layout,
                      c.file_format, str(c.image_count))
    wide_console().print(table)
    return 0

