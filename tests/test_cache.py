"""The persistent reward cache: hits, misses, key sensitivity, concurrent writers, the switch, base-weight changes."""

import json
import multiprocessing as mp
import threading
import time

from seal_env.articles import Article, Question
from seal_env.cache import RewardCache, enabled, reward_key

import gymnasium as gym
import pytest

from conftest import TINY

EDIT = "1. The observatory sits on Mount Tervik.\n2. It was founded in 1911."
ART = Article(
    "Tervik Observatory",
    "The Tervik Observatory sits on Mount Tervik. It was founded in 1911.",
    (Question("Where is the Tervik Observatory?", "Mount Tervik"),),
)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    e = gym.make("seal/KnowledgeIncorporation-v0", **TINY, cache_dir=str(tmp_path / "rewards")).unwrapped
    yield e
    e.close()


def test_miss_then_hit_is_identical_and_fast(env):
    r1, info1 = env.evaluate(ART, EDIT, seed=3)
    assert info1["cache_hit"] is False and info1["seconds_train"] > 0
    t = time.perf_counter()
    r2, info2 = env.evaluate(ART, EDIT, seed=3)
    elapsed = time.perf_counter() - t
    assert info2["cache_hit"] is True and elapsed < 0.2  # typically ~1 ms
    assert info2["seconds_train"] == 0.0 and info2["seconds_total"] <= elapsed
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


def test_custom_grader_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    folder = tmp_path / "rewards"
    e = gym.make(
        "seal/KnowledgeIncorporation-v0", **TINY, cache_dir=str(folder), grader=lambda q, gold, pred: 1.0
    ).unwrapped
    for _ in range(2):
        _, info = e.evaluate(ART, EDIT, seed=0)
        assert info["cache_hit"] is False
    assert not folder.exists()


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
        cache.put(key, float(i % 7), {"worker": worker, "payload": "x" * 5000, "i": i % 7})


def test_concurrent_writers_processes_and_threads(tmp_path):
    folder = str(tmp_path / "c")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(folder, w, 60)) for w in range(3)]
    threads = [threading.Thread(target=_write_many, args=(folder, 10 + w, 60)) for w in range(3)]
    reader = RewardCache(folder)
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    seen = 0
    while any(p.is_alive() for p in procs) or any(t.is_alive() for t in threads):
        for i in range(7):
            hit = reader.get(f"{i:02d}" + "ab" * 31)
            if hit is not None:  # never a partial file
                assert hit[0] == float(i) and hit[1]["i"] == i and len(hit[1]["payload"]) == 5000
                seen += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    for t in threads:
        t.join()
    assert len(reader) == 7
    assert not list((tmp_path / "c").glob("*/*.tmp"))  # no temp files left behind


def test_unreadable_entry_is_a_miss(tmp_path):
    cache = RewardCache(tmp_path)
    key = "cd" * 32
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text("{not json")
    assert cache.get(key) is None
    assert cache.put(key, 1.0, {"a": 1}) and cache.get(key) == (1.0, {"a": 1})
    assert not cache.put("ef" * 32, 1.0, {"bad": object()})  # not JSON-able: nothing stored
    assert cache.get("ef" * 32) is None
