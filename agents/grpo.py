"""GRPO: policy gradient on the self-edit tokens with rewards normalised within each article's group of samples.

Each round: sample ``k`` self-edits per training article and reward them (as ReSTEM does); the advantage of a
self-edit is its reward minus the group's mean, divided by the group's standard deviation (a group whose rewards
are all equal teaches nothing and is skipped). The policy's LoRA is trained for ``policy_epochs`` passes with
the clipped-ratio objective on the self-edit tokens (old log-probs from the policy that sampled), plus
``kl_coef`` times the k3 estimate of KL(policy || initial policy); then the LoRA is folded into the policy.

    python -m agents.grpo                     # demo preset
    python -m agents.grpo --preset tiny --wandb-mode disabled
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.config import SEAL_PAPER_SETTINGS, setting
from seal_env.learner import make_batch

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from tqdm.auto import tqdm

from agents.base import Experience
from agents.config import TINY, RunConfig
from agents.run import LoRAPolicy
from agents.run import main as run_main


@dataclass
class GRPOConfig(RunConfig):
    """GRPO's settings, on top of the shared ones in :class:`agents.config.RunConfig` (it changes their update
    defaults)."""

    policy_lora_rank: int = setting(
        16, "", group="Policy update: a LoRA on the policy, folded into its weights after each round"
    )
    policy_lora_alpha: float = setting(
        32.0, "", group="Policy update: a LoRA on the policy, folded into its weights after each round"
    )
    policy_lora_modules: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"],
        help="",
        group="Policy update: a LoRA on the policy, folded into its weights after each round",
    )
    policy_learning_rate: float = setting(
        5e-5,
        "learning rate of the policy update (AdamW, constant)",
        group="Policy update: a LoRA on the policy, folded into its weights after each round",
    )
    policy_epochs: int = setting(
        1,
        "passes over a round's self-edits (> 1 makes the ratio clipping matter)",
        group="Policy update: a LoRA on the policy, folded into its weights after each round",
    )
    policy_batch_size: int = setting(
        3,
        "self-edits per gradient step",
        group="Policy update: a LoRA on the policy, folded into its weights after each round",
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


PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": {
        "rounds": 2,
        "articles_per_round": 50,
        "k": 5,
        "heldout_articles": -1,
        "self_edit_max_tokens": 1024,
        "policy_epochs": 2,
        "policy_batch_size": 5,
        "env": {**SEAL_PAPER_SETTINGS, "eval_times": 3, "reward": "accuracy"},
    },
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
) -> tuple[mx.array, mx.array, mx.array]:
    """Clipped policy-gradient loss plus ``kl_coef`` * k3 KL, averaged over each self-edit's tokens, then the batch."""
    logp = -nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets)
    ratio = mx.exp(logp - old)
    pg = -mx.minimum(ratio * adv[:, None], mx.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv[:, None])
    kl = mx.exp(ref - logp) - (ref - logp) - 1
    ntoks = mx.maximum(mask.sum(axis=1), 1)
    loss = (((pg + kl_coef * kl) * mask).sum(axis=1) / ntoks).mean()
    return loss, (pg * mask).sum() / mask.sum(), (kl * mask).sum() / mask.sum()


class GRPO:
    """The GRPO agent: group-normalised policy gradient on a LoRA of the policy."""

    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.model = LoRAPolicy(cfg)
        self.policy = self.model.policy
        self._loss_and_grad = nn.value_and_grad(self.model.learner.model, grpo_loss)

    def _logprobs(self, pairs: list[tuple[list[int], int]]) -> list[np.ndarray]:
        """Per-token log-probabilities of each sequence under the current weights (LoRA at zero)."""
        out = []
        for pair in pairs:
            inputs, targets, _ = make_batch([pair])
            logits = self.model.learner.model(inputs).astype(mx.float32)
            out.append(np.array(-nn.losses.cross_entropy(logits, targets)[0]))
        return out

    def learn(self, batch: list[Experience], seed: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model.learner.model
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
        self.model.learner.reset([seed])
        opt = optim.AdamW(learning_rate=cfg.policy_learning_rate, weight_decay=0.0)
        rng = np.random.default_rng(seed)
        steps = cfg.policy_epochs * math.ceil(len(pairs) / cfg.policy_batch_size)
        bar = tqdm(total=steps, desc="policy GRPO", unit="step", disable=not cfg.progress, leave=False)
        losses, pgs, kls = [], [], []
        model.train()
        try:
            for _ in range(cfg.policy_epochs):
                order = rng.permutation(len(pairs))
                for s in range(0, len(pairs), cfg.policy_batch_size):
                    idx = order[s : s + cfg.policy_batch_size]
                    inputs, targets, mask = make_batch([pairs[i] for i in idx])
                    (loss, pg, kl), grads = self._loss_and_grad(
                        model,
                        inputs,
                        targets,
                        mask,
                        mx.array([adv[used[i]] for i in idx], dtype=mx.float32),
                        _pad([old[i] for i in idx], targets.shape[1]),
                        _pad([ref[i] for i in idx], targets.shape[1]),
                        cfg.clip_eps,
                        cfg.kl_coef,
                    )
                    opt.update(model, grads)
                    mx.eval(model.trainable_parameters(), opt.state)
                    losses.append(loss.item())
                    pgs.append(pg.item())
                    kls.append(kl.item())
                    bar.update(1)
        finally:
            model.eval()
            bar.close()
        if all(math.isfinite(x) for x in losses):
            self.model.fuse()
        else:
            self.model.learner.reset([])  # drop a diverged update
        return {
            **stats,
            "steps": float(len(losses)),
            "loss": statistics.fmean(losses),
            "pg_loss": statistics.fmean(pgs),
            "kl": statistics.fmean(kls),
            "diverged": float(not all(math.isfinite(x) for x in losses)),
        }

    def state(self) -> dict[str, Any]:
        return self.model.weights()

    def load_state(self, weights: dict[str, Any]) -> None:
        self.model.load_weights(weights)


def _pad(rows: list[np.ndarray], width: int) -> mx.array:
    out = np.zeros((len(rows), width), np.float32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return mx.array(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main("grpo", GRPOConfig, PRESETS, GRPO, __doc__.split("\n\n")[0], argv)


if __name__ == "__main__":
    main()
