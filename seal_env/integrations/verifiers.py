"""seal-env in verifiers: one single-turn task per article, its reward the SEAL inner loop's.

    from seal_env.integrations.verifiers import load_environment

    env = load_environment(model="smollm2-135m", epochs=1)   # SealConfig settings + the options below
    tasks = list(env.taskset)                                 # one task per article

``load_environment(**settings)`` takes the environment settings (the fields of :class:`seal_env.config.SealConfig`)
and these options: ``articles`` (a :func:`seal_env.articles.load_articles` source, default ``"bundled"``),
``template`` (the self-edit prompt, default ``"implications"``), ``executor`` (where rewards are computed:
``"subprocess"``, the default, ``"inprocess"`` or ``"ray"``), ``seed`` (base of the inner-loop seeds) and
``batch_window_ms`` (how long a reward waits for other rollouts of its article, default
:data:`DEFAULT_BATCH_WINDOW_MS`).

The environment (verifiers' ``verifiers.v1`` API; verifiers >= 0.4, else importing this module raises ImportError
saying so) is a ``SingleAgentEnv`` over :class:`SealTaskset`, taskset id :data:`TASKSET_ID`. A task's data holds the
prompt (the SEAL prompt as the user message) and the article's ``title``, ``context``, ``questions`` and
``article_id``; its ``seal_reward`` scores the trace's ``last_reply`` as the self-edit, records the gains as metrics
``seal_<name>`` and the whole info in ``trace.info["seal"]``. The agent is a single chat turn (the ``null`` harness,
``max_turns=1``, a local runtime). The taskset is found by id like any verifiers plugin: importing this module
registers it as the module ``seal_env_verifiers`` in this process, and the installed top-level module
``seal_env_verifiers`` (seal-env's ``py-modules``) is this module in a fresh one, so ``vf.load_environment``,
``resolve_env_config``, replays and verifiers' CLI (``vf-eval seal-env-verifiers``) find it by id.

Batching: the rollouts of one article are scored together. A reward waits up to ``batch_window_ms`` for other
rollouts of its article (and any that arrive while a batch computes wait for it), then all of them are trained and
quizzed in one batched call (:class:`seal_env.serve.batcher.RequestBatcher`, up to ``max_batch_adapters //
eval_times`` per call), as TRL's reward function does with a step's completions.

Processes: verifiers' event loop never waits for an inner loop: rewards are computed in one worker thread per
settings (the batcher's), through a :class:`~seal_env.integrations.common.RewardSource` (started on first use,
closed at exit or by :func:`close_reward_sources`). With the default ``executor="subprocess"`` the environment
(mlx and its model) lives in a child process (:mod:`seal_env.executors.child_process`); ``"ray"`` uses one Ray actor,
``"inprocess"`` this process. The inner-loop seed of a rollout is ``derive_seed(seed, 0, article_id, 0)``: every
rollout of an article trains with the same seed, so a group's rewards differ by their self-edits only and a
re-scored trace gets its reward again. It is in ``RewardSource.history`` and ``info["seed"]``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

from seal_env.articles import Article
from seal_env.config import SealConfig
from seal_env.executors import RewardRequest, group_size
from seal_env.integrations.common import (
    LOGGED,
    RewardSource,
    article_columns,
    article_from_columns,
    prompt_text,
    resolve_articles,
)
from seal_env.prompts import resolve_template
from seal_env.seeding import derive_seed
from seal_env.serve.batcher import RequestBatcher

NEEDS_VERIFIERS = 'seal_env.integrations.verifiers needs verifiers >= 0.4: pip install -U "seal-env[verifiers]"'
try:
    import verifiers
except ImportError as err:
    raise ImportError(NEEDS_VERIFIERS) from err
if tuple(map(int, re.findall(r"\d+", verifiers.__version__)[:2])) < (0, 4):  # older ones have no v1 SingleAgentEnv
    raise ImportError(f"{NEEDS_VERIFIERS} (this is verifiers {verifiers.__version__})")

import verifiers.v1 as vf  # noqa: E402
from pydantic import field_validator  # noqa: E402

__all__ = [
    "TASKSET_ID",
    "SealData",
    "SealTask",
    "SealTaskConfig",
    "SealTaskset",
    "SealTasksetConfig",
    "close_reward_sources",
    "load_environment",
    "reward_source",
]

TASKSET_ID = "seal-env-verifiers"  #: the taskset's verifiers id; verifiers imports it as ``seal_env_verifiers``
EXECUTORS = ("subprocess", "inprocess", "ray")
#: How long a reward waits for other rollouts of its article to be scored with (milliseconds).
DEFAULT_BATCH_WINDOW_MS = 100.0

_sources: dict[str, RewardSource] = {}
_batchers: dict[str, RequestBatcher] = {}
_sources_lock = threading.Lock()


def reward_source(settings: dict[str, Any], executor: str = "subprocess", seed: int = 0) -> RewardSource:
    """This process's reward source for ``settings`` (blocking: the first call starts it)."""
    key = json.dumps([settings, executor, seed], sort_keys=True)
    with _sources_lock:
        if key not in _sources:
            _sources[key] = RewardSource(settings, executor, seed)
        return _sources[key]


def reward_batcher(
    settings: dict[str, Any],
    executor: str = "subprocess",
    seed: int = 0,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
) -> RequestBatcher:
    """This process's batcher for ``settings``: its thread evaluates batches through :func:`reward_source`."""
    key = json.dumps([settings, executor, seed, batch_window_ms], sort_keys=True)
    with _sources_lock:
        if key not in _batchers:

            def evaluate(requests: list[RewardRequest], on_result: Callable) -> list[tuple[float, dict[str, Any]]]:
                source = reward_source(settings, executor, seed)  # started by the first batch, in this thread
                articles, edits = [r.article for r in requests], [r.self_edit for r in requests]
                return source.rewards(articles, edits, seeds=[r.seed for r in requests])

            group = group_size(SealConfig.from_kwargs(**settings))
            _batchers[key] = RequestBatcher(evaluate, group, batch_window_ms / 1000)
            _batchers[key].start()
        return _batchers[key]


def close_reward_sources() -> None:
    with _sources_lock:
        for batcher in _batchers.values():
            batcher.close()
        _batchers.clear()
        for source in _sources.values():
            source.close()
        _sources.clear()


atexit.register(close_reward_sources)


async def score_self_edit(
    article: Article,
    self_edit: str,
    settings: dict[str, Any],
    executor: str = "subprocess",
    seed: int = 0,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
) -> tuple[float, dict[str, Any]]:
    """``(reward, info)`` of one self-edit, computed in the reward thread (with the other rollouts of its article
    that arrive within the window) while the event loop goes on."""
    request = RewardRequest(article, self_edit, derive_seed(seed, 0, article.id, 0))
    result = await asyncio.wrap_future(reward_batcher(settings, executor, seed, batch_window_ms).submit(request))
    return result.reward, result.info


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` if they are valid environment settings; else TypeError (unknown names) or ValueError."""
    SealConfig.from_kwargs(**settings)
    return settings


class SealTaskConfig(vf.TaskConfig):
    """How rewards are computed (``--env.taskset.task.*``)."""

    settings: dict[str, Any] = {}  #: environment settings (SealConfig fields)
    executor: Literal["subprocess", "inprocess", "ray"] = "subprocess"
    seed: int = 0
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS  #: how long a reward waits for its article's other rollouts

    @field_validator("batch_window_ms")
    @classmethod
    def _check_window(cls, value: float) -> float:
        if not 0 <= value < 3_600_000:
            raise ValueError(f"batch_window_ms must be in [0, 3600000), got {value!r}")
        return value

    @field_validator("settings")
    @classmethod
    def _check_settings(cls, settings: dict[str, Any]) -> dict[str, Any]:
        try:
            return check_settings(settings)
        except TypeError as err:  # pydantic reports ValueErrors only
            raise ValueError(str(err)) from None


class SealTasksetConfig(vf.TasksetConfig):
    """Which articles and which prompt (``--env.taskset.*``)."""

    id: str = TASKSET_ID
    articles: str = "bundled"  #: a load_articles source
    template: str = "implications"  #: a SEAL template name or a template with {title} and {context}
    task: SealTaskConfig = SealTaskConfig()

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str) -> str:
        resolve_template(template)
        return template


class SealData(vf.TaskData):
    """A task's data: the prompt (TaskData) and the article."""

    title: str
    context: str
    questions: list[dict[str, str]]
    article_id: str

    @property
    def article(self) -> Article:
        return article_from_columns(self.title, self.context, self.questions)


class SealTask(vf.Task[SealData, vf.State, SealTaskConfig]):
    """One article; the reply is a self-edit, rewarded by the SEAL inner loop."""

    @vf.reward
    async def seal_reward(self, trace: vf.Trace) -> float:
        cfg = self.config
        reward, info = await score_self_edit(
            self.data.article, trace.last_reply, cfg.settings, cfg.executor, cfg.seed, cfg.batch_window_ms
        )
        trace.info["seal"] = info
        trace.record_metrics({f"seal_{name}": float(info[name]) for name in LOGGED if name in info})
        return reward


class SealTaskset(vf.Taskset[SealTask, SealTasksetConfig]):
    """A task per article of ``config.articles`` (loaded when the taskset is built)."""

    def __init__(self, config: SealTasksetConfig):
        super().__init__(config)
        self.articles = resolve_articles(config.articles)
        if not self.articles:
            raise ValueError(f"no articles in {config.articles!r}")

    def load(self) -> Iterator[SealTask]:
        for article in self.articles:
            data = SealData(
                id=article.id,
                name=article.title,
                prompt=prompt_text(article, self.config.template),
                **article_columns(article),
            )
            yield SealTask(data, self.config.task)


# verifiers imports a taskset by id (a top-level module name); this module is that module.
sys.modules.setdefault(TASKSET_ID.replace("-", "_"), sys.modules[__name__])


def load_environment(
    articles: str = "bundled",
    template: str = "implications",
    executor: str = "subprocess",
    seed: int = 0,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    **settings: Any,
) -> Any:
    """A verifiers ``SingleAgentEnv`` for SEAL (see the module docstring); ``settings`` are SealConfig fields.

    An unknown setting raises TypeError (listing the valid ones), a bad value, executor, template or article source
    ValueError; no reward source starts here.
    """
    check_settings(settings)
    resolve_template(template)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}: use one of {list(EXECUTORS)}")
    task = SealTaskConfig(settings=settings, executor=executor, seed=seed, batch_window_ms=batch_window_ms)
    config = vf.SingleAgentEnvConfig(
        taskset=SealTasksetConfig(articles=articles, template=template, task=task),
        agent=vf.AgentConfig(harness={"id": "null"}, runtime=vf.SubprocessConfig(), max_turns=1),
    )
    return vf.load_environment(config)
