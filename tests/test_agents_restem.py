"""ReSTEM on the tiny preset: end to end; runs killed mid-round and in round 0 that resume to the same result;
``--threshold``, ``inner_loop_learner="base"`` and the ``checkpoint:RUN:ROUND`` policy spec."""

import dataclasses
import json
from pathlib import Path

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.executors import InProcessExecutor
from seal_env.models import load_model

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from agents import restem
from agents.base import Experience
from agents.command_line import build_parser, parse_args
from agents.config import preset_config
from agents.policies import PromptPolicy, make_policy
from agents.run import load_splits, round_articles
from agents.rundir import Run

from conftest import assert_same_run, count_evaluations, crashed_copy, journal

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


def test_select_best_keeps_each_articles_best_above_threshold_and_can_skip_empty_self_edits():
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
    batch[1].info["empty_action"] = True  # a1 taught nothing of its own: a2 is the best non-empty one
    assert [e.self_edit for e in restem.select_best(batch, None)] == ["a1", "b1"]
    assert [e.self_edit for e in restem.select_best(batch, None, keep_empty=False)] == ["a2", "b1"]
    for e in batch[3:]:
        e.info["empty_action"] = True
    assert [e.self_edit for e in restem.select_best(batch, None, keep_empty=False)] == ["a2"]


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
    png = (run_dir / "learning_curve.png").read_bytes()  # the held-out curve, written with the results
    assert results["learning_curve"] == str(run_dir / "learning_curve.png") and png.startswith(b"\x89PNG")
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

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # settings come from the run directory
        restem.main(["--resume", str(run_dir), "--k", "3"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--resume takes the settings saved in" in err and "not k" in err
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])

    assert len(evaluated) == 11 - done  # nothing in the journal was evaluated again
    strip = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
    assert strip(resumed["rounds"]) == strip(ref["rounds"])
    key = lambda r: (r["round"], r["phase"], r["article_id"], r["k"])  # noqa: E731
    got = {key(r): (r["self_edit"], r["reward"]) for r in records(run_dir, "reward")}
    assert got == {key(r): (r["self_edit"], r["reward"]) for r in records(ref_dir, "reward")}
    mine, theirs = mx.load(resumed["checkpoint"]), mx.load(ref["checkpoint"])
    assert mine.keys() == theirs.keys() and all(mx.array_equal(mine[k], theirs[k]) for k in mine)


def _same(weights, other):
    return all(mx.array_equal(v, other[k]) for k, v in weights.items())


@pytest.fixture(scope="module")
def initial():
    """The tiny model's weights before any update (plain mlx-lm names, as in the checkpoints)."""
    return dict(tree_flatten(load_model("tiny-random")[0].parameters()))


def test_killed_in_round_0_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    """Killed while writing round 0's held-out reward (its samples journaled, the reward record torn): the resumed
    run takes the journaled samples, drops the torn record and ends where the uninterrupted one did."""
    ref_dir, ref = reference
    records = journal(ref_dir)
    assert [(r["event"], r["round"], r["phase"]) for r in records[:2]] == [
        ("samples", 0, "heldout"),
        ("reward", 0, "heldout"),
    ]
    run_dir = crashed_copy(ref_dir, tmp_path / "crash", 1, torn=True)
    evaluated = count_evaluations(monkeypatch)
    resumed = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
    assert len(evaluated) == sum(r["event"] == "reward" for r in records) == 11  # every reward, each once
    assert_same_run(run_dir, resumed, ref_dir, ref)


def test_threshold_above_every_reward_leaves_the_policy_unchanged(reference, tmp_path, initial):
    """``--threshold`` above every reward keeps nothing: no update, the round's checkpoint is the initial model,
    and the held-out rollout after the round is round 0's again (the same samples and rewards). Round 1's training
    rewards are the reference run's, of which that run (no threshold) kept each article's best."""
    results = restem.main(ARGS + ["--runs-dir", str(tmp_path), "--name", "t", "--threshold", "1e9", "--rounds", "1"])
    run_dir = tmp_path / "t"
    assert json.loads((run_dir / "config.json").read_text())["config"]["threshold"] == 1e9
    assert results["rounds"][1]["learn"] == {"kept": 0.0}

    def round_1_rewards(folder):
        return {
            (r["article_id"], r["k"]): r["reward"]
            for r in journal(folder)
            if (r["event"], r.get("round"), r.get("phase")) == ("reward", 1, "train")
        }

    ref_dir, ref = reference
    assert round_1_rewards(run_dir) == round_1_rewards(ref_dir) and len(round_1_rewards(run_dir)) == 4
    assert ref["rounds"][1]["learn"]["kept"] == 2.0
    checkpoint = mx.load(results["checkpoint"])
    assert checkpoint and _same(checkpoint, initial)
    samples = {
        r["round"]: r["self_edits"] for r in journal(run_dir) if (r["event"], r.get("phase")) == ("samples", "heldout")
    }
    assert samples[0] == samples[1] and results["rounds"][0]["heldout"] == results["rounds"][1]["heldout"]


def test_inner_loop_learner_base_keeps_the_original_model(reference, tmp_path, monkeypatch, initial):
    """With ``inner_loop_learner="base"`` the policy changes but every reward trains the original model.

    The crashed state is a base run killed after round 1's update: until then a base run journals what the
    reference (``policy``) run did, as no reward was computed after an update yet."""
    ref_dir, ref = reference
    records = journal(ref_dir)
    learn = next(i for i, r in enumerate(records) if (r["event"], r["round"]) == ("learn", 1))
    run_dir = crashed_copy(ref_dir, tmp_path / "base", learn + 1)
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["inner_loop_learner"] == "policy"
    meta["config"]["inner_loop_learner"] = "base"
    (run_dir / "config.json").write_text(json.dumps(meta))
    broadcasts, inner_models = [], []
    monkeypatch.setattr(InProcessExecutor, "set_base_weights", lambda self, weights: broadcasts.append(weights))
    evaluate = InProcessExecutor.evaluate

    def evaluate_and_look(self, requests, on_result=None):
        inner_models.append(_same(self.env.unwrapped.learner.base_weights(), initial))
        return evaluate(self, requests, on_result)

    monkeypatch.setattr(InProcessExecutor, "evaluate", evaluate_and_look)
    results = restem.main(["--resume", str(run_dir), "--wandb-mode", "disabled"])
    assert broadcasts == [] and inner_models == [True] * 3  # round 1 held-out, round 2 train and held-out
    assert not _same(mx.load(results["checkpoint"]), initial)  # while the policy was updated
    key = lambda r: (r["round"], r["phase"], r["article_id"], r["k"])  # noqa: E731
    rewards = lambda records: {key(r): r["reward"] for r in records if r["event"] == "reward"}  # noqa: E731
    mine, theirs = rewards(journal(run_dir)), rewards(records)
    assert mine.keys() == theirs.keys()
    after_update = {k for k in theirs if k[0] == 2 or k[:2] == (1, "heldout")}  # the reference trained the policy
    assert len(after_update) == 6 and all(mine[k] != theirs[k] for k in after_update)
    assert all(mine[k] == theirs[k] for k in theirs.keys() - after_update)  # journaled before the crash


def test_checkpoint_policy_spec_picks_a_round(reference, initial):
    """``checkpoint:RUN:ROUND``: round 0 is the initial model, round N the policy saved after round N (the default
    the last), with the run's sampling settings; a round without a checkpoint is a FileNotFoundError."""
    run_dir, _ = reference

    def weights(spec):
        policy = make_policy(spec)
        assert isinstance(policy, PromptPolicy) and policy.max_tokens == 8  # the run's self_edit_max_tokens
        return dict(tree_flatten(policy.model.parameters()))

    assert _same(weights(f"checkpoint:{run_dir}:0"), initial)
    for n in (1, 2):
        saved, got = (
            mx.load(str(run_dir / "rounds" / f"{n:03d}" / "policy.safetensors")),
            weights(f"checkpoint:{run_dir}:{n}"),
        )
        assert saved and _same(saved, got) and not _same(saved, initial)
        assert _same({k: v for k, v in got.items() if k not in saved}, initial)  # nothing else changed
    assert _same(mx.load(str(run_dir / "rounds" / "002" / "policy.safetensors")), weights(f"checkpoint:{run_dir}"))
    with pytest.raises(FileNotFoundError, match="no checkpoint for round 3"):
        make_policy(f"checkpoint:{run_dir}:3")
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        make_policy(f"checkpoint:{Path(run_dir).parent / 'missing'}:1")


def test_the_command_with_no_preset_runs_learn_and_demo_stays_available():
    parser = build_parser("restem", restem.ReSTEMConfig, restem.PRESETS, "ReSTEM.", restem.DEFAULT_PRESET)
    learn = preset_config(restem.ReSTEMConfig, restem.PRESETS, "learn")
    cfg, preset, resume = parse_args(parser, restem.ReSTEMConfig, restem.PRESETS, [])
    assert (cfg, preset, resume) == (learn, "learn", None) and restem.DEFAULT_PRESET == "learn"
    cfg, preset, _ = parse_args(parser, restem.ReSTEMConfig, restem.PRESETS, ["--preset", "demo", "--k", "4"])
    demo = preset_config(restem.ReSTEMConfig, restem.PRESETS, "demo")
    assert preset == "demo" and cfg == dataclasses.replace(demo, k=4) and demo != learn
    assert "(default: learn)" in parser.format_help() and "the defaults above are learn's" in parser.format_help()


def test_learn_preset_fits_the_bundled_articles():
    """The ``learn`` preset runs on the bundled articles: 16 held out, and no training article used twice."""
    cfg = preset_config(restem.ReSTEMConfig, restem.PRESETS, "learn")
    cfg.validate()
    train, heldout = load_splits(cfg)
    assert len(heldout) == 16 and not {a.id for a in train} & {a.id for a in heldout}
    used = [a.id for r in range(1, cfg.rounds + 1) for a in round_articles(train, r, cfg)]
    assert len(used) == cfg.rounds * cfg.articles_per_round == len(set(used))
    assert not cfg.env.include_passage and cfg.threshold == 0.0  # writing nothing earns 0 and is never kept
