"""Run a task through the workflow and score it: the graphs run, eval supplies the scorer.

:func:`graphs.run.run_task` knows nothing of answer keys; this is the same call with the
benchmark's scorer in the evaluation node and the transcript's HTML page written at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphs.state import RunConfig


def write_html_page(transcript: str | None) -> None:
    """The transcript's HTML page beside its JSONL (a failure leaves the JSONL; ``show --html`` retries)."""
    from eval.transcripts import write_html

    if transcript and Path(transcript).is_file():
        try:
            write_html(Path(transcript))
        except (OSError, ValueError):
            pass


def run_task(config: RunConfig, db: str | Path, thread_id: str | None = None,
             progress: Callable[[str], None] | None = None,
             ask: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    """:func:`graphs.run.run_task`, scored (see :func:`eval.scoring.score_run`)."""
    from eval.scoring import score_run
    from graphs import run

    return run.run_task(config, db, thread_id, progress=progress, ask=ask, scorer=score_run,
                        on_end=write_html_page)
