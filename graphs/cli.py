"""``fedagentbench run``: one task through the agent workflow, checkpointed and resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedagentbench_cli import DefaultsHelpFormatter
from fedagentbench_cli import console as wide_console
from fedagentbench_settings import add_options, from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run one task through the agent workflow (resumable)",
                                formatter_class=DefaultsHelpFormatter)
    run.add_argument("--env", required=True, type=Path, help="a built environment, e.g. out/envs/xray")
    run.add_argument("--task", required=True, help="task id (see the environment's server/tasks/)")
    run.add_argument("--guidance", choices=("fine", "goal"), default="goal",
                     help="fine: numbered steps naming the tools; goal: the goal only")
    run.add_argument("--mode", choices=("e2e", "phase"), default="e2e",
                     help="e2e: each phase uses the previous phases' output; phase: each starts from the answer key")
    run.add_argument("--thread-id", default=None, help="resume this thread (default: derived from the settings)")
    run.add_argument("--run-id", default="run1", help="names the run's private work area (<env>/runs/<task>/...)")
    run.add_argument("--db", type=Path, default=Path("runs/checkpoints.sqlite"),
                     help="SQLite checkpoint file; transcripts go to transcripts/ beside it")
    add_options(run, "run")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = from_args(args, "run")  # first: a bad variable must not surface as a failed import

    from eval.cli import check_model
    from eval.runs import run_task
    from graphs.checkpoint import DamagedDatabase, afresh_command, check_database
    from graphs.run import default_thread_id, transcript_path
    from graphs.state import RunConfig

    settings.export()
    try:
        check_database(args.db)
    except DamagedDatabase as exc:
        raise DamagedDatabase(f"{exc}: to start the checkpoints afresh, `{afresh_command(args.db)}` and run the same "
                              "command again (the run starts over from its first agent)") from None
    check_model(settings.model, settings.timeout)  # the same checks as bench: spec, key, host, model
    if not (args.env / "environment.json").is_file():
        raise FileNotFoundError(f"{args.env} is not a built environment; build one with `fedagentbench envs build`")
    if not (args.env / "server" / "tasks" / f"{args.task}.json").is_file():
        known = sorted(p.stem for p in (args.env / "server" / "tasks").glob("*.json"))
        raise ValueError(f"unknown task {args.task!r} in {args.env}; tasks: {', '.join(known)}")
    cache = settings.cache_folder(args.db.parent)
    config = RunConfig(env_dir=str(args.env.resolve()), task_id=args.task, guidance=args.guidance,
                       model=settings.model, mode=args.mode, run_id=args.run_id, rounds=settings.rounds,
                       budget=settings.budget, temperature=settings.temperature, seed=settings.sampling_seed,
                       timeout_s=settings.timeout, retries=settings.retries, submit_tool=settings.submit_tool,
                       cache_dir=str(cache) if cache else None)
    thread = args.thread_id or default_thread_id(config)
    console = wide_console()
    transcript = transcript_path(args.db, thread)
    console.print(f"thread {thread}: checkpoints in {args.db}, transcript in {transcript} (and .html)",
                  highlight=False)
    with console.status(f"running {args.task} with {config.model} (temperature {config.temperature:g}, "
                        f"sampling seed {config.seed})") as status:

        def progress(node: str) -> None:
            status.update(f"{args.task} with {config.model}: {_NODE_NAMES.get(node.split(' at ')[0], node)}"
                          + (f" at {node.split(' at ')[1]}" if " at " in node else ""))

        state = run_task(config, args.db, thread, progress=progress)
    print_state(console, state, thread)
    console.print(f"transcript: {transcript.with_suffix('.html')}  (or `fedagentbench show {thread}`)",
                  highlight=False)
    return 0


#: node names as the progress line shows them
_NODE_NAMES = {"S1": "S1 task analyst (selection)", "C1": "C1 dataset selector (selection)",
               "S2": "S2 federation coordinator (selection)", "C2": "C2 data cleaner (preprocessing)",
               "C3": "C3 label harmoniser (harmonisation)", "S3": "S3 algorithm selector (training)",
               "S4": "S4 training coordinator (training)", "evaluate": "scoring"}


def print_state(console, state: dict, thread: str) -> None:
    """A run's outcome as tables: clients, agents, scores."""
    from rich.table import Table

    clients = Table(title=f"thread {thread}: clients", title_justify="left")
    for col in ("client", "status", "selected", "approved", "cleaned", "harmonised"):
        clients.add_column(col, overflow="fold")
    for name, rec in sorted(state.get("clients", {}).items()):
        rec = rec if isinstance(rec, dict) else rec.model_dump()
        clients.add_row(name, rec["status"], ", ".join(rec["selected_datasets"]) or "-", str(rec["approved"]),
                        rec["cleaned_path"] or "-", rec["harmonised_path"] or "-")
    console.print(clients)
    agents = Table(title="agents", title_justify="left")
    for col in ("agent", "client", "ok", "steps", "tool calls", "tokens in/out/thinking", "seconds", "answer", "error"):
        agents.add_column(col, overflow="fold")
    for a in state.get("agents", []):
        agents.add_row(a["role"], a["client"] or "-", "yes" if a["ok"] else "NO", str(a["steps"]), str(a["tool_calls"]),
                       f"{a['input_tokens']}/{a['output_tokens']}/{a.get('reasoning_tokens', 0)}", f"{a['seconds']:.1f}",
                       a.get("answered_by") or "-", (a["error"] or "")[:120])
    console.print(agents)
    training = state.get("training")
    training = training if isinstance(training, dict) else (training.model_dump() if training else {})
    console.print(f"algorithm: {state.get('algorithm')}   training: {training.get('status')} "
                  f"{training.get('final_metrics') or ''}")
    scores = state.get("scores") or {}
    if "subtasks" in scores:
        table = Table(title=f"scores (grader {scores.get('grader_version')})", title_justify="left")
        for col in ("sub-task", "pass", "detail"):
            table.add_column(col, overflow="fold")
        for name, sub in scores["subtasks"].items():
            table.add_row(name, "PASS" if sub["passed"] else "fail", sub.get("detail", "")[:90])
        console.print(table)
        console.print(f"score: {scores['passed']}/{len(scores['subtasks'])}   privacy violations: "
                      f"{scores.get('privacy_violations', 0)}")
        console.print(outcome_line(scores.get("outcome") or {}))


def outcome_line(outcome: dict) -> str:
    """One line on what the trained model learned (held-out test set; ``eval.outcome``)."""
    if outcome.get("balanced_accuracy") is None:
        return f"outcome: not measured ({outcome.get('note') or 'no trained model'})"
    auroc = outcome.get("auroc")
    text = (f"outcome on {outcome['test_images']} held-out test images: balanced accuracy "
            f"{outcome['balanced_accuracy']:.3f} (chance {outcome['chance']:.3f}), AUROC "
            f"{'-' if auroc is None else f'{auroc:.3f}'}")
    if outcome.get("ratio") is not None:
        text += f", {outcome['ratio']:.2f}x the oracle's"
    if outcome.get("missing_classes"):
        text += f"; the model lacks {', '.join(outcome['missing_classes'])}"
    return text + (f" ({outcome['note']})" if outcome.get("note") else "")
