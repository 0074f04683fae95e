"""Run one task through the workflow as a checkpointed thread; resume it if it was interrupted."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphs.state import RunConfig

RECURSION_LIMIT = 200


def default_thread_id(config: RunConfig) -> str:
    env = Path(config.env_dir).name
    raw = f"{config.model}.{env}.{config.task_id}.{config.guidance}.{config.mode}.{config.run_id}"
    return re.sub(r"[^A-Za-z0-9_.:@-]+", "_", raw)[:200]


def transcript_path(db: str | Path, thread_id: str) -> Path:
    """Where a thread's transcript goes: ``transcripts/`` beside the checkpoint file, outside every
    workspace (no agent can read another run's conversation)."""
    from agents.transcript import transcript_path as in_folder

    return in_folder(Path(db).resolve().parent / "transcripts", thread_id)


def run_task(config: RunConfig, db: str | Path, thread_id: str | None = None,
             progress: Callable[[str], None] | None = None,
             ask: Callable[[dict[str, Any]], Any] | None = None, scorer: Callable[[Any], dict] | None = None,
             on_end: Callable[[str | None], None] | None = None) -> dict[str, Any]:
    """The final state of the thread: started, resumed, or read back when it already finished.

    The agents' conversations go to :func:`transcript_path` (JSONL). ``progress`` hears the name of every node as it starts (an
    agent, e.g. ``c2`` for a client's cleaner, or a phase's entry). With ``config.approve`` an agent
    pauses before a gated tool call (a checkpointed interrupt); ``ask`` gets each question and
    returns the person's decision, and the run goes on. A thread paused in an earlier process asks
    its open questions first. ``scorer`` is the evaluation node's (:func:`eval.runs.run_task` passes
    the benchmark's); ``on_end`` hears the transcript path when the run ends, however it ends."""
    from langgraph.types import Command

    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    thread_id = thread_id or default_thread_id(config)
    if config.transcript_path is None:
        config = config.model_copy(update={"transcript_path": str(transcript_path(db, thread_id))})
    from agents.loop import recursion_limit

    # every subgraph gets this many steps: an agent's own (model, tools, approvals) bound it
    cfg = {"configurable": {"thread_id": thread_id}, "recursion_limit": max(RECURSION_LIMIT,
                                                                           recursion_limit(config.budget))}
    try:
        with sqlite_checkpointer(db) as saver:
            graph = compile_workflow(saver, scorer, remote=config.runtime == "deployment")
            snapshot = graph.get_state(cfg)
            if snapshot.values and not snapshot.next:
                return dict(snapshot.values)
            if not snapshot.values and not config.attempt:  # a new run (a resumed one keeps its own)
                import uuid

                config = config.model_copy(update={"attempt": uuid.uuid4().hex[:12]})
            start: Any = None if snapshot.values else {"config": config.model_dump()}  # None: resume
            while True:
                questions = list(snapshot.interrupts) if snapshot.values else []
                if questions and ask is not None:  # answer what the run waits for, then go on
                    start = Command(resume={q.id: ask(q.value) for q in questions})
                elif questions:
                    return dict(snapshot.values)  # paused: the caller has nobody to ask
                # "sync": every finished step (an agent's model call, its tool calls) is on disk before
                # the next starts, so a killed run resumes after its last finished step
                if progress is None:
                    graph.invoke(start, cfg, durability="sync")
                else:
                    for _, event in graph.stream(start, cfg, stream_mode="tasks", subgraphs=True, durability="sync"):
                        if "input" in event and "result" not in event:  # a task starts
                            progress(_describe_task(event))
                snapshot = graph.get_state(cfg)
                if not snapshot.interrupts:
                    return dict(snapshot.values)
    finally:
        if on_end is not None:
            on_end(config.transcript_path)


def _describe_task(event: dict[str, Any]) -> str:
    name = str(event.get("name", "?"))
    task = event.get("input")
    client = getattr(task, "client", None) or (task.get("client") if isinstance(task, dict) else None)
    return f"{name} at {client}" if client else name


def saved_config(db: str | Path, thread_id: str) -> RunConfig | None:
    """The config a thread was started with (None: no such thread); a resumed run keeps it."""
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    if not Path(db).is_file():
        return None
    with sqlite_checkpointer(db) as saver:
        values = compile_workflow(saver).get_state({"configurable": {"thread_id": thread_id}}).values
    config = values.get("config") if values else None
    return RunConfig.model_validate(config) if isinstance(config, dict) else config


def pending_questions(db: str | Path, thread_id: str) -> list[dict[str, Any]]:
    """What a paused thread waits for a person to decide (``federate run --approve``)."""
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    with sqlite_checkpointer(db) as saver:
        snapshot = compile_workflow(saver).get_state({"configurable": {"thread_id": thread_id}})
    return [q.value for q in snapshot.interrupts]


def thread_status(db: str | Path, thread_id: str) -> str:
    """'finished', 'interrupted' or 'new'."""
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    with sqlite_checkpointer(db) as saver:
        snapshot = compile_workflow(saver).get_state({"configurable": {"thread_id": thread_id}})
    if not snapshot.values:
        return "new"
    return "interrupted" if snapshot.next else "finished"
