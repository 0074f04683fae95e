"""Run the agents' workflow on a practitioner's own federation, and report what they did.

The sites' folders are copied (regular files only) into ``<work>/federation/clients/<site>/datasets``
with a ``data_cards.json`` each (the site's own card, or one drafted from its contents), the request
goes to the server's ``tasks/federation.json``, and the same LangGraph workflow runs on it — selection,
cleaning, harmonisation, algorithm choice, Flower training — checkpointed in
``<work>/checkpoints.sqlite`` (running the same command again resumes an interrupted run). There is
no answer key and no scoring. Sources are hashed before and after: the report says they are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from federation.sites import PRIVATE, copy_site, draft_site, sha256_tree
from federation.spec import FederationError, FederationSpec, Site
from graphs.privacy import HashedIdentifiers

TASK_ID = "federation"
THREAD = "federation"


class SiteReport(BaseModel):
    name: str
    source: str
    problems: list[str] = Field(default_factory=list)
    datasets_offered: list[str] = Field(default_factory=list)
    datasets_chosen: list[str] = Field(default_factory=list)
    selection_reason: str = ""
    approved: bool | None = None
    cleaning_summary: str = ""
    files_removed: dict[str, str] = Field(default_factory=dict)
    label_mappings: dict[str, dict[str, str | None]] = Field(default_factory=dict)
    class_counts: dict[str, int] = Field(default_factory=dict)
    sources_unchanged: bool = True
    #: whole results of tool calls whose answer the agents saw only a page of (tools.sandbox.render)
    tool_outputs: list[str] = Field(default_factory=list)
    #: a deployment: removed files counted by reason (their names stay at the site, in its own report)
    removed_by_reason: dict[str, int] = Field(default_factory=dict)
    site_report: str = ""


class FederationReport(BaseModel):
    request: str
    model: str
    sites: list[SiteReport]
    algorithm: str | None = None
    algorithm_reason: str = ""
    training_status: str = "not started"
    training_metrics: dict[str, float] = Field(default_factory=dict)
    model_files: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    #: a person's decisions (``--approve``): agent, tool, arguments, approve/edit/reject, note
    approvals: list[dict[str, Any]] = Field(default_factory=list)
    #: questions still open: the run is paused until they are answered (run the command again)
    paused_at: list[dict[str, Any]] = Field(default_factory=list)
    work_dir: str
    #: "simulation" (every agent here) or "deployment" (the client agents at the sites' services)
    runtime: str = "simulation"


def _spec_digest(spec: FederationSpec) -> str:
    # training settings at their defaults are left out: a file from before they existed keeps its digest
    unset = {k for k in ("network", "device") if getattr(spec, k) == FederationSpec.model_fields[k].default}
    return hashlib.sha256(spec.model_dump_json(exclude=unset).encode()).hexdigest()[:16]


def check_sites(spec: FederationSpec, work: Path, local: bool = True) -> None:
    """Every site folder and card exists, and the work directory lies outside every site.
    ``local=False`` (a deployment): the folders are the sites' own, checked by their services."""
    for site in spec.sites:
        if not local:
            if work.resolve().is_relative_to(site.path.resolve()):
                raise FederationError(f"the work directory {work} lies inside site {site.name}'s folder")
            continue
        if not site.path.is_dir():
            raise FederationError(f"site {site.name}: {site.path} is not a folder")
        if site.data_card is not None and not site.data_card.is_file():
            raise FederationError(f"site {site.name}: data card {site.data_card} does not exist")
        if work.resolve().is_relative_to(site.path.resolve()):
            raise FederationError(f"the work directory {work} lies inside site {site.name}'s folder; choose --work "
                                  "elsewhere (sources are never written)")


def prepare(spec: FederationSpec, work: Path) -> Path:
    """The federation folder the workflow runs on (built once; an interrupted run resumes on it)."""
    check_sites(spec, work)
    env = work / "federation"
    marker = env / "environment.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text("utf-8")).get("spec_digest")
        if recorded == _spec_digest(spec):
            _hash_clear_identifiers(env / PRIVATE)
            return env
        raise FederationError(f"{work} holds a run of a different federation file; use another --work "
                              "or delete that folder")
    shutil.rmtree(env, ignore_errors=True)
    copy_sites(spec.sites, env)
    write_task(spec, env)
    marker.write_text(json.dumps({"kind": "federation", "spec_digest": _spec_digest(spec),
                                  "sites": [s.name for s in spec.sites],
                                  "sources": {s.name: str(s.path) for s in spec.sites}}, indent=1), "utf-8")
    return env


def prepare_coordinator(spec: FederationSpec, work: Path) -> Path:
    """A deployment's coordinator folder: the request and the sites' names, and nothing of any site
    (the sites keep their folders and their copies; federation.site_service)."""
    check_sites(spec, work, local=False)
    env = work / "federation"
    marker = env / "environment.json"
    if marker.is_file():
        recorded = json.loads(marker.read_text("utf-8"))
        if recorded.get("spec_digest") == _spec_digest(spec) and recorded.get("runtime") == "deployment":
            return env
        raise FederationError(f"{work} holds a run of a different federation file or runtime; use another --work "
                              "or delete that folder")
    shutil.rmtree(env, ignore_errors=True)
    env.mkdir(parents=True)
    write_task(spec, env)
    write_private(env, set(), {}, {})  # the coordinator knows no patient: the sites withhold theirs
    marker.write_text(json.dumps({"kind": "federation", "runtime": "deployment", "spec_digest": _spec_digest(spec),
                                  "sites": [s.name for s in spec.sites]}, indent=1), "utf-8")
    return env


def copy_sites(sites: list[Site], env: Path) -> None:
    """Each site's datasets and card into ``env/clients/<site>``, and what only the auditor and the
    report read into ``env/.private`` (checksums of the sources, problems found, patient identifiers)."""
    identifiers: set[str] = set()
    problems: dict[str, list[str]] = {}
    checksums: dict[str, dict[str, str]] = {}
    for site in sites:
        checksums[site.name] = sha256_tree(site.path)
        cards, found, ids = draft_site(site.path)
        if site.data_card is not None:
            cards = _read_card(site.name, site.data_card)
        problems[site.name] = found
        identifiers |= ids
        copy_site(site.path, cards, env / "clients" / site.name)
    write_private(env, identifiers, checksums, problems)


def write_private(env: Path, identifiers: set[str], checksums: dict[str, dict[str, str]],
                  problems: dict[str, list[str]]) -> None:
    (env / PRIVATE).mkdir(mode=0o700, parents=True, exist_ok=True)
    HashedIdentifiers.create(identifiers).save(env / PRIVATE)  # the auditor's: keyed hashes, never names
    (env / PRIVATE / "sources.json").write_text(json.dumps(checksums), "utf-8")
    (env / PRIVATE / "problems.json").write_text(json.dumps(problems, indent=1), "utf-8")


def task_of(spec: FederationSpec) -> dict[str, Any]:
    """The federation's request as a task (``environments.tasks.TaskSpec``'s fields)."""
    return {"task_id": TASK_ID, "environment": spec.modality, "title": spec.request[:80],
            "target_classes": spec.classes, "concept_to_target": {}, "requirement": spec.requirement,
            "body_part": spec.body_part, "image_size": spec.image_size, "colour": spec.colour,
            "class_note": spec.class_note}


def write_task(spec: FederationSpec, env: Path) -> None:
    """The server's copy of the request and the task every agent's instruction is made from."""
    (env / "server" / "tasks").mkdir(parents=True, exist_ok=True)
    text = server_request(spec)
    (env / "server" / "tasks" / f"{TASK_ID}.json").write_text(
        json.dumps({"request": {"fine": text, "goal": text}}, indent=1), "utf-8")
    (env / "federation.json").write_text(json.dumps({"task": task_of(spec)}, indent=1), "utf-8")


def _hash_clear_identifiers(private: Path) -> None:
    """A federation prepared before identifiers were hashed listed them in the clear: hash them now."""
    path = private / HashedIdentifiers.FILE
    if path.is_file() and isinstance(ids := json.loads(path.read_text("utf-8")), list):
        HashedIdentifiers.create(ids).save(private)


def server_request(spec: FederationSpec) -> str:
    """The request as the server agent reads it: the practitioner's words, then the federation file's
    modality, organ and classes stated as every task of the benchmark states them."""
    from environments.tasks import REQUIREMENT_TEXT

    modality = spec.modality.replace("xray", "X-ray").replace("mri", "MRI")
    note = f" {spec.class_note}" if spec.class_note else ""
    return (f"{spec.request.strip()} I want to train it on {modality} images of the {spec.body_part}, with "
            f"classes: {', '.join(spec.classes)}.{note} {REQUIREMENT_TEXT[spec.requirement]}")


def _read_card(site: str, path: Path) -> list[dict[str, Any]]:
    try:
        cards = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise FederationError(f"site {site}: data card {path} is not readable JSON ({exc})") from None
    if not isinstance(cards, list) or not all(isinstance(c, dict) and "dataset name" in c for c in cards):
        raise FederationError(f"site {site}: data card {path} must be a list of cards, each with 'dataset name'")
    return cards


def run_federation(spec: FederationSpec, work: Path, model: str | None = None, request: str | None = None,
                   progress: Callable[[str], None] | None = None,
                   ask: Callable[[dict[str, Any]], Any] | None = None,
                   agents: dict[str, Any] | None = None, transport: Any = None) -> FederationReport:
    """Prepare (or resume) the federation, run the workflow, and write ``report.json``/``report.md``.

    With ``ask``, the run pauses before C2 removes files and before S4 starts training and asks it
    (``graphs.run.run_task``); the decisions go into the report. ``agents`` sets the run's agent
    settings (``temperature``, ``budget``, ``timeout_s``, ``retries``, ``submit_tool``, ``cache_dir``). A run whose person left (``ask``
    raised EOFError) stays paused in its checkpoints: the same command asks the same question again.
    ``transport`` (a :class:`graphs.remote.SiteTransport`): a deployment — the client agents run at
    the sites' services and this machine holds nothing of theirs (federation.deployment)."""
    from eval.runs import write_html_page
    from graphs.remote import use_transport
    from graphs.run import pending_questions, run_task, saved_config
    from graphs.state import RunConfig

    if request:
        spec = spec.model_copy(update={"request": request})
    if model:
        spec = spec.model_copy(update={"model": model})
    if spec.model == "oracle":
        raise FederationError("the oracle reads an answer key, and a federation of your own has none; "
                              "use heuristic, skyline or an LLM spec")
    work = Path(work).resolve()
    deployed = transport is not None
    check_sites(spec, work, local=not deployed)  # before anything is written
    work.mkdir(parents=True, exist_ok=True)
    env = prepare_coordinator(spec, work) if deployed else prepare(spec, work)
    config = RunConfig(env_dir=str(env), task_id=TASK_ID, guidance="goal", model=spec.model, mode="e2e",
                       run_id="federate", rounds=spec.rounds, local_epochs=spec.local_epochs, seed=spec.seed,
                       device=spec.device, network=spec.network, train_image_size=spec.image_size,
                       approve=ask is not None, runtime="deployment" if deployed else "simulation",
                       **(agents or {}))
    started = saved_config(work / "checkpoints.sqlite", THREAD)
    if started is not None and started.approve != config.approve:  # a resumed run keeps its first settings
        raise FederationError(f"this run was started {'with' if started.approve else 'without'} --approve and "
                              f"resumes as it started: run the same command {'with' if started.approve else 'without'} "
                              f"--approve, or give a new --work to start afresh ({work})")
    if started is not None and started.runtime != config.runtime:
        raise FederationError(f"this run was started {'on a deployment' if started.runtime == 'deployment' else 'in simulation'}"
                              f" and resumes as it started: {'give --deployment' if started.runtime == 'deployment' else 'drop --deployment'}"
                              f", or give a new --work to start afresh ({work})")
    if deployed:
        with use_transport(env, transport):
            state = run_task(config, work / "checkpoints.sqlite", THREAD, progress=progress, ask=ask,
                             on_end=write_html_page)
            report = build_report(spec, env, config, state, transport)
    else:
        state = run_task(config, work / "checkpoints.sqlite", THREAD, progress=progress, ask=ask, on_end=write_html_page)
        report = build_report(spec, env, config, state)
    report.paused_at = pending_questions(work / "checkpoints.sqlite", THREAD)
    (work / "report.json").write_text(report.model_dump_json(indent=1), "utf-8")
    (work / "report.md").write_text(report_markdown(report), "utf-8")
    return report


def _removed_files(env: Path, run_clients: Path, site: str, datasets: list[str]) -> dict[str, str]:
    """Source images of the chosen datasets that are not in the site's cleaned output, with a reason."""
    from environments.readers import ImageReadError, image_format, read_image
    from tools.sandbox import load_origins

    workspace = env / "clients" / site
    work = run_clients / site
    kept: set[str] = set()
    cleaned = work / "cleaned"
    if cleaned.is_dir():
        for folder in [cleaned, *[p for p in cleaned.rglob("*") if p.is_dir()]]:
            kept |= set(load_origins(folder).values())
    def stem_key(path: str) -> str:  # "work/<step>/<dataset>/<class>/<name>.<ext>" -> "<dataset>/<class>/<name>"
        parts = Path(path).with_suffix("").parts
        return "/".join(parts[2:] if parts[:1] == ("work",) else parts[1:])

    copies: dict[str, str] = {}  # a work copy (any step, any extension) -> its source, from the manifests
    for manifest in work.rglob("*.manifest.json"):
        folder = manifest.with_name(manifest.name[: -len(".manifest.json")])
        for rel, origin in load_origins(folder).items():
            copies[stem_key(f"work/{(folder / rel).relative_to(work).as_posix()}")] = origin
    reasons = {"duplicates": "near-duplicate of another image", "off_topic": "off-topic image",
               "label_errors": "label error"}
    flagged: dict[str, str] = {}
    for flags in work.rglob("*.flags.json"):
        try:
            data = json.loads(flags.read_text("utf-8"))
        except ValueError:
            continue
        for kind, reason in reasons.items():
            for entry in data.get(kind, []):
                file = str(entry.get("file", ""))
                flagged[copies.get(stem_key(file), file)] = reason
    removed: dict[str, str] = {}
    for name in datasets:
        root = workspace / "datasets" / name
        if not root.is_dir():
            continue
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = f.relative_to(workspace).as_posix()
            if not image_format(f) or rel in kept:
                continue
            reason = flagged.get(rel)
            if reason is None:
                try:
                    read_image(f)
                    reason = "not kept by the cleaning agent"
                except ImageReadError as exc:
                    reason = f"unreadable: {str(exc).split(': ', 1)[-1][:140]}"
            removed[rel] = reason
    return removed


def site_summary(config: Any, site: str, record: dict[str, Any], source: Path | None = None) -> dict[str, Any]:
    """One site's part of the report, computed where its files are (this machine in simulation, the
    site's service on a deployment): datasets offered, files removed with reasons, class counts."""
    from graphs import runtime
    from tools.sandbox import FULL_OUTPUTS_DIR

    env = Path(config.env_dir)
    problems = json.loads((env / PRIVATE / "problems.json").read_text("utf-8"))
    checksums = json.loads((env / PRIVATE / "sources.json").read_text("utf-8"))
    source = source or json.loads((env / "environment.json").read_text("utf-8")).get("sources", {}).get(site)
    run_clients = runtime.run_root(config) / "clients"
    cards = json.loads((env / "clients" / site / "data_cards.json").read_text("utf-8"))
    chosen = list(record.get("selected_datasets") or [])
    harmonised = run_clients / site / "harmonised"
    counts = {d.name: sum(1 for f in d.iterdir() if f.is_file()) for d in sorted(harmonised.iterdir())
              if d.is_dir()} if harmonised.is_dir() else {}
    return {"problems": problems.get(site, []), "datasets_offered": [c["dataset name"] for c in cards],
            "files_removed": _removed_files(env, run_clients, site, chosen) if record.get("cleaned_path") else {},
            "class_counts": counts,
            "sources_unchanged": source is not None and sha256_tree(Path(source)) == checksums.get(site),
            "tool_outputs": sorted(str(p) for p in (run_clients / site / FULL_OUTPUTS_DIR).glob("*"))}


def build_report(spec: FederationSpec, env: Path, config, state: dict[str, Any], transport: Any = None) -> FederationReport:
    from graphs import runtime
    from graphs.remote import PROTOCOL, ask_all

    clients = state.get("clients") or {}
    sites = []
    errors = [e.message if hasattr(e, "message") else str(e.get("message", e)) for e in state.get("errors") or []]
    records = {}
    for site in spec.sites:
        record = clients.get(site.name)
        records[site.name] = record.model_dump() if hasattr(record, "model_dump") else (record or {})
    replies = {} if transport is None else ask_all(transport, {  # each site computes its part; the list of
        name: {"kind": "report", "protocol": PROTOCOL, "config": config.model_dump(mode="json"), "record": record}
        for name, record in records.items()}, timeout=600)  # removed files stays there (counts come back)
    for site in spec.sites:
        record = records[site.name]
        if transport is None:
            summary = site_summary(config, site.name, record, site.path)
        else:
            reply = replies[site.name]
            summary = reply.get("report") or {"problems": [f"the site sent no report: {reply.get('error')}"]}
        sites.append(SiteReport(
            name=site.name, source=str(site.path), datasets_chosen=list(record.get("selected_datasets") or []),
            selection_reason=str(record.get("selection_reason") or "")[:400], approved=record.get("approved"),
            cleaning_summary=str(record.get("cleaning_summary") or "")[:400],
            label_mappings=record.get("label_mappings") or {},
            **{k: v for k, v in summary.items() if k in SiteReport.model_fields}))
    training = state.get("training")
    training = training.model_dump() if hasattr(training, "model_dump") else (training or {})
    flower = runtime.server_work(config) / "training" / "flower"
    models = sorted(str(p) for p in [flower / "global_model.pt", *sorted((flower / "clients").glob("*.pt"))]
                    if p.is_file())
    return FederationReport(
        request=spec.request, model=spec.model, sites=sites, algorithm=state.get("algorithm"),
        algorithm_reason=str(state.get("algorithm_reason") or ""), training_status=training.get("status", "not started"),
        training_metrics={k: round(float(v), 4) for k, v in (training.get("final_metrics") or {}).items()},
        model_files=models, errors=errors[:20], approvals=list(state.get("approvals") or []), work_dir=str(env.parent),
        runtime=config.runtime)


def report_markdown(report: FederationReport) -> str:
    lines = ["# Federation report", "", f"Request: {report.request}", f"Model: `{report.model}`", ""]
    for site in report.sites:
        lines += [f"## {site.name}", "", f"Source: `{site.source}` (unchanged: {'yes' if site.sources_unchanged else 'NO'})"]
        if site.problems:
            lines += ["", "Problems found in the folder:", *[f"- {p}" for p in site.problems]]
        lines += ["", f"Datasets offered: {', '.join(site.datasets_offered) or 'none'}",
                  f"Datasets chosen: {', '.join(site.datasets_chosen) or 'none'}"
                  + (f" — {site.selection_reason}" if site.selection_reason else ""),
                  f"Approved by the server: {site.approved}"]
        if site.removed_by_reason:
            lines += ["", "Files removed (counted by reason; their names stay at the site, in its "
                      f"`{site.site_report}`): " + ", ".join(f"{r} {n}" for r, n in site.removed_by_reason.items())]
        if site.files_removed:
            lines += ["", f"Files removed ({len(site.files_removed)}):", "", "| file | reason |", "|---|---|"]
            lines += [f"| `{f}` | {r} |" for f, r in list(site.files_removed.items())[:200]]
        for dataset, mapping in site.label_mappings.items():
            lines += ["", f"Label mapping of {dataset}: " + ", ".join(f"{k} → {v or 'dropped'}" for k, v in mapping.items())]
        if site.class_counts:
            lines += ["", "Images per class after harmonisation: "
                      + ", ".join(f"{k} {v}" for k, v in site.class_counts.items())]
        if site.tool_outputs:
            lines += ["", "Whole tool results the agents saw a page of (e.g. every unreadable file with its reason):",
                      *[f"- `{p}`" for p in site.tool_outputs]]
        lines.append("")
    lines += ["## Training", "", f"Algorithm: {report.algorithm or 'none'}"
              + (f" — {report.algorithm_reason}" if report.algorithm_reason else ""),
              f"Status: {report.training_status}"]
    if report.training_metrics:
        lines.append("Final metrics (hospitals' validation splits): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in report.training_metrics.items()))
    lines += [f"Model files: {', '.join(f'`{m}`' for m in report.model_files) or 'none'}"]
    if report.approvals:
        lines += ["", "## Decisions asked of a person", "", "| agent | tool | decision | arguments | note |",
                  "|---|---|---|---|---|"]
        lines += [f"| {a.get('agent')} | {a.get('tool')} | {a.get('decision')} | "
                  f"`{json.dumps(a.get('edited_args', a.get('args')))[:200]}` | {a.get('note', '')} |"
                  for a in report.approvals]
    if report.paused_at:
        lines += ["", "Paused: waiting for a decision on " + "; ".join(q.get("what", "?") for q in report.paused_at)]
    if report.errors:
        lines += ["", "Errors:", *[f"- {e}" for e in report.errors]]
    return "\n".join(lines) + "\n"
