"""Shared fixtures: a tiny-random-model environment with short inner-loop settings."""

import os
from pathlib import Path

import pytest

# Every test trains for real: the persistent reward cache would turn repeated evaluations into lookups (and make
# determinism tests vacuous). tests/test_cache.py switches it back on, with its own folder, where it is the subject.
os.environ["SEAL_ENV_REWARD_CACHE"] = "off"

import seal_env  # noqa: F401  (registers the env ids, loads OpenBLAS before mlx)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY = dict(
    model="tiny-random",
    epochs=2,
    lora_rank=4,
    lora_alpha=8.0,
    answer_max_tokens=6,
    learning_rate=1e-3,
    max_sequences=4,
    split="all",
)


@pytest.fixture(scope="session")
def tiny_env():
    """One tiny-random environment shared by the tests that do not change its settings."""
    from seal_env.env import KnowledgeIncorporationEnv

    env = KnowledgeIncorporationEnv(render_mode="ansi", **TINY)
    yield env
    env.close()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA
