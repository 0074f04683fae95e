"""SQLite checkpointing for workflow runs (WAL and a busy timeout, so parallel writers wait)."""

from __future__ import annotations

import shlex
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


class DamagedDatabase(ValueError):
    """A checkpoint file SQLite cannot read (truncated by a full disk, overwritten, not a database)."""


def check_database(path: str | Path) -> None:
    """Raise :class:`DamagedDatabase` (one line: the file and SQLite's words) when the file at ``path``
    exists and is not a sound SQLite database; a missing or empty file is fine (it is created).

    The file is opened read-only and checked with ``PRAGMA quick_check``: a damaged database
    otherwise fails every run that touches it ("database disk image is malformed"), on every rerun."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    problem = None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        try:
            rows = conn.execute("PRAGMA quick_check(3)").fetchall()
        finally:
            conn.close()
        if [tuple(r) for r in rows] != [("ok",)]:
            problem = "; ".join(str(r[0]) for r in rows) or "quick_check gave no answer"
    except sqlite3.OperationalError as exc:  # locked or busy: another run is writing, not damage
        if "locked" in str(exc) or "busy" in str(exc):
            return
        problem = str(exc)
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        problem = str(exc)
    if problem:
        raise DamagedDatabase(f"the checkpoint database {path} is damaged ({problem})")


def afresh_command(path: str | Path) -> str:
    """The shell command that moves a damaged checkpoint file aside, with its -wal and -shm files (a
    stale write-ahead log beside a new database would be replayed into it)."""
    path = Path(path)
    aside = path.parent / f"{path.stem}-damaged"
    return f"mkdir -p {shlex.quote(str(aside))} && mv {shlex.quote(str(path))}* {shlex.quote(str(aside))}/"
