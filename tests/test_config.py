"""SealConfig.validate: every bad setting is a ValueError that names it; the edge values that are fine pass."""

import dataclasses
import math
import typing

from seal_env.config import SealConfig, parse_assignments

import pytest

NAN, INF = math.nan, math.inf
FLOAT_SETTINGS = [f.name for f in dataclasses.fields(SealConfig) if typing.get_type_hints(SealConfig)[f.name] is float]
POSITIVE_INTS = (
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
BOOLS = ("timings", "cache", "title_prefix", "include_passage", "drop_preamble", "keep_markup", "adam_bias_correction")
CHOICES = ("reward", "split", "split_mode", "loss_on", "optimizer", "lr_schedule", "dtype")

BAD = [
    *((name, value) for name in FLOAT_SETTINGS for value in (NAN, INF, -INF, True, "1.0", None)),
    *((name, value) for name in POSITIVE_INTS for value in (0, -1, 1.5, 2.0, True, "3", None)),
    *((name, value) for name in BOOLS for value in ("false", 0, 1, None)),
    *((name, value) for name in CHOICES for value in ("bogus", "", 3, None)),
    ("answer_max_tokens", -1),
    ("answer_max_tokens", 1.0),
    ("answer_max_tokens", False),
    ("warmup_steps", -1),
    ("warmup_steps", 0.5),
    ("split_seed", -1),
    ("split_seed", "0"),
    ("lora_layers", 0),
    ("lora_layers", -2),
    ("lora_layers", 1.0),
    ("quantize", 3),
    ("quantize", 16),
    ("quantize", "4"),
    ("quantize", 4.0),
    ("quantize", True),
    ("lora_modules", []),
    ("lora_modules", [""]),
    ("lora_modules", ["q_proj", 3]),
    ("lora_modules", "q_proj"),  # a string is not a list of names (list("q_proj") would be its letters)
    ("lora_modules", None),
    ("model", ""),
    ("model", 3),
    ("dataset", " "),
    ("dataset", None),
    ("cache_dir", 3),
    ("learning_rate", 0.0),
    ("learning_rate", -1e-3),
    ("lora_alpha", 0),
    ("max_loss", 0.0),
    ("max_loss", -1.0),
    ("weight_decay", -0.1),
    ("lora_dropout", -0.1),
    ("lora_dropout", 1.0),
    ("heldout", -0.1),
    ("heldout", -1),
    ("heldout", 1.5),  # a count must be whole
]


def test_the_float_settings_are_found():
    assert {
        "lora_alpha",
        "lora_dropout",
        "learning_rate",
        "weight_decay",
        "max_loss",
        "diverged_reward",
        "heldout",
    } <= set(FLOAT_SETTINGS)


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_bad_setting_is_a_value_error_naming_it(name, value):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        SealConfig(**{name: value})


def test_answer_max_tokens_zero_needs_a_loglik_reward():
    with pytest.raises(ValueError, match=r"^answer_max_tokens=0 .*reward='accuracy'"):
        SealConfig(answer_max_tokens=0, reward="accuracy")


def test_nan_from_the_command_line_is_rejected():
    """``--set weight_decay=nan`` parses (float("nan")), then the config refuses it."""
    for text in ("weight_decay=nan", "learning_rate=inf", "diverged_reward=-inf", "heldout=nan"):
        with pytest.raises(ValueError, match=rf"^{text.split('=')[0]} must be a finite number"):
            SealConfig(**parse_assignments([text]))


def test_replace_revalidates():
    with pytest.raises(ValueError, match="^weight_decay"):
        dataclasses.replace(SealConfig(), weight_decay=NAN)


GOOD = [
    ("lora_dropout", 0.0),
    ("lora_dropout", 0.999),
    ("weight_decay", 0),
    ("weight_decay", 10.0),
    ("warmup_steps", 0),
    ("diverged_reward", -1.0),
    ("diverged_reward", 0),
    ("learning_rate", 1e-12),
    ("lora_alpha", 16),  # an int where a float is expected
    ("max_loss", 1e300),
    ("heldout", 0),
    ("heldout", 0.0),
    ("heldout", 0.999),
    ("heldout", 1),
    ("heldout", 1.0),
    ("heldout", 8),
    ("split_seed", 0),
    ("lora_layers", -1),
    ("lora_layers", 1),
    ("lora_modules", ["all"]),
    ("lora_modules", ("q_proj", "v_proj")),  # a tuple becomes a list
    ("quantize", None),
    ("quantize", 4),
    ("quantize", 8),
    ("cache_dir", None),
    ("cache_dir", "/tmp/rewards"),
    ("dtype", "bfloat16"),
    ("answer_max_tokens", 0),  # with the default (log-likelihood) reward
    ("max_batch_adapters", 1),
    ("timings", False),
]


@pytest.mark.parametrize("name, value", GOOD, ids=[f"{n}={v!r}" for n, v in GOOD])
def test_good_edge_value_is_accepted(name, value):
    cfg = SealConfig(**{name: value})
    assert getattr(cfg, name) == (list(value) if isinstance(value, tuple) else value)
