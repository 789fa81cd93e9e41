"""The persistent reward cache: hits, misses, key sensitivity, concurrent writers, the switch, base-weight changes."""

import json
import math
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from seal_env.articles import Article, Question
from seal_env.config import REWARD_KINDS
from seal_env.reward import pipeline
from seal_env.reward.cache import RewardCache, enabled, reward_key

import gymnasium as gym
import pytest

from conftest import TINY

EDIT = "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911."
ART = Article(
    "Tervik Observatory",
    "The Tervik Observatory sits on Mount Tervik. It was founded in 1911.",
    (Question("Where is the Tervik Observatory?", "Mount Tervik"),),
)
QUICK = {**TINY, "epochs": 1, "answer_max_tokens": 0}  # the cheapest reward, for the child processes


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    e = gym.make("seal/KnowledgeIncorporation-v0", **TINY, cache_dir=str(tmp_path / "rewards")).unwrapped
    yield e
    e.close()


def test_miss_then_hit_is_identical_and_trains_nothing(env, monkeypatch):
    r1, info1 = env.evaluate(ART, EDIT, seed=3)
    assert info1["cache_hit"] is False and info1["seconds_train"] > 0 and info1["train_steps"] > 0
    computed = env.baselines.computed
    monkeypatch.setattr(env.learner, "train", lambda *a, **k: pytest.fail("a cache hit must not train"))
    monkeypatch.setattr(env.learner, "ask", lambda *a, **k: pytest.fail("a cache hit must not quiz"))
    # a stopped clock: the hit's seconds are this call's own (here 0), not the computing call's, which were cached
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(perf_counter=lambda: 100.0))
    r2, info2 = env.evaluate(ART, EDIT, seed=3)
    assert info2["cache_hit"] is True and env.baselines.computed == computed
    assert info1["seconds_total"] > 0 and info2["seconds_total"] == 0.0 and info2["seconds_train"] == 0.0
    assert r2 == r1

    def strip(info):
        return {
            k: v for k, v in info.items() if not k.startswith("seconds") and k not in ("cache_hit", "batch_adapters")
        }

    assert json.loads(json.dumps(strip(info1))) == strip(info2)


def test_key_changes_with_every_input(env):
    fp = env.learner.fingerprint()
    settings = env.cfg.inner_loop_key()
    base = reward_key(fp, ART, EDIT, settings, 0)
    other_article = Article(ART.title, ART.context + " More.", ART.questions)
    other_questions = Article(ART.title, ART.context, (Question("When?", "1911"),))
    variants = [
        reward_key("0" * 64, ART, EDIT, settings, 0),
        reward_key(fp, other_article, EDIT, settings, 0),
        reward_key(fp, other_questions, EDIT, settings, 0),
        reward_key(fp, ART, EDIT + " ", settings, 0),
        reward_key(fp, ART, EDIT, {**settings, "learning_rate": 2e-3}, 0),
        reward_key(fp, ART, EDIT, {**settings, "lora_modules": ["all"]}, 0),
        reward_key(fp, ART, EDIT, settings, 1),
    ]
    assert len({base, *variants}) == len(variants) + 1
    assert reward_key(fp, ART, EDIT, dict(reversed(list(settings.items()))), 0) == base  # order-free
    # settings that cannot change the reward are not part of it
    from seal_env.config import SealConfig

    a, b = SealConfig(timings=False, cache_dir="/x"), SealConfig(split="heldout", cache=False)
    assert a.inner_loop_key() == b.inner_loop_key()


def test_different_seed_or_settings_miss(env, tmp_path):
    env.evaluate(ART, EDIT, seed=0)
    _, info = env.evaluate(ART, EDIT, seed=1)
    assert info["cache_hit"] is False
    other = gym.make(
        "seal/KnowledgeIncorporation-v0", **{**TINY, "epochs": 1}, cache_dir=str(tmp_path / "rewards")
    ).unwrapped
    _, info = other.evaluate(ART, EDIT, seed=0)
    assert info["cache_hit"] is False
    _, info = other.evaluate(ART, EDIT, seed=0)
    assert info["cache_hit"] is True


def test_shared_between_env_instances(env, tmp_path):
    r1, _ = env.evaluate(ART, EDIT, seed=5)
    second = gym.make("seal/KnowledgeIncorporation-v0", **TINY, cache_dir=str(tmp_path / "rewards")).unwrapped
    r2, info = second.evaluate(ART, EDIT, seed=5)
    assert info["cache_hit"] is True and r2 == r1


def test_switch_off(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    folder = tmp_path / "rewards"
    e = gym.make("seal/KnowledgeIncorporation-v0", **TINY, cache=False, cache_dir=str(folder)).unwrapped
    for _ in range(2):
        _, info = e.evaluate(ART, EDIT, seed=0)
        assert info["cache_hit"] is False and info["seconds_train"] > 0
    assert not folder.exists()
    monkeypatch.setenv("SEAL_ENV_REWARD_CACHE", "off")
    assert not enabled(True)
    e2 = gym.make("seal/KnowledgeIncorporation-v0", **TINY, cache_dir=str(folder)).unwrapped
    e2.evaluate(ART, EDIT, seed=0)
    assert not folder.exists()


def test_custom_grader_scores_every_answer_and_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    folder = tmp_path / "rewards"
    calls = []

    def quarter(question, gold, prediction):
        calls.append((question, gold, prediction))
        return 0.25

    e = gym.make(
        "seal/KnowledgeIncorporation-v0", **TINY, reward="accuracy", cache_dir=str(folder), grader=quarter
    ).unwrapped
    for _ in range(2):
        reward, info = e.evaluate(ART, EDIT, seed=0)
        assert info["cache_hit"] is False
        # the grader's score is each answer's `correct`, so both accuracies are 0.25 and the accuracy gain 0
        assert [q["correct"] for q in info["questions"]] == [0.25] * len(ART.questions)
        assert [q["baseline_correct"] for q in info["questions"]] == [0.25] * len(ART.questions)
        assert info["adapter_accuracy"] == info["baseline_accuracy"] == 0.25 and reward == 0.0
    assert not folder.exists()
    q = ART.questions[0]
    # graded: the baseline's answer once (computed once per article), then each adapted model's answer
    assert [(c[0], c[1]) for c in calls] == [(q.question, q.answer)] * 3
    assert calls[1][2] == info["questions"][0]["answer"] and calls[0][2] == info["questions"][0]["baseline_answer"]


def test_base_weight_change_invalidates(env):
    import mlx.core as mx

    env.evaluate(ART, EDIT, seed=0)
    before = env.learner.fingerprint()
    w = env.learner.model.model.norm.weight
    env.set_base_weights({"model.norm.weight": w * 1.5})
    assert env.learner.fingerprint() != before
    _, info = env.evaluate(ART, EDIT, seed=0)
    assert info["cache_hit"] is False
    env.set_base_weights({"model.norm.weight": mx.array(w)})  # back to the original weights: the old entries hit
    assert env.learner.fingerprint() == before
    _, info = env.evaluate(ART, EDIT, seed=0)
    assert info["cache_hit"] is True


def test_timings_off_infos_are_identical(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    e = gym.make("seal/KnowledgeIncorporation-v0", **TINY, timings=False, cache_dir=str(tmp_path)).unwrapped
    a = e.evaluate(ART, EDIT, seed=0)
    b = e.evaluate(ART, EDIT, seed=0)
    assert a == b and "cache_hit" not in a[1]


def _write_many(folder: str, worker: int, n: int) -> None:
    cache = RewardCache(folder)
    for i in range(n):
        key = f"{i % 7:02d}" + "ab" * 31
        cache.put(key, float(i % 7), result_info(float(i % 7), worker=worker, payload="x" * 5000, i=i % 7))


def _check_raw_files(folder: Path, seen: set[str]) -> None:
    """Every entry file parses and is complete (never a partial write), and no key once seen has disappeared."""
    for path in folder.glob("*/*.json"):
        try:
            text = path.read_text()
        except FileNotFoundError:  # a file only goes away if something deletes it: that is a lost entry
            pytest.fail(f"{path.name} disappeared while being listed")
        try:
            entry = json.loads(text)
        except ValueError:
            pytest.fail(f"a reader saw an unparsable entry ({len(text)} characters): {text[:60]!r}")
        assert entry["key"] == path.stem and set(entry) == {"key", "reward", "info"}
        seen.add(path.stem)
    for key in seen:
        assert RewardCache(folder).get(key) is not None, f"entry {key[:8]} was seen, then lost"


def test_concurrent_writers_processes_and_threads(tmp_path):
    folder = tmp_path / "c"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(folder), w, 60)) for w in range(3)]
    threads = [threading.Thread(target=_write_many, args=(str(folder), 10 + w, 60)) for w in range(3)]
    reader = RewardCache(folder)
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    seen: set[str] = set()
    polls = 0
    while any(p.is_alive() for p in procs) or any(t.is_alive() for t in threads):
        _check_raw_files(folder, seen)
        for i in range(7):
            hit = reader.get(f"{i:02d}" + "ab" * 31)
            if hit is not None:
                assert hit[0] == float(i) and hit[1]["i"] == i and len(hit[1]["payload"]) == 5000
        polls += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    for t in threads:
        t.join()
    _check_raw_files(folder, seen)
    assert polls > 0 and len(seen) == len(reader) == 7
    assert not list(folder.glob("*/.*"))  # no temp files left behind


def _evaluate_together(folder: str, barrier, results) -> None:
    """A child process: compute the reward of (ART, EDIT, seed 0) and store it at the same moment as its twin."""
    os.environ["SEAL_ENV_REWARD_CACHE"] = folder  # conftest (imported with this module) switched the cache off
    put = RewardCache.put

    def put_together(self, key, reward, info):
        barrier.wait(timeout=300)
        return put(self, key, reward, info)

    RewardCache.put = put_together
    env = gym.make("seal/KnowledgeIncorporation-v0", **QUICK).unwrapped
    reward, info = env.evaluate(ART, EDIT, seed=0)
    results.put((reward, info["cache_hit"]))


def test_two_processes_computing_the_same_reward(tmp_path, monkeypatch):
    """Two processes train the same (article, self-edit, seed) and store it at once: both succeed, a reader never
    sees a partial entry, and the stored reward is theirs."""
    folder = tmp_path / "rewards"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_evaluate_together, args=(str(folder), barrier, results), daemon=True) for _ in "ab"]
    for p in procs:
        p.start()
    seen: set[str] = set()
    try:
        while any(p.is_alive() for p in procs):
            _check_raw_files(folder, seen)
            time.sleep(0.001)  # leave the CPU to the children
    finally:
        for p in procs:
            p.join(timeout=300)
            assert p.exitcode == 0
    _check_raw_files(folder, seen)
    (r1, hit1), (r2, hit2) = results.get(timeout=10), results.get(timeout=10)
    assert hit1 is hit2 is False and r1 == r2  # both computed it (neither found the other's entry)
    assert len(seen) == 1 and not list(folder.glob("*/.*"))
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    env = gym.make("seal/KnowledgeIncorporation-v0", **QUICK, cache_dir=str(folder)).unwrapped
    reward, info = env.evaluate(ART, EDIT, seed=0)
    assert info["cache_hit"] is True and reward == r1


def result_info(reward: float, **extra) -> dict:
    """The smallest info that the cache accepts with ``reward`` (the fields every computed result has)."""
    return {"reward": reward, "diverged": False, **{f"{k}_gain": 0.0 for k in REWARD_KINDS}, **extra}


def test_unreadable_entry_is_a_miss(tmp_path):
    cache = RewardCache(tmp_path)
    key = "cd" * 32
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text("{not json")
    assert cache.get(key) is None
    assert cache.put(key, 1.0, result_info(1.0)) and cache.get(key) == (1.0, result_info(1.0))
    assert not cache.put("ef" * 32, 1.0, result_info(1.0, bad=object()))  # not JSON-able: nothing stored
    assert cache.get("ef" * 32) is None


def test_invalid_entry_is_not_stored(tmp_path):
    cache = RewardCache(tmp_path)
    assert not cache.put(KEY, float("nan"), result_info(float("nan")))
    assert not cache.put(KEY, 0.5, {"a": 1})
    assert not cache.path(KEY).exists() and len(cache) == 0


def _without(info: dict, name: str) -> dict:
    return {k: v for k, v in info.items() if k != name}


KEY = "cd" * 32
INVALID_ENTRIES = {
    "reward NaN": {"key": KEY, "reward": float("nan"), "info": result_info(float("nan"))},
    "reward inf": {"key": KEY, "reward": float("inf"), "info": result_info(float("inf"))},
    "reward -inf": {"key": KEY, "reward": -float("inf"), "info": result_info(-float("inf"))},
    "reward a string": {"key": KEY, "reward": "0.5", "info": result_info(0.5)},
    "reward a bool": {"key": KEY, "reward": True, "info": result_info(1.0)},
    "reward missing": {"key": KEY, "info": result_info(0.5)},
    "info missing": {"key": KEY, "reward": 0.5},
    "info not a dict": {"key": KEY, "reward": 0.5, "info": [0.5]},
    "info without reward": {"key": KEY, "reward": 0.5, "info": _without(result_info(0.5), "reward")},
    "info with another reward": {"key": KEY, "reward": 0.5, "info": result_info(0.25)},
    "info without a gain": {"key": KEY, "reward": 0.5, "info": _without(result_info(0.5), "loglik_gain")},
    "info with a string gain": {"key": KEY, "reward": 0.5, "info": result_info(0.5, f1_gain="0.1")},
    "info without diverged": {"key": KEY, "reward": 0.5, "info": _without(result_info(0.5), "diverged")},
    "another key": {"key": "ab" * 32, "reward": 0.5, "info": result_info(0.5)},
    "not an object": [KEY, 0.5],
}


@pytest.mark.parametrize("entry", INVALID_ENTRIES.values(), ids=INVALID_ENTRIES.keys())
def test_invalid_entry_is_a_miss_and_the_next_put_replaces_it(tmp_path, entry):
    cache = RewardCache(tmp_path)
    cache.path(KEY).parent.mkdir(parents=True)
    cache.path(KEY).write_text(json.dumps(entry))
    assert cache.get(KEY) is None
    assert cache.put(KEY, 0.5, result_info(0.5)) and cache.get(KEY) == (0.5, result_info(0.5))


def test_nan_gain_of_a_diverged_result_is_kept(tmp_path):
    """Only the reward is promised finite: a diverged inner loop's gains may be NaN (the reward is then
    ``diverged_reward``), and such an entry is a hit."""
    cache = RewardCache(tmp_path)
    info = result_info(0.0, diverged=True, loglik_gain=float("nan"))
    assert cache.put(KEY, 0.0, info)
    reward, got = cache.get(KEY)
    assert reward == 0.0 and got["diverged"] is True and math.isnan(got["loglik_gain"])


CORRUPTIONS = {
    "reward NaN": lambda entry: {**entry, "reward": float("nan"), "info": {**entry["info"], "reward": float("nan")}},
    "info without its gains": lambda entry: {
        **entry,
        "info": {k: v for k, v in entry["info"].items() if not k.endswith("_gain")},
    },
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_entry_on_disk_is_recomputed_and_rewritten(env, tmp_path, corrupt):
    reward, info = env.evaluate(ART, EDIT, seed=2)
    (path,) = (tmp_path / "rewards").glob("*/*.json")
    stored = json.loads(path.read_text())
    path.write_text(json.dumps(corrupt(stored)))
    again, info2 = env.evaluate(ART, EDIT, seed=2)
    assert info2["cache_hit"] is False and info2["seconds_train"] > 0  # a miss: trained again
    assert math.isfinite(again) and again == reward
    assert json.loads(path.read_text()) == stored  # rewritten as computed
    third, info3 = env.evaluate(ART, EDIT, seed=2)
    assert info3["cache_hit"] is True and third == reward
