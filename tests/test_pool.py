"""The worker-pool executor (2 single-thread child processes on the tiny model: parity with in-process, on_result,
base weights, errors) and the ``auto`` executor (what it picks for given cores and memory, what it builds here)."""

import logging
import os

from seal_env import _blas
from seal_env.articles import select_articles
from seal_env.config import SealConfig
from seal_env.envs.knowledge import KnowledgeIncorporationEnv
from seal_env.executors import (
    DEFAULT_WORKER_MEMORY,
    InProcessExecutor,
    RewardRequest,
    auto_setup,
    available_memory,
    base,
    make_executor,
    usable_cores,
)
from seal_env.executors.pool import PoolExecutor

import pytest

from conftest import TINY

FAST = {**TINY, "epochs": 1, "max_sequence_tokens": 64, "max_action_chars": 2000, "timings": False, "cache": False}
SETTINGS = {**FAST, "reward": "loglik"}
ARTICLES = select_articles(SealConfig(**SETTINGS))
#: 3 articles x 2 self-edits: 3 whole article groups for 2 workers, the groups the in-process executor makes
REQUESTS = [
    RewardRequest(ARTICLES[a], f"1. Fact {a}.{j} of the passage.\n2. Another fact, {j}.", seed=10 * a + j)
    for a in range(3)
    for j in range(2)
]
GIB = 2**30


# in-process references at 1 BLAS thread, as each pool worker: the same rounding, so equal bit for bit
pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def local_env():
    env = KnowledgeIncorporationEnv(**SETTINGS)
    yield env
    env.close()


@pytest.fixture(scope="module")
def reference(local_env):
    return InProcessExecutor(env=local_env).evaluate(REQUESTS)


@pytest.fixture(scope="module")
def pool():
    ex = make_executor("pool", SETTINGS, workers=2, threads=1)
    yield ex
    ex.close()


def test_pool_equals_inprocess_and_calls_on_result_once_per_request(pool, reference):
    assert isinstance(pool, PoolExecutor) and (pool.workers, pool.threads) == (2, 1)
    pids = pool.worker_pids()
    assert len(set(pids)) == 2 and os.getpid() not in pids
    before = [dict(s) for s in pool.worker_stats()]
    calls = []
    out = pool.evaluate(REQUESTS, lambda i, reward, info: calls.append((i, reward, info)))
    assert out == reference  # rewards and infos, bit for bit
    assert sorted(i for i, _, _ in calls) == list(range(len(REQUESTS)))
    assert all((reward, info) == out[i] for i, reward, info in calls)
    done = [after["completed"] - b["completed"] for after, b in zip(pool.worker_stats(), before, strict=True)]
    assert sum(done) == len(REQUESTS) and min(done) >= 2  # both workers evaluated whole groups
    assert pool.stats["completed"] >= len(REQUESTS) and pool.worker_pids() == pids
    assert pool.evaluate([]) == []


def test_pool_cuts_groups_smaller_only_when_workers_would_wait(pool):
    assert pool._groups(REQUESTS) == [[0, 1], [2, 3], [4, 5]]  # whole articles: as in-process
    one_article = [RewardRequest(ARTICLES[0], f"{j}. A fact.", seed=j) for j in range(5)]
    assert pool._groups(one_article) == [[0, 1, 2], [3, 4]]  # every worker gets work


def test_pool_set_base_weights_equals_inprocess_with_the_same_weights(pool, local_env, reference):
    from mlx.utils import tree_flatten

    original = {"model.norm.weight": dict(tree_flatten(local_env.learner.model.parameters()))["model.norm.weight"]}
    changed = {"model.norm.weight": original["model.norm.weight"] * 0.5}
    try:
        pool.set_base_weights(changed)
        local_env.set_base_weights(changed)
        expected = InProcessExecutor(env=local_env).evaluate(REQUESTS[:4])
        got = pool.evaluate(REQUESTS[:4])
        assert got == expected and [r for r, _ in got] != [r for r, _ in reference[:4]]
    finally:
        pool.set_base_weights(original)
        local_env.set_base_weights(original)


def test_a_bad_request_fails_before_anything_runs(pool):
    before, pids = pool.stats, pool.worker_pids()
    with pytest.raises(TypeError, match="must be a str"):
        pool.evaluate([REQUESTS[0], RewardRequest(ARTICLES[1], 42)])
    assert pool.stats == before and pool.worker_pids() == pids


def test_an_error_in_one_group_is_raised_after_the_others_finish_and_the_pool_stays_usable(pool, reference):
    # an article no worker has seen, last: its group is taken after both others, whatever the workers have seen
    bad = RewardRequest(ARTICLES[5], "1. A fact.", seed="not a seed")  # the child's environment rejects it
    good = [*REQUESTS[:2], *REQUESTS[4:]]
    calls = []
    with pytest.raises(ValueError, match="invalid literal for int"):
        pool.evaluate([*good, bad], lambda i, reward, info: calls.append(i))
    assert sorted(calls) == [0, 1, 2, 3]  # the groups already taken were finished and delivered
    assert pool.evaluate(good) == [*reference[:2], *reference[4:]]


def test_on_result_raising_stops_the_pool_at_once_and_it_stays_usable(pool, reference):
    calls = []

    def on_result(i, reward, info):
        calls.append(i)
        raise KeyError("the caller gave up")

    with pytest.raises(KeyError, match="the caller gave up"):
        pool.evaluate(REQUESTS, on_result)
    assert len(calls) == 1  # nothing delivered after the caller's error
    assert pool.evaluate(REQUESTS) == reference  # a child killed mid-group is replaced
    assert len(set(pool.worker_pids())) == 2


def test_bad_pool_settings_fail_before_any_child_starts():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers must be a positive integer"):
            PoolExecutor(SETTINGS, workers=bad)
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            PoolExecutor(SETTINGS, workers=1, threads=bad)
    with pytest.raises(ValueError, match="epochs"):
        PoolExecutor({**SETTINGS, "epochs": 0})


# ------------------------------------------------------------------------------------------------------ auto
@pytest.mark.parametrize(
    "cores, memory, kind, workers, threads",
    [
        (1, 64 * GIB, "inprocess", 1, 1),  # one core
        (2, 4 * GIB, "inprocess", 1, 2),  # memory for one 3 GiB worker: this process, both cores' threads
        (2, 64 * GIB, "pool", 2, 1),
        (4, 7 * GIB, "pool", 2, 2),  # memory for two workers: 2 cores each
        (3, 64 * GIB, "pool", 3, 1),
    ],
)
def test_auto_setup_one_worker_per_core_that_memory_allows(cores, memory, kind, workers, threads):
    setup = auto_setup(cores=cores, memory_bytes=memory)
    assert (setup.kind, setup.workers, setup.threads) == (kind, workers, threads)
    assert (setup.cores, setup.memory_bytes, setup.worker_memory_bytes) == (cores, memory, DEFAULT_WORKER_MEMORY)
    assert auto_setup(cores=cores, memory_bytes=memory, in_process=False).kind == "pool"  # one worker: a child


def test_auto_setup_on_a_gpu_is_one_process():
    setup = auto_setup(cores=8, memory_bytes=64 * GIB, gpu=True)
    assert (setup.kind, setup.workers, setup.gpu) == ("inprocess", 1, True)
    assert setup.describe() == "this process on the GPU (mlx's default device: one process drives it)"
    assert auto_setup(cores=8, memory_bytes=64 * GIB, gpu=True, in_process=False).workers == 1
    assert not auto_setup(cores=2, memory_bytes=64 * GIB).gpu  # this machine: mlx's CPU build


def test_auto_setup_describes_its_choice():
    assert auto_setup(cores=2, memory_bytes=int(21.3 * GIB)).describe() == (
        "2 worker processes x 1 BLAS thread (2 cores, 21.3 GiB available, 3.0 GiB per worker)"
    )
    assert auto_setup(cores=2, memory_bytes=4 * GIB, worker_memory_bytes=3 * GIB).describe() == (
        "this process, 2 BLAS threads (2 cores, 4.0 GiB available, 3.0 GiB per worker)"
    )
    setup = auto_setup(cores=4, memory_bytes=9 * GIB, worker_memory_bytes=4 * GIB)
    assert (setup.workers, setup.threads) == (2, 2)
    kernels = f"OpenBLAS kernels {_blas.core_name()}; " if _blas.core_name() else ""  # what its products run
    assert setup.message() == (
        "seal-env: reward executor auto: 2 worker processes x 2 BLAS threads (4 cores, 9.0 GiB available, "
        f"4.0 GiB per worker); {kernels}choose another with --executor inprocess|pool|ray (executor= in Python)"
    )
    assert (_blas.core_name() is not None) == (_blas.loaded_path is not None)
    with pytest.raises(ValueError, match="cores must be a positive integer"):
        auto_setup(cores=0)
    with pytest.raises(ValueError, match="worker_memory_bytes must be a positive integer"):
        auto_setup(cores=2, worker_memory_bytes=0)


def test_auto_setup_reads_this_machine(monkeypatch):
    assert usable_cores() == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    memory = available_memory()
    assert memory is None or memory > 0
    setup = auto_setup()
    assert setup.cores == usable_cores() and (setup.memory_bytes is None) == (memory is None)
    monkeypatch.setattr(base, "available_memory", lambda: None)  # unknown memory: as if enough for every core
    unknown = auto_setup(cores=3)
    assert (unknown.kind, unknown.workers, unknown.threads) == ("pool", 3, 1)
    assert "(3 cores, memory unknown, 3.0 GiB per worker)" in unknown.describe()


def test_make_executor_auto_builds_what_auto_setup_picks_and_logs_it(monkeypatch, caplog):
    cores = min(2, usable_cores())  # at most 2 children, on any machine
    monkeypatch.setattr(base, "usable_cores", lambda: cores)
    expected = auto_setup()
    caplog.set_level(logging.INFO, logger="seal_env")
    ex = make_executor("auto", SETTINGS)
    try:
        setup = ex.setup
        assert (setup.kind, setup.workers, setup.threads, setup.cores) == (
            expected.kind,
            expected.workers,
            expected.threads,
            cores,
        )
        if setup.kind == "pool":
            assert isinstance(ex, PoolExecutor) and (ex.workers, ex.threads) == (setup.workers, setup.threads)
        else:
            assert isinstance(ex, InProcessExecutor)
    finally:
        ex.close()
    [record] = [r for r in caplog.records if r.name == "seal_env"]
    assert record.levelno == logging.INFO and record.getMessage() == setup.message()


def test_make_executor_auto_with_one_core_runs_in_a_child_when_asked(monkeypatch, reference):
    monkeypatch.setattr(base, "usable_cores", lambda: 1)
    ex = make_executor("auto", SETTINGS, in_process=False)
    with ex:
        assert isinstance(ex, PoolExecutor) and (ex.workers, ex.threads) == (1, 1)
        assert (ex.setup.kind, ex.setup.workers) == ("pool", 1)
        [pid] = ex.worker_pids()
        assert pid is not None and pid != os.getpid()
        assert ex.evaluate(REQUESTS[:2]) == reference[:2]
    with pytest.raises(RuntimeError, match="closed"):  # closed by the with block: its child has exited
        ex.evaluate(REQUESTS[:1])
    assert not os.path.exists(f"/proc/{pid}")


def test_an_explicit_kind_is_honoured_and_auto_takes_no_options(monkeypatch):
    monkeypatch.setattr(base, "usable_cores", lambda: 1)
    inproc = make_executor("auto", SETTINGS)
    assert isinstance(inproc, InProcessExecutor) and inproc.setup.kind == "inprocess"
    inproc.close()
    monkeypatch.setattr(base, "usable_cores", lambda: 8)
    explicit = make_executor("inprocess", SETTINGS)  # not a pool, whatever the machine
    assert isinstance(explicit, InProcessExecutor) and explicit.setup is None
    explicit.close()
    with pytest.raises(ValueError, match="picks its worker count itself"):
        make_executor("auto", SETTINGS, workers=2)
    with pytest.raises(ValueError, match="takes no options"):
        make_executor("auto", SETTINGS, threads=1)
    with pytest.raises(ValueError, match="takes no address"):
        make_executor("pool", SETTINGS, address="auto")
