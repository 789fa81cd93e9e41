"""ReSTEM on the tiny preset: end to end, and a run killed mid-round that resumes to the same result."""

import json

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.executors import InProcessExecutor

import mlx.core as mx
import pytest

from agents import restem
from agents.base import Experience
from agents.policies import PromptPolicy, make_policy
from agents.rundir import Run

ARGS = ["--preset", "tiny", "--wandb-mode", "disabled", "--no-cache"]  # every reward computed, none reused


def records(run_dir, event):
    return [
        json.loads(line)
        for line in (run_dir / "journal.jsonl").read_text().splitlines()
        if json.loads(line)["event"] == event
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted tiny run."""
    runs = tmp_path_factory.mktemp("runs")
    results = restem.main(ARGS + ["--runs-dir", str(runs), "--name", "ref"])
    return runs / "ref", results


def test_select_best_keeps_each_articles_best_above_threshold():
    a, b = (Article(t, "c " + t, (Question("q", "a"),)) for t in "ab")
    batch = [
        Experience(a, "a0", 0.1, k=0),
        Experience(a, "a1", 0.3, k=1),
        Experience(a, "a2", 0.3, k=2),
        Experience(b, "b0", -0.2, k=0),
        Experience(b, "b1", 0.0, k=1),
    ]
    assert [e.self_edit for e in restem.select_best(batch, None)] == ["a1", "b1"]
    assert [e.self_edit for e in restem.select_best(batch, 0.0)] == ["a1"]


def test_tiny_preset_end_to_end(reference, capsys):
    run_dir, results = reference
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    assert "train" not in results["rounds"][0] and results["rounds"][0]["heldout"]["n"] == 1
    for summary in results["rounds"][1:]:
        assert summary["train"]["n"] == 4 and summary["learn"]["kept"] == 2 and summary["learn"]["sft_steps"] == 2
        assert summary["learn"]["sft_loss"] > 0 and not summary["learn"]["diverged"]
    assert len(records(run_dir, "reward")) == 2 * 4 + 3 * 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["algorithm"] == "restem" and config["config"]["env"]["model"] == "tiny-random"
    assert config["config"]["k"] == 2 and config["config"]["env"]["max_loss"] == 50.0  # every setting saved
    assert json.loads((run_dir / "results.json").read_text())["rounds"] == results["rounds"]
    assert results["checkpoint"] == str(run_dir / "rounds" / "002" / "policy.safetensors")
    weights = mx.load(results["checkpoint"])
    assert weights and all(name.endswith("proj.weight") for name in weights)
    policy = make_policy(f"checkpoint:{run_dir}", max_tokens=4)
    assert isinstance(policy, PromptPolicy) and len(policy.propose([{"title": "t", "context": "c"}], k=2)[0]) == 2


def test_killed_run_resumes_to_the_same_result(reference, tmp_path, monkeypatch, capsys):
    ref_dir, ref = reference
    append, evaluated = Run.append, []

    def crash_in_round_2(self, record):  # the process dies right after the 2nd reward of round 2 is written
        append(self, record)
        if record["event"] == "reward" and record["round"] == 2 and record["k"] == 1:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(Run, "append", crash_in_round_2)
    with pytest.raises(RuntimeError, match="simulated kill"):
        restem.main(ARGS + ["--runs-dir", str(tmp_path), "--name", "crash"])
    run_dir = tmp_path / "crash"
    done = len(records(run_dir, "reward"))
    with open(run_dir / "journal.jsonl", "a") as f:  # and was killed while writing the next record
        f.write('{"event": "reward", "round": 2, "phase": "tr')
    monkeypatch.setattr(Run, "append", append)
    evaluate = InProcessExecutor.evaluate
    monkeypatch.setattr(
        InProcessExecutor,
        "evaluate",
        lambda self, reqs, on_result=None: evaluated.extend(reqs) or evaluate(self, reqs, on_result),
    )

    with pytest.raises(SystemExit, match="2"):  # settings come from the run directory
        restem.main(["--resume", str(run_dir), "--k", "3"])
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])

    assert len(evaluated) == 11 - done  # nothing in the journal was evaluated again
    strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
    assert strip(resumed["rounds"]) == strip(ref["rounds"])
    key = lambda r: (r["round"], r["phase"], r["article_id"], r["k"])  # noqa: E731
    got = {key(r): (r["self_edit"], r["reward"]) for r in records(run_dir, "reward")}
    assert got == {key(r): (r["self_edit"], r["reward"]) for r in records(ref_dir, "reward")}
    mine, theirs = mx.load(resumed["checkpoint"]), mx.load(ref["checkpoint"])
    assert mine.keys() == theirs.keys() and all(mx.array_equal(mine[k], theirs[k]) for k in mine)
