"""Where rewards are computed. Agents and benchmarks hand a batch of (article, self-edit, seed) to an executor.

``executor.evaluate(requests)`` *is* the batched evaluation path: it returns ``(reward, info)`` for every request,
in the order of ``requests``, and calls ``on_result(i, reward, info)`` once per request as soon as it is known.

Every executor groups the requests by article (:func:`group_requests`): one group is one batched
``env.evaluate_many`` call, which trains and quizzes its self-edits together (seal_env.reward.pipeline).

* :class:`InProcessExecutor` evaluates in this process with one environment, one group at a time.
* :class:`seal_env.executors.child_process.SubprocessExecutor` does the same in one child process.
* :class:`seal_env.executors.pool.PoolExecutor` keeps ``workers`` child processes (one model copy each, ``threads``
  math-library threads each) and evaluates groups in parallel on this machine.
* :class:`seal_env.executors.ray_pool.RayExecutor` keeps a pool of Ray actors, each holding one environment (one model
  copy, loaded once), and evaluates groups in parallel on this machine or on a Ray cluster.
  ``pip install "seal-env[ray]"``; ray is only imported when this executor is built.
* ``"auto"`` (the default of :func:`make_executor`) picks between the in-process and the pool executor from the
  cores and memory of this machine (:func:`auto_setup`).

All return the same rewards and infos for the same requests: a reward depends only on (article, self-edit, seed)
and the settings (the inner loop is deterministic on CPU), never on which worker computed it. Bit for bit, that
holds for the same groups and the same BLAS thread count: OpenBLAS splits matrix products differently with another
thread count, which moves losses and log-likelihoods in about the 7th significant digit (accuracy rewards
practically never change). A pool or Ray worker uses its own thread count; :func:`blas_threads` sets this
process's. :func:`make_executor` picks one by name (``--executor pool --workers N`` on the command line, see
:func:`seal_env.cli.add_executor_args`).

A worker in another process (subprocess, pool, Ray) that gives no answer within ``request_timeout`` seconds
(default :data:`DEFAULT_REQUEST_TIMEOUT`; ``None``: no limit) is taken as hung (deadlock, stuck math library,
stopped process): it is killed and replaced, and its unfinished requests are retried (``max_retries``), as for a
worker that died. Each executor's docstring says exactly what the limit applies to.
"""

from __future__ import annotations

import logging
from typing import Any, cast

# The executors with workers are imported where they are built: child_process also runs as `python -m` in each
# worker, which must not find it imported already (by this package, which `import seal_env` loads).
from seal_env.executors.base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WORKER_MEMORY,
    EXECUTOR_KINDS,
    THREAD_ENV_VARS,
    AutoSetup,
    Executor,
    InProcessExecutor,
    RewardRequest,
    auto_setup,
    available_memory,
    blas_threads,
    check_max_retries,
    check_request_timeout,
    check_requests,
    group_requests,
    group_size,
    usable_cores,
    weights_to_numpy,
)

log = logging.getLogger("seal_env")

__all__ = [
    "AutoSetup",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_WORKER_MEMORY",
    "EXECUTOR_KINDS",
    "Executor",
    "InProcessExecutor",
    "RewardRequest",
    "THREAD_ENV_VARS",
    "auto_setup",
    "available_memory",
    "blas_threads",
    "check_max_retries",
    "check_request_timeout",
    "check_requests",
    "group_requests",
    "group_size",
    "usable_cores",
    "weights_to_numpy",
    "make_executor",
]


def make_executor(
    kind: str = "auto",
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    address: str | None = None,
    *,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    in_process: bool = True,
    **kwargs: Any,
) -> Executor:
    """An executor by name (:data:`EXECUTOR_KINDS`):

    * ``"auto"`` (default): what :func:`auto_setup` picks for this machine -- a
      :class:`seal_env.executors.pool.PoolExecutor` of one single-thread worker per core (as many as fit in memory),
      or, with room for one worker only, this process (``in_process=False``: a one-worker pool, i.e. a child process,
      so that nothing is computed in the caller's process; ``in_process`` concerns ``"auto"`` only). It logs one line
      saying what it picked (logger ``seal_env``, INFO); the built executor's ``setup`` attribute holds the
      :class:`AutoSetup`. Takes no ``workers``, ``address`` or options.
    * ``"inprocess"``: one worker, this process. ``"subprocess"``: one worker, a child process
      (:class:`seal_env.executors.child_process.SubprocessExecutor`; option ``threads``).
    * ``"pool"``: ``workers`` child processes (:class:`seal_env.executors.pool.PoolExecutor`; option ``threads``,
      default the usable cores divided among the workers).
    * ``"ray"``: ``workers`` Ray actors (:class:`seal_env.executors.ray_pool.RayExecutor`; ``address`` a Ray cluster
      address, ``None``: a local Ray; options ``cpus_per_worker``, ``ray_init_kwargs``).

    ``settings`` are the environment settings. ``request_timeout`` (seconds, or None for no limit) and
    ``max_retries`` are checked for every kind and go to the executors with workers in other processes (a worker
    that gives no answer within the limit is killed and replaced, and its requests retried); the in-process executor
    has no worker to kill, so it has no time limit. Other options raise ValueError for kinds that take none.
    """
    request_timeout, max_retries = check_request_timeout(request_timeout), check_max_retries(max_retries)
    if kind not in EXECUTOR_KINDS:
        raise ValueError(f"executor kind must be one of {EXECUTOR_KINDS}, got {kind!r}")
    if kind != "ray" and address is not None:
        raise ValueError(f"the {kind} executor takes no address; use kind='ray'")
    if kind in ("auto", "inprocess", "subprocess") and workers != 1:
        what = "picks its worker count itself" if kind == "auto" else "has exactly one worker"
        raise ValueError(f"the {kind} executor {what}; use kind='pool' or 'ray' for workers={workers}")
    if kind in ("auto", "inprocess") and kwargs:
        raise ValueError(f"the {kind} executor takes no options, got {sorted(kwargs)}")
    timeouts: dict[str, Any] = {"request_timeout": request_timeout, "max_retries": max_retries}
    if kind == "auto":
        setup = auto_setup(in_process=in_process)
        executor: Any
        if setup.kind == "inprocess":
            executor = InProcessExecutor(settings)
        else:
            from seal_env.executors.pool import PoolExecutor

            executor = PoolExecutor(settings, setup.workers, setup.threads, **timeouts)
        executor.setup = setup
        log.info(setup.message())
        return cast(Executor, executor)
    if kind == "inprocess":
        return InProcessExecutor(settings)
    if kind == "subprocess":
        from seal_env.executors.child_process import SubprocessExecutor

        return SubprocessExecutor(settings, **timeouts, **kwargs)
    if kind == "pool":
        from seal_env.executors.pool import PoolExecutor

        return PoolExecutor(settings, workers, **timeouts, **kwargs)
    from seal_env.executors.ray_pool import RayExecutor  # ray is imported only when this executor is built

    return RayExecutor(settings, workers, address, **timeouts, **kwargs)
