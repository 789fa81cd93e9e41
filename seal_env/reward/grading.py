"""Grading answers against gold answers: lenient match, SQuAD exact match and F1.

The graders here are pure functions of strings. The gold answer's log-likelihood, the third per-question
score, needs the model and lives in :mod:`seal_env.learner.trainer`.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence

#: A pluggable grader: ``grader(question, gold_answer, predicted_answer) -> score in [0, 1]``.
#: The default is :func:`lenient_match`; seal_env.judge.JudgeGrader is an LLM judge (SEAL grades with GPT-4.1).
Grader = Callable[[str, str, str], float]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def lenient_match(question: str, gold: str, prediction: str) -> float:
    """1.0 if the normalised gold answer occurs in the normalised prediction (on word boundaries), else 0.0."""
    g, p = normalize_answer(gold), normalize_answer(prediction)
    if not g:
        return 0.0
    return 1.0 if f" {g} " in f" {p} " else 0.0


def exact_match(gold: str, prediction: str) -> float:
    """SQuAD exact match after normalisation."""
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str) -> float:
    """SQuAD token-level F1 after normalisation."""
    g, p = normalize_answer(gold).split(), normalize_answer(prediction).split()
    if not g or not p:
        return float(g == p)
    common = sum((collections.Counter(g) & collections.Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def _scores(gold: str, prediction: str, correct: float) -> dict[str, float]:
    correct = float(correct)
    if not 0.0 <= correct <= 1.0:
        raise ValueError(f"grader returned {correct!r}; graders must return a score in [0, 1]")
    return {"correct": correct, "em": exact_match(gold, prediction), "f1": f1_score(gold, prediction)}


def grade(question: str, gold: str, prediction: str, grader: Grader | None = None) -> dict[str, float]:
    """All per-question text scores: ``correct`` (the grader's, lenient by default), ``em`` and ``f1``."""
    return _scores(gold, prediction, (grader or lenient_match)(question, gold, prediction))


def grade_many(items: Sequence[tuple[str, str, str]], grader: Grader | None = None) -> list[dict[str, float]]:
    """:func:`grade` of each ``(question, gold, prediction)``, in order; a grader with a ``grade_many`` method (the
    LLM judge of seal_env.judge) scores them all in one call."""
    batch = getattr(grader, "grade_many", None)
    if batch is not None:
        correct = list(batch(items))
    else:
        correct = [(grader or lenient_match)(*item) for item in items]
    return [_scores(gold, prediction, c) for (_, gold, prediction), c in zip(items, correct, strict=True)]
