"""Batched rewards: several self-edits of one article trained and quizzed together give the sequential results.

Tiny random model. "Sequential" is one ``evaluate`` call per self-edit; "batched" is one ``evaluate_many`` call.
The batch shapes change how matrix products round, so log-likelihoods agree to 1e-4 (in practice ~1e-7). The
learning rate is high enough for the adapted random model to answer with words (the base model answers nothing), so
the answers that batched and sequential quizzes compare are not all empty.
"""

from seal_env.articles import Article, Question
from seal_env.config import SealConfig
from seal_env.executors import InProcessExecutor, RewardRequest, group_requests
from seal_env.learner.adapter_optim import AdapterOptimizer, schedule_lr
from seal_env.learner.batching import length_buckets
from seal_env.learner.decode import greedy_generate
from seal_env.learner.trainer import Learner
from seal_env.models import load_model

import gymnasium as gym
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.generate import batch_generate

from conftest import TINY

SETTINGS = {**TINY, "timings": False, "reward": "loglik", "max_batch_adapters": 8, "learning_rate": 1e-2}
ART = Article(
    "Tervik Observatory",
    "The Tervik Observatory sits on Mount Tervik. It was founded in 1911 by Ada Varn, who mapped the "
    "northern sky for thirty years.",
    (
        Question("Where is the Tervik Observatory?", "Mount Tervik"),
        Question("Who founded it?", "Ada Varn"),
        Question("When was it founded?", "1911"),
    ),
)
EDITS = [
    "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911.\n3. Ada Varn founded it.",
    "",  # passage only
    "Ada Varn mapped the northern sky for thirty years, from the observatory she founded on the mountain.",
    "Sure! Here are the implications:\n1. A.\n2. B is longer than A, much longer, with many more words.\n3. C.",
    "Tervik.",
]
SEEDS = [11, 12, 13, 14, 15]


def _strip(info):
    return {k: v for k, v in info.items() if not k.startswith("seconds") and k not in ("cache_hit", "batch_adapters")}


def _assert_same(a, b):
    (ra, ia), (rb, ib) = a, b
    assert ra == pytest.approx(rb, abs=1e-4)
    ia, ib = _strip(ia), _strip(ib)
    for key in (
        "accuracy_gain",
        "f1_gain",
        "adapter_accuracy",
        "adapter_f1",
        "train_steps",
        "diverged",
        "n_sequences",
        "train_tokens",
        "empty_action",
        "self_edit_pieces",
    ):
        assert ia[key] == ib[key], key
    assert ia["loglik_gain"] == pytest.approx(ib["loglik_gain"], abs=1e-4)
    for key in ("answer", "correct", "f1"):
        assert [q[key] for q in ia["questions"]] == [q[key] for q in ib["questions"]], key
    assert np.allclose(ia["train_losses"], ib["train_losses"], rtol=1e-4, atol=1e-5)
    assert set(ia) == set(ib)


@pytest.fixture(scope="module")
def env():
    e = gym.make("seal/KnowledgeIncorporation-v0", **SETTINGS).unwrapped
    yield e
    e.close()


@pytest.fixture(scope="module")
def sequential(env):
    return [env.evaluate(ART, e, s) for e, s in zip(EDITS, SEEDS, strict=True)]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_batched_equals_sequential(env, sequential, k):
    batched = env.evaluate_many(ART, EDITS[:k], SEEDS[:k])
    assert len(batched) == k
    for b, s in zip(batched, sequential[:k], strict=True):
        _assert_same(b, s)
    assert sequential[1][1]["empty_action"] and sequential[1][1]["n_sequences"] == 1  # the passage only


def test_accuracy_and_f1_agree_on_answers_that_score(env, sequential):
    """The same article with gold answers that the adapted models give (each question's: the first word of one of
    its non-empty answers; quiz prompts hold no gold answer, so the answers stay): accuracy and F1 differ between
    the self-edits, and batched and sequential quizzes grade them the same."""
    questions = []
    for i, q in enumerate(ART.questions):
        said = [info["questions"][i]["answer"] for _, info in sequential if info["questions"][i]["answer"]]
        questions.append(Question(q.question, said[i % len(said)].split()[0]))
    scored = Article(ART.title, ART.context, tuple(questions))
    seq = [env.evaluate(scored, e, s) for e, s in zip(EDITS, SEEDS, strict=True)]
    bat = env.evaluate_many(scored, EDITS, SEEDS)
    answers = lambda results: [[q["answer"] for q in info["questions"]] for _, info in results]  # noqa: E731
    assert answers(seq) == answers(sequential)
    assert len({info["adapter_accuracy"] for _, info in seq}) > 1 and max(info["adapter_f1"] for _, info in seq) > 0
    for b, s in zip(bat, seq, strict=True):
        _assert_same(b, s)


def test_articles_sharing_a_passage_keep_their_own_questions(env):
    """Two articles with the same title and passage (the same id) but other questions: each is quizzed on its own
    questions against its own baseline, whatever was computed before and however requests are grouped."""
    other = Article(ART.title, ART.context, (Question("What did Ada Varn map?", "the northern sky"),))
    assert other.id == ART.id
    requests = [RewardRequest(ART, EDITS[0], 1), RewardRequest(other, EDITS[0], 1)]
    assert group_requests(requests, 8) == [[0], [1]]
    env.evaluate(ART, EDITS[0], seed=1)  # ART's baseline quiz is in the store
    (_, mine), (_, theirs) = InProcessExecutor(env=env).evaluate(requests)
    assert [q["gold"] for q in mine["questions"]] == [q.answer for q in ART.questions]
    assert [q["gold"] for q in theirs["questions"]] == ["the northern sky"]
    env.baselines.clear()
    _, alone = env.evaluate(other, EDITS[0], seed=1)  # a fresh baseline quiz of `other` only
    assert theirs["baseline_loglik"] == alone["baseline_loglik"]
    assert theirs["baseline_loglik"] != mine["baseline_loglik"]


def test_passes_are_capped_by_max_batch_adapters(env, sequential):
    before = env.learner.n_slots
    small = gym.make(
        "seal/KnowledgeIncorporation-v0", **{**SETTINGS, "max_batch_adapters": 2, "timings": True}
    ).unwrapped
    out = small.evaluate_many(ART, EDITS, SEEDS)
    assert [info["batch_adapters"] for _, info in out] == [2, 2, 2, 2, 1]
    for b, s in zip(out, sequential, strict=True):
        _assert_same(b, s)
    small.close()
    assert env.learner.n_slots == before


def test_eval_times_repeats_are_slots_of_the_same_pass():
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**SETTINGS, "eval_times": 2}).unwrapped
    seq = [env.evaluate(ART, e, s) for e, s in zip(EDITS[:2], SEEDS[:2], strict=True)]
    bat = env.evaluate_many(ART, EDITS[:2], SEEDS[:2])
    for b, s in zip(bat, seq, strict=True):
        _assert_same(b, s)
        assert len(b[1]["rewards"]) == 2 and b[1]["rewards"] == pytest.approx(s[1]["rewards"], abs=1e-4)
    env.close()


def test_one_diverged_self_edit_does_not_stop_the_others(env, sequential, monkeypatch):
    real = env.learner.loss_and_grad

    def nan_for_slot_2(index, *batch):  # slot 2's loss turns NaN at its second step
        (total, per_slot, ntoks), grads = real(index, *batch)
        nan_for_slot_2.calls += 1
        slots = index.tolist()
        if 2 in slots and nan_for_slot_2.calls > 1:
            bad = mx.array([float("nan") if s == 2 else 0.0 for s in slots])
            per_slot = per_slot + bad
        return (total, per_slot, ntoks), grads

    nan_for_slot_2.calls = 0
    monkeypatch.setattr(env.learner, "loss_and_grad", nan_for_slot_2)
    out = env.evaluate_many(ART, EDITS, SEEDS)
    monkeypatch.setattr(env.learner, "loss_and_grad", real)
    assert out[2][1]["diverged"] and out[2][0] == env.cfg.diverged_reward
    assert out[2][1]["train_steps"] < sequential[2][1]["train_steps"]
    for j in (0, 1, 3, 4):
        _assert_same(out[j], sequential[j])


def test_loss_above_max_loss_diverges_only_that_slot(sequential):
    """The random model's losses sit near ln(49152) ~ 10.8: "Tervik." (slot 4) starts above ``max_loss`` 10.9, the
    other self-edits stay below it at every step. Slot 4 stops before its first update, with ``diverged_reward``;
    the others train and score as they do alone."""
    limit = 10.9
    assert sequential[4][1]["train_losses"][0] > limit
    assert all(max(info["train_losses"]) < limit for _, info in sequential[:4])
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**SETTINGS, "max_loss": limit, "diverged_reward": -1.0})
    out = env.unwrapped.evaluate_many(ART, EDITS, SEEDS)
    reward, info = out[4]
    assert reward == -1.0 and info["diverged"] and info["train_steps"] == 0 and info["rewards"] == [-1.0]
    for j in range(4):
        _assert_same(out[j], sequential[j])
    env.close()


def test_no_adaptation_is_the_baseline_once(env):
    env.baselines.clear()
    computed = env.baselines.computed
    none = env.evaluate_many(ART, ["ignored", ""], [1, 2], adapt=False)
    env.evaluate_many(ART, EDITS[:2], SEEDS[:2])
    assert env.baselines.computed == computed + 1  # one baseline quiz for both calls
    off = gym.make("seal/KnowledgeIncorporation-v0", **{**SETTINGS, "include_passage": False}).unwrapped
    for (reward, info), seed in zip(none, [1, 2], strict=True):
        expected = off.evaluate(ART, "", seed)
        assert reward == 0.0 and info["train_steps"] == 0 and info["adapter_accuracy"] == info["baseline_accuracy"]
        assert _strip(info) == _strip(expected[1])
    off.close()


def test_inprocess_executor_groups_an_articles_requests(env, sequential):
    calls = []
    real = env.evaluate_many

    def counting(article, edits, seeds, adapt=True):
        calls.append(len(edits))
        return real(article, edits, seeds, adapt=adapt)

    env.evaluate_many = counting
    try:
        requests = [RewardRequest(ART, e, s) for e, s in zip(EDITS, SEEDS, strict=True)]
        got = []
        out = InProcessExecutor(env=env).evaluate(requests, lambda i, r, info: got.append(i))
    finally:
        del env.evaluate_many
    assert calls == [5] and sorted(got) == list(range(5))
    for b, s in zip(out, sequential, strict=True):
        _assert_same(b, s)


def test_group_requests_by_article_and_condition():
    other = Article("Other", "Text.", (Question("Q?", "A"),))
    reqs = [
        RewardRequest(ART, "a"),
        RewardRequest(other, "b"),
        RewardRequest(ART, "c"),
        RewardRequest(ART, "", adapt=False),
        RewardRequest(ART, "d"),
    ]
    assert group_requests(reqs, 8) == [[0, 2, 4], [1], [3]]
    assert group_requests(reqs, 2) == [[0, 2], [4], [1], [3]]


def test_finished_slots_keep_weights_of_their_own_training():
    model, tok = load_model("tiny-random")
    cfg = SealConfig(**{k: v for k, v in TINY.items() if k != "split"})
    learner = Learner(model, tok, cfg)
    short = [(tok.encode("Tervik sits high."), 1)]
    long = [(tok.encode(f"Sentence number {i} is about the observatory."), 1) for i in range(4)]
    learner.reset([5])
    learner.train([short], [5])
    alone = {k: np.array(v) for k, v in tree_flatten(learner.model.trainable_parameters())}
    learner.reset([5, 6])
    reports = learner.train([short, long], [5, 6])
    assert [r["train_steps"] for r in reports] == [cfg.epochs, 4 * cfg.epochs]
    both = {k: np.array(v) for k, v in tree_flatten(learner.model.trainable_parameters())}
    for k in alone:  # slot 0 stopped after its steps: no further update (no moment drift) while slot 1 went on
        assert np.allclose(both[k][0], alone[k][0], rtol=1e-4, atol=1e-6), k


def test_slot_init_matches_a_single_adapter_reset():
    model, tok = load_model("tiny-random")
    learner = Learner(model, tok, SealConfig(**{k: v for k, v in TINY.items() if k != "split"}))
    learner.reset([3])
    single = [np.array(m.lora_a[0]) for m in learner.adapters]
    learner.reset([9, 3, 4])
    for m, a in zip(learner.adapters, single, strict=True):
        assert np.array_equal(np.array(m.lora_a[1]), a) and not np.array_equal(np.array(m.lora_a[0]), a)
        assert float(mx.abs(m.lora_b).max()) == 0.0


@pytest.mark.parametrize("kind,bias", [("adamw", False), ("adamw", True), ("adam", False), ("sgd", False)])
def test_adapter_optimizer_matches_mlx_for_each_slot(kind, bias):
    rng = np.random.default_rng(0)
    steps = [3, 5]
    params = {"w": mx.array(rng.normal(size=(2, 4, 3)).astype(np.float32))}
    grads_seq = [{"w": mx.array(rng.normal(size=(2, 4, 3)).astype(np.float32))} for _ in range(5)]
    opt = AdapterOptimizer(kind, steps, 1e-2, schedule="linear", warmup_steps=1, weight_decay=0.1, bias_correction=bias)
    opt.init(params)
    p = dict(params)
    for t, g in enumerate(grads_seq):
        mask = [t < s for s in steps]
        p = opt.apply(g, p, *opt.step_inputs(mask))
    for slot, total in enumerate(steps):
        warm = optim.linear_schedule(0.0, 1e-2, 1)
        decay = optim.linear_schedule(1e-2, 0.0, total - 1)
        lr = optim.join_schedules([warm, decay], [1])
        if kind == "adamw":
            ref = optim.AdamW(lr, weight_decay=0.1, bias_correction=bias)
        elif kind == "adam":
            ref = optim.Adam(lr, bias_correction=bias)
        else:
            ref = optim.SGD(lr, weight_decay=0.1)
        w = {"w": params["w"][slot]}
        for g in grads_seq[:total]:
            w = ref.apply_gradients({"w": g["w"][slot]}, w)
        assert np.allclose(np.array(p["w"][slot]), np.array(w["w"]), rtol=1e-5, atol=1e-6), slot


def test_schedule_lr_matches_mlx():
    lin = optim.linear_schedule(1e-3, 0.0, 7)
    for step in range(9):
        assert schedule_lr(step, 7, 1e-3, "linear", 0) == pytest.approx(float(lin(mx.array(step))), rel=1e-6)
    assert schedule_lr(4, 7, 1e-3, "constant", 0) == pytest.approx(1e-3)


def test_length_buckets_keep_long_rows_apart():
    short, long = ([1] * 20, 1), ([1] * 300, 1)
    batches = {0: [short], 1: [long], 2: [short], 3: [short]}
    assert length_buckets(batches, 32) == [[0, 2, 3], [1]]
    assert length_buckets(batches, 10_000) == [[0, 2, 3, 1]]  # a huge overhead: one pass
    assert length_buckets({0: [short]}, 32) == [[0]]
    assert length_buckets(batches, 10_000, max_tokens=300) == [[0, 2, 3], [1]]  # memory cap per pass
    assert length_buckets({0: [long], 1: [long]}, 10_000, max_tokens=300) == [[0], [1]]


def test_greedy_generate_matches_mlx_lm_batch_generate():
    model, tok = load_model("tiny-random")
    prompts = [
        tok.encode("Question: Where is the observatory?\nAnswer:"),
        tok.encode("Hi"),
        tok.encode("The Tervik Observatory sits on Mount Tervik and was founded in"),
    ]
    ours = greedy_generate(model, prompts, 8, tok.eos_token_ids)
    theirs = batch_generate(model, tok, prompts, max_tokens=8, return_token_ids=True).token_ids
    assert ours == theirs
    assert [len(row) for row in ours] == [8, 8, 8] and len({tuple(row) for row in ours}) == 3  # whole, distinct rows
