"""The ``fedagentbench`` command line.

Each subcommand lives in the package that owns it, as a module exposing
``register(subparsers)``; that module must import only the standard library at top level, so that
``fedagentbench --help`` starts fast. Heavy imports (torch, MONAI, Flower, LangGraph) happen inside
the functions that run a command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: subcommand modules, in the order they appear in --help
COMMAND_MODULES: tuple[str, ...] = (
    "environments.cli",
    "fl.cli",
    "graphs.cli",
    "eval.cli",
)

#: variables that keep LangGraph, LangSmith, Flower and Ray from calling home (see README)
QUIET_ENV: dict[str, str] = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
}


def quiet_environment() -> None:
    """Switch telemetry off for this process and its children unless the user set a value."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def console():
    """A rich console; wide when the output is a file or a pipe, so that tables are not cut."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedagentbench",
        description="LLM agents that automate federated medical-image learning, and the benchmark that scores them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # not built yet
                continue
            raise
        module.register(subparsers)
    _add_run_sampling_options(subparsers)
    return parser


def _add_run_sampling_options(subparsers: argparse._SubParsersAction) -> None:
    """``fedagentbench run --temperature T --seed N``: the chat model's sampling settings for one run.

    graphs.cli registers ``run`` without them; until it does, they are added here and the command
    builds its RunConfig with them (same steps as graphs.cli._run). If graphs.cli gains them, this
    steps aside."""
    run = subparsers.choices.get("run")
    if run is None or {"temperature", "seed"} & {a.dest for a in run._actions}:
        return
    run.add_argument("--temperature", type=float, default=0.0, help="the chat model's sampling temperature")
    run.add_argument("--seed", type=int, default=0, help="the chat model's sampling seed")
    run.set_defaults(func=_run_with_sampling)


def _run_with_sampling(args: argparse.Namespace) -> int:
    from graphs.cli import print_state
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
    out = console()
    with out.status(f"running {args.task} with {args.model} (thread {thread}, temperature {args.temperature:g}, "
                    f"seed {args.seed})"):
        state = run_task(config, args.db, thread)
    print_state(out, state, thread)
    return 0


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, PermissionError) as exc:
        # user errors: a clear one-line message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
