"""Precision by device (the compute dtype), and the Hugging Face path: a hub id served from a local HF cache."""

import shutil

from seal_env.config import SealConfig
from seal_env.models import compute_dtype, load_model, resolve_model_path

import gymnasium as gym
import mlx.core as mx
import pytest

from conftest import TINY


def test_auto_dtype_is_float32_on_cpu_and_the_checkpoints_half_dtype_on_gpu():
    assert compute_dtype("auto", mx.bfloat16, gpu=False) == mx.float32
    assert compute_dtype("auto", mx.float16, gpu=True) == mx.float16
    assert compute_dtype("auto", mx.bfloat16, gpu=True) == mx.bfloat16
    assert compute_dtype("auto", mx.float32, gpu=True) == mx.bfloat16  # an fp32 checkpoint computes in bf16 on GPUs
    assert compute_dtype("float32", mx.bfloat16, gpu=True) == mx.float32  # an explicit choice wins
    with pytest.raises(ValueError, match="dtype must be one of"):
        compute_dtype("fp8")
    with pytest.raises(ValueError, match="dtype must be"):
        SealConfig(dtype="half")


def test_auto_follows_the_device(monkeypatch):
    monkeypatch.setattr("seal_env.models.on_gpu", lambda: True)
    model, _ = load_model("tiny-random")  # stored in float32: bfloat16 on a GPU
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    monkeypatch.setattr("seal_env.models.on_gpu", lambda: False)
    model, _ = load_model("tiny-random")
    assert model.model.embed_tokens.weight.dtype == mx.float32


def test_half_precision_weights_train_float32_adapters():
    """bfloat16 frozen weights, float32 adapters: the reward is the float32 reward up to bfloat16 rounding."""
    settings = {**TINY, "learning_rate": 1e-2, "timings": False}
    edit = "1. The observatory sits high.\n2. It is old."
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**settings, "dtype": "bfloat16"}).unwrapped
    learner = env.learner
    assert learner.dtype == mx.bfloat16 and not learner.fast_kernels  # the fast kernels are float32 CPU code
    reward, info = env.evaluate(env.articles[0], edit, seed=0)
    assert info["train_steps"] > 0 and not info["diverged"]
    assert all(m.lora_a.dtype == m.lora_b.dtype == mx.float32 for m in learner.adapters)
    assert learner.adapters[0].linear.weight.dtype == mx.bfloat16
    full = gym.make("seal/KnowledgeIncorporation-v0", **settings).unwrapped
    reference, _ = full.evaluate(env.articles[0], edit, seed=0)
    assert reference > 0.005  # training raised the gold answers' log-likelihood
    # bfloat16 keeps 8 significant bits: here the two rewards (~0.010) differ by ~3e-4, 3% of the gain. A tenth of
    # the gain allows that, not a reward of 0, the baseline's or half the gain.
    assert reward == pytest.approx(reference, rel=0.1)
    env.close()
    full.close()


def test_a_hub_id_loads_from_a_local_hugging_face_cache(tmp_path, monkeypatch):
    """A Hugging Face-format folder (config.json, safetensors, tokenizer files) in the HF cache layout, loaded by
    repo id through the same code path as a download (``snapshot_download(local_files_only=True)``)."""
    repo = tmp_path / "hub" / "models--seal-test--tiny-llama"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(resolve_model_path("tiny-random"), snapshot)
    (snapshot / "seal_env_recipe.json").unlink()  # not part of a Hugging Face checkpoint
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model_path("seal-test/tiny-llama") == snapshot
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, "model": "seal-test/tiny-llama", "timings": False})
    reward, info = env.unwrapped.evaluate(env.unwrapped.articles[0], "1. A fact.", seed=0)
    assert info["train_steps"] > 0
    with pytest.raises(RuntimeError, match="not in the local Hugging Face cache"):
        resolve_model_path("seal-test/not-there")
    env.close()
