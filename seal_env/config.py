"""Every setting of the environment, in one flat, JSON-serialisable dataclass.

``gym.make("seal/KnowledgeIncorporation-v0", **settings)`` takes these as keyword arguments, so ``env.spec``
round-trips through JSON. README.md has the same table with the reasons behind the defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

REWARD_KINDS = ("accuracy", "f1", "loglik", "choice", "margin", "pmi")
#: Reward kinds computed from log-likelihoods only (no generated answers needed).
LOGLIK_KINDS = ("loglik", "choice", "margin", "pmi")

#: Where SEAL's own code (knowledge-incorporation ``TTT_server.py`` and its launch scripts) differs from the
#: defaults below: 10 epochs (our default is 3, chosen by benchmarks/PAPER_CHECK.md: with the SmolLM2 learner, 10
#: epochs leave the log-likelihood reward with no signal), the loss on every token of a training sequence (SEAL
#: passes no ``end_mask_substring``) and answers of up to 64 tokens. Every other default is already SEAL's. Not
#: reproduced at all: SEAL pads each sequence with EOS to 2048 tokens and keeps the loss on the padding too (15x
#: the compute here; with Adam the loss scale cancels, so it mostly adds "predict EOS after the end" terms). The
#: ``paper`` presets of the agents and benchmarks use these settings.
SEAL_PAPER_SETTINGS: dict[str, Any] = {"epochs": 10, "loss_on": "all", "answer_max_tokens": 64}


@dataclass
class SealConfig:
    """Settings of one SEAL inner loop: data, learner, training-sequence construction, LoRA, optimiser, grading."""

    # What to learn from and with
    model: str = "smollm2-135m"  #: model spec, see seal_env.models.load_model
    dataset: str = "bundled"  #: "bundled", a SEAL/SQuAD JSON path, or "squad[:split]" (online)
    split: str = "train"  #: "train", "heldout" or "all" articles of the data set
    heldout: float = 0.25  #: fraction (or count, if >= 1) of articles held out, split deterministically
    split_seed: int = 0
    quantize: int | None = None  #: 4 or 8 quantizes the frozen backbone (QLoRA); slow on CPU
    dtype: str = "auto"  #: frozen weights: "auto" (fp32 on CPU, the model's half dtype on GPU), "float32", ...

    # Reward
    reward: str = "loglik"  #: "loglik", "choice", "margin", "pmi" (log-likelihood kinds), "accuracy" or "f1"
    eval_times: int = 1  #: repeats of the whole inner loop with seeds seed, seed+1, ...; reward is their mean
    answer_max_tokens: int = 32  #: 0 = generate no answers (reward "loglik" only; accuracy, em and f1 read 0)
    diverged_reward: float = 0.0  #: reward when the inner loop's loss is non-finite or above max_loss
    timings: bool = True  #: seconds per phase in the infos of evaluate / evaluate_many (never in step infos)
    cache: bool = True  #: reuse rewards from the persistent reward cache (seal_env.cache); off = always train
    cache_dir: str | None = None  #: reward cache folder; None = seal_env.models.cache_dir() / "rewards"
    max_batch_adapters: int = 8  #: inner loops (self-edits x eval_times) of one article trained and quizzed together

    # Self-edit -> training sequences
    split_mode: str = "lines"  #: "lines", "segments" (---) or "none"
    title_prefix: bool = True
    include_passage: bool = True  #: SEAL appends the passage itself as one more training sequence
    drop_preamble: bool = True
    loss_on: str = "text"  #: "text" (not the title prefix) or "all"
    max_sequences: int = 30
    max_sequence_tokens: int = 512
    max_total_tokens: int = 8192
    max_action_chars: int = 100_000

    # LoRA (SEAL: r=32, alpha=64, q_proj and v_proj, no dropout)
    lora_rank: int = 32
    lora_alpha: float = 64.0
    lora_dropout: float = 0.0
    lora_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_layers: int = -1  #: how many of the last transformer blocks carry LoRA; -1 = all

    # Optimiser (SEAL: HF Trainer defaults = AdamW, linear decay, no warm-up; lr 1e-3, 10 epochs, batch 1)
    # epochs: 3, not SEAL's 10: with SmolLM2-135M, 10 epochs overfit (the gold answers' log-likelihood gain is
    # about 0 on average with a huge spread), 3 give the clearest reward at a third of the cost (PAPER_CHECK.md)
    optimizer: str = "adamw"  #: "adamw", "adam" or "sgd"
    learning_rate: float = 1e-3
    lr_schedule: str = "linear"  #: "linear" (decay to 0) or "constant", after warmup_steps
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_bias_correction: bool = False  #: Adam(W) bias correction (PyTorch/HF always apply it; mlx's default: off)
    epochs: int = 3
    batch_size: int = 1
    max_loss: float = 50.0  #: training stops (diverged) when the loss exceeds this or is not finite

    def __post_init__(self) -> None:
        self.lora_modules = list(self.lora_modules)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        choices = {
            "reward": REWARD_KINDS,
            "split": ("train", "heldout", "all"),
            "split_mode": ("lines", "segments", "none"),
            "loss_on": ("text", "all"),
            "optimizer": ("adamw", "adam", "sgd"),
            "lr_schedule": ("linear", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive = (
            "eval_times",
            "max_sequences",
            "max_sequence_tokens",
            "max_total_tokens",
            "max_action_chars",
            "lora_rank",
            "epochs",
            "batch_size",
            "max_batch_adapters",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        tokens = self.answer_max_tokens
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ValueError(f"answer_max_tokens must be a non-negative integer, got {tokens!r}")
        if tokens == 0 and self.reward not in LOGLIK_KINDS:
            raise ValueError(
                f"answer_max_tokens=0 generates no answers, so it needs a log-likelihood reward "
                f"{LOGLIK_KINDS} (got reward={self.reward!r})"
            )
        for name in ("learning_rate", "lora_alpha", "max_loss"):
            if not (
                isinstance(getattr(self, name), (int, float))
                and math.isfinite(getattr(self, name))
                and getattr(self, name) > 0
            ):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
        if self.quantize not in (None, 4, 8):
            raise ValueError(f"quantize must be None, 4 or 8, got {self.quantize!r}")
        if not self.lora_modules:
            raise ValueError("lora_modules must name at least one module (e.g. ['q_proj', 'v_proj'] or ['all'])")
        if self.lora_layers == 0 or self.lora_layers < -1:
            raise ValueError(f"lora_layers must be -1 (all) or a positive count, got {self.lora_layers!r}")
        if not math.isfinite(self.diverged_reward):
            raise ValueError("diverged_reward must be finite")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SealConfig:
        """Build from keyword arguments; an unknown name raises TypeError listing the valid ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}; valid settings: {sorted(names)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def eval_key(self) -> dict[str, Any]:
        """The settings that decide the baseline (un-adapted) answers of an article."""
        return {
            "model": self.model,
            "quantize": self.quantize,
            "dtype": self.dtype,
            "answer_max_tokens": self.answer_max_tokens,
        }

    def inner_loop_key(self) -> dict[str, Any]:
        """The settings that decide a reward (for caching), everything but where the articles come from."""
        skip = {"dataset", "split", "heldout", "split_seed", "timings", "cache", "cache_dir", "max_batch_adapters"}
        return {k: v for k, v in self.to_dict().items() if k not in skip}
