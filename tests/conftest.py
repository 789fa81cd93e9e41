"""Shared fixtures (a tiny-random-model environment with short inner-loop settings), helpers, and the hooks of
SEAL_ENV_STRICT_SKIPS=1 (CI): a skip not in ALLOWED_SKIPS fails."""

import os
import re
from pathlib import Path

import pytest

# Every test trains for real: the persistent reward cache would turn repeated evaluations into lookups (and make
# determinism tests vacuous). tests/test_cache.py switches it back on, with its own folder, where it is the subject.
os.environ["SEAL_ENV_REWARD_CACHE"] = "off"

import seal_env  # noqa: F401  (registers the env ids, loads OpenBLAS before mlx)

pytest_plugins = ["pytester"]  # tests/test_ci_skips.py runs pytest on small test files

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


# ------------------------------------------------------------------ strict skips (.ci/run sets SEAL_ENV_STRICT_SKIPS=1)
STRICT_SKIPS = "SEAL_ENV_STRICT_SKIPS"
#: Skip reasons (whole-reason regular expressions) that SEAL_ENV_STRICT_SKIPS=1 lets stand: states of the machine
#: that CI neither sets up nor can rule out. Any other skip (a missing or broken package, data file or compiler)
#: fails its test, or its module at collection, under the switch.
ALLOWED_SKIPS = (
    r"glibc < 2\.33 has no mallinfo2",  # tests/test_learner.py, an older C library
    r"giving a file to another user needs root",  # tests/test_blas.py, pytest run by a user other than root
    r"SQuAD loaded from a local cache \(\d+ articles\); offline error path not exercised",  # tests/test_articles.py
)


def strict_skips() -> bool:
    """Whether skips fail: SEAL_ENV_STRICT_SKIPS is 1; unset, empty or 0 leaves them skips; else a usage error."""
    value = os.environ.get(STRICT_SKIPS, "")
    if value not in ("", "0", "1"):
        raise pytest.UsageError(f"{STRICT_SKIPS} must be 1 (skips fail), 0 or empty, not {value!r}")
    return value == "1"


def pytest_configure(config: pytest.Config) -> None:
    strict_skips()  # a bad value stops the run before anything is collected


def fail_unexpected_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    """Under the switch, turn a skipped ``report`` whose reason is not in ALLOWED_SKIPS into a failure (an xfail is
    not a skip)."""
    if not report.skipped or hasattr(report, "wasxfail") or not strict_skips():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if any(re.fullmatch(allowed, reason) for allowed in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, which {STRICT_SKIPS}=1 does not allow: {reason}\n"
        "(a skip that is expected in CI belongs in ALLOWED_SKIPS, tests/conftest.py)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module skipped at import (a module-level ``pytest.importorskip``, ``pytest.skip(allow_module_level=True)``)."""
    report = yield
    fail_unexpected_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test skipped by a mark, a fixture or itself."""
    report = yield
    fail_unexpected_skip(report)
    return report


@pytest.fixture(scope="session")
def tiny_env():
    """One tiny-random environment shared by the tests that do not change its settings."""
    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    env = KnowledgeIncorporationEnv(render_mode="ansi", **TINY)
    yield env
    env.close()


@pytest.fixture(scope="module")
def one_blas_thread():
    """This process at 1 BLAS thread for a module, as a single-thread worker: results are bit-identical for a fixed
    BLAS thread count (another count changes float rounding in the 7th digit)."""
    from seal_env.executors import blas_threads

    before = blas_threads()
    blas_threads(1)
    yield
    blas_threads(before)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


# ------------------------------------------------------------------ agents' run directories (tests/test_agents_*.py)
def journal(run_dir: Path) -> list[dict]:
    """The records of an agents run's journal, in order."""
    import json

    return [json.loads(line) for line in (Path(run_dir) / "journal.jsonl").read_text().splitlines()]


def crashed_copy(run_dir: Path, dest: Path, records: int, checkpoints=None, torn: bool = False) -> Path:
    """A finished agents run copied to ``dest`` as a process killed after its journal's first ``records`` records
    would have left it: the journal cut there (``torn``: and half of the next record written, without its newline),
    no results.json, and the policy checkpoints of the rounds whose learn record was kept (``checkpoints``: of
    these rounds instead; a checkpoint is saved just before its learn record)."""
    import json
    import shutil

    shutil.copytree(run_dir, dest)
    lines = (dest / "journal.jsonl").read_text().splitlines(keepends=True)
    text = "".join(lines[:records]) + (lines[records][: len(lines[records]) // 2] if torn else "")
    (dest / "journal.jsonl").write_text(text)
    if checkpoints is None:
        kept = [json.loads(line) for line in lines[:records]]
        checkpoints = [r["round"] for r in kept if r["event"] == "learn"]
    for path in (dest / "rounds").glob("*/policy.safetensors"):
        if int(path.parent.name) not in checkpoints:
            path.unlink()
    (dest / "results.json").unlink()
    return dest


def count_evaluations(monkeypatch) -> list:
    """Every reward request an in-process executor evaluates from now on (the list fills as they are)."""
    from seal_env.executors import InProcessExecutor

    evaluated: list = []
    evaluate = InProcessExecutor.evaluate

    def counted(self, requests, on_result=None):
        requests = list(requests)
        evaluated.extend(requests)
        return evaluate(self, requests, on_result)

    monkeypatch.setattr(InProcessExecutor, "evaluate", counted)
    return evaluated


def assert_same_run(run_dir: Path, results: dict, ref_dir: Path, ref: dict) -> None:
    """A resumed run ended where the uninterrupted one did: the same summaries (but the seconds), the same journal
    records in the same order, the same self-edits and rewards, bit-identical policy checkpoints."""
    import mlx.core as mx

    strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
    assert strip(results["rounds"]) == strip(ref["rounds"])
    key = lambda r: (r["event"], r.get("round"), r.get("phase"), r.get("article_id"), r.get("k"))  # noqa: E731
    mine, theirs = journal(run_dir), journal(ref_dir)
    assert [key(r) for r in mine] == [key(r) for r in theirs]  # nothing journaled twice, nothing missing
    content = lambda records: [r.get("self_edits") or r.get("stats") for r in records]  # noqa: E731
    assert content(mine) == content(theirs)  # the same samples and update statistics
    edits = lambda records: [(r["self_edit"], r["reward"]) for r in records if r["event"] == "reward"]  # noqa: E731
    assert edits(mine) == edits(theirs)
    rounds = sorted(p.parent.name for p in (Path(ref_dir) / "rounds").glob("*/policy.safetensors"))
    assert sorted(p.parent.name for p in (Path(run_dir) / "rounds").glob("*/policy.safetensors")) == rounds
    for name in rounds:
        a, b = (mx.load(str(Path(d) / "rounds" / name / "policy.safetensors")) for d in (run_dir, ref_dir))
        assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]) for k in a)
