"""The environment on the tiny random model: API, check_env, bad actions, isolation, determinism."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env
from mlx.utils import tree_flatten

from conftest import TINY

EDIT = "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911."


def test_make_spec_round_trips_through_json(tiny_env):
    """An env rebuilt from its spec's JSON has the same settings and computes the same reward."""
    settings = {**TINY, "reward": "f1", "eval_times": 2, "epochs": 1, "learning_rate": 3e-3, "timings": False}
    env = gym.make("seal/KnowledgeIncorporation-v0", **settings)
    dumped = env.spec.to_json()
    assert json.loads(dumped)["kwargs"] == settings and env.spec.id == "seal/KnowledgeIncorporation-v0"
    rebuilt = gym.make(EnvSpec.from_json(dumped))
    assert rebuilt.unwrapped.cfg == env.unwrapped.cfg and rebuilt.unwrapped.cfg.eval_times == 2
    article = env.unwrapped.articles[0]
    reward, info = env.unwrapped.evaluate(article, EDIT, seed=0)
    assert rebuilt.unwrapped.evaluate(article, EDIT, seed=0) == (reward, info)
    # the settings matter: the default tiny env (2 epochs, lr 1e-3, one run) learns differently
    assert tiny_env.evaluate(article, EDIT, seed=0)[1]["loglik_gain"] != info["loglik_gain"]
    env.close()
    rebuilt.close()


def test_unknown_and_bad_settings_are_clear():
    with pytest.raises(TypeError, match="unknown setting"):
        gym.make("seal/KnowledgeIncorporation-v0", model="tiny-random", lora_rnak=4)
    with pytest.raises(ValueError, match="reward must be one of"):
        gym.make("seal/KnowledgeIncorporation-v0", model="tiny-random", reward="bleu")
    with pytest.raises(ValueError, match="lora_modules"):
        gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, "lora_modules": ["nonexistent_proj"]})


def test_check_env_passes():
    # check_env compares the infos of two identical steps exactly: wall-clock timings stay out of step infos
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, render_mode="ansi").unwrapped
    check_env(env, skip_render_check=False)


def test_step_api_and_info(tiny_env):
    obs, info = tiny_env.reset(seed=0)
    assert set(obs) == {"title", "context"} and tiny_env.observation_space.contains(obs)
    assert "questions" not in obs and info["n_questions"] >= 5
    obs2, reward, terminated, truncated, info = tiny_env.step(EDIT)
    assert terminated is True and truncated is False and obs2 == obs
    assert math.isfinite(reward) and reward == pytest.approx(info["loglik_gain"])  # the default reward kind
    for key in (
        "baseline_accuracy",
        "adapter_accuracy",
        "f1_gain",
        "loglik_gain",
        "train_losses",
        "questions",
        "seed",
        "train_tokens",
        "n_sequences",
    ):
        assert key in info
    assert info["n_sequences"] == 3  # two lines + the passage
    assert info["train_steps"] == 3 * TINY["epochs"]
    assert not any(k.startswith("seconds") for k in info)  # wall-clock figures: env.last_timings
    assert tiny_env.last_timings["seconds_train"] > 0 and tiny_env.last_timings["seconds_eval"] > 0
    json.dumps(info)  # JSON-able
    assert "reward" in tiny_env.render()
    with pytest.raises(RuntimeError, match="reset"):
        tiny_env.step(EDIT)  # one step per episode


@pytest.mark.parametrize(
    "action, flag",
    [
        ("", "empty_action"),
        ("   \n\t ", "empty_action"),
        ("a\x00b\x1bc", "removed_control_chars"),
        ("lone \ud800 surrogate", "replaced_surrogates"),
        ("x" * 1_000_000, "action_truncated_chars"),
    ],
    ids=["empty", "whitespace", "control-chars", "lone-surrogate", "1MB"],
)
def test_bad_actions_have_defined_outcomes(tiny_env, action, flag):
    tiny_env.reset(seed=1)
    _, reward, terminated, _, info = tiny_env.step(action)
    assert terminated and math.isfinite(reward) and info[flag]
    if flag == "empty_action":
        assert info["n_sequences"] == 1  # only the passage (include_passage=True)
    if flag == "action_truncated_chars":
        assert info["truncated_tokens"] > 0 or info["dropped_sequences"] > 0 or info["dropped_pieces"] > 0


def test_non_str_action_raises_and_leaves_the_episode_unchanged(tiny_env):
    tiny_env.reset(seed=2)
    _, clean, _, _, clean_info = tiny_env.step(EDIT)
    tiny_env.reset(seed=2)
    with pytest.raises(TypeError, match="must be a str"):
        tiny_env.step(["not", "text"])
    _, reward, _, _, info = tiny_env.step(EDIT)  # same episode, same inner-loop seed as a clean one
    assert info["seed"] == clean_info["seed"] and reward == clean


def test_empty_action_without_passage_is_exactly_zero():
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, include_passage=False).unwrapped
    env.reset(seed=0)
    _, reward, _, _, info = env.step("")
    assert reward == 0.0 and info["n_sequences"] == 0 and info["adapter_accuracy"] == info["baseline_accuracy"]


def test_same_seed_same_action_same_reward(tiny_env):
    rewards = []
    for _ in range(2):
        tiny_env.reset(seed=7)
        _, r, _, _, info = tiny_env.step(EDIT)
        rewards.append((r, info["loglik_gain"], info["train_losses"]))
    assert rewards[0] == rewards[1]


def test_base_weights_bit_identical_and_reset_isolation(tiny_env):
    frozen = {k: np.array(v) for k, v in tree_flatten(tiny_env.learner.model.parameters()) if "lora" not in k}
    tiny_env.reset(seed=3, options={"article_index": 0})
    _, _, _, _, first = tiny_env.step(EDIT)
    tiny_env.reset(seed=4, options={"article_index": 1})
    tiny_env.step("Something else entirely.\nAnother line.")
    tiny_env.reset(seed=3, options={"article_index": 0})
    _, _, _, _, again = tiny_env.step(EDIT)
    assert again["loglik_gain"] == first["loglik_gain"]  # nothing carried over between episodes
    after = dict(tree_flatten(tiny_env.learner.model.parameters()))
    for k, v in frozen.items():
        assert np.array_equal(v, np.array(after[k])), k


def test_baseline_is_computed_once_per_article(tiny_env):
    article = {"title": "Baseline once", "context": "Q is R.", "questions": [{"question": "What is Q?", "answer": "R"}]}
    computed = tiny_env.baselines.computed
    for seed in (0, 1):
        tiny_env.reset(seed=seed, options={"article": article})
        tiny_env.step(EDIT)
        assert tiny_env.baselines.computed == computed + 1  # the first step quizzed the base model, the second not


def test_loss_above_max_loss_stops_training_with_defined_reward():
    # a random model starts near ln(49152) ~ 10.8, above this max_loss: the loss "explodes" at the first step
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, max_loss=5.0, diverged_reward=-1.0).unwrapped
    env.reset(seed=0)
    _, reward, _, _, info = env.step(EDIT)
    assert info["diverged"] is True and reward == -1.0 and info["train_steps"] == 0


def test_nan_loss_gives_defined_reward_and_env_recovers(monkeypatch):
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY).unwrapped
    env.reset(seed=0)
    _, clean, _, _, _ = env.step(EDIT)
    real = env.learner.loss_and_grad
    calls = []

    def nan_on_third_step(*args):
        (loss, per_slot, ntoks), grads = real(*args)
        calls.append(1)
        if len(calls) == 3:
            loss, per_slot = loss * float("nan"), per_slot * float("nan")
        return (loss, per_slot, ntoks), grads

    monkeypatch.setattr(env.learner, "loss_and_grad", nan_on_third_step)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(EDIT)
    assert info["diverged"] is True and reward == 0.0 and info["train_steps"] == 2
    monkeypatch.setattr(env.learner, "loss_and_grad", real)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(EDIT)
    assert not info["diverged"] and info["train_steps"] == 3 * TINY["epochs"] and reward == clean


def test_adapter_weights_turning_non_finite_after_finite_losses_diverge():
    """Every loss is finite, but the last update leaves a NaN in the adapter: the run is diverged."""
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, diverged_reward=-0.5).unwrapped
    article = env.articles[0]
    steps = 3 * TINY["epochs"]  # two lines and the passage, every epoch
    clean, _ = env.evaluate(article, EDIT, seed=0)
    real = env.learner._update_fn

    def poisoned_update_fn(opt):
        apply, calls = real(opt), []

        def run(grads, *step):
            apply(grads, *step)
            calls.append(1)
            if len(calls) == steps:  # after the last step, whose loss was finite like every other
                module = env.learner.adapters[0]
                module.lora_b = module.lora_b * float("nan")

        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(env.learner, "_update_fn", poisoned_update_fn)
        reward, info = env.evaluate(article, EDIT, seed=0)
    assert info["diverged"] is True and reward == -0.5 and info["rewards"] == [-0.5]
    assert info["train_steps"] == steps and all(math.isfinite(x) for x in info["train_losses"])
    reward, info = env.evaluate(article, EDIT, seed=0)  # the next reset starts from finite weights again
    assert info["diverged"] is False and reward == clean != -0.5


def test_eval_times_with_one_diverged_run(tiny_env):
    """eval_times=2, run 0 diverges at its second step: the reward is the mean of diverged_reward and run 1's."""
    import mlx.core as mx

    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, eval_times=2, diverged_reward=-1.0).unwrapped
    real, steps_of_slot_0 = env.learner.loss_and_grad, []

    def nan_for_slot_0(index, *batch):
        (loss, per_slot, ntoks), grads = real(index, *batch)
        if 0 in index.tolist():
            steps_of_slot_0.append(1)
            if len(steps_of_slot_0) == 2:
                per_slot = mx.where(index == 0, float("nan"), per_slot)
        return (loss, per_slot, ntoks), grads

    env.learner.loss_and_grad = nan_for_slot_0
    article = env.articles[0]
    reward, info = env.evaluate(article, EDIT, seed=5)
    alone = tiny_env.evaluate(article, EDIT, seed=6)[0]  # run 1 has seed 5 + 1
    assert info["diverged"] is True and info["rewards"][0] == -1.0
    assert info["rewards"][1] == pytest.approx(alone, rel=1e-4, abs=1e-6) and info["rewards"][1] != -1.0
    assert reward == pytest.approx((info["rewards"][1] - 1.0) / 2, rel=1e-12)
    assert info["reward_std"] == pytest.approx(abs(info["rewards"][1] + 1.0) / 2, rel=1e-12)
    assert info["train_steps"] == 3 * TINY["epochs"]  # the last run's: it trained to the end


def test_eval_times_reports_mean_and_std(tiny_env):
    env = gym.make("seal/KnowledgeIncorporation-v0", **TINY, eval_times=3, reward="loglik").unwrapped
    env.reset(seed=0)
    _, reward, _, _, info = env.step(EDIT)
    assert len(info["rewards"]) == 3 and reward == pytest.approx(np.mean(info["rewards"]))
    assert info["reward_std"] == pytest.approx(np.std(info["rewards"]))
    assert info["reward_std"] > 0  # different LoRA inits per repeat


def test_reset_options_and_randomness_from_np_random(tiny_env):
    _, info_a = tiny_env.reset(seed=11)
    _, info_b = tiny_env.reset(seed=11)
    assert info_a["article_index"] == info_b["article_index"]
    _, info = tiny_env.reset(
        options={
            "article": {"title": "X", "context": "Y is Z.", "questions": [{"question": "What is Y?", "answer": "Z"}]}
        }
    )
    assert info["n_questions"] == 1
    with pytest.raises(IndexError):
        tiny_env.reset(options={"article_index": 10_000})


def test_answer_max_tokens_zero_skips_generation_with_the_same_loglik_reward(tiny_env, monkeypatch):
    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    article = tiny_env.articles[0]
    edit = f"{article.title} is described here.\nIt matters."
    reward, info = tiny_env.evaluate(article, edit, seed=3)
    quick = KnowledgeIncorporationEnv(**{**TINY, "answer_max_tokens": 0})
    no_answers = lambda *a, **k: pytest.fail("no answer may be generated")  # noqa: E731
    monkeypatch.setattr("seal_env.learner.trainer.greedy_continue", no_answers)
    quick_reward, quick_info = quick.evaluate(article, edit, seed=3)
    assert quick_reward == pytest.approx(reward, abs=1e-5)
    assert quick_info["adapter_accuracy"] == quick_info["baseline_accuracy"] == 0.0
    quick.close()
    with pytest.raises(ValueError, match="needs a log-likelihood reward"):
        gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, "answer_max_tokens": 0, "reward": "accuracy"})
    with pytest.raises(ValueError, match="non-negative"):
        gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, "answer_max_tokens": -1})
