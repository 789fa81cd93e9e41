"""The agent interface: a :class:`Policy` proposes self-edits, an :class:`Agent` learns from their rewards.

An observation is what ``seal/KnowledgeIncorporation-v0`` shows: ``{"title": str, "context": str}``. A policy
answers a batch of observations with ``k`` self-edits each; an agent owns a policy and improves it from a batch of
:class:`Experience` (observation, self-edit, reward, info). :func:`agents.run.train` drives any agent through
rounds of sampling, rewards from an executor, learning and held-out evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from seal_env.articles import Article
from seal_env.seeding import derive_seed  # noqa: F401  (part of the agent interface)
from seal_env.spaces import observation  # noqa: F401  (part of the agent interface: an Article as observed)

Observation = dict[str, str]  #: ``{"title": ..., "context": ...}``, as returned by the env's ``reset``


@runtime_checkable
class Policy(Protocol):
    """Proposes self-edits: ``propose(observations, k, seed)[i][j]`` is the j-th self-edit for observation i.

    The same (observation, j, seed) must give the same self-edit, whatever else is in the batch, so that runs can
    be resumed and policies compared on equal terms.
    """

    def propose(self, observations: Sequence[Observation], k: int = 1, seed: int = 0) -> list[list[str]]: ...


@dataclass
class Experience:
    """One evaluated self-edit: the article, the self-edit, the reward and the environment's info."""

    article: Article
    self_edit: str
    reward: float
    info: dict[str, Any] = field(default_factory=dict)
    k: int = 0  #: index of this self-edit among the article's samples

    @property
    def observation(self) -> Observation:
        return observation(self.article)


@runtime_checkable
class Agent(Protocol):
    """A learning algorithm: it samples with ``policy`` and improves it from rewarded self-edits.

    ``learn`` gets every self-edit of a round (all ``k`` samples of every article, article-major) and returns
    statistics to log (floats). ``state``/``load_state`` give and restore the policy's weights (plain mlx-lm
    names); they are the round checkpoints, and a restored state must sample exactly as before.
    """

    @property
    def policy(self) -> Policy: ...  # read-only here, so an agent may hold a more specific policy

    def learn(self, batch: list[Experience], seed: int) -> dict[str, float]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, weights: dict[str, Any]) -> None: ...
