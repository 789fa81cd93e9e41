"""ReSTEM, SEAL's outer loop: sample self-edits, keep each article's best, fine-tune the policy on them.

Each round: take the next ``articles_per_round`` training articles, sample ``k`` self-edits per article from the
policy, reward every one in the environment (``eval_times`` inner loops each), keep each article's best (only
if its reward > ``threshold``, when set; with ``keep_empty=False`` never an empty self-edit), and fine-tune the
policy with a LoRA on (self-edit prompt -> self-edit) with the loss on the self-edit only. The LoRA is folded into
the policy, which samples the next round and, with ``inner_loop_learner="policy"`` (SEAL), is also the model that
the inner loop fine-tunes. Before training and after every round the policy is evaluated on held-out articles that
are never trained on.

    python -m agents.restem                   # learn preset: the policy improves on held-out articles
    python -m agents.restem --preset demo     # the machinery, a few minutes on a CPU
    python -m agents.restem --preset paper --data ../shared/data/squad_train_pool300.json
    python -m agents.restem --resume runs/<run>
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from seal_env.config import setting

from agents.base import Experience
from agents.config import LEARN_ROLLOUTS, PAPER_PRESET, TINY, RunConfig
from agents.lora_agent import LoRAAgent
from agents.run import main as run_main


@dataclass
class ReSTEMConfig(RunConfig):
    """ReSTEM's settings, on top of the shared ones in :class:`agents.config.RunConfig`."""

    threshold: float | None = setting(
        None, "keep an article's best self-edit only if its reward > threshold (none: always)", group="ReSTEM"
    )
    keep_empty: bool = setting(
        True,
        "an empty self-edit (no training piece of its own, so its reward is the passage-only reward) may be kept; "
        "false: never, so the policy is not taught to write nothing",
        group="ReSTEM",
    )


#: ``demo`` is the dataclass defaults; ``paper`` is SEAL's knowledge-incorporation ReSTEM (50 articles x 5
#: self-edits x 3 inner loops, 2 rounds, SFT with LoRA r=64 on all linear layers, lr 3e-4, 2 epochs, batch 5,
#: and SEAL's inner loop: the SealConfig defaults + SEAL_PAPER_SETTINGS, with SEAL's accuracy reward); ``tiny`` is
#: the tiny-random model, for tests; ``learn`` is :data:`agents.config.LEARN_ROLLOUTS` with an article's best kept
#: only if its reward > 0 and never an empty one, and 3 policy epochs.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "learn": {**LEARN_ROLLOUTS, "threshold": 0.0, "keep_empty": False, "policy_epochs": 3},
    "paper": PAPER_PRESET,
    "tiny": TINY,
}
#: The preset of ``python -m agents.restem`` with no ``--preset``.
DEFAULT_PRESET = "learn"


def select_best(batch: list[Experience], threshold: float | None, keep_empty: bool = True) -> list[Experience]:
    """Each article's highest-reward self-edit (the first on ties), if its reward clears ``threshold``; with
    ``keep_empty=False`` among the self-edits that are not empty (``info["empty_action"]``) only."""
    best: dict[str, Experience] = {}
    for e in batch:
        if not keep_empty and e.info.get("empty_action", False):
            continue
        if e.article.id not in best or e.reward > best[e.article.id].reward:
            best[e.article.id] = e
    return [e for e in best.values() if threshold is None or e.reward > threshold]


class ReSTEM(LoRAAgent[ReSTEMConfig]):
    """The ReSTEM agent: rejection sampling (best of ``k``) and supervised fine-tuning of the policy."""

    def learn(self, batch: list[Experience], seed: int) -> dict[str, float]:
        keep = select_best(batch, self.cfg.threshold, self.cfg.keep_empty)
        stats: dict[str, float] = {"kept": float(len(keep))}
        if not keep:
            return stats
        stats["kept_reward_mean"] = statistics.fmean(e.reward for e in keep)
        data = [self.policy.training_pair(e.observation, e.self_edit) for e in keep]
        report = self.update(data, seed, "policy SFT")
        losses = report["train_losses"] or [float("nan")]
        return {
            **stats,
            "sft_loss": statistics.fmean(losses),
            "sft_loss_last": losses[-1],
            "sft_steps": float(report["train_steps"]),
            "diverged": float(report["diverged"]),
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_main("restem", ReSTEMConfig, PRESETS, ReSTEM, __doc__.split("\n\n")[0], argv, DEFAULT_PRESET)


if __name__ == "__main__":
    main()
