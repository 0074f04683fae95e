"""What each agent does in the workflow: its instruction (``prepare``) and what its answer changes
in the shared state (``finish``), plus the phase entry nodes and the evaluation node.

:mod:`graphs.agents` turns each :class:`AgentSpec` into a subgraph (prepare -> the agent's own
steps -> finish). ``prepare`` builds the role's context from the state; client agents clear their
run folder there, so a replayed agent leaves no duplicated or half-written output. ``finish``
returns only statuses, paths and aggregate numbers. In per-phase mode the phase entry nodes load
the answer key's upstream result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from functools import partial
from typing import Any

from pydantic import BaseModel, Field

from agents.roles import ROLES
from agents.runner import AgentOutcome
from graphs import runtime
from graphs.state import (
    ClientRecord,
    PhaseTiming,
    RunConfig,
    RunError,
    TrainingStatus,
    WorkflowState,
    client_update,
)


class ClientTask(BaseModel):
    """What the server sends one client: the run config and the broadcast, nothing else."""

    config: RunConfig
    client: str
    requirements: dict[str, Any] = Field(default_factory=dict)
    datasets: list[str] = Field(default_factory=list)
    input_path: str | None = None


class Skip(BaseModel):
    """``prepare``'s answer when the agent has nothing to do (e.g. S4 without an algorithm)."""

    why: str

    def __init__(self, why: str) -> None:
        super().__init__(why=why)


def _id(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


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


def record(config: RunConfig, outcome: AgentOutcome, privacy: list[dict[str, Any]]) -> dict[str, Any]:
    """The state update that records a finished agent: its summary, timing, error and privacy findings."""
    where = f"{outcome.role}@{outcome.client}" if outcome.client else outcome.role
    mine = [v for v in privacy if str(v.get("where", "")).endswith(f"of {where}")]
    usage = outcome.usage
    summary = {
        "id": _id(config.run_id, where, "agent"),
        "role": outcome.role, "client": outcome.client, "ok": outcome.ok, "error": outcome.error,
        "steps": outcome.steps, "seconds": outcome.seconds, "model_seconds": outcome.model_seconds,
        "tool_seconds": outcome.tool_seconds, "tool_calls": len(outcome.tool_calls),
        "tool_errors": sum(1 for c in outcome.tool_calls if not c.ok),
        "tool_error_kinds": outcome.tool_error_kinds(),
        "tools_used": [c.tool for c in outcome.tool_calls],
        "repeated_calls": outcome.repeated_calls, "answered_by": outcome.answered_by,
        "privacy_violations": len(mine),
        "model_calls": usage.model_calls, "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens, "reasoning_tokens": usage.reasoning_tokens,
        "cached_calls": usage.cached_calls, "peak_prompt_tokens": usage.peak_prompt_tokens,
        "text_tool_calls": usage.text_tool_calls, "context_edits": usage.context_edits,
    }
    update: dict[str, Any] = {
        "agents": [summary],
        "privacy": mine,
        "timings": [PhaseTiming(id=_id(config.run_id, where, "time"), phase=_PHASE_OF[outcome.role],
                                seconds=outcome.seconds)],
    }
    if not outcome.ok:
        update["errors"] = [RunError(id=_id(config.run_id, where, "error"), where=where, message=str(outcome.error))]
    return update


_PHASE_OF = {"S1": "selection", "C1": "selection", "S2": "selection", "C2": "preprocessing",
             "C3": "harmonisation", "S3": "training", "S4": "training"}


# --- phase 1: client selection --------------------------------------------------------------------

def _server_request(config) -> str:
    """The user's request as the server holds it (its words are drawn per environment seed)."""
    task_file = runtime.server_workspace(config) / "tasks" / f"{config.task_id}.json"
    return json.loads(task_file.read_text("utf-8"))["request"][config.guidance]


def s1_prepare(state: WorkflowState) -> dict[str, Any]:
    config = state.config
    return {"task_id": config.task_id, "request": _server_request(config)}


def s1_finish(state: WorkflowState, outcome: AgentOutcome) -> dict[str, Any]:
    config = state.config
    clients = {name: client_update(name, status="pending") for name in runtime.client_names(config)}
    return {"request": _server_request(config), "requirements": outcome.result, "s1_answer": outcome.result,
            "clients": clients}


def fan_out_c1(state: WorkflowState) -> list:
    from langgraph.types import Send

    if not state.requirements:
        return []
    return [Send("C1", ClientTask(config=state.config, client=name, requirements=state.requirements))
            for name in state.clients]


def _request_words(spec) -> dict[str, str]:
    """What the server forwards of the user's request in its own words: the title, the organ, the note."""
    return {"title": spec.title, "body_part": spec.body_part, "class_note": spec.class_note}


def c1_prepare(task: ClientTask) -> dict[str, Any]:
    req = task.requirements
    return {"modality": req.get("modality", ""), "task_type": req.get("task_type", "classification"),
            "target_classes": req.get("target_classes", []), **_request_words(runtime.task_spec(task.config))}


def c1_finish(task: ClientTask, outcome: AgentOutcome) -> dict[str, Any]:
    result = outcome.result or {}
    record = client_update(task.client, status="replied" if outcome.ok else "failed", c1_answered=outcome.ok,
                          selected_datasets=result.get("datasets", []), selection_reason=result.get("reason", ""))
    return {"clients": {task.client: record}}


def s2_prepare(state: WorkflowState) -> dict[str, Any]:
    replies = {}
    for name, rec in state.clients.items():
        if rec.status == "failed":
            replies[name] = "no reply (the client agent failed)"
        elif rec.selected_datasets:
            replies[name] = "; ".join(f"**Dataset Name** : {d}" for d in rec.selected_datasets)
        else:
            replies[name] = f"no dataset. {rec.selection_reason[:300]}"
    return {"replies": replies}


def s2_parse(state: WorkflowState):
    """S2's answer may name only the clients it was shown."""
    return partial(ROLES["S2"].parse, clients=list(state.clients))


def s2_finish(state: WorkflowState, outcome: AgentOutcome) -> dict[str, Any]:
    names = [n for n in state.clients]
    approved = set((outcome.result or {}).get("approved", []))
    clients = {n: client_update(n, approved=n in approved, status="approved" if n in approved else "released",
                               work_datasets=state.clients[n].selected_datasets if n in approved else [])
               for n in names}
    shown = {n: rec.status != "failed" and bool(rec.selected_datasets) for n, rec in state.clients.items()}
    answer = sorted(approved) if outcome.ok else None
    return {"clients": clients, "s2_shown": shown, "s2_answer": answer}


# --- phase 2: preprocessing -------------------------------------------------------------------------

def preprocessing_start(state: WorkflowState) -> dict[str, Any]:
    """Per-phase mode: start from the key's approved clients and relevant datasets."""
    if state.config.mode != "phase":
        return {}
    key = runtime.task_key(state.config)
    return {"clients": {name: client_update(name, work_datasets=key.relevant_datasets.get(name, []))
                        for name in runtime.client_names(state.config)}}


def fan_out_c2(state: WorkflowState) -> list:
    from langgraph.types import Send

    return [Send("C2", ClientTask(config=state.config, client=n, datasets=r.work_datasets))
            for n, r in state.clients.items() if r.work_datasets]


C2_OUTPUT, C2_SCRATCH = "work/cleaned", "work/raw"


def c2_prepare(task: ClientTask) -> dict[str, Any]:
    config = task.config
    spec = runtime.task_spec(config)
    shutil.rmtree(runtime.client_path(config, task.client, C2_OUTPUT), ignore_errors=True)
    shutil.rmtree(runtime.client_path(config, task.client, C2_SCRATCH), ignore_errors=True)
    return {"datasets": task.datasets, "output_path": C2_OUTPUT, "scratch_path": C2_SCRATCH,
            "image_size": spec.image_size, "mode": "RGB" if spec.colour else "L"}


def c2_finish(task: ClientTask, outcome: AgentOutcome) -> dict[str, Any]:
    record = client_update(task.client, status="cleaned" if outcome.ok else "failed",
                          cleaned_path=C2_OUTPUT if outcome.ok else None,
                          harmonisation_input=C2_OUTPUT if outcome.ok else None,
                          cleaning_summary=((outcome.result or {}).get("summary") or outcome.error or "")[:500])
    return {"clients": {task.client: record}}


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
        clients[name] = client_update(name, work_datasets=relevant, harmonisation_input=path)
    return {"clients": clients}


def fan_out_c3(state: WorkflowState) -> list:
    from langgraph.types import Send

    return [Send("C3", ClientTask(config=state.config, client=n, input_path=r.harmonisation_input,
                                  datasets=r.work_datasets))
            for n, r in state.clients.items() if r.harmonisation_input]


C3_OUTPUT = "work/harmonised"


def c3_prepare(task: ClientTask) -> dict[str, Any]:
    config = task.config
    spec = runtime.task_spec(config)
    shutil.rmtree(runtime.client_path(config, task.client, C3_OUTPUT), ignore_errors=True)
    return {"input_path": task.input_path, "output_path": C3_OUTPUT, "target_classes": spec.target_classes,
            **_request_words(spec)}


def c3_finish(task: ClientTask, outcome: AgentOutcome) -> dict[str, Any]:
    out_dir = runtime.client_path(task.config, task.client, C3_OUTPUT)
    mappings = _mappings_from_calls(outcome, task.datasets)
    record = client_update(task.client, status="harmonised" if outcome.ok else "failed",
                          label_mappings=mappings, harmonised_path=C3_OUTPUT if outcome.ok else None,
                          training_input=C3_OUTPUT if outcome.ok else None,
                          stats=class_counts(out_dir) if outcome.ok else {})
    return {"clients": {task.client: record}}


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
        clients[name] = client_update(name, training_input=path, stats=stats)
    return {"clients": clients, "requirements": key.requirements.model_dump()}


def upstream_algorithm(config: RunConfig) -> str:
    """Per-phase mode: the algorithm the key's S3 would hand S4 (the first trainable acceptable one)."""
    from fl.registry import query

    acceptable = runtime.task_key(config).acceptable_algorithms
    trainable = {a.name for a in query(executable=True)}
    return next((a for a in acceptable if a in trainable), acceptable[0])


def _participants(state: WorkflowState) -> dict[str, ClientRecord]:
    return {n: r for n, r in state.clients.items() if r.training_input}


def s3_prepare(state: WorkflowState) -> dict[str, Any]:
    participants = _participants(state)
    stats = [f"{n}: {json.dumps(r.stats.get('class_counts', {}))}" for n, r in participants.items()]
    return {"request": state.request or _server_request(state.config), "clients": list(participants),
            "stats_paths": stats}


def s3_finish(state: WorkflowState, outcome: AgentOutcome) -> dict[str, Any]:
    result = outcome.result or {}
    return {"algorithm": result.get("algorithm"), "algorithm_reason": result.get("reason", "")[:300]}


def _s4_plan(state: WorkflowState) -> dict[str, Any]:
    # per-phase mode: S4 starts from the key's upstream (its algorithm), not from the model's S3
    algorithm = upstream_algorithm(state.config) if state.config.mode == "phase" else state.algorithm
    return {"algorithm": algorithm, "clients": sorted(_participants(state))}


def s4_prepare(state: WorkflowState) -> dict[str, Any] | Skip:
    config, plan = state.config, _s4_plan(state)
    if not plan["algorithm"] or not plan["clients"]:
        return Skip("no algorithm chosen" if not plan["algorithm"] else "no client with harmonised data")
    shutil.rmtree(runtime.server_path(config, "work/training"), ignore_errors=True)
    return {"algorithm": plan["algorithm"], "clients": list(_participants(state)), "rounds": config.rounds}


def s4_tools(state: WorkflowState) -> list:
    from tools.training import build_training_tools

    config = state.config
    if config.runtime == "deployment":  # the sites train on their own folders, named as the sites resolve them
        from graphs.remote import SiteTraining, site_reference

        refs = {n: site_reference(config, n, r.training_input) for n, r in _participants(state).items()}
        return build_training_tools(runtime.server_path(config, "work/training"), refs, rounds=config.rounds,
                                    local_epochs=config.local_epochs, seed=config.seed, device=config.device,
                                    network=config.network, image_size=config.train_image_size,
                                    remote=SiteTraining(config))
    data_dirs = {n: runtime.client_path(config, n, r.training_input) for n, r in _participants(state).items()}
    return build_training_tools(runtime.server_path(config, "work/training"), data_dirs, rounds=config.rounds,
                                local_epochs=config.local_epochs, seed=config.seed, device=config.device,
                                network=config.network, image_size=config.train_image_size)


def s4_finish(state: WorkflowState, outcome: AgentOutcome | None, skipped: str | None = None) -> dict[str, Any]:
    config, plan = state.config, _s4_plan(state)
    if skipped:
        return {"training": TrainingStatus(status=f"not started: {skipped}"), "training_plan": plan,
                "errors": [RunError(id=_id(config.run_id, "S4", "skip"), where="S4", message=skipped)]}
    return {"training": read_training_status(runtime.server_path(config, "work/training")), "training_plan": plan}


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


# --- what a person approves (``federate run --approve``) -----------------------------------------------

def _c2_removal(tool: str, task: ClientTask) -> Any:
    def what(args: dict[str, Any]) -> str:
        if tool == "remove_files":
            paths = [str(p) for p in args.get("paths") or []]
            shown = ", ".join(paths[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")
            return f"remove {len(paths)} file(s) at {task.client}: {shown}"
        if tool == "remove_flagged_files":
            from tools.quality import flagged_files
            from tools.sandbox import Workspace

            ws = Workspace(runtime.client_workspace(task.config, task.client),
                           runtime.client_work(task.config, task.client))
            files = flagged_files(ws, str(args.get("flags_file")), args.get("kinds"))
            shown = "; ".join(f"{f} ({kind})" for f, kind in files[:20]) + (
                f" and {len(files) - 20} more" if len(files) > 20 else "")
            return (f"remove {len(files)} file(s) flagged in {args.get('flags_file')} at {task.client}: "
                    f"{shown or 'none listed'}")
        return f"remove every file that is not a readable image under {args.get('path')} at {task.client}"
    return what


def c2_gates(task: ClientTask) -> dict[str, Any]:
    return {t: _c2_removal(t, task) for t in ("remove_files", "remove_flagged_files", "remove_non_image_files")}


def s4_gates(state: WorkflowState) -> dict[str, Any]:
    plan, rounds = _s4_plan(state), state.config.rounds

    def what(args: dict[str, Any]) -> str:
        clients = args.get("clients") or plan["clients"]
        return (f"train {args.get('algorithm') or plan['algorithm']} across {len(clients)} client(s) "
                f"({', '.join(clients)}) for {rounds} round(s)")
    return {"launch_training": what}


class AgentSpec(BaseModel):
    """One agent of the workflow: its role, its instruction and what its answer changes."""

    model_config = {"arbitrary_types_allowed": True}
    role: str
    #: the state the agent reads: the workflow's (server) or the client's task (client)
    side: str
    prepare: Any
    finish: Any
    #: tools beyond the role's own (S4's training tools), the parser (S2's), what a person approves
    extra_tools: Any = None
    parse: Any = None
    gates: Any = None


AGENTS: dict[str, AgentSpec] = {
    "S1": AgentSpec(role="S1", side="server", prepare=s1_prepare, finish=s1_finish),
    "C1": AgentSpec(role="C1", side="client", prepare=c1_prepare, finish=c1_finish),
    "S2": AgentSpec(role="S2", side="server", prepare=s2_prepare, finish=s2_finish, parse=s2_parse),
    "C2": AgentSpec(role="C2", side="client", prepare=c2_prepare, finish=c2_finish, gates=c2_gates),
    "C3": AgentSpec(role="C3", side="client", prepare=c3_prepare, finish=c3_finish),
    "S3": AgentSpec(role="S3", side="server", prepare=s3_prepare, finish=s3_finish),
    "S4": AgentSpec(role="S4", side="server", prepare=s4_prepare, finish=s4_finish, extra_tools=s4_tools,
                    gates=s4_gates),
}


# --- evaluation ---------------------------------------------------------------------------------------

def evaluate_node(state: WorkflowState, scorer: Any = None) -> dict[str, Any]:
    """Usage, timing and, with a ``scorer`` (``eval.scoring.score_run``: the graphs never import
    eval), the scores of this run."""
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
    if scorer is not None and not runtime.is_federation(state.config):  # a federation has no answer key
        scores.update(scorer(state))
    scores["evaluation_seconds"] = round(time.perf_counter() - t0, 3)
    return {"scores": scores}
