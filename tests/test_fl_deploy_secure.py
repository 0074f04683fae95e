"""The secured deployment: TLS from our own CA on the SuperLink, and SuperNode authentication that
admits only registered keys; plus ``fedagentbench deploy certs``."""

from __future__ import annotations

import re
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fl.certs import generate_federation_certs
from fl.deploy import LocalDeployment, marked_pids
from fl.runner import TrainConfig, TrainResult, resolve
from fl.testing import make_federation

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _tls_peer(host: str, port: int, cafile: str | None) -> dict:
    """The SuperLink's certificate as seen by a client trusting only ``cafile`` (None: the system's CAs)."""
    context = ssl.create_default_context(cafile=cafile)  # with a cafile, only that CA is trusted
    with socket.create_connection((host, port), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host) as s:
        return s.getpeercert()


@pytest.mark.slow
def test_secured_training_admits_only_registered_supernodes(tmp_path, monkeypatch):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr_home"))
    certs = generate_federation_certs(tmp_path / "certs", ["hospital_0", "hospital_1", "intruder"])
    dirs, _ = make_federation(tmp_path / "data", n_clients=2, per_class=12)
    clients = [{"name": f"hospital_{i}", "data_dir": d} for i, d in enumerate(dirs)]
    plan = resolve(TrainConfig(clients=clients, algorithm="FedAvg", rounds=1, out_dir=tmp_path / "run"))
    deployment = LocalDeployment(
        [(c["name"], c["data_dir"]) for c in plan["clients"]], tmp_path / "deploy", secure=True, certs=certs
    )
    seen: set[int] = set()
    try:
        deployment.start()
        # TLS: the chain verifies against our CA only, with the SAN for 127.0.0.1
        peer = _tls_peer("127.0.0.1", deployment.port, str(certs.ca_cert))
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_peer("127.0.0.1", deployment.port, None)
        assert sorted(deployment.node_ids) == ["hospital_0", "hospital_1"]

        intruder = deployment.start_supernode("intruder", dirs[0], certs.supernode("intruder").private_key)
        result = TrainResult.model_validate(deployment.run([plan], timeout=600)[0])
        assert intruder.wait(timeout=60) != 0, "a SuperNode with an unregistered key kept running"
        seen = set(marked_pids(deployment.marker)) | deployment.started_pids
    finally:
        left = deployment.stop()
    assert left == []
    assert not [pid for pid in seen if _alive(pid)], "a deployment process survived stop()"
    assert result.status == "completed", result.error
    assert len(result.rounds) == 1
    assert sorted(result.final.clients) == ["hospital_0", "hospital_1"]

    link_log = (tmp_path / "deploy" / "superlink.log").read_text(errors="replace")
    activated = {int(n) for n in re.findall(r"Activated node_id=(\d+)", link_log)}
    assert activated == set(deployment.node_ids.values()), "only the registered SuperNodes may come online"
    assert "No SuperNode found with the given public key" in link_log


def test_cli_deploy_certs(tmp_path):
    out = tmp_path / "fed"

    def cli(*extra: str) -> subprocess.CompletedProcess:
        args = [sys.executable, "-m", "fedagentbench_cli", "deploy", "certs", "--out", str(out), *extra]
        return subprocess.run(args, check=False, cwd=REPO, capture_output=True, text=True, timeout=120)

    first = cli("--supernodes", "hospital_a,hospital_b", "--host", "coordinator.example.org")
    assert first.returncode == 0, first.stderr
    for name in ("ca.crt", "superlink.crt", "supernodes/hospital_a.pub", "supernodes/hospital_b.pub"):
        assert (out / name).is_file(), name
    for name in ("ca.key", "superlink.key", "supernodes/hospital_a", "supernodes/hospital_b"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
        assert str(out / name) in first.stdout
    before = (out / "ca.crt").read_bytes()

    again = cli("--supernodes", "hospital_c")
    assert again.returncode == 2
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == [again.stderr.strip()]
    assert (out / "ca.crt").read_bytes() == before and not (out / "supernodes" / "hospital_c").exists()

    bad = cli("--supernodes", "ok,../escape", "--force")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "../escape" in bad.stderr
    assert (out / "ca.crt").read_bytes() == before, "a rejected call must leave the existing keys alone"

    forced = cli("--supernodes", "hospital_c", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "supernodes" / "hospital_c").exists() and not (out / "supernodes" / "hospital_a").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "fed"], "no staging folder may be left behind"
