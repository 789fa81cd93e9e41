"""Every inner-loop training setting changes what is trained (steps, tokens, losses, adapters), not only "runs"."""

import dataclasses
import math

from seal_env.envs.knowledge import KnowledgeIncorporationEnv
from seal_env.learner.lora import MultiLoRALinear

import pytest

from conftest import TINY

# the quiz only scores the gold answers (nothing is generated): these tests are about training
SETTINGS = {**TINY, "answer_max_tokens": 0, "timings": False}
EDIT = "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911."
EPOCHS = TINY["epochs"]


@pytest.fixture(scope="module")
def env():
    e = KnowledgeIncorporationEnv(**SETTINGS)
    yield e
    e.close()


def train(env, **changes):
    """Info and the learner's train report of one reward (the first article, EDIT, seed 0) with ``changes``."""
    reports, real, saved = [], env.learner.train, env.pipeline.cfg

    def spy(datas, seeds, on_step=None):
        reports.append(real(datas, seeds, on_step))
        return reports[-1]

    env.learner.train = spy
    env.pipeline.set_config(dataclasses.replace(saved, **changes))
    try:
        _, info = env.evaluate(env.articles[0], EDIT, seed=0)
    finally:
        env.pipeline.set_config(saved)
        del env.learner.train  # back to the method
    assert len(reports) == 1 and len(reports[0]) == 1
    return info, reports[0][0]


@pytest.fixture(scope="module")
def default(env):
    info, report = train(env)
    assert info["n_sequences"] == 3 and info["train_steps"] == 3 * EPOCHS == len(info["train_losses"])
    assert all(math.isfinite(x) for x in info["train_losses"]) and not info["diverged"]
    return info, report


def test_batch_size_two_halves_the_steps_and_trains_every_token(env, default):
    info, report = train(env, batch_size=2)
    assert info["train_steps"] == math.ceil(3 / 2) * EPOCHS  # 2 steps an epoch: a pair, then the last sequence
    assert report["trained_tokens"] == default[1]["trained_tokens"]  # every loss token, once an epoch
    assert info["train_losses"] != default[0]["train_losses"][: info["train_steps"]]


def test_optimizers(env, default):
    base = default[0]["train_losses"]
    sgd = train(env, optimizer="sgd")[0]["train_losses"]
    assert sgd[0] == base[0] and all(a != b for a, b in zip(sgd[1:], base[1:], strict=True))  # after the 1st update
    # Adam takes no weight decay (README: "AdamW / SGD weight decay"), AdamW does: with a decay, they differ
    adam = train(env, optimizer="adam", weight_decay=1.0)[0]["train_losses"]
    adamw = train(env, optimizer="adamw", weight_decay=1.0)[0]["train_losses"]
    assert adam == base  # = AdamW without decay (the default), exactly
    assert adamw[0] == base[0] and all(a != b for a, b in zip(adamw[1:], base[1:], strict=True))
    decayed_sgd = train(env, optimizer="sgd", weight_decay=1.0)[0]["train_losses"]
    assert decayed_sgd[0] == sgd[0] and decayed_sgd[1:] != sgd[1:]


def test_lr_schedule_and_warmup(env, default):
    base = default[0]["train_losses"]
    constant = train(env, lr_schedule="constant")[0]["train_losses"]
    # linear decay and constant agree on the first update (lr 1e-3 both) and differ from the second on
    assert constant[:2] == base[:2] and all(a != b for a, b in zip(constant[2:], base[2:], strict=True))
    warm = train(env, warmup_steps=2)[0]["train_losses"]
    assert warm[0] == base[0] and warm[1] != base[1]  # the first update has lr 0: the second loss is another


def test_lora_dropout_changes_the_updates(default):
    e = KnowledgeIncorporationEnv(**SETTINGS, lora_dropout=0.5)
    info, _ = train(e)
    e.close()
    base = default[0]["train_losses"]
    # B = 0 at the start, so the first loss is the base model's either way; the dropped inputs change every update
    assert info["train_losses"][0] == pytest.approx(base[0], rel=1e-6)
    assert all(a != pytest.approx(b, rel=1e-6) for a, b in zip(info["train_losses"][1:], base[1:], strict=True))


@pytest.mark.parametrize(
    "changes, adapters",
    [({"lora_layers": 1}, 2), ({"lora_modules": ["all"]}, 2 * 7)],
    ids=["last-layer", "all-modules"],
)
def test_lora_placement(env, default, changes, adapters):
    e = KnowledgeIncorporationEnv(**SETTINGS, **changes)
    info, _ = train(e)
    layer_of = [name.split(".")[2] for name, m in e.learner.model.named_modules() if isinstance(m, MultiLoRALinear)]
    n_trainable = e.learner.n_trainable
    e.close()
    assert len(env.learner.adapters) == 2 * 2  # the default: q_proj and v_proj in both layers
    assert len(layer_of) == adapters and (changes.get("lora_layers") != 1 or set(layer_of) == {"1"})  # the last
    assert n_trainable != env.learner.n_trainable
    base = default[0]["train_losses"]
    assert info["train_losses"][0] == pytest.approx(base[0], rel=1e-6)  # B = 0: the base model's loss
    assert all(a != pytest.approx(b, rel=1e-6) for a, b in zip(info["train_losses"][1:], base[1:], strict=True))


def test_loss_on_all_trains_the_title_prefix_too(env, default):
    info, report = train(env, loss_on="all")
    head = len(env.learner.tokenizer.encode(f"{env.articles[0].title}\n"))
    # per sequence and epoch: len(ids) - 1 targets instead of those after the title prefix's last token
    assert report["trained_tokens"] - default[1]["trained_tokens"] == 3 * EPOCHS * (head - 1)
    assert info["train_tokens"] == default[0]["train_tokens"]  # the same sequences
    assert info["train_losses"][0] != default[0]["train_losses"][0]


def test_token_caps_drop_and_truncate_sequences(env, default):
    full = default[0]["train_tokens"]
    info, _ = train(env, max_total_tokens=full - 1)  # the passage (the last sequence) no longer fits
    assert (info["dropped_sequences"], info["n_sequences"], info["train_steps"]) == (1, 2, 2 * EPOCHS)
    assert info["train_tokens"] < full and info["truncated_tokens"] == 0
    info, report = train(env, max_sequence_tokens=8)  # every sequence is longer
    assert info["train_tokens"] == 3 * 8 and info["truncated_tokens"] > 0 and info["n_sequences"] == 3
    assert report["trained_tokens"] < default[1]["trained_tokens"] and info["train_steps"] == 3 * EPOCHS
    # a cap that cuts only the passage, which is tokenized whole (8 characters a token at most): exact accounting
    article, tok = env.articles[0], env.learner.tokenizer
    passage = len(tok.encode(f"{article.title}\n")) + len(tok.encode(article.context.strip(), add_special_tokens=False))
    cap = math.ceil(len(article.context.strip()) / 8) + 1
    assert cap < passage + 1  # the passage and its end-of-sequence token do not fit
    info, _ = train(env, max_sequence_tokens=cap)
    assert (info["truncated_tokens"], info["train_tokens"]) == (passage + 1 - cap, full - (passage + 1 - cap))
    assert info["dropped_sequences"] == 0 and info.get("truncated_chars", 0) == 0


@pytest.mark.parametrize("name", ["weight_decay", "learning_rate", "lora_dropout", "max_loss", "lora_alpha"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_training_setting_is_refused_before_anything_trains(env, name, value):
    """A NaN weight decay would make every loss NaN, so every reward silently ``diverged_reward``: refused."""
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        KnowledgeIncorporationEnv(**{**SETTINGS, name: value})
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number"):
        dataclasses.replace(env.cfg, **{name: value})
