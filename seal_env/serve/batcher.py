"""Reward requests that arrive one at a time from concurrent callers, evaluated in batches.

A GRPO group is K rollouts of one prompt; their rewards are requested by K callers (server sessions, verifiers
rollouts) at about the same time. :class:`RequestBatcher` gathers the requests of one article that arrive within
``window_s`` seconds of the first (at most ``cap`` of them) and hands them to an executor's ``evaluate`` together,
so that they are trained and quizzed in one ``evaluate_many`` pass (seal_env.reward.pipeline). Requests that arrive
while a batch computes wait for it to finish and then go together too. Each caller gets its own reward, the same as an
``evaluate`` call of its own would give (up to float rounding: the batch shape changes how matrix products round).

The batcher is thread-safe: :meth:`RequestBatcher.submit` may be called from any thread and returns a
``concurrent.futures.Future``; the batches are computed by whichever thread runs :meth:`RequestBatcher.run` (the
main thread of ``python -m seal_env.serve``, a daemon thread from :meth:`RequestBatcher.start` elsewhere).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from seal_env.articles import Article
from seal_env.executors import RewardRequest, check_requests, group_requests

log = logging.getLogger("seal_env")

#: ``evaluate(requests, on_result)`` of an executor (:meth:`seal_env.executors.Executor.evaluate`).
EvaluateFn = Callable[[list[RewardRequest], Callable[[int, float, dict], None]], list[tuple[float, dict[str, Any]]]]


@dataclass(frozen=True)
class BatchedReward:
    """What a submitted request resolves to: its reward and info, the number of the batch (executor call) it was
    evaluated in, and how many requests shared its ``evaluate_many`` call (``group_size``)."""

    reward: float
    info: dict[str, Any]
    batch: int
    group_size: int


@dataclass
class BatcherStats:
    """Counters since the batcher started: requests evaluated, batches (executor calls), ``evaluate_many`` calls
    (article groups of the batches) and cache hits."""

    requests: int = 0
    batches: int = 0
    evaluate_many_calls: int = 0
    cache_hits: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Open:
    """An article's requests gathered so far and when their window closes."""

    deadline: float
    items: list[tuple[RewardRequest, Future[BatchedReward]]] = field(default_factory=list)


class RequestBatcher:
    """Gathers concurrent reward requests into batches (see the module docstring).

    ``evaluate``: an executor's ``evaluate``; ``group``: requests per ``evaluate_many`` call of that executor
    (:func:`seal_env.executors.group_size`); ``window_s``: how long the first request of an article waits for
    others; ``cap``: the most requests of one article gathered into one batch (default ``group``): a full batch goes
    at once.
    """

    def __init__(self, evaluate: EvaluateFn, group: int, window_s: float = 0.05, cap: int | None = None):
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive integer, got {group!r}")
        cap = group if cap is None else cap
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"cap must be a positive integer, got {cap!r}")
        if isinstance(window_s, bool) or not isinstance(window_s, int | float) or not 0 <= window_s < 3600:
            raise ValueError(f"window_s must be a number of seconds in [0, 3600), got {window_s!r}")
        self.evaluate, self.group, self.window_s, self.cap = evaluate, group, float(window_s), cap
        self.stats = BatcherStats()
        self._cv = threading.Condition()
        self._open: dict[tuple[Article, bool], _Open] = {}
        self._ready: list[list[tuple[RewardRequest, Future[BatchedReward]]]] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------------ callers
    def submit(self, request: RewardRequest) -> Future[BatchedReward]:
        """Queue ``request``; the future resolves to its :class:`BatchedReward` (or the error of its batch). A
        non-str self-edit raises TypeError here; a closed batcher raises RuntimeError."""
        check_requests([request])
        future: Future[BatchedReward] = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the reward batcher is closed")
            key = (request.article, request.adapt)
            pending = self._open.get(key)
            if pending is None:
                pending = self._open[key] = _Open(time.monotonic() + self.window_s)
            pending.items.append((request, future))
            if len(pending.items) >= self.cap:
                self._ready.append(self._open.pop(key).items)
            self._cv.notify_all()
        return future

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event | None = None) -> None:
        """Compute batches in this thread until :meth:`close` (or ``stop`` is set); then fail what is left."""
        while True:
            batch = self._next_batch(stop)
            if batch is None:
                break
            self._compute(batch)
        self._fail_pending()

    def start(self, name: str = "seal-reward-batcher") -> threading.Thread:
        """Run :meth:`run` in a daemon thread (started once)."""
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self.run, name=name, daemon=True)
                self._thread.start()
            return self._thread

    def close(self) -> None:
        """Stop after the batch being computed; requests not yet computed fail with RuntimeError."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _next_batch(self, stop: threading.Event | None) -> list[tuple[RewardRequest, Future[BatchedReward]]] | None:
        """Every request whose window closed (or whose article's batch is full), waiting for one; None when closed."""
        with self._cv:
            while True:
                if self._closed or (stop is not None and stop.is_set()):
                    return None
                now = time.monotonic()
                for key in [k for k, p in self._open.items() if p.deadline <= now]:
                    self._ready.append(self._open.pop(key).items)
                if self._ready:
                    batch = [item for items in self._ready for item in items]
                    self._ready.clear()
                    return batch
                wait = min((p.deadline for p in self._open.values()), default=now + 0.5) - now
                self._cv.wait(timeout=min(max(wait, 0.0), 0.5))  # short waits: a stop event or a signal is seen

    def _compute(self, batch: list[tuple[RewardRequest, Future[BatchedReward]]]) -> None:
        """One executor call for ``batch``; each future gets its result as soon as it is known."""
        live = [(req, fut) for req, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        requests = [req for req, _ in live]
        groups = group_requests(requests, self.group)
        size = {i: len(g) for g in groups for i in g}
        with self._cv:
            self.stats.batches += 1
            self.stats.evaluate_many_calls += len(groups)
            number = self.stats.batches
        t0 = time.perf_counter()
        done: set[int] = set()

        def on_result(i: int, reward: float, info: dict) -> None:
            if i in done:
                return
            done.add(i)
            with self._cv:
                self.stats.requests += 1
                self.stats.cache_hits += bool(info.get("cache_hit"))
            live[i][1].set_result(BatchedReward(float(reward), info, number, size[i]))

        try:
            results = self.evaluate(requests, on_result)
            for i, (reward, info) in enumerate(results):
                on_result(i, reward, info)
        except BaseException as err:  # the batch's callers get the error; the loop goes on
            for i, (_, fut) in enumerate(live):
                if i not in done:
                    fut.set_exception(err)
            if not isinstance(err, Exception):
                raise
            log.warning("seal-env: reward batch %d failed: %s: %s", number, type(err).__name__, err)
            return
        log.info(
            "seal-env: reward batch %d: %d request(s) in %d evaluate_many call(s) (%s), %.2f s",
            number,
            len(requests),
            len(groups),
            ", ".join(str(len(g)) for g in groups),
            time.perf_counter() - t0,
        )

    def _fail_pending(self) -> None:
        with self._cv:
            self._closed = True
            left = [item for p in self._open.values() for item in p.items] + [i for b in self._ready for i in b]
            self._open.clear()
            self._ready.clear()
        for _, fut in left:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError("the reward batcher was closed before this request was computed"))
