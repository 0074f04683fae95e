"""The graph nodes: one per agent (S1-S4, C1-C3), phase entry nodes, and the evaluation node.

A node rebuilds what it needs from the state's :class:`RunConfig`, runs its agent through
:func:`agents.runner.run_agent`, and returns only statuses, paths and aggregate numbers. Client
nodes clear their run folder first, so a node replayed after a crash leaves no duplicated or
half-written output. In per-phase mode the phase entry nodes load the answer key's upstream result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from functools import partial
from typing import Any

from pydantic import BaseModel, Field

from agents.roles import ROLES, answer_tool, system_prompt, user_prompt
from agents.runner import AgentOutcome, run_agent
from graphs import runtime
from graphs.state import (
    ClientRecord,
    PhaseTiming,
    RunConfig,
    RunError,
    TrainingStatus,
    WorkflowState,
)


class ClientTask(BaseModel):
    """What the server sends one client: the run config and the broadcast, nothing else."""

    config: RunConfig
    client: str
    requirements: dict[str, Any] = Field(default_factory=dict)
    datasets: list[str] = Field(default_factory=list)
    input_path: str | None = None


def _id(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _auditor(config: RunConfig):
    from graphs.privacy import PrivacyAuditor

    return PrivacyAuditor.for_environment(config.env_dir)


def _tools(role_name: str, config: RunConfig, client: str | None, extra: list | None = None) -> list:
    import tools as toolkit

    role = ROLES[role_name]
    if not role.tools:
        return []
    if role.side == "client":
        available = toolkit.build_client_tools(runtime.client_workspace(config, client),
                                               work_dir=runtime.client_work(config, client))
    else:
        work = {name: runtime.client_work(config, name) for name in runtime.client_names(config)}
        available = toolkit.build_server_tools(runtime.server_workspace(config), work, guidance=config.guidance,
                                               work_dir=runtime.server_work(config))
        available += list(extra or [])
    return [t for t in available if t.name in role.tools]


def _run(role_name: str, config: RunConfig, ctx: dict, client: str | None = None, extra_tools: list | None = None,
         parse=None) -> tuple[AgentOutcome, dict[str, Any]]:
    """Run one agent and return its outcome plus the state update that records it.

    Provider failures (:mod:`agents.providers`) propagate: they end the run as an infrastructure
    failure, which the benchmark records apart from scores and runs again."""
    from agents.providers import ProviderError, ProviderUnavailable
    from agents.runner import UsageRecord

    role = ROLES[role_name]
    auditor = _auditor(config)
    where = f"{role_name}@{client}" if client else role_name
    try:
        outcome = run_agent(
            role=role_name, client=client, model=runtime.chat_model(config),
            tools=_tools(role_name, config, client, extra_tools),
            system=system_prompt(role, config.guidance, client, submit_tool=config.submit_tool),
            user=user_prompt(role, config.guidance, ctx),
            parse=parse or role.parse, budget=config.budget, auditor=auditor, first_tool=role.first_tool,
            answer_tool=answer_tool(role) if config.submit_tool and role.schema is not None else None,
            transcript=runtime.transcript_writer(config), cache=runtime.response_cache(config),
            retries=config.retries, provider_key=runtime.provider_key(config),
            describe_provider=runtime.provider_message(config),
            window=runtime.context_window(config), deadline=runtime.deadline(config),
        )
    except (ProviderError, ProviderUnavailable):
        raise
    except Exception as exc:  # building the model or tools failed: a recorded failure, never a crash
        if type(exc).__name__ == "LocalModelError":  # llama.cpp would not start: the machine's failure
            raise ProviderUnavailable(f"{where}: {exc}") from exc
        outcome = AgentOutcome(role=role_name, client=client, ok=False, error=f"{type(exc).__name__}: {exc}",
                               usage=UsageRecord(role=role_name, client=client))
    privacy = [v.model_dump() for v in auditor.violations]
    summary = {
        "id": _id(config.run_id, where, "agent"),
        "role": role_name, "client": client, "ok": outcome.ok, "error": outcome.error, "steps": outcome.steps,
        "seconds": outcome.seconds, "model_seconds": outcome.model_seconds, "tool_seconds": outcome.tool_seconds,
        "tool_calls": len(outcome.tool_calls),
        "tool_errors": sum(1 for c in outcome.tool_calls if not c.ok),
        "tool_error_kinds": outcome.tool_error_kinds(),
        "tools_used": [c.tool for c in outcome.tool_calls],
        "repeated_calls": outcome.repeated_calls, "answered_by": outcome.answered_by,
        "privacy_violations": len(privacy),
        "model_calls": outcome.usage.model_calls, "input_tokens": outcome.usage.input_tokens,
        "output_tokens": outcome.usage.output_tokens, "reasoning_tokens": outcome.usage.reasoning_tokens,
        "cached_calls": outcome.usage.cached_calls, "peak_prompt_tokens": outcome.usage.peak_prompt_tokens,
        "text_tool_calls": outcome.usage.text_tool_calls, "context_edits": outcome.usage.context_edits,
    }
    update: dict[str, Any] = {
        "agents": [summary],
        "privacy": privacy,
        "timings": [PhaseTiming(id=_id(config.run_id, where, "time"), phase=_PHASE_OF[role_name],
                                seconds=outcome.seconds)],
    }
    if not outcome.ok:
        update["errors"] = [RunError(id=_id(config.run_id, where, "error"), where=where, message=str(outcome.error))]
    return outcome, update


_PHASE_OF = {"S1": "selection", "C1": "selection", "S2": "selection", "C2": "preprocessing",
             "C3": "harmonisation", "S3": "training", "S4": "training"}


def _merge(*updates: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for u in updates:
        for k, v in u.items():
            if isinstance(v, list):
                out[k] = out.get(k, []) + v
            elif isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = {**out[k], **v}
            else:
                out[k] = v
    return out


# --- phase 1: client selection --------------------------------------------------------------------

def _server_request(config) -> str:
    """The user's request as the server holds it (its words are drawn per environment seed)."""
    task_file = runtime.server_workspace(config) / "tasks" / f"{config.task_id}.json"
    return json.loads(task_file.read_text("utf-8"))["request"][config.guidance]


def s1_node(state: WorkflowState) -> dict[str, Any]:
    config = state.config
    request = _server_request(config)
    outcome, update = _run("S1", config, {"task_id": config.task_id, "request": request})
    clients = {name: ClientRecord(name=name, status="pending") for name in runtime.client_names(config)}
    return _merge(update, {"request": request, "requirements": outcome.result, "s1_answer": outcome.result,
                           "clients": clients})


def fan_out_c1(state: WorkflowState) -> list:
    from langgraph.types import Send

    if not state.requirements:
        return []
    return [Send("C1", ClientTask(config=state.config, client=name, requirements=state.requirements))
            for name in state.clients]


def _request_words(spec) -> dict[str, str]:
    """What the server forwards of the user's request in its own words: the title, the organ, the note."""
    return {"title": spec.title, "body_part": spec.body_part, "class_note": spec.class_note}


def c1_node(task: ClientTask) -> dict[str, Any]:
    req = task.requirements
    ctx = {"modality": req.get("modality", ""), "task_type": req.get("task_type", "classification"),
           "target_classes": req.get("target_classes", []),
           **_request_words(runtime.task_spec(task.config))}
    outcome, update = _run("C1", task.config, ctx, client=task.client)
    result = outcome.result or {}
    record = ClientRecord(name=task.client, status="replied" if outcome.ok else "failed", c1_answered=outcome.ok,
                          selected_datasets=result.get("datasets", []), selection_reason=result.get("reason", ""))
    return _merge(update, {"clients": {task.client: record}})


def s2_node(state: WorkflowState) -> dict[str, Any]:
    config = state.config
    replies = {}
    for name, rec in state.clients.items():
        if rec.status == "failed":
            replies[name] = "no reply (the client agent failed)"
        elif rec.selected_datasets:
            replies[name] = "; ".join(f"**Dataset Name** : {d}" for d in rec.selected_datasets)
        else:
            replies[name] = f"no dataset. {rec.selection_reason[:300]}"
    names = list(state.clients)
    outcome, update = _run("S2", config, {"replies": replies}, parse=partial(ROLES["S2"].parse, clients=names))
    approved = set((outcome.result or {}).get("approved", []))
    clients = {n: ClientRecord(name=n, approved=n in approved, status="approved" if n in approved else "released",
                               work_datasets=state.clients[n].selected_datasets if n in approved else [])
               for n in names}
    shown = {n: rec.status != "failed" and bool(rec.selected_datasets) for n, rec in state.clients.items()}
    answer = sorted(approved) if outcome.ok else None
    return _merge(update, {"clients": clients, "s2_shown": shown, "s2_answer": answer})


# --- phase 2: preprocessing -------------------------------------------------------------------------

def preprocessing_start(state: WorkflowState) -> dict[str, Any]:
    """Per-phase mode: start from the key's approved clients and relevant datasets."""
    if state.config.mode != "phase":
        return {}
    key = runtime.task_key(state.config)
    return {"clients": {name: ClientRecord(name=name, work_datasets=key.relevant_datasets.get(name, []))
                        for name in runtime.client_names(state.config)}}


def fan_out_c2(state: WorkflowState) -> list:
    from langgraph.types import Send

    return [Send("C2", ClientTask(config=state.config, client=n, datasets=r.work_datasets))
            for n, r in state.clients.items() if r.work_datasets]


def c2_node(task: ClientTask) -> dict[str, Any]:
    config = task.config
    spec = runtime.task_spec(config)
    out_rel, scratch = "work/cleaned", "work/raw"
    shutil.rmtree(runtime.client_path(config, task.client, out_rel), ignore_errors=True)
    shutil.rmtree(runtime.client_path(config, task.client, scratch), ignore_errors=True)
    ctx = {"datasets": task.datasets, "output_path": out_rel, "scratch_path": scratch, "image_size": spec.image_size,
           "mode": "RGB" if spec.colour else "L"}
    outcome, update = _run("C2", config, ctx, client=task.client)
    record = ClientRecord(name=task.client, status="cleaned" if outcome.ok else "failed",
                          cleaned_path=out_rel if outcome.ok else None,
                          harmonisation_input=out_rel if outcome.ok else None,
                          cleaning_summary=((outcome.result or {}).get("summary") or outcome.error or "")[:500])
    return _merge(update, {"clients": {task.client: record}})


# --- phase 3: label harmonisation -------------------------------------------------------------------

def harmonisation_start(state: WorkflowState) -> dict[str, Any]:
    """Per-phase mode: the key's clean files, in the standard schema, as each client's cleaned data."""
    if state.config.mode != "phase":
        return {}
    from graphs.upstream import gold_cleaned

    config, key = state.config, runtime.task_key(state.config)
    out_rel = "work/input_cleaned"
    clients = {}
    for name in runtime.client_names(config):
        relevant = key.relevant_datasets.get(name, [])
        path = None
        if relevant:
            gold_cleaned(runtime.client_workspace(config, name), runtime.client_path(config, name, out_rel), key, name)
            path = out_rel
        clients[name] = ClientRecord(name=name, work_datasets=relevant, harmonisation_input=path)
    return {"clients": clients}


def fan_out_c3(state: WorkflowState) -> list:
    from langgraph.types import Send

    return [Send("C3", ClientTask(config=state.config, client=n, input_path=r.harmonisation_input,
                                  datasets=r.work_datasets))
            for n, r in state.clients.items() if r.harmonisation_input]


def c3_node(task: ClientTask) -> dict[str, Any]:
    config = task.config
    spec = runtime.task_spec(config)
    out_rel = "work/harmonised"
    out_dir = runtime.client_path(config, task.client, out_rel)
    shutil.rmtree(out_dir, ignore_errors=True)
    ctx = {"input_path": task.input_path, "output_path": out_rel, "target_classes": spec.target_classes,
           **_request_words(spec)}
    outcome, update = _run("C3", config, ctx, client=task.client)
    mappings = _mappings_from_calls(outcome, task.datasets)
    record = ClientRecord(name=task.client, status="harmonised" if outcome.ok else "failed",
                          label_mappings=mappings, harmonised_path=out_rel if outcome.ok else None,
                          training_input=out_rel if outcome.ok else None,
                          stats=class_counts(out_dir) if outcome.ok else {})
    return _merge(update, {"clients": {task.client: record}})


def _mappings_from_calls(outcome: AgentOutcome, datasets: list[str]) -> dict[str, dict[str, str | None]]:
    """Dataset -> mapping, from the successful apply_label_mapping calls (else the stated mapping)."""
    found: dict[str, dict[str, str | None]] = {}
    for call in outcome.tool_calls:
        if call.tool == "apply_label_mapping" and call.ok:
            source = str(call.args.get("source") or call.args.get("source_dir") or call.args.get("input_path") or "")
            name = source.rstrip("/").split("/")[-1]
            mapping = call.args.get("mapping") or {}
            found[name] = {str(k): (None if v in (None, "", "drop") else str(v)) for k, v in mapping.items()}
    if not found and outcome.result and outcome.result.get("mapping"):
        for name in datasets:
            found[name] = outcome.result["mapping"]
    return found


def class_counts(folder) -> dict[str, Any]:
    """Aggregate numbers a client may share: images per class folder."""
    if not folder.is_dir():
        return {}
    counts = {d.name: sum(1 for f in d.iterdir() if f.is_file()) for d in sorted(folder.iterdir()) if d.is_dir()}
    return {"class_counts": counts, "images": sum(counts.values())}


# --- phase 4: algorithm selection and training ------------------------------------------------------

def training_start(state: WorkflowState) -> dict[str, Any]:
    """Per-phase mode: the key's requirements and harmonised folders."""
    if state.config.mode != "phase":
        return {}
    from graphs.upstream import gold_harmonised

    config, key = state.config, runtime.task_key(state.config)
    out_rel = "work/input_harmonised"
    clients = {}
    for name in runtime.client_names(config):
        relevant = key.relevant_datasets.get(name, [])
        path, stats = None, {}
        if relevant:
            out = runtime.client_path(config, name, out_rel)
            gold_harmonised(runtime.client_workspace(config, name), out, key, name)
            path, stats = out_rel, class_counts(out)
        clients[name] = ClientRecord(name=name, training_input=path, stats=stats)
    return {"clients": clients, "requirements": key.requirements.model_dump()}


def upstream_algorithm(config: RunConfig) -> str:
    """Per-phase mode: the algorithm the key's S3 would hand S4 (the first trainable acceptable one)."""
    from fl.registry import query

    acceptable = runtime.task_key(config).acceptable_algorithms
    trainable = {a.name for a in query(executable=True)}
    return next((a for a in acceptable if a in trainable), acceptable[0])


def _participants(state: WorkflowState) -> dict[str, ClientRecord]:
    return {n: r for n, r in state.clients.items() if r.training_input}


def s3_node(state: WorkflowState) -> dict[str, Any]:
    config = state.config
    participants = _participants(state)
    stats = [f"{n}: {json.dumps(r.stats.get('class_counts', {}))}" for n, r in participants.items()]
    ctx = {"request": state.request or _server_request(config),
           "clients": list(participants), "stats_paths": stats}
    outcome, update = _run("S3", config, ctx)
    result = outcome.result or {}
    return _merge(update, {"algorithm": result.get("algorithm"), "algorithm_reason": result.get("reason", "")[:300]})


def s4_node(state: WorkflowState) -> dict[str, Any]:
    from tools.training import build_training_tools

    config = state.config
    participants = _participants(state)
    # per-phase mode: S4 starts from the key's upstream (its algorithm), not from the model's S3
    algorithm = upstream_algorithm(config) if config.mode == "phase" else state.algorithm
    plan = {"algorithm": algorithm, "clients": sorted(participants)}
    if not algorithm or not participants:
        why = "no algorithm chosen" if not algorithm else "no client with harmonised data"
        return {"training": TrainingStatus(status=f"not started: {why}"), "training_plan": plan,
                "errors": [RunError(id=_id(config.run_id, "S4", "skip"), where="S4", message=why)]}
    data_dirs = {n: runtime.client_path(config, n, r.training_input) for n, r in participants.items()}
    out_dir = runtime.server_path(config, "work/training")
    shutil.rmtree(out_dir, ignore_errors=True)
    training_tools = build_training_tools(out_dir, data_dirs, rounds=config.rounds,
                                          local_epochs=config.local_epochs, seed=config.seed)
    ctx = {"algorithm": algorithm, "clients": list(participants), "rounds": config.rounds}
    outcome, update = _run("S4", config, ctx, extra_tools=training_tools)
    return _merge(update, {"training": read_training_status(out_dir), "training_plan": plan})


def read_training_status(folder) -> TrainingStatus:
    """The training result the launch tool wrote, as the server may report it (metrics only)."""
    path = folder / "result.json"
    if not path.is_file():
        return TrainingStatus(status="not started")
    data = json.loads(path.read_text("utf-8"))
    final = ((data.get("final") or {}).get("global")) or {}
    metrics = {k: float(v) for k, v in final.items() if isinstance(v, (int, float)) and v is not None}
    return TrainingStatus(started=True, completed=data.get("status") == "completed", algorithm=data.get("algorithm"),
                          status=data.get("status", "unknown"), result_path=str(path), final_metrics=metrics,
                          clients=sorted(data.get("clients") or []))


# --- evaluation ---------------------------------------------------------------------------------------

def evaluate_node(state: WorkflowState) -> dict[str, Any]:
    """Usage, timing and (when the scorer is present) the scores of this run."""
    t0 = time.perf_counter()
    totals: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0, "tool_calls": 0, "agent_failures": 0}
    for a in state.agents:
        totals["input_tokens"] += a["input_tokens"]
        totals["output_tokens"] += a["output_tokens"]
        totals["tool_calls"] += a["tool_calls"]
        totals["agent_failures"] += not a["ok"]
    phase_seconds: dict[str, float] = {}
    for t in state.timings:
        phase_seconds[t.phase] = round(phase_seconds.get(t.phase, 0.0) + t.seconds, 3)
    scores: dict[str, Any] = {"usage": totals, "phase_seconds": phase_seconds,
                              "privacy_violations": len(state.privacy), "errors": len(state.errors)}
    try:
        from eval.scoring import score_state
    except ImportError:
        pass
    else:
        if not runtime.is_federation(state.config):  # a practitioner's federation has no answer key
            scores.update(score_state(state, runtime.task_key(state.config)))
    scores["evaluation_seconds"] = round(time.perf_counter() - t0, 3)
    return {"scores": scores}
