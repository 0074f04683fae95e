"""``fedagentbench federate``: run the agents on your own federation (``init`` drafts its YAML)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from fedagentbench_cli import DefaultsHelpFormatter
from fedagentbench_cli import console as wide_console
from fedagentbench_settings import add_options, from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    fed = subparsers.add_parser("federate", help="run the agents on your own hospitals' folders (no answer key)")
    sub = fed.add_subparsers(dest="federate_command", metavar="ACTION")
    fed.set_defaults(func=lambda args: fed.print_help() or 0)

    init = sub.add_parser("init", help="draft federation.yaml and a data card per folder, for you to review",
                          formatter_class=DefaultsHelpFormatter)
    init.add_argument("folders", nargs="+", type=Path, help="one folder per site (hospital)")
    init.add_argument("--out", type=Path, default=Path("federation.yaml"), help="the YAML to write")
    init.add_argument("--request", default=None, help="what to train, in plain words")
    init.add_argument("--force", action="store_true", help="replace an existing YAML and its cards")
    init.set_defaults(func=_init)

    run = sub.add_parser("run", help="select, clean, harmonise and train on the federation; writes a report",
                         formatter_class=DefaultsHelpFormatter)
    run.add_argument("federation", type=Path, help="federation.yaml (see `federate init`)")
    run.add_argument("--request", default=None, help="replace the YAML's request")
    run.add_argument("--work", type=Path, default=None,
                     help="work directory for copies, checkpoints, outputs (default: <yaml name>.work beside it)")
    run.add_argument("--approve", action="store_true",
                     help="pause for your decision (approve, reject or edit) before C2 removes files and before S4 "
                          "starts training; a pause survives the process ending (run the same command again)")
    add_options(run, "federate")
    run.set_defaults(func=_run)


def _init(args: argparse.Namespace) -> int:
    from federation.sites import draft_site

    out: Path = args.out
    cards_dir = out.parent / "cards"
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    # site names as the YAML accepts them: letters, digits, "_", "-", "." (a folder "St Mary's" -> St_Mary_s)
    names = [re.sub(r"[^A-Za-z0-9_.-]+", "_", f.resolve().name).strip("_.-") or "site" for f in args.folders]
    if len(set(names)) != len(names):
        print(f"error: two sites share a folder name ({names}); rename one", file=sys.stderr)
        return 2
    cards_dir.mkdir(parents=True, exist_ok=True)
    sites, classes, modalities, parts = [], Counter(), Counter(), Counter()
    for folder, name in zip(args.folders, names):
        cards, problems, _ = draft_site(folder.resolve())  # patient identifiers are not written anywhere here
        card_file = cards_dir / f"{name}.json"
        card_file.write_text(json.dumps(cards, indent=1, ensure_ascii=False) + "\n", "utf-8")
        for card in cards:
            classes.update(card["classes"])
            modalities[card["modality"]] += 1
            parts[card["body_part"]] += 1
        sites.append((name, folder.resolve(), card_file, problems, cards))
    from federation.sites import BODY_WORDS, MODALITY_WORDS, guess

    words = (args.request or "").lower()  # the request names the modality and organ best, where given
    modality = guess(words, MODALITY_WORDS) if guess(words, MODALITY_WORDS) != "unknown" else \
        next((m for m, _ in modalities.most_common() if m != "unknown"), "unknown")
    body = guess(words, BODY_WORDS) if guess(words, BODY_WORDS) != "unknown" else \
        next((b for b, _ in parts.most_common() if b != "unknown"), "unspecified")
    # among datasets of that modality, a class named (in any case) at two or more sites is likely a
    # target; else every class of those datasets
    sites_naming: Counter[str] = Counter()
    matching: Counter[str] = Counter()
    for _, _, _, _, cards in sites:
        names = {c.lower() for card in cards if card["modality"] in (modality, "unknown") for c in card["classes"]}
        sites_naming.update(names)
        matching.update(names)
    common = [c for c, n in sites_naming.most_common() if n > 1] or [c for c, _ in matching.most_common()] \
        or [c.lower() for c, _ in classes.most_common()]
    request = args.request or "Describe what to train here, e.g. 'Train a pneumonia classifier on chest X-rays.'"
    lines = [
        "# Drafted by `fedagentbench federate init`: review every line, then `fedagentbench federate run` this file.",
        f"request: {json.dumps(request)}",
        "# the classes the model should predict (the sites' own labels are mapped onto them by the agents)",
        f"classes: {json.dumps(sorted(common[:10]))}",
        f"modality: {modality}",
        f"body_part: {json.dumps(body)}",
        "image_size: 64",
        "colour: false",
        "requirement: baseline   # or label_skew, feature_shift, personalisation, stragglers, unseen_site, ...",
        "model: heuristic        # any spec of `fedagentbench models`",
        "rounds: 3",
        "sites:",
    ]
    for name, folder, card_file, problems, _cards in sites:
        lines += [f"  - name: {name}", f"    path: {json.dumps(str(folder))}",
                  f"    data_card: {json.dumps(str(card_file.relative_to(out.parent)))}"]
        for problem in problems[:5]:
            lines.append(f"    # note: {problem}")
    out.write_text("\n".join(lines) + "\n", "utf-8")
    table_console = wide_console()
    from rich.table import Table

    table = Table(title=f"drafted {out} and {len(sites)} data card(s) in {cards_dir}")
    for col in ("site", "datasets", "images", "classes", "modality", "notes"):
        table.add_column(col)
    for name, _, _, problems, cards in sites:
        table.add_row(name, ", ".join(c["dataset name"] for c in cards) or "-",
                      str(sum(c["image_count"] for c in cards)),
                      "; ".join(", ".join(c["classes"]) for c in cards) or "-",
                      ", ".join(sorted({c["modality"] for c in cards})) or "-", "; ".join(problems[:3]))
    table_console.print(table)
    return 0


def _run(args: argparse.Namespace) -> int:
    settings = from_args(args, "federate")  # first: a bad variable must not surface as a failed import

    from federation.run import run_federation
    from federation.spec import FederationError, load_spec
    from graphs.checkpoint import DamagedDatabase, afresh_command, check_database

    try:
        spec = load_spec(args.federation)
        overrides = {"rounds": settings.rounds, "seed": settings.sampling_seed}
        spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        work = args.work or args.federation.with_name(args.federation.stem + ".work")
        db = Path(work) / "checkpoints.sqlite"
        try:
            check_database(db)
        except DamagedDatabase as exc:
            raise DamagedDatabase(f"{exc}: to start the checkpoints afresh, `{afresh_command(db)}` and run the same "
                                  "command again (the run starts over from its first agent; your folders are never "
                                  "changed)") from None
        settings.export()
        console = wide_console()
        cache = settings.cache_folder(Path(work))
        agents = {"temperature": settings.temperature, "budget": settings.budget, "timeout_s": settings.timeout,
                  "retries": settings.retries, "submit_tool": settings.submit_tool,
                  "cache_dir": str(cache) if cache else None}
        if args.approve:  # no spinner: the terminal is the person's, for questions and answers
            from federation.approval import terminal_asker

            console.print("running; questions come as the agents reach them")
            report = run_federation(spec, work, model=settings.model, request=args.request,
                                    ask=terminal_asker(console), agents=agents)
        else:
            with console.status("starting") as status:
                report = run_federation(spec, work, model=settings.model, request=args.request,
                                        progress=lambda step: status.update(f"running {step}"), agents=agents)
    except FederationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except EOFError:  # nobody answered: the question stays open in the checkpoints
        console.print(f"\npaused at a question; run the same command again to answer it ({work})")
        return 3
    from rich.table import Table

    table = Table(title=f"federation run ({report.model}); report: {Path(report.work_dir) / 'report.md'}")
    for col in ("site", "datasets chosen", "files removed", "label mapping", "images per class", "problems"):
        table.add_column(col)
    for site in report.sites:
        mapping = "; ".join(", ".join(f"{k}→{v or 'drop'}" for k, v in m.items()) for m in site.label_mappings.values())
        table.add_row(site.name, ", ".join(site.datasets_chosen) or "-", str(len(site.files_removed)), mapping or "-",
                      ", ".join(f"{k} {v}" for k, v in site.class_counts.items()) or "-",
                      "; ".join(site.problems[:2]) + ("" if site.sources_unchanged else " SOURCES CHANGED"))
    console.print(table)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in report.training_metrics.items())
    console.print(f"training: {report.algorithm or 'no algorithm'}, {report.training_status}"
                  + (f" ({metrics})" if metrics else "") + (f"; model: {report.model_files[0]}" if report.model_files else ""))
    return 0 if report.training_status == "completed" else 1
