"""GRPO: policy gradient on the self-edit tokens with rewards normalised within each article's group of samples.

Each round: sample ``k`` self-edits per training article and reward them (as ReSTEM does); the advantage of a
self-edit is its reward minus the group's mean, divided by the group's standard deviation (a group whose rewards
are all equal teaches nothing and is skipped). The policy's LoRA is trained for ``policy_epochs`` passes with
the clipped-ratio objective on the self-edit tokens (old log-probs from the policy that sampled), plus
``kl_coef`` times the k3 estimate of KL(policy || initial policy); then the LoRA is folded into the policy. The
training loop is seal_env's :meth:`seal_env.learner.trainer.Learner.train` with this loss (AdamW, constant learning
rate, gradients clipped to ``policy_max_grad_norm`` when set); an update whose loss turns non-finite or exceeds the
Learner's ``max_loss`` (50) is dropped.

:meth:`GRPO.learn` returns the round's diagnostics (the journal's ``learn`` record, the printed round line, wandb's
``round/learn_*``); "token" means a self-edit token of a self-edit used (nonzero advantage), and every token mean is
over all such tokens of the round (steps weighted by their tokens):

* ``groups``, ``groups_skipped``, ``groups_skipped_frac``: the round's articles, those whose rewards are all equal
  (advantage 0: no gradient), and their share. ``used``: the self-edits with a nonzero advantage.
* ``reward_std_mean``: the mean population standard deviation of the rewards within the groups not skipped (the
  scale the advantages divide out; NaN when every group is skipped).
* ``adv_abs_mean``: mean |advantage| over the self-edits used (0 when none is).
* ``steps``: optimizer steps taken; ``loss``, ``pg_loss``: the mean over steps of the objective and of its
  policy-gradient term (per-token mean); ``diverged``: 1 when the update was dropped.
* ``clip_frac``: share of tokens whose probability ratio (policy / the policy that sampled) lay outside
  ``[1 - clip_eps, 1 + clip_eps]`` on the side where the clip bites (above for a positive advantage, below for a
  negative one), i.e. where the token's gradient is cut off; each step's policy before that step.
* ``kl``: the mean per-token k3 estimate of KL(policy || initial policy), ``exp(q - p) - (q - p) - 1`` with ``p``,
  ``q`` the token's log-probabilities under the policy and the initial policy, at each step's policy before that
  step (what the penalty sees); ``kl_after``: the same for the policy after this round's update, on the same tokens.
  Both are computed whatever ``kl_coef`` (0: no penalty in the loss).
* ``entropy``: the mean per-token entropy (nats) of the policy's next-token distribution (softmax of its logits,
  temperature 1, whatever the sampling temperature) at the self-edit tokens, with the policy before the update: the
  exact entropy over the vocabulary, not the negative log-probability of the sampled token.
* ``grad_norm_mean``, ``grad_norm_max``: the global L2 norm of the LoRA's gradient at each optimizer step (the
  Learner's ``grad_norms``, before clipping to ``policy_max_grad_norm``), mean and max over the steps.

A value with nothing to measure it on (no optimizer step, or no self-edit used) is NaN; ``adv_abs_mean`` is 0 then.

    python -m agents.grpo                     # learn preset: the policy improves on held-out articles
    python -m agents.grpo --preset demo       # the machinery in a few minutes
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
from agents.config import LEARN_ROLLOUTS, PAPER_PRESET, POLICY_UPDATE, TINY, RunConfig
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


#: ``learn``: :data:`agents.config.LEARN_ROLLOUTS` (ReSTEM's ``learn`` rollouts and inner loop) with an update that
#: moves the policy (``benchmarks/LEARNING.md``): ReSTEM's LoRA (r=64, alpha 128, all linear layers) at lr 1e-4, 2
#: epochs over the round's self-edits in batches of 5, each step's gradient clipped to norm 1. ``demo``'s update (r=16
#: on q/v, lr 5e-5, 1 epoch) barely moves the policy; lr 3e-4 moves it in round 1 and breaks it in round 2.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "learn": {
        **LEARN_ROLLOUTS,
        "policy_lora_rank": 64,
        "policy_lora_alpha": 128.0,
        "policy_lora_modules": ["all"],
        "policy_learning_rate": 1e-4,
        "policy_epochs": 2,
        "policy_batch_size": 5,
        "policy_max_grad_norm": 1.0,
    },
    "paper": PAPER_PRESET,
    "tiny": {**TINY, "policy_learning_rate": 1e-3, "policy_batch_size": 2},
}
#: The preset of ``python -m agents.grpo`` with no ``--preset``.
DEFAULT_PRESET = "learn"


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


def group_stats(batch: list[Experience], adv: list[float]) -> dict[str, float]:
    """The round's group diagnostics (see the module docstring): groups, skipped groups and their share, the self-edits
    used, the mean reward standard deviation within the groups kept, and the mean |advantage| over the self-edits
    used (``adv``: :func:`group_advantages` of ``batch``)."""
    groups: dict[str, list[float]] = {}
    for e in batch:
        groups.setdefault(e.article.id, []).append(e.reward)
    sds = [statistics.pstdev(r) for r in groups.values()]
    kept = [sd for sd in sds if sd != 0]
    used = [abs(a) for a in adv if a != 0]
    return {
        "groups": float(len(groups)),
        "groups_skipped": float(len(sds) - len(kept)),
        "groups_skipped_frac": (len(sds) - len(kept)) / len(sds) if sds else math.nan,
        "used": float(len(used)),
        "reward_std_mean": statistics.fmean(kept) if kept else math.nan,
        "adv_abs_mean": statistics.fmean(used) if used else 0.0,
    }


def clip_bites(ratio: mx.array, adv: mx.array, clip_eps: float) -> mx.array:
    """Where the clipped objective cuts a token's gradient off: ratio above ``1 + clip_eps`` with a positive
    advantage, or below ``1 - clip_eps`` with a negative one (``adv`` broadcasts against ``ratio``)."""
    return ((adv > 0) & (ratio > 1 + clip_eps)) | ((adv < 0) & (ratio < 1 - clip_eps))


def token_entropy(logits: mx.array) -> mx.array:
    """The entropy (nats) of the softmax of ``logits`` along the last axis, in float32 (a ``-inf`` logit: a
    token of probability 0, which adds nothing)."""
    logp = nn.log_softmax(logits.astype(mx.float32), axis=-1)
    p = mx.exp(logp)
    return -mx.where(p > 0, p * logp, 0.0).sum(axis=-1)


def k3(ref: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """The k3 estimate of KL(policy || reference) per token: ``exp(ref - logp) - (ref - logp) - 1``."""
    d = ref.astype(np.float64) - logp.astype(np.float64)
    return np.exp(d) - d - 1


def weighted_mean(values: list[float], weights: list[float]) -> float:
    """``sum(v * w) / sum(w)``; NaN when there are no weights."""
    total = sum(weights)
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total if total else math.nan


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
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Clipped policy-gradient loss plus ``kl_coef`` * k3 KL, averaged over each self-edit's tokens, then over the
    self-edits of each group; and the token means of the policy-gradient term, of the KL and of the tokens where the
    clip bites (:func:`clip_bites`). One value per group (``groups``: groups x rows, one-hot), or scalars over all
    rows (no ``groups``). With ``kl_coef`` 0 the loss has no KL term (the KL is still measured)."""
    logp = -nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets)
    ratio = mx.exp(logp - old)
    pg = -mx.minimum(ratio * adv[:, None], mx.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv[:, None])
    kl = mx.exp(ref - logp) - (ref - logp) - 1
    clipped = clip_bites(ratio, adv[:, None], clip_eps).astype(mx.float32)
    single = groups is None
    groups = mx.ones((1, inputs.shape[0])) if groups is None else groups
    ntoks = mx.maximum(mask.sum(axis=1), 1)

    def per_group(rows: mx.array) -> mx.array:  # a where, not a product: a non-finite row stays in its group
        return mx.where(groups > 0, rows[None, :], 0.0).sum(axis=1)

    tokens = mx.maximum(per_group(mask.sum(axis=1)), 1)
    objective = pg + kl_coef * kl if kl_coef else pg
    loss = per_group((objective * mask).sum(axis=1) / ntoks) / mx.maximum(groups.sum(axis=1), 1)
    pg_mean, kl_mean = per_group((pg * mask).sum(axis=1)) / tokens, per_group((kl * mask).sum(axis=1)) / tokens
    clip_mean = per_group((clipped * mask).sum(axis=1)) / tokens
    return (loss[0], pg_mean[0], kl_mean[0], clip_mean[0]) if single else (loss, pg_mean, kl_mean, clip_mean)


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
            total, pg, kl, clip = grpo_loss(
                model, inputs, targets, mask, adv, old, ref, cfg.clip_eps, cfg.kl_coef, groups
            )
            tokens = groups @ mask.sum(axis=1)
            return total, tokens, {"pg_loss": pg, "kl": kl, "clip_frac": clip, "tokens": tokens}

        self._loss = loss  # one function for every round: the Learner keeps its compiled traces

    def _logprobs(self, pairs: list[tuple[list[int], int]]) -> list[np.ndarray]:
        """Per-token log-probabilities of each sequence under the current weights (LoRA at zero)."""
        return self._scores(pairs)[0]

    def _scores(
        self, pairs: list[tuple[list[int], int]], entropy: bool = False
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-token log-probabilities of each sequence under the current weights (LoRA at zero), and (``entropy``)
        the entropy of the next-token distribution at its loss tokens (from ``start - 1`` on; else empty)."""
        logps, entropies = [], []
        for pair in pairs:
            inputs, targets, _ = make_batch([pair])
            logits = self.model.learner.model(inputs).astype(mx.float32)
            logps.append(np.array(-nn.losses.cross_entropy(logits, targets)[0]))
            start = max(pair[1] - 1, 0)
            entropies.append(np.array(token_entropy(logits[0, start:])) if entropy else np.zeros(0, np.float32))
        return logps, entropies

    def learn(self, batch: list[Experience], seed: int) -> dict[str, float]:
        """One GRPO update on a round's rewarded self-edits; returns the diagnostics of the module docstring."""
        cfg = self.cfg
        adv = group_advantages(batch, cfg.adv_eps)
        used = [i for i, a in enumerate(adv) if a != 0]
        stats = group_stats(batch, adv)
        if not used:
            nan = math.nan
            return {
                **stats,
                **dict.fromkeys(("steps", "diverged"), 0.0),
                **dict.fromkeys(("loss", "pg_loss", "clip_frac", "kl", "kl_after", "entropy"), nan),
                **dict.fromkeys(("grad_norm_mean", "grad_norm_max"), nan),
            }
        pairs = [self.policy.training_pair(batch[i].observation, batch[i].self_edit) for i in used]
        old, entropies = self._scores(pairs, entropy=True)
        # the initial policy's log-probs (for the penalty and the diagnostics): swap its weights in for a moment
        current = self.model.weights()
        self.model.load_weights(self.model.initial)
        ref = self._logprobs(pairs)
        self.model.load_weights(current)
        data: list[ExtrasRow] = [
            (ids, start, (adv[i], o, r)) for i, (ids, start), o, r in zip(used, pairs, old, ref, strict=True)
        ]
        report = self.update(data, seed, "policy GRPO", self._loss)
        after = self._logprobs(pairs)
        metrics = report["train_metrics"]
        tokens = metrics.get("tokens", [])
        edit = [slice(max(start - 1, 0), None) for _, start in pairs]  # the self-edit tokens of each sequence
        kl_after = np.concatenate([k3(r[s], a[s]) for r, a, s in zip(ref, after, edit, strict=True)])
        norms = report["grad_norms"]
        return {
            **stats,
            "steps": float(report["train_steps"]),
            "loss": statistics.fmean(report["train_losses"] or [math.nan]),
            "pg_loss": statistics.fmean(metrics.get("pg_loss") or [math.nan]),
            "clip_frac": weighted_mean(metrics.get("clip_frac", []), tokens),
            "kl": weighted_mean(metrics.get("kl", []), tokens),
            "kl_after": float(kl_after.mean()),
            "entropy": float(np.concatenate(entropies).mean()),
            "grad_norm_mean": statistics.fmean(norms) if norms else math.nan,
            "grad_norm_max": max(norms, default=math.nan),
            "diverged": float(report["diverged"]),
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main("grpo", GRPOConfig, PRESETS, GRPO, __doc__.split("\n\n")[0], argv, DEFAULT_PRESET)


if __name__ == "__main__":
    main()
