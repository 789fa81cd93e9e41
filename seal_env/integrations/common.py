"""What the TRL and verifiers integrations share: SEAL prompts for articles, and a reward source over an executor."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from seal_env.articles import Article, load_articles
from seal_env.executors import Executor, RewardRequest, make_executor
from seal_env.prompts import resolve_template
from seal_env.seeding import derive_seed


def prompt_text(article: Article, template: str = "implications") -> str:
    """The SEAL self-edit prompt for ``article`` (the template's text, without any chat wrapping)."""
    return resolve_template(template).format(title=article.title, context=article.context).rstrip()


def article_columns(article: Article) -> dict[str, Any]:
    """An article as dataset columns: ``title``, ``context``, ``questions`` (``[{question, answer}]``) and
    ``article_id``."""
    return {
        "title": article.title,
        "context": article.context,
        "article_id": article.id,
        "questions": [{"question": q.question, "answer": q.answer} for q in article.questions],
    }


def article_from_columns(title: str, context: str, questions: Sequence[dict[str, str]]) -> Article:
    """The inverse of :func:`article_columns`."""
    return Article.from_dict({"title": title, "context": context, "questions": list(questions)})


def resolve_articles(articles: Sequence[Article] | str) -> list[Article]:
    """``articles`` as a list: Article objects as they are, or a :func:`seal_env.articles.load_articles` source."""
    return load_articles(articles) if isinstance(articles, str) else list(articles)


def completion_text(completion: Any) -> str:
    """A trainer's completion as text: a string, or a chat completion (a list of messages; the last one's
    content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else str(content)
    raise TypeError(f"a completion must be a str or a list of chat messages, got {type(completion).__name__}")


#: Info fields the integrations log per completion (``seal_<name>``) and as batch means (``seal/<name>``).
LOGGED = ("accuracy_gain", "f1_gain", "loglik_gain", "train_steps")


class RewardSource:
    """Rewards for (article, self-edit) pairs through an :class:`~seal_env.executors.Executor`.

    ``executor`` is an executor or a kind for :func:`seal_env.executors.make_executor` built from ``settings``:
    ``"subprocess"`` (the default: the environment lives in a child process), ``"auto"`` (worker processes; never
    this process, which runs the trainer), ``"pool"``, ``"inprocess"`` or ``"ray"``.
    The inner-loop seed of a request is ``derive_seed(seed, step, article id, index in the call)``. ``history``
    keeps every evaluated request as ``{"step", "article_id", "self_edit", "seed", "reward", "info"}`` (the last
    ``keep_history`` ones). Thread-safe: calls are serialised.
    """

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        executor: Executor | str = "subprocess",
        seed: int = 0,
        workers: int = 1,
        keep_history: int = 10_000,
    ):
        self.settings = dict(settings or {})
        self.seed, self.keep_history = seed, keep_history
        self._owns = isinstance(executor, str)
        self.executor = (
            make_executor(executor, self.settings, workers, in_process=False) if isinstance(executor, str) else executor
        )
        self.history: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def rewards(
        self,
        articles: Sequence[Article],
        self_edits: Sequence[str],
        step: int = 0,
        seeds: Sequence[int] | None = None,
    ) -> list[tuple[float, dict[str, Any]]]:
        """``(reward, info)`` for each (article, self-edit); an article's requests are evaluated together.
        ``seeds``: the inner-loop seeds (default: derived as above)."""
        if seeds is None:
            seeds = [derive_seed(self.seed, step, a.id, i) for i, a in enumerate(articles)]
        requests = [RewardRequest(a, e, s) for a, e, s in zip(articles, self_edits, seeds, strict=True)]
        with self._lock:
            results = self.executor.evaluate(requests)
            for req, (reward, info) in zip(requests, results, strict=True):
                self.history.append(
                    {
                        "step": step,
                        "article_id": req.article.id,
                        "self_edit": req.self_edit,
                        "seed": req.seed,
                        "reward": reward,
                        "info": info,
                    }
                )
            del self.history[: max(0, len(self.history) - self.keep_history)]
        return results

    def close(self) -> None:
        if self._owns:
            self.executor.close()
