"""``fedagentbench run``: one task through the agent workflow, checkpointed and resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedagentbench_cli import console as wide_console


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run one task through the agent workflow (resumable)")
    run.add_argument("--env", required=True, type=Path, help="a built environment, e.g. out/envs/xray")
    run.add_argument("--task", required=True, help="task id (see the environment's server/tasks/)")
    run.add_argument("--guidance", choices=("fine", "goal"), default="goal")
    run.add_argument("--model", default="heuristic", help="model spec or alias (see README), e.g. oracle, qwq-32b")
    run.add_argument("--mode", choices=("e2e", "phase"), default="e2e")
    run.add_argument("--thread-id", default=None, help="resume this thread (default: derived from the settings)")
    run.add_argument("--run-id", default="run1", help="names the run's private work area (<env>/runs/<task>/...)")
    run.add_argument("--db", type=Path, default=Path("runs/checkpoints.sqlite"), help="SQLite checkpoint file")
    run.add_argument("--rounds", type=int, default=1, help="federated training rounds")
    run.add_argument("--budget", type=int, default=16, help="model calls allowed per agent")
    run.add_argument("--temperature", type=float, default=0.0, help="the chat model's sampling temperature")
    run.add_argument("--seed", type=int, default=0, help="the chat model's sampling seed")
    run.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from graphs.run import default_thread_id, run_task
    from graphs.state import RunConfig

    if args.temperature < 0:
        raise ValueError("--temperature must be >= 0")
    if not (args.env / "environment.json").is_file():
        raise FileNotFoundError(f"{args.env} is not a built environment; build one with `fedagentbench envs build`")
    if not (args.env / "server" / "tasks" / f"{args.task}.json").is_file():
        known = sorted(p.stem for p in (args.env / "server" / "tasks").glob("*.json"))
        raise ValueError(f"unknown task {args.task!r} in {args.env}; tasks: {', '.join(known)}")
    config = RunConfig(env_dir=str(args.env.resolve()), task_id=args.task, guidance=args.guidance, model=args.model,
                       mode=args.mode, run_id=args.run_id, rounds=args.rounds, budget=args.budget,
                       temperature=args.temperature, seed=args.seed)
    thread = args.thread_id or default_thread_id(config)
    console = wide_console()
    with console.status(f"running {args.task} with {args.model} (thread {thread}, temperature "
                        f"{args.temperature:g}, seed {args.seed})"):
        state = run_task(config, args.db, thread)
    print_state(console, state, thread)
    return 0


def print_state(console, state: dict, thread: str) -> None:
    """A run's outcome as tables: clients, agents, scores."""
    from rich.table import Table

    clients = Table(title=f"thread {thread}: clients")
    for col in ("client", "status", "selected", "approved", "cleaned", "harmonised"):
        clients.add_column(col)
    for name, rec in sorted(state.get("clients", {}).items()):
        rec = rec if isinstance(rec, dict) else rec.model_dump()
        clients.add_row(name, rec["status"], ", ".join(rec["selected_datasets"]) or "-", str(rec["approved"]),
                        rec["cleaned_path"] or "-", rec["harmonised_path"] or "-")
    console.print(clients)
    agents = Table(title="agents")
    for col in ("agent", "client", "ok", "steps", "tool calls", "tokens in/out", "seconds", "error"):
        agents.add_column(col)
    for a in state.get("agents", []):
        agents.add_row(a["role"], a["client"] or "-", "yes" if a["ok"] else "NO", str(a["steps"]), str(a["tool_calls"]),
                       f"{a['input_tokens']}/{a['output_tokens']}", f"{a['seconds']:.1f}", (a["error"] or "")[:60])
    console.print(agents)
    training = state.get("training")
    training = training if isinstance(training, dict) else (training.model_dump() if training else {})
    console.print(f"algorithm: {state.get('algorithm')}   training: {training.get('status')} "
                  f"{training.get('final_metrics') or ''}")
    scores = state.get("scores") or {}
    if "subtasks" in scores:
        table = Table(title=f"scores (grader {scores.get('grader_version')})")
        for col in ("sub-task", "pass", "detail"):
            table.add_column(col)
        for name, sub in scores["subtasks"].items():
            table.add_row(name, "PASS" if sub["passed"] else "fail", sub.get("detail", "")[:90])
        console.print(table)
        console.print(f"score: {scores['passed']}/{len(scores['subtasks'])}   privacy violations: "
                      f"{scores.get('privacy_violations', 0)}")
