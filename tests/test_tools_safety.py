"""Hostile inputs: every tool refuses or handles them, leaves the sources intact, leaks nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from environments.answer_key import load_environment_key
from environments.readers import ImageReadError, read_image
from tools import build_client_tools, build_server_tools
from tools.sandbox import load_origins

ENVS = ("mri", "xray", "ultrasound")


@pytest.fixture(scope="module")
def envs(tiny_envs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile_envs")
    for env in ENVS:
        shutil.copytree(tiny_envs / env, out / env, symlinks=True)
    return out


def digest(env_dir: Path) -> dict[str, str]:
    """Checksum of every file of the environment outside the clients' work areas."""
    out = {}
    for p in sorted(env_dir.rglob("*")):
        rel = p.relative_to(env_dir)
        if len(rel.parts) > 3 and rel.parts[0] == "clients" and rel.parts[2] == "work":
            continue
        if p.is_symlink():
            out[rel.as_posix()] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def identifiers(env_dir: Path) -> list[str]:
    key = load_environment_key(env_dir)
    return [s for p in key.patients for s in (p.name, p.name.replace("^", " "), p.patient_id)]


def hospital_with_dicom(env_dir: Path) -> tuple[Path, str]:
    key = load_environment_key(env_dir)
    for ds in sorted(key.datasets, key=lambda d: not d.local_classes):  # labelled ones first
        if "dicom" in ds.formats:
            return env_dir / "clients" / ds.hospital, ds.path
    raise AssertionError("no DICOM dataset")


def plant(ws: Path, ds_path: str, env_dir: Path) -> None:
    """Links out of the workspace, huge and binary files, broken images, clashing names."""
    src = ws / ds_path
    os.symlink("/etc", src / "escape_dir")
    os.symlink("/etc/hostname", src / "escape_file.txt")
    os.symlink(env_dir / "answer_key", ws / "work" / "key_link")
    (ws / "work" / "big.txt").write_text("x" * 3_000_000)
    (ws / "work" / "blob.bin").write_bytes(bytes(range(256)) * 100)
    custom = ws / "work" / "custom"
    for folder in ("a", "b", "ç d"):
        (custom / folder).mkdir(parents=True)
    png = next(p for p in sorted(env_dir.rglob("*.png")) if readable(p))
    dcm = next(p for p in sorted(ws.rglob("*.dcm")) if readable(p))
    shutil.copyfile(png, custom / "a" / "scan 1.png")
    shutil.copyfile(png, custom / "b" / "scan 1.png")
    shutil.copyfile(png, custom / "ç d" / "Aufnahme_é 2.png")
    (custom / "a" / "empty.png").write_bytes(b"")
    (custom / "a" / "cut.png").write_bytes(png.read_bytes()[:60])
    (custom / "b" / "broken.dcm").write_bytes(dcm.read_bytes()[:200] + b"\x00garbage" * 10)
    (custom / "b" / "not_dicom.dcm").write_bytes(b"hello, I am text")
    (custom / "labels.csv").write_text("file,label\na/scan 1.png,x\nb/scan 1.png,x\nç d/Aufnahme_é 2.png,x\n"
                                       "a/empty.png,y\na/cut.png,y\nb/broken.dcm,y\nb/not_dicom.dcm,y\nmissing.png,y\n",
                                       "utf-8")


def readable(path: Path) -> bool:
    try:
        read_image(path)
        return not path.name.startswith(".")
    except ImageReadError:
        return False


BAD_PATHS = ["../../../answer_key/environment.json", "/etc/passwd", "..", "datasets/../../..", "answer_key",
             "work/key_link/environment.json", "work/\x00evil", "/", "~", "work/../../server/tasks"]


def hostile_calls(ws: Path, ds_path: str) -> list[tuple[str, dict]]:
    link = f"{ds_path}/escape_dir"
    calls: list[tuple[str, dict]] = []
    for p in [*BAD_PATHS, link, f"{ds_path}/escape_file.txt", f"{link}/hostname"]:
        calls += [("read_text_file", {"path": p}), ("list_folder", {"path": p}),
                  ("preview_label_file", {"path": p}), ("summarise_images", {"path": p}),
                  ("list_class_folders", {"path": p}), ("detect_data_issues", {"path": p}),
                  ("remove_non_image_files", {"path": p}), ("report_dataset_statistics", {"path": p}),
                  ("copy_dataset", {"source": p, "destination": "work/h1"}),
                  ("organise_by_label_file", {"source": p, "destination": "work/h2"}),
                  ("convert_images", {"source": p, "destination": "work/h3", "size": 32, "mode": "L"}),
                  ("remove_flagged_files", {"flags_file": p}),
                  ("apply_label_mapping", {"source": p, "mapping": {"a": "b"}, "destination": "work/h4"})]
    for dest in [ds_path, f"{ds_path}/new", "datasets/evil", "../evil", "/tmp/fab_evil", "work", "work/../evil",
                 "work/key_link/x", "data_cards.json"]:
        calls += [("copy_dataset", {"source": ds_path, "destination": dest}),
                  ("organise_by_label_file", {"source": ds_path, "destination": dest}),
                  ("convert_images", {"source": ds_path, "destination": dest, "size": 16, "mode": "L"}),
                  ("apply_label_mapping", {"source": "work/custom", "mapping": {}, "destination": dest})]
    calls += [("remove_non_image_files", {"path": ds_path}), ("remove_non_image_files", {"path": "datasets"}),
              ("remove_non_image_files", {"path": "work"}), ("remove_non_image_files", {"path": "."}),
              ("read_text_file", {"path": f"{ds_path}/" + next(p.name for p in (ws / ds_path).rglob("*.dcm"))}),
              ("read_text_file", {"path": "work/blob.bin"}), ("read_text_file", {"path": "work/big.txt"}),
              ("read_text_file", {"path": "datasets"}), ("preview_label_file", {"path": "work/blob.bin"}),
              ("convert_images", {"source": ds_path, "destination": "work/c", "size": 0}),
              ("convert_images", {"source": ds_path, "destination": "work/c", "mode": "CMYK"}),
              ("convert_images", {"source": ds_path, "destination": "work/c", "size": "huge"}),
              ("detect_data_issues", {"path": ds_path, "checks": ["magic"]}),
              ("apply_label_mapping", {"source": "work/custom", "mapping": "not json", "destination": "work/m"}),
              ("apply_label_mapping", {"source": "work/custom", "mapping": {"zzz": "q"}, "destination": "work/m"}),
              ("apply_label_mapping", {"source": "work/custom", "mapping": {"a": ".."}, "destination": "work/m"}),
              ("organise_by_label_file", {"source": ds_path, "destination": "work/o",
                                          "label_file": "../../answer_key/environment.json"}),
              ("organise_by_label_file", {"source": ds_path, "destination": "work/o", "label_column": "nope"}),
              ("list_folder", {"path": ".", "depth": 99}), ("read_text_file", {}), ("copy_dataset", {"source": 5})]
    return calls


def test_hostile_arguments_are_refused_sources_unchanged_nothing_leaks(envs: Path) -> None:
    for env in ENVS:
        env_dir = envs / env
        ws, ds_path = hospital_with_dicom(env_dir)
        plant(ws, ds_path, env_dir)
        before = digest(env_dir)
        tools = {t.name: t for t in build_client_tools(ws)}
        outputs = []
        for name, args in hostile_calls(ws, ds_path):
            out = tools[name].invoke(args)
            assert isinstance(out, str), (name, args)
            outputs.append((name, args, out))
        # refusals: every escape is an error, with a message a model can act on
        for name, args, out in outputs:
            value = next(iter(args.values()), "") if args else ""
            if isinstance(value, str) and (value in BAD_PATHS or "escape" in value):
                assert out.startswith("error:"), (name, args, out)
        for name, args, out in outputs:
            dest = args.get("destination")
            if isinstance(dest, str) and (not dest.startswith("work/") or dest in ("work/../evil", "work/key_link/x")):
                assert out.startswith("error:"), (name, args, out)
        assert digest(env_dir) == before, "a source file, the server, the key or a link changed"
        assert not Path("/tmp/fab_evil").exists() and not (ws.parent / "evil").exists()
        text = "\n".join(o for _, _, o in outputs)
        for ident in identifiers(env_dir):
            assert ident not in text
        assert "root:x:0" not in text and "answer_key" not in text
        assert len(max((o for _, _, o in outputs), key=len)) <= 5200


def test_broken_images_odd_names_and_name_clashes_are_handled(envs: Path) -> None:
    env_dir = envs / "mri"
    ws, _ = hospital_with_dicom(env_dir)
    if not (ws / "work" / "custom").is_dir():
        plant(ws, hospital_with_dicom(env_dir)[1], env_dir)
    tools = {t.name: t for t in build_client_tools(ws)}
    out = json.loads(tools["organise_by_label_file"].invoke({"source": "work/custom", "destination": "work/org"}))
    assert out["copied"] == 7 and out["label_entries_without_file"]["count"] == 1
    assert out["renamed_to_avoid_clashes"] == 2
    names = sorted(p.name for p in (ws / "work" / "org" / "x").iterdir())
    assert names == ["Aufnahme_é 2.png", "a__scan 1.png", "b__scan 1.png"]
    summary = json.loads(tools["summarise_images"].invoke({"path": "work/org"}))
    assert summary["unreadable"]["count"] == 4
    assert summary["images_per_subfolder"] == {"x": 3, "y": 4}
    conv = json.loads(tools["convert_images"].invoke({"source": "work/org", "destination": "work/conv",
                                                      "size": 24, "mode": "RGB"}))
    assert conv["converted"] == 3 and conv["skipped_unreadable"]["count"] == 4
    assert {p.name for p in (ws / "work" / "conv" / "x").iterdir()} == {"Aufnahme_é 2.png", "a__scan 1.png",
                                                                        "b__scan 1.png"}
    cleaned = json.loads(tools["remove_non_image_files"].invoke({"path": "work/org"}))
    assert cleaned["unreadable_images_removed"] == 4 and cleaned["images_kept"] == 3
    assert set(load_origins(ws / "work" / "org").values()) == {"work/custom/a/scan 1.png", "work/custom/b/scan 1.png",
                                                               "work/custom/ç d/Aufnahme_é 2.png"}
    merged = json.loads(tools["apply_label_mapping"].invoke({"source": "work/conv", "mapping": {"x": "t"},
                                                             "destination": "work/final"}))
    again = json.loads(tools["apply_label_mapping"].invoke({"source": "work/conv", "mapping": {"x": "t"},
                                                            "destination": "work/final", "merge": True}))
    assert merged["copied_per_target_class"] == {"t": 3} and again["destination_class_counts"] == {"t": 6}
    # a planted flags file naming sources or files outside its folder is refused
    flags = ws / "work" / "evil.flags.json"
    flags.write_text(json.dumps({"folder": "work/final", "duplicates": [{"file": "data_cards.json"}]}))
    assert tools["remove_flagged_files"].invoke({"flags_file": "work/evil.flags.json"}).startswith("error:")
    flags.write_text(json.dumps({"folder": "datasets", "duplicates": [{"file": "datasets/x.png"}]}))
    assert "read-only" in tools["remove_flagged_files"].invoke({"flags_file": "work/evil.flags.json"})
    assert (ws / "data_cards.json").is_file()


def test_every_tool_output_is_metadata_without_patient_identifiers(envs: Path) -> None:
    """All client tools on every labelled DICOM dataset: no identifier, no pixel runs, no base64."""
    from graphs.privacy import PrivacyAuditor

    for env in ENVS:
        env_dir = envs / env
        auditor = PrivacyAuditor.for_environment(env_dir)
        key = load_environment_key(env_dir)
        for ds in key.datasets:
            if "dicom" not in ds.formats:
                continue
            ws = env_dir / "clients" / ds.hospital
            tools = {t.name: t for t in build_client_tools(ws)}
            dest = f"work/priv/{ds.name}"
            runs = [("list_folder", {"path": ds.path, "depth": 3}), ("summarise_images", {"path": ds.path}),
                    ("read_text_file", {"path": "data_cards.json"}),
                    ("detect_data_issues", {"path": ds.path}),
                    ("copy_dataset", {"source": ds.path, "destination": dest}),
                    ("convert_images", {"source": dest, "destination": dest + "_png", "size": 16, "mode": "L"})]
            if ds.label_file:
                runs.append(("preview_label_file", {"path": f"{ds.path}/{ds.label_file}"}))
            for name, args in runs:
                out = tools[name].invoke(args)
                assert not auditor.check(out, name), (name, out[:300])
    server = {t.name: t for t in build_server_tools(envs / "xray" / "server")}
    for name, args in [("read_task", {}), ("read_task", {"task_id": "../answer_key/tasks/x"}),
                       ("query_algorithm_registry", {}), ("read_client_statistics", {}),
                       ("read_client_statistics", {"hospitals": ["../../etc"]})]:
        out = server[name].invoke(args)
        assert isinstance(out, str) and "answer_key" not in out


def test_decode_cache_serves_by_content_and_never_shows_another_files_location(tmp_path: Path) -> None:
    """Runs share the content-keyed decode cache: a cached failure names the file asked about, never
    the folder or name of the file that filled the cache (another run's workspace)."""
    import numpy as np
    from PIL import Image

    from environments.readers import decode_cache

    broken = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + os.urandom(40)
    first, second = tmp_path / "run-a" / "first.png", tmp_path / "run-b" / "second.png"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(broken)
    hits = decode_cache.hits
    with pytest.raises(ImageReadError) as one:
        read_image(first)
    with pytest.raises(ImageReadError) as two:
        read_image(second)
    assert decode_cache.hits == hits + 1  # the second answer came from the cache
    assert str(two.value).startswith("second.png: ") and "run-a" not in str(two.value)
    assert "first" not in str(two.value) and str(one.value).startswith("first.png: ")
    assert "BytesIO" not in str(two.value) and "second.png" in str(two.value).split(": ", 1)[1]

    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    for name in ("a.png", "b.png"):
        Image.fromarray(pixels).save(tmp_path / name)
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    assert a is b and np.array_equal(a, pixels)
    with pytest.raises(ValueError):  # cached pixels are shared: read-only
        a[0, 0] = 1
    (tmp_path / "a.png").write_bytes((tmp_path / "a.png").read_bytes()[:40])  # same name, new (broken) content
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "a.png")
