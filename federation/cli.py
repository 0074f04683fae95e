"""``fedagentbench federate``: run the agents on your own federation (``init`` drafts its YAML)."""

from __future__ import annotations

import argparse
import contextlib
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
    run.add_argument("--deployment", default=None, metavar="local|HOST:PORT",
                     help="run the client agents at the sites' own services over Flower: 'local' starts a secured "
                          "SuperLink and one site service per site on this machine; HOST:PORT is a SuperLink whose "
                          "sites already serve (`fedagentbench site serve`); this folder then holds nothing of theirs")
    run.add_argument("--ca", type=Path, default=None,
                     help="with --deployment HOST:PORT: the federation's CA certificate (from `deploy certs`)")
    add_options(run, "federate")
    run.set_defaults(func=_run)

    site = subparsers.add_parser("site", help="a hospital's site service: its client agents and training, run here")
    site_sub = site.add_subparsers(dest="site_command", metavar="ACTION")
    site.set_defaults(func=lambda args: site.print_help() or 0)
    serve = site_sub.add_parser("serve", formatter_class=DefaultsHelpFormatter,
                                help="serve this site's folder to a coordinator's SuperLink (a Flower SuperNode)")
    serve.add_argument("--name", required=True, help="the site's name, as the federation's YAML and keys name it")
    serve.add_argument("--data", type=Path, default=None,
                       help="the site's folder (one dataset, or one per sub-folder); read, never written")
    serve.add_argument("--card", type=Path, default=None, help="the site's data cards (JSON); drafted when absent")
    serve.add_argument("--work", type=Path, default=None,
                       help="the site's own work folder (default: <data>.fedagentbench beside the folder)")
    serve.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink")
    serve.add_argument("--certs", type=Path, default=None,
                       help="a `deploy certs` folder: its ca.crt and supernodes/<name> key are used")
    serve.add_argument("--ca", type=Path, default=None, help="the federation's CA certificate")
    serve.add_argument("--key", type=Path, default=None, help="this site's SuperNode private key")
    serve.add_argument("--insecure", action="store_true", help="no TLS and no authentication (a trial only)")
    serve.add_argument("--model", default=None,
                       help="the model this site's agents use (default: the coordinator's), e.g. a local llama.cpp one")
    serve.add_argument("--log", type=Path, default=None, help="write the service's output to this file")
    serve.add_argument("--environment", type=Path, default=None,
                       help="serve hospital --name of a built benchmark environment instead of --data")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from federation.site_service import serve
    from federation.spec import FederationError

    ca, key = args.ca, args.key
    if args.certs is not None:
        ca, key = ca or args.certs / "ca.crt", key or args.certs / "supernodes" / args.name
    if not args.insecure and (ca is None or key is None):
        print("error: give --certs (or --ca and --key) for TLS and SuperNode authentication, or --insecure for a "
              "trial on one machine", file=sys.stderr)
        return 2
    for path in [p for p in (ca, key) if p is not None and not args.insecure]:
        if not path.is_file():
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    try:
        serve(args.name, args.data, args.superlink, work=args.work, card=args.card,
              ca=None if args.insecure else ca, key=None if args.insecure else key, model=args.model,
              environment=args.environment, log=args.log)
    except FederationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: serve() becomes the SuperNode


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
        if args.deployment and args.approve:
            raise FederationError("--approve is not yet available with --deployment (the sites' agents would "
                                  "need a person at each site); run without it")
        with contextlib.ExitStack() as stack:
            transport = None
            status = None if args.approve else stack.enter_context(console.status("starting"))
            if args.deployment:
                from federation.deployment import connect

                transport = stack.enter_context(connect(spec, Path(work), args.deployment, ca=args.ca,
                                                        progress=status.update if status else console.print))
                for name in transport.missing:
                    console.print(f"[yellow]site {name} did not answer; the run goes on without it[/]")
            if args.approve:  # no spinner: the terminal is the person's, for questions and answers
                from federation.approval import terminal_asker

                console.print("running; questions come as the agents reach them")
                report = run_federation(spec, work, model=settings.model, request=args.request,
                                        ask=terminal_asker(console), agents=agents)
            else:
                report = run_federation(spec, work, model=settings.model, request=args.request,
                                        progress=lambda step: status.update(f"running {step}"), agents=agents,
                                        transport=transport)
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
        removed = len(site.files_removed) or sum(site.removed_by_reason.values())
        table.add_row(site.name, ", ".join(site.datasets_chosen) or "-", str(removed), mapping or "-",
                      ", ".join(f"{k} {v}" for k, v in site.class_counts.items()) or "-",
                      "; ".join(site.problems[:2]) + ("" if site.sources_unchanged else " SOURCES CHANGED"))
    console.print(table)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in report.training_metrics.items())
    console.print(f"training: {report.algorithm or 'no algorithm'}, {report.training_status}"
                  + (f" ({metrics})" if metrics else "") + (f"; model: {report.model_files[0]}" if report.model_files else ""))
    return 0 if report.training_status == "completed" else 1
