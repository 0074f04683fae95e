"""Workspace confinement and the common tool envelope.

Every tool receives paths from an LLM, so every path goes through :meth:`Workspace.resolve`: it is
taken relative to the workspace root, symlinks are resolved, and anything that ends up outside the
root (``..``, absolute paths elsewhere, links pointing out), contains a NUL byte or names the answer
key is refused. Writes are allowed only under ``work/``, so the source datasets stay read-only.
:func:`guarded` turns every exception into an ``error: ...`` string, and :func:`render` caps the
output size, because the result goes straight into a model's context.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: longest text a tool hands back (the agent runner cuts at 6000; we stay below with a note)
OUTPUT_CAP = 5000
#: longest list printed in full inside a tool result
LIST_CAP = 40
WORK = "work"
_FORBIDDEN_NAMES = ("answer_key", "answer-key", "answerkey")
_KEY_REFUSAL = "that path names the answer key, which is not part of any workspace; refused"


class ToolError(Exception):
    """A problem the agent can fix; the message is shown to it as is."""


class Workspace:
    """One agent's root folder; every path a tool touches is checked against it.

    ``work_dir`` mounts a folder that lies elsewhere as the workspace's ``work/`` (the benchmark gives
    every run its own, outside every workspace, so that no run can read another run's files); a
    ``work/`` folder physically inside the root is then unreachable.
    """

    def __init__(self, root: str | Path, work_dir: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ValueError(f"workspace {root} is not a folder")
        self.mounted = work_dir is not None
        if work_dir is not None:
            Path(work_dir).mkdir(parents=True, exist_ok=True)
        self.work = Path(work_dir).resolve() if work_dir is not None else self.root / WORK

    def _inside(self, real: Path) -> bool:
        if self.mounted and (real == self.work or real.is_relative_to(self.work)):
            return True
        if not real.is_relative_to(self.root):
            return False
        # with a mounted work/, the root's own work/ folder (other runs, older layouts) is out of reach
        return not (self.mounted and real.relative_to(self.root).parts[:1] == (WORK,))

    def resolve(self, path: str | Path | None, *, must_exist: bool = True, write: bool = False) -> Path:
        """The real path inside the workspace that ``path`` names, or :class:`ToolError`."""
        text = "" if path is None else str(path)
        if "\x00" in text:
            raise ToolError("path contains a NUL byte; refused")
        text = text.strip() or "."
        if any(part.lower() in _FORBIDDEN_NAMES for part in Path(text).parts):
            raise ToolError(_KEY_REFUSAL)
        candidate = Path(text)
        if not candidate.is_absolute():
            parts = Path(os.path.normpath(text)).parts
            if self.mounted and parts[:1] == (WORK,):
                candidate = self.work.joinpath(*parts[1:])
            else:
                candidate = self.root / candidate
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError) as exc:  # symlink loops and the like
            raise ToolError(f"{text!r}: cannot be resolved ({exc})") from None
        if not self._inside(real):
            normal = Path(os.path.normpath(candidate))
            if self._inside(normal):
                raise ToolError(f"{text!r} is a link that points outside the workspace; refused")
            raise ToolError(f"{text!r} is outside the workspace; use paths relative to it, e.g. datasets/<name> "
                            f"or {WORK}/<folder>")
        inner = real.relative_to(self.work) if self.mounted and real.is_relative_to(self.work) \
            else real.relative_to(self.root)
        if any(part.lower() in _FORBIDDEN_NAMES for part in inner.parts):
            raise ToolError(_KEY_REFUSAL)
        if write and not (real == self.work or real.is_relative_to(self.work)):
            raise ToolError(f"{text!r}: writing is allowed only under {WORK}/ (e.g. {WORK}/cleaned/<name>); "
                            "the source datasets are read-only")
        if must_exist and not real.exists():
            raise ToolError(f"{text!r} does not exist in the workspace")
        return real

    def rel(self, path: Path) -> str:
        """``path`` as the agent should see it: relative to the workspace root."""
        if self.mounted and (path == self.work or path.is_relative_to(self.work)):
            return Path(WORK, path.relative_to(self.work)).as_posix()
        try:
            return path.relative_to(self.root).as_posix() or "."
        except ValueError:
            return path.name

    def output_path(self, path: str, overwrite: bool = False, merge: bool = False) -> Path:
        """A destination folder under work/, checked but left as it is: refused if it exists and is not
        empty (unless told to replace or merge)."""
        dest = self.resolve(path, must_exist=False, write=True)
        if dest == self.work:
            raise ToolError(f"choose a sub-folder of {WORK}/ as destination, e.g. {WORK}/cleaned/<name>")
        if dest.exists() and not dest.is_dir():
            raise ToolError(f"{self.rel(dest)} exists and is a file")
        if dest.exists() and any(dest.iterdir()) and not merge and not overwrite:
            raise ToolError(f"{self.rel(dest)} already exists and is not empty; choose another destination "
                            "or pass overwrite=true to replace it")
        return dest

    def new_output(self, path: str, overwrite: bool = False, merge: bool = False) -> Path:
        """A destination folder under work/, created (an existing one replaced when ``overwrite``)."""
        dest = self.output_path(path, overwrite, merge)
        if dest.exists() and any(dest.iterdir()) and not merge:
            _remove_output(dest)
        dest.mkdir(parents=True, exist_ok=True)
        return dest

    @contextlib.contextmanager
    def staged_output(self, dest: Path) -> Iterator[Path]:
        """Build the output folder ``dest`` (from :meth:`output_path`) in a hidden folder beside it and
        move it into place only once complete: a tool that fails or dies half-way leaves no
        half-written folder, and a folder it was to replace stays as it was."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        stage = dest.parent / f".{dest.name}.partial-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if dest.exists():
            _remove_output(dest)
        stage.rename(dest)


def walk_files(root: Path) -> Iterator[Path]:
    """Regular files under ``root`` in sorted order (a folder's files, then its sub-folders, as
    ``os.walk`` goes); symlinks are never followed or returned. One ``scandir`` per folder and no
    extra ``stat`` per file: every batch tool walks whole datasets with it."""
    if root.is_file() and not root.is_symlink():
        yield root
        return
    yield from _walk(os.fspath(root))


def _walk(folder: str) -> Iterator[Path]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:  # vanished or unreadable folders are skipped, as os.walk does
        return
    subfolders = []
    for entry in entries:
        try:
            if entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                yield Path(entry.path)
        except OSError:
            continue
    for sub in subfolders:
        yield from _walk(sub)


def _remove_output(dest: Path) -> None:
    """Delete an output folder and its provenance sidecar."""
    shutil.rmtree(dest)
    sidecar = manifest_path(dest)
    if sidecar.is_file():
        sidecar.unlink()


def manifest_path(folder: Path) -> Path:
    """Provenance sidecar of an output folder: ``<folder>.manifest.json`` beside it, never inside."""
    return folder.with_name(folder.name + ".manifest.json")


def load_origins(folder: Path) -> dict[str, str]:
    """Output file (relative to ``folder``) -> original source path (relative to the workspace)."""
    sidecar = manifest_path(folder)
    if not sidecar.is_file():
        return {}
    try:
        return dict(json.loads(sidecar.read_text("utf-8")).get("origin", {}))
    except (ValueError, AttributeError):
        return {}


def origin_of(ws: Workspace, folder: Path, file: Path) -> str:
    """Where ``file`` (inside ``folder``) came from originally, following earlier manifests."""
    rel = file.relative_to(folder).as_posix()
    return load_origins(folder).get(rel) or ws.rel(file)


def write_manifest(ws: Workspace, dest: Path, origins: dict[str, str], step: str, merge: bool = False) -> None:
    """Record for every output file its original source, so results stay traceable."""
    old = load_origins(dest) if merge else {}
    payload = {"step": step, "origin": dict(sorted({**old, **origins}.items()))}
    write_atomic(manifest_path(dest), json.dumps(payload, indent=1, ensure_ascii=False) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Write a text file whole or not at all (beside it, then renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(text, "utf-8")
    tmp.replace(path)


#: stands for the full result's path in a capped list's note until the file is written
FULL_OUTPUT = "<full output>"
#: where tools keep their full results when they show only a page of them (under the agent's work/)
FULL_OUTPUTS_DIR = "tool-outputs"


class CappedList(list):
    """The first items of a longer list shown to the model; ``full`` keeps them all."""

    def __init__(self, shown: list[Any], full: list[Any]) -> None:
        super().__init__(shown)
        self.full = full


def cap_list(items: list[Any], limit: int = LIST_CAP) -> list[Any]:
    """The first ``limit`` items, plus a note on how many were left out and where all of them are
    (the tool's full result is written to ``work/tool-outputs/`` by :func:`guarded`)."""
    items = list(items)
    if len(items) <= limit:
        return items
    note = f"... and {len(items) - limit} more: all {len(items)} in {FULL_OUTPUT}"
    return CappedList(items[:limit] + [note], items)


def _full(result: Any) -> tuple[Any, bool]:
    """``result`` with every capped list restored whole, and whether there was one."""
    if isinstance(result, CappedList):
        return [_full(item)[0] for item in result.full], True
    if isinstance(result, dict):
        pairs = {k: _full(v) for k, v in result.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    if isinstance(result, list):
        pairs = [_full(v) for v in result]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    return result, False


def _as_text(result: Any) -> str:
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json", exclude_none=True)
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, indent=1, default=str)


def _keep_full(ws: Workspace | None, name: str, text: str, suffix: str = ".json") -> str | None:
    """Write a tool's whole result under ``work/tool-outputs/`` (a person, the federation report and
    the agent's read_text_file can read it); its workspace path, or None without a workspace."""
    if ws is None:
        return None
    import uuid

    folder = ws.work / FULL_OUTPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}-{uuid.uuid4().hex[:8]}{suffix}"
    write_atomic(target, text)
    return ws.rel(target)


def render(result: Any, cap: int = OUTPUT_CAP, ws: Workspace | None = None, name: str = "tool") -> str:
    """Compact JSON (or text), at most ``cap`` characters. A result that shows only part of a list or
    is cut keeps its whole self in ``work/tool-outputs/`` and says how to read on (read_text_file with
    ``offset``): long outputs are paged, never silently cut."""
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json", exclude_none=True)
    text = _as_text(result)
    whole, capped = _full(result)
    suffix = ".txt" if isinstance(whole, str) else ".json"
    kept = _keep_full(ws, name, _as_text(whole), suffix) if capped or len(text) > cap else None
    text = text.replace(FULL_OUTPUT, kept or "(not kept)")
    if len(text) > cap:
        where = (f" the whole output is in {kept}: read it with read_text_file(path={kept!r}, offset=...)"
                 if kept else "")
        text = text[:cap] + f"\n[... truncated: output longer than {cap} characters;{where}]"
    return text


def guarded(func: Callable[..., Any], name: str, ws: Workspace | None = None) -> Callable[..., str]:
    """Run a tool body; any exception becomes an ``error: ...`` message instead of escaping."""

    def wrapper(**kwargs: Any) -> str:
        try:
            return render(func(**kwargs), ws=ws, name=name)
        except ToolError as exc:
            return f"error: {exc}"
        except Exception as exc:  # noqa: BLE001 - a bug or an odd file must not stop the run
            return f"error: {name} failed: {type(exc).__name__}: {str(exc)[:300]}"

    return wrapper


def make_tool(ws: Workspace, func: Callable[..., Any], name: str, description: str,
              schema: type[BaseModel]) -> Any:
    """A LangChain StructuredTool bound to ``ws``; argument errors also come back as messages."""
    from langchain_core.tools import StructuredTool

    def bad_args(exc: Exception) -> str:
        return f"error: invalid arguments for {name}: {str(exc)[:400]}"

    body = functools.partial(func, ws)
    return StructuredTool.from_function(func=guarded(body, name, ws), name=name, description=description,
                                        args_schema=schema, handle_validation_error=bad_args,
                                        handle_tool_error=bad_args)
