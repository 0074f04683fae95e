"""The settings ``fedagentbench run``, ``bench`` and ``federate run`` share: one pydantic model,
validated once per command from its command-line options and the ``FEDAGENTBENCH_*`` environment
variables. An option given on the command line wins over its variable, the variable over the default.

:func:`add_options` adds the shared options to a command's parser (each command gets the ones it
honours: see :data:`COMMANDS`); :func:`from_args` validates the parsed options and the variables into
a :class:`Settings`, or raises :class:`SettingsError`, one line naming the option or variable and what
is wrong (``fedagentbench`` prints it and exits 2). :meth:`Settings.export` writes the validated
values of the variables back to the environment, where the layers below (and the processes they
start: Ray workers, a llama.cpp server) read them.

Seeds have one name each everywhere: ``--seed`` is the *environment* seed (which simulated hospitals
``envs build`` and ``bench`` generate); ``--sampling-seed`` is the chat model's *sampling* seed.
``--cache [DIR]`` answers repeated model calls from DIR, by default ``llm_cache/`` beside the
checkpoint database (``run``: beside ``--db``; ``bench``: ``<out>/llm_cache``).

This module imports only the standard library and pydantic: every layer may use it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PREFIX = "FEDAGENTBENCH_"

#: the commands that take the shared options
COMMANDS = ("run", "bench", "federate")
#: commands that run the benchmark's chat-model settings; ``federate run`` takes the model, seed,
#: rounds and request cap (its other settings are not passed to the workflow yet)
MODEL_COMMANDS = ("run", "bench", "federate")

#: variables the code reads that are not settings of these commands: ``data fetch``'s mirror, the
#: parent process id the local model's server watches, the deployment marker written into generated
#: files, and the local-model test switch
NOT_SETTINGS = ("FEDAGENTBENCH_DATA_MIRROR", "FEDAGENTBENCH_LOCAL_PARENT_PID", "FEDAGENTBENCH_FL_DEPLOYMENT",
                "FEDAGENTBENCH_REQUIRE_LOCAL")


class SettingsError(ValueError):
    """A setting that does not validate: one line naming the option or variable."""


def _opt(flag: str | None = None, env: str | None = None, commands: tuple[str, ...] = COMMANDS) -> dict[str, Any]:
    return {"json_schema_extra": {"option": flag, "env": env, "commands": list(commands) if flag else []}}


class Settings(BaseModel):
    """What ``run``, ``bench`` and ``federate run`` share. ``None`` where a command has its own
    default: ``model`` and ``rounds`` in ``federate run`` (the YAML's), ``sampling_seed`` in ``bench``
    (the environment seed) and ``federate run`` (the YAML's ``seed``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the shared command-line options
    model: str | None = Field(None, min_length=1, **_opt("--model"))
    sampling_seed: int | None = Field(None, **_opt("--sampling-seed"))
    rounds: int | None = Field(None, ge=1, **_opt("--rounds"))
    max_requests: int = Field(0, ge=0, **_opt("--max-requests", "FEDAGENTBENCH_MAX_REQUESTS"))
    temperature: float = Field(0.0, ge=0, **_opt("--temperature", commands=MODEL_COMMANDS))
    budget: int = Field(16, ge=1, **_opt("--budget", commands=MODEL_COMMANDS))
    timeout: float = Field(120.0, gt=0, **_opt("--timeout", commands=MODEL_COMMANDS))
    retries: int = Field(5, ge=0, **_opt("--retries", commands=MODEL_COMMANDS))
    submit_tool: bool = Field(True, **_opt("--no-submit-tool", commands=MODEL_COMMANDS))
    #: answer repeated model calls from a cache folder: ``cache_dir``, else llm_cache/ beside the checkpoints
    cache: bool = Field(False, **_opt("--cache", commands=MODEL_COMMANDS))
    cache_dir: Path | None = None
    data_dir: Path | None = Field(None, **_opt("--data-dir", "FEDAGENTBENCH_DATA", commands=("bench",)))

    # variables only (their readers: the module named in each comment)
    model_aliases: Path | None = Field(None, **_opt(env="FEDAGENTBENCH_MODEL_ALIASES"))  # agents.models
    model_prices: Path | None = Field(None, **_opt(env="FEDAGENTBENCH_MODEL_PRICES"))  # agents.pricing
    retry_base_s: float = Field(1.0, ge=0, **_opt(env="FEDAGENTBENCH_RETRY_BASE_S"))  # agents.runner
    baseline_delay_s: float = Field(0.0, ge=0, **_opt(env="FEDAGENTBENCH_BASELINE_DELAY_S"))  # agents.baselines
    training_cache: Path | None = Field(None, **_opt(env="FEDAGENTBENCH_TRAINING_CACHE"))  # tools.training
    warm_training: bool = Field(True, **_opt(env="FEDAGENTBENCH_WARM_TRAINING"))  # tools.training
    ray_address: str | None = Field(None, **_opt(env="FEDAGENTBENCH_RAY_ADDRESS"))  # fl.simulation
    algorithm_modules: str | None = Field(None, **_opt(env="FEDAGENTBENCH_ALGORITHM_MODULES"))  # fl.algorithms
    decode_cache_mb: float = Field(256.0, ge=0, **_opt(env="FEDAGENTBENCH_DECODE_CACHE_MB"))  # environments.readers
    model_cache: Path | None = Field(None, **_opt(env="FEDAGENTBENCH_MODEL_CACHE"))  # agents.local_llm
    local_gguf: Path | None = Field(None, **_opt(env="FEDAGENTBENCH_LOCAL_GGUF"))
    local_n_ctx: int = Field(8192, ge=512, **_opt(env="FEDAGENTBENCH_LOCAL_N_CTX"))
    local_threads: int = Field(2, ge=1, **_opt(env="FEDAGENTBENCH_LOCAL_THREADS"))
    local_start_timeout: float = Field(180.0, gt=0, **_opt(env="FEDAGENTBENCH_LOCAL_START_TIMEOUT"))

    def cache_folder(self, beside: str | Path) -> Path | None:
        """The response cache's folder: ``--cache DIR``, else ``llm_cache/`` in ``beside`` (the folder
        of the checkpoint database); None without ``--cache``."""
        if not self.cache:
            return None
        return (self.cache_dir or Path(beside) / "llm_cache").resolve()

    def export(self, environ: os._Environ | dict[str, str] | None = None) -> None:
        """Write the validated value of every variable that was set, or given by its option, back to
        the environment, in the form its reader expects (``FEDAGENTBENCH_WARM_TRAINING`` as 0/1)."""
        environ = os.environ if environ is None else environ
        given = self.model_fields_set
        for name, info in type(self).model_fields.items():
            env = _meta(info)["env"]
            value = getattr(self, name)
            if not env or value is None or (name not in given and env not in environ):
                continue
            environ[env] = ("1" if value else "0") if isinstance(value, bool) else str(value)


def _meta(info) -> dict[str, Any]:
    return info.json_schema_extra or {"option": None, "env": None, "commands": []}


def variables() -> dict[str, str]:
    """Each variable that is a source of a setting, and the field it sets."""
    return {_meta(info)["env"]: name for name, info in Settings.model_fields.items() if _meta(info)["env"]}


#: the help of each shared option (without its default)
HELP = {
    "model": "model spec or alias (see README), e.g. oracle, qwq-32b, local",
    "sampling_seed": "the chat model's sampling seed",
    "rounds": "federated training rounds per run",
    "max_requests": "cap on concurrent model requests per provider and host, 0 for none",
    "temperature": "the chat model's sampling temperature",
    "budget": "model calls allowed per agent",
    "timeout": "one model request's time limit in seconds",
    "retries": "retries of a rate-limited, failed or timed-out request (backoff honours Retry-After)",
    "submit_tool": "do not offer agents the submit_answer tool (text protocol only, as in the paper)",
    "cache": "answer repeated model calls from DIR (default: llm_cache/ beside the checkpoint database; "
             "a rerun is identical and free)",
    "data_dir": "real image pools",
}
METAVARS = {"model": "SPEC", "sampling_seed": "N", "rounds": "N", "max_requests": "N", "temperature": "T",
            "budget": "N", "timeout": "S", "retries": "N", "data_dir": "DIR"}

#: each command's defaults where it has its own (a missing name: the command decides, see Settings)
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"model": "heuristic", "sampling_seed": 0, "rounds": 1},
    "bench": {"model": "heuristic", "rounds": 1},
    "federate": {},
}
#: how --help words a default the command decides
DEFAULT_WORDS = {
    "bench": {"sampling_seed": "repeat r samples with this + r; default: the environment seed --seed"},
    "federate": {"model": "default: the YAML's, else heuristic", "rounds": "default: the YAML's",
                 "sampling_seed": "default: the YAML's seed"},
}


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the shared options ``command`` (run, bench or federate) honours to its parser. Values stay
    strings here: :func:`from_args` validates them, so that a bad one gives one line, not a usage."""
    group = parser.add_argument_group("shared settings (run, bench and federate run; an option wins over its "
                                      "FEDAGENTBENCH_* variable)")
    for name, info in Settings.model_fields.items():
        meta = _meta(info)
        if not meta["option"] or command not in meta["commands"]:
            continue
        if name == "submit_tool":
            group.add_argument("--no-submit-tool", dest=name, action="store_false", default=None, help=HELP[name])
            continue
        if name == "cache":
            group.add_argument("--cache", nargs="?", const="", default=None, metavar="DIR", help=HELP[name])
            continue
        default = COMMAND_DEFAULTS[command].get(name, info.default)
        words = DEFAULT_WORDS.get(command, {}).get(name)
        if not words and meta["env"]:
            words = f"default: ${meta['env']}" + (f", else {default}" if default is not None else "")
        elif not words and default is not None:
            words = f"default: {default}"
        text = f"{HELP[name]} ({words})" if words else HELP[name]
        group.add_argument(meta["option"], dest=name, default=None, metavar=METAVARS[name], help=text)
    if command == "run":  # `run --seed` was the sampling seed: refused with the new name, not reinterpreted
        group.add_argument("--seed", dest="environment_seed_given", default=None, help=argparse.SUPPRESS)


def from_args(args: argparse.Namespace, command: str, environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of one command: its options, else the variables, else the command's defaults;
    validated once. :class:`SettingsError` names the first bad value and where it came from."""
    environ = os.environ if environ is None else environ
    if command == "run" and getattr(args, "environment_seed_given", None) is not None:
        raise SettingsError("fedagentbench run takes no --seed: --seed is the environment seed (`envs build --seed`, "
                            "`bench --seed`); the chat model's sampling seed is --sampling-seed")
    data: dict[str, Any] = dict(COMMAND_DEFAULTS[command])
    source: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        meta = _meta(info)
        given = getattr(args, name, None) if meta["option"] and command in meta["commands"] else None
        if given is not None:
            if name == "cache":
                data["cache"], source["cache"] = True, "--cache"
                if given:
                    data["cache_dir"], source["cache_dir"] = given, f"--cache {given!r}"
            elif name == "submit_tool":
                data[name], source[name] = given, "--no-submit-tool"
            else:
                data[name], source[name] = given, f"{meta['option']} {given!r}"
        elif meta["env"] and environ.get(meta["env"], "").strip():
            data[name], source[name] = environ[meta["env"]].strip(), f"{meta['env']}={environ[meta['env']]!r}"
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise SettingsError(f"{source.get(name, name)}: {first['msg']}") from None
