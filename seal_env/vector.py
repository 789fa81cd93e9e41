"""A batched ``seal/KnowledgeIncorporation-v0``: ``num_envs`` single-step episodes whose rewards are computed in
one :meth:`Executor.evaluate` call (in-process, or in parallel on worker processes or a Ray actor pool).

Gymnasium's own vectorisation also works with the text spaces (``gymnasium.vector.SyncVectorEnv`` batches a
``Text`` space as a ``Tuple`` of texts, so observations are ``{"title": (t0, t1, ...), "context": (...)}`` and
actions a tuple/list of strings), but every sub-env loads its own model and the rewards are computed one after
another. :class:`KnowledgeIncorporationVectorEnv` holds no model itself (the executor does: one copy in-process,
or one per worker process or Ray actor) and evaluates all actions of a step as one batch.

It behaves like ``SyncVectorEnv`` with ``autoreset_mode=SAME_STEP`` (the right mode for one-step episodes): every
step terminates every sub-env, returns the *next* articles as observations and puts each finished episode's
observation and info in ``infos["final_obs"]`` / ``infos["final_info"]``. Sub-env ``i`` draws its articles and
training seeds exactly as a single env reset with ``seed + i`` does, so for the same seed its rewards equal
those of ``gym.make_vec(..., vectorization_mode="sync", vector_kwargs={"autoreset_mode": SAME_STEP})`` (bit for bit
at the same BLAS thread count; the default ``auto`` executor's worker processes may use another count than this
process, see :mod:`seal_env.executors`).
"""

from __future__ import annotations

from typing import Any

from seal_env.articles import Article, select_articles
from seal_env.config import SealConfig
from seal_env.executors import Executor, RewardRequest, make_executor
from seal_env.spaces import UnicodeText, article_space

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space


class KnowledgeIncorporationVectorEnv(VectorEnv):
    """``num_envs`` knowledge-incorporation episodes per step, rewards from one executor batch.

    Args:
        num_envs: episodes per step.
        executor: an :class:`~seal_env.executors.Executor` to use (not closed by :meth:`close`); default: one made
            by :func:`~seal_env.executors.make_executor` from ``executor_kind`` (default ``"auto"``: a pool of
            worker processes, one per core that memory allows, or this process), ``workers``, ``address`` and the
            settings (closed by :meth:`close`).
        **settings: the fields of :class:`~seal_env.config.SealConfig`, as for ``gym.make``.

    ``reset(options={"article_indices": [i0, i1, ...]})`` picks each sub-env's article (``{"article_index": i}``:
    the same for all); otherwise each is drawn at random. After a step, the next articles are random.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        executor: Executor | None = None,
        executor_kind: str = "auto",
        workers: int = 1,
        address: str | None = None,
        **settings: Any,
    ):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        self.cfg = SealConfig.from_kwargs(**settings)
        self.articles = select_articles(self.cfg)
        self.num_envs = num_envs
        self.single_observation_space = article_space()
        self.single_action_space = UnicodeText(max_length=self.cfg.max_action_chars)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._owns_executor = executor is None
        self.executor = (
            executor
            if executor is not None
            else make_executor(executor_kind, settings, workers=workers, address=address)
        )
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._current: list[tuple[Article, int]] = []

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(self.num_envs)]  # as SyncVectorEnv
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        for i, s in enumerate(seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i] = seeding.np_random(s)[0]
        options = options or {}
        if "article_indices" in options:
            picks: list[int | None] = [int(j) for j in options["article_indices"]]
            if len(picks) != self.num_envs:
                raise ValueError(f"{len(picks)} article_indices for {self.num_envs} envs")
        elif "article_index" in options:
            picks = [int(options["article_index"])] * self.num_envs
        else:
            picks = [None] * self.num_envs
        infos: dict[str, Any] = {}
        self._current = []
        for i, pick in enumerate(picks):
            infos = self._add_info(infos, self._pick(i, pick), i)
        return self._observations(), infos

    def step(self, actions: Any):
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"{len(actions)} actions for {self.num_envs} envs")
        if not self._current:
            raise RuntimeError("call reset() before step()")
        for i, action in enumerate(actions):  # before any seed is drawn: a failed step changes nothing
            if not isinstance(action, str):
                raise TypeError(f"a self-edit must be a str, got {type(action).__name__} (env {i})")
        requests = []
        for i, action in enumerate(actions):
            rng = self._rngs[i]
            assert rng is not None  # reset() seeded every sub-env before self._current was filled
            seed = int(rng.integers(2**31 - 1))  # as KnowledgeIncorporationEnv.step
            requests.append(RewardRequest(self._current[i][0], action, seed))
        results = self.executor.evaluate(requests)
        final_obs = self._observations()
        rewards = np.array([r for r, _ in results], dtype=np.float64)
        infos: dict[str, Any] = {}
        self._current = []
        for i, (_, info) in enumerate(results):
            infos = self._add_info(infos, {"final_obs": {k: v[i] for k, v in final_obs.items()}, "final_info": info}, i)
            infos = self._add_info(infos, self._pick(i, None), i)  # autoreset in the same step
        terminated = np.ones(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        return self._observations(), rewards, terminated, truncated, infos

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        self.executor.set_base_weights(weights)

    def close_extras(self, **kwargs: Any) -> None:
        if self._owns_executor:
            self.executor.close()

    # ----------------------------------------------------------------- internals
    def _pick(self, i: int, index: int | None) -> dict[str, Any]:
        if index is None:
            rng = self._rngs[i]
            assert rng is not None  # reset() seeds every sub-env before picking
            index = int(rng.integers(len(self.articles)))  # as KnowledgeIncorporationEnv.reset
        if not 0 <= index < len(self.articles):
            raise IndexError(f"article_index {index} out of range [0, {len(self.articles)})")
        article = self.articles[index]
        self._current.append((article, index))
        return {"article_id": article.id, "article_index": index, "n_questions": len(article.questions)}

    def _observations(self) -> dict[str, tuple[str, ...]]:
        return {
            "title": tuple(a.title for a, _ in self._current),
            "context": tuple(a.context for a, _ in self._current),
        }
