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
        work = self.site_work.get(name) or Path(data_dir).resolve().with_name(f"{Path(data_dir).name}.fedagentbench")
        args = [sys.executable, "-m", "fedagentbench_cli", "site", "serve", "--name", name, "--data", str(data_dir),
                "--superlink", f"{self.host}:{self.port}", "--ca", str(self.certs.ca_cert), "--key", str(key),
                "--work", str(work), "--log", str(work / "site_service.log")]
        if site is not None and site.data_card is not None:
            args += ["--card", str(site.data_card)]
        if self.model:
            args += ["--model", self.model]
        # the site writes its own log in its own folder: this process opens nothing of the site's
        return self._spawn(f"site_{name}", args, log_file=Path(os.devnull))


def _connection(address: str, ca: Path | None) -> str:
    tls = f'root-certificates = "{ca.resolve()}"\n' if ca else "insecure = true\n"
    return f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{tls}'


def _environment() -> dict[str, str]:
    repo = str(Path(__file__).resolve().parents[1])
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, **FLWR_ENV, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}


class EnvironmentSites(LocalDeployment):
    """A benchmark environment's hospitals as site services (``bench --runtime deployment``): each
    serves its folder of the built environment, so the scoring finds every output where it looks."""

    def __init__(self, env_dir: Path, workdir: Path) -> None:
        self.env_dir = Path(env_dir).resolve()
        names = sorted(p.name for p in (self.env_dir / "clients").iterdir() if p.is_dir())
        super().__init__([(n, str(self.env_dir / "clients" / n)) for n in names], workdir, secure=True)

    def start_supernode(self, name: str, data_dir: str | Path, private_key: str | Path | None = None):
        key = private_key or self.certs.supernode(name).private_key
        return self._spawn(f"site_{name}", [
            sys.executable, "-m", "fedagentbench_cli", "site", "serve", "--name", name, "--environment",
            str(self.env_dir), "--superlink", f"{self.host}:{self.port}", "--ca", str(self.certs.ca_cert),
            "--key", str(key)])


@contextmanager
def _relay(names: list[str], flwr_home: Path, env: dict[str, str], root: Path, log: Path, wait_s: float,
           say: Callable[[str], None]) -> Iterator:
    from federation.relay import start_relay

    say("submitting the coordinator's relay to the SuperLink")
    transport, run = start_relay(root / "relay", flwr_home, CONNECTION, log, env)
    try:
        say("greeting the sites")
        found = transport.sites(names, wait_s=wait_s)
        transport.missing = sorted(set(names) - set(found))
        if len(transport.missing) == len(names):
            raise FederationError(f"no site answered within {wait_s:.0f} s (logs: {root}); are the site "
                                  "services running and registered with this SuperLink?")
        yield transport
    finally:
        transport.close()
        try:
            run.wait(30)
        except Exception:  # noqa: BLE001 - `flwr run` may linger; the deployment's stop ends it
            run.kill()


@contextmanager
def connect(spec: FederationSpec, work: Path, target: str, *, ca: Path | None = None,
            wait_s: float = 180, progress: Callable[[str], None] | None = None) -> Iterator:
    """The sites' transport (a :class:`federation.relay.RelayTransport`) while the block runs.

    ``target``: ``local`` or the SuperLink's ``HOST:PORT`` (``ca``: the federation's CA certificate;
    without it the connection is insecure, which only a trial on one machine should use). Sites that
    have not answered after ``wait_s`` are reported; the run goes on with the others."""
    say = progress or (lambda _: None)
    root = Path(work).resolve() / "deployment"
    log = Path(work).resolve() / "messages.jsonl"
    names = [s.name for s in spec.sites]
    if target != "local":
        if ":" not in target:
            raise FederationError(f"--deployment {target!r}: give local or the SuperLink's HOST:PORT")
        flwr_home = root / "flwr_home"
        flwr_home.mkdir(parents=True, exist_ok=True)
        (flwr_home / "config.toml").write_text(_connection(target, ca), "utf-8")
        with _relay(names, flwr_home, _environment(), root, log, wait_s, say) as transport:
            yield transport
        return
    say("starting a SuperLink and one site service per site")
    sites = SiteProcesses(spec, root / "local").start()
    try:
        with _relay(names, Path(sites.env["FLWR_HOME"]), sites.env, root, log, wait_s, say) as transport:
            yield transport
    finally:
        sites.stop()


@contextmanager
def environment_sites(env_dir: Path, work: Path, wait_s: float = 300,
                      progress: Callable[[str], None] | None = None) -> Iterator:
    """A built environment's hospitals served as site processes, connected; runs on ``env_dir`` reach
    them while the block runs (graphs.remote.use_transport)."""
    from graphs.remote import use_transport

    say = progress or (lambda _: None)
    root = Path(work).resolve()
    say(f"starting {Path(env_dir).name}'s hospitals as site services")
    sites = EnvironmentSites(env_dir, root / "local").start()
    try:
        names = [name for name, _ in sites.clients]
        with _relay(names, Path(sites.env["FLWR_HOME"]), sites.env, root, root / "messages.jsonl", wait_s, say) as transport:
            if transport.missing:
                raise FederationError(f"site(s) {', '.join(transport.missing)} of {env_dir} did not start (logs: {root})")
            with use_transport(env_dir, transport):
                yield transport
    finally:
        sites.stop()
