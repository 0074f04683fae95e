"""The privacy auditor: nothing that reaches a model or crosses server and client may carry data.

Checks every text for pixel arrays (long runs of numbers), base64 or binary blobs, the synthetic
patients' names and IDs written into the environment's DICOM headers, and answer-key content.
Violations are recorded (with a short excerpt, the identifier masked) and reported per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import BaseModel

_BASE64 = re.compile(r"[A-Za-z0-9+/]{160,}={0,2}")
_NUMBER_RUN = re.compile(r"(?:-?\d{1,5}(?:\.\d+)?[\s,;]+){128,}")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
#: field names that exist only in answer keys
KEY_MARKERS = ("acceptable_algorithms", "label_mappings", "clean_files", "removed_files", "duplicate_of",
               "relevant_datasets", "answer_key")


class Violation(BaseModel):
    id: str
    where: str
    kind: str
    excerpt: str


class PrivacyAuditor:
    """Scans texts; remembers violations for the run."""

    def __init__(self, patient_identifiers: list[str] | None = None) -> None:
        # identifiers shorter than 5 characters would match ordinary words
        self.identifiers = sorted({p for p in (patient_identifiers or []) if len(p) >= 5}, key=len, reverse=True)
        self.violations: list[Violation] = []
        self.checked = 0

    @classmethod
    def for_environment(cls, env_dir: str | Path) -> "PrivacyAuditor":
        """An auditor that knows the environment's synthetic patients (from its answer key)."""
        from environments.answer_key import load_environment_key

        private = Path(env_dir) / ".private" / "identifiers.json"
        if private.is_file():  # a practitioner's federation: the patients named in its DICOM headers
            return cls(json.loads(private.read_text("utf-8")))
        key = load_environment_key(Path(env_dir))
        ids: list[str] = []
        for p in key.patients:
            ids += [p.name, p.name.replace("^", " "), p.patient_id]
        return cls(ids)

    def check(self, text: str, where: str) -> list[Violation]:
        """Record and return the violations found in ``text``."""
        self.checked += 1
        found: list[tuple[str, str]] = []
        if _CONTROL.search(text):
            found.append(("binary", "control characters"))
        if m := _BASE64.search(text):
            found.append(("base64", m.group(0)[:24] + "…"))
        if m := _NUMBER_RUN.search(text):
            found.append(("pixel_array", m.group(0)[:40] + "…"))
        for ident in self.identifiers:
            if ident in text:
                found.append(("patient_identifier", ident[:2] + "***"))
                break
        for marker in KEY_MARKERS:
            if marker in text:
                found.append(("answer_key", marker))
                break
        new = []
        for kind, excerpt in found:
            vid = hashlib.sha1(f"{where}|{kind}|{excerpt}|{text[:200]}".encode()).hexdigest()[:16]
            if all(v.id != vid for v in self.violations):
                v = Violation(id=vid, where=where, kind=kind, excerpt=excerpt)
                self.violations.append(v)
                new.append(v)
        return new
