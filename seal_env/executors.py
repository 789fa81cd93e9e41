"""Where rewards are computed. Agents and benchmarks hand a batch of (article, self-edit, seed) to an executor.

:class:`InProcessExecutor` evaluates in this process with one environment. Other executors (e.g. a Ray actor
pool) implement the same two methods and must return the same results for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from seal_env.articles import Article


@dataclass(frozen=True)
class RewardRequest:
    """One reward to compute: a self-edit for an article, trained with ``seed``."""

    article: Article
    self_edit: str
    seed: int = 0


class Executor(Protocol):
    def evaluate(self, requests: list[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
                 ) -> list[tuple[float, dict[str, Any]]]:
        """Rewards and infos, in the order of ``requests``; ``on_result(i, reward, info)`` as each one is known."""

    def close(self) -> None: ...


class InProcessExecutor:
    """Evaluates requests one after another with a single environment built from ``settings``."""

    def __init__(self, settings: dict[str, Any] | None = None, env: Any = None):
        if env is None:
            from seal_env.env import KnowledgeIncorporationEnv

            env = KnowledgeIncorporationEnv(**(settings or {}))
        self.env = env

    def evaluate(self, requests: Iterable[RewardRequest],
                 on_result: Callable[[int, float, dict], None] | None = None) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for i, req in enumerate(requests):
            reward, info = self.env.evaluate(req.article, req.self_edit, seed=req.seed)
            if on_result is not None:
                on_result(i, reward, info)
            out.append((reward, info))
        return out

    def close(self) -> None:
        self.env.close()
