"""GRPO: policy gradient on the self-edit tokens with rewards normalised within each article's group of samples.

Each round: sample ``k`` self-edits per training article and reward them (as ReSTEM does); the advantage of a
self-edit is its reward minus the group's mean, divided by the group's standard deviation (a group whose rewards
are all equal teaches nothing and is skipped). The policy's LoRA is trained for ``policy_epochs`` passes with
the clipped-ratio objective on the self-edit tokens (old log-probs from the policy that sampled), plus
``kl_coef`` times the k3 estimate of KL(policy || initial policy); then the LoRA is folded into the policy. The
training loop is seal_env's :meth:`seal_env.learner.trainer.Learner.train` with this loss (AdamW, constant learning
rate); an update whose loss turns non-finite or exceeds the Learner's ``max_loss`` (50) is dropped.

    python -m agents.grpo                     # demo preset
    python -m agents.grpo --preset tiny --wandb-mode disabled
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Any

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.config import SealConfig, setting
from seal_env.learner.batching import ExtrasRow, make_batch

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from agents.base import Experience
from agents.config import PAPER_PRESET, POLICY_UPDATE, TINY, RunConfig
from agents.lora_agent import LoRAAgent
from agents.run import main as run_main


@dataclass
class GRPOConfig(RunConfig):
    """GRPO's settings, on top of the shared ones in :class:`agents.config.RunConfig` (it changes their update
    defaults)."""

    policy_lora_rank: int = setting(16, "", group=POLICY_UPDATE)
    policy_lora_alpha: float = setting(32.0, "", group=POLICY_UPDATE)
    policy_lora_modules: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"],
        help="",
        group=POLICY_UPDATE,
    )
    policy_learning_rate: float = setting(
        5e-5,
        "learning rate of the policy update (AdamW, constant)",
        group=POLICY_UPDATE,
    )
    policy_epochs: int = setting(
        1,
        "passes over a round's self-edits (> 1 makes the ratio clipping matter)",
        group=POLICY_UPDATE,
    )
    policy_batch_size: int = setting(
        3,
        "self-edits per gradient step",
        group=POLICY_UPDATE,
    )

    kl_coef: float = setting(0.04, "weight of the KL penalty to the initial policy (0: none)", group="GRPO")
    clip_eps: float = setting(0.2, "the probability ratio is clipped to [1 - clip_eps, 1 + clip_eps]", group="GRPO")
    adv_eps: float = setting(1e-6, "added to a group's reward standard deviation", group="GRPO")

    def validate(self) -> None:
        super().validate()
        if self.k < 2:
            raise ValueError(f"GRPO compares the k samples of an article: k must be >= 2, got {self.k}")
        if self.kl_coef < 0 or self.clip_eps <= 0 or self.adv_eps <= 0:
            raise ValueError("kl_coef must be >= 0, clip_eps and adv_eps > 0")

    def update_config(self) -> SealConfig:
        """The shared policy-update settings with a constant learning rate."""
        return dataclasses.replace(super().update_config(), lr_schedule="constant")


PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": PAPER_PRESET,
    "tiny": {**TINY, "policy_learning_rate": 1e-3, "policy_batch_size": 2},
}


def group_advantages(batch: list[Experience], eps: float) -> list[float]:
    """Each reward minus its article's mean reward, over the article's standard deviation (0 where all are equal)."""
    groups: dict[str, list[float]] = {}
    for e in batch:
        groups.setdefault(e.article.id, []).append(e.reward)
    moments = {a: (statistics.fmean(r), statistics.pstdev(r)) for a, r in groups.items()}
    return [
        0.0
        if moments[e.article.id][1] == 0
        else (e.reward - moments[e.article.id][0]) / (moments[e.article.id][1] + eps)
        for e in batch
    ]


def grpo_loss(
    model: nn.Module,
    inputs: mx.array,
    targets: mx.array,
    mask: mx.array,
    adv: mx.array,
    old: mx.array,
    ref: mx.array,
    clip_eps: float,
    kl_coef: float,
    groups: mx.array | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """Clipped policy-gradient loss plus ``kl_coef`` * k3 KL, averaged over each self-edit's tokens, then over the
    self-edits of each group; and the policy-gradient and KL terms' token means. One value per group (``groups``:
    groups x rows, one-hot), or scalars over all rows (no ``groups``)."""
    logp = -nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets)
    ratio = mx.exp(logp - old)
    pg = -mx.minimum(ratio * adv[:, None], mx.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv[:, None])
    kl = mx.exp(ref - logp) - (ref - logp) - 1
    single = groups is None
    groups = mx.ones((1, inputs.shape[0])) if groups is None else groups
    ntoks = mx.maximum(mask.sum(axis=1), 1)

    def per_group(rows: mx.array) -> mx.array:  # a where, not a product: a non-finite row stays in its group
        return mx.where(groups > 0, rows[None, :], 0.0).sum(axis=1)

    tokens = mx.maximum(per_group(mask.sum(axis=1)), 1)
    loss = per_group(((pg + kl_coef * kl) * mask).sum(axis=1) / ntoks) / mx.maximum(groups.sum(axis=1), 1)
    pg_mean, kl_mean = per_group((pg * mask).sum(axis=1)) / tokens, per_group((kl * mask).sum(axis=1)) / tokens
    return (loss[0], pg_mean[0], kl_mean[0]) if single else (loss, pg_mean, kl_mean)


class GRPO(LoRAAgent[GRPOConfig]):
    """The GRPO agent: group-normalised policy gradient on a LoRA of the policy."""

    def __init__(self, cfg: GRPOConfig):
        super().__init__(cfg)

        def loss(
            model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, groups: mx.array, *extras: mx.array
        ) -> tuple[mx.array, mx.array, dict[str, mx.array]]:
            """:func:`grpo_loss` as the Learner's training loss: the rows' extras are their advantage, old and
            reference log-probabilities."""
            adv, old, ref = extras
            total, pg, kl = grpo_loss(model, inputs, targets, mask, adv, old, ref, cfg.clip_eps, cfg.kl_coef, groups)
            return total, groups @ mask.sum(axis=1), {"pg_loss": pg, "kl": kl}

        self._loss = loss  # one function for every round: the Learner keeps its compiled traces

    def _logprobs(self, pairs: list[tuple[list[int], int]]) -> list[np.ndarray]:
        """Per-token log-probabilities of each sequence under the current weights (LoRA at zero)."""
        out = []
        for pair in pairs:
            inputs, targets, _ = make_batch([pair])
            logits = self.model.learner.model(inputs).astype(mx.float32)
            out.append(np.array(-nn.losses.cross_entropy(logits, targets)[0]))
        return out

    def learn(self, batch: list[Experience], seed: int) -> dict[str, float]:
        cfg = self.cfg
        adv = group_advantages(batch, cfg.adv_eps)
        used = [i for i, a in enumerate(adv) if a != 0]
        stats = {"adv_abs_mean": statistics.fmean(abs(a) for a in adv), "used": float(len(used))}
        if not used:
            return {**stats, "steps": 0.0}
        pairs = [self.policy.training_pair(batch[i].observation, batch[i].self_edit) for i in used]
        old = self._logprobs(pairs)
        ref = old
        if cfg.kl_coef > 0:  # the initial policy's log-probs: swap its weights in for a moment
            current = self.model.weights()
            self.model.load_weights(self.model.initial)
            ref = self._logprobs(pairs)
            self.model.load_weights(current)
        data: list[ExtrasRow] = [
            (ids, start, (adv[i], o, r)) for i, (ids, start), o, r in zip(used, pairs, old, ref, strict=True)
        ]
        report = self.update(data, seed, "policy GRPO", self._loss)
        metrics = report["train_metrics"]
        return {
            **stats,
            "steps": float(report["train_steps"]),
            "loss": statistics.fmean(report["train_losses"] or [math.nan]),
            "pg_loss": statistics.fmean(metrics.get("pg_loss") or [math.nan]),
            "kl": statistics.fmean(metrics.get("kl") or [math.nan]),
            "diverged": float(report["diverged"]),
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main("grpo", GRPOConfig, PRESETS, GRPO, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main()
