"""Vectorised knowledge incorporation with text spaces: gymnasium's SyncVectorEnv and the batched vector env."""

import math

from seal_env.vector import KnowledgeIncorporationVectorEnv

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from conftest import TINY

# short sequences, one epoch, no reward cache (results must really be recomputed): plumbing, not learning
FAST = {**TINY, "epochs": 1, "max_sequence_tokens": 64, "max_action_chars": 2000, "timings": False, "cache": False}

SETTINGS = {**FAST, "reward": "loglik"}
ACTIONS = ("1. The observatory sits on Mount Tervik.\n2. It was founded in 1911.", "A single line of facts.")
KI = "seal/KnowledgeIncorporation-v0"


@pytest.fixture(scope="module")
def sync_env():
    envs = gym.make_vec(
        KI, num_envs=2, vectorization_mode="sync", vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **SETTINGS
    )
    yield envs
    envs.close()


@pytest.fixture(scope="module")
def batched_env():
    envs = KnowledgeIncorporationVectorEnv(2, executor_kind="inprocess", **SETTINGS)  # the sync env's threads
    yield envs
    envs.close()


def rollout(envs, seed, steps=1):
    obs, info = envs.reset(seed=seed)
    out = [(obs, info)]
    for _ in range(steps):
        out.append(envs.step(ACTIONS))
    return out


def test_sync_vector_env_batches_text_spaces(sync_env):
    assert isinstance(sync_env.action_space, gym.spaces.Tuple) and len(sync_env.action_space) == 2
    obs, info = sync_env.reset(seed=0)
    assert isinstance(obs["title"], tuple) and len(obs["context"]) == 2 and sync_env.observation_space.contains(obs)
    obs2, rewards, terminated, truncated, info = sync_env.step(ACTIONS)
    assert rewards.shape == (2,) and all(map(math.isfinite, rewards)) and terminated.all() and not truncated.any()
    assert list(info["final_info"]["reward"]) == list(rewards)  # SAME_STEP: finished episode's info, new article
    assert info["final_obs"][0]["title"] == obs["title"][0] and info["_article_id"].all()


def test_batched_vector_env_equals_sync_vector_env(sync_env, batched_env):
    assert batched_env.observation_space == sync_env.observation_space
    assert batched_env.action_space == sync_env.action_space
    a, b = rollout(sync_env, seed=4), rollout(batched_env, seed=4)
    assert a[0][0] == b[0][0] and list(a[0][1]["article_index"]) == list(b[0][1]["article_index"])
    for (obs_a, r_a, *_, info_a), (obs_b, r_b, *_, info_b) in zip(a[1:], b[1:], strict=True):
        assert obs_a == obs_b  # the autoreset drew the same next articles
        assert np.array_equal(r_a, r_b)
        assert list(info_a["final_info"]["seed"]) == list(info_b["final_info"]["seed"])
        assert list(info_a["final_info"]["train_losses"]) == list(info_b["final_info"]["train_losses"])


def test_batched_vector_env_options_and_errors(batched_env):
    obs, info = batched_env.reset(seed=0, options={"article_indices": [3, 5]})
    assert list(info["article_index"]) == [3, 5] and obs["title"][1] == batched_env.articles[5].title
    with pytest.raises(ValueError, match="actions"):
        batched_env.step(("only one",))
    _, _, _, _, clean = batched_env.step(ACTIONS)
    batched_env.reset(seed=0, options={"article_indices": [3, 5]})
    with pytest.raises(TypeError, match="must be a str"):
        batched_env.step(("fine", 42))  # env 0 must not have drawn its seed before env 1 failed
    _, _, _, _, after = batched_env.step(ACTIONS)
    assert list(after["final_info"]["seed"]) == list(clean["final_info"]["seed"])


def test_make_vec_with_vector_entry_point():
    assert gym.spec(KI).vector_entry_point == "seal_env.vector:KnowledgeIncorporationVectorEnv"
    envs = gym.make_vec(KI, num_envs=3, vectorization_mode="vector_entry_point", **SETTINGS)
    assert isinstance(envs.unwrapped, KnowledgeIncorporationVectorEnv) and envs.num_envs == 3
    envs.reset(seed=0)
    _, rewards, terminated, _, _ = envs.step(ACTIONS + ("",))
    assert rewards.shape == (3,) and terminated.all()
    envs.close()


def test_sync_vector_env_with_continual_pretraining():
    envs = gym.make_vec("seal/ContinualPretraining-v0", num_envs=2, vectorization_mode="sync", **FAST, n_articles=2)
    obs, _ = envs.reset(seed=0)
    _, rewards, terminated, _, _ = envs.step(ACTIONS)
    assert not terminated.any() and (rewards == 0).all()
    _, rewards, terminated, _, info = envs.step(ACTIONS)
    assert terminated.all() and len(info["articles"][0]) == 2
    envs.close()
