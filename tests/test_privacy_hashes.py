"""Patient identifiers of a practitioner's federation are kept only as keyed hashes: no file under the
work folder names a patient, yet the privacy auditor still finds and withholds them in any text."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from graphs.privacy import HashedIdentifiers, PrivacyAuditor, normalise

NAMES = [f"Doe^Jane{i}" for i in range(4)]
IDS = [f"PID{i:05d}" for i in range(4)]


def _site(root: Path) -> Path:
    """A hospital's folder: DICOM files in class folders, each header naming a patient."""
    from environments.formats import DicomStyle, Patient, write_dicom

    site = root / "hospital_x"
    for i, (name, pid) in enumerate(zip(NAMES, IDS, strict=True)):
        folder = site / ("normal" if i < 2 else "pneumonia")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (16, 16), dtype=np.uint8)
        write_dicom(folder / f"img_{i}.dcm", pixels, patient=Patient(name, pid, "19700101", "F"), style=DicomStyle(),
                    modality="DX", institution="Hospital X", body_part="chest", uid_seed=str(i),
                    study_date="20260101", series_description="chest PA")
    return site


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> tuple[Path, Path]:
    """(site folder, prepared federation folder)."""
    from federation.run import prepare
    from federation.spec import FederationSpec, Site

    root = tmp_path_factory.mktemp("hashes")
    site = _site(root / "sites")
    spec = FederationSpec(request="Train a pneumonia classifier on chest X-rays.", classes=["normal", "pneumonia"],
                          sites=[Site(name="hospital_x", path=site)])
    return site, prepare(spec, root / "work")


def test_no_file_under_the_work_folder_names_a_patient(federation) -> None:
    site, env = federation
    forms = {f for v in NAMES + IDS for f in (v, v.replace("^", " "), v.lower(), v.replace("^", " ").lower())}
    copies = env / "clients" / "hospital_x" / "datasets"
    checked = 0
    for f in (p for p in env.parent.rglob("*") if p.is_file()):
        if f.is_relative_to(copies):  # the site's own images, copied byte for byte: its data, not ours
            assert f.read_bytes() == (site / f.relative_to(copies / "hospital_x")).read_bytes()
            continue
        data = f.read_bytes()
        data_lower = data.lower()
        assert not [x for x in forms if x.encode() in data or x.lower().encode() in data_lower], f
        checked += 1
    assert checked >= 5  # cards, request, task, identifiers, key, ...
    key = env / ".private" / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(bytes.fromhex(key.read_text())) == 32
    digests = json.loads((env / ".private" / "identifiers.json").read_text())["digests"]
    assert len(digests) == len(NAMES) + len(IDS)


def test_the_auditor_of_a_federation_finds_and_withholds_hashed_identifiers(federation) -> None:
    _, env = federation
    auditor = PrivacyAuditor.for_environment(env)
    assert auditor.hashed is not None and not auditor.identifiers
    leaks = ["The scan of Doe^Jane0 shows consolidation.", "patient doe jane1 was excluded",
             json.dumps({"PatientName": "Doe^Jane2", "PatientID": "PID00003"}),
             "removed datasets/Doe^Jane0_scan.dcm (near-duplicate)", "DOE, JANE3 and PID00000"]
    for i, text in enumerate(leaks):
        assert [v.kind for v in auditor.check(text, f"leak {i}")] == ["patient_identifier"], text
        redacted, count = auditor.redact(text)
        assert count >= 1 and "[withheld]" in redacted and not auditor.check(redacted, f"redacted {i}"), redacted
    assert auditor.redact("removed datasets/Doe^Jane0_scan.dcm") == ("removed datasets/[withheld]_scan.dcm", 1)
    assert auditor.redact('{"PatientID": "PID00003", "name": "Doe^Jane2"}') == \
        ('{"PatientID": "[withheld]", "name": "[withheld]"}', 2)
    # other patients, parts of a name, and ordinary text are not identifiers
    for text in ("Doe^Jane9 and PID00009", "Jane0 Jane1 Doe", "cleaned 12 images in hospital_x/normal"):
        assert not auditor.check(text, text) and auditor.redact(text) == (text, 0)


def test_short_identifiers_never_match_and_clear_auditors_behave_as_before() -> None:
    hashed = PrivacyAuditor(hashed=HashedIdentifiers.create(["AB12", "Doe^Jane0"]))
    clear = PrivacyAuditor(["AB12", "Doe^Jane0", "Doe Jane0"])
    for auditor in (hashed, clear):
        assert not auditor.check("sample AB12 of site ab12", "short")
        assert auditor.check("PatientName=Doe^Jane0", "long")[0].kind == "patient_identifier"
    assert sorted(clear.identifiers) == ["Doe Jane0", "Doe^Jane0"]
    assert clear.redact("Doe^Jane0, Doe Jane0 and AB12") == ("[withheld], [withheld] and AB12", 2)
    assert not clear.check("doe^jane0", "case")  # clear identifiers match as written
    assert normalise(" DOE^Jane0^^ ") == normalise("doe jane0") == "doe jane0"


def test_a_federation_prepared_with_clear_identifiers_is_hashed_on_resume(tmp_path: Path) -> None:
    from federation.run import prepare
    from federation.spec import FederationSpec, Site

    spec = FederationSpec(request="Train a pneumonia classifier.", classes=["normal", "pneumonia"],
                          sites=[Site(name="hospital_x", path=_site(tmp_path / "sites"))])
    env = prepare(spec, tmp_path / "work")
    (env / ".private" / "identifiers.json").write_text(json.dumps(NAMES))  # as written before hashing
    assert sorted(PrivacyAuditor.for_environment(env).identifiers) == NAMES  # still read
    prepare(spec, tmp_path / "work")
    assert "Doe" not in (env / ".private" / "identifiers.json").read_text()
    assert PrivacyAuditor.for_environment(env).check("Doe^Jane1", "x")


def test_auditing_a_long_text_takes_a_few_milliseconds() -> None:
    auditor = PrivacyAuditor(hashed=HashedIdentifiers.create([f"Doe^Jane{i}" for i in range(25)] +
                                                             [f"PID{i:05d}" for i in range(25)]))
    rng = np.random.default_rng(0)
    words = ("the cleaning agent removed near duplicate images from datasets/chest_xrays/normal/img_0042.png "
             "converted DICOM to PNG, classes normal pneumonia; Doe Jane label file labels.csv").split()
    text = " ".join(rng.choice(words, 4000))[:20_000]
    start = time.perf_counter()
    for _ in range(20):
        auditor.hashed.spans(text)
    ms = (time.perf_counter() - start) / 20 * 1000
    print(f"hashed identifier scan of 20,000 characters, 50 identifiers: {ms:.1f} ms")
    assert ms < 50  # a few ms on a laptop; generous for a loaded test machine
