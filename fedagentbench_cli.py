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

from fl.telemetry import QUIET_ENV

#: subcommand modules, in the order they appear in --help
COMMAND_MODULES: tuple[str, ...] = (
    "environments.cli",
    "environments.data_cli",
    "fl.cli",
    "graphs.cli",
    "eval.cli",
    "federation.cli",
)


def quiet_environment() -> None:
    """Switch telemetry off for this process and its children unless the user set a value
    (:data:`fl.telemetry.QUIET_ENV`)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    quiet_environment()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from agents.providers import ProviderError

    try:
        return int(args.func(args) or 0)
    except ProviderError as exc:  # a key, a model name or a host: one line that names the fix
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, PermissionError) as exc:
        # user errors: a clear one-line message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
