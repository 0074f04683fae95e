"""Per-process resources the graph nodes share: chat models, tools, answer keys, run folders.

Nodes receive only the checkpointed state (plain values); everything heavy is rebuilt from it
here and cached, so a resumed run in a new process finds the same resources.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graphs.state import RunConfig

if TYPE_CHECKING:
    from graphs.privacy import HashedIdentifiers

_lock = threading.Lock()
_models: dict[tuple, Any] = {}
#: tests and the benchmark may install a chat model factory for a spec (e.g. a scripted model)
MODEL_OVERRIDES: dict[str, Any] = {}


def env_dir(config: RunConfig) -> Path:
    path = Path(config.env_dir)
    if not (path / "environment.json").is_file():
        raise FileNotFoundError(f"{path} is not a built environment (no environment.json); run `fedagentbench envs build`")
    return path


def client_names(config: RunConfig) -> list[str]:
    """The hospitals: the environment's client folders, or, for a coordinator that holds no site's
    files (a deployment), the sites its environment.json lists."""
    clients = env_dir(config) / "clients"
    if clients.is_dir():
        return sorted(p.name for p in clients.iterdir() if p.is_dir())
    import json

    return sorted(json.loads((env_dir(config) / "environment.json").read_text("utf-8"))["sites"])


def client_workspace(config: RunConfig, client: str) -> Path:
    return env_dir(config) / "clients" / client


def server_workspace(config: RunConfig) -> Path:
    return env_dir(config) / "server"


def run_name(config: RunConfig) -> str:
    """A file-system-safe name of this run: <model>.<guidance>.<mode>.<run id>."""
    raw = f"{config.model}.{config.guidance}.{config.mode}.{config.run_id}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", raw)[:120]


def run_root(config: RunConfig) -> Path:
    """This run's private area, ``<env>/runs/<task>/<run name>/``: outside every workspace.

    Each agent sees its side's part of it (``clients/<hospital>`` or ``server``) as its ``work/``
    folder, so concurrent and earlier runs never see each other's files, and answer-key material a
    per-phase run places there is reachable only by that run's own later phases."""
    return env_dir(config) / "runs" / config.task_id / run_name(config)


def client_work(config: RunConfig, client: str) -> Path:
    return run_root(config) / "clients" / client


def server_work(config: RunConfig) -> Path:
    return run_root(config) / "server"


#: the workspace-relative folder every agent writes under (its run's private work/)
WORK = "work"


def client_path(config: RunConfig, client: str, rel: str) -> Path:
    """Where a workspace-relative path of ``client``'s agents lies on disk (``work/...``: the run's)."""
    parts = Path(rel).parts
    if parts[:1] == (WORK,):
        return client_work(config, client).joinpath(*parts[1:])
    return client_workspace(config, client) / rel


def server_path(config: RunConfig, rel: str) -> Path:
    parts = Path(rel).parts
    if parts[:1] == (WORK,):
        return server_work(config).joinpath(*parts[1:])
    return server_workspace(config) / rel


def agents_model(config: RunConfig) -> str:
    """The model spec the agents talk to: a site's own (``site serve --model``), else the run's."""
    return config.site_model or config.model


def chat_model(config: RunConfig, agent: str | None = None) -> Any:
    """The run's chat model (cached per spec, environment, task and seed, so every step of an agent
    talks to the same object). An installed override is made once per agent (``agent``), as a
    scripted conversation starts afresh for each agent."""
    from agents.models import make_chat_model

    override = MODEL_OVERRIDES.get(agents_model(config))
    key = (agents_model(config), id(override), agent if override is not None else None, config.env_dir, config.task_id, config.seed, config.temperature, config.timeout_s,
           run_name(config))
    with _lock:
        if key not in _models and override is not None:
            _models[key] = override(config)
        if key not in _models:
            info = model_info(config)
            _models[key] = make_chat_model(info, {"env_dir": config.env_dir, "task_id": config.task_id,
                                                  "seed": config.seed, "run_root": str(run_root(config))})
        return _models[key]


@lru_cache(maxsize=64)
def _patient_identifiers(env_dir: str) -> tuple[tuple[str, ...], HashedIdentifiers | None]:
    """(clear identifiers, keyed hashes or None) of an environment: a federation's are only hashed."""
    from graphs.privacy import PrivacyAuditor

    auditor = PrivacyAuditor.for_environment(env_dir)
    return tuple(auditor.identifiers), auditor.hashed


def privacy_auditor(config: RunConfig):
    """A fresh privacy auditor for one agent step (the environment's patients read once)."""
    from graphs.privacy import PrivacyAuditor

    clear, hashed = _patient_identifiers(config.env_dir)
    return PrivacyAuditor(list(clear), hashed=hashed)


def model_info(config: RunConfig):
    from agents.models import ModelSettings, resolve_spec

    return resolve_spec(agents_model(config), ModelSettings(temperature=config.temperature, seed=config.seed,
                                                    timeout_s=config.timeout_s, retries=config.retries))


def context_window(config: RunConfig):
    """The run's context window (:class:`agents.context.ContextWindow`; None for scripted models)."""
    if agents_model(config) in MODEL_OVERRIDES:
        return None
    from agents.models import with_window

    return with_window(model_info(config)).window


#: run deadlines (``time.time()``) by run: outside the checkpointed config, so a resumed run gets
#: the limit of the bench that resumes it
_deadlines: dict[str, float] = {}


def _run_key(config: RunConfig) -> str:
    return f"{config.env_dir}|{config.task_id}|{run_name(config)}"


def set_deadline(config: RunConfig, deadline: float | None) -> None:
    with _lock:
        if deadline is None:
            _deadlines.pop(_run_key(config), None)
        else:
            _deadlines[_run_key(config)] = deadline


def deadline(config: RunConfig) -> float | None:
    with _lock:
        return _deadlines.get(_run_key(config))


def provider_key(config: RunConfig) -> str | None:
    """Which provider's request cap a call counts against (None: a baseline, no cap)."""
    if agents_model(config) in MODEL_OVERRIDES:
        return None
    info = model_info(config)
    return None if info.provider == "baseline" else f"{info.provider}|{info.base_url}"


def provider_message(config: RunConfig):
    """Turns a fatal provider error into the one line that names the fix."""
    from agents.providers import fatal_message

    def describe(kind: str, exc: BaseException) -> str:
        try:
            return fatal_message(kind, model_info(config), exc)
        except ValueError:
            return f"{type(exc).__name__}: {exc}"

    return describe


_writers: dict[str, Any] = {}


def transcript_writer(config: RunConfig):
    """Where the run's agents write their transcript events (None: not recorded)."""
    if not config.transcript_path:
        return None
    from agents.transcript import TranscriptWriter

    with _lock:
        if config.transcript_path not in _writers:
            _writers[config.transcript_path] = TranscriptWriter(config.transcript_path)
        writer = _writers[config.transcript_path]
    thread = Path(config.transcript_path).stem

    def write(event: dict[str, Any]) -> None:
        try:
            writer.write({"thread": thread, **event})
        except Exception:  # noqa: BLE001 - a transcript problem must never stop an agent
            pass

    return write


def response_cache(config: RunConfig):
    """The response cache (``--cache``), keyed on the model's identity and sampling settings."""
    if not config.cache_dir:
        return None
    from agents.cache import ResponseCache

    info = model_info(config)
    return ResponseCache(config.cache_dir, {"model": info.resolved, "base_url": info.base_url,
                                            "temperature": config.temperature, "seed": config.seed,
                                            "max_tokens": info.settings.max_tokens})


@lru_cache(maxsize=64)
def _task_key(env: str, task_id: str):
    from environments.answer_key import load_task_key

    return load_task_key(Path(env), task_id)


def task_key(config: RunConfig):
    """The answer key: for per-phase mode and scoring only, never for an agent."""
    return _task_key(config.env_dir, config.task_id)


#: a practitioner's federation (``fedagentbench federate run``) states its task in this file
FEDERATION_TASK = "federation.json"


def is_federation(config: RunConfig) -> bool:
    """A practitioner's own federation: no answer key, no scoring."""
    return (Path(config.env_dir) / FEDERATION_TASK).is_file()


@lru_cache(maxsize=16)
def _federation_task(env: str):
    import json

    from environments.tasks import TaskSpec

    return TaskSpec.model_validate(json.loads((Path(env) / FEDERATION_TASK).read_text("utf-8"))["task"])


def task_spec(config: RunConfig):
    """The user's request as a task: a generated environment's, or the federation's own."""
    if is_federation(config):
        return _federation_task(config.env_dir)
    from environments.tasks import task_by_id

    return task_by_id(config.task_id)
