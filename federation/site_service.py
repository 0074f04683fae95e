"""A hospital's site service: a Flower SuperNode whose ClientApp runs the client agents and trains here.

    fedagentbench site serve --name hospital_a --data /data/hospital_a \\
        --superlink coordinator.example.org:9093 --certs certs/

The site copies its folder (regular files only) into its own work folder, drafts its data cards and
then serves as a SuperNode. The coordinator's messages ask it to run client agent C1, C2 or C3 (a
``query`` message with the agent's task), to describe its harmonised data (class counts, channels,
image size), for its part of the report, or to train and evaluate (``train``/``evaluate``, as in
every Flower training). Everything runs on this machine; the site may point its agents at its own
model (``--model``, e.g. a local llama.cpp model). Every reply passes :class:`SiteGuard`: patient
identifiers and the names of files and folders below the datasets are withheld, so only card fields,
dataset and class names, counts, label mappings, statuses and metrics reach the coordinator.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from federation.spec import FederationError, Site

#: the node-config keys a site's SuperNode is started with (``site serve`` sets them); a site of a
#: benchmark environment (SITE_BENCH) shares the harness's transcript and response cache
SITE_ENV, SITE_NAME, SITE_MODEL, SITE_BENCH = "site-env", "client-name", "site-model", "site-bench"
#: the ConfigRecord and key that carry a request and its reply (JSON text)
RECORD, KEY = "fedagentbench", "json"
#: names shorter than this are too common to withhold without mangling ordinary words; so are these
MIN_PRIVATE = 6
#: words the replies' structured values are made of (statuses, folders, tools): never withheld
PROTOCOL_WORDS = {"datasets", "data_cards", "work", "cleaned", "harmonised", "input_cleaned", "input_harmonised",
                  "pending", "replied", "failed", "approved", "released", "classification", "classes", "stats",
                  "full_outputs", "models"}
GENERIC_NAMES = {"images", "labels", "train", "training", "test", "testing", "valid", "validation", "metadata",
                 "readme", "dataset", "datasets", "masks", "scans", "export", "exports", "archive", "notes"}


def default_work(data: Path) -> Path:
    """Where a site keeps its work by default: beside its folder, never inside it."""
    data = data.resolve()
    return data.with_name(f"{data.name}.fedagentbench")


def prepare_site(name: str, data: Path, work: Path, card: Path | None = None) -> Path:
    """The site's own environment folder (``<work>/federation``): a copy of its datasets with their
    cards, and its private files; built once, reused while the source folder's contents match."""
    from federation.run import copy_sites
    from federation.sites import sha256_tree

    site = Site(name=name, path=data.resolve(), data_card=card.resolve() if card else None)
    if not site.path.is_dir():
        raise FederationError(f"site {name}: {site.path} is not a folder")
    if card is not None and not card.is_file():
        raise FederationError(f"site {name}: data card {card} does not exist")
    work = work.resolve()
    if work.is_relative_to(site.path):
        raise FederationError(f"the site's work folder {work} lies inside its data folder {site.path}; choose "
                              "--work elsewhere (the data folder is never written)")
    env = work / "federation"
    marker = env / "environment.json"
    digest = _digest(sha256_tree(site.path), card)
    if marker.is_file():
        recorded = json.loads(marker.read_text("utf-8"))
        if recorded.get("site") == name and recorded.get("digest") == digest:
            return env
        if recorded.get("site") != name:
            raise FederationError(f"{work} holds site {recorded.get('site')!r}, not {name!r}; use another --work")
        shutil.rmtree(env / "clients", ignore_errors=True)  # the folder changed: copy it afresh
    env.mkdir(parents=True, exist_ok=True)
    copy_sites([site], env)
    marker.write_text(json.dumps({"kind": "site", "site": name, "sites": [name], "digest": digest,
                                  "sources": {name: str(site.path)}}, indent=1), "utf-8")
    return env


def _digest(checksums: dict[str, str], card: Path | None) -> str:
    import hashlib

    text = json.dumps(checksums, sort_keys=True) + (card.read_text("utf-8") if card else "")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class SiteGuard:
    """What leaves the site: every string of a reply is checked, and patient identifiers (the
    privacy auditor's) and the names of this site's files and sub-folders are replaced by
    ``[withheld]``. Dataset and class names are what the protocol shares, so they pass."""

    def __init__(self, env: Path, name: str) -> None:
        from graphs.privacy import PrivacyAuditor

        self.auditor = PrivacyAuditor.for_environment(env)
        workspace = env / "clients" / name
        from agents.roles import ROLES

        shared = {name, *PROTOCOL_WORDS, *(t for r in ROLES.values() if r.side == "client" for t in r.tools)}
        cards_file = workspace / "data_cards.json"
        cards = json.loads(cards_file.read_text("utf-8")) if cards_file.is_file() else []
        for card in cards:
            shared |= {str(card.get("dataset name", "")), *map(str, card.get("classes") or [])}
        private: set[str] = set()
        root = workspace / "datasets"
        for path in root.rglob("*") if root.is_dir() else []:
            rel = path.relative_to(root).parts
            if path.is_dir() and len(rel) <= 2 and (rel[-1] in shared or len(rel) == 1):
                continue  # a dataset folder, or a class folder directly inside one
            for part in {path.name, path.stem}:
                if len(part) >= MIN_PRIVATE and part not in shared and part.lower() not in GENERIC_NAMES:
                    private.add(part)
        ordered = sorted(private, key=len, reverse=True)
        # whole names only: a file "images_7.png" is withheld, the field name "total_images" is not
        self._private = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, ordered)) + r")(?![A-Za-z0-9_])"
                                   ) if ordered else None

    def clean(self, value: Any, found: list[str]) -> Any:
        """``value`` with every private name withheld; what was withheld is counted in ``found``."""
        if isinstance(value, str):
            text = value
            if self._private is not None and self._private.search(text):
                text, n = self._private.subn("[withheld]", text)
                found += ["file or folder name"] * n
            text, n = self.auditor.redact(text)
            found += ["patient identifier"] * n
            return text
        if isinstance(value, dict):  # keys are the protocol's field names and shared class/dataset names
            return {k: self.clean(v, found) for k, v in value.items()}
        if isinstance(value, list):
            return [self.clean(v, found) for v in value]
        return value


# --- answering the coordinator ---------------------------------------------------------------------------

#: a task id names a folder of the site's runs: never a path
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")

def _site(context: Context) -> tuple[Path, str, str | None, bool]:
    node = context.node_config
    if SITE_ENV not in node:
        raise ValueError("this SuperNode is not a site service: start it with `fedagentbench site serve`")
    model = str(node.get(SITE_MODEL) or "") or None
    return Path(str(node[SITE_ENV])), str(node[SITE_NAME]), model, str(node.get(SITE_BENCH, "")) == "1"


def answer(request: dict[str, Any], env: Path, name: str, model: str | None, bench: bool = False) -> dict[str, Any]:
    """The site's reply to one coordinator request (before the guard)."""
    from graphs.remote import PROTOCOL

    kind = request.get("kind")
    if request.get("protocol", PROTOCOL) != PROTOCOL:
        return {"error": f"protocol {request.get('protocol')} is not this site's ({PROTOCOL}); update fedagentbench"}
    if kind == "hello":
        return {"site": name, "protocol": PROTOCOL}
    config = (request.get("task") or {}).get("config") or request.get("config") or {}
    if kind in ("agent", "report") and not _PLAIN.fullmatch(str(config.get("task_id", ""))):
        return {"error": "the task id must be a plain name (it names a folder inside this site's)"}
    if kind == "agent":
        return _run_agent(request, env, name, model, bench)
    if kind == "data_shape":
        from fl.client import site_path
        from fl.runner import describe_data

        return {"shape": describe_data(site_path(str(env), str(request["path"]))).model_dump()}
    if kind == "report":
        return {"report": site_report(request, env, name)}
    return {"error": f"unknown request {kind!r}"}


def _run_agent(request: dict[str, Any], env: Path, name: str, model: str | None, bench: bool) -> dict[str, Any]:
    from agents.providers import ProviderError, ProviderUnavailable
    from graphs import runtime
    from graphs.phases import ClientTask
    from graphs.remote import run_client_agent_here
    from tools.server import load_client_stats

    task = ClientTask.model_validate(request["task"])
    if task.client != name:
        return {"error": f"this is site {name}, not {task.client}"}
    if request.get("task_spec") is not None:  # a practitioner's federation: the request as a task
        _write_if_changed(env / runtime.FEDERATION_TASK, json.dumps({"task": request["task_spec"]}, indent=1))
    updates: dict[str, Any] = {"env_dir": str(env), "approve": False, "runtime": "simulation"}
    if not bench:  # a hospital's own: its transcript here, no cache of the coordinator's
        updates |= {"cache_dir": None, "transcript_path": str(env / "runs" / "transcripts" / f"{name}.jsonl")}
    if model:
        updates["site_model"] = model
    task = task.model_copy(update={"config": task.config.model_copy(update=updates)})
    try:
        outputs = run_client_agent_here(str(request["role"]), task, env / "runs" / f"site_{name}.sqlite")
    except (ProviderError, ProviderUnavailable) as exc:
        return {"provider_error": str(exc)[:500]}
    reply: dict[str, Any] = {"outputs": outputs}
    try:  # statistics the agent published for the server (aggregates only: tools.stats)
        reply["published_stats"] = load_client_stats(runtime.client_work(task.config, name)).model_dump()
    except Exception:  # noqa: BLE001 - none published (yet): nothing to send
        pass
    return reply


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text("utf-8") != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(path)


def site_report(request: dict[str, Any], env: Path, name: str) -> dict[str, Any]:
    """This site's part of the federation report. The whole of it (every removed file with its
    reason) is written here, in the site's own folder; the coordinator gets counts only."""
    from federation.run import site_summary
    from graphs.state import RunConfig

    config = RunConfig.model_validate({**request["config"], "env_dir": str(env)})
    summary = site_summary(config, name, request.get("record") or {})
    path = env.parent / "site_report.json"
    path.write_text(json.dumps(summary, indent=1), "utf-8")
    reasons: dict[str, int] = {}
    for reason in summary["files_removed"].values():
        reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
    return {**summary, "files_removed": {}, "removed_by_reason": reasons, "site_report": "site_report.json"}


def _reply(msg: Message, payload: dict[str, Any]) -> Message:
    return Message(content=RecordDict({RECORD: ConfigRecord({KEY: json.dumps(payload)})}), reply_to=msg)


def read_payload(msg: Message) -> dict[str, Any]:
    """The JSON a request or reply carries."""
    return json.loads(str(msg.content.config_records[RECORD][KEY]))


client_app = ClientApp()


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    env, name, model, bench = _site(context)
    try:
        payload = answer(read_payload(msg), env, name, model, bench)
    except Exception as exc:  # noqa: BLE001 - the coordinator hears the reason; the site keeps serving
        payload = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    withheld: list[str] = []
    payload = SiteGuard(env, name).clean(payload, withheld)
    if withheld:
        payload["withheld"] = len(withheld)
        _log(env, f"withheld {len(withheld)} private name(s) from a reply ({', '.join(sorted(set(withheld)))})")
    return _reply(msg, payload)


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    from fl.client import _handle

    _site(context)  # a site trains only on its own folder (the roster's path is resolved inside it)
    return _handle(msg, context, None, train=True)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    from fl.client import _handle

    _site(context)
    return _handle(msg, context, None, train=False)


def _log(env: Path, line: str) -> None:
    import time

    with (env.parent / "site.log").open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


# --- serving --------------------------------------------------------------------------------------------

def supernode_command(env: Path, name: str, superlink: str, *, ca: Path | None, key: Path | None,
                      model: str | None = None, bench: bool = False, host: str = "127.0.0.1") -> list[str]:
    """``flower-supernode`` for this site: TLS to the SuperLink with the federation's CA and this
    site's SuperNode key (``ca``/``key`` None: insecure, for a trial on one machine only)."""
    from fl.deploy import free_port

    node_config = (f'{SITE_ENV}="{env}" {SITE_NAME}="{name}" {SITE_BENCH}="{int(bench)}"'
                   + (f' {SITE_MODEL}="{model}"' if model else ""))
    auth = ["--insecure"] if ca is None else ["--root-certificates", str(ca), "--auth-supernode-private-key", str(key)]
    bin_dir = Path(sys.executable).parent
    return [str(bin_dir / "flower-supernode"), *auth, "--superlink", superlink, "--host", host,
            "--port", str(free_port(host)), "--node-config", node_config]


def serve(name: str, data: Path | None, superlink: str, *, work: Path | None = None, card: Path | None = None,
          ca: Path | None = None, key: Path | None = None, model: str | None = None,
          environment: Path | None = None, log: Path | None = None) -> None:
    """Prepare the site and become its SuperNode (this process is replaced by ``flower-supernode``).

    ``environment``: serve hospital ``name`` of a generated benchmark environment instead of a folder
    of one's own (``bench --runtime deployment``)."""
    from fl.deploy import FLWR_ENV

    if environment is not None:
        env = environment.resolve()
        if not (env / "clients" / name).is_dir():
            raise FederationError(f"{env} has no hospital {name!r}")
    else:
        if data is None:
            raise FederationError("give the site's folder with --data")
        env = prepare_site(name, data, work or default_work(data), card)
    if (ca is None) != (key is None):
        raise FederationError("a secured site needs both the federation's CA certificate and its SuperNode key")
    repo = str(Path(__file__).resolve().parents[1])
    bin_dir = str(Path(sys.executable).parent)  # the SuperNode starts flower-superexec by name
    environ = {**os.environ, **FLWR_ENV, "PATH": os.pathsep.join(filter(None, [bin_dir, os.environ.get("PATH")])),
               "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    command = supernode_command(env, name, superlink, ca=ca, key=key, model=model, bench=environment is not None)
    if log is not None:  # the SuperNode's and its ClientApps' output, kept at the site
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.execve(command[0], command, environ)
