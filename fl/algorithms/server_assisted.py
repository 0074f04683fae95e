"""(being written)"""

from __future__ import annotations

CLIENTS: dict = {}
SERVERS: dict = {}
