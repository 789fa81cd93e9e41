"""Quizzing a learner on an article and turning two quizzes (before and after adaptation) into a reward."""

from __future__ import annotations

import statistics
from typing import Any

from seal_env.articles import Article
from seal_env.grading import Grader, grade
from seal_env.learner import Learner
from seal_env.prompts import answer_prompt

#: Which per-question score each reward kind averages.
REWARD_SCORE = {"accuracy": "correct", "f1": "f1", "loglik": "loglik"}


def quiz(learner: Learner, article: Article, max_tokens: int, grader: Grader | None = None
         ) -> list[list[dict[str, Any]]]:
    """Ask every question without the passage, in one batch for every adapter slot of ``learner`` (one group for
    the base model when it has none); per slot and question: the answer, correct/em/f1 and the gold log-likelihood.

    ``max_tokens=0`` generates no answers (the log-likelihood needs none): answers are empty and score 0.
    """
    prompts = [answer_prompt(article.title, q.question, learner.tokenizer) for q in article.questions]
    logliks = learner.answer_logliks(prompts, [q.answer for q in article.questions])
    answers = learner.answers(prompts, max_tokens) if max_tokens > 0 else [[""] * len(prompts) for _ in logliks]
    unanswered = {"correct": 0.0, "em": 0.0, "f1": 0.0}
    return [
        [{"question": q.question, "gold": q.answer, "answer": a,
          **(grade(q.question, q.answer, a, grader) if max_tokens > 0 else unanswered), "loglik": ll}
         for q, a, ll in zip(article.questions, slot_answers, slot_logliks)]
        for slot_answers, slot_logliks in zip(answers, logliks)
    ]


def summarize(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean accuracy, exact match, F1 and log-likelihood over a quiz."""
    n = max(len(results), 1)
    return {
        "accuracy": sum(r["correct"] for r in results) / n,
        "em": sum(r["em"] for r in results) / n,
        "f1": sum(r["f1"] for r in results) / n,
        "loglik": sum(r["loglik"] for r in results) / n,
    }


def gain(kind: str, baseline: dict[str, float], adapted: dict[str, float]) -> float:
    """The reward of kind ``kind``: the adapted model's mean score minus the base model's."""
    return adapted[kind] - baseline[kind]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0
