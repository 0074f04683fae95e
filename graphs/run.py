"""Run one task through the workflow as a checkpointed thread; resume it if it was interrupted."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from graphs.state import RunConfig

RECURSION_LIMIT = 200


def default_thread_id(config: RunConfig) -> str:
    env = Path(config.env_dir).name
    raw = f"{config.model}.{env}.{config.task_id}.{config.guidance}.{config.mode}.{config.run_id}"
    return re.sub(r"[^A-Za-z0-9_.:@-]+", "_", raw)[:200]


def run_task(config: RunConfig, db: str | Path, thread_id: str | None = None) -> dict[str, Any]:
    """The final state of the thread: started, resumed, or read back when it already finished."""
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    thread_id = thread_id or default_thread_id(config)
    cfg = {"configurable": {"thread_id": thread_id}, "recursion_limit": RECURSION_LIMIT}
    with sqlite_checkpointer(db) as saver:
        graph = compile_workflow(saver)
        snapshot = graph.get_state(cfg)
        if snapshot.values and not snapshot.next:
            return dict(snapshot.values)
        if snapshot.values:  # interrupted: carry on from the last checkpoint
            graph.invoke(None, cfg)
        else:
            graph.invoke({"config": config.model_dump()}, cfg)
        return dict(graph.get_state(cfg).values)


def thread_status(db: str | Path, thread_id: str) -> str:
    """'finished', 'interrupted' or 'new'."""
    from graphs.checkpoint import sqlite_checkpointer
    from graphs.workflow import compile_workflow

    with sqlite_checkpointer(db) as saver:
        snapshot = compile_workflow(saver).get_state({"configurable": {"thread_id": thread_id}})
    if not snapshot.values:
        return "new"
    return "interrupted" if snapshot.next else "finished"
