"""Where rewards are computed. Agents and benchmarks hand a batch of (article, self-edit, seed) to an executor.

``executor.evaluate(requests)`` *is* the batched evaluation path: it returns ``(reward, info)`` for every request,
in the order of ``requests``, and calls ``on_result(i, reward, info)`` once per request as soon as it is known.

Both group the requests by article (:func:`group_requests`): one group is one batched
``env.evaluate_many`` call, which trains and quizzes its self-edits together (seal_env.pipeline).

* :class:`InProcessExecutor` (default) evaluates in this process with one environment, one group at a time.
* :class:`seal_env.ray_executor.RayExecutor` keeps a pool of Ray actors, each holding one environment (one model
  copy, loaded once), and evaluates groups in parallel on this machine or on a Ray cluster.
  ``pip install "seal-env[ray]"``; ray is only imported when this executor is built.

Both return the same rewards and infos for the same requests: a reward depends only on (article, self-edit, seed)
and the settings (the inner loop is deterministic on CPU), never on which worker computed it. Bit for bit, that
holds for the same groups and the same BLAS thread count: OpenBLAS splits matrix products differently with another
thread count, which
moves losses and log-likelihoods in about the 7th significant digit (accuracy rewards practically never change).
A Ray worker uses ``cpus_per_worker`` threads; :func:`blas_threads` sets this process's count.
:func:`make_executor` picks one by name (``--executor ray --workers N`` on the command line, see
:func:`seal_env.cli.add_executor_args`).

A worker in another process (subprocess, Ray) that gives no answer within ``request_timeout`` seconds (default
:data:`DEFAULT_REQUEST_TIMEOUT`; ``None``: no limit) is taken as hung (deadlock, stuck math library, stopped
process): it is killed and replaced, and its unfinished requests are retried (``max_retries``), as for a worker that
died. Each executor's docstring says exactly what the limit applies to.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from seal_env.articles import Article

EXECUTOR_KINDS = ("inprocess", "subprocess", "ray")
#: Default ``request_timeout`` of the executors with workers in other processes (seconds).
DEFAULT_REQUEST_TIMEOUT = 3600.0
#: Default ``max_retries`` of those executors: how often a request may be retried after its worker was lost.
DEFAULT_MAX_RETRIES = 3
#: Environment variables that cap a worker's math-library threads (set before the worker imports numpy/mlx).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class RewardRequest:
    """One reward to compute: a self-edit for an article, trained with ``seed``.

    ``adapt=False`` asks for SEAL's no-adaptation condition instead: nothing is trained, the reward is 0 and the
    info holds the un-adapted model's quiz (computed once per article where the article's baseline is).
    """

    article: Article
    self_edit: str
    seed: int = 0
    adapt: bool = True


def group_requests(requests: Sequence[RewardRequest], size: int) -> list[list[int]]:
    """Request indices grouped by (article, adapt), in order of first appearance, cut into groups of ``size``:
    each group is one :meth:`~seal_env.env.KnowledgeIncorporationEnv.evaluate_many` call."""
    by_key: dict[tuple[Article, bool], list[int]] = {}
    for i, req in enumerate(requests):  # the whole article: two may share a title and passage (the id)
        by_key.setdefault((req.article, req.adapt), []).append(i)
    return [idx[s : s + size] for idx in by_key.values() for s in range(0, len(idx), size)]


def group_size(cfg: Any) -> int:
    """Requests per batched call for settings ``cfg`` (a SealConfig): ``max_batch_adapters // eval_times``, >= 1."""
    return max(1, cfg.max_batch_adapters // cfg.eval_times)


def check_requests(requests: Sequence[RewardRequest]) -> None:
    """Fail before anything runs if a self-edit is not a str (as the environment would at that request)."""
    for req in requests:
        if not isinstance(req.self_edit, str):
            raise TypeError(f"a self-edit must be a str, got {type(req.self_edit).__name__}")


def check_request_timeout(value: Any) -> float | None:
    """``value`` as a time limit in seconds: a positive finite number, or None (no limit); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValueError(f"request_timeout must be a positive finite number of seconds or None, got {value!r}")
    return float(value)


def check_max_retries(value: Any) -> int:
    """``value`` as a retry count: an integer >= 0; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {value!r}")
    return value


class Executor(Protocol):
    def evaluate(
        self, requests: list[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        """Rewards and infos, in the order of ``requests``; ``on_result(i, reward, info)`` as each one is known."""

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Make every worker's inner-loop learner use these base weights (e.g. an updated policy)."""

    def close(self) -> None: ...


class InProcessExecutor:
    """Evaluates requests with a single environment built from ``settings``, an article's requests batched
    (``evaluate_many`` calls of up to ``max_batch_adapters`` inner loops)."""

    def __init__(self, settings: dict[str, Any] | None = None, env: Any = None):
        if env is None:
            from seal_env.env import KnowledgeIncorporationEnv

            env = KnowledgeIncorporationEnv(**(settings or {}))
        self.env = env

    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        requests = list(requests)
        check_requests(requests)
        out: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)
        for group in group_requests(requests, group_size(self.env.unwrapped.cfg)):
            first = requests[group[0]]
            results = self.env.unwrapped.evaluate_many(
                first.article,
                [requests[i].self_edit for i in group],
                [requests[i].seed for i in group],
                adapt=first.adapt,
            )
            for i, result in zip(group, results, strict=True):
                out[i] = result
                if on_result is not None:
                    on_result(i, *result)
        return cast(list[tuple[float, dict[str, Any]]], out)  # every request is in one group

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        self.env.set_base_weights(weights)

    def close(self) -> None:
        self.env.close()


def blas_threads(n: int | None = None) -> int | None:
    """Get (and with ``n``, first set) the OpenBLAS thread count of this process; None without OpenBLAS.

    Rewards are bit-for-bit reproducible for a fixed BLAS thread count, but a different count changes the
    float rounding of matrix products (losses and log-likelihoods differ around the 7th digit). To compare an
    in-process result with a Ray worker's exactly, run both with the same count (``cpus_per_worker``).
    """
    import ctypes

    from seal_env import _blas

    if _blas.loaded_path is None:
        return None
    lib = ctypes.CDLL(_blas.loaded_path)
    if n is not None:
        lib.openblas_set_num_threads(int(n))
    return int(lib.openblas_get_num_threads())


def weights_to_numpy(weights: dict[str, Any]) -> dict[str, Any]:
    """Weights as numpy arrays (mlx arrays do not cross process boundaries; bfloat16 goes through float32)."""
    import numpy as np

    out = {}
    for name, value in weights.items():
        if type(value).__module__.startswith("mlx"):
            import mlx.core as mx

            if value.dtype == mx.bfloat16:
                value = value.astype(mx.float32)
        out[name] = np.asarray(value)
    return out


# --------------------------------------------------------------------------------------------------- factory
def make_executor(
    kind: str = "inprocess",
    settings: dict[str, Any] | None = None,
    workers: int = 1,
    address: str | None = None,
    *,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    **kwargs: Any,
) -> Executor:
    """An executor by name: ``"inprocess"`` (one worker, this process), ``"subprocess"`` (one worker, a child
    process: :class:`seal_env.worker.SubprocessExecutor`) or ``"ray"`` (``workers`` actors).

    ``settings`` are the environment settings; ``address`` a Ray cluster address (``None``: a local Ray).
    ``request_timeout`` (seconds, or None for no limit) and ``max_retries`` are checked for every kind and go to the
    subprocess and Ray executors (a worker that gives no answer within the limit is killed and replaced, and its
    requests retried); the in-process executor has no worker to kill, so it has no time limit. Extra keyword
    arguments go to :class:`seal_env.worker.SubprocessExecutor` (``threads``) or
    :class:`seal_env.ray_executor.RayExecutor` (``cpus_per_worker``, ``ray_init_kwargs``).
    """
    request_timeout, max_retries = check_request_timeout(request_timeout), check_max_retries(max_retries)
    if kind in ("inprocess", "subprocess"):
        if workers != 1 or address is not None:
            raise ValueError(f"the {kind} executor has exactly one worker and no address; use kind='ray'")
        if kind == "subprocess":
            from seal_env.worker import SubprocessExecutor

            return SubprocessExecutor(settings, request_timeout=request_timeout, max_retries=max_retries, **kwargs)
        if kwargs:
            raise ValueError(f"the inprocess executor takes no options, got {sorted(kwargs)}")
        return InProcessExecutor(settings)
    if kind == "ray":
        from seal_env.ray_executor import RayExecutor

        return RayExecutor(
            settings, workers, address, request_timeout=request_timeout, max_retries=max_retries, **kwargs
        )
    raise ValueError(f"executor kind must be one of {EXECUTOR_KINDS}, got {kind!r}")
