"""The judge's prompt (:data:`PROMPT_VERSION`) and how a reply is read as a verdict (:func:`parse_verdict`)."""

from __future__ import annotations

import json
import re
from typing import Any

#: Identifies the prompt below and how its reply is read; part of every judgment's and reward's cache key.
PROMPT_VERSION = "seal-env-judge-1"
SYSTEM_PROMPT = (
    "You grade answers to quiz questions about a text. You are given a question, the gold answer and a "
    "predicted answer. Reply with one word: yes or no."
)
USER_TEMPLATE = (
    "Question: {question}\n"
    "Gold answer: {gold}\n"
    "Predicted answer: {prediction}\n\n"
    "Does the predicted answer give the gold answer (the same fact; other wording, extra detail or an equivalent "
    "form are fine; a different, contradictory, missing or evasive answer is not)? Reply with yes or no only."
)


def judge_messages(question: str, gold: str, prediction: str) -> list[dict[str, str]]:
    """The chat messages of one judgment (:data:`PROMPT_VERSION`)."""
    user = USER_TEMPLATE.format(question=question.strip(), gold=gold.strip(), prediction=prediction.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.S | re.I)
_FENCE = re.compile(r"^```[a-z]*\s*|\s*```$", re.I)
_LABEL = re.compile(r"^(final\s+)?(answer|verdict|judgment|judgement|grade|result|correct)\s*[:=\-]\s*", re.I)
_YES = ("yes", "y", "true", "correct")
_NO = ("no", "n", "false", "incorrect", "wrong")
_VERDICT_KEYS = ("verdict", "answer", "correct", "is_correct", "result", "grade", "judgment", "judgement")


def _word_verdict(text: str) -> float | None:
    first = re.match(r"[a-z]+", text)
    if first and first.group() in _YES:
        return 1.0
    if first and first.group() in _NO:
        return 0.0
    return None


def parse_verdict(text: Any) -> float | None:
    """1.0 (yes), 0.0 (no) or None (no verdict) from a judge's reply. Read: a ``<think>`` block is dropped; JSON
    (``{"verdict": "yes"}``, ``{"correct": true}``, also in a code fence); Markdown emphasis and quotes
    (``**Yes**``); a label (``Answer: no``, ``Verdict - yes``); then the first word (yes/no, true/false,
    correct/incorrect/wrong). Otherwise SEAL's reading: a reply with the word "yes" and not "no" is yes, one with
    "no" and not "yes" is no; anything else is no verdict."""
    if not isinstance(text, str):
        return None
    text = _FENCE.sub("", _THINK.sub("", text).strip()).strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            for key in _VERDICT_KEYS:
                value = obj.get(key, obj.get(key.capitalize()))
                if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
                    return float(value)
                if isinstance(value, str):
                    return parse_verdict(value)
            return None
    plain = re.sub(r"[*_`#\"'“”‘’>]", "", text).strip().lower()
    plain = _LABEL.sub("", plain).strip()
    verdict = _word_verdict(plain)
    if verdict is not None:
        return verdict
    yes, no = re.search(r"\byes\b", plain) is not None, re.search(r"\bno\b", plain) is not None
    return 1.0 if yes and not no else 0.0 if no and not yes else None
