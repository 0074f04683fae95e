"""``fedagentbench bench`` and ``fedagentbench report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from environments.concepts import ENVIRONMENTS
from fedagentbench_cli import DefaultsHelpFormatter
from fedagentbench_cli import console as wide_console
from fedagentbench_settings import add_options, from_args


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("bench", help="run the benchmark matrix for one model (resumable)",
                                  formatter_class=DefaultsHelpFormatter)
    bench.add_argument("--env", type=_csv, default=list(ENVIRONMENTS), help="comma-separated environments")
    bench.add_argument("--task", type=_csv, default=None, help="comma-separated task ids (default: all)")
    bench.add_argument("--guidance", type=_csv, default=["fine", "goal"], help="fine, goal or fine,goal")
    bench.add_argument("--runs", type=int, default=1,
                       help="repeats of every task (each with its own sampling seed); SE and pass^k need >= 2")
    bench.add_argument("--scale", choices=("tiny", "small", "full", "real"), default="tiny",
                       help="environment size (real: hundreds of images per site, a learnable held-out outcome)")
    bench.add_argument("--seed", type=int, default=0,
                       help="environment seed (a new seed: unseen environments); the sampling seeds follow it unless "
                            "--sampling-seed is given")
    bench.add_argument("--mode", type=_csv, default=["e2e"], help="e2e, phase or e2e,phase")
    bench.add_argument("--concurrency", type=int, default=1, help="runs at a time")
    bench.add_argument("--run-timeout", type=float, default=None,
                       help="one run's wall-clock limit in seconds: agents still working then fail as run_timeout "
                            "and the sweep goes on")
    bench.add_argument("--cost-limit", type=float, default=None,
                       help="stop starting runs once this bench has spent this many USD (pricing: "
                            "agents/model_prices.json, $FEDAGENTBENCH_MODEL_PRICES); the same command again resumes")
    bench.add_argument("--runtime", choices=("simulation", "deployment"), default="simulation",
                       help="deployment: each environment's hospitals run as site services (separate processes over "
                            "Flower, TLS and authenticated SuperNodes); their client agents and training run there")
    bench.add_argument("--out", type=Path, default=None, help="results folder (default: runs/bench-<model>)")
    add_options(bench, "bench")
    bench.set_defaults(func=_bench)

    report = subparsers.add_parser("report", help="tables and plots from one or more results folders")
    report.add_argument("dirs", nargs="+", type=Path, help="results folders (e.g. runs/bench-heuristic)")
    report.set_defaults(func=_report)

    from eval.show_cli import register_show

    register_show(subparsers)


def _bench(args: argparse.Namespace) -> int:
    settings = from_args(args, "bench")  # first: a bad variable must not surface as a failed import

    import asyncio
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from environments.pools import fallback_line, manifest_fallbacks
    from eval.bench import BenchSpec, CostLimitReached, environments_dir, run_matrix

    if args.runs < 1 or args.concurrency < 1:
        raise ValueError("--runs and --concurrency must be at least 1")
    if (args.run_timeout is not None and args.run_timeout <= 0) or (args.cost_limit is not None and args.cost_limit < 0):
        raise ValueError("--run-timeout must be > 0 and --cost-limit >= 0")
    unknown = [e for e in args.env if e not in ENVIRONMENTS]
    if unknown:
        raise ValueError(f"unknown environments {unknown}; choose from {', '.join(ENVIRONMENTS)}")
    bad_modes = [m for m in args.mode if m not in ("e2e", "phase")]
    if bad_modes or not set(args.guidance) <= {"fine", "goal"}:
        raise ValueError("--mode takes e2e and/or phase; --guidance takes fine and/or goal")
    settings.export()
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in settings.model)
    spec = BenchSpec(model=settings.model, environments=args.env, tasks=args.task, guidance=args.guidance,
                     modes=args.mode, runs=args.runs, scale=args.scale, seed=args.seed,
                     sampling_seed=settings.sampling_seed, temperature=settings.temperature,
                     concurrency=args.concurrency, rounds=settings.rounds, budget=settings.budget,
                     submit_tool=settings.submit_tool, timeout_s=settings.timeout, retries=settings.retries,
                     cache=settings.cache, cache_dir=settings.cache_dir,
                     out=args.out or Path("runs") / f"bench-{safe_model}",
                     data_dir=str(settings.data_dir) if settings.data_dir else None,
                     run_timeout_s=args.run_timeout, cost_limit=args.cost_limit, runtime=args.runtime)
    check_checkpoints(spec.out)  # a damaged database would fail every run, on every rerun
    check_model(spec.model, spec.timeout_s)  # before anything is built
    console = wide_console()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task(f"bench {spec.model}", total=None)

        def note(text: str) -> None:
            progress.console.print(f"[dim]{text}[/dim]")

        def done(result, finished: int, total: int) -> None:
            k = result.key
            passed = sum(result.subtasks.values())
            tag = f" FAILED: {result.failed}" if result.failed else ""
            progress.console.print(f"{k.environment:<15} {k.task:<32} {k.guidance:<5} {k.mode:<5} run {k.run}: "
                                   f"{passed}/7 in {result.wall_seconds:.0f} s (seed {result.sampling_seed}){tag}")
            progress.update(bar, completed=finished, total=total)

        try:
            results = asyncio.run(run_matrix(spec, on_done=done, on_note=note))
        except CostLimitReached as exc:
            stopped, results = str(exc), None
        else:
            stopped = None
    _print_tables(console, spec.out)
    if stopped:  # a clean stop: the finished runs are in the tables; the next bench resumes
        print(stopped, file=sys.stderr)
        return 3
    line = fallback_line(manifest_fallbacks([environments_dir(spec) / e for e in spec.environments]))
    if line:
        print(line, file=sys.stderr)
    # runs that ended on infrastructure errors are not scores: the exit code says the table is incomplete
    return 0 if results and not any(r.failed for r in results) else 1


def check_checkpoints(out: Path) -> None:
    """Refuse, in one line, a bench whose checkpoint database SQLite cannot read: the file, what
    ``results.jsonl`` still holds, and how to start the checkpoints afresh (finished runs are kept:
    the bench skips every key ``results.jsonl`` records as finished and runs only the others)."""
    from eval.scoring import GRADER_VERSION
    from eval.store import RESULTS, ResultStore
    from graphs.checkpoint import DamagedDatabase, afresh_command, check_database

    db = out / "checkpoints.sqlite"
    try:
        check_database(db)
    except DamagedDatabase as exc:
        results = out / RESULTS
        if results.is_file():
            store = ResultStore(out)
            lines = sum(store.version_counts().values())
            done = len(store.done_keys(GRADER_VERSION))
            held = (f"{results} still holds {lines} run line(s) ({done} finished under grader {GRADER_VERSION}: "
                    "kept, not run again)")
        else:
            held = f"there is no {results} (no finished run to keep)"
        raise DamagedDatabase(f"{exc}; {held}; to start the checkpoints afresh, `{afresh_command(db)}` and run the "
                              "same command again: it runs only the unfinished runs") from None


def check_model(spec: str, timeout_s: float, max_requests: int = 0) -> None:
    """Resolve the spec and check key, host, model and context window (one clear error, exit 2,
    before any work): a window that cannot hold the largest role's system prompt, tool schemas and
    task beside a minimal reply is refused, rather than scored on what the server cut."""
    import os
    import sys

    from agents.context import minimum_window
    from agents.models import ModelSettings, resolve_spec, with_window
    from agents.pricing import missing_price_message, price_for
    from agents.providers import ProviderError, preflight

    if max_requests:
        os.environ["FEDAGENTBENCH_MAX_REQUESTS"] = str(max_requests)
    info = resolve_spec(spec, ModelSettings(timeout_s=timeout_s))
    preflight(info, timeout_s=min(timeout_s, 15.0))
    if info.provider == "baseline":
        return
    window = with_window(info, timeout_s=min(timeout_s, 15.0)).window
    if window.tokens is not None:
        needed, role = minimum_window()
        if window.tokens < needed:
            hint = "raise num_ctx in the spec or serve a longer-context model" if info.provider == "ollama" \
                else "serve the model with a longer context (vLLM --max-model-len, llama.cpp -c)"
            raise ProviderError(f"the context window of {info.spec!r} is {window.tokens} tokens ({window.source}); "
                                f"the benchmark needs at least {needed} ({role}: system prompt, tool schemas and task "
                                f"plus a reply): {hint}")
    if price_for(info) is None:
        print(f"warning: {missing_price_message(info)}", file=sys.stderr)


def _report(args: argparse.Namespace) -> int:
    import sys

    console = wide_console()
    code = 0
    for folder in args.dirs:
        try:
            _print_tables(console, folder)
        except FileNotFoundError as exc:  # e.g. only runs of an older grader: one line with the fix
            print(f"error: {exc}", file=sys.stderr)
            code = 2
    return code


def _print_tables(console, folder: Path) -> None:
    """The per-environment, overall and failure-class tables; at under 150 columns the per-sub-task
    columns move to a table of their own, so that no cell is cut."""
    import sys

    from rich.table import Table

    from eval.report import (
        failure_table,
        format_ci,
        format_cost,
        format_outcome,
        format_se,
        leaderboard,
        load_current,
        noise_notes,
        scored,
        summarise,
        write_reports,
    )
    from eval.scoring import GRADER_VERSION, SUBTASKS

    everything, warning = load_current(folder)
    if warning:
        print(warning, file=sys.stderr)
    results = scored(everything)
    narrow = console.width < 150

    def table(title: str, columns: list[str], left: tuple[str, ...] = ("model", "environment", "guidance", "mode",
                                                                        "class")) -> Table:
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, justify="left" if col in left else "right", overflow="fold")
        return t

    rows = summarise(results)
    per_env = table(f"{folder}: per environment (grader {GRADER_VERSION})",
                    ["model", "environment", "guidance", "mode", "tasks", "runs", *([] if narrow else SUBTASKS),
                     "overall", "SE (runs)", "pass^k", "tokens", "seconds"])
    for r in rows:
        per_env.add_row(r["model"], r["environment"], r["guidance"], r["mode"], str(r["instances"]), str(r["runs"]),
                        *([] if narrow else [f"{r[s]}/{r['runs']}" for s in SUBTASKS]), f"{r['overall']:.2f}",
                        format_se(r), f"{r['pass^k']:.2f} (k={r['k']})", str(r["tokens"]), f"{r['wall_seconds']:.0f}")
    console.print(per_env)
    if narrow:
        subtasks = table("passes per sub-task", ["environment", "guidance", "mode", *SUBTASKS])
        for r in rows:
            subtasks.add_row(r["environment"], r["guidance"], r["mode"], *[f"{r[s]}/{r['runs']}" for s in SUBTASKS])
        console.print(subtasks)
    board = leaderboard(results)
    overall = table("overall: mean over task instances; SE from repeated runs of the same task; 95 % CI by "
                    "bootstrap over instances (paper: their published X-ray score, for comparison)",
                    ["model", "guidance", "mode", "temp.", "instances", "runs/inst.", "overall", "SE (run-to-run)",
                     "95 % CI", "pass^k (all 7)", "outcome ÷ oracle", "paper (X-ray)"])
    for b in board:
        paper = f"{b['paper_xray_overall']:.2f}" if b["paper_xray_overall"] is not None else "-"
        overall.add_row(b["model"], b["guidance"], b["mode"], b["temperature"], str(b["instances"]),
                        b["runs_per_instance"], f"{b['overall']:.2f}", format_se(b), format_ci(b),
                        f"{b['pass^k']:.2f} (k={b['k']})", format_outcome(b), paper)
    console.print(overall)
    for note in noise_notes(board):
        console.print(f"noise: {note}", highlight=False)
    costs = table("time, cost and context window", ["model", "guidance", "mode", "cost USD", "s/run", "window",
                                                    "peak prompt", "overflows", "text calls", "timed out"])
    for b in board:
        costs.add_row(b["model"], b["guidance"], b["mode"], format_cost(b), f"{b['seconds_per_run']:.0f}",
                      b["context_window"], str(b["peak_prompt_tokens"]), str(b["context_overflows"]),
                      str(b["text_tool_calls"]), str(b["timed_out_runs"]))
    console.print(costs)
    failures = failure_table(everything)
    if failures:
        why = table("why sub-tasks failed (failure classes; infrastructure failures: whole runs, not scored)",
                    ["model", "class", *SUBTASKS, "total", "runs"])
        for f in failures:
            why.add_row(f["model"], f["class"], *[str(f[s] or "") for s in SUBTASKS], str(f["total"] or ""),
                        str(f["runs"] or ""))
        console.print(why)
    failed = [r for r in everything if r.failed]
    if failed:
        console.print(f"[yellow]{len(failed)} run(s) ended on infrastructure errors and are not scored; the next "
                      f"`fedagentbench bench` with the same options runs them again. First: {failed[0].failed}[/yellow]",
                      highlight=False)
    paths = write_reports(folder)
    console.print("reports: " + ", ".join(str(p) for p in paths.values()), highlight=False)
