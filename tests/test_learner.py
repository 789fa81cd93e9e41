"""The learner's speed levers give the same results as the plain mlx-lm path (tiny random model)."""

import dataclasses
import math
import os
import subprocess
import sys

from seal_env.config import SealConfig
from seal_env.learner.batching import loss_positions, make_batch, stack_extras
from seal_env.learner.trainer import Learner
from seal_env.models import load_model
from seal_env.models.kernels import fast_exp

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import TINY

PLAIN = dict(fast_kernels=False, head_on_positions=False, compile=False)
FAST = dict(fast_kernels=True, head_on_positions=True, compile=True)


@pytest.fixture(scope="module")
def learner():
    model, tok = load_model("tiny-random")
    cfg = SealConfig(**{k: v for k, v in TINY.items() if k != "split"})
    return Learner(model, tok, cfg)


def _data(tok, n=3):
    texts = [
        "The observatory sits on Mount Tervik, far above the valley.",
        "It was founded in 1911.",
        "Its first director was Ada Varn, who mapped the northern sky for thirty years.",
    ][:n]
    head = tok.encode("Tervik\n")
    return [(head + tok.encode(t, add_special_tokens=False) + [tok.eos_token_id], len(head)) for t in texts]


def test_fast_exp_matches_exp_and_its_gradient():
    x = mx.linspace(-87.0, 88.0, 200_001)  # the whole float32 range of exp
    ref = np.exp(np.asarray(x, dtype=np.float64))
    assert np.max(np.abs(np.asarray(fast_exp(x), dtype=np.float64) - ref) / ref) < 2e-7
    assert float(fast_exp(mx.array([-1000.0]))[0]) < 1e-37 and np.isfinite(float(fast_exp(mx.array([1000.0]))[0]))
    g = mx.grad(lambda v: fast_exp(v).sum())(mx.array([0.5, -2.0]))
    assert np.allclose(np.asarray(g), np.exp([0.5, -2.0]), rtol=1e-6)


def test_loss_and_grads_agree_with_plain_path(learner):
    learner.reset([1])
    for m in learner.adapters:  # non-zero B so every LoRA gradient is non-trivial
        m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(2)) * 0.05
    inputs, targets, mask = make_batch(_data(learner.tokenizer, 1))
    learner.model.train()
    results = {}
    try:
        for name, levers in (("plain", PLAIN), ("fast", FAST)):
            learner.set_levers(**levers)
            positions, weights = loss_positions(mask, levers["head_on_positions"])
            groups = mx.ones((1, positions.shape[0]))
            (loss, _, ntoks), grads = learner.loss_and_grad(mx.array([0]), inputs, targets, positions, weights, groups)
            results[name] = (loss.item(), ntoks.item(), {k: np.asarray(v) for k, v in tree_flatten(grads)})
    finally:
        learner.model.eval()
        learner.set_levers(**FAST)
    (l0, n0, g0), (l1, n1, g1) = results["plain"], results["fast"]
    assert n0 == n1 == float(np.asarray(mask).sum())
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert g0.keys() == g1.keys() and len(g0) == 2 * len(learner.adapters)
    for k in g0:
        scale = np.abs(g0[k]).max() + 1e-12
        assert np.abs(g0[k] - g1[k]).max() / scale < 1e-4, k


def test_training_agrees_with_plain_path_and_is_deterministic(learner):
    data = _data(learner.tokenizer)
    reports = {}
    for name, levers in (("plain", PLAIN), ("fast", FAST), ("fast again", FAST)):
        learner.set_levers(**levers)
        learner.reset([7])
        reports[name] = learner.train([data], [7])[0]
        reports[name]["logliks"] = learner.answer_logliks(["Where is the observatory?\nAnswer:"], ["Mount Tervik"])[0]
    assert reports["fast"]["train_losses"] == reports["fast again"]["train_losses"]  # deterministic
    assert reports["fast"]["logliks"] == reports["fast again"]["logliks"]
    p, f = reports["plain"], reports["fast"]
    assert f["train_steps"] == p["train_steps"] == len(data) * learner.cfg.epochs
    assert f["trained_tokens"] == p["trained_tokens"]
    assert np.allclose(f["train_losses"], p["train_losses"], rtol=1e-4)
    assert f["logliks"][0] == pytest.approx(p["logliks"][0], rel=1e-4)


def test_stack_extras_stacks_numbers_and_pads_per_token_values():
    rows = [([1, 2, 3], 1, (0.5, [1.0, 2.0])), None, ([4, 5, 6, 7], 2, (-1.0, [3.0, 4.0, 5.0]))]
    per_row, per_token = stack_extras(rows, width=3)
    assert per_row.tolist() == [0.5, 0.0, -1.0]
    assert per_token.tolist() == [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 4.0, 5.0]]
    assert stack_extras([([1, 2], 1), None], width=1) == []  # rows without extras


def test_custom_loss_trains_like_the_default_and_reports_its_metrics(learner, monkeypatch):
    """SFT's cross-entropy written as a custom loss over rows trains two slots as the default loss does; the rows'
    extras reach it (a per-row weight of 1), ``groups`` leaves out the padding rows, and its metrics are reported."""
    import mlx.nn as nn

    def loss(model, inputs, targets, mask, groups, weight):
        ce = nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets) * mask * weight[:, None]
        tokens = groups @ mask.sum(axis=1)
        return (groups @ ce.sum(axis=1)) / mx.maximum(tokens, 1), tokens, {"rows": groups.sum(1), "w": groups @ weight}

    monkeypatch.setattr(learner, "cfg", dataclasses.replace(learner.cfg, batch_size=2))
    learner.set_levers(**FAST)
    data = _data(learner.tokenizer)
    datas = [data, data + data[:1]]  # batches of 2 rows and 1 | 2 and 2: slot 0's single row is padded
    learner.reset([1, 2])
    default = learner.train(datas, [1, 2])
    learner.reset([1, 2])
    weighted = [[(ids, start, (1.0,)) for ids, start in d] for d in datas]
    custom = learner.train(weighted, [1, 2], loss=loss)
    learner.reset([1, 2])
    again = learner.train(datas, [1, 2])  # the default loss again
    assert [r["train_losses"] for r in again] == [r["train_losses"] for r in default]
    for d, c in zip(default, custom, strict=True):
        assert c["train_steps"] == d["train_steps"] and c["trained_tokens"] == d["trained_tokens"]
        assert np.allclose(c["train_losses"], d["train_losses"], rtol=1e-5) and not c["diverged"]
        assert "train_metrics" not in d and c["train_metrics"]["w"] == c["train_metrics"]["rows"]
    assert custom[0]["train_metrics"]["rows"] == [2.0, 1.0] * learner.cfg.epochs
    assert custom[1]["train_metrics"]["rows"] == [2.0, 2.0] * learner.cfg.epochs


def test_answer_logliks_from_the_prefilled_cache_match_full_logits(learner):
    import mlx.nn as nn

    learner.reset([3])
    for m in learner.adapters:  # a non-zero adapter, so the slot's LoRA matters
        m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(4)) * 0.05
    prompts = ["Question: Where is it?\nAnswer:", "Question: When was it founded?\nAnswer:"]
    answers = ["On Mount Tervik", "1911"]
    cached = learner.answer_logliks(prompts, answers)[0]
    tok = learner.tokenizer
    reference = []
    for p, a in zip(
        prompts, answers, strict=True
    ):  # one full forward of prompt + answer, log-softmax over every position
        head = learner._encode_prompt(p)
        ids = head + tok.encode(a, add_special_tokens=False)
        logp = nn.log_softmax(learner.model(mx.array([ids[:-1]])).astype(mx.float32), axis=-1)[0]
        reference.append(float(np.mean([logp[j - 1, ids[j]].item() for j in range(len(head), len(ids))])))
    assert np.allclose(cached, reference, rtol=1e-5) and all(math.isfinite(x) for x in cached)


def test_fast_attention_and_mlp_match_stock_modules(learner):
    layer = learner.model.model.layers[0]
    x = mx.random.normal((2, 11, layer.hidden_size), key=mx.random.key(0))
    out = {}
    for on in (False, True):
        learner.set_levers(fast_kernels=on, head_on_positions=True, compile=False)
        learner.model.train()
        out[on] = (np.asarray(layer.self_attn(x, mask="causal")), np.asarray(layer.mlp(x)))
        learner.model.eval()
    learner.set_levers(**FAST)
    for a, b in zip(out[False], out[True], strict=True):
        assert np.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_compiled_traces_are_bounded(learner, monkeypatch):
    monkeypatch.setattr(Learner, "MAX_TRACES", 2)
    learner.set_levers(**FAST)
    tok = learner.tokenizer
    learner.reset([0])
    for n in (5, 6, 7, 8):
        ids = tok.encode("word " * n)
        learner.train([[(ids, 1)]], [0])
        assert len(learner._shapes) <= 2


MALLINFO_PROBE = """
import ctypes
from seal_env.learner.memory import keep_freed_memory
fields = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype, libc.malloc.restype = MallInfo2, ctypes.c_void_p
keep_freed_memory()
block = libc.malloc(16 << 20)
print("mmapped" if libc.mallinfo2().hblkhd >= 16 << 20 else "heap")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_serves_large_blocks_from_the_heap():
    import ctypes

    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc < 2.33 has no mallinfo2")

    def where(switch: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "SEAL_ENV_MALLOC_TUNING"}
        if switch:
            env["SEAL_ENV_MALLOC_TUNING"] = switch
        out = subprocess.run(
            [sys.executable, "-c", MALLINFO_PROBE], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.split()[-1]

    # tuned: a 16 MB block comes from (and goes back to) the heap, so reusing it does not fault fresh pages in;
    # glibc's default unmaps such a block on free
    assert where(None) == "heap"
    assert where("off") == "mmapped"


def test_max_grad_norm_scales_each_slots_step_down_to_that_norm():
    """Gradient clipping, with SGD (an update that is ``-lr * gradient``): a slot whose gradient norm is above
    ``max_grad_norm`` moves by its unclipped step times ``max_grad_norm / norm``; a slot below it moves as without
    clipping, in the same step; ``grad_norms`` reports the norms before clipping."""
    model, tok = load_model("tiny-random")
    cfg = SealConfig(model="tiny-random", lora_rank=4, epochs=1, batch_size=3, optimizer="sgd", learning_rate=0.5)
    learner = Learner(model, tok, cfg)
    datas = [_data(tok, 3), _data(tok, 1)]

    def step(max_grad_norm):
        learner.reset([7, 8])
        before = [np.array(v) for _, v in tree_flatten(learner.model.trainable_parameters())]
        reports = learner.train(datas, [7, 8], grad_norms=True, max_grad_norm=max_grad_norm)
        after = [np.array(v) for _, v in tree_flatten(learner.model.trainable_parameters())]
        moved = [a - b for a, b in zip(after, before, strict=True)]  # leaves stacked by slot: [slot, ...]
        return [r["grad_norms"][0] for r in reports], moved

    norms, free = step(None)
    assert norms[0] != pytest.approx(norms[1], rel=0.02)
    cap = math.sqrt(norms[0] * norms[1])  # between the two slots' norms
    clipped_norms, clipped = step(cap)
    assert clipped_norms == [pytest.approx(x, rel=1e-5) for x in norms]
    big, small = (0, 1) if norms[0] > norms[1] else (1, 0)
    for f, c in zip(free, clipped, strict=True):
        np.testing.assert_allclose(c[big], f[big] * cap / norms[big], rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(c[small], f[small], rtol=1e-5, atol=1e-8)
    assert any(np.abs(f[big]).max() > 0 for f in free)
