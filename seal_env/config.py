"""Every setting of the environment, in one flat, JSON-serialisable dataclass.

``gym.make("seal/KnowledgeIncorporation-v0", **settings)`` takes these as keyword arguments, so ``env.spec``
round-trips through JSON. README.md has the same table with the reasons behind the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from typing import Any

REWARD_KINDS = ("accuracy", "f1", "loglik", "choice", "margin", "pmi")
#: Reward kinds computed from log-likelihoods only (no generated answers needed).
LOGLIK_KINDS = ("loglik", "choice", "margin", "pmi")

#: Where SEAL's own code (knowledge-incorporation ``TTT_server.py`` and its launch scripts) differs from the
#: defaults below: 10 epochs (our default is 3, chosen by benchmarks/PAPER_CHECK.md: with the SmolLM2 learner, 10
#: epochs leave the log-likelihood reward with no signal), the loss on every token of a training sequence (SEAL
#: passes no ``end_mask_substring``), answers of up to 64 tokens and the self-edit's Markdown kept in the pieces
#: (our default strips it, by benchmarks/PAPER_CHECK.md). Every other default is already SEAL's. Not
#: reproduced at all: SEAL pads each sequence with EOS to 2048 tokens and keeps the loss on the padding too (15x
#: the compute here; with Adam the loss scale cancels, so it mostly adds "predict EOS after the end" terms). The
#: ``paper`` presets of the agents and benchmarks use these settings.
SEAL_PAPER_SETTINGS: dict[str, Any] = {"epochs": 10, "loss_on": "all", "answer_max_tokens": 64, "keep_markup": True}


def setting(
    default: Any = MISSING, help: str = "", *, group: str = "", factory: Callable[[], Any] | None = None
) -> Any:
    """A dataclass field whose help text and ``--help`` group live in its metadata (as mlx-lm's ``TrainingArgs``
    keeps them): the one place a setting is documented, for README's table, the agents' CLI and ``--set``."""
    metadata = {"help": help, "group": group}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_type(hint: Any) -> tuple[Any, bool]:
    """``(type, optional)`` of a dataclass field's resolved annotation: ``int | None`` -> ``(int, True)``."""
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def _type_problem(kind: Any, value: Any) -> str | None:
    """What ``value`` should be if it is not of settings type ``kind`` (bool, int, float, str, list[str]), else
    None; a type not listed here is not checked."""
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if kind is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number (not NaN or +-inf)"
    if kind is str:
        return None if isinstance(value, str) else "a string"
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        ok = isinstance(value, list) and all(_type_problem(item, x) is None for x in value)
        return None if ok else f"a list of {getattr(item, '__name__', item)}"
    return None


def check_field_types(obj: Any) -> None:
    """Raise ValueError naming the first field of dataclass instance ``obj`` whose value is not of its annotated
    type: a ``bool`` field takes only True/False, an ``int`` field an int (not a bool), a ``float`` field a finite
    int or float (not a bool, NaN or +-inf), a ``str`` field a str, a ``list[str]`` field a list of str, and an
    optional one (``X | None``) also None. Fields of any other type are left to the class."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind, optional = field_type(hints[f.name])
        value = getattr(obj, f.name)
        if optional and value is None:
            continue
        problem = _type_problem(kind, value)
        if problem is not None:
            raise ValueError(f"{f.name} must be {problem}{' or None' if optional else ''}, got {value!r}")


@dataclass
class SealConfig:
    """Settings of one SEAL inner loop: data, learner, training-sequence construction, LoRA, optimiser, grading."""

    model: str = setting(
        "smollm2-135m", "model spec, see seal_env.models.load_model", group="What to learn from and with"
    )
    dataset: str = setting(
        "bundled", '"bundled", a SEAL/SQuAD JSON path, or "squad[:split]" (online)', group="What to learn from and with"
    )
    split: str = setting(
        "train", '"train", "heldout" or "all" articles of the data set', group="What to learn from and with"
    )
    heldout: float = setting(
        0.25,
        "fraction (or count, if >= 1) of articles held out, split deterministically",
        group="What to learn from and with",
    )
    split_seed: int = setting(0, "seed of the deterministic train/held-out split", group="What to learn from and with")
    quantize: int | None = setting(
        None, "4 or 8 quantizes the frozen backbone (QLoRA); slow on CPU", group="What to learn from and with"
    )
    dtype: str = setting(
        "auto",
        'frozen weights: "auto" (fp32 on CPU, the model\'s half dtype on GPU), "float32", ...',
        group="What to learn from and with",
    )

    reward: str = setting(
        "loglik", '"loglik", "choice", "margin", "pmi" (log-likelihood kinds), "accuracy" or "f1"', group="Reward"
    )
    eval_times: int = setting(
        1, "repeats of the whole inner loop with seeds seed, seed+1, ...; reward is their mean", group="Reward"
    )
    answer_max_tokens: int = setting(
        32, '0 = generate no answers (reward "loglik" only; accuracy, em and f1 read 0)', group="Reward"
    )
    diverged_reward: float = setting(
        0.0, "reward when the inner loop's loss is non-finite or above max_loss", group="Reward"
    )
    timings: bool = setting(
        True, "seconds per phase in the infos of evaluate / evaluate_many (never in step infos)", group="Reward"
    )
    cache: bool = setting(
        True,
        "reuse rewards from the persistent reward cache (seal_env.reward.cache); off = always train",
        group="Reward",
    )
    cache_dir: str | None = setting(
        None, 'reward cache folder; None = seal_env.env_vars.cache_dir() / "rewards"', group="Reward"
    )
    max_batch_adapters: int = setting(
        8, "inner loops (self-edits x eval_times) of one article trained and quizzed together", group="Reward"
    )

    grader: str = setting(
        "lenient",
        'what decides an answer\'s "correct" (accuracy): "lenient" (the normalised gold answer occurs in it) or '
        '"judge" (an LLM judge on an OpenAI-compatible endpoint, as SEAL grades with GPT-4.1; docs/judge.md)',
        group="Grading",
    )
    judge_base_url: str | None = setting(
        None,
        'the judge endpoint\'s base URL (POST <base>/chat/completions), e.g. "https://api.openai.com/v1"',
        group="Grading",
    )
    judge_model: str | None = setting(None, 'the judge\'s model name, e.g. "gpt-4.1"', group="Grading")
    judge_api_key_env: str | None = setting(
        None,
        "NAME of the environment variable that holds the judge's API key (never the key itself); none or an unset "
        "variable: no key (local servers)",
        group="Grading",
    )
    judge_timeout: float = setting(60.0, "seconds one judge request may take", group="Grading")
    judge_retries: int = setting(3, "tries after a failed judge request, with backoff (SEAL: 3)", group="Grading")
    judge_concurrency: int = setting(8, "judge requests in flight at once", group="Grading")
    judge_on_error: str = setting(
        "wrong",
        '"wrong": an answer the judge cannot grade counts as wrong (SEAL\'s rule); "raise": stop with JudgeError',
        group="Grading",
    )
    judge_max_tokens: int = setting(
        16, "token limit of a judge's reply (a reasoning model needs more)", group="Grading"
    )

    split_mode: str = setting("lines", '"lines", "segments" (---) or "none"', group="Self-edit -> training sequences")
    title_prefix: bool = setting(
        True,
        'prefix every piece with "{title}\\n" (SEAL\'s training-sequence template)',
        group="Self-edit -> training sequences",
    )
    include_passage: bool = setting(
        True, "SEAL appends the passage itself as one more training sequence", group="Self-edit -> training sequences"
    )
    drop_preamble: bool = setting(
        True,
        'drop a first line before a numbered list ("Certainly! Here are...")',
        group="Self-edit -> training sequences",
    )
    keep_markup: bool = setting(
        False,
        'keep Markdown in the pieces, as SEAL does; false (default) strips "**" emphasis and "#" heading marks and '
        'drops pieces that only introduce a list ("**Implications:**"; benchmarks/PAPER_CHECK.md)',
        group="Self-edit -> training sequences",
    )
    loss_on: str = setting("text", '"text" (not the title prefix) or "all"', group="Self-edit -> training sequences")
    max_sequences: int = setting(
        30, "pieces kept from one self-edit (SEAL: 30)", group="Self-edit -> training sequences"
    )
    max_sequence_tokens: int = setting(512, "tokens per training sequence", group="Self-edit -> training sequences")
    max_total_tokens: int = setting(8192, "tokens per self-edit", group="Self-edit -> training sequences")
    max_action_chars: int = setting(100_000, "characters of the action kept", group="Self-edit -> training sequences")

    lora_rank: int = setting(32, "LoRA rank", group="LoRA")
    lora_alpha: float = setting(64.0, "LoRA alpha (scale = alpha / rank, as in PEFT)", group="LoRA")
    lora_dropout: float = setting(0.0, "LoRA dropout", group="LoRA")
    lora_modules: list[str] = setting(
        factory=lambda: ["q_proj", "v_proj"],
        help='linear layers that carry LoRA (short names, or ["all"])',
        group="LoRA",
    )
    lora_layers: int = setting(-1, "how many of the last transformer blocks carry LoRA; -1 = all", group="LoRA")

    optimizer: str = setting("adamw", '"adamw", "adam" or "sgd"', group="Optimiser")
    learning_rate: float = setting(1e-3, "peak learning rate", group="Optimiser")
    lr_schedule: str = setting("linear", '"linear" (decay to 0) or "constant", after warmup_steps', group="Optimiser")
    warmup_steps: int = setting(0, "linear warm-up steps", group="Optimiser")
    weight_decay: float = setting(0.0, "AdamW / SGD weight decay", group="Optimiser")
    adam_bias_correction: bool = setting(
        True,
        "Adam(W) bias correction (PyTorch and HF, so SEAL, apply it; mlx's default is off; benchmarks/PAPER_CHECK.md)",
        group="Optimiser",
    )
    epochs: int = setting(
        3, "passes over the training sequences (SEAL: 10; 3 by benchmarks/PAPER_CHECK.md)", group="Optimiser"
    )
    batch_size: int = setting(1, "sequences per optimizer step", group="Optimiser")
    max_loss: float = setting(
        50.0, "training stops (diverged) when the loss exceeds this or is not finite", group="Optimiser"
    )

    def __post_init__(self) -> None:
        if isinstance(self.lora_modules, (list, tuple)):
            self.lora_modules = list(self.lora_modules)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting: every value has its field's type
        (:func:`check_field_types`: no NaN or +-inf, no bool or str for a number), then each setting's range."""
        check_field_types(self)
        choices = {
            "reward": REWARD_KINDS,
            "split": ("train", "heldout", "all"),
            "split_mode": ("lines", "segments", "none"),
            "loss_on": ("text", "all"),
            "optimizer": ("adamw", "adam", "sgd"),
            "lr_schedule": ("linear", "constant"),
            "dtype": ("auto", "float32", "bfloat16", "float16"),
            "quantize": (None, 4, 8),
            "grader": ("lenient", "judge"),
            "judge_on_error": ("wrong", "raise"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("model", "dataset"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty string")
        at_least = {
            **dict.fromkeys(
                (
                    "eval_times",
                    "max_sequences",
                    "max_sequence_tokens",
                    "max_total_tokens",
                    "max_action_chars",
                    "lora_rank",
                    "epochs",
                    "batch_size",
                    "max_batch_adapters",
                    "judge_concurrency",
                    "judge_max_tokens",
                ),
                1,
            ),
            "judge_retries": 0,
            "answer_max_tokens": 0,
            "warmup_steps": 0,
            "split_seed": 0,
            "heldout": 0,
            "weight_decay": 0,
            "lora_dropout": 0,
        }
        for name, low in at_least.items():
            if getattr(self, name) < low:
                what = "a positive integer" if low == 1 else "non-negative (>= 0)"
                raise ValueError(f"{name} must be {what}, got {getattr(self, name)!r}")
        for name in ("learning_rate", "lora_alpha", "max_loss", "judge_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        if self.answer_max_tokens == 0 and self.reward not in LOGLIK_KINDS:
            raise ValueError(
                f"answer_max_tokens=0 generates no answers, so it needs a log-likelihood reward "
                f"{LOGLIK_KINDS} (got reward={self.reward!r})"
            )
        if self.heldout >= 1 and self.heldout != int(self.heldout):
            raise ValueError(f"heldout must be a fraction below 1 or a whole count, got {self.heldout!r}")
        if not self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_modules or not all(m.strip() for m in self.lora_modules):
            raise ValueError(
                f"lora_modules must name at least one module (e.g. ['q_proj', 'v_proj'] or ['all']), "
                f"got {self.lora_modules!r}"
            )
        if self.lora_layers == 0 or self.lora_layers < -1:
            raise ValueError(f"lora_layers must be -1 (all) or a positive count, got {self.lora_layers!r}")
        self._validate_judge()

    def _validate_judge(self) -> None:
        """The judge settings: a usable base URL and model with ``grader="judge"``, a variable name (never a key)
        in ``judge_api_key_env``. The messages never repeat the URL or the name (either could hold a secret)."""
        from seal_env.judge import api_key_env_problem, base_url_problem

        problem = api_key_env_problem(self.judge_api_key_env)
        if problem:
            raise ValueError(f"judge_api_key_env {problem}")
        if self.judge_base_url is not None and base_url_problem(self.judge_base_url):
            raise ValueError(f"judge_base_url {base_url_problem(self.judge_base_url)}")
        if self.judge_model is not None and not self.judge_model.strip():
            raise ValueError("judge_model must be a model name or None")
        if self.grader == "judge" and (self.judge_base_url is None or self.judge_model is None):
            raise ValueError(
                "grader='judge' needs judge_base_url and judge_model, e.g. judge_base_url='https://api.openai.com/v1' "
                "judge_model='gpt-4.1' judge_api_key_env='OPENAI_API_KEY' (docs/judge.md)"
            )

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
        key = {
            "model": self.model,
            "quantize": self.quantize,
            "dtype": self.dtype,
            "answer_max_tokens": self.answer_max_tokens,
        }
        return key | self._grader_key()

    def inner_loop_key(self) -> dict[str, Any]:
        """The settings that decide a reward (for caching), everything but where the articles come from; the
        grader by its identity (a judge's base URL, model and prompt version; nothing for the lenient match)."""
        from seal_env.judge import JUDGE_SETTINGS

        skip = {"dataset", "split", "heldout", "split_seed", "timings", "cache", "cache_dir", "max_batch_adapters"}
        skip.update(JUDGE_SETTINGS)
        return {k: v for k, v in self.to_dict().items() if k not in skip} | self._grader_key()

    def _grader_key(self) -> dict[str, Any]:
        from seal_env.judge import judge_key

        judge = judge_key(self)
        return {} if judge is None else {"grader": {"judge": judge}}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_setting(name: str, text: str) -> Any:
    """The value of :class:`SealConfig` setting ``name`` from command-line text, by the field's type: booleans
    ``true/false/yes/no/on/off/1/0``, ``none`` for optional ones, numbers, lists as JSON (``["all"]``) or
    comma-separated (``q_proj,v_proj``). An unknown name raises ``TypeError``, an unparsable value ``ValueError``."""
    hints = typing.get_type_hints(SealConfig)
    if name not in hints:
        raise TypeError(f"unknown setting {name!r}; valid settings: {sorted(hints)}")
    (hint, optional), text = field_type(hints[name]), text.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if hint is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
            raise ValueError("not a boolean")
        if typing.get_origin(hint) is list:
            value = json.loads(text) if text.startswith("[") else [x.strip() for x in text.split(",") if x.strip()]
            return list(value)
        return hint(text)
    except ValueError as err:
        raise ValueError(f"setting {name}: cannot read {text!r} as {getattr(hint, '__name__', hint)} ({err})") from None


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["epochs=3", "reward=f1"]`` -> ``{"epochs": 3, "reward": "f1"}`` (each value by :func:`parse_setting`)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"a setting is NAME=VALUE, got {item!r}")
        out[name.strip()] = parse_setting(name.strip(), value)
    return out
