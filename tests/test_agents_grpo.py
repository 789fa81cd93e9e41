"""GRPO: its advantages, loss and diagnostics by hand (groups skipped, clipped fraction, entropy, gradient norms
against a direct mlx computation), one update, the tiny preset end to end (logging to wandb offline inside the run
directory, the diagnostics read back from wandb's file), and runs killed mid-round or between a checkpoint and its
learn record that resume to the same result."""

import dataclasses
import json
import math
import struct

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.config import SealConfig
from seal_env.env_vars import cache_dir
from seal_env.learner.batching import make_batch, stack_extras
from seal_env.learner.trainer import Learner
from seal_env.models import load_model

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from agents import grpo, restem
from agents.base import Experience
from agents.command_line import build_parser, parse_args
from agents.config import TINY_ENV, RunConfig, preset_config

from conftest import assert_same_run, count_evaluations, crashed_copy, journal

# A hand-computed case of grpo_loss: 2 self-edits, 3 token positions, 2-token vocabulary with equal logits, so every
# target (token 0) has log-probability log(1/2). The old log-probs set each token's probability ratio, the reference
# log-probs its k3 KL term; the last token of self-edit 0 is padding (mask 0), with values that would dominate.
MASK = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
RATIO = [[1.5, 0.5, 10.0], [1.1, 0.7, 1.3]]  # clip 0.2: above, below | inside, below, above
LOG_REF_OVER_P = [[0.0, math.log(2.0), 5.0], [0.5, -0.5, 0.0]]
ADV = [1.0, -2.0]
#: The diagnostics GRPO.learn returns every round (agents/grpo.py's docstring defines each).
LEARN_KEYS = {
    "groups",
    "groups_skipped",
    "groups_skipped_frac",
    "used",
    "reward_std_mean",
    "adv_abs_mean",
    "steps",
    "loss",
    "pg_loss",
    "clip_frac",
    "kl",
    "kl_after",
    "entropy",
    "grad_norm_mean",
    "grad_norm_max",
    "diverged",
}
ARTICLE = Article("Tervik Observatory", "Tervik Observatory stands on Mount Hallegrim.", (Question("q", "a"),))
GOOD, BAD = "1. The observatory stands on Mount Hallegrim.", "Bread is made from flour and water."


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


def test_group_stats_hand_computed():
    """Rewards [1, 0, 0, 1] (mean 0.5, population sd 0.5: advantages +-1) and [0.5, 0.5, 0.5] (all equal: skipped)."""
    a, b = (Article(t, "c " + t, (Question("q", "a"),)) for t in "ab")
    batch = [Experience(a, "", r) for r in (1.0, 0.0, 0.0, 1.0)] + [Experience(b, "", 0.5) for _ in range(3)]
    adv = grpo.group_advantages(batch, eps=0.0)
    assert adv == [1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0]
    assert grpo.group_stats(batch, adv) == {
        "groups": 2.0,
        "groups_skipped": 1.0,
        "groups_skipped_frac": 0.5,
        "used": 4.0,
        "reward_std_mean": 0.5,
        "adv_abs_mean": 1.0,  # over the 4 self-edits used, not the 7
    }
    eps = grpo.group_advantages(batch, eps=0.5)  # the sd plus eps divides: 0.5 / (0.5 + 0.5)
    assert grpo.group_stats(batch, eps)["adv_abs_mean"] == 0.5
    skipped = grpo.group_stats(batch[4:], grpo.group_advantages(batch[4:], eps=0.0))
    assert skipped["groups_skipped_frac"] == 1.0 and skipped["used"] == 0 and skipped["adv_abs_mean"] == 0.0
    assert math.isnan(skipped["reward_std_mean"])


def test_clip_bites_only_on_the_side_the_clip_cuts():
    ratio = mx.array([[1.5, 0.5, 1.25, 0.75, 1.0]] * 3)  # eps 0.25: above, below, both bounds exactly, inside
    adv = mx.array([[1.0], [-1.0], [0.0]])
    bites = np.array(grpo.clip_bites(ratio, adv, 0.25))
    assert bites.tolist() == [[True, False, False, False, False], [False, True, False, False, False], [False] * 5]


def test_weighted_mean_weighs_each_step_by_its_tokens():
    assert grpo.weighted_mean([0.0, 1.0], [1.0, 3.0]) == 0.75  # 1 token at 0, 3 at 1 (the plain mean: 0.5)
    assert math.isnan(grpo.weighted_mean([], []))


def test_token_entropy_hand_computed():
    logits = mx.array([[math.log(0.5), math.log(0.25), math.log(0.25), -math.inf], [3.0, 3.0, 3.0, 3.0]])
    assert np.allclose(np.array(grpo.token_entropy(logits)), [1.5 * math.log(2), math.log(4)], rtol=1e-6)
    assert grpo.token_entropy(mx.array([0.0, -1e4])).item() == pytest.approx(0.0, abs=1e-6)


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
    loss, pg_mean, kl_mean, clip_mean = _loss_case(mx.zeros((2, 3, 2)), kl_coef=c)
    assert per_edit == pytest.approx([-0.8346573590279973, 2.1418417310137587])
    assert loss.item() == pytest.approx(sum(per_edit) / 2, rel=1e-6)  # each self-edit's token mean, then the batch
    assert pg_mean.item() == pytest.approx(4.7 / 5, rel=1e-6)  # token means over the unmasked tokens
    assert kl_mean.item() == pytest.approx(sum(kl[0] + kl[1]) / 5, rel=1e-6)
    # the clip bites at ratio 1.5 (A > 0) and 0.7 (A < 0): 2 of the 5 unmasked tokens (the padding's 10.0 not counted)
    assert clip_mean.item() == pytest.approx(2 / 5, rel=1e-6)
    flipped, _, _, flipped_clip = _loss_case(mx.zeros((2, 3, 2)), kl_coef=c, adv=[-a for a in ADV])
    # a sign-flipped advantage clips the other side: -min(r * -1, clip(r) * -1) = 1.5, 0.8 | -2.2, -1.4, -2.4
    assert flipped.item() == pytest.approx(((1.5 + 0.8 + c * kl[0][1]) / 2 + (-6.0 + c * sum(kl[1])) / 3) / 2)
    assert flipped_clip.item() == pytest.approx(2 / 5, rel=1e-6)  # now at 0.5 (A < 0) and 1.3 (A > 0)
    no_kl, pg_only, kl_measured, _ = _loss_case(mx.zeros((2, 3, 2)), kl_coef=0.0)
    assert no_kl.item() == pytest.approx((-1.7 / 2 + 6.4 / 3) / 2, rel=1e-6) and kl_measured.item() == kl_mean.item()


def test_grpo_loss_gradient_pushes_advantaged_tokens_and_stops_at_the_clip():
    grad = np.array(mx.grad(lambda z: _loss_case(z, kl_coef=0.0)[0])(mx.zeros((2, 3, 2))))
    # d loss / d logp = -ratio * A / (tokens of the self-edit * self-edits) where the unclipped term is the minimum,
    # 0 where the clipped one is (and on padding); d logp / d logit = +-1/2 for the target / the other token
    dlogp = np.array([[0.0, -0.5 * 1 / 4, 0.0], [1.1 * 2 / 6, 0.0, 1.3 * 2 / 6]])
    assert np.allclose(grad[..., 0], 0.5 * dlogp, atol=1e-7) and np.allclose(grad[..., 1], -0.5 * dlogp, atol=1e-7)


def _agent(**settings):
    return grpo.GRPO(grpo.GRPOConfig(**{**grpo.PRESETS["tiny"], "env": SealConfig(**TINY_ENV), **settings}))


def _norm(grads) -> float:
    """The global L2 norm of a gradient tree, in float64."""
    return math.sqrt(sum(float(np.sum(np.square(np.array(g, np.float64)))) for _, g in tree_flatten(grads)))


def test_learn_raises_the_better_self_edit_against_the_worse():
    """One GRPO step on two samples of one article: the better one's log-probability rises relative to the other's.
    The k3 KL to the initial policy is 0 at that step, and positive at the next update's (the policy has moved)."""
    agent = _agent(policy_batch_size=2)
    article, good, bad = ARTICLE, GOOD, BAD
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
    assert again["kl"] == pytest.approx(stats["kl_after"], rel=1e-3)  # where the first update left it, same tokens


def test_learn_diagnostics_against_a_direct_computation():
    """One GRPO step on two self-edits: the gradient norm is the norm of grpo_loss's gradient (plain mlx, the LoRA
    slot seeded as the update seeds it), the entropy the mean softmax entropy at the self-edit tokens (numpy,
    float64), the KL after the update the mean k3 of the new log-probs against the initial ones."""
    agent = _agent(policy_batch_size=2)
    batch = [Experience(ARTICLE, GOOD, 1.0), Experience(ARTICLE, BAD, 0.0)]
    cfg, learner = agent.cfg, agent.model.learner
    pairs = [agent.policy.training_pair(e.observation, e.self_edit) for e in batch]
    initial = agent._logprobs(pairs)
    entropies = []
    for ids, start in pairs:
        logits = np.array(learner.model(mx.array([ids[:-1]])).astype(mx.float32)[0, start - 1 :], np.float64)
        logp = logits - logits.max(axis=-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
        entropies.append(-(np.exp(logp) * logp).sum(axis=-1))
    inputs, targets, mask = make_batch(pairs)
    (old,) = stack_extras([(ids, start, (lp,)) for (ids, start), lp in zip(pairs, initial, strict=True)], mask.shape[1])
    adv = mx.array(grpo.group_advantages(batch, cfg.adv_eps))

    def loss(model):
        return grpo.grpo_loss(model, inputs, targets, mask, adv, old, old, cfg.clip_eps, cfg.kl_coef)[0]

    learner.reset([5])  # the fresh LoRA the update starts from (seed 5)
    direct = _norm(nn.value_and_grad(learner.model, loss)(learner.model)[1])
    learner.reset([])
    stats = agent.learn(batch, seed=5)
    assert set(stats) == LEARN_KEYS and stats["steps"] == 1 and direct > 0
    assert stats["grad_norm_mean"] == stats["grad_norm_max"] == pytest.approx(direct, rel=1e-4)
    assert stats["entropy"] == pytest.approx(np.concatenate(entropies).mean(), rel=1e-5)
    assert stats["clip_frac"] == 0.0 and stats["kl"] == pytest.approx(0.0, abs=1e-7)  # the step at the sampler
    after = agent._logprobs(pairs)
    edit = [np.arange(start - 1, len(ids) - 1) for ids, start in pairs]
    d = np.concatenate([i[e].astype(np.float64) - a[e] for i, a, e in zip(initial, after, edit, strict=True)])
    assert stats["kl_after"] == pytest.approx(float(np.mean(np.exp(d) - d - 1)), rel=1e-4) and stats["kl_after"] > 0


def test_learn_reports_the_clip_biting_on_later_epochs():
    """Several passes at a large learning rate move the policy past the clip range within the update: the clipped
    fraction is then positive (at the first step the policy is the sampler: ratio 1 everywhere)."""
    agent = _agent(policy_batch_size=1, policy_epochs=4, policy_learning_rate=0.05)
    stats = agent.learn([Experience(ARTICLE, GOOD, 1.0), Experience(ARTICLE, BAD, 0.0)], seed=0)
    assert stats["steps"] == 8 and 0 < stats["clip_frac"] <= 1 and stats["grad_norm_max"] >= stats["grad_norm_mean"]


def test_learn_with_every_group_skipped_reports_a_stuck_round():
    agent = _agent()
    saved = agent.state()
    stats = agent.learn([Experience(ARTICLE, GOOD, 0.5), Experience(ARTICLE, BAD, 0.5)], seed=0)
    assert set(stats) == LEARN_KEYS
    assert (stats["groups"], stats["groups_skipped"], stats["groups_skipped_frac"]) == (1.0, 1.0, 1.0)
    assert stats["used"] == stats["steps"] == stats["adv_abs_mean"] == stats["diverged"] == 0.0
    assert all(math.isnan(stats[k]) for k in ("kl", "kl_after", "clip_frac", "entropy", "grad_norm_mean"))
    assert all(mx.array_equal(agent.state()[k], saved[k]) for k in saved)


def _learner_data(tok, texts):
    head = tok.encode("Tervik\n")
    return [(head + tok.encode(t, add_special_tokens=False) + [tok.eos_token_id], len(head)) for t in texts]


def test_learner_grad_norms_are_each_steps_gradient_norm():
    """The Learner's ``grad_norms``: one per optimizer step, the global norm of the slot's LoRA gradient. One SFT
    step equals the norm of a direct mlx gradient of the mean next-token cross-entropy over the loss tokens; two slots
    trained together each get the norm they get alone."""
    model, tok = load_model("tiny-random")
    cfg = SealConfig(model="tiny-random", lora_rank=4, lora_alpha=8.0, epochs=1, batch_size=2, learning_rate=1e-3)
    learner = Learner(model, tok, cfg)
    one = _learner_data(tok, ["The observatory sits on Mount Tervik.", "It was founded in 1911 by Ada Varn."])
    two = _learner_data(tok, ["Its first director mapped the northern sky.", "Bread."])
    inputs, targets, mask = make_batch(one)

    def sft(m):
        ce = nn.losses.cross_entropy(m(inputs).astype(mx.float32), targets)
        return (ce * mask).sum() / mask.sum()

    learner.reset([7])
    for m in learner.adapters:  # a non-zero B: the gradient reaches A too
        m.lora_b = mx.random.normal(m.lora_b.shape, key=mx.random.key(3)) * 0.05
    direct = _norm(nn.value_and_grad(model, sft)(model)[1])
    report = learner.train([one], [7], grad_norms=True)[0]
    assert report["train_steps"] == 1 and report["grad_norms"] == [pytest.approx(direct, rel=1e-4)]
    alone = []
    for seed, data in ((7, one), (8, two)):
        learner.reset([seed])
        alone.append(learner.train([data], [seed], grad_norms=True)[0]["grad_norms"])
    learner.reset([7, 8])
    together = learner.train([one, two], [7, 8], grad_norms=True)
    learner.reset([7])
    assert "grad_norms" not in learner.train([one], [7])[0]  # off by default: the inner loop does not pay for it
    assert [r["grad_norms"] for r in together] == [pytest.approx(a, rel=1e-5) for a in alone]


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
    learn_records = [r["stats"] for r in journal(run_dir) if r["event"] == "learn"]
    assert [summary["learn"] for summary in results["rounds"][1:]] == learn_records
    for learn in learn_records:
        assert set(learn) == LEARN_KEYS
        assert learn["used"] == 4 and learn["steps"] == 2 and not learn["diverged"]
        assert (learn["groups"], learn["groups_skipped"], learn["groups_skipped_frac"]) == (2, 0, 0)
        assert 0 < learn["adv_abs_mean"] <= 1 and 0 < learn["grad_norm_mean"] <= learn["grad_norm_max"]
        assert 0 < learn["entropy"] <= math.log(49152) + 1e-4  # at most log(vocabulary size)
        assert 0 <= learn["clip_frac"] <= 1 and learn["kl_after"] > 0
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
    logged = [row for row in wandb_history(next(offline[0].glob("*.wandb"))) if "round/learn_steps" in row]
    assert [
        {k.removeprefix("round/learn_"): v for k, v in row.items() if k.startswith("round/learn_")} for row in logged
    ] == [pytest.approx(stats) for stats in learn_records]


def wandb_history(path):
    """The rows wandb logged (``history`` records) in an offline run's ``.wandb`` file: a LevelDB-style log (a
    7-byte header, then 32 KiB blocks of records with a 7-byte header each: CRC32, length, type full/first/middle/
    last) of wandb's ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, rows = path.read_bytes(), 32768, []
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            pos += left
            continue
        pending, pos = pending + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


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
    agent = _agent()
    real = grpo.grpo_loss
    monkeypatch.setattr(grpo, "grpo_loss", lambda *args: tuple(x * math.nan for x in real(*args)))
    article = Article("Tervik Observatory", "Tervik Observatory stands on Mount Hallegrim.", (Question("q", "a"),))
    batch = [Experience(article, "It stands on Mount Hallegrim.", 1.0), Experience(article, "Bread.", 0.0)]
    saved = agent.state()
    stats = agent.learn(batch, seed=0)
    assert stats["diverged"] == 1.0 and stats["steps"] == 0 and math.isnan(stats["loss"])
    assert all(mx.array_equal(agent.state()[k], saved[k]) for k in saved) and agent.model.learner.n_slots == 0


def test_learn_preset_is_the_default_and_rolls_out_as_restems():
    """``python -m agents.grpo`` with no preset runs ``learn``. GRPO's ``learn`` preset samples, rewards and
    evaluates exactly as ReSTEM's (rounds, articles, self-edits, held-out evaluation, inner loop), so the two
    learning curves differ by the update alone; the update trains ReSTEM's LoRA (rank, alpha, layers), with larger
    steps than GRPO's demo one."""
    ours = preset_config(grpo.GRPOConfig, grpo.PRESETS, "learn")
    ours.validate()
    theirs = preset_config(restem.ReSTEMConfig, restem.PRESETS, "learn")
    shared = [f.name for f in dataclasses.fields(RunConfig) if not f.name.startswith("policy_")]
    assert "env" in shared and "k" in shared
    assert {n: getattr(ours, n) for n in shared} == {n: getattr(theirs, n) for n in shared}
    lora = ("policy_lora_rank", "policy_lora_alpha", "policy_lora_modules")
    assert {n: getattr(ours, n) for n in lora} == {n: getattr(theirs, n) for n in lora}
    demo = preset_config(grpo.GRPOConfig, grpo.PRESETS, "demo")
    assert ours.policy_learning_rate > demo.policy_learning_rate and ours.policy_epochs > demo.policy_epochs
    parser = build_parser("grpo", grpo.GRPOConfig, grpo.PRESETS, "GRPO.", grpo.DEFAULT_PRESET)
    assert parse_args(parser, grpo.GRPOConfig, grpo.PRESETS, []) == (ours, "learn", None)
