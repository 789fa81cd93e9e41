"""Articles (passage + QA pairs) for knowledge incorporation: data classes, loaders and splits.

Sources accepted by :func:`load_articles` are listed in :data:`DATASETS_HELP`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

DATASETS_HELP = (
    "accepted article sources: 'bundled' (40 invented-fact articles shipped with seal_env), "
    "a path to a .json file holding a list of {title, context, questions: [{question, answer}]} "
    "(SEAL/SQuAD format), or 'squad' / 'squad:<split>' (Hugging Face rajpurkar/squad, "
    "default split 'validation'; needs the network or a local datasets cache)"
)

SQUAD_HF_ID = "rajpurkar/squad"
SQUAD_DEFAULT_SPLIT = "validation"


#: The longest title, passage (``context``), question and gold answer an :class:`Article` takes, in characters:
#: caps against runaway inputs (a book pasted as one passage), far above any real article's texts. The passage
#: cap is the default ``max_action_chars``, the cap of a self-edit.
MAX_TITLE_CHARS = 1_000
MAX_CONTEXT_CHARS = 100_000
MAX_QUESTION_CHARS = 2_000
MAX_ANSWER_CHARS = 2_000
_LIMITS = {
    "title": ("MAX_TITLE_CHARS", MAX_TITLE_CHARS),
    "context": ("MAX_CONTEXT_CHARS", MAX_CONTEXT_CHARS),
    "question": ("MAX_QUESTION_CHARS", MAX_QUESTION_CHARS),
    "answer": ("MAX_ANSWER_CHARS", MAX_ANSWER_CHARS),
}


@dataclass(frozen=True)
class Question:
    """One question about an article, with its short gold answer (both non-empty strings; ValueError otherwise)."""

    question: str
    answer: str

    def __post_init__(self) -> None:
        _nonempty_str(self.question, "question")
        _nonempty_str(self.answer, "answer")


@dataclass(frozen=True)
class Article:
    """A passage to be learned (``context``) and the questions that test it.

    Building one checks it, however it is built (:meth:`from_dict`, :func:`load_articles` or by hand): ``title``
    and ``context`` are non-empty strings, ``questions`` a non-empty tuple of :class:`Question`, and no text is
    longer than its cap (:data:`MAX_TITLE_CHARS` 1,000, :data:`MAX_CONTEXT_CHARS` 100,000,
    :data:`MAX_QUESTION_CHARS` and :data:`MAX_ANSWER_CHARS` 2,000 characters); otherwise ValueError, naming the
    article (id and title) and the limit."""

    title: str
    context: str
    questions: tuple[Question, ...]

    def __post_init__(self) -> None:
        _nonempty_str(self.title, "title")
        _nonempty_str(self.context, "context")
        where = f"article {self.id} ({self.title[:60]!r})"
        if not (
            isinstance(self.questions, tuple)
            and self.questions
            and all(isinstance(q, Question) for q in self.questions)
        ):
            raise ValueError(f"{where}: questions must be a non-empty tuple of Question, got {self.questions!r:.60}")
        texts = [("title", "title", self.title), ("context", "context", self.context)]
        for i, q in enumerate(self.questions):
            texts += [
                (f"questions[{i}].question", "question", q.question),
                (f"questions[{i}].answer", "answer", q.answer),
            ]
        for field, kind, text in texts:
            if _too_long(kind, text):
                name, limit = _LIMITS[kind]
                raise ValueError(
                    f"{where}: {field} has {len(text):,} characters, over the limit of {limit:,} "
                    f"(seal_env.articles.{name})"
                )

    @property
    def id(self) -> str:
        """Stable content hash: first 16 hex digits of sha256(title + context)."""
        digest = hashlib.sha256(f"{self.title}\n{self.context}".encode())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The SEAL/SQuAD JSON form ``{title, context, questions: [{question, answer}]}``."""
        return {
            "title": self.title,
            "context": self.context,
            "questions": [{"question": q.question, "answer": q.answer} for q in self.questions],
        }

    @classmethod
    def from_dict(cls, d: Any) -> Article:
        """Build and validate an article; raise ValueError naming the bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"article must be a JSON object, got {type(d).__name__}")
        title = _nonempty_str(d.get("title"), "title")
        context = _nonempty_str(d.get("context"), "context")
        if "questions" not in d:
            hint = " (looks like a self-edit file, which has no questions)" if "completions" in d else ""
            raise ValueError(f"missing field 'questions'{hint}")
        raw = d["questions"]
        if not isinstance(raw, list) or not raw:
            raise ValueError("'questions' must be a non-empty list")
        questions = tuple(_question(q, i) for i, q in enumerate(raw))
        return cls(title=title, context=context, questions=questions)


def _nonempty_str(value: Any, field: str) -> str:
    """``value`` stripped; ValueError naming ``field`` if it is not a string with something besides whitespace, or
    not valid Unicode text (a lone surrogate, which no tokenizer takes)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{field}' must be a non-empty string, got {value!r:.60}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"'{field}' is not valid Unicode text (a lone surrogate at character {err.start})") from None
    return value.strip()


def _too_long(kind: str, text: str) -> bool:
    """Whether ``text`` is longer than the cap of its kind (``title``, ``context``, ``question``, ``answer``)."""
    return len(text) > _LIMITS[kind][1]


def _question(q: Any, i: int) -> Question:
    """Parse ``{question, answer}``; also accepts SQuAD's ``answers`` (first one is used)."""
    where = f"questions[{i}]"
    if not isinstance(q, dict):
        raise ValueError(f"{where} must be an object with 'question' and 'answer'")
    answer = q.get("answer")
    if answer is None and "answers" in q:
        answers = q["answers"]
        if isinstance(answers, dict):  # HF layout: {"text": [...], "answer_start": [...]}
            answers = answers.get("text", [])
        if isinstance(answers, list) and answers:
            first = answers[0]
            answer = first.get("text") if isinstance(first, dict) else first
    return Question(
        question=_nonempty_str(q.get("question"), f"{where}.question"),
        answer=_nonempty_str(answer, f"{where}.answer"),
    )


def articles_from_json(data: Any, *, origin: str = "<json>", limit: int | None = None) -> list[Article]:
    """Parse a decoded SEAL/SQuAD JSON list; errors name the entry index and ``origin``."""
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        raise ValueError(f"{origin}: looks like raw SQuAD (nested 'data'/'paragraphs'); {DATASETS_HELP}")
    if not isinstance(data, list):
        raise ValueError(f"{origin}: expected a JSON list of articles, got {type(data).__name__}")
    entries = data if limit is None else data[:limit]
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(Article.from_dict(entry))
        except ValueError as e:
            raise ValueError(f"{origin}: entry {i}: {e}") from None
    return out


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")


def _load_json_file(path: Path, limit: int | None) -> list[Article]:
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"article file {what}: {path} ({DATASETS_HELP})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return articles_from_json(data, origin=str(path), limit=limit)


def _load_squad(split: str, limit: int | None) -> list[Article]:
    """SQuAD v1.1 from Hugging Face, grouped by context in first-seen order; rows with an empty text or one over
    its cap (:data:`MAX_CONTEXT_CHARS`, ...) are skipped."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise RuntimeError(f"loading '{SQUAD_HF_ID}' needs the 'datasets' package: {e}") from e
    try:
        ds = datasets.load_dataset(SQUAD_HF_ID, split=split)
    except Exception as e:  # offline, unknown split, hub errors: all surface the same way
        raise RuntimeError(
            f"could not load {SQUAD_HF_ID} split {split!r} ({type(e).__name__}: {e}). "
            "Are you offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) without a cached copy? "
            f"Use source='bundled' or a JSON file instead; {DATASETS_HELP}"
        ) from e
    groups: dict[str, tuple[str, list[Question]]] = {}
    for title, context, question, answers in zip(
        ds["title"], ds["context"], ds["question"], ds["answers"], strict=True
    ):
        title, context, question = title.replace("_", " ").strip(), context.strip(), question.strip()
        texts = answers.get("text", []) if isinstance(answers, dict) else []
        answer = texts[0].strip() if texts else ""
        if not (title and context and question and answer):
            continue
        fields = {"title": title, "context": context, "question": question, "answer": answer}
        if any(_too_long(kind, text) for kind, text in fields.items()):
            continue
        if context not in groups:
            if limit is not None and len(groups) >= limit:
                continue
            groups[context] = (title, [])
        groups[context][1].append(Question(question, answer))
    return [Article(t, c, tuple(qs)) for c, (t, qs) in groups.items()]


def load_articles(source: str | os.PathLike[str] = "bundled", *, limit: int | None = None) -> list[Article]:
    """Load articles from ``source`` (see :data:`DATASETS_HELP`), keeping at most ``limit``.

    Raises FileNotFoundError for a missing file, ValueError for malformed data or an unknown
    source name, RuntimeError when SQuAD cannot be fetched (e.g. offline).
    """
    _check_limit(limit)
    if isinstance(source, os.PathLike):
        return _load_json_file(Path(source), limit)
    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"article source must be a non-empty string or path, got {source!r}; {DATASETS_HELP}")
    source = source.strip()
    if source == "bundled":
        text = resources.files("seal_env").joinpath("data/articles.json").read_text(encoding="utf-8")
        return articles_from_json(json.loads(text), origin="bundled articles.json", limit=limit)
    if source == "squad" or source.startswith("squad:"):
        split = source.partition(":")[2].strip() or SQUAD_DEFAULT_SPLIT
        return _load_squad(split, limit)
    path = Path(source).expanduser()
    looks_like_path = path.suffix.lower() == ".json" or os.sep in source or "/" in source
    if path.exists() or looks_like_path:
        return _load_json_file(path, limit)
    raise ValueError(f"unknown article source {source!r}; {DATASETS_HELP}")


def split_articles(
    articles: Sequence[Article], *, heldout: int | float, seed: int = 0
) -> tuple[list[Article], list[Article]]:
    """Deterministically split into ``(train, heldout)``.

    ``heldout`` is a count (int, 0..n) or a fraction (float, 0.0..1.0, rounded to a count).
    The draw uses ``numpy.random.default_rng(seed)``; both parts keep the input order.
    """
    n = len(articles)
    if isinstance(heldout, bool) or not isinstance(heldout, (int, float, np.integer, np.floating)):
        raise ValueError(f"heldout must be an int count or a float fraction, got {heldout!r}")
    if isinstance(heldout, (float, np.floating)):
        if not 0.0 <= heldout <= 1.0:
            raise ValueError(f"heldout fraction must be in [0, 1], got {heldout}")
        k = int(round(float(heldout) * n))
    else:
        k = int(heldout)
        if not 0 <= k <= n:
            raise ValueError(f"heldout count must be in [0, {n}] for {n} articles, got {k}")
    perm = np.random.default_rng(seed).permutation(n)
    held = set(perm[:k].tolist())
    train = [a for i, a in enumerate(articles) if i not in held]
    return train, [a for i, a in enumerate(articles) if i in held]


def select_articles(cfg: Any) -> list[Article]:
    """The articles of ``cfg.dataset`` in ``cfg.split`` (a :class:`seal_env.config.SealConfig`; the train/held-out
    split is deterministic: ``cfg.heldout``, ``cfg.split_seed``)."""
    articles = load_articles(cfg.dataset)
    if cfg.split == "all":
        return articles
    heldout = int(cfg.heldout) if cfg.heldout >= 1 else cfg.heldout
    train, held = split_articles(articles, heldout=heldout, seed=cfg.split_seed)
    chosen = train if cfg.split == "train" else held
    if not chosen:
        raise ValueError(f"split {cfg.split!r} of {cfg.dataset!r} is empty (heldout={cfg.heldout})")
    return chosen


def episode_articles(
    articles: Sequence[Article], n: int, rng: np.random.Generator, options: dict[str, Any] | None = None
) -> tuple[list[Article], list[int]]:
    """The articles of a multi-article episode and their indices in ``articles`` (-1 for articles given whole):
    ``options["articles"]`` (Articles or dicts), ``options["article_indices"]``, or else ``n`` distinct articles
    drawn with ``rng``. IndexError for an index out of range, ValueError for an empty episode."""
    options = options or {}
    if "articles" in options:
        episode = [a if isinstance(a, Article) else Article.from_dict(a) for a in options["articles"]]
        indices = [-1] * len(episode)
    elif "article_indices" in options:
        indices = [int(i) for i in options["article_indices"]]
        bad = [i for i in indices if not 0 <= i < len(articles)]
        if bad:
            raise IndexError(f"article_indices {bad} out of range [0, {len(articles)})")
        episode = [articles[i] for i in indices]
    else:
        indices = [int(i) for i in rng.choice(len(articles), n, replace=False)]
        episode = [articles[i] for i in indices]
    if not episode:
        raise ValueError("an episode needs at least one article")
    return episode, indices
