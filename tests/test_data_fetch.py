"""``fedagentbench data fetch`` against a local HTTP server serving small MedMNIST-shaped files:
resumed downloads, checksum mismatches and missing files, and never a half-written pool."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from environments.fetch import SOURCES, FetchError, Source, fetch_pool
from environments.pools import ImagePool, resolve_data_dir, verify_real_file

REPO = Path(__file__).resolve().parents[1]


def _medmnist_file(seed: int = 0) -> bytes:
    """A tiny file laid out as MedMNIST publishes it (labels as (N, 1))."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 40), ("val", 10), ("test", 20)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


class FixtureServer:
    """Serves ``files`` with Range support; ``cut`` makes the next response stop after that many bytes."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.cut, self.ranges = files, None, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = owner.files.get(self.path.lstrip("/").split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                spec = self.headers.get("Range")
                owner.ranges.append(spec)
                if spec:
                    start = int(spec.removeprefix("bytes=").split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if owner.cut is not None:
                    payload, owner.cut = payload[:owner.cut], None
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    payload = _medmnist_file()
    srv = FixtureServer({"pneumoniamnist.npz": payload, "broken.npz": payload[:-50] + b"x" * 50})
    yield srv, payload
    srv.close()


def _source(payload: bytes, remote: str = "pneumoniamnist.npz") -> Source:
    return SOURCES["xray"].model_copy(update={"remote": remote, "md5": hashlib.md5(payload).hexdigest()})


def test_an_interrupted_download_resumes_and_installs_a_verified_pool(server, tmp_path: Path) -> None:
    srv, payload = server
    folder = tmp_path / "pools"
    srv.cut = len(payload) // 2
    with pytest.raises(FetchError, match="interrupted after .* run the same command again to resume"):
        fetch_pool(_source(payload), folder, mirror=srv.url)
    assert not (folder / "xray_pneumoniamnist_28.npz").exists() and not (folder / "SHA256SUMS").exists()
    assert (folder / ".partial" / "pneumoniamnist.npz.part").stat().st_size == len(payload) // 2

    path = fetch_pool(_source(payload), folder, mirror=srv.url)
    assert srv.ranges[-1] == f"bytes={len(payload) // 2}-"  # resumed, not started over
    assert verify_real_file(folder, path.name) is None  # SHA256SUMS written and matching
    assert not list((folder / ".partial").iterdir())
    pool = ImagePool("xray", seed=1, data_dir=folder)
    assert pool.is_real and pool.available(0) == 35 and pool.available(1) == 35


def test_a_checksum_mismatch_or_a_missing_file_leaves_no_pool(server, tmp_path: Path) -> None:
    srv, payload = server
    folder = tmp_path / "pools"
    with pytest.raises(FetchError, match="checksum mismatch .* no pool written"):
        fetch_pool(_source(payload, remote="broken.npz"), folder, mirror=srv.url)
    with pytest.raises(FetchError, match=r"not found at .*HTTP 404"):
        fetch_pool(_source(payload, remote="absent.npz"), folder, mirror=srv.url)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == []  # nothing half-written, nothing kept
    with pytest.raises(FetchError, match="cannot reach"):
        fetch_pool(_source(payload), folder, mirror="http://127.0.0.1:9", timeout=5)


@pytest.mark.slow  # the CLI and an environment build
def test_cli_names_the_mismatch_and_builds_find_fetched_pools_by_default(server, tmp_path: Path, monkeypatch) -> None:
    srv, payload = server
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("FEDAGENTBENCH_DATA", None)
    # the fixture is not the published file: the official checksum refuses it
    proc = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "data", "fetch", "--only", "xray",
                           "--mirror", srv.url], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "checksum mismatch" in proc.stderr and "published 28209eda" in proc.stderr
    cache = tmp_path / "cache" / "fedagentbench" / "pools"
    assert not (cache / "xray_pneumoniamnist_28.npz").exists()
    bad = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "data", "fetch", "--only", "mri"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no fetchable pool for mri" in bad.stderr

    # a pool installed in the user cache is what a build uses when nothing else is named
    monkeypatch.delenv("FEDAGENTBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fetch_pool(_source(payload), cache, mirror=srv.url)
    assert resolve_data_dir(None) == cache
    status = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "data", "status"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "xray" in status.stdout and "missing" in status.stdout  # the others are not there
    built = subprocess.run([sys.executable, "-m", "fedagentbench_cli", "envs", "build", "--modality", "ultrasound",
                            "--out", str(tmp_path / "envs")], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "warning: procedural images, not real ones, for ultrasound" in built.stderr


def test_dermamnist_is_relabelled_to_melanoma_and_used_when_the_isic_pool_is_absent(tmp_path: Path) -> None:
    """HAM10000's seven diagnoses become the dermatoscopy pool's two classes (melanoma 1; naevi and
    benign keratoses 0; the rest left out), and a build without the ISIC 2017 file draws from it."""
    rng = np.random.default_rng(4)
    arrays = {}
    for split, n in (("train", 70), ("val", 14), ("test", 28)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 7).reshape(n, 1).astype(np.uint8)  # akiec..vasc in turn
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    payload = buf.getvalue()
    srv = FixtureServer({"dermamnist_64.npz": payload})
    try:
        source = SOURCES["dermatoscopy"].model_copy(update={"md5": hashlib.md5(payload).hexdigest()})
        path = fetch_pool(source, tmp_path / "pools", mirror=srv.url)
    finally:
        srv.close()
    assert path.name == "dermatoscopy_dermamnist_melanoma_64.npz"
    with np.load(path) as pool:
        for split, n in (("train", 70), ("val", 14), ("test", 28)):
            original = np.arange(n) % 7
            kept = np.isin(original, [2, 4, 5])
            assert pool[f"{split}_labels"].tolist() == [1 if v == 4 else 0 for v in original[kept]]
            assert (pool[f"{split}_images"] == arrays[f"{split}_images"][kept]).all()
    pool = ImagePool("dermatoscopy", seed=0, data_dir=tmp_path / "pools")
    assert pool.is_real and pool.info.source == path.name
    assert pool.available(1) == 10 + 2 + 4 and pool.available(0) == 20 + 4 + 8
