"""`bench --runtime deployment`: a tiny environment's hospitals as site services (separate processes
over Flower, TLS and authenticated SuperNodes), the client agents and the training at the sites;
the oracle passes every sub-task there, as in simulation. (The skyline beside the simulation, every
sub-task: ``python -m scripts.check_deployment_bench``, figures in the README.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_oracle_passes_every_subtask_with_its_hospitals_as_site_services(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "bench", "--model", "oracle", "--env", "xray",
                           "--task", "xray-pneumonia", "--guidance", "goal", "--runtime", "deployment",
                           "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=1500,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    (result,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert not result.get("failed") and all(result["subtasks"].values()), result["subtasks"]
    assert json.loads((tmp_path / "manifest.json").read_text())["settings"]["runtime"] == "deployment"
    log = [json.loads(line) for line in (tmp_path / "deployment" / "xray" / "messages.jsonl").read_text().splitlines()]
    agents = {(e["site"], e["content"]["role"]) for e in log if e["direction"] == "to" and e["kind"] == "agent"}
    assert {role for _, role in agents} == {"C1", "C2", "C3"}  # every client agent ran at a site
    assert any(e["kind"] == "train" for e in log)
