"""What seal-env reads from the process environment: on/off switches (``SEAL_ENV_*``) and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

OFF = ("0", "off", "false", "no", "none")
ON = ("1", "on", "true", "yes")


def switch(name: str, default: bool = True) -> bool:
    """The on/off environment variable ``name``: ``0/off/false/no/none`` -> False, ``1/on/true/yes`` -> True,
    unset or anything else -> ``default``."""
    value = os.environ.get(name, "").strip().lower()
    return False if value in OFF else True if value in ON else default


def cache_dir() -> Path:
    """The seal-env cache folder: ``$SEAL_ENV_CACHE`` or the platform's user cache dir (created if missing)."""
    env = os.environ.get("SEAL_ENV_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        import platformdirs

        path = Path(platformdirs.user_cache_dir("seal-env"))
    path.mkdir(parents=True, exist_ok=True)
    return path
