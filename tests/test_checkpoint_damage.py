"""A damaged checkpoint database (truncated by a full disk, overwritten) is named in one line, with
what ``results.jsonl`` still holds and how to start afresh, instead of failing every run on every
rerun as an "infrastructure error". Driven as a user drives it: the CLI as a subprocess."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from environments.tasks import tasks_for
from eval.store import RESULTS
from graphs.checkpoint import DamagedDatabase, check_database, sqlite_checkpointer

REPO = Path(__file__).resolve().parents[1]
TASK = tasks_for("xray")[0].task_id


def _cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedagentbench_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def _database(path: Path, rows: int = 400) -> Path:
    """A sound checkpoint database of several pages."""
    with sqlite_checkpointer(path):
        pass
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(200),) for _ in range(rows)])
    conn.commit()
    conn.close()
    return path


def test_check_database_passes_sound_and_missing_files_and_names_damaged_ones(tmp_path: Path) -> None:
    check_database(tmp_path / "missing.sqlite")  # created on first use
    (tmp_path / "empty.sqlite").touch()
    check_database(tmp_path / "empty.sqlite")  # SQLite's empty database
    sound = _database(tmp_path / "sound.sqlite")
    check_database(sound)

    truncated = _database(tmp_path / "truncated.sqlite")
    with truncated.open("r+b") as fh:  # what a full disk leaves
        fh.truncate(8192)
    with pytest.raises(DamagedDatabase, match="malformed") as caught:
        check_database(truncated)
    assert str(truncated) in str(caught.value) and "\n" not in str(caught.value)

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(5000))
    with pytest.raises(DamagedDatabase, match="not a database"):
        check_database(garbage)


def test_a_damaged_bench_database_is_named_once_and_moving_it_aside_resumes_the_bench(tiny_envs: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "bench"
    target = out / "envs" / "tiny-seed0" / "xray"  # its own copy: runs write inside the environment
    shutil.copytree(tiny_envs / "xray", target, ignore=shutil.ignore_patterns("work"))
    bench = ["bench", "--model", "oracle", "--scale", "tiny", "--env", "xray", "--task", TASK, "--out", str(out)]
    first = _cli(*bench, "--guidance", "fine")
    assert first.returncode == 0, first.stdout + first.stderr
    db = out / "checkpoints.sqlite"
    assert db.is_file() and (out / RESULTS).read_text().count("\n") == 1

    with db.open("r+b") as fh:  # the disk filled up mid-write
        fh.truncate(4096 * 2)
    damaged = _cli(*bench, "--guidance", "fine,goal")
    assert damaged.returncode == 2, damaged.stdout + damaged.stderr
    lines = _lines(damaged)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("error: ") and str(db) in line and "malformed" in line
    assert f"{out / RESULTS} still holds 1 run line(s) (1 finished" in line
    assert "afresh" in line and "mv " in line
    assert (out / RESULTS).read_text().count("\n") == 1  # nothing was recorded as an infrastructure error

    run = _cli("run", "--env", str(target), "--task", TASK, "--model", "oracle", "--guidance", "fine", "--db", str(db))
    assert run.returncode == 2 and len(_lines(run)) == 1 and str(db) in _lines(run)[0], _lines(run)

    command = line.split("`")[1]  # the advice, followed to the letter
    moved = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=False)
    assert moved.returncode == 0, moved.stderr
    assert not db.exists() and not Path(f"{db}-wal").exists()
    again = _cli(*bench, "--guidance", "fine,goal")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs in the matrix, 1 already finished, 1 to run" in again.stdout
    ran = [line.split()[2] for line in again.stdout.splitlines() if line.startswith("xray ")]
    assert ran == ["goal"]  # the finished run was kept, not run again
    assert (out / RESULTS).read_text().count("\n") == 2


def test_federate_run_names_a_damaged_database(tmp_path: Path) -> None:
    site = tmp_path / "hospital_a"
    site.mkdir()
    yaml_file = tmp_path / "federation.yaml"
    yaml_file.write_text(f'request: "Train a pneumonia classifier."\nclasses: [normal, pneumonia]\n'
                         f'sites:\n  - name: hospital_a\n    path: "{site}"\n')
    work = tmp_path / "work"
    work.mkdir()
    db = work / "checkpoints.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    proc = _cli("federate", "run", str(yaml_file), "--work", str(work))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = _lines(proc)
    assert len(lines) == 1 and str(db) in lines[0] and "afresh" in lines[0], lines
    assert not (work / "federation").exists()  # refused before anything was prepared
