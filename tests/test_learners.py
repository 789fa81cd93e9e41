"""Learners other than the default fp32 llama: QLoRA on a 4-bit backbone (``quantize=4``) and a Qwen2, whose q/k/v
projections carry biases (``model="tiny-random-qwen2"``). Each trains, moves its reward, batches like it runs alone
and leaves its frozen weights as they were."""

import math

from seal_env.learner.lora import MultiLoRALinear

import gymnasium as gym
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_batched import ART, EDITS, SEEDS, _assert_same

from conftest import TINY

#: Quantized matmuls are slow on CPU: one epoch of at most two self-edit pieces (+ the passage).
SHORT = {**TINY, "epochs": 1, "max_sequences": 2, "timings": False}


def make_env(**settings):
    return gym.make("seal/KnowledgeIncorporation-v0", **{**SHORT, **settings}).unwrapped


def frozen_weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter of ``model`` but the LoRA adapters' (base weights, biases, norms, quantization scales)."""
    return {k: np.array(v) for k, v in tree_flatten(model.parameters()) if "lora_" not in k}


def assert_unchanged(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def assert_trains(reward: float, info: dict) -> None:
    """A real inner loop: optimizer steps, finite losses, not diverged, a finite non-zero reward."""
    assert info["train_steps"] > 0 and not info["diverged"]
    assert all(math.isfinite(x) for x in info["train_losses"])
    assert math.isfinite(reward) and reward != 0.0 and reward == info["loglik_gain"]


def adapters(env) -> dict[str, MultiLoRALinear]:
    return {k: m for k, m in env.learner.model.named_modules() if isinstance(m, MultiLoRALinear)}


# ------------------------------------------------------------------------------------------------- QLoRA (4-bit)
@pytest.fixture(scope="module")
def qlora_env():
    env = make_env(quantize=4)
    yield env
    env.close()


def test_qlora_trains_adapters_over_a_4bit_backbone(qlora_env):
    layers = adapters(qlora_env)
    assert layers and all(isinstance(m.linear, nn.QuantizedLinear) and m.linear.bits == 4 for m in layers.values())
    before = frozen_weights(qlora_env.learner.model)
    reward, info = qlora_env.evaluate(ART, EDITS[0], SEEDS[0])
    assert_trains(reward, info)
    assert all(float(mx.abs(m.lora_b).max()) > 0 for m in layers.values())  # B starts at 0: every adapter trained
    assert_unchanged(before, frozen_weights(qlora_env.learner.model))
    full = make_env()
    full_reward, full_info = full.evaluate(ART, EDITS[0], SEEDS[0])
    full.close()
    assert full_info["train_steps"] == info["train_steps"]
    assert abs(reward - full_reward) > 1e-6 and info["baseline_loglik"] != full_info["baseline_loglik"]


def test_qlora_batched_equals_sequential(qlora_env):
    sequential = [qlora_env.evaluate(ART, e, s) for e, s in zip(EDITS[:3], SEEDS[:3], strict=True)]
    batched = qlora_env.evaluate_many(ART, EDITS[:3], SEEDS[:3])
    for b, s in zip(batched, sequential, strict=True):
        _assert_same(b, s)


# --------------------------------------------------------------------------------- Qwen2: biased q/k/v projections
@pytest.fixture(scope="module")
def qwen_env():
    env = make_env(model="tiny-random-qwen2", epochs=2)
    yield env
    env.close()


def test_qwen2_env_steps_and_trains(qwen_env):
    model = qwen_env.learner.model
    assert model.model_type == "qwen2" and "bias" in model.layers[0].self_attn.k_proj
    qwen_env.reset(seed=0)
    _, reward, terminated, truncated, info = qwen_env.step(EDITS[0])
    assert terminated and not truncated
    assert_trains(reward, info)


def test_qwen2_lora_keeps_the_projection_bias(qwen_env):
    """LoRA sits on every block's q_proj and v_proj, over the frozen biased linear: a trained adapter's output is
    ``x W^T + b + scale (x A) B``, computed here by hand."""
    layers = adapters(qwen_env)
    n_layers = len(qwen_env.learner.model.layers)
    assert sorted(layers) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in range(n_layers) for p in ("q_proj", "v_proj")
    )
    qwen_env.evaluate(ART, EDITS[0], SEEDS[0])  # leaves slot 0 trained
    slots = qwen_env.learner.slots
    x = mx.random.normal((2, 3, layers["model.layers.0.self_attn.q_proj"].in_dims), key=mx.random.key(0))
    previous = slots.index
    try:
        for name, m in layers.items():
            w, b, a, lora_b = m.linear.weight, m.linear.bias, m.lora_a[0], m.lora_b[0]
            assert float(mx.abs(b).max()) > 0 and float(mx.abs(lora_b).max()) > 0, name
            assert m.scale == SHORT["lora_alpha"] / SHORT["lora_rank"]
            slots.index = mx.array([0], dtype=mx.int32)
            by_hand = x @ w.T + b + m.scale * ((x @ a) @ lora_b)
            assert np.allclose(np.array(m(x)), np.array(by_hand), rtol=1e-5, atol=1e-6), name
            slots.index = None  # no adapter: the frozen layer, bias included
            assert np.allclose(np.array(m(x)), np.array(x @ w.T + b), rtol=1e-5, atol=1e-6), name
    finally:
        slots.index = previous


def test_qwen2_batched_equals_sequential_and_leaves_the_base_weights(qwen_env):
    before = frozen_weights(qwen_env.learner.model)
    assert any(k.endswith("q_proj.linear.bias") for k in before)
    sequential = [qwen_env.evaluate(ART, e, s) for e, s in zip(EDITS[:3], SEEDS[:3], strict=True)]
    batched = qwen_env.evaluate_many(ART, EDITS[:3], SEEDS[:3])
    for b, s in zip(batched, sequential, strict=True):
        _assert_same(b, s)
    assert_unchanged(before, frozen_weights(qwen_env.learner.model))
