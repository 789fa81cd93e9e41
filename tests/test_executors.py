"""Executors: in-process, the factory and CLI options, and a local 2-worker Ray pool on the tiny model
(parity with in-process, a worker killed mid-batch, base-weight broadcast, the batched vector env on Ray; and its
failure paths: a request whose workers keep dying, no live worker left, a replacement that fails to start, a worker
that dies during set_base_weights, a worker that hangs); the subprocess executor (parity, a dead child, a hung
child). A hung worker is a stopped process (SIGSTOP): alive, and certain never to answer."""

import argparse
import os
import signal
import time

from seal_env.articles import select_articles
from seal_env.cli import add_executor_args, executor_from_args
from seal_env.config import SealConfig
from seal_env.envs.knowledge import KnowledgeIncorporationEnv
from seal_env.executors import InProcessExecutor, RewardRequest, make_executor

import numpy as np
import pytest

from conftest import TINY

# short sequences, one epoch, no reward cache (results must really be recomputed): plumbing, not learning
FAST = {**TINY, "epochs": 1, "max_sequence_tokens": 64, "max_action_chars": 2000, "timings": False, "cache": False}

SETTINGS = {**FAST, "reward": "loglik"}
ARTICLES = select_articles(SealConfig(**SETTINGS))
REQUESTS = [RewardRequest(ARTICLES[i % 3], f"1. Fact number {i}.\n2. Another fact, {i}.", seed=i) for i in range(4)]


# in-process work in this module uses 1 BLAS thread, as each of 2 Ray workers does on 2 cores
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
def alone(local_env):
    """The in-process result of the first request evaluated alone (in a batch with others it may round otherwise)."""
    return InProcessExecutor(env=local_env).evaluate(REQUESTS[:1])


@pytest.fixture
def stop():
    """``stop(pid)`` stops a process (SIGSTOP): it stays alive and never answers. After the test, any process so
    stopped that is still there is killed (SIGKILL ends a stopped process too)."""
    stopped = []

    def stop_(pid):
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    yield stop_
    for pid in stopped:
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def gone(pid, within=20.0):
    """Whether process ``pid`` has ended (and been reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def test_inprocess_results_in_order_and_on_result(local_env):
    calls = []
    out = InProcessExecutor(env=local_env).evaluate(REQUESTS[:2], lambda i, r, info: calls.append((i, r)))
    assert [c[0] for c in calls] == [0, 1] and [c[1] for c in calls] == [r for r, _ in out]
    assert [info["seed"] for _, info in out] == [0, 1]


def test_make_executor_and_cli_options():
    with pytest.raises(ValueError, match="kind must be one of"):
        make_executor("threads", SETTINGS)
    with pytest.raises(ValueError, match="one worker"):
        make_executor("inprocess", SETTINGS, workers=2)
    parser = add_executor_args(argparse.ArgumentParser())
    args = parser.parse_args(["--executor", "ray", "--workers", "3"])
    assert (args.executor, args.workers, args.ray_address) == ("ray", 3, None)
    assert parser.parse_args(["--executor", "pool", "--workers", "2"]).executor == "pool"
    assert parser.parse_args([]).executor == "auto"
    for argv in ([], ["--executor", "inprocess"], ["--executor", "subprocess"]):
        with pytest.raises(ValueError, match="needs --executor pool or ray"):
            executor_from_args(parser.parse_args([*argv, "--workers", "2"]), SETTINGS)
    ex = executor_from_args(parser.parse_args(["--executor", "inprocess"]), SETTINGS)
    assert isinstance(ex, InProcessExecutor)
    ex.close()
    assert parser.parse_args([]).request_timeout == 3600
    assert parser.parse_args(["--request-timeout", "2.5"]).request_timeout == 2.5
    assert parser.parse_args(["--request-timeout", "none"]).request_timeout is None
    for bad in ("0", "-1", "inf", "nan", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--request-timeout", bad])
    for bad in (0, -1.0, float("inf"), float("nan"), True, "60"):
        with pytest.raises(ValueError, match="request_timeout must be a positive finite number"):
            make_executor("subprocess", SETTINGS, request_timeout=bad)
    for bad in (-1, 1.5, None):
        with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
            make_executor("ray", SETTINGS, workers=2, max_retries=bad)


def test_agents_default_to_auto_and_print_what_it_picked(monkeypatch, capsys):
    import dataclasses

    from seal_env.executors import base

    from agents.config import TINY, TINY_ENV, RunConfig
    from agents.run import make_executor as agent_executor

    assert RunConfig().executor == "auto" and TINY["executor"] == "inprocess"  # tests keep one process
    tiny = RunConfig(**{**TINY, "wandb_mode": "disabled", "env": SealConfig(**TINY_ENV)})
    for executor in ("auto", "inprocess"):
        with pytest.raises(ValueError, match=f"--workers > 1 needs --executor pool or ray, not {executor}"):
            dataclasses.replace(tiny, executor=executor, workers=2).validate()
    with pytest.raises(ValueError, match="--ray-address needs --executor ray, not pool"):
        dataclasses.replace(tiny, executor="pool", ray_address="auto").validate()
    with pytest.raises(ValueError, match="executor must be one of"):
        dataclasses.replace(tiny, executor="subprocess").validate()
    dataclasses.replace(tiny, executor="pool", workers=2).validate()
    monkeypatch.setattr(base, "usable_cores", lambda: 1)  # auto: this process, no child to start
    ex = agent_executor(dataclasses.replace(tiny, executor="auto"))
    try:
        assert isinstance(ex, InProcessExecutor) and ex.setup.kind == "inprocess"
        assert capsys.readouterr().out == ex.setup.message() + "\n"
    finally:
        ex.close()


# ------------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("ray")
    ex = make_executor("ray", SETTINGS, workers=2, cpus_per_worker=1)  # what 2 workers get on 2 cores by default
    yield ex
    ex.close()


def test_ray_workers_are_single_threaded(pool):
    from seal_env import _blas

    import ray

    expected = 1 if _blas.loaded_path else None  # None: no OpenBLAS on this machine, so no thread count to set
    assert ray.get([a.blas_threads.remote() for a in pool.actors]) == [expected, expected]
    assert len(set(pool.worker_pids())) == 2 and os.getpid() not in pool.worker_pids()


def test_ray_equals_inprocess(pool, reference):
    calls = []
    out = pool.evaluate(REQUESTS, lambda i, r, info: calls.append(i))
    assert sorted(calls) == list(range(len(REQUESTS)))  # exactly once each
    assert out == reference  # rewards and infos, in order, bit for bit
    with pytest.raises(TypeError, match="must be a str"):
        pool.evaluate([RewardRequest(ARTICLES[0], None)])


def test_ray_worker_killed_mid_batch_has_its_work_redone(pool, reference):
    victim = pool.worker_pids()[1]
    before = dict(pool.stats)
    calls = []

    def on_result(i, reward, info):
        calls.append(i)
        if len(calls) == 1:  # worker 1 is busy with (or about to get) a request: kill its process
            os.kill(victim, signal.SIGKILL)

    out = pool.evaluate(REQUESTS, on_result)
    assert sorted(calls) == list(range(len(REQUESTS)))  # nothing lost, nothing counted twice
    assert out == reference
    assert pool.stats["retried"] > before["retried"] and pool.stats["respawned"] > before["respawned"]
    assert victim not in pool.worker_pids()


def test_ray_base_weights_broadcast_also_to_replacements(pool, local_env, reference):
    import mlx.core as mx
    import ray
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(local_env.learner.model.parameters()))
    original = {"model.norm.weight": params["model.norm.weight"]}
    changed = {"model.norm.weight": original["model.norm.weight"] * 1.5}
    req = REQUESTS[0]
    alone = pool.evaluate([req])  # one request alone (batched with others it may round differently)
    try:
        pool.set_base_weights(changed)
        local_env.set_base_weights({k: mx.array(v) for k, v in changed.items()})
        expected = InProcessExecutor(env=local_env).evaluate([req])
        assert expected[0][0] != reference[0][0]
        ray.kill(pool.actors[0])  # an idle worker dies between batches; its replacement must get the weights
        assert pool.evaluate([req]) == expected
        assert ray.get(pool.actors[0].evaluate.remote(req.article, req.self_edit, req.seed)) == expected[0]
    finally:
        pool.set_base_weights(original)
        local_env.set_base_weights(original)
    assert pool.evaluate([req]) == alone


class _Gone:
    """The methods RayExecutor calls on a worker. Its actor is killed as soon as it is created (see
    :func:`dead_actor`), so every call raises ray's ActorDiedError: a worker whose death is certain, no timing."""

    def ready(self):
        return os.getpid()

    def evaluate_many(self, *args):
        return []

    def set_base_weights(self, weights):
        pass


@pytest.fixture
def dead_actor(pool):
    """A killed actor with :class:`_Gone`'s methods: every call to it raises ActorDiedError."""
    import ray

    dead = ray.remote(num_cpus=0)(_Gone).remote()  # no CPU: the 2 real workers hold the local Ray's 2
    ray.kill(dead, no_restart=True)
    return dead


@pytest.fixture
def dead_workers(pool, dead_actor, monkeypatch):
    """``dead_workers(*slots)``: these worker slots of ``pool`` now hold a dead worker, and every replacement the
    pool starts is dead too (fails to start). The real workers are left alone, idle and loaded: the test works on
    copies of the pool's slot lists, put back after it (so it starts no real worker)."""
    for name in ("_actors", "_pids", "_start_failures"):
        monkeypatch.setattr(pool, name, list(getattr(pool, name)))
    monkeypatch.setattr(pool, "_seen", [set(seen) for seen in pool._seen])
    monkeypatch.setattr(pool, "_spawn", lambda: dead_actor)

    def kill(*slots):
        for slot in slots:
            pool._actors[slot] = dead_actor  # its pid stays: the pool finds out when it next uses the worker

    return kill


def test_ray_request_whose_worker_died_more_than_max_retries_times_raises(pool, dead_workers, monkeypatch):
    """A request whose worker dies, and whose next worker dies too, is given up after ``max_retries`` retries; the
    pool is left replacing the dead workers (no slot keeps a dead worker that looks alive)."""
    monkeypatch.setattr(pool, "max_retries", 1)
    dead_workers(0, 1)
    before = dict(pool.stats)
    calls = []
    with pytest.raises(RuntimeError, match=r"requests \[0\]: their worker died 2 time\(s\) \(max_retries=1\)"):
        pool.evaluate(REQUESTS[:1], lambda i, r, info: calls.append(i))
    assert calls == [] and pool.stats["retried"] - before["retried"] == 2
    assert pool.worker_pids() == [None, None]  # both slots replaced (or replacing), neither left as it was


def test_ray_no_live_workers_left_raises(pool, dead_workers):
    """Every worker dead and every replacement failing to start: each slot is given up after ``max_retries + 1``
    failed starts, and the call raises, saying how many requests were not evaluated."""
    dead_workers(0, 1)
    before = dict(pool.stats)
    with pytest.raises(RuntimeError, match=r"no live Ray workers left; 4 request\(s\) not evaluated"):
        pool.evaluate(REQUESTS)
    assert pool.actors == [None, None] and pool.worker_pids() == [None, None]
    assert pool.stats["respawned"] - before["respawned"] == 2 * (pool.max_retries + 1)
    assert pool.stats["retried"] - before["retried"] == 2 and pool.stats["completed"] == before["completed"]


def test_ray_replacement_that_fails_to_start_is_given_up_and_the_live_worker_does_the_rest(
    pool, dead_workers, reference
):
    """Worker 0 dead and its replacements failing to start: the slot is given up after ``max_retries + 1`` failed
    starts, and worker 1 evaluates every request (the same results)."""
    dead_workers(0)
    before = dict(pool.stats)
    calls = []
    out = pool.evaluate(REQUESTS, lambda i, r, info: calls.append(i))
    assert sorted(calls) == list(range(len(REQUESTS))) and out == reference  # all done by worker 1
    assert pool.actors[0] is None and pool.actors[1] is not None  # slot 0 given up
    assert pool.stats["respawned"] - before["respawned"] == pool.max_retries + 1  # failed starts, then no more
    assert pool.stats["retried"] - before["retried"] == 1


def test_ray_worker_dying_during_set_base_weights_is_replaced_with_the_new_weights(pool, local_env, dead_actor):
    """A worker found dead by ``set_base_weights`` is replaced at once, and its replacement starts with the new
    weights (the in-process result under the same weights)."""
    import mlx.core as mx
    import ray
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(local_env.learner.model.parameters()))
    original = {"model.norm.weight": params["model.norm.weight"]}
    changed = {"model.norm.weight": original["model.norm.weight"] * 0.5}
    req = REQUESTS[1]
    victim = pool.worker_pids()[1]
    ray.kill(pool.actors[1], no_restart=True)  # worker 1 dies (its CPU goes to the replacement) ...
    pool._actors[1] = dead_actor  # ... and the broadcast certainly finds it dead, however soon it comes
    before = dict(pool.stats)
    try:
        pool.set_base_weights(changed)
        assert pool.stats["respawned"] - before["respawned"] == 1 and pool.worker_pids()[1] is None
        assert pool.actors[1] is not dead_actor
        local_env.set_base_weights({k: mx.array(v) for k, v in changed.items()})
        expected = InProcessExecutor(env=local_env).evaluate([req])
        assert ray.get(pool.actors[1].evaluate.remote(req.article, req.self_edit, req.seed)) == expected[0]
        assert ray.get(pool.actors[1].ready.remote()) != victim
    finally:
        pool.set_base_weights(original)
        local_env.set_base_weights(original)
    assert pool.stats["respawned"] - before["respawned"] == 1  # the replacement took the broadcast back alive


def test_batched_vector_env_on_ray(pool, alone):
    from seal_env.vector import KnowledgeIncorporationVectorEnv

    envs = KnowledgeIncorporationVectorEnv(2, executor=pool, **SETTINGS)
    ref = KnowledgeIncorporationVectorEnv(2, executor_kind="inprocess", **SETTINGS)
    actions = ("1. One fact.\n2. Two facts.", "Three facts.")
    results = []
    for e in (envs, ref):
        e.reset(seed=9)
        results.append(e.step(actions))
    assert np.array_equal(results[0][1], results[1][1])
    assert list(results[0][4]["final_info"]["train_losses"]) == list(results[1][4]["final_info"]["train_losses"])
    envs.close()  # does not close the shared pool
    ref.close()
    assert pool.evaluate(REQUESTS[:1]) == alone


def ready_pool(pool):
    """``pool`` with every worker's model loaded (a replacement too): no worker but a stopped one can be late."""
    import ray

    ray.get([actor.ready.remote() for actor in pool.actors if actor is not None])
    return pool


def test_ray_hung_worker_is_killed_and_replaced_and_its_request_retried(pool, alone, stop, monkeypatch):
    """A worker that never answers (a stopped process) is killed after ``request_timeout`` and replaced, and its
    request is retried on a live worker: the in-process result."""
    monkeypatch.setattr(ready_pool(pool), "request_timeout", 4.0)
    # the first worker with a pid takes the first request (a replacement whose pid is not known yet is not idle)
    victim = next(pid for pid in pool.worker_pids() if pid is not None)
    stop(victim)
    before = dict(pool.stats)
    assert pool.evaluate(REQUESTS[:1]) == alone
    assert {k: pool.stats[k] - before[k] for k in ("timeouts", "retried", "respawned")} == dict.fromkeys(
        ("timeouts", "retried", "respawned"), 1
    )
    assert victim not in pool.worker_pids() and gone(victim)


def test_ray_hung_worker_with_no_retries_left_raises_and_the_pool_stays_usable(pool, alone, stop, monkeypatch):
    monkeypatch.setattr(ready_pool(pool), "request_timeout", 4.0)
    monkeypatch.setattr(pool, "max_retries", 0)
    slot, victim = next((s, pid) for s, pid in enumerate(pool.worker_pids()) if pid is not None)
    stop(victim)
    before = dict(pool.stats)
    with pytest.raises(
        RuntimeError,
        match=r"requests \[0\]: their worker gave no result within request_timeout=4 s 1 time\(s\) \(killed\) "
        r"\(max_retries=0\)",
    ):
        pool.evaluate(REQUESTS[:1])
    assert pool.stats["timeouts"] - before["timeouts"] == 1 and pool.worker_pids()[slot] is None  # being replaced
    assert pool.evaluate(REQUESTS[:1]) == alone
    assert gone(victim) and victim not in pool.worker_pids()


# ------------------------------------------------------------------------------------------------- subprocess
def test_subprocess_executor_equals_inprocess_and_replaces_a_dead_child(local_env):
    ex = make_executor("subprocess", SETTINGS, threads=1)  # one BLAS thread, as in this process: the same rounding
    try:
        got = []
        out = ex.evaluate(REQUESTS[:2], lambda i, r, info: got.append(i))
        assert sorted(got) == [0, 1]
        expected = InProcessExecutor(env=local_env).evaluate(REQUESTS[:2])
        assert out == expected
        with pytest.raises(TypeError, match="must be a str"):
            ex.evaluate([RewardRequest(ARTICLES[0], 42)])
        victim = ex.pid
        os.kill(victim, signal.SIGKILL)
        before = dict(ex.stats)
        assert ex.evaluate(REQUESTS[:1]) == expected[:1]  # by a new child
        assert ex.pid not in (None, victim)
        assert {k: ex.stats[k] - before[k] for k in ("retried", "respawned", "timeouts")} == {
            "retried": 1,
            "respawned": 1,
            "timeouts": 0,
        }
    finally:
        ex.close()
    with pytest.raises(ValueError, match="one worker"):
        make_executor("subprocess", SETTINGS, workers=2)


def test_subprocess_hung_child_is_killed_and_replaced_and_results_received_are_kept(reference, stop):
    """The child stops after sending the first group's results; after ``request_timeout`` it is killed and a new
    child evaluates only the requests without a result."""
    started = time.monotonic()
    ex = make_executor("subprocess", SETTINGS, threads=1, max_retries=1)
    try:
        # the limit also bounds the new child's start: twice this start, on a machine as busy as now
        ex.request_timeout = max(5.0, 2 * (time.monotonic() - started))
        victims, calls = [], []

        def on_result(i, reward, info):
            calls.append(i)
            if calls == [0, 3]:  # the first group (article 0) is in: stop the child in the next one
                victims.append(ex.pid)
                stop(ex.pid)

        before = dict(ex.stats)
        assert ex.evaluate(REQUESTS, on_result) == reference
        assert calls[:2] == [0, 3] and sorted(calls) == [0, 1, 2, 3]  # each result once
        assert ex.stats["completed"] - before["completed"] == 4  # nothing received was asked for again
        assert {k: ex.stats[k] - before[k] for k in ("timeouts", "retried", "respawned")} == dict.fromkeys(
            ("timeouts", "retried", "respawned"), 1
        )
        assert ex.pid not in (None, victims[0]) and gone(victims[0], within=0)
    finally:
        ex.close()


def test_subprocess_hung_child_with_no_retries_left_raises_and_a_new_child_takes_the_next_call(alone, stop):
    ex = make_executor("subprocess", SETTINGS, threads=1, max_retries=0)
    try:
        ex.request_timeout = 3.0
        victim = ex.pid
        stop(victim)
        with pytest.raises(
            RuntimeError,
            match=r"subprocess gave no answer within request_timeout=3 s and was killed; 1 time\(s\) in a row "
            r"\(max_retries=0\)",
        ):
            ex.evaluate(REQUESTS[:1])
        assert ex.pid is None and gone(victim, within=0) and ex.stats["timeouts"] == 1
        ex.request_timeout = None  # a new child's start (model load) takes longer than 3 s
        assert ex.evaluate(REQUESTS[:1]) == alone
        assert ex.pid not in (None, victim)
    finally:
        ex.close()
    with pytest.raises(RuntimeError, match="closed"):
        ex.evaluate(REQUESTS[:1])
