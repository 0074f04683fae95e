"""The workflow's shared state: configs, paths and status messages only.

Reducers are idempotent (merge by key or by record id), so a phase subgraph that hands its whole
state back to the parent, or a resumed super-step that writes again, never duplicates anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agents.runner import merge_by_id

PHASES: tuple[str, ...] = ("selection", "preprocessing", "harmonisation", "training")


class RunConfig(BaseModel):
    """Everything a run needs to know, as plain values (it is checkpointed with the state)."""

    env_dir: str
    task_id: str
    guidance: Literal["fine", "goal"] = "goal"
    model: str = "heuristic"
    #: "e2e": each phase uses what the previous phases produced; "phase": each starts from the key
    mode: Literal["e2e", "phase"] = "e2e"
    run_id: str = "run"
    rounds: int = 1
    local_epochs: int = 1
    budget: int = 16
    temperature: float = 0.0
    seed: int = 0
    #: offer every agent a ``submit_answer`` tool beside the text protocol (forced on its last call)
    submit_tool: bool = True
    #: one model request's time limit, and retries of transient provider errors
    timeout_s: float = 120.0
    retries: int = 5
    #: harness outputs, outside every workspace: the run's transcript (JSONL) and the response cache
    transcript_path: str | None = None
    cache_dir: str | None = None
    #: pause for a person before C2 removes files and before S4 starts training (never in a bench)
    approve: bool = False
    #: where the client agents run: in this process ("simulation"), or at each hospital's site
    #: service, reached through Flower ("deployment", see graphs.remote)
    runtime: Literal["simulation", "deployment"] = "simulation"
    #: set once when a run starts (kept on resume): a site tells a resumed run's repeated request
    #: from a new run's, so it answers the first from its own checkpoint instead of running again
    attempt: str = ""
    #: the model a hospital's site service gives its client agents (``site serve --model``); the run's
    #: folders keep the run's own model name, so both sides name them alike
    site_model: str | None = None
    #: S4's training: where the clients train, the network, its input size (None: the images' own, 28-64)
    device: str = "auto"
    network: str = "default"
    train_image_size: int | None = None


class ClientRecord(BaseModel):
    """One hospital as the server sees it: statuses and paths, never data."""

    name: str
    status: str = "pending"
    selected_datasets: list[str] = Field(default_factory=list)
    selection_reason: str = ""
    #: whether C1 answered at all ("no dataset" is an answer; a failed agent is not)
    c1_answered: bool = False
    approved: bool | None = None
    #: what each phase works on: the previous phase's output (e2e) or the answer key's (per-phase mode)
    work_datasets: list[str] = Field(default_factory=list)
    cleaned_path: str | None = None
    cleaning_summary: str = ""
    harmonisation_input: str | None = None
    label_mappings: dict[str, dict[str, str | None]] = Field(default_factory=dict)
    harmonised_path: str | None = None
    training_input: str | None = None
    stats: dict[str, Any] = Field(default_factory=dict)


class TrainingStatus(BaseModel):
    started: bool = False
    completed: bool = False
    algorithm: str | None = None
    status: str = "not started"
    result_path: str | None = None
    final_metrics: dict[str, float] = Field(default_factory=dict)
    #: the clients the training ran on
    clients: list[str] = Field(default_factory=list)


class PhaseTiming(BaseModel):
    id: str
    phase: str
    seconds: float


class RunError(BaseModel):
    id: str
    where: str
    message: str


def client_update(name: str, **fields: Any) -> dict[str, Any]:
    """A change to one client's record: the fields given, validated, as a plain dict. Updates are
    dicts because a checkpoint restores a pydantic record with every field marked as set, which
    would turn a partial update read back after a crash into a reset of the other fields."""
    record = ClientRecord(name=name, **fields)
    return {"name": name, **record.model_dump(include=set(fields))}


def merge_clients(left: dict[str, ClientRecord] | None,
                  right: dict[str, ClientRecord | dict[str, Any]] | None) -> dict[str, ClientRecord]:
    """Per-client merge: a dict (:func:`client_update`) changes only its fields; a record replaces
    the fields it set (a whole record, as a subgraph hands its state back, replaces them all)."""
    out = dict(left or {})
    for name, record in (right or {}).items():
        changed = dict(record) if isinstance(record, dict) else record.model_dump(exclude_unset=True)
        if name in out:
            out[name] = out[name].model_copy(update=ClientRecord.model_validate(
                {**out[name].model_dump(), **changed}).model_dump(include=set(changed)))
        else:
            out[name] = ClientRecord.model_validate({"name": name, **changed})
    return out


def merge_client_updates(left: dict[str, dict[str, Any]] | None,
                         right: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """A client agent's own record of its changes (still dicts, so its phase merges only those)."""
    out = {name: dict(fields) for name, fields in (left or {}).items()}
    for name, fields in (right or {}).items():
        out[name] = {**out.get(name, {}), **(fields if isinstance(fields, dict) else
                                            fields.model_dump(exclude_unset=True))}
    return out


class WorkflowState(BaseModel):
    """The state every phase graph reads and writes."""

    config: RunConfig
    request: str = ""
    #: what the broadcast is made from (per-phase mode: the key's, from the training phase on)
    requirements: dict[str, Any] | None = None
    #: S1's own answer, kept apart so that scoring never credits the key's requirements to the model
    s1_answer: dict[str, Any] | None = None
    #: S2's view: client -> whether its reply named a dataset; S2's own approvals (None: no answer)
    s2_shown: dict[str, bool] = Field(default_factory=dict)
    s2_answer: list[str] | None = None
    clients: Annotated[dict[str, ClientRecord], merge_clients] = Field(default_factory=dict)
    algorithm: str | None = None
    algorithm_reason: str = ""
    training: TrainingStatus = Field(default_factory=TrainingStatus)
    #: what S4 was asked to train: the algorithm (S3's, or the key's in per-phase mode) and the clients
    training_plan: dict[str, Any] = Field(default_factory=dict)
    #: one outcome summary per agent run (role, client, ok, error, steps, tool calls, tokens)
    agents: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    timings: Annotated[list[PhaseTiming], merge_by_id] = Field(default_factory=list)
    errors: Annotated[list[RunError], merge_by_id] = Field(default_factory=list)
    privacy: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    #: a person's decisions on the calls they were asked to approve (``federate run --approve``)
    approvals: Annotated[list[dict[str, Any]], merge_by_id] = Field(default_factory=list)
    scores: dict[str, Any] | None = None
