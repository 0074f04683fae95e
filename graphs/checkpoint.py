"""SQLite checkpointing for workflow runs (WAL and a busy timeout, so parallel writers wait)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


#: the state's own types, allowed to be restored from a checkpoint (nothing else is)
STATE_TYPES = [("graphs.state", name) for name in ("ClientRecord", "TrainingStatus", "PhaseTiming", "RunError",
                                                  "RunConfig", "WorkflowState")] + [("graphs.phases", "ClientTask")]


def serializer():
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)


@contextmanager
def sqlite_checkpointer(path: str | Path) -> Iterator:
    """A ``SqliteSaver`` on the file at ``path`` (created with its folder if missing)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=60000")
    try:
        saver = SqliteSaver(conn, serde=serializer())
        saver.setup()
        yield saver
    finally:
        conn.close()
