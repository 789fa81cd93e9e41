"""GRPO: its advantages and loss by hand, one update, the tiny preset end to end (logging to wandb offline inside
the run directory), and runs killed mid-round or between a checkpoint and its learn record that resume to the same
result."""

import json
import math

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.config import SealConfig
from seal_env.env_vars import cache_dir
from seal_env.models import load_model

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from agents import grpo
from agents.base import Experience
from agents.config import TINY_ENV

from conftest import assert_same_run, count_evaluations, crashed_copy, journal

# A hand-computed case of grpo_loss: 2 self-edits, 3 token positions, 2-token vocabulary with equal logits, so every
# target (token 0) has log-probability log(1/2). The old log-probs set each token's probability ratio, the reference
# log-probs its k3 KL term; the last token of self-edit 0 is padding (mask 0), with values that would dominate.
MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
RATIO = [[1.5, 0.5, 10.0], [1.1, 0.7, 1.3]]  # clip 0.2: above, below | inside, below, above
LOG_REF_OVER_P = [[0.0, math.log(2.0), 5.0], [0.5, -0.5, 0.0]]
ADV = [1.0, -2.0]


def test_group_advantages_are_normalised_within_each_article():
    a, b = (Article(t, "c " + t, (Question("q", "a"),)) for t in "ab")
    batch = [Experience(a, "", 1.0), Experience(a, "", 3.0), Experience(b, "", 0.5), Experience(b, "", 0.5)]
    assert grpo.group_advantages(batch, eps=0.0) == [-1.0, 1.0, 0.0, 0.0]


def test_group_advantages_hand_computed_with_interleaved_groups():
    a, b = (Article(t, "c " + t, (Question("q", "a"),)) for t in "ab")
    batch = [Experience(a, "", 0.0), Experience(b, "", 2.0), Experience(a, "", 1.0), Experience(a, "", 5.0)]
    batch.append(Experience(b, "", 2.0))
    sd = math.sqrt((4 + 1 + 9) / 3)  # article a: mean 2, population sd
    expected = [-2 / (sd + 0.5), 0.0, -1 / (sd + 0.5), 3 / (sd + 0.5), 0.0]
    assert grpo.group_advantages(batch, eps=0.5) == pytest.approx(expected, rel=1e-12)


def _loss_case(logits, kl_coef, adv=ADV):
    logp = math.log(0.5)
    old = mx.array([[logp - math.log(r) for r in row] for row in RATIO])
    ref = mx.array([[logp + d for d in row] for row in LOG_REF_OVER_P])
    inputs = targets = mx.zeros((2, 3), dtype=mx.int32)
    return grpo.grpo_loss(
        lambda _: logits, inputs, targets, mx.array(MASK), mx.array(adv), old, ref, clip_eps=0.2, kl_coef=kl_coef
    )


def test_grpo_loss_hand_computed():
    def k3(d):
        return math.exp(d) - d - 1

    # per token: -min(ratio * A, clip(ratio, 0.8, 1.2) * A)
    pg = [[-1.2, -0.5], [2.2, 1.6, 2.6]]
    kl = [[0.0, k3(math.log(2.0))], [k3(0.5), k3(-0.5), 0.0]]
    c = 0.1
    per_edit = [sum(p + c * k for p, k in zip(pr, kr, strict=True)) / len(pr) for pr, kr in zip(pg, kl, strict=True)]
    loss, pg_mean, kl_mean = _loss_case(mx.zeros((2, 3, 2)), kl_coef=c)
    assert per_edit == pytest.approx([-0.8346573590279973, 2.1418417310137587])
    assert loss.item() == pytest.approx(sum(per_edit) / 2, rel=1e-6)  # each self-edit's token mean, then the batch
    assert pg_mean.item() == pytest.approx(4.7 / 5, rel=1e-6)  # token means over the unmasked tokens
    assert kl_mean.item() == pytest.approx(sum(kl[0] + kl[1]) / 5, rel=1e-6)
    flipped = _loss_case(mx.zeros((2, 3, 2)), kl_coef=c, adv=[-a for a in ADV])[0]
    # a sign-flipped advantage clips the other side: -min(r * -1, clip(r) * -1) = 1.5, 0.8 | -2.2, -1.4, -2.4
    assert flipped.item() == pytest.approx(((1.5 + 0.8 + c * kl[0][1]) / 2 + (-6.0 + c * sum(kl[1])) / 3) / 2)


def test_grpo_loss_gradient_pushes_advantaged_tokens_and_stops_at_the_clip():
    grad = np.array(mx.grad(lambda z: _loss_case(z, kl_coef=0.0)[0])(mx.zeros((2, 3, 2))))
    # d loss / d logp = -ratio * A / (tokens of the self-edit * self-edits) where the unclipped term is the minimum,
    # 0 where the clipped one is (and on padding); d logp / d logit = +-1/2 for the target / the other token
    dlogp = np.array([[0.0, -0.5 * 1 / 4, 0.0], [1.1 * 2 / 6, 0.0, 1.3 * 2 / 6]])
    assert np.allclose(grad[..., 0], 0.5 * dlogp, atol=1e-7) and np.allclose(grad[..., 1], -0.5 * dlogp, atol=1e-7)


def test_learn_raises_the_better_self_edit_against_the_worse():
    """One GRPO step on two samples of one article: the better one's log-probability rises relative to the other's.
    The k3 KL to the initial policy is 0 at that step, and positive at the next update's (the policy has moved)."""
    cfg = grpo.GRPOConfig(**{**grpo.PRESETS["tiny"], "env": SealConfig(**TINY_ENV), "policy_batch_size": 2})
    agent = grpo.GRPO(cfg)
    article = Article("Tervik Observatory", "Tervik Observatory stands on Mount Hallegrim.", (Question("q", "a"),))
    good, bad = "1. The observatory stands on Mount Hallegrim.", "Bread is made from flour and water."
    batch = [Experience(article, good, 1.0), Experience(article, bad, 0.0)]

    def edit_logp():
        pairs = [agent.policy.training_pair(batch[0].observation, e.self_edit) for e in batch]
        return [float(lp[start - 1 :].mean()) for lp, (_, start) in zip(agent._logprobs(pairs), pairs, strict=True)]

    before = edit_logp()
    stats = agent.learn(batch, seed=0)
    after = edit_logp()
    assert stats["used"] == 2 and stats["steps"] == 1
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)  # one step, taken at the reference policy
    assert (after[0] - before[0]) - (after[1] - before[1]) > 0
    again = agent.learn(batch, seed=1)  # its step starts where the first update left the policy
    assert again["steps"] == 1 and again["kl"] > 1e-6


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run, with ``--wandb-mode online`` and no wandb API key anywhere: the key lookup reads
    ~/.netrc, so HOME is an empty folder (never the user's key), and "online" must fall back to offline without
    trying to go online. Returns (run dir, results, the modes wandb.init was called with)."""
    import wandb

    runs = tmp_path_factory.mktemp("runs")
    modes, init = [], wandb.init
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEAL_ENV_CACHE", str(cache_dir()))  # the model cache stays where it is
        mp.setenv("HOME", str(runs / "home"))
        for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "NETRC", "WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR"):
            mp.delenv(var, raising=False)
        for var in ("WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR", "WANDB_CONFIG_DIR"):
            mp.delenv(var, raising=False)
        mp.setattr(wandb, "init", lambda **kwargs: modes.append(kwargs["mode"]) or init(**kwargs))
        results = grpo.main(
            ["--preset", "tiny", "--runs-dir", str(runs), "--name", "g", "--wandb-mode", "online", "--no-cache"]
        )
    return runs / "g", results, modes


def test_tiny_preset_end_to_end_with_wandb_offline(reference):
    run_dir, results, modes = reference
    assert modes == ["offline"]
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    for summary in results["rounds"][1:]:
        learn = summary["learn"]
        assert learn["used"] == 4 and learn["steps"] == 2 and not learn["diverged"]
    # the mean k3 KL to the initial policy over each round's steps: round 1 steps at the initial policy, then once
    # moved; round 2 starts where round 1 ended, so the policy is further away at both of its steps
    kl = [summary["learn"]["kl"] for summary in results["rounds"][1:]]
    assert 0 < kl[0] < kl[1]
    initial = dict(tree_flatten(load_model("tiny-random")[0].parameters()))
    trained = mx.load(results["checkpoint"])
    assert len(trained) == 4 and all(not mx.array_equal(trained[k], initial[k]) for k in trained)  # q, v x 2 layers
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    tables = sorted((offline[0] / "files" / "media" / "table" / "self_edits").glob("round_*.table.json"))
    assert len(tables) == 3 and len(json.loads(tables[-1].read_text())["data"]) == 4 + 1


RESUME = ["--wandb-mode", "disabled"]  # the rest from the run directory


def test_killed_run_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    """Killed in round 2 after its first article's rewards: the resumed run evaluates only the missing rewards
    and ends exactly where the uninterrupted one did (the GRPO update from the journal's rewards, bit for bit)."""
    ref_dir, ref, _ = reference
    records = journal(ref_dir)
    first = next(i for i, r in enumerate(records) if (r["event"], r["round"], r.get("phase")) == ("reward", 2, "train"))
    assert records[first + 1]["article_id"] == records[first]["article_id"]  # cut after a whole article's rewards
    run_dir = crashed_copy(ref_dir, tmp_path / "crash", first + 2)
    evaluated = count_evaluations(monkeypatch)
    resumed = grpo.main(["--resume", str(run_dir), *RESUME])
    assert len(evaluated) == sum(r["event"] == "reward" for r in records[first + 2 :]) == 3
    assert_same_run(run_dir, resumed, ref_dir, ref)


def test_kill_between_checkpoint_and_learn_record_redoes_the_update(reference, tmp_path, monkeypatch):
    """Killed after round 2's checkpoint was saved but before its learn record: the checkpoint is not trusted (it
    is not the state to resume from), the update is redone from round 1's policy and gives the same policy."""
    ref_dir, ref, _ = reference
    records = journal(ref_dir)
    learn = next(i for i, r in enumerate(records) if (r["event"], r["round"]) == ("learn", 2))
    run_dir = crashed_copy(ref_dir, tmp_path / "crash", learn, checkpoints=[1, 2])
    assert (run_dir / "rounds" / "002" / "policy.safetensors").is_file()
    evaluated = count_evaluations(monkeypatch)
    resumed = grpo.main(["--resume", str(run_dir), *RESUME])
    assert len(evaluated) == 1  # round 2's held-out reward; its training rewards were all journaled
    assert_same_run(run_dir, resumed, ref_dir, ref)


def test_a_diverged_update_is_dropped(monkeypatch):
    """A non-finite GRPO loss stops the update at that step (the Learner's divergence check): the policy stays."""
    cfg = grpo.GRPOConfig(**{**grpo.PRESETS["tiny"], "env": SealConfig(**TINY_ENV)})
    agent = grpo.GRPO(cfg)
    real = grpo.grpo_loss
    monkeypatch.setattr(grpo, "grpo_loss", lambda *args: tuple(x * math.nan for x in real(*args)))
    article = Article("Tervik Observatory", "Tervik Observatory stands on Mount Hallegrim.", (Question("q", "a"),))
    batch = [Experience(article, "It stands on Mount Hallegrim.", 1.0), Experience(article, "Bread.", 0.0)]
    saved = agent.state()
    stats = agent.learn(batch, seed=0)
    assert stats["diverged"] == 1.0 and stats["steps"] == 0 and math.isnan(stats["loss"])
    assert all(mx.array_equal(agent.state()[k], saved[k]) for k in saved) and agent.model.learner.n_slots == 0
