"""The workflow's client nodes on a deployment (graphs.remote), with the sites answered in this process
through the site service's own ``answer`` and guard (no Flower here: test_federate_deployment runs
the real topology). A site that never answers is reported and the run goes on with the others; a
site asked again for an agent it already ran answers from its own checkpoint."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest


class InProcessSites:
    """A SiteTransport whose sites are site folders on this machine; ``down`` never answer."""

    def __init__(self, envs: dict[str, Path], down: set[str]) -> None:
        self.envs, self.down = envs, down
        self.asked: list[tuple[str, str]] = []
        self.plans: list[dict[str, Any]] = []

    def ask(self, site: str, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        from federation.site_service import SiteGuard, answer
        from graphs.remote import SiteUnavailable

        self.asked.append((site, str(request.get("role") or request["kind"])))
        if site in self.down:
            raise SiteUnavailable("no reply within 60 s")
        reply = answer(json.loads(json.dumps(request)), self.envs[site], site, None)
        return SiteGuard(self.envs[site], site).clean(reply, [])

    def train(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The sites' replies to the plan, as fl.server.run_plan records a failed training (no Flower here)."""
        self.plans.append(plan)
        return {"status": "failed", "algorithm": plan["algorithm"], "rounds": [], "final": None,
                "error": "no Flower in this test"}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    from scripts.make_example_federation import make_example

    root = tmp_path_factory.mktemp("remote")
    make_example(root / "sites", per_class=8)
    folders = {name: root / "sites" / name for name in ("hospital_a", "hospital_b", "hospital_c")}
    yaml_file = root / "federation.yaml"
    yaml_file.write_text('request: "Train a pneumonia classifier on chest X-rays."\nclasses: [normal, pneumonia]\n'
                         "modality: xray\nbody_part: chest\nimage_size: 28\nrounds: 1\nsites:\n"
                         + "".join(f"  - name: {n}\n    path: {p}\n" for n, p in folders.items()))
    return yaml_file, folders


def test_a_silent_site_is_reported_and_the_others_go_on(sites, tmp_path: Path) -> None:
    from federation.run import run_federation
    from federation.site_service import prepare_site
    from federation.spec import load_spec

    yaml_file, folders = sites
    envs = {name: prepare_site(name, folder, tmp_path / f"{name}.site") for name, folder in folders.items()}
    transport = InProcessSites(envs, down={"hospital_c"})
    report = run_federation(load_spec(yaml_file), tmp_path / "coordinator", model="skyline", transport=transport)

    by_site = {s.name: s for s in report.sites}
    assert by_site["hospital_a"].datasets_chosen == ["chest_xrays"] and by_site["hospital_a"].approved
    assert by_site["hospital_b"].label_mappings == {"cxr_dicom": {"N": "normal", "P": "pneumonia"}}
    assert by_site["hospital_c"].approved is False and not by_site["hospital_c"].datasets_chosen
    assert any("hospital_c did not answer" in e for e in report.errors)
    assert any("the site sent no report" in p for p in by_site["hospital_c"].problems)
    # the others went on: cleaned, harmonised, and the training plan names only them, by their own paths
    assert sum(by_site["hospital_b"].removed_by_reason.values()) == 2
    assert by_site["hospital_a"].class_counts == {"normal": 8, "pneumonia": 8}
    (plan,) = transport.plans
    assert [c["name"] for c in plan["clients"]] == ["hospital_a", "hospital_b"]
    assert all(not Path(c["data_dir"]).is_absolute() and c["data_dir"].endswith("/harmonised") for c in plan["clients"])
    assert not (tmp_path / "coordinator" / "federation" / "clients").exists()
    assert report.runtime == "deployment" and report.training_status == "failed"


def test_a_site_asked_again_answers_from_its_checkpoint(sites, tmp_path: Path) -> None:
    from federation.site_service import answer, prepare_site
    from graphs.phases import ClientTask
    from graphs.remote import agent_request
    from graphs.state import RunConfig

    _, folders = sites
    env = prepare_site("hospital_a", folders["hospital_a"], tmp_path / "a.site")
    (env / "federation.json").write_text(json.dumps({"task": {
        "task_id": "federation", "environment": "xray", "title": "pneumonia", "target_classes": ["normal", "pneumonia"],
        "concept_to_target": {}, "requirement": "baseline", "body_part": "chest", "image_size": 28, "colour": False}}))
    config = RunConfig(env_dir=str(tmp_path / "coordinator_env"), task_id="federation", model="skyline", attempt="a1")
    task = ClientTask(config=config, client="hospital_a",
                      requirements={"modality": "xray", "task_type": "classification",
                                    "target_classes": ["normal", "pneumonia"]})
    request = agent_request("C1", task) | {"task_spec": None}
    def threads() -> set[str]:  # the agent runs the site's checkpoint file holds
        with sqlite3.connect(env / "runs" / "site_hospital_a.sqlite") as db:
            return {row[0] for row in db.execute("SELECT DISTINCT thread_id FROM checkpoints")}

    first = answer(request, env, "hospital_a", None)
    assert first["outputs"]["clients"]["hospital_a"]["selected_datasets"] == ["chest_xrays"]
    assert len(threads()) == 1
    again = answer(request, env, "hospital_a", None)
    assert again == first and len(threads()) == 1  # the same seconds and counters: read back, not run again
    fresh = answer(agent_request("C1", task.model_copy(update={"config": config.model_copy(update={"attempt": "a2"})}))
                   | {"task_spec": None}, env, "hospital_a", None)
    assert fresh["outputs"]["clients"]["hospital_a"]["selected_datasets"] == ["chest_xrays"]
    assert len(threads()) == 2  # another run of the coordinator's: the agent runs again
