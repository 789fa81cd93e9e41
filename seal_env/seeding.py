"""Deterministic seeds from the parts that identify a piece of work (run seed, round, article, sample, ...)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A deterministic seed in ``[0, 2**31 - 2**16)`` from JSON-serialisable parts (room for ``eval_times`` repeats)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 2**16)
