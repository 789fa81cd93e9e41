"""A run directory (``runs/<name>/``): ``config.json`` (every setting), ``journal.jsonl`` (one JSON record a line,
durable as soon as it is known: a round's sampled self-edits, each reward, each policy update, each round's summary),
``rounds/NNN/policy.safetensors`` (the policy after round NNN), ``results.json`` and ``wandb/``; and
:func:`load_policy`, a run's policy after any round as a :class:`~agents.policies.PromptPolicy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, cast

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.journal import Journal, read_records
from seal_env.models import load_model

import mlx.core as mx

from agents.config import read_meta
from agents.policies import PromptPolicy


class Run:
    """A run directory: ``config.json``, an append-only ``journal.jsonl``, and per-round policy checkpoints."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.journal = self.path / "journal.jsonl"
        self.index: dict[tuple, dict[str, Any]] = {}
        for record in read_records(self.journal):
            self.index[self._key(record)] = record
        self._file = Journal(self.journal)

    @classmethod
    def create(cls, path: Path, meta: dict[str, Any]) -> Run:
        path = Path(path)
        if (path / "config.json").exists():
            raise FileExistsError(f"{path} already holds a run: resume it with --resume {path}, or pick another --name")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return cls(path)

    @staticmethod
    def _key(record: dict[str, Any]) -> tuple:
        return (record["event"], record.get("round"), record.get("phase"), record.get("article_id"), record.get("k"))

    def get(
        self, event: str, round: int, phase: str | None = None, article_id: str | None = None, k: int | None = None
    ) -> dict[str, Any] | None:
        return self.index.get((event, round, phase, article_id, k))

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and make it durable before returning."""
        self._file.append(record)
        self.index[self._key(record)] = record

    def checkpoint(self, round: int) -> Path:
        """Where the policy after ``round`` is saved."""
        return self.path / "rounds" / f"{round:03d}" / "policy.safetensors"

    def save_checkpoint(self, round: int, weights: dict[str, mx.array]) -> Path:
        path = self.checkpoint(round)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("tmp-policy.safetensors")
        metadata = {
            "round": str(round),
            "model": self.meta["config"]["env"]["model"],
            "algorithm": self.meta["algorithm"],
            "format": "plain mlx-lm weight names, fused",
        }
        mx.save_safetensors(str(tmp), weights, metadata=metadata)
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        self._file.close()


def load_policy(run_dir: str | Path, round: int | None = None, **sampling: Any) -> PromptPolicy:
    """The policy of a run after ``round`` (default: its last checkpoint; 0 = the initial model) as a PromptPolicy."""
    meta = read_meta(run_dir)
    cfg = meta["config"]
    rounds = sorted(int(p.parent.name) for p in Path(run_dir).glob("rounds/*/policy.safetensors"))
    round = (rounds[-1] if rounds else 0) if round is None else round
    model, tokenizer = load_model(cfg["env"]["model"])
    if round:
        path = Path(run_dir) / "rounds" / f"{round:03d}" / "policy.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint for round {round} in {run_dir} (have {rounds})")
        model.load_weights(list(cast(dict[str, mx.array], mx.load(str(path))).items()), strict=False)
        mx.eval(model.parameters())
    settings = {
        "template": cfg["template"],
        "temperature": cfg["temperature"],
        "top_p": cfg["top_p"],
        "max_tokens": cfg["self_edit_max_tokens"],
        **sampling,
    }
    return PromptPolicy(model, tokenizer, **settings)
