"""The benchmark runner: a matrix of checkpointed workflow runs, resumable, concurrent, scored.

Every (model, environment, task, guidance, mode, run) is one LangGraph thread in
``<out>/checkpoints.sqlite``; its score lands in ``<out>/results.jsonl``. Running the same command
again skips finished runs and resumes interrupted threads from their last checkpoint. A run that
fails (provider down, budget exhausted, anything) is recorded as a scored failure; the bench goes on.

Repeat ``r`` of a task samples with seed ``sampling_seed(spec, r)`` (distinct per repeat, the same on
a rerun) at ``spec.temperature``; both are recorded in every results line. A results folder holds
one setting of the sampling knobs: resuming it with another temperature, seed, scale, rounds or
budget is refused (mixing them would make repeats of one task incomparable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from agents.runner import RUN_TIMEOUT_ERROR
from environments.concepts import ENVIRONMENTS
from eval.scoring import SUBTASKS
from eval.store import ResultStore, RunKey, RunResult


class BenchSpec(BaseModel):
    model: str = "heuristic"
    environments: list[str] = Field(default_factory=lambda: list(ENVIRONMENTS))
    tasks: list[str] | None = None
    guidance: list[str] = Field(default_factory=lambda: ["fine", "goal"])
    modes: list[str] = Field(default_factory=lambda: ["e2e"])
    runs: int = Field(default=1, ge=1)
    scale: str = "tiny"
    #: the environment seed: which simulated hospitals are built
    seed: int = 0
    #: repeat r samples with seed ``sampling_seed + r`` (None: the environment seed)
    sampling_seed: int | None = None
    concurrency: int = 1
    rounds: int = 1
    budget: int = 16
    temperature: float = Field(default=0.0, ge=0.0)
    #: offer agents the submit_answer tool beside the text protocol
    submit_tool: bool = True
    timeout_s: float = Field(default=120.0, gt=0)
    retries: int = Field(default=5, ge=0)
    #: answer repeated model calls from ``<out>/llm_cache`` (a rerun is identical and free)
    cache: bool = False
    #: the response cache's folder (None: ``<out>/llm_cache``, beside the checkpoint database)
    cache_dir: Path | None = None
    out: Path = Path("runs/bench")
    data_dir: str | None = None
    #: one run's wall-clock limit (None: none); a run cut by it is scored with run_timeout failures
    run_timeout_s: float | None = Field(default=None, gt=0)
    #: stop starting runs once this bench invocation has spent this many USD (the next one resumes)
    cost_limit: float | None = Field(default=None, ge=0)
    #: "deployment": each environment's hospitals run as site services over Flower, the client agents
    #: and the training there (federation.deployment.environment_sites); "simulation": in this process
    runtime: Literal["simulation", "deployment"] = "simulation"

    @model_validator(mode="after")
    def _sampling_seed_follows_the_environment_seed(self) -> BenchSpec:
        if self.sampling_seed is None:  # one value in the manifest whichever way it was given
            self.sampling_seed = self.seed
        return self


def environments_dir(spec: BenchSpec) -> Path:
    return spec.out / "envs" / f"{spec.scale}-seed{spec.seed}"


def ensure_environments(spec: BenchSpec, progress: Callable[[str], None] | None = None) -> Path:
    """Build the environments the matrix needs, unless an identical build is already there."""
    import json

    from environments.builder import GENERATOR_VERSION, build_environment

    root = environments_dir(spec)
    needed = {key.environment for key in matrix(spec)}  # --task can leave environments out
    for env in (e for e in spec.environments if e in needed):
        manifest = root / env / "environment.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text("utf-8"))
            same = (m.get("seed"), m.get("scale"), m.get("generator_version"))
            if same == (spec.seed, spec.scale, GENERATOR_VERSION):
                continue
        if progress:
            progress(f"building {env} ({spec.scale}, seed {spec.seed})")
        build_environment(env, spec.scale, spec.seed, root, spec.data_dir)
    return root


def matrix(spec: BenchSpec) -> list[RunKey]:
    from environments.tasks import tasks_for

    keys = []
    for env in spec.environments:
        for task in tasks_for(env):
            if spec.tasks and task.task_id not in spec.tasks:
                continue
            for guidance in spec.guidance:
                for mode in spec.modes:
                    for run in range(1, spec.runs + 1):
                        keys.append(RunKey(model=spec.model, environment=env, task=task.task_id, guidance=guidance,
                                           mode=mode, run=run))
    if not keys:
        raise ValueError("the benchmark matrix is empty: check --env and --task")
    return keys


def sampling_seed(spec: BenchSpec, run: int) -> int:
    """The chat model's seed for repeat ``run`` (1-based): distinct per repeat, fixed across reruns."""
    return (spec.seed if spec.sampling_seed is None else spec.sampling_seed) + run


def run_config(spec: BenchSpec, key: RunKey, env_root: Path):
    """The workflow settings of one run of the matrix."""
    from graphs.state import RunConfig

    return RunConfig(env_dir=str((env_root / key.environment).resolve()), task_id=key.task,
                     guidance=key.guidance, model=key.model, mode=key.mode, run_id=f"r{key.run}",
                     rounds=spec.rounds, budget=spec.budget, temperature=spec.temperature,
                     seed=sampling_seed(spec, key.run), submit_tool=spec.submit_tool, timeout_s=spec.timeout_s,
                     retries=spec.retries, cache_dir=str(cache_folder(spec)) if spec.cache else None,
                     runtime=spec.runtime)


def cache_folder(spec: BenchSpec) -> Path:
    """Where ``--cache`` keeps model responses: ``--cache DIR``, else ``llm_cache/`` beside the checkpoints."""
    return (spec.cache_dir or spec.out / "llm_cache").resolve()


def run_one(spec: BenchSpec, key: RunKey, env_root: Path) -> RunResult:
    """One run, start or resume, and its scored result. A run that ends on an infrastructure error
    is recorded as failed (not scored); a :class:`agents.providers.ProviderError` propagates."""
    from agents.providers import ProviderError
    from eval import runs as eval_runs
    from eval.scoring import GRADER_VERSION
    from graphs import run as graph_run
    from graphs import runtime

    config = run_config(spec, key, env_root)
    thread = graph_run.default_thread_id(config)
    db = spec.out / "checkpoints.sqlite"
    transcript = str(graph_run.transcript_path(db, thread))
    started = time.perf_counter()
    runtime.set_deadline(config, time.time() + spec.run_timeout_s if spec.run_timeout_s else None)
    window = model_window(spec)
    try:
        state = eval_runs.run_task(config, db, thread)
    except ProviderError:
        raise
    except Exception as exc:  # provider retries ran out, or the workflow broke: not a score, run again later
        return RunResult(key=key, grader_version=GRADER_VERSION, thread_id=thread,
                         subtasks={s: False for s in SUBTASKS},
                         wall_seconds=round(time.perf_counter() - started, 2),
                         failed=f"{type(exc).__name__}: {str(exc)[:300]}",
                         failures={s: "infrastructure_error" for s in SUBTASKS},
                         sampling_seed=config.seed, temperature=config.temperature, env_seed=spec.seed,
                         transcript=transcript if Path(transcript).is_file() else None, context_window=window)
    finally:
        runtime.set_deadline(config, None)
    result = result_from_state(key, thread, state, time.perf_counter() - started,
                               sampling_seed=config.seed, temperature=config.temperature, env_seed=spec.seed)
    timed_out = any(a.get("error") == RUN_TIMEOUT_ERROR for a in state.get("agents", []))
    return result.model_copy(update={"transcript": transcript if Path(transcript).is_file() else None,
                                     "outcome": _with_reference(config, result.outcome), "context_window": window,
                                     "cost_usd": run_cost(spec, result.usage), "timed_out": timed_out})


def model_window(spec: BenchSpec) -> dict[str, Any] | None:
    """The context window the bench's model uses, as recorded in results and the manifest."""
    from agents.models import ModelSettings, resolve_spec, with_window

    info = resolve_spec(spec.model, ModelSettings(timeout_s=spec.timeout_s))
    if info.provider == "baseline":
        return None
    return with_window(info, timeout_s=min(spec.timeout_s, 15.0)).window.model_dump()


def run_cost(spec: BenchSpec, usage: dict[str, Any]) -> float | None:
    """USD of one run at the pricing table's prices (None when a hosted model has no price)."""
    from agents.models import resolve_spec
    from agents.pricing import price_for

    price = price_for(resolve_spec(spec.model))
    if price is None:
        return None
    return price.cost(int(usage.get("input_tokens", 0) or 0), int(usage.get("output_tokens", 0) or 0))


def _with_reference(config, outcome: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's outcome with the oracle pipeline's on the same environment, task, seed and rounds
    (the oracle's own e2e run is that reference: its ratio is 1 by construction)."""
    from eval.outcome import Outcome, reference_outcome, store_reference, with_ratio

    if outcome is None:
        return None
    if config.mode == "phase":  # S4 trained on the key's data with the key's algorithm: not the model's outcome
        return {**outcome, "comparable": False, "ratio": None,
                "note": "per-phase mode: trained on the answer key's inputs, not compared"}
    env_dir = Path(config.env_dir)
    if config.model == "oracle" and config.mode == "e2e":
        reference = store_reference(env_dir, config.task_id, config.rounds, config.local_epochs, config.seed,
                                    Outcome.model_validate(outcome))
    else:
        try:
            reference = reference_outcome(env_dir, config.task_id, config.rounds, config.local_epochs, config.seed)
        except Exception as exc:  # noqa: BLE001 - a missing reference leaves the ratio open, not the run
            return {**outcome, "ratio": None, "note": (outcome.get("note") or "") + f" no reference: {str(exc)[:120]}"}
    return with_ratio(outcome, reference)


def result_from_state(key: RunKey, thread: str, state: dict[str, Any], seconds: float,
                      sampling_seed: int | None = None, temperature: float | None = None,
                      env_seed: int | None = None) -> RunResult:
    """The scored result of a finished thread. The sampling settings recorded are the ones the
    thread ran with (its checkpointed config), falling back to the ones given."""
    from eval.scoring import GRADER_VERSION
    from eval.taxonomy import classify_run

    used = state.get("config")
    used = used if isinstance(used, dict) else (used.model_dump() if used is not None else {})
    scores = state.get("scores") or {}
    subtasks = scores.get("subtasks", {})
    metrics = {name: sub.get("metrics", {}) for name, sub in subtasks.items()}
    errors = [e["message"] if isinstance(e, dict) else e.message for e in state.get("errors", [])]
    passed = {name: bool(sub.get("passed")) for name, sub in subtasks.items()}
    agents = [{k: a.get(k) for k in ("role", "client", "ok", "error", "steps", "tool_calls", "tool_error_kinds",
                                     "repeated_calls", "answered_by", "privacy_violations")}
              for a in state.get("agents", [])]
    return RunResult(
        key=key, grader_version=scores.get("grader_version", GRADER_VERSION), thread_id=thread,
        subtasks=passed, metrics=metrics, failures=classify_run(passed, state.get("agents", [])), agents=agents,
        usage=_usage_by_role(state.get("agents", [])), phase_seconds=scores.get("phase_seconds", {}),
        wall_seconds=round(seconds, 2), privacy_violations=int(scores.get("privacy_violations", 0)),
        errors=[e[:200] for e in errors][:20],
        sampling_seed=used.get("seed", sampling_seed), temperature=used.get("temperature", temperature),
        env_seed=env_seed, outcome=scores.get("outcome"),
    )


def _usage_by_role(agents: list[dict]) -> dict[str, Any]:
    counted = ("input_tokens", "output_tokens", "reasoning_tokens", "tool_calls", "cached_calls", "text_tool_calls",
               "context_edits")
    out: dict[str, Any] = {**{k: 0 for k in counted}, "by_role": {}, "peak_prompt_tokens": 0,
                           "agent_steps": 0, "agent_seconds": 0.0, "model_seconds": 0.0, "tool_seconds": 0.0}
    for a in agents:
        peak = int(a.get("peak_prompt_tokens", 0) or 0)
        out["peak_prompt_tokens"] = max(out["peak_prompt_tokens"], peak)
        out["agent_steps"] += a.get("steps", 0)
        for k in ("agent_seconds", "model_seconds", "tool_seconds"):
            out[k] = round(out[k] + a.get(k if k != "agent_seconds" else "seconds", 0.0), 4)
        role = out["by_role"].setdefault(a["role"], {**{k: 0 for k in counted}, "peak_prompt_tokens": 0})
        role["peak_prompt_tokens"] = max(role["peak_prompt_tokens"], peak)
        for k in counted:
            role[k] += a.get(k, 0) or 0
            out[k] += a.get(k, 0) or 0
    return out


async def run_matrix(spec: BenchSpec, on_done: Callable[[RunResult, int, int], None] | None = None,
                     on_note: Callable[[str], None] | None = None) -> list[RunResult]:
    """Run every unfinished key of the matrix with ``spec.concurrency`` runs at a time.

    Each run gets a daemon thread of its own, ``spec.concurrency`` at a time (asyncio's default pool
    holds only cores + 4 threads, which capped concurrency on small machines). With
    ``spec.run_timeout_s`` a run still going that long after its limit is recorded as cut and left
    behind. With ``spec.cost_limit`` no run starts once this invocation has spent that much
    (:class:`CostLimitReached`). A fatal provider error
    stops the bench: runs not yet started are skipped and the error is raised once all started
    runs have ended (their checkpoints let the next bench resume them)."""
    import os

    from agents.providers import ProviderError
    from eval.scoring import GRADER_VERSION
    from tools.training import CACHE_ENV

    store = ResultStore(spec.out)
    check_same_settings(store, spec)
    store.write_manifest(_settings(spec))
    # identical trainings (same harmonised bytes, algorithm, settings) run once per results folder
    os.environ.setdefault(CACHE_ENV, str((spec.out / "training_cache").resolve()))
    env_root = await asyncio.to_thread(ensure_environments, spec, on_note)
    keys = matrix(spec)
    done = store.done_keys(GRADER_VERSION)
    todo = [k for k in keys if k.text not in done]
    failed_before = {r.key.text for r in store.load(GRADER_VERSION) if r.failed} & {k.text for k in todo}
    if on_note:
        on_note(f"{len(keys)} runs in the matrix, {len(keys) - len(todo)} already finished, {len(todo)} to run"
                + (f" ({len(failed_before)} of them failed on infrastructure errors before)" if failed_before else ""))
    workers = max(1, spec.concurrency)
    semaphore = asyncio.Semaphore(workers)
    finished = len(keys) - len(todo)
    fatal: list[ProviderError] = []
    spent = {"usd": 0.0, "skipped": 0}
    loop = asyncio.get_running_loop()

    async def one(key: RunKey) -> RunResult | None:
        nonlocal finished
        async with semaphore:
            if fatal:
                return None
            if spec.cost_limit is not None and spent["usd"] >= spec.cost_limit:
                spent["skipped"] += 1
                return None
            future = _in_thread(loop, key.text, run_one, spec, key, env_root)
            try:
                if spec.run_timeout_s:  # the agents stop at the limit; this catches a run stuck elsewhere
                    result = await asyncio.wait_for(future, spec.run_timeout_s + HARD_TIMEOUT_GRACE_S)
                else:
                    result = await future
            except ProviderError as exc:
                fatal.append(exc)
                return None
            except TimeoutError:
                result = _cut_run(spec, key, env_root)
        spent["usd"] += result.cost_usd or 0.0
        store.append(result)
        finished += 1
        if on_done:
            on_done(result, finished, len(keys))
        return result

    with contextlib.ExitStack() as sites:
        if spec.runtime == "deployment":  # one set of site services per environment, for all its runs
            from federation.deployment import environment_sites

            for env in sorted({k.environment for k in todo}):
                cm = environment_sites(env_root / env, spec.out / "deployment" / env, progress=on_note)
                await asyncio.to_thread(sites.enter_context, cm)
        await asyncio.gather(*(one(k) for k in todo))
    if fatal:
        raise fatal[0]
    if spent["skipped"]:
        raise CostLimitReached(f"cost limit reached: {spent['usd']:.4f} USD spent of --cost-limit {spec.cost_limit}; "
                               f"{spent['skipped']} run(s) not started: run the same command again to go on")
    wanted = {k.text for k in keys}
    return [r for r in store.load(GRADER_VERSION) if r.key.text in wanted]


#: how long after --run-timeout the bench stops waiting for a run stuck outside the agents (a tool)
HARD_TIMEOUT_GRACE_S = 30.0


def _in_thread(loop: asyncio.AbstractEventLoop, name: str, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """``fn(*args)`` in a daemon thread of its own: a run the watchdog abandons neither blocks the
    next run nor keeps the process from exiting (a thread pool would wait for it at shutdown)."""
    import threading

    future: asyncio.Future = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            value, ok = fn(*args), True
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            value, ok = exc, False
        if not loop.is_closed():
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=target, name=f"bench-run {name}", daemon=True).start()
    return future


class CostLimitReached(RuntimeError):
    """``--cost-limit`` stopped the bench before every run started (finished runs are kept)."""


def _cut_run(spec: BenchSpec, key: RunKey, env_root: Path) -> RunResult:
    """The record of a run the watchdog abandoned: every sub-task failed as run_timeout."""
    from eval.scoring import GRADER_VERSION
    from graphs import run as graph_run

    config = run_config(spec, key, env_root)
    return RunResult(key=key, grader_version=GRADER_VERSION, thread_id=graph_run.default_thread_id(config),
                     subtasks={s: False for s in SUBTASKS}, failures={s: "run_timeout" for s in SUBTASKS},
                     wall_seconds=round(spec.run_timeout_s + HARD_TIMEOUT_GRACE_S, 2), timed_out=True,
                     errors=[f"run stopped by --run-timeout {spec.run_timeout_s} s (stuck outside an agent)"],
                     sampling_seed=config.seed, temperature=config.temperature, env_seed=spec.seed)


#: settings outside the run key that change what a run does: one value per results folder
SAMPLING_SETTINGS = ("temperature", "seed", "sampling_seed", "scale", "rounds", "budget", "submit_tool", "runtime")


def check_same_settings(store: ResultStore, spec: BenchSpec) -> None:
    """Refuse to add runs to a results folder whose earlier runs used other sampling settings."""
    manifest = store.read_manifest() or {}
    before = manifest.get("settings") or {}
    if not store.path.is_file() or not before:
        return
    now = spec.model_dump(mode="json")
    changed = [f"--{name.replace('_', '-')} {before[name]} (now {now[name]})" for name in SAMPLING_SETTINGS
               if name in before and before[name] != now[name]]
    if changed:
        raise ValueError(f"{spec.out} holds runs made with {', '.join(changed)}; repeats with other settings "
                         "are not comparable: use the same settings or another --out")


def _settings(spec: BenchSpec) -> dict[str, Any]:
    from agents.models import ModelSettings, resolve_spec
    from agents.pricing import price_for
    from eval.scoring import GRADER_VERSION

    info = resolve_spec(spec.model, ModelSettings(temperature=spec.temperature, seed=None))
    price = price_for(info)
    return {**spec.model_dump(mode="json"), "model_info": info.model_dump(), "grader_version": GRADER_VERSION,
            "context_window": model_window(spec), "price_usd_per_mtok": price.model_dump() if price else None,
            "sampling_seeds": {str(run): sampling_seed(spec, run) for run in range(1, spec.runs + 1)}}
