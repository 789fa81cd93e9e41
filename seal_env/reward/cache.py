"""A persistent, content-addressed reward cache: the same inner loop is never trained twice.

A reward is a pure function of (base model, article, self-edit, settings, seed): :func:`reward_key` hashes all of
them (the model as a SHA-256 of its weights and vocabulary, :func:`model_fingerprint`,
so ``set_base_weights`` starts a new namespace) together with the seal-env and mlx versions and
:data:`CACHE_VERSION`. :class:`RewardCache` keeps one small JSON file per key under ``<dir>/<key[:2]>/<key>.json``.

Why one file per key rather than sqlite: every entry is written once and never changed, so writes need no lock.
A writer puts the entry in a temp file in the same folder and moves it into place with ``os.replace``, which is
atomic on POSIX and Windows: readers see either no file or a complete one, two processes computing the same reward
both succeed (last rename wins, the contents are equal), and nothing is left locked if a process dies. It works
on any file system (sqlite's WAL mode does not work on network file systems), the cache is shared by every env
instance and process pointed at the same folder, and entries can be inspected or deleted by hand. A hit is one
``open`` + ``json.loads`` (well under a millisecond for a warm file system). An entry is checked before it is
used (:func:`valid_entry`: a finite reward, an info with the fields of a result); an invalid one (edited by hand,
written by other code) is a miss: the reward is recomputed and stored over it.

Switch: the env setting ``cache=False``, or the environment variable ``SEAL_ENV_REWARD_CACHE=off`` (e.g. in test
suites); ``SEAL_ENV_REWARD_CACHE=/some/dir`` or ``cache_dir=...`` chooses the folder (default
``seal_env.models.cache_dir() / "rewards"``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from seal_env._version import __version__
from seal_env.config import REWARD_KINDS
from seal_env.env_vars import OFF, ON, cache_dir, switch

#: Bump when the reward computation changes in a way the key does not capture: old entries are then ignored.
CACHE_VERSION = 1
ENV_VAR = "SEAL_ENV_REWARD_CACHE"


def enabled(setting: bool = True) -> bool:
    """Whether caching is on: the env setting, unless ``SEAL_ENV_REWARD_CACHE`` turns it off."""
    return bool(setting) and switch(ENV_VAR)


def default_dir() -> Path:
    """``$SEAL_ENV_REWARD_CACHE`` if that is a folder (not an on/off value), else ``<cache dir>/rewards``."""
    chosen = os.environ.get(ENV_VAR, "").strip()
    if chosen and chosen.lower() not in OFF + ON:
        return Path(chosen).expanduser()
    return cache_dir() / "rewards"


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=True)


def reward_key(model_fingerprint: str, article: Any, self_edit: str, settings: dict[str, Any], seed: int) -> str:
    """SHA-256 (hex) of everything that decides a reward. ``article`` is an Article (title, context, questions)."""
    import mlx.core as mx

    payload = {
        "cache_version": CACHE_VERSION,
        "seal_env": __version__,
        "mlx": mx.__version__,  # type: ignore[attr-defined]  # mlx.core has it; its stubs omit it
        "model": model_fingerprint,
        "article": article.to_dict(),
        "self_edit": self_edit,
        "settings": settings,
        "seed": int(seed),
    }
    return hashlib.sha256(_canonical(payload).encode("utf-8", "surrogatepass")).hexdigest()


#: Info fields that every computed result has (seal_env.reward.pipeline.reward_info) and a cache entry must carry: the
#: reward itself, whether the inner loop diverged, and the gain of every reward kind.
REQUIRED_INFO_KEYS = ("reward", "diverged", *(f"{kind}_gain" for kind in REWARD_KINDS))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_entry(entry: Any, key: str) -> bool:
    """Whether ``entry`` (a decoded cache file) is a result stored under ``key``: a finite number ``reward`` and an
    ``info`` object with :data:`REQUIRED_INFO_KEYS`, the same reward, a bool ``diverged`` and numeric gains (a
    diverged loop's gains may be NaN; the reward never is)."""
    if not isinstance(entry, dict) or entry.get("key") != key:
        return False
    reward: Any = entry.get("reward")
    info: Any = entry.get("info")
    if not (_number(reward) and math.isfinite(reward)) or not isinstance(info, dict):
        return False
    if any(name not in info for name in REQUIRED_INFO_KEYS) or info["reward"] != reward:
        return False
    return isinstance(info["diverged"], bool) and all(_number(info[f"{kind}_gain"]) for kind in REWARD_KINDS)


class RewardCache:
    """Reward and info per key, as one JSON file per key in ``folder`` (created on first write)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None):
        self.folder = Path(folder).expanduser() if folder is not None else default_dir()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> tuple[float, dict[str, Any]] | None:
        """``(reward, info)`` stored under ``key``, or None: a miss, also for an unreadable, foreign or invalid
        entry (:func:`valid_entry`), which the caller then recomputes and whose next :meth:`put` replaces it."""
        try:
            with open(self.path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        if not valid_entry(entry, key):
            return None
        return float(entry["reward"]), entry["info"]

    def put(self, key: str, reward: float, info: dict[str, Any]) -> bool:
        """Store atomically (temp file + ``os.replace``); False, with nothing stored, if it cannot be written or is
        not a valid entry (:func:`valid_entry`, e.g. a NaN reward)."""
        target, entry = self.path(key), {"key": key, "reward": reward, "info": info}
        if not valid_entry(entry, key):
            return False
        try:
            text = json.dumps(entry, ensure_ascii=True, allow_nan=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=target.parent)
        except (OSError, TypeError, ValueError):
            return False
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
            return True
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.is_dir() else 0

    def clear(self) -> None:
        """Delete every entry (not the folder)."""
        for p in self.folder.glob("*/*.json"):
            try:
                p.unlink()
            except OSError:
                pass
