"""The typed action, observation and state of ``seal/KnowledgeIncorporation-v0`` served through OpenEnv.

:class:`SealAction` is the self-edit; :class:`SealObservation` the article (title and passage) and, after a step,
the reward and the step's info; :class:`SealState` the session's episode and the server's counters. They are
OpenEnv's pydantic models (``openenv.core.env_server.types``): the server validates every action against
:class:`SealAction` and publishes all three schemas at ``GET /schema``. ``pip install "seal-env[serve]"``.
"""

from __future__ import annotations

from typing import Any

from openenv.core.env_server.types import Action, Observation, State
from pydantic import BaseModel, ConfigDict, Field, StrictStr


class SealAction(Action):
    """A self-edit: any text (cleaned and cut at ``max_action_chars`` by the environment; empty is valid)."""

    self_edit: StrictStr = Field(description="the self-edit the LoRA adapter is fine-tuned on")


class SealObservation(Observation):
    """The article of the episode; after a step also ``reward`` and ``done`` (OpenEnv's fields) and the info."""

    title: str = Field(default="", description="the article's title")
    context: str = Field(default="", description="the article's passage (never its questions)")
    article_id: str = Field(default="", description="the article's id (a hash of its title, passage and questions)")
    article_index: int = Field(default=-1, description="the article's index in the server's articles (-1: given)")
    n_questions: int = Field(default=0, description="how many questions the quiz has")
    info: dict[str, Any] = Field(
        default_factory=dict,
        description="after a step: the environment's info of the step (evaluate's, with the seconds per phase, "
        "cache_hit and batch_adapters)",
    )
    cache_hit: bool | None = Field(default=None, description="after a step: the reward came from the reward cache")
    batch_size: int | None = Field(
        default=None, description="after a step: the steps trained and quizzed in the same evaluate_many call"
    )
    batch: int | None = Field(default=None, description="after a step: the number of the server batch it was in")


class ServerCounters(BaseModel):
    """What the server has computed since it started (all sessions)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=0, description="steps answered with a reward")
    batches: int = Field(default=0, description="batches handed to the reward executor")
    evaluate_many_calls: int = Field(default=0, description="evaluate_many calls (one per article of a batch)")
    cache_hits: int = Field(default=0, description="steps answered from the reward cache")


class SealState(State):
    """The session's episode (OpenEnv's ``episode_id`` and ``step_count``, the article, whether it is done) and
    the server's counters."""

    article_id: str | None = Field(default=None, description="the episode's article (None before a reset)")
    article_index: int | None = Field(default=None, description="its index in the server's articles (-1: given)")
    done: bool = Field(default=True, description="the episode has had its step (or there is none yet)")
    server: ServerCounters = Field(default_factory=ServerCounters)
