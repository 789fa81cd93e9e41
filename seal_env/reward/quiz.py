"""Quizzing a learner on an article and turning two quizzes (before and after adaptation) into a reward."""

from __future__ import annotations

import statistics
from typing import Any

from seal_env.articles import Article
from seal_env.learner.trainer import Learner
from seal_env.prompts import answer_prompt, topic_prompt
from seal_env.reward.grading import Grader, grade_many

#: Which per-question score each reward kind averages.
REWARD_SCORE = {
    "accuracy": "correct",
    "f1": "f1",
    "loglik": "loglik",
    "choice": "choice",
    "margin": "margin",
    "pmi": "pmi",
}
#: The per-question scores that :func:`summarize` averages (``correct`` as ``accuracy``).
SCORES = ("accuracy", "em", "f1", "loglik", "choice", "margin", "pmi")


def quiz(
    learner: Learner, article: Article, max_tokens: int, grader: Grader | None = None
) -> list[list[dict[str, Any]]]:
    """Ask every question without the passage, in one batch for every adapter slot of ``learner`` (one group for
    the base model when it has none); per slot and question: the answer, correct/em/f1, and log-likelihood scores.

    The log-likelihood scores, all from one prefill (:meth:`Learner.ask`), with the article's distinct gold answers
    as the candidates of every question:

    * ``loglik``: mean log-probability per token of the question's gold answer;
    * ``margin``: ``loglik`` minus the mean of the other candidates' (0 with a single distinct answer);
    * ``choice``: 1.0 if the gold answer is strictly the most likely candidate, else 0.0 (a multiple choice);
    * ``pmi``: ``loglik`` minus the gold answer's log-likelihood after the topic alone (no question).

    ``max_tokens=0`` generates no answers (the log-likelihood scores need none): answers are empty and score 0.
    """
    golds = list(dict.fromkeys(q.answer.strip() for q in article.questions))
    prompts = [answer_prompt(article.title, q.question, learner.tokenizer) for q in article.questions]
    prompts.append(topic_prompt(article.title, learner.tokenizer))
    answers, scores = learner.ask(
        prompts, [golds] * len(prompts), max_tokens, answer=[True] * len(article.questions) + [False]
    )
    unanswered = {"correct": 0.0, "em": 0.0, "f1": 0.0}
    n = len(article.questions)
    items = [(q.question, q.answer, a) for slot in answers for q, a in zip(article.questions, slot[:n], strict=True)]
    graded = iter(grade_many(items, grader) if max_tokens > 0 else [unanswered] * len(items))  # in one batch
    out = []
    for slot_answers, slot_scores in zip(answers, scores, strict=True):
        topic = slot_scores[-1]
        rows = []
        for i, q in enumerate(article.questions):
            row = slot_scores[i]
            g = golds.index(q.answer.strip())
            others = [x for j, x in enumerate(row) if j != g]
            a = slot_answers[i]
            rows.append(
                {
                    "question": q.question,
                    "gold": q.answer,
                    "answer": a,
                    **next(graded),
                    "loglik": row[g],
                    "margin": row[g] - (sum(others) / len(others) if others else row[g]),
                    "choice": float(all(row[g] > x for x in others)),
                    "pmi": row[g] - topic[g],
                }
            )
        out.append(rows)
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every per-question score over a quiz (:data:`SCORES`; ``accuracy`` is the mean of ``correct``)."""
    n = max(len(results), 1)
    return {k: sum(r["correct" if k == "accuracy" else k] for r in results) / n for k in SCORES}


def gain(kind: str, baseline: dict[str, float], adapted: dict[str, float]) -> float:
    """The reward of kind ``kind``: the adapted model's mean score minus the base model's."""
    return adapted[kind] - baseline[kind]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0
