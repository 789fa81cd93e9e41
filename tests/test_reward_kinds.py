"""The log-likelihood reward kinds (loglik, margin, choice, pmi): a hand computation, and a sanity check of each."""

import math

from seal_env.articles import Article, Question
from seal_env.config import LOGLIK_KINDS, SealConfig
from seal_env.reward.quiz import quiz, summarize

import gymnasium as gym
import pytest

from conftest import TINY

ART = Article(
    "Tervik",
    "Tervik Observatory sits on Mount Tervik; Ada Varn founded it in 1911.",
    (
        Question("Where is it?", "Mount Tervik"),
        Question("Who founded it?", "Ada Varn"),
        Question("When?", "1911"),
        Question("On which mountain?", "Mount Tervik"),
    ),
)


class FakeLearner:
    """Scores per (prompt, candidate) chosen by hand; candidates are the article's distinct gold answers."""

    tokenizer = None

    def __init__(self, scores):
        self.scores = scores

    def ask(self, prompts, candidates, max_tokens, answer=None):
        assert len(prompts) == len(ART.questions) + 1  # + the topic-only prompt
        assert all(c == ["Mount Tervik", "Ada Varn", "1911"] for c in candidates)
        assert answer == [True] * 4 + [False]
        return [["ans"] * len(prompts)], [self.scores]


def test_kinds_agree_with_a_hand_computation():
    scores = [
        [-1.0, -3.0, -2.0],  # "Where is it?": gold Mount Tervik is the most likely
        [-1.0, -1.5, -4.0],  # "Who founded it?": gold Ada Varn is not
        [-2.0, -2.0, -2.0],  # "When?": a tie is not a choice
        [-0.5, -2.5, -0.5],  # "On which mountain?": gold Mount Tervik (index 0), tie with 1911
        [-2.0, -1.0, -3.0],
    ]  # topic alone
    rows = quiz(FakeLearner(scores), ART, max_tokens=0)[0]
    assert [r["loglik"] for r in rows] == [-1.0, -1.5, -2.0, -0.5]
    assert [r["margin"] for r in rows] == [
        -1.0 - (-3.0 - 2.0) / 2,
        -1.5 - (-1.0 - 4.0) / 2,
        0.0,
        -0.5 - (-2.5 - 0.5) / 2,
    ]
    assert [r["choice"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert [r["pmi"] for r in rows] == [-1.0 + 2.0, -1.5 + 1.0, -2.0 + 3.0, -0.5 + 2.0]
    summary = summarize(rows)
    assert summary["choice"] == 0.25 and summary["pmi"] == pytest.approx((1.0 - 0.5 + 1.0 + 1.5) / 4)
    assert all(r["correct"] == 0.0 and r["answer"] == "ans" for r in rows)  # max_tokens=0: not graded


@pytest.fixture(scope="module")
def learning_env():
    # enough learning that the tiny random model measurably learns stated facts: 6 epochs at lr 3e-3, with Adam's
    # larger uncorrected first steps (with bias correction its rank-4 LoRA moves no gold answer to first place)
    settings = {"timings": False, "include_passage": False, "learning_rate": 3e-3, "epochs": 6}
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, **settings, "adam_bias_correction": False}).unwrapped
    yield env
    env.close()


@pytest.mark.parametrize("kind", LOGLIK_KINDS)
def test_a_self_edit_stating_the_answers_beats_unrelated_text(learning_env, kind):
    article = learning_env.articles[0]
    stating = "\n".join(f"{q.question} {q.answer}." for q in article.questions)
    unrelated = "The weather in the mountains changes quickly.\nBread is made from flour, water and yeast."
    _, with_facts = learning_env.evaluate(article, stating, 0)
    _, without = learning_env.evaluate(article, unrelated, 0)
    assert with_facts[f"{kind}_gain"] > without[f"{kind}_gain"]


@pytest.mark.parametrize("kind", ["margin", "choice", "pmi"])
def test_the_reward_setting_picks_the_kind(kind):
    env = gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, "reward": kind, "answer_max_tokens": 0}).unwrapped
    reward, info = env.evaluate(env.articles[1], "1. A fact about it.\n2. Another.", seed=1)
    assert reward == info[f"{kind}_gain"] and info["reward_kind"] == kind and math.isfinite(reward)
    assert all(q["answer"] == "" for q in info["questions"])  # no answers generated
    env.close()


def test_answer_free_rewards_need_a_log_likelihood_kind():
    for kind in LOGLIK_KINDS:
        SealConfig(reward=kind, answer_max_tokens=0)
    with pytest.raises(ValueError, match="log-likelihood reward"):
        SealConfig(reward="accuracy", answer_max_tokens=0)


NAMED = Article(
    "Tervik Observatory",
    "Ada Varn founded the Tervik Observatory on Mount Tervik in 1911; its telescope carries the name Varn.",
    (
        Question("Who founded the observatory?", "Ada Varn"),
        Question("Whose name does its telescope carry?", "Varn"),
        Question("When was it founded?", "1911"),
    ),
)
#: Enough capacity and steps that the tiny random model answers every question with the one line it was trained on.
MEMORISE = {
    "include_passage": False,
    "lora_modules": ["all"],
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "learning_rate": 1e-2,
    "epochs": 20,
    "timings": False,
}


@pytest.mark.parametrize("kind", ["accuracy", "f1"])
def test_answer_rewards_follow_the_answers_when_they_change(kind):
    """Trained hard on a self-edit that states one answer verbatim, the adapted model's answers differ from the
    baseline's; the accuracy and F1 gains are the per-question grades of the info's answers, averaged, adapted
    minus baseline, and the reward is the gain of its kind."""
    from seal_env.reward.grading import f1_score, lenient_match

    env = gym.make("seal/KnowledgeIncorporation-v0", **{**TINY, **MEMORISE, "reward": kind}).unwrapped
    reward, info = env.evaluate(NAMED, "Ada Varn\nAda Varn\nAda Varn", seed=0)
    env.close()
    questions = info["questions"]
    assert info["train_steps"] == 3 * MEMORISE["epochs"] and not info["diverged"]
    assert [q["answer"] for q in questions] != [q["baseline_answer"] for q in questions]

    def mean_gain(score):
        adapted = [score(q["question"], q["gold"], q["answer"]) for q in questions]
        baseline = [score(q["question"], q["gold"], q["baseline_answer"]) for q in questions]
        return (sum(adapted) - sum(baseline)) / len(questions)

    accuracy = mean_gain(lenient_match)
    f1 = mean_gain(lambda question, gold, answer: f1_score(gold, answer))
    assert info["accuracy_gain"] == pytest.approx(accuracy, abs=1e-12)
    assert info["f1_gain"] == pytest.approx(f1, abs=1e-12)
    assert reward == info[f"{kind}_gain"] != 0.0 and info["reward_kind"] == kind
    assert accuracy != f1  # the kinds grade differently: F1 by word overlap, the lenient match by containment
