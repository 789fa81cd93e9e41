"""The executor protocol and what every executor shares: :class:`RewardRequest`, grouping by article, the
in-process executor, time limits, BLAS threads, and the ``auto`` choice (:func:`auto_setup`). The package
:mod:`seal_env.executors` says what each executor is and builds one by name
(:func:`seal_env.executors.make_executor`)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from seal_env.articles import Article

EXECUTOR_KINDS = ("auto", "inprocess", "subprocess", "pool", "ray")
#: Default ``request_timeout`` of the executors with workers in other processes (seconds).
DEFAULT_REQUEST_TIMEOUT = 3600.0
#: Default ``max_retries`` of those executors: how often a request may be retried after its worker was lost.
DEFAULT_MAX_RETRIES = 3
#: Environment variables that cap a worker's math-library threads (set before the worker imports numpy/mlx).
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
#: Memory that :func:`auto_setup` sets aside for each reward worker (bytes): room for a SmolLM2-135M worker training
#: an article's self-edits together (peaks in benchmarks/RESULTS.md); pass ``worker_memory_bytes`` for larger models.
DEFAULT_WORKER_MEMORY = 3 * 2**30


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
    each group is one :meth:`~seal_env.envs.knowledge.KnowledgeIncorporationEnv.evaluate_many` call."""
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

    #: What :func:`make_executor` ``("auto")`` picked, when it built this executor.
    setup: AutoSetup | None = None

    def __init__(self, settings: dict[str, Any] | None = None, env: Any = None):
        if env is None:
            from seal_env.envs.knowledge import KnowledgeIncorporationEnv

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
    from seal_env import _blas

    if _blas.loaded_path is None:
        return None
    if n is not None:
        _blas.function("openblas_set_num_threads")(int(n))
    return int(_blas.function("openblas_get_num_threads")())


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


# ------------------------------------------------------------------------------------------------------ auto
def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Memory available to new processes without swapping (bytes): ``MemAvailable`` of /proc/meminfo, else the
    free physical pages (``sysconf``); None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@dataclass(frozen=True)
class AutoSetup:
    """What the ``"auto"`` executor runs: ``kind`` ``"inprocess"`` or ``"pool"``, with ``workers`` processes of
    ``threads`` math-library threads each, and what that was decided from: ``cores``, ``memory_bytes`` (available;
    None: unknown) and ``worker_memory_bytes`` (set aside per worker)."""

    kind: str
    workers: int
    threads: int
    cores: int
    memory_bytes: int | None
    worker_memory_bytes: int
    gpu: bool = False

    def describe(self) -> str:
        """One line: the processes and threads, and the cores and memory they were chosen for."""
        if self.gpu:
            where = "this process" if self.kind == "inprocess" else "1 worker process"
            return f"{where} on the GPU (mlx's default device: one process drives it)"
        if self.kind == "inprocess":
            what = f"this process, {self.threads} BLAS thread{'s' * (self.threads != 1)}"
        else:
            what = (
                f"{self.workers} worker process{'es' * (self.workers != 1)} x "
                f"{self.threads} BLAS thread{'s' * (self.threads != 1)}"
            )
        memory = "memory unknown" if self.memory_bytes is None else f"{_gib(self.memory_bytes)} available"
        cores = f"{self.cores} core{'s' * (self.cores != 1)}"
        return f"{what} ({cores}, {memory}, {_gib(self.worker_memory_bytes)} per worker)"

    def message(self) -> str:
        """The line that says what ``"auto"`` picked (and, on CPU, the OpenBLAS kernels its products run) and how to
        choose another executor."""
        from seal_env import _blas

        kernels = _blas.core_name() if not self.gpu else None
        return (
            f"seal-env: reward executor auto: {self.describe()}; "
            + (f"OpenBLAS kernels {kernels}; " if kernels else "")
            + "choose another with --executor inprocess|pool|ray (executor= in Python)"
        )


def auto_setup(
    cores: int | None = None,
    memory_bytes: int | None = None,
    worker_memory_bytes: int | None = None,
    *,
    in_process: bool = True,
    gpu: bool | None = None,
) -> AutoSetup:
    """The executor for this machine: one worker process per core, as many as fit in memory, each with
    ``cores // workers`` BLAS threads (separate single-thread processes give more rewards per hour than one process
    with as many threads). With room for one worker only (one core, or memory for less than two), it is this
    process with ``cores`` threads (``in_process=False``: a pool of one child process instead).

    Where mlx computes on a GPU (``gpu``; default: whether mlx's default device is one), one process drives it: one
    worker. ``cores`` defaults to :func:`usable_cores`, ``memory_bytes`` to :func:`available_memory` (unknown: as if
    there were memory for every core), ``worker_memory_bytes`` to :data:`DEFAULT_WORKER_MEMORY`. For ``"inprocess"``,
    ``threads`` is what this process is meant to use; :func:`make_executor` leaves its thread count as it is
    (OpenBLAS's default: one per core).
    """
    cores = usable_cores() if cores is None else cores
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive integer, got {cores!r}")
    memory = available_memory() if memory_bytes is None else memory_bytes
    per_worker = DEFAULT_WORKER_MEMORY if worker_memory_bytes is None else worker_memory_bytes
    if isinstance(per_worker, bool) or not isinstance(per_worker, int) or per_worker < 1:
        raise ValueError(f"worker_memory_bytes must be a positive integer, got {per_worker!r}")
    gpu = _default_device_is_gpu() if gpu is None else bool(gpu)
    workers = 1 if gpu else cores if memory is None else max(1, min(cores, memory // per_worker))
    kind = "pool" if workers > 1 or not in_process else "inprocess"
    return AutoSetup(kind, workers, max(1, cores // workers), cores, memory, per_worker, gpu)


def _default_device_is_gpu() -> bool:
    """Whether mlx's default device is a GPU (Metal, CUDA)."""
    import mlx.core as mx

    return bool(mx.default_device() == mx.gpu)
