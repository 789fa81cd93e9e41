"""The Ray executor: a pool of Ray actors, each holding one environment (one model copy, loaded once), that
evaluates groups of reward requests in parallel on this machine or a Ray cluster; a dead worker, or one that gives no
answer within ``request_timeout``, is replaced and its work retried (``max_retries`` per request).
``pip install "seal-env[ray]"``; ray is imported when one is built.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from seal_env.articles import Article
from seal_env.executors.base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    THREAD_ENV_VARS,
    RewardRequest,
    blas_threads,
    check_max_retries,
    check_request_timeout,
    check_requests,
    group_requests,
    group_size,
    weights_to_numpy,
)


class RewardWorker:
    """One Ray actor's state: a :class:`~seal_env.envs.knowledge.KnowledgeIncorporationEnv` (its own model copy).

    Plain class; :class:`RayExecutor` wraps it with ``ray.remote``. Usable directly (in-process) for debugging.
    """

    def __init__(
        self, settings: dict[str, Any], base_weights: dict[str, Any] | None = None, threads: int | None = None
    ):
        if threads is not None:  # before OpenBLAS/mlx load in this process (a fresh Ray worker has neither)
            for name in THREAD_ENV_VARS:
                os.environ[name] = str(threads)
        from seal_env.envs.knowledge import KnowledgeIncorporationEnv

        if threads is not None:
            blas_threads(threads)  # and in case OpenBLAS was already loaded
        self.env = KnowledgeIncorporationEnv(**settings)
        if base_weights is not None:
            self.set_base_weights(base_weights)

    def ready(self) -> int:
        """The worker's process id, once the model is loaded."""
        return os.getpid()

    def blas_threads(self) -> int | None:
        """OpenBLAS threads in this worker (None if OpenBLAS is not loaded)."""
        return blas_threads()

    def cpu_seconds(self) -> float:
        """CPU time used by this worker process so far (all its threads), for benchmarks."""
        return time.process_time()

    def evaluate(self, article: Article, self_edit: str, seed: int) -> tuple[float, dict[str, Any]]:
        return self.env.evaluate(article, self_edit, seed=seed)

    def evaluate_many(
        self, article: Article, self_edits: list[str], seeds: list[int], adapt: bool = True
    ) -> list[tuple[float, dict[str, Any]]]:
        return self.env.evaluate_many(article, self_edits, seeds, adapt=adapt)

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        import mlx.core as mx

        self.env.set_base_weights({k: mx.array(v) for k, v in weights.items()})


def _ray_death_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the worker (process or node) is gone", not "the request itself failed"."""
    ex = ray.exceptions
    names = (
        "RayActorError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "LocalRayletDiedError",
    )
    return tuple(getattr(ex, n) for n in names if hasattr(ex, n))


class RayExecutor:
    """A pool of ``workers`` Ray actors, each loading the model once, evaluating requests in parallel.

    Args:
        settings: environment settings (the fields of :class:`~seal_env.config.SealConfig`), as for ``gym.make``.
        workers: number of actors (model copies).
        address: a Ray cluster address (``"auto"``, ``"ray://head:10001"``, ...); ``None`` starts a local Ray
            with ``max(cpu_count, workers * cpus_per_worker)`` CPUs. If Ray is already initialised it is used
            as is (and left running on :meth:`close`).
        cpus_per_worker: CPUs each actor reserves and math-library threads it uses (``OMP_NUM_THREADS`` /
            ``OPENBLAS_NUM_THREADS``). Default: ``cpu_count // workers`` locally (1 per worker on 2 cores with
            2 workers), 1 on a cluster.
        max_retries: how many times one request may be resubmitted after the worker running it was lost (died, or
            killed after ``request_timeout``).
        request_timeout: seconds (None: no limit) an actor may take for one request -- one batched group, i.e. one
            ``evaluate_many`` call --, for its start (model load) and for a ``set_base_weights`` call. An actor over
            the limit is taken as hung: it is killed (``ray.kill(no_restart=True)``) and replaced, and its request
            retried as if it had died; if the first workers do not start in time, the constructor raises
            ``RuntimeError``. Choose it longer than one group's evaluation and a model load.
        ray_init_kwargs: extra arguments for ``ray.init`` (e.g. ``runtime_env`` to ship the code to a cluster).

    ``request_timeout`` and ``max_retries`` are read at each call (changing them between calls takes effect).

    Scheduling: each actor runs one request at a time; an idle actor takes the next pending request, preferring
    one for an article it has already seen (its baseline quiz is cached there). If an actor dies (process
    killed, node lost) or hangs (no answer within ``request_timeout``: killed), its unfinished request goes back to
    the front of the queue and is taken by a live actor, and a replacement actor is started (with the current base
    weights). ``on_result`` is called exactly once per request, and every request's result is the one a live worker
    returned; a request whose worker was lost more than ``max_retries`` times raises ``RuntimeError`` (naming the
    time limit if it was hit; after starting that worker's replacement, so a later call finds the pool whole). A
    replacement that fails to start (or to start in time) more than ``max_retries`` times in a row is given up. A
    request that itself raises (e.g. a non-str self-edit) propagates its exception, as in-process. ``stats`` counts
    results ``completed``, lost requests (``retried``, each time), started replacements (``respawned``) and
    ``timeouts`` (requests, starts and ``set_base_weights`` calls over the limit).
    """

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        workers: int = 1,
        address: str | None = None,
        *,
        cpus_per_worker: int | None = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        ray_init_kwargs: dict[str, Any] | None = None,
    ):
        try:
            import ray
        except ImportError as err:  # pragma: no cover - depends on the installation
            raise ImportError('the Ray executor needs ray: pip install "seal-env[ray]" (or "ray>=2.30")') from err
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        from seal_env.config import SealConfig

        self.cfg = SealConfig.from_kwargs(**(settings or {}))  # validate here, not in each actor
        self.settings = self.cfg.to_dict()
        self.workers, self.max_retries = workers, check_max_retries(max_retries)
        self.request_timeout = check_request_timeout(request_timeout)
        ncpu = os.cpu_count() or 1
        if cpus_per_worker is None:
            cpus_per_worker = max(1, ncpu // workers) if address is None else 1
        self.cpus_per_worker = int(cpus_per_worker)
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
            if address is None:
                kwargs["num_cpus"] = max(ncpu, workers * self.cpus_per_worker)
            else:
                kwargs["address"] = address
            kwargs.update(ray_init_kwargs or {})
            ray.init(**kwargs)
            self._owns_ray = True
        self._death = _ray_death_errors(ray)
        # Threads are capped inside the worker (RewardWorker sets THREAD_ENV_VARS and OpenBLAS's count): a
        # runtime_env with env_vars would do it too but needs dedicated worker processes (slower actor starts).
        self._actor_cls = ray.remote(RewardWorker).options(
            num_cpus=self.cpus_per_worker, max_restarts=0, max_task_retries=0
        )
        self._weights_ref: Any = None  # current base weights in the object store (for replacement actors)
        self.stats = {"completed": 0, "retried": 0, "respawned": 0, "timeouts": 0}
        self._actors: list[Any] = [self._spawn() for _ in range(workers)]
        self._seen: list[set[str]] = [set() for _ in range(workers)]
        self._start_failures = [0] * workers
        try:  # models loaded
            self._pids: list[int | None] = list(
                ray.get([a.ready.remote() for a in self._actors], timeout=self.request_timeout)
            )
        except ray.exceptions.GetTimeoutError as err:
            self.close()
            raise RuntimeError(f"the Ray workers did not start within {self._limit()}") from err

    def _limit(self) -> str:
        return f"request_timeout={self.request_timeout:g} s"

    def _spawn(self) -> Any:
        return self._actor_cls.remote(self.settings, self._weights_ref, self.cpus_per_worker)

    def _replace(self, slot: int) -> bool:
        """Start a new actor in a dead actor's slot; False (slot given up) after ``max_retries`` failed starts."""
        try:
            self._ray.kill(self._actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self._seen[slot], self._pids[slot] = set(), None
        if self._start_failures[slot] > self.max_retries:
            self._actors[slot] = None
            return False
        self._actors[slot] = self._spawn()
        self.stats["respawned"] += 1
        return True

    @property
    def actors(self) -> list[Any]:
        """The current actor handles (one per worker slot; None for a slot given up)."""
        return list(self._actors)

    def worker_pids(self) -> list[int | None]:
        """Process id of each worker slot's actor (None while a replacement is starting)."""
        return list(self._pids)

    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        ray = self._ray
        requests = list(requests)
        check_requests(requests)  # fail before anything runs, as the in-process executor would
        results: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)
        # one actor call each; smaller groups when there are too few requests to keep every worker busy
        size = min(group_size(self.cfg), max(1, -(-len(requests) // max(1, len(self._actors)))))
        groups = group_requests(requests, size)
        pending: deque[int] = deque(range(len(groups)))
        failures = [0] * len(groups)
        timeouts = [0] * len(groups)
        # ref -> (kind "task"|"ready", slot, group index, deadline: time.monotonic() at which it is taken as hung)
        inflight: dict[Any, tuple[str, int, int, float]] = {}
        limit = math.inf if self.request_timeout is None else self.request_timeout

        def submit(ref: Any, kind: str, slot: int, g: int) -> None:
            inflight[ref] = (kind, slot, g, time.monotonic() + limit)

        live = [s for s, actor in enumerate(self._actors) if actor is not None]
        idle = [s for s in live if self._pids[s] is not None]
        for s in live:
            if self._pids[s] is None:  # a replacement started by an earlier call or by set_base_weights
                submit(self._actors[s].ready.remote(), "ready", s, -1)

        def assign() -> None:
            while idle and pending:
                slot = idle.pop(0)
                seen = self._seen[slot]
                pick = next((g for g in pending if requests[groups[g][0]].article.id in seen), pending[0])
                pending.remove(pick)
                first = requests[groups[pick][0]]
                seen.add(first.article.id)
                ref = self._actors[slot].evaluate_many.remote(
                    first.article,
                    [requests[i].self_edit for i in groups[pick]],
                    [requests[i].seed for i in groups[pick]],
                    first.adapt,
                )
                submit(ref, "task", slot, pick)

        def lose(kind: str, slot: int, g: int, timed_out: bool, err: BaseException | None) -> None:
            """The worker in ``slot`` died or hung: replace it; a task's group goes back to the queue."""
            if timed_out:
                self.stats["timeouts"] += 1
            if kind == "task":
                failures[g] += 1
                timeouts[g] += timed_out
                self.stats["retried"] += 1
                if failures[g] > self.max_retries:
                    self._replace(slot)  # not left in its slot looking alive: the pool stays usable
                    raise RuntimeError(self._given_up(groups[g], failures[g], timeouts[g])) from err
                pending.appendleft(g)
            else:
                self._start_failures[slot] += 1
            if self._replace(slot):
                submit(self._actors[slot].ready.remote(), "ready", slot, -1)

        assign()
        while pending or any(entry[0] == "task" for entry in inflight.values()):
            if not inflight:
                n_left = sum(len(groups[g]) for g in pending)
                raise RuntimeError(f"no live Ray workers left; {n_left} request(s) not evaluated")
            first_deadline = min(entry[3] for entry in inflight.values())
            wait = None if first_deadline == math.inf else max(0.0, first_deadline - time.monotonic())
            done, _ = ray.wait(list(inflight), num_returns=1, timeout=wait)
            now = time.monotonic()
            hung = [ref for ref, entry in inflight.items() if entry[3] <= now and ref not in done]
            for ref in done:
                kind, slot, g, _ = inflight.pop(ref)
                try:
                    value = ray.get(ref)
                except self._death as err:
                    lose(kind, slot, g, False, err)
                    continue
                if kind == "ready":
                    self._pids[slot], self._start_failures[slot] = value, 0
                    idle.append(slot)
                    continue
                idle.append(slot)
                for i, (reward, info) in zip(groups[g], value, strict=True):
                    results[i] = (reward, info)
                    self.stats["completed"] += 1
                    if on_result is not None:
                        on_result(i, reward, info)
            for ref in hung:  # past its deadline, with no answer
                kind, slot, g, _ = inflight.pop(ref)
                lose(kind, slot, g, True, None)
            assign()
        return cast(list[tuple[float, dict[str, Any]]], results)  # every group completed (or we raised)

    def _given_up(self, group: list[int], failures: int, timeouts: int) -> str:
        """Why the requests ``group`` were given up: their worker was lost ``failures`` times, ``timeouts`` hung."""
        lost = []
        if timeouts:
            lost.append(f"gave no result within {self._limit()} {timeouts} time(s) (killed)")
        if failures > timeouts:
            lost.append(f"died {failures - timeouts} time(s)")
        return f"requests {group}: their worker {' and '.join(lost)} (max_retries={self.max_retries})"

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Put ``weights`` in the object store once and load them in every actor (and in future replacements); an
        actor that dies or takes longer than ``request_timeout`` is replaced (and starts with these weights)."""
        ray = self._ray
        self._weights_ref = ray.put(weights_to_numpy(weights))  # replacement actors start with these
        calls = {s: a.set_base_weights.remote(self._weights_ref) for s, a in enumerate(self._actors) if a is not None}
        if not calls:
            return
        _, late = ray.wait(list(calls.values()), num_returns=len(calls), timeout=self.request_timeout)
        for slot, ref in calls.items():
            self._seen[slot].clear()  # baselines were dropped with the old weights
            if ref in late:  # hung: replaced like a dead worker
                self.stats["timeouts"] += 1
            else:
                try:
                    ray.get(ref)
                    continue
                except self._death:
                    pass
            self._start_failures[slot] += 1
            self._replace(slot)

    def close(self) -> None:
        ray = self._ray
        for actor in filter(None, self._actors):
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
