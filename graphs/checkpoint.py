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
    try:
        saver = SqliteSaver(conn, serde=serializer())
        _prepare(conn, saver)
        yield saver
    finally:
        conn.close()


def _prepare(conn: sqlite3.Connection, saver, attempts: int = 20) -> None:
    """WAL mode, busy timeout and the saver's tables. Two runs opening a new file at once can meet
    SQLite's "database is locked" without any wait (switching the journal mode, or two transactions
    upgrading to write at once: the busy timeout does not apply), so those steps are retried."""
    import random
    import time

    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA journal_mode=WAL")
            # commits reach the WAL without an fsync each: safe against a killed process (only a power
            # cut can lose the last commits), and parallel runs stop queueing behind each other's fsyncs
            conn.execute("PRAGMA synchronous=NORMAL")
            saver.setup()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == attempts - 1:
                raise
            conn.rollback()
            time.sleep(0.05 * (attempt + 1) * (1 + random.random()))
