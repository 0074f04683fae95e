"""The privacy auditor: nothing that reaches a model or crosses server and client may carry data.

Checks every text for pixel arrays (long runs of numbers), base64 or binary blobs, the synthetic
patients' names and IDs written into the environment's DICOM headers, and answer-key content.
Violations are recorded (with a short excerpt, the identifier masked) and reported per run.

A practitioner's federation keeps its patients' identifiers only as keyed hashes
(:class:`HashedIdentifiers`): no file of ours holds them in the clear, yet the auditor still finds
and withholds them in any text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

_BASE64 = re.compile(r"[A-Za-z0-9+/]{160,}={0,2}")
_NUMBER_RUN = re.compile(r"(?:-?\d{1,5}(?:\.\d+)?[\s,;]+){128,}")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")
#: field names that exist only in answer keys
KEY_MARKERS = ("acceptable_algorithms", "label_mappings", "clean_files", "removed_files", "duplicate_of",
               "relevant_datasets", "answer_key")


#: identifiers shorter than this would match ordinary words
MIN_LENGTH = 5
WITHHELD = "[withheld]"
#: a run of letters and digits: identifiers are matched on whole runs ("Doe^Jane0_scan.dcm" holds
#: Doe, Jane0, scan, dcm), so one glued to other letters or digits ("xPID00000") is not found
_ATOM = re.compile(r"[^\W_]+")
#: the longest identifier looked for, in atoms (DICOM names have at most five components)
_MAX_ATOMS = 8


def normalise(value: str) -> str:
    """The form an identifier is hashed in: case-folded, '^' read as a space, whitespace collapsed,
    punctuation at either end dropped ("Doe^Jane0", "doe jane0" and " DOE^JANE0^^" are one identifier)."""
    text = " ".join(value.replace("^", " ").split()).casefold()
    return re.sub(r"^[\W_]+|[\W_]+$", "", text)


class HashedIdentifiers:
    """Patient identifiers as HMAC-SHA256 hex digests of their :func:`normalise` form, under a
    random per-federation key: the file that lists them names nobody, and only a holder of the key
    can test a word against it.

    Text is searched on spans of 1 to ``max_atoms`` consecutive atoms (letters/digits runs), each
    span hashed twice: its atoms joined by a space, and the text it covers (so "Doe^Jane0",
    "Doe Jane0", "Doe, Jane0", "PID-0001" and "O'Brien^Mary" are found). Only spans whose first atom
    is the first atom of some identifier (a second digest set) are hashed beyond it: one HMAC per
    distinct word of the text, whatever its length."""

    FILE = "identifiers.json"
    KEY_FILE = "audit.key"

    def __init__(self, key: bytes, digests: Iterable[str], first_atoms: Iterable[str], max_atoms: int) -> None:
        self.key = key
        self.digests = frozenset(digests)
        self.first_atoms = frozenset(first_atoms)
        self.max_atoms = max(1, min(int(max_atoms), _MAX_ATOMS))

    @staticmethod
    def digest(key: bytes, text: str) -> str:
        return hmac.digest(key, text.encode("utf-8"), "sha256").hex()

    @classmethod
    def create(cls, identifiers: Iterable[str], key: bytes | None = None) -> "HashedIdentifiers":
        """Hash ``identifiers`` (those of fewer than MIN_LENGTH characters dropped) under ``key``
        (a fresh random one by default)."""
        key = key or secrets.token_bytes(32)
        forms = {n for n in map(normalise, identifiers) if len(n) >= MIN_LENGTH}
        atoms = [_ATOM.findall(n) for n in forms]
        return cls(key, {cls.digest(key, n) for n in forms}, {cls.digest(key, a[0]) for a in atoms if a},
                   max((len(a) for a in atoms), default=1))

    def save(self, folder: Path) -> None:
        """Write the key (``audit.key``, owner-only) and the digests (``identifiers.json``)."""
        folder.mkdir(parents=True, exist_ok=True)
        key_file = folder / self.KEY_FILE
        key_file.unlink(missing_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.key.hex())
        payload = {"scheme": "hmac-sha256 of graphs.privacy.normalise(identifier), key in audit.key",
                   "max_atoms": self.max_atoms, "digests": sorted(self.digests),
                   "first_atoms": sorted(self.first_atoms)}
        (folder / self.FILE).write_text(json.dumps(payload, indent=1), "utf-8")

    @classmethod
    def load(cls, folder: Path) -> "HashedIdentifiers":
        data = json.loads((folder / cls.FILE).read_text("utf-8"))
        key = bytes.fromhex((folder / cls.KEY_FILE).read_text("utf-8").strip())
        return cls(key, data["digests"], data["first_atoms"], data["max_atoms"])

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of every identifier found in ``text``."""
        words = {w.casefold() for w in _ATOM.findall(text)}
        starts = {w for w in words if self.digest(self.key, w) in self.first_atoms}  # an identifier may start here
        if not starts:  # most texts: one HMAC per distinct word, nothing more
            return []
        atoms = list(_ATOM.finditer(text))
        found = []
        for i, first in enumerate(atoms):
            if first.group(0).casefold() not in starts:
                continue
            span = atoms[i:i + self.max_atoms]
            for n, last in enumerate(span, 1):
                start, end = first.start(), last.end()
                joined = " ".join(a.group(0) for a in span[:n]).casefold()
                # the span's atoms and what lies between them, as normalise reads it (no ends to strip)
                covered = " ".join(text[start:end].replace("^", " ").split()).casefold() if end - start <= 256 else joined
                if any(len(c) >= MIN_LENGTH and self.digest(self.key, c) in self.digests for c in {joined, covered}):
                    found.append((start, end))
        return found


class Violation(BaseModel):
    id: str
    where: str
    kind: str
    excerpt: str


class PrivacyAuditor:
    """Scans texts; remembers violations for the run."""

    def __init__(self, patient_identifiers: list[str] | None = None, hashed: HashedIdentifiers | None = None) -> None:
        """``patient_identifiers`` are matched as written (exact substrings), ``hashed`` ones as
        :meth:`HashedIdentifiers.spans` finds them; either or both may be given."""
        self.identifiers = sorted({p for p in (patient_identifiers or []) if len(p) >= MIN_LENGTH}, key=len, reverse=True)
        self.hashed = hashed
        self.violations: list[Violation] = []
        self.checked = 0

    @classmethod
    def for_environment(cls, env_dir: str | Path) -> "PrivacyAuditor":
        """An auditor that knows the environment's patients: a federation's from the keyed hashes
        of ``.private/``, a generated environment's synthetic ones from its answer key."""
        from environments.answer_key import load_environment_key

        private = Path(env_dir) / ".private"
        if (private / HashedIdentifiers.FILE).is_file():  # a practitioner's federation: its DICOM headers' patients
            data = json.loads((private / HashedIdentifiers.FILE).read_text("utf-8"))
            if isinstance(data, list):  # prepared before identifiers were hashed
                return cls(data)
            return cls(hashed=HashedIdentifiers.load(private))
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
        ident = next((i for i in self.identifiers if i in text), None)
        if ident is None and self.hashed is not None and (spans := self.hashed.spans(text)):
            ident = text[spans[0][0]:spans[0][1]]
        if ident is not None:
            found.append(("patient_identifier", ident[:2] + "***"))
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

    def redact(self, text: str) -> tuple[str, int]:
        """``text`` with every patient identifier replaced by "[withheld]", and how many were: for
        what a site sends the coordinator, which must never name a patient."""
        spans = [(m.start(), m.end()) for ident in self.identifiers for m in re.finditer(re.escape(ident), text)]
        if self.hashed is not None:
            spans += self.hashed.spans(text)
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        out, at = [], 0
        for start, end in merged:
            out += [text[at:start], WITHHELD]
            at = end
        return "".join(out) + text[at:], len(merged)
