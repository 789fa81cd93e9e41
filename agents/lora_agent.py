"""The policy model of the LoRA agents (ReSTEM, GRPO): a :class:`~agents.policies.PromptPolicy` whose model
carries seal_env's LoRA :class:`~seal_env.learner.trainer.Learner` (:class:`LoRAPolicy`), and the part every such agent
shares (:class:`LoRAAgent`: its state, and an update that trains a LoRA and folds it in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.learner.batching import ExtrasRow, Loss, TrainRow
from seal_env.learner.trainer import Learner
from seal_env.models import load_model

import mlx.core as mx
from tqdm.auto import tqdm

from agents.config import RunConfig
from agents.policies import PromptPolicy

C = TypeVar("C", bound=RunConfig)  #: an agent's own RunConfig subclass


class LoRAPolicy:
    """A PromptPolicy whose model carries seal_env's LoRA Learner; :meth:`fuse` folds an update into the weights.

    Between updates the learner has no adapter slots, so the policy samples exactly as its (fused) weights say.
    """

    def __init__(self, cfg: RunConfig):
        model, tokenizer = load_model(cfg.env.model)
        self.learner = Learner(model, tokenizer, cfg.update_config())
        self.policy = PromptPolicy(
            model,
            tokenizer,
            cfg.template,
            cfg.temperature,
            cfg.top_p,
            cfg.self_edit_max_tokens,
            cfg.sample_batch_size,
            cfg.progress,
        )
        self.initial = self.weights()

    def weights(self) -> dict[str, mx.array]:
        """The base weights under the LoRA (plain mlx-lm names): what updates change, and what checkpoints hold."""
        return self.learner.base_weights()

    def fuse(self) -> None:
        """Fold the trained LoRA (slot 0) into the weights with mlx-lm's ``LoRALinear.fuse``; no adapter after."""
        self.load_weights(self.learner.fused_weights(0))

    def load_weights(self, weights: dict[str, mx.array]) -> None:
        self.learner.set_base_weights(weights)
        self.learner.reset([])


def train_with_progress(
    learner: Learner,
    data: Sequence[TrainRow | ExtrasRow],
    seed: int,
    desc: str,
    progress: bool,
    loss: Loss | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
    """Train a fresh adapter (one slot, seeded ``seed``) on ``data`` with a progress bar over its optimiser steps;
    ``loss``: the training loss (default: SFT's), ``max_grad_norm``: gradient clipping (default none; see
    :meth:`seal_env.learner.trainer.Learner.train`)."""
    steps = math.ceil(len(data) / learner.cfg.batch_size) * learner.cfg.epochs
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False)
    try:
        learner.reset([seed])
        return learner.train(
            [data], [seed], lambda losses: bar.update(1), loss=loss, grad_norms=True, max_grad_norm=max_grad_norm
        )[0]
    finally:
        bar.close()


class LoRAAgent(Generic[C]):
    """The part of an agent that is its :class:`LoRAPolicy`: the state (the policy's weights) and the update (a LoRA
    trained by seal_env's Learner, then folded in)."""

    def __init__(self, cfg: C):
        self.cfg = cfg
        self.model = LoRAPolicy(cfg)
        self.policy = self.model.policy

    def update(
        self, data: Sequence[TrainRow | ExtrasRow], seed: int, desc: str, loss: Loss | None = None
    ) -> dict[str, Any]:
        """Train a fresh LoRA on ``data`` (:func:`train_with_progress`) and fold it into the policy, or drop it if it
        diverged; returns the learner's train report."""
        cfg = self.cfg
        report = train_with_progress(self.model.learner, data, seed, desc, cfg.progress, loss, cfg.policy_max_grad_norm)
        if report["diverged"]:
            self.model.learner.reset([])  # keep the policy as it was
        else:
            self.model.fuse()
        return report

    def state(self) -> dict[str, Any]:
        """The policy's weights (plain mlx-lm names)."""
        return self.model.weights()

    def load_state(self, weights: dict[str, Any]) -> None:
        """Restore weights saved by :meth:`state`."""
        self.model.load_weights(weights)
