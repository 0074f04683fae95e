"""How the coordinator reaches the hospitals' site services: a Flower ServerApp that relays.

The coordinator process runs the LangGraph workflow (checkpoints, progress, a person's approvals);
its client nodes need to reach the sites' SuperNodes, which only a ServerApp can address. So
``RelayTransport.start`` submits one Flower run (``flwr run``) whose ServerApp, :data:`relay_app`,
listens on a loopback port with a secret token and turns each request into Flower messages:

    coordinator ──HTTP (127.0.0.1, token)──▶ relay ServerApp ──Flower Message API (TLS)──▶ site SuperNode
    agent task / data_shape / report                 ``query`` message                 C1-C3, describe, report
    training plan                                    ``train`` / ``evaluate`` messages   local training

The relay runs where the SuperLink runs (SuperExec starts ServerApps on its machine), and so does
the coordinator. Every request and reply is written to the coordinator's message log and checked by
the privacy auditor there (``messages.jsonl``); the sites have withheld what is private already
(federation.site_service.SiteGuard).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fl.deploy import app_pyproject
from graphs.remote import PROTOCOL, SiteUnavailable

#: how long an agent's request may take at a site (an LLM agent's whole run)
ASK_TIMEOUT_S = 6 * 3600.0
#: the relay stops when the coordinator has not been heard for this long (it pings every 10 s)
IDLE_S = 120.0
APP_PYPROJECT = app_pyproject("fedagentbench-sites", "FedAgentBench: the coordinator's relay and the hospitals' "
                              "site services (installed code)", "federation.relay:relay_app",
                              "federation.site_service:client_app", "relay-file")


# --- the relay (inside the ServerApp) -------------------------------------------------------------------

class Relay:
    """The grid's messages, one request at a time per call, safe to use from several threads."""

    def __init__(self, grid: Any, poll_s: float = 0.2) -> None:
        self.grid = grid
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self.sites: dict[str, int] = {}  # site name -> node id, from each node's own hello

    def push_and_wait(self, messages: list[Any], timeout: float | None) -> list[Any]:
        with self._lock:
            ids = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while ids and (deadline is None or time.monotonic() < deadline):
            time.sleep(self.poll_s)
            with self._lock:
                got = list(self.grid.pull_messages(ids))
            replies += got
            ids -= {m.metadata.reply_to_message_id for m in got}
        return replies

    def _query(self, node: int, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        from flwr.app import ConfigRecord, Message, RecordDict

        from federation.site_service import KEY, RECORD, read_payload

        msg = Message(content=RecordDict({RECORD: ConfigRecord({KEY: json.dumps(request)})}),
                      dst_node_id=node, message_type="query")
        replies = self.push_and_wait([msg], timeout)
        if not replies:
            raise SiteUnavailable(f"no reply within {timeout:.0f} s" if timeout else "no reply")
        if replies[0].has_error():
            raise SiteUnavailable(f"the site failed: {str(replies[0].error.reason).strip()[-300:]}")
        return read_payload(replies[0])

    def discover(self, expected: list[str], wait_s: float) -> dict[str, int]:
        """Greet every connected node until the expected sites have answered (or ``wait_s`` passed)."""
        from flwr.app import ConfigRecord, Message, RecordDict

        from federation.site_service import KEY, RECORD, read_payload

        deadline = time.monotonic() + wait_s
        asked: set[int] = set()
        hello = json.dumps({"kind": "hello", "protocol": PROTOCOL})
        while True:
            new = sorted(set(self.grid.get_node_ids()) - asked - set(self.sites.values()))
            asked |= set(new)
            messages = [Message(content=RecordDict({RECORD: ConfigRecord({KEY: hello})}), dst_node_id=node,
                                message_type="query") for node in new]
            for reply in self.push_and_wait(messages, timeout=60) if messages else []:  # all greeted at once
                if not reply.has_error() and "site" in (answer := read_payload(reply)):
                    self.sites[str(answer["site"])] = reply.metadata.src_node_id
            if set(expected) <= set(self.sites) or time.monotonic() > deadline:
                return dict(self.sites)
            time.sleep(1.0)

    def ask(self, site: str, request: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if site not in self.sites:
            self.discover([site], wait_s=30)
        if site not in self.sites:
            raise SiteUnavailable(f"site {site} is not connected")
        return self._query(self.sites[site], request, timeout)

    def train(self, plan: dict[str, Any]) -> dict[str, Any]:
        from fl.server import run_plans

        missing = [c["name"] for c in plan["clients"] if c["name"] not in self.sites]
        if missing:
            self.discover(missing, wait_s=30)
        return run_plans(SiteGrid(self, plan["clients"]), [plan])[0]


def _grid_base() -> type:
    from flwr.serverapp import Grid

    return Grid


class SiteGrid(_grid_base()):  # type: ignore[misc]
    """The relay's grid restricted to one plan's sites; each node learns its folder from the roster
    (a path inside the site's own folder, which the site resolves and checks itself)."""

    def __init__(self, relay: Relay, clients: list[dict[str, Any]]) -> None:
        missing = [c["name"] for c in clients if c["name"] not in relay.sites]
        if missing:
            raise ValueError(f"site(s) {', '.join(missing)} not connected")
        self.relay = relay
        self._nodes = [relay.sites[c["name"]] for c in clients]
        self.roster = {str(relay.sites[c["name"]]): [c["name"], c["data_dir"]] for c in clients}

    def set_run(self, run: Any) -> None:
        self.relay.grid.set_run(run)

    @property
    def run(self) -> Any:
        return self.relay.grid.run

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def create_message(self, *args: Any, **kwargs: Any) -> Any:
        return self.relay.grid.create_message(*args, **kwargs)

    def push_messages(self, messages: Any) -> Any:
        with self.relay._lock:
            return self.relay.grid.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        with self.relay._lock:
            return self.relay.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        return self.relay.push_and_wait(list(messages), timeout)


def _handler(relay: Relay, token: str, stop: threading.Event, heard: list[float]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # the coordinator keeps the log
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            if not secrets.compare_digest(self.headers.get("Authorization", ""), f"Bearer {token}"):
                self._send(403, {"error": "forbidden"})
                return
            heard[0] = time.monotonic()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            try:
                if self.path == "/ping":
                    out: dict[str, Any] = {"ok": True}
                elif self.path == "/sites":
                    out = {"sites": relay.discover(list(body.get("expected") or []), float(body.get("wait_s", 0)))}
                elif self.path == "/ask":
                    out = {"reply": relay.ask(body["site"], body["request"], body.get("timeout"))}
                elif self.path == "/train":
                    out = {"result": relay.train(body["plan"])}
                elif self.path == "/close":
                    stop.set()
                    out = {"ok": True}
                else:
                    self._send(404, {"error": f"no {self.path}"})
                    return
            except SiteUnavailable as exc:
                out = {"unavailable": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the coordinator hears it; the relay keeps serving
                out = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            self._send(200, out)

        def _send(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def serve_relay(grid: Any, job: dict[str, Any]) -> None:
    """Serve the coordinator until it says close, or has not been heard for ``idle_s``."""
    relay = Relay(grid)
    stop = threading.Event()
    heard = [time.monotonic()]
    server = ThreadingHTTPServer(("127.0.0.1", int(job["port"])), _handler(relay, job["token"], stop, heard))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="relay-http", daemon=True).start()
    try:
        while not stop.wait(1.0):
            if time.monotonic() - heard[0] > float(job.get("idle_s", IDLE_S)):
                print("relay: the coordinator went silent; stopping", flush=True)
                break
    finally:
        server.shutdown()


def _relay_main(grid: Any, context: Any) -> None:
    job = json.loads(Path(str(context.run_config["relay-file"])).read_text("utf-8"))
    serve_relay(grid, job)


def _make_app() -> Any:
    from flwr.serverapp import ServerApp

    app = ServerApp()
    app.main()(_relay_main)
    return app


relay_app = _make_app()


# --- the coordinator's side --------------------------------------------------------------------------------

class RelayTransport:
    """A :class:`graphs.remote.SiteTransport` through the relay; logs and audits every message."""

    def __init__(self, port: int, token: str, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.log = log
        self._log_lock = threading.Lock()
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        #: sites that had not answered when the run started (federation.deployment.connect)
        self.missing: list[str] = []

    def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
                return json.loads(response.read())
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise SiteUnavailable(f"the relay did not answer ({exc})") from None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._post("/ping", {}, timeout=5)
                break
            except SiteUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self._pinger = threading.Thread(target=self._ping, name="relay-ping", daemon=True)
        self._pinger.start()

    def _ping(self) -> None:
        while not self._stop.wait(10.0):
            try:
                self._post("/ping", {}, timeout=10)
            except SiteUnavailable:
                pass

    def sites(self, expected: list[str], wait_s: float) -> dict[str, int]:
        return self._post("/sites", {"expected": expected, "wait_s": wait_s}, timeout=wait_s + 120)["sites"]

    def _record(self, direction: str, site: str, payload: dict[str, Any]) -> None:
        from graphs.privacy import PrivacyAuditor

        text = json.dumps(payload)
        # data (pixel arrays, blobs); not answer-key words: a federation has no key, and the protocol's own
        # field names (label_mappings) are among them
        findings = [v.kind for v in PrivacyAuditor().check(text, f"{direction} {site}") if v.kind != "answer_key"]
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "direction": direction, "site": site,
                 "kind": payload.get("kind") or next(iter(payload), ""), "bytes": len(text),
                 "privacy": findings, "content": payload}
        with self._log_lock:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    def ask(self, site: str, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        self._record("to", site, request)
        limit = timeout or ASK_TIMEOUT_S
        out = self._post("/ask", {"site": site, "request": request, "timeout": limit}, timeout=limit + 60)
        if "unavailable" in out:
            raise SiteUnavailable(out["unavailable"])
        if "error" in out:
            raise SiteUnavailable(f"the relay failed: {out['error']}")
        self._record("from", site, out["reply"])
        return out["reply"]

    def train(self, plan: dict[str, Any]) -> dict[str, Any]:
        sites = ",".join(c["name"] for c in plan["clients"])
        self._record("to", sites, {"kind": "train", "plan": plan})
        out = self._post("/train", {"plan": plan}, timeout=float(plan.get("timeout_s", 3600)) * plan["rounds"] + 600)
        if "result" not in out:
            raise RuntimeError(out.get("error") or out.get("unavailable") or "the relay gave no result")
        self._record("from", sites, {"kind": "train", "result": out["result"]})
        return out["result"]

    def close(self) -> None:
        self._stop.set()
        try:
            self._post("/close", {}, timeout=10)
        except SiteUnavailable:
            pass


def start_relay(app_dir: Path, flwr_home: Path, federation: str, log: Path, env: dict[str, str],
                timeout: float = 180) -> tuple[RelayTransport, subprocess.Popen]:
    """Submit the relay as a Flower run on the SuperLink that ``flwr_home``'s config names, and wait
    until it answers. Returns the transport and the ``flwr run`` process (its output in app_dir)."""
    from fl.deploy import free_port

    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(APP_PYPROJECT, "utf-8")
    port, token = free_port(), secrets.token_hex(16)
    job = app_dir / "relay.json"
    job.write_text(json.dumps({"port": port, "token": token, "idle_s": IDLE_S}), "utf-8")
    job.chmod(0o600)
    out = open(app_dir / "flwr_run.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(["flwr", "run", str(app_dir), federation, "--run-config", f'relay-file="{job}"'],
                            env={**env, "FLWR_HOME": str(flwr_home)}, stdout=out, stderr=subprocess.STDOUT)
    transport = RelayTransport(port, token, log)
    try:
        transport.wait_ready(timeout)
    except SiteUnavailable:
        proc.kill()
        tail = (app_dir / "flwr_run.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the relay did not start within {timeout:.0f} s:\n{tail}") from None
    return transport, proc
