"""A coordinator's connection to its sites: an existing SuperLink, or a trial federation on this machine.

``--deployment HOST:PORT``: the sites already serve (``fedagentbench site serve`` at each hospital,
authenticated to that SuperLink); the coordinator runs on the SuperLink's machine and submits the
relay (federation.relay). ``--deployment local``: the real topology on one machine — a SuperLink
with TLS and SuperNode authentication (certificates generated, each site's key registered) and one
``site serve`` process per site, each with its own work folder (the YAML's ``work:``, by default
beside the site's folder) — so a practitioner can rehearse before the hospitals install anything.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from federation.spec import FederationError, FederationSpec
from fl.deploy import FLWR_ENV, LocalDeployment

#: the name of the SuperLink connection in the coordinator's ``flwr`` configuration
CONNECTION = "fedagentbench"


def site_work(spec: FederationSpec) -> dict[str, Path]:
    """Each site's work folder: the YAML's ``work:``, else beside its folder (never inside it)."""
    from federation.site_service import default_work

    return {s.name: (s.work or default_work(s.path)) for s in spec.sites}


class SiteProcesses(LocalDeployment):
    """A secured SuperLink and one ``fedagentbench site serve`` process per site, on this machine."""

    def __init__(self, spec: FederationSpec, workdir: Path, model: str | None = None) -> None:
        super().__init__([(s.name, str(s.path)) for s in spec.sites], workdir, secure=True)
        self.spec = spec
        self.site_work = site_work(spec)
        self.model = model

    def start_supernode(self, name: str, data_dir: str | Path, private_key: str | Path | None = None):
        site = next((s for s in self.spec.sites if s.name == name), None)
        key = private_key or self.certs.supernode(name).private_key
        args = [sys.executable, "-m", "fedagentbench_cli", "site", "serve", "--name", name, "--data", str(data_dir),
                "--superlink", f"{self.host}:{self.port}", "--ca", str(self.certs.ca_cert), "--key", str(key),
                "--work", str(self.site_work.get(name) or Path(data_dir).with_name(f"{Path(data_dir).name}.work"))]
        if site is not None and site.data_card is not None:
            args += ["--card", str(site.data_card)]
        if self.model:
            args += ["--model", self.model]
        return self._spawn(f"site_{name}", args)


def _connection(address: str, ca: Path | None) -> str:
    tls = f'root-certificates = "{ca.resolve()}"\n' if ca else "insecure = true\n"
    return f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{tls}'


def _environment() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **FLWR_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}


@contextmanager
def connect(spec: FederationSpec, work: Path, target: str, *, ca: Path | None = None,
            wait_s: float = 180, progress: Callable[[str], None] | None = None) -> Iterator:
    """The sites' transport (a :class:`federation.relay.RelayTransport`) while the block runs.

    ``target``: ``local`` or the SuperLink's ``HOST:PORT`` (``ca``: the federation's CA certificate;
    without it the connection is insecure, which only a trial on one machine should use). Sites that
    have not answered after ``wait_s`` are reported; the run goes on with the others."""
    from federation.relay import start_relay

    say = progress or (lambda _: None)
    root = Path(work).resolve() / "deployment"
    sites: SiteProcesses | None = None
    if target == "local":
        say("starting a SuperLink and one site service per site")
        sites = SiteProcesses(spec, root / "local").start()
        flwr_home, env = Path(sites.env["FLWR_HOME"]), sites.env
    else:
        if ":" not in target:
            raise FederationError(f"--deployment {target!r}: give local or the SuperLink's HOST:PORT")
        flwr_home, env = root / "flwr_home", _environment()
        flwr_home.mkdir(parents=True, exist_ok=True)
        (flwr_home / "config.toml").write_text(_connection(target, ca), "utf-8")
    try:
        say("submitting the coordinator's relay to the SuperLink")
        transport, run = start_relay(root / "relay", flwr_home, CONNECTION, Path(work).resolve() / "messages.jsonl",
                                     env)
        try:
            say("greeting the sites")
            found = transport.sites([s.name for s in spec.sites], wait_s=wait_s)
            transport.missing = sorted({s.name for s in spec.sites} - set(found))
            if len(transport.missing) == len(spec.sites):
                raise FederationError(f"no site answered within {wait_s:.0f} s (logs: {root}); are the site "
                                      "services running and registered with this SuperLink?")
            yield transport
        finally:
            transport.close()
            try:
                run.wait(30)
            except Exception:  # noqa: BLE001 - `flwr run` may linger; the deployment's stop ends it
                run.kill()
    finally:
        if sites is not None:
            sites.stop()
