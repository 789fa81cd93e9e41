"""The ``fixed_shapes`` lever: padded passes train exactly as unpadded ones (to float rounding), and give fewer
distinct compiled shapes (tiny random model)."""

import dataclasses

from seal_env.config import SealConfig
from seal_env.learner.batching import ladder_up, length_buckets, make_batch, round_up
from seal_env.learner.trainer import Learner
from seal_env.models import load_model

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import TINY

FAST = dict(fast_kernels=True, head_on_positions=True, compile=True)
FULL_LOGITS = dict(fast_kernels=False, head_on_positions=False, compile=True)
WORDS = "the observatory on Mount Tervik was founded in 1911 by Ada Varn who mapped the northern sky".split()
PROMPTS = ["Where is the observatory?\nAnswer:", "Who founded it?\nAnswer:"]
ANSWERS = ["Mount Tervik", "Ada Varn"]


@pytest.fixture(scope="module")
def learner():
    """Batches of 2 rows, 3 epochs, and SGD: padding changes the gradients by float rounding only (~1e-6 relative),
    which SGD's weights keep, while AdamW's division by the root of the second moment blows the rounding of
    near-zero gradients up to ~1e-3 relative in some weights, padded or not."""
    model, tok = load_model("tiny-random")
    settings = {k: v for k, v in TINY.items() if k != "split"}
    cfg = SealConfig(**{**settings, "batch_size": 2, "epochs": 3, "optimizer": "sgd", "learning_rate": 0.3})
    return Learner(model, tok, cfg)


def _datas(tok, slots=3, rows=5):
    """``slots`` data sets of ``rows`` sequences of varied lengths (3 to 19 words after a 2-token-ish head)."""
    rng = np.random.default_rng(0)
    head = tok.encode("Tervik\n")
    datas = []
    for _ in range(slots):
        texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 20)))) for _ in range(rows)]
        datas.append([(head + tok.encode(t, add_special_tokens=False), len(head)) for t in texts])
    return datas


def _sft_as_custom_loss(model, inputs, targets, mask, groups, weight, token_weight):
    """SFT's cross-entropy as a custom loss, with a per-row and a per-token weight (extras) and per-slot metrics."""
    ce = nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets) * mask * weight[:, None] * token_weight
    tokens = groups @ mask.sum(axis=1)
    return (groups @ ce.sum(axis=1)) / mx.maximum(tokens, 1), tokens, {"rows": groups.sum(1), "w": groups @ weight}


def _train(learner, datas, seeds, fixed, levers=FAST, loss=None, poison=None):
    """Train fresh slots with ``fixed_shapes=fixed``; the reports, the adapter weights, the quiz log-likelihoods and
    the shapes of every pass's inputs (``loss_and_grad``'s arguments)."""
    learner.set_levers(**levers, fixed_shapes=fixed)
    learner.reset(seeds)
    if poison is not None:  # a non-finite adapter: that slot's loss is NaN from its first step
        for m in learner.adapters:
            m.lora_b = mx.where(mx.arange(len(seeds))[:, None, None] == poison, mx.nan, m.lora_b)
    shapes = []
    real = learner.loss_and_grad

    def recording(index, *batch):
        shapes.append(tuple(tuple(x.shape) for x in (index, *batch)))
        return real(index, *batch)

    learner.loss_and_grad = recording
    try:
        reports = learner.train(datas, seeds, loss=loss)
    finally:
        del learner.loss_and_grad
        learner.set_levers(**FAST, fixed_shapes=False)
    weights = {k: np.array(v) for k, v in tree_flatten(learner.model.trainable_parameters())}
    logliks = learner.answer_logliks(PROMPTS, ANSWERS)
    return reports, weights, logliks, shapes


def _assert_same_training(a, b, slots, metrics=False):
    (rep_a, w_a, ll_a, _), (rep_b, w_b, ll_b, _) = a, b
    for k in slots:
        ra, rb = rep_a[k], rep_b[k]
        assert ra["train_steps"] == rb["train_steps"] > 0 and not ra["diverged"] and not rb["diverged"]
        assert ra["trained_tokens"] == rb["trained_tokens"]  # exact: padding adds no loss token
        assert np.allclose(ra["train_losses"], rb["train_losses"], rtol=1e-4, atol=1e-5)
        assert np.allclose(ll_a[k], ll_b[k], rtol=1e-4)
        if metrics:
            assert ra["train_metrics"] == rb["train_metrics"]  # row counts and weights: exact
        for name in w_a:
            assert np.allclose(w_a[name][k], w_b[name][k], rtol=1e-4, atol=1e-5), (name, k)


def test_ladder_and_round_up():
    assert [ladder_up(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert all(n <= ladder_up(n) < n * 1.5 for n in range(2, 200))
    assert [round_up(n, 16) for n in (1, 16, 17)] == [16, 16, 32]
    inputs, targets, mask = make_batch([([1, 2, 3], 1), None], width_step=16)
    assert inputs.shape == targets.shape == mask.shape == (2, 16) and mask.sum().item() == 2


def test_length_buckets_see_the_padded_sizes():
    """Rows of 20 and 30 tokens: cheaper apart than padded together (one pass of 2 x 29 vs 19 + 29 + an overhead of
    8); rounded to a width of 32 both are 32 wide, so one pass; three rows per slot count as three, not four."""
    a, b = [([1] * 20, 1)], [([1] * 30, 1)]
    assert length_buckets({0: a, 1: b}, 8) == [[0], [1]]
    assert length_buckets({0: a, 1: b}, 8, width_step=32) == [[0, 1]]
    three = {0: a * 3, 1: b * 3}
    assert length_buckets(three, 10_000, max_tokens=2 * 3 * 29, ladder_rows=True) == [[0, 1]]
    five = {0: a * 5, 1: b * 5}  # five rows per slot pad to six: 2 x 6 x 29 tokens are over the cap
    assert length_buckets(five, 10_000, max_tokens=2 * 5 * 29) == [[0, 1]]
    assert length_buckets(five, 10_000, max_tokens=2 * 5 * 29, ladder_rows=True) == [[0], [1]]


@pytest.mark.parametrize("levers", [FAST, FULL_LOGITS], ids=["head-on-positions", "full-logits"])
def test_fixed_shapes_train_as_unpadded_passes(learner, levers):
    """Three slots (batches of 2 rows and a last one of 1, 3 epochs, rows of 6 to 25 tokens): the same losses,
    tokens, adapter weights and quiz log-likelihoods with the passes padded, and every padded pass has the fixed
    sizes."""
    datas, seeds = _datas(learner.tokenizer), [3, 4, 5]
    off = _train(learner, datas, seeds, fixed=False, levers=levers)
    on = _train(learner, datas, seeds, fixed=True, levers=levers)
    _assert_same_training(off, on, range(3))
    assert [r["train_steps"] for r in on[0]] == [9, 9, 9]
    for index, inputs, _, positions, weights, groups in on[3]:
        rows_each = inputs[0] // index[0]
        assert inputs[1] % Learner.SHAPE_WIDTH_STEP == 0 and inputs[0] == index[0] * rows_each == index[0] * ladder_up(
            rows_each
        )
        if levers["head_on_positions"]:
            assert positions[0] % Learner.SHAPE_POSITIONS_STEP == 0
        assert groups == (index[0], positions[0]) == (index[0], weights[0])
    assert any(inputs[1] % Learner.SHAPE_WIDTH_STEP for _, inputs, *_ in off[3])  # unpadded widths vary


def test_fixed_shapes_train_a_custom_loss_as_unpadded_passes(learner):
    datas, seeds = _datas(learner.tokenizer), [3, 4, 5]
    weighted = [[(ids, start, (1.0, [1.0] * (len(ids) - 1))) for ids, start in d] for d in datas]
    off = _train(learner, weighted, seeds, fixed=False, loss=_sft_as_custom_loss)
    on = _train(learner, weighted, seeds, fixed=True, loss=_sft_as_custom_loss)
    _assert_same_training(off, on, range(3), metrics=True)
    assert on[0][0]["train_metrics"]["rows"] == [2.0, 2.0, 1.0] * 3  # padding rows are in no slot's group
    assert all(inputs[1] % Learner.SHAPE_WIDTH_STEP == 0 for _, inputs, *_ in on[3])


def test_fixed_shapes_give_fewer_distinct_compiled_shapes(learner, monkeypatch):
    """Four slots of 8 rows of varied lengths, 3 epochs: the passes take fewer distinct shapes with fixed shapes,
    and so the compiled function keeps fewer traces."""
    monkeypatch.setattr(learner, "cfg", dataclasses.replace(learner.cfg, batch_size=1))
    datas, seeds = _datas(learner.tokenizer, slots=4, rows=8), [1, 2, 3, 4]
    counts = {}
    for fixed in (False, True):
        shapes = _train(learner, datas, seeds, fixed=fixed)[3]
        counts[fixed] = len(set(shapes))
        print(f"fixed_shapes={fixed}: {len(shapes)} passes, {counts[fixed]} distinct shapes")
    assert counts[True] < counts[False] / 2


def test_a_diverged_slot_leaves_the_others_with_fixed_shapes(learner):
    """Slot 0 (the shortest rows, so first in its passes, where the padding positions point) has non-finite
    weights: it diverges at its first step and the other slots train as they do in a healthy unpadded run."""
    datas, seeds = _datas(learner.tokenizer), [3, 4, 5]
    datas[0] = [(ids[:8], start) for ids, start in datas[0]]
    healthy = _train(learner, datas, seeds, fixed=False)
    poisoned = _train(learner, datas, seeds, fixed=True, poison=0)
    assert poisoned[0][0]["diverged"] and poisoned[0][0]["train_steps"] == 0
    _assert_same_training(healthy, poisoned, [1, 2])


def test_fixed_shapes_are_on_by_default_and_pad_only_compiled_passes(learner):
    assert Learner.__init__.__kwdefaults__["fixed_shapes"] is True
    *_, shapes = _train(learner, _datas(learner.tokenizer), [3, 4, 5], fixed=True, levers={**FAST, "compile": False})
    assert any(inputs[1] % Learner.SHAPE_WIDTH_STEP for _, inputs, *_ in shapes)  # without compile: not padded
