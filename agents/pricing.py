"""What a run costs: hosted models' list prices per million tokens, self-hosted ones at zero.

Prices live in ``model_prices.json`` beside this file (with each figure's date and source) and can be
extended or overridden like the aliases (``FEDAGENTBENCH_MODEL_PRICES=<file.json>``). A model served
on this machine or a private network (Ollama, ``local``, an openai-compatible server on a loopback or
private address) and the baselines cost 0, without a warning; a hosted model with no price has cost
``None`` and the bench says once which entry to add.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

PRICES_FILE = Path(__file__).with_name("model_prices.json")


class Price(BaseModel):
    """USD per million input and output tokens (output includes a reasoning model's thinking)."""

    input: float = 0.0
    output: float = 0.0
    self_hosted: bool = False

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return round((input_tokens * self.input + output_tokens * self.output) / 1_000_000, 6)


def load_prices() -> dict[str, dict[str, Any]]:
    from agents.models import load_table

    return load_table(PRICES_FILE, "FEDAGENTBENCH_MODEL_PRICES")


def _private_host(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    if host in ("localhost", "host.docker.internal") or host.endswith((".local", ".internal", ".lan")):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def self_hosted(info: Any) -> bool:
    return info.provider in ("baseline", "local", "ollama") or (
        info.provider == "openai-compatible" and _private_host(info.base_url))


def _entry(info: Any) -> dict[str, Any] | None:
    table = load_prices()
    resolved = info.resolved.partition("?")[0]
    return table.get(info.spec) or table.get(resolved) or table.get(info.model)


def price_for(info: Any) -> Price | None:
    """The model's price (zero when self-hosted), or None when a hosted model has no entry."""
    entry = _entry(info)
    if entry is not None and ("input" in entry or "output" in entry):
        return Price(input=float(entry.get("input", 0.0)), output=float(entry.get("output", 0.0)),
                     self_hosted=self_hosted(info))
    if self_hosted(info):
        return Price(self_hosted=True)
    return None


def published(info: Any) -> int | None:
    """The model's published context window, if the table has one."""
    entry = _entry(info) or {}
    value = entry.get("context_window")
    return int(value) if isinstance(value, int | float) and value > 0 else None


def missing_price_message(info: Any) -> str:
    return (f"no price for {info.model!r}: cost is not recorded; add {{\"{info.model}\": {{\"input\": <USD per M "
            "tokens>, \"output\": <USD per M tokens>}}} to a file named by FEDAGENTBENCH_MODEL_PRICES")
