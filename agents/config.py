"""Settings of the agents: :class:`RunConfig` (the run, the rollouts, the policy's LoRA update and the inner loop's
:class:`seal_env.config.SealConfig`), the presets they share, and building a config from a preset or a saved run.
Every field's metadata (:func:`seal_env.config.setting`) gives its help text and ``--help`` group for the command
line (:mod:`agents.command_line`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from seal_env.config import SEAL_PAPER_SETTINGS, SealConfig, check_field_types, setting
from seal_env.executors import DEFAULT_REQUEST_TIMEOUT, check_request_timeout
from seal_env.prompts import resolve_template

#: Inner-loop settings of the ``demo`` preset (on top of the SealConfig defaults): 2 epochs (SEAL: 10) and short
#: answers, so that a SmolLM2 reward takes seconds on a CPU. So short an inner loop almost never makes a 135M model
#: answer right (the accuracy gain is ~always 0), so the reward is the gold answers' log-likelihood gain.
DEMO_ENV: dict[str, Any] = {"reward": "loglik", "epochs": 2, "answer_max_tokens": 16}
#: Inner-loop settings of the ``tiny`` preset (tiny-random model; tests). Its answers are never right, so the
#: reward is the gold answers' log-likelihood gain, which varies between self-edits.
TINY_ENV: dict[str, Any] = {
    "model": "tiny-random",
    "reward": "loglik",
    "epochs": 1,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "answer_max_tokens": 4,
    "max_sequences": 3,
    "max_sequence_tokens": 64,
}
#: Settings of the ``tiny`` preset common to all algorithms.
TINY: dict[str, Any] = {
    "rounds": 2,
    "articles_per_round": 2,
    "k": 2,
    "heldout_articles": 1,
    "self_edit_max_tokens": 8,
    "policy_lora_rank": 4,
    "policy_lora_alpha": 8.0,
    "policy_lora_modules": ["q_proj", "v_proj"],
    "policy_epochs": 1,
    "progress": False,
    "executor": "inprocess",  # tests: one process, bit-exact references
    "env": TINY_ENV,
}
#: Settings of the ``paper`` preset common to all algorithms: SEAL's knowledge-incorporation outer loop (2 rounds
#: of 50 articles x 5 self-edits x 3 inner loops, the policy update 2 epochs in batches of 5, every held-out
#: article) and SEAL's inner loop (the SealConfig defaults + SEAL_PAPER_SETTINGS, with SEAL's accuracy reward).
PAPER_PRESET: dict[str, Any] = {
    "rounds": 2,
    "articles_per_round": 50,
    "k": 5,
    "heldout_articles": -1,
    "self_edit_max_tokens": 1024,
    "policy_epochs": 2,
    "policy_batch_size": 5,
    "env": {**SEAL_PAPER_SETTINGS, "eval_times": 3, "reward": "accuracy"},
}
#: Rollouts and inner loop of the ``learn`` presets (ReSTEM's and GRPO's): the setting in which SmolLM2-135M
#: measurably learns here (``benchmarks/LEARNING.md``). The reward is what the self-edit alone teaches
#: (``include_passage=False``, so writing nothing earns 0); 8 training articles a round x 5 self-edits sampled at
#: temperature 0.7; 16 held-out articles, each evaluated with the policy's greedy self-edit.
LEARN_ROLLOUTS: dict[str, Any] = {
    "articles_per_round": 8,
    "k": 5,
    "temperature": 0.7,
    "heldout_articles": -1,
    "heldout_temperature": 0.0,
    "env": {**DEMO_ENV, "include_passage": False, "heldout": 16},
}
CHOICES = {
    "wandb_mode": ("online", "offline", "disabled"),
    "executor": ("auto", "inprocess", "pool", "ray"),
    "inner_loop_learner": ("policy", "base"),
}
ENV_CLI_SKIP = ("split",)  # the round loop picks the split itself
RESUME_OVERRIDES = (
    "executor",
    "workers",
    "ray_address",
    "request_timeout",
    "wandb_mode",
    "progress",
)  # settings that do not change results


#: The --help group of the policy-update settings.
POLICY_UPDATE = "Policy update: a LoRA on the policy, folded into its weights after each round"


@dataclass
class RunConfig:
    """Settings shared by every agent: the run, the rollouts, the policy's LoRA update, and the environment."""

    name: str = setting(
        "", "run directory name under --runs-dir (default: <algorithm>-<preset>-<date>-<time>)", group="Run"
    )
    runs_dir: str = setting("runs", "where run directories are created", group="Run")
    seed: int = setting(0, "seeds the article order, sampling, the inner loop and the policy update", group="Run")
    wandb_mode: str = setting("online", "online logs offline when there is no API key or no network", group="Run")
    wandb_project: str = setting("seal-env", "wandb project", group="Run")
    executor: str = setting(
        "auto",
        "where rewards are computed (seal_env.executors): auto picks one single-thread worker process per core, as "
        "many as fit in memory (this process when only one fits), and prints what it picked; inprocess: this process; "
        "pool: --workers processes; ray: --workers Ray actors",
        group="Run",
    )
    workers: int = setting(1, "reward workers, one model copy each (--executor pool or ray)", group="Run")
    ray_address: str | None = setting(
        None, "Ray cluster address for --executor ray (none: start a local Ray)", group="Run"
    )
    request_timeout: float | None = setting(
        DEFAULT_REQUEST_TIMEOUT,
        "seconds a reward worker process (--executor auto, pool or ray) may take to answer one batched group of "
        "requests, or to load its model, before it is killed and replaced and its requests retried (none: no limit)",
        group="Run",
    )
    progress: bool = setting(True, "show progress bars", group="Run")

    rounds: int = setting(2, "rounds of sample -> reward -> update", group="Rollouts")
    articles_per_round: int = setting(
        2, "training articles per round: the next slice of the shuffled train split", group="Rollouts"
    )
    k: int = setting(3, "self-edits sampled per article", group="Rollouts")
    heldout_articles: int = setting(
        2, "held-out articles evaluated before training and after each round (-1 all, 0 none)", group="Rollouts"
    )
    heldout_k: int = setting(1, "self-edits sampled per held-out article", group="Rollouts")
    template: str = setting(
        "implications",
        "self-edit prompt: a name in seal_env.prompts.SELF_EDIT_TEMPLATES or a text with {context}",
        group="Rollouts",
    )
    temperature: float = setting(1.0, "sampling temperature of self-edits (0 = greedy)", group="Rollouts")
    heldout_temperature: float | None = setting(
        None,
        "sampling temperature of held-out self-edits (none: --temperature; 0: greedy, so that rounds differ only by "
        "the policy's most likely self-edit, not by sampling noise)",
        group="Rollouts",
    )
    top_p: float = setting(1.0, "nucleus sampling of self-edits", group="Rollouts")
    self_edit_max_tokens: int = setting(64, "token budget of a self-edit", group="Rollouts")
    sample_batch_size: int = setting(32, "self-edits generated together", group="Rollouts")
    inner_loop_learner: str = setting(
        "policy",
        "policy: the updated policy is also the inner loop's model (SEAL); base: the original model",
        group="Rollouts",
    )

    policy_lora_rank: int = setting(
        64,
        "LoRA rank of the policy update",
        group=POLICY_UPDATE,
    )
    policy_lora_alpha: float = setting(
        128.0,
        "LoRA alpha of the policy update",
        group=POLICY_UPDATE,
    )
    policy_lora_modules: list[str] = setting(
        factory=lambda: ["all"],
        help="modules with LoRA (short names or all)",
        group=POLICY_UPDATE,
    )
    policy_learning_rate: float = setting(
        3e-4,
        "learning rate of the policy update (AdamW, linear decay)",
        group=POLICY_UPDATE,
    )
    policy_epochs: int = setting(
        1,
        "epochs over a round's training data",
        group=POLICY_UPDATE,
    )
    policy_batch_size: int = setting(
        1,
        "sequences per policy update step",
        group=POLICY_UPDATE,
    )
    policy_max_grad_norm: float | None = setting(
        None,
        "clip each policy update step's LoRA gradient to this global L2 norm (none: no clipping)",
        group=POLICY_UPDATE,
    )

    env: SealConfig = setting(
        factory=lambda: SealConfig(**DEMO_ENV),
        help="the environment (inner loop)",
        group=POLICY_UPDATE,
    )

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (the env validated itself when it was built): every value
        has its field's type (no NaN or +-inf, no bool for a number), then each setting's range."""
        check_field_types(self)
        check_request_timeout(self.request_timeout)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in (
            "workers",
            "rounds",
            "articles_per_round",
            "k",
            "heldout_k",
            "self_edit_max_tokens",
            "sample_batch_size",
            "policy_lora_rank",
            "policy_epochs",
            "policy_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.executor in ("auto", "inprocess") and self.workers != 1:
            raise ValueError(f"--workers > 1 needs --executor pool or ray, not {self.executor}")
        if self.executor != "ray" and self.ray_address:
            raise ValueError(f"--ray-address needs --executor ray, not {self.executor}")
        if self.policy_max_grad_norm is not None and not self.policy_max_grad_norm > 0:
            raise ValueError(f"policy_max_grad_norm must be > 0 or none, got {self.policy_max_grad_norm}")
        if self.heldout_articles < -1:
            raise ValueError(f"heldout_articles must be -1 (all), 0 (none) or a count, got {self.heldout_articles}")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.heldout_temperature is not None and not self.heldout_temperature >= 0:
            raise ValueError(f"heldout_temperature must be >= 0 or none, got {self.heldout_temperature}")
        if self.name and (os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"name must be a plain directory name, got {self.name!r}")
        resolve_template(self.template)
        self.update_config()
        if self.inner_loop_learner == "policy" and self.env.quantize:
            raise ValueError("inner_loop_learner='policy' needs an unquantized inner loop (quantize=None)")

    def update_config(self) -> SealConfig:
        """The policy update's LoRA and optimiser settings, as the SealConfig that seal_env's Learner takes."""
        return SealConfig(
            model=self.env.model,
            lora_rank=self.policy_lora_rank,
            lora_alpha=self.policy_lora_alpha,
            lora_modules=self.policy_lora_modules,
            learning_rate=self.policy_learning_rate,
            epochs=self.policy_epochs,
            batch_size=self.policy_batch_size,
        )


def preset_config(cls: type, presets: dict[str, dict[str, Any]], name: str) -> Any:
    """The config of a preset: its agent settings, and its env settings on top of SealConfig's (SEAL's) defaults."""
    values = dict(presets[name])
    env = SealConfig(**values.pop("env", DEMO_ENV))
    return cls(**values, env=env)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved with ``dataclasses.asdict``."""
    data = dict(data)
    env = SealConfig(**data.pop("env"))
    return cls(**data, env=env)
