"""`bench --runtime deployment`: a tiny environment's hospitals as site services (separate processes
over Flower, TLS and authenticated SuperNodes), the client agents and the training at the sites —
the skyline's sub-task results equal the simulation's (``python -m scripts.check_deployment_bench``,
run as a user runs it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_skyline_scores_the_same_on_the_deployment_as_in_simulation(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "scripts.check_deployment_bench", "--env", "xray", "--task",
                           "xray-pneumonia", "--guidance", "goal", "--models", "skyline", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1500, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "xray-pneumonia goal e2e" in proc.stdout and " yes " in proc.stdout
    assert (tmp_path / "deployment-skyline" / "deployment" / "xray" / "messages.jsonl").is_file()
