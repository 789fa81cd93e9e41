"""A pool of reward worker processes on this machine: :class:`PoolExecutor`.

Each worker is a :class:`~seal_env.executors.child_process.SubprocessExecutor` (a child process holding one
environment, i.e. one model copy, with its own math-library thread count). Groups of an article's requests go to
whichever worker is free, so ``workers`` processes evaluate ``workers`` groups at once. Without Ray: the children are
plain ``python -m seal_env.executors.child_process`` processes, and each one's failures (death, hang, retries) are
handled by its SubprocessExecutor.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, TypeVar

from seal_env.executors.base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    AutoSetup,
    RewardRequest,
    check_max_retries,
    check_request_timeout,
    check_requests,
    group_requests,
    group_size,
    usable_cores,
    weights_to_numpy,
)
from seal_env.executors.child_process import SubprocessExecutor

T = TypeVar("T")


def _in_threads(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run ``calls`` in a thread each; each one's value, or the exception it raised."""
    out: list[T | BaseException] = [RuntimeError("not run")] * len(calls)

    def run(i: int) -> None:
        try:
            out[i] = calls[i]()
        except BaseException as err:  # noqa: BLE001 - returned to the caller's thread
            out[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class PoolExecutor:
    """``workers`` child processes, each holding one environment (``settings``) and using ``threads`` math-library
    threads, evaluating groups of requests in parallel.

    Args:
        settings: environment settings (the fields of :class:`~seal_env.config.SealConfig`), checked here.
        workers: child processes (model copies), started in parallel; the constructor returns once every model is
            loaded (if one fails to start, the others are closed and its error raised).
        threads: math-library threads of each child (``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``). Default:
            the cores this process may use divided among the workers (at least 1).
        request_timeout, max_retries: as for :class:`~seal_env.executors.child_process.SubprocessExecutor`, per worker:
            a child that dies or gives no answer within ``request_timeout`` (one group, a model load, a
            ``set_base_weights`` call) is replaced and its unfinished requests of the group sent again.

    :meth:`evaluate` groups the requests by article as :class:`~seal_env.executors.InProcessExecutor` does
    (``max_batch_adapters // eval_times`` requests a group). Only if that gives fewer groups than workers are the
    groups cut smaller (``ceil(len(requests) / workers)`` requests at most), so that every worker gets work. A
    thread per worker takes the next group from a shared queue, preferring one for an article that worker has
    already seen (its baseline quiz is cached in that child), and has its child evaluate it. Results come back in
    the order of ``requests``; ``on_result(i, reward, info)`` is called exactly once per request, in the caller's
    thread, as each group's results arrive.

    Same results: with the same groups, a child's rewards and infos are bit for bit those of an
    :class:`~seal_env.executors.InProcessExecutor` with the same settings at the same BLAS thread count (groups cut
    smaller for a few requests may round otherwise, in about the 7th significant digit).

    Errors: a request that itself fails (a non-str self-edit) raises TypeError before anything is sent. If a
    worker's group fails (an error in its child's environment, or a child lost more than ``max_retries`` times in
    a row), no worker takes a new group; the others finish theirs (their results are delivered) and the first
    error is raised. If the caller's thread is interrupted (KeyboardInterrupt) or ``on_result`` raises, no result
    is delivered after that: the children still evaluating are killed and the exception raised once every worker
    thread has stopped. In every case the pool stays usable: a killed or lost child is replaced at the next call.
    ``stats`` sums the workers' counts (``completed``, ``retried``, ``respawned``, ``timeouts``).
    """

    #: What :func:`seal_env.executors.make_executor` ``("auto")`` picked, when it built this executor.
    setup: AutoSetup | None = None

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        workers: int = 2,
        threads: int | None = None,
        *,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ):
        from seal_env.config import SealConfig

        self.cfg = SealConfig.from_kwargs(**(settings or {}))  # fail here, before any child starts
        self.settings = self.cfg.to_dict()
        self.workers = _positive("workers", workers)
        self.threads = max(1, usable_cores() // workers) if threads is None else _positive("threads", threads)
        timeout, retries = check_request_timeout(request_timeout), check_max_retries(max_retries)
        self._closed = False
        started = _in_threads(
            [
                lambda: SubprocessExecutor(
                    self.settings, threads=self.threads, request_timeout=timeout, max_retries=retries
                )
                for _ in range(workers)
            ]
        )
        self._workers = [w for w in started if isinstance(w, SubprocessExecutor)]
        failed = [err for err in started if isinstance(err, BaseException)]
        if failed:
            self.close()
            raise failed[0]
        self._seen: list[set[str]] = [set() for _ in range(workers)]

    def worker_pids(self) -> list[int | None]:
        """Each worker's child process id (None while it has none: after a loss, until its next call)."""
        return [w.pid for w in self._workers]

    def worker_stats(self) -> list[dict[str, int]]:
        """Each worker's ``stats`` (copies)."""
        return [dict(w.stats) for w in self._workers]

    @property
    def stats(self) -> dict[str, int]:
        """The workers' ``stats`` summed."""
        total = {"completed": 0, "retried": 0, "respawned": 0, "timeouts": 0}
        for stats in self.worker_stats():
            for key, value in stats.items():
                total[key] = total.get(key, 0) + value
        return total

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the reward pool executor is closed")

    def _groups(self, requests: list[RewardRequest]) -> list[list[int]]:
        """Whole article groups; cut smaller only when there are fewer groups than workers."""
        groups = group_requests(requests, group_size(self.cfg))
        if len(groups) < self.workers:
            groups = group_requests(requests, min(group_size(self.cfg), math.ceil(len(requests) / self.workers)))
        return groups

    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        self._check_open()
        requests = list(requests)
        check_requests(requests)
        out: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)
        groups = self._groups(requests)
        pending = deque(range(len(groups)))
        lock = threading.Lock()
        stop = threading.Event()
        busy = [False] * self.workers
        # ("result", i, reward, info) | ("error", exception) | ("done", worker)
        events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()

        def take(w: int) -> list[int] | None:
            """The next group for worker ``w`` (one of an article it has seen, if any), or None."""
            with lock:
                if stop.is_set() or not pending:
                    return None
                seen = self._seen[w]
                pick = next((g for g in pending if requests[groups[g][0]].article.id in seen), pending[0])
                pending.remove(pick)
                busy[w] = True
                return groups[pick]

        def deliver(group: list[int], j: int, reward: float, info: dict[str, Any]) -> None:
            events.put(("result", group[j], reward, info))

        def work(w: int) -> None:
            worker = self._workers[w]
            try:
                while (group := take(w)) is not None:
                    pid = worker.pid
                    article = requests[group[0]].article.id
                    try:
                        worker.evaluate([requests[i] for i in group], partial(deliver, group))
                    finally:
                        busy[w] = False
                        if worker.pid != pid:  # a new child: it has seen nothing else
                            self._seen[w].clear()
                        self._seen[w].add(article)
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
                stop.set()
                events.put(("error", err))
            finally:
                events.put(("done", w))

        threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(self.workers)]
        for t in threads:
            t.start()
        running, errors = len(threads), []
        try:
            while running:
                event = events.get()
                if event[0] == "done":
                    running -= 1
                elif event[0] == "error":
                    errors.append(event[1])
                else:
                    _, i, reward, info = event
                    out[i] = (reward, info)
                    if on_result is not None:
                        on_result(i, reward, info)
        except BaseException:  # interrupted, or on_result raised: stop every worker now
            self._abort(stop, busy, lock, threads)
            raise
        if errors:
            raise errors[0]
        return out  # type: ignore[return-value]  # every group evaluated (or we raised)

    def _abort(self, stop: threading.Event, busy: list[bool], lock: threading.Lock, threads: list[Any]) -> None:
        """No new group; kill the children that are evaluating one (no retry) and wait for every worker thread."""
        with lock:
            stop.set()
            victims = [w for w, b in enumerate(busy) if b]
        saved = [worker.max_retries for worker in self._workers]
        try:
            for w in victims:
                self._workers[w].max_retries = 0  # read after the loss: its call raises instead of retrying
            while any(t.is_alive() for t in threads):
                for w in victims:  # again until its thread ends: a child started just before counts too
                    pid = self._workers[w].pid
                    if pid is not None and threads[w].is_alive():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                for t in threads:
                    t.join(0.2)
        finally:
            for worker, retries in zip(self._workers, saved, strict=True):
                worker.max_retries = retries

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Load ``weights`` in every worker, in parallel (converted to numpy once); later children start with them.
        The first worker's error, if any, is raised after all have finished."""
        self._check_open()
        arrays = weights_to_numpy(weights)
        for seen in self._seen:
            seen.clear()  # baselines were dropped with the old weights
        done = _in_threads([partial(w.set_base_weights, arrays) for w in self._workers])
        for result in done:
            if isinstance(result, BaseException):
                raise result

    def close(self) -> None:
        """Close every worker (in parallel); later calls raise RuntimeError."""
        self._closed = True
        _in_threads([w.close for w in getattr(self, "_workers", [])])

    def __enter__(self) -> PoolExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
