"""What a hospital's site service lets out (federation.site_service.SiteGuard) and where it lets the
coordinator point (fl.client.site_path); fast checks beside the end-to-end deployment test."""

from __future__ import annotations

from pathlib import Path

import pytest


def _site(tmp_path: Path) -> tuple[Path, str]:
    import numpy as np
    from PIL import Image

    from federation.site_service import prepare_site
    from graphs.privacy import HashedIdentifiers

    data = tmp_path / "hospital_x"
    for cls in ("normal", "pneumonia"):
        (data / "chest_set" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(data / "chest_set" / cls / f"patientfile_{cls}{i}.png")
    (data / "chest_set" / "pneumonia" / "scanner_export_7").mkdir()
    (data / "chest_set" / "pneumonia" / "scanner_export_7" / "notes.txt").write_text("export log")
    env = prepare_site("hospital_x", data, tmp_path / "work")
    HashedIdentifiers.create(["Doe^Jane0", "PID000123"]).save(env / ".private")  # as a site's DICOM headers give them
    return env, "hospital_x"


def test_guard_withholds_file_names_folders_and_patients_but_not_datasets_or_classes(tmp_path: Path) -> None:
    from federation.site_service import SiteGuard

    env, name = _site(tmp_path)
    found: list[str] = []
    reply = {"outputs": {"clients": {name: {"selected_datasets": ["chest_set"],
                                            "selection_reason": "chest_set has normal and pneumonia images",
                                            "cleaning_summary": "removed patientfile_normal1.png (duplicate) and "
                                                                "scanner_export_7/; patient Doe^Jane0, PID000123",
                                            "label_mappings": {"chest_set": {"normal": "normal", "pneumonia": "pneumonia"}}}}}}
    clean = SiteGuard(env, name).clean(reply, found)
    record = clean["outputs"]["clients"][name]
    assert record["selected_datasets"] == ["chest_set"]
    assert record["selection_reason"] == "chest_set has normal and pneumonia images"
    assert record["label_mappings"] == {"chest_set": {"normal": "normal", "pneumonia": "pneumonia"}}
    text = record["cleaning_summary"]
    for private in ("patientfile_normal1", "scanner_export_7", "Doe^Jane0", "PID000123"):
        assert private not in text
    assert text.count("[withheld]") >= 4 and len(found) >= 4


def test_site_paths_stay_inside_the_site(tmp_path: Path) -> None:
    from fl.client import site_path

    root = tmp_path / "site"
    root.mkdir()
    assert site_path(str(root), "runs/x/clients/a/harmonised") == root.resolve() / "runs/x/clients/a/harmonised"
    for bad in ("../elsewhere", "/etc/passwd", "runs/../../x"):
        with pytest.raises(ValueError, match="not a path inside"):
            site_path(str(root), bad)


def test_a_site_prepared_twice_is_reused_and_refuses_another_name(tmp_path: Path) -> None:
    from federation.site_service import prepare_site
    from federation.spec import FederationError

    env, name = _site(tmp_path)
    stamp = (env / "environment.json").stat().st_mtime_ns
    assert prepare_site(name, tmp_path / "hospital_x", tmp_path / "work") == env
    assert (env / "environment.json").stat().st_mtime_ns == stamp
    with pytest.raises(FederationError, match="holds site"):
        prepare_site("other", tmp_path / "hospital_x", tmp_path / "work")
    with pytest.raises(FederationError, match="inside its data folder"):
        prepare_site(name, tmp_path / "hospital_x", tmp_path / "hospital_x" / "w")


def test_a_coordinator_cannot_point_a_site_outside_its_folder(tmp_path: Path) -> None:
    from federation.site_service import answer
    from graphs.phases import ClientTask
    from graphs.remote import agent_request
    from graphs.state import RunConfig

    env, name = _site(tmp_path)
    config = RunConfig(env_dir="/coordinator/env", task_id="../../elsewhere", model="skyline")
    reply = answer(agent_request("C2", ClientTask(config=config, client=name)) | {"task_spec": None}, env, name, None)
    assert "plain name" in reply["error"]
    with pytest.raises(ValueError, match="not a path inside"):  # the ClientApp replies with it as an error
        answer({"kind": "data_shape", "path": "../../etc"}, env, name, None)
