"""The judgment cache: verdicts in a JSON-lines file shared by every process pointed at it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("seal_env.judge")

#: The judgment cache's file name in the reward cache folder.
JUDGMENTS_FILE = "judgments.jsonl"


def judgment_key(identity: dict[str, str], question: str, gold: str, prediction: str) -> str:
    """SHA-256 (hex) of a judge's identity (base URL, model, prompt version) and one (question, gold, prediction)."""
    payload = {**identity, "question": question, "gold": gold, "prediction": prediction}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _valid_judgment(entry: Any) -> bool:
    if not isinstance(entry, dict):
        return False
    key, score = entry.get("key"), entry.get("score")
    hex_key = isinstance(key, str) and len(key) == 64 and all(c in "0123456789abcdef" for c in key)
    return hex_key and isinstance(score, (int, float)) and not isinstance(score, bool) and score in (0.0, 1.0)


class JudgmentCache:
    """Verdicts by :func:`judgment_key`, in a JSON-lines file shared by every process pointed at it.

    Each entry is one line, appended in one ``write`` call to a file opened for appending, so concurrent writers
    do not interleave within a line. Lines are read lazily: all of them on the first look-up, then, on a miss, the
    ones other processes appended since. A line that is not a valid entry (edited by hand, cut by a crash) is
    skipped: that judgment is a miss and is asked again."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self._entries: dict[str, float] = {}
        self._offset = 0
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1  # a last line without its newline may still be being written
        for line in data[:end].splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if _valid_judgment(entry):
                self._entries.setdefault(entry["key"], float(entry["score"]))
        self._offset += end

    def get(self, key: str) -> float | None:
        """The stored verdict, or None."""
        with self._lock:
            if key not in self._entries:
                self._refresh()
            return self._entries.get(key)

    def put(self, key: str, score: float, **fields: Any) -> bool:
        """Append a verdict (``fields``: what else to keep for a reader, e.g. the model and the reply); False,
        with nothing stored, if it cannot be written or is not a valid entry."""
        entry = {"key": key, "score": float(score), **fields}
        if not _valid_judgment(entry):
            return False
        line = (json.dumps(entry, ensure_ascii=True) + "\n").encode()
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as err:
                log.warning("judgment cache %s not written: %s", self.path, err)
                return False
            self._entries[key] = float(score)
            return True

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._entries)
