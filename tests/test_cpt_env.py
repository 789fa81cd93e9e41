"""seal/ContinualPretraining-v0 on the tiny random model: check_env (both modes), episode shape, rewards, options."""

import json
import math

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from conftest import TINY

# short sequences, one epoch, no reward cache (results must really be recomputed): plumbing, not learning
FAST = {**TINY, "epochs": 1, "max_sequence_tokens": 64, "max_action_chars": 2000, "timings": False, "cache": False}

EDIT = "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911."
ID = "seal/ContinualPretraining-v0"


def make(**kw):
    return gym.make(ID, **{**FAST, "n_articles": 2, **kw}).unwrapped


@pytest.fixture(scope="module", params=["pooled", "online"])
def cpt_env(request):
    env = make(train_mode=request.param, reward="loglik", render_mode="ansi")
    yield env
    env.close()


def run_episode(env, actions, seed=0, options=None):
    obs, info = env.reset(seed=seed, options=options)
    steps = []
    for action in actions:
        steps.append(env.step(action))
    return info, steps


def test_check_env_passes(cpt_env):
    # both modes; check_env compares the infos of two identical steps exactly: wall-clock timings are off
    check_env(cpt_env, skip_render_check=False)


def test_spec_round_trips_and_bad_settings():
    env = gym.make(ID, **TINY, n_articles=3, train_mode="online")
    assert json.loads(env.spec.to_json())["kwargs"]["train_mode"] == "online"
    env.close()
    with pytest.raises(ValueError, match="train_mode"):
        gym.make(ID, **TINY, train_mode="sometimes")
    with pytest.raises(ValueError, match="n_articles"):
        gym.make(ID, **TINY, n_articles=0)
    with pytest.raises(ValueError, match="only 40 articles"):
        gym.make(ID, **TINY, n_articles=41)
    with pytest.raises(TypeError, match="unknown setting"):
        gym.make(ID, **TINY, lora_rnak=4)


def test_episode_walks_through_articles_and_rewards_at_the_end(cpt_env):
    obs, info = cpt_env.reset(seed=3, options={"article_indices": [4, 7, 9]})
    assert info["n_articles"] == 3 and info["position"] == 0 and obs["title"] == cpt_env.articles[4].title
    titles = [obs["title"]]
    for k in range(3):
        obs, reward, terminated, truncated, info = cpt_env.step(EDIT)
        assert info["position"] == k and info["n_sequences"] == 3 and not truncated
        if k < 2:
            assert reward == 0.0 and not terminated
            titles.append(obs["title"])
    assert titles == [cpt_env.articles[i].title for i in (4, 7, 9)]
    assert terminated and math.isfinite(reward) and reward == pytest.approx(info["loglik_gain"])
    arts = info["articles"]
    assert [a["article_index"] for a in arts] == [4, 7, 9]
    assert info["total_questions"] == sum(a["n_questions"] for a in arts) == sum(len(a["questions"]) for a in arts)
    # the reward is over all questions, i.e. the question-weighted mean of the per-article gains
    weighted = sum(a["loglik_gain"] * a["n_questions"] for a in arts) / info["total_questions"]
    assert reward == pytest.approx(weighted)
    assert info["train_mode"] == cpt_env.train_mode and info["total_sequences"] == 9
    assert info["train_steps"] == 9 * FAST["epochs"]  # batch size 1: every sequence once per epoch
    json.dumps(info)
    assert "reward (loglik)" in cpt_env.render()
    with pytest.raises(RuntimeError, match="reset"):
        cpt_env.step(EDIT)


def test_same_seed_same_episode_and_non_str_action(cpt_env):
    _, first = run_episode(cpt_env, [EDIT, "Another line.\nAnd one more."], seed=5)
    cpt_env.reset(seed=5)
    with pytest.raises(TypeError, match="must be a str"):
        cpt_env.step(None)
    cpt_env.step(EDIT)  # the episode is still usable
    again = cpt_env.step("Another line.\nAnd one more.")
    assert again[1] == first[-1][1] and again[4]["articles"] == first[-1][4]["articles"]


def test_pooled_and_online_train_differently():
    rewards = {}
    for mode in ("pooled", "online"):
        env = make(train_mode=mode, reward="loglik")
        _, steps = run_episode(env, [EDIT, EDIT], seed=0, options={"article_indices": [0, 1]})
        rewards[mode] = steps[-1][1]
        if mode == "online":
            assert steps[0][4]["step_train"]["train_steps"] == 3 * FAST["epochs"]
        else:
            assert "step_train" not in steps[0][4]
        env.close()
    assert rewards["pooled"] != rewards["online"]


def test_repeats_start_with_the_single_run(cpt_env):
    # eval_times=2: run 0 is the episode's own (in online mode: trained step by step), run 1 a replay, seed + 1;
    # the pooled runs train together in one batched pass, which changes float rounding only
    _, one = run_episode(cpt_env, [EDIT, EDIT], seed=1)
    env = make(train_mode=cpt_env.train_mode, reward="loglik", eval_times=2)
    _, two = run_episode(env, [EDIT, EDIT], seed=1)
    env.close()
    info = two[-1][4]
    assert info["rewards"][0] == pytest.approx(one[-1][1], rel=1e-4, abs=1e-6)
    assert info["rewards"][1] != pytest.approx(info["rewards"][0], rel=1e-4, abs=1e-6)
    assert two[-1][1] == pytest.approx(sum(info["rewards"]) / 2)


def nan_on_call(env, n):
    """Make the learner's ``n``-th loss (counted over the episode) NaN, and count the calls."""
    real, calls = env.learner.loss_and_grad, []

    def loss_and_grad(*args):
        (loss, per_slot, ntoks), grads = real(*args)
        calls.append(1)
        if len(calls) == n:
            loss, per_slot = loss * float("nan"), per_slot * float("nan")
        return (loss, per_slot, ntoks), grads

    env.learner.loss_and_grad = loss_and_grad
    return real, calls


@pytest.mark.parametrize("mode", ["pooled", "online"])
def test_divergence_gives_diverged_reward_and_the_env_recovers(mode):
    env = make(train_mode=mode, reward="loglik", diverged_reward=-1.0)
    _, clean = run_episode(env, [EDIT, EDIT], seed=0, options={"article_indices": [0, 1]})
    real, calls = nan_on_call(env, 2)  # the first step is finite, the second not
    _, steps = run_episode(env, [EDIT, EDIT], seed=0, options={"article_indices": [0, 1]})
    _, reward, terminated, _, info = steps[-1]
    assert terminated and info["diverged"] is True and reward == -1.0 and info["rewards"] == [-1.0]
    assert info["train_steps"] == 1  # training stopped at the non-finite loss
    if mode == "online":  # diverged in the first article's step: the second article is not trained on
        assert steps[0][4]["step_train"]["diverged"] is True and steps[1][4]["step_train"] is None
        assert len(calls) == 2
    env.learner.loss_and_grad = real
    _, steps = run_episode(env, [EDIT, EDIT], seed=0, options={"article_indices": [0, 1]})
    assert steps[-1][4]["diverged"] is False and steps[-1][1] == clean[-1][1] != -1.0
    env.close()


def test_online_divergence_of_the_episode_run_with_a_finite_replay():
    """eval_times=2 online: run 0 (the episode's own adapter) diverges, run 1 (the replay) does not; the reward
    is their mean, with diverged_reward for run 0."""
    env = make(train_mode="online", reward="loglik", eval_times=2, diverged_reward=-1.0)
    nan_on_call(env, 2)  # run 0 trains first, during the episode's steps; the replay comes after the last step
    _, steps = run_episode(env, [EDIT, EDIT], seed=0, options={"article_indices": [0, 1]})
    _, reward, _, _, info = steps[-1]
    env.close()
    assert info["diverged"] is True and info["rewards"][0] == -1.0 and math.isfinite(info["rewards"][1])
    assert info["rewards"][1] != -1.0 and reward == pytest.approx((info["rewards"][1] - 1.0) / 2, rel=1e-12)
    assert info["train_steps"] == 6 * FAST["epochs"]  # the last run's: the replay trained on both articles


def test_empty_actions_without_passage_give_exactly_zero():
    env = make(include_passage=False)
    _, steps = run_episode(env, ["", "  "], seed=0)
    info = steps[-1][4]
    assert steps[-1][1] == 0.0 and info["total_sequences"] == 0
    assert info["adapter_accuracy"] == info["baseline_accuracy"]
    env.close()


def test_articles_option_sets_episode_length(cpt_env):
    art = {"title": "X", "context": "Y is Z.", "questions": [{"question": "What is Y?", "answer": "Z"}]}
    _, info = cpt_env.reset(options={"articles": [art]})
    assert info["n_articles"] == 1 and info["article_index"] == -1
    _, _, terminated, _, info = cpt_env.step("Y is Z indeed.")
    assert terminated and info["total_questions"] == 1
    with pytest.raises(IndexError):
        cpt_env.reset(options={"article_indices": [0, 10_000]})
