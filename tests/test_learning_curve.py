"""benchmarks.learning_curve on the tiny preset: runs, uses common random numbers, reports a paired CI, resumes."""

import json
import math

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env import stats

import numpy as np
import pytest

from benchmarks import learning_curve

ARGV = ["--preset", "tiny", "--runs", "2", "--", "--heldout-articles", "3", "--rounds", "2"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("lc")
    return out, learning_curve.main(["--out", str(out), *ARGV])


def journal(path):
    return [json.loads(line) for line in (path / "journal.jsonl").read_text().splitlines()]


def test_heldout_rollouts_use_common_random_numbers(report):
    out, _ = report
    for seed in (0, 1):
        recs = [r for r in journal(out / f"run-{seed}") if r["event"] == "reward" and r["phase"] == "heldout"]
        by_round = {}
        for r in recs:
            by_round.setdefault(r["round"], {})[(r["article_id"], r["k"])] = r["seed"]
        assert sorted(by_round) == [0, 1, 2] and len(by_round[0]) == 3
        assert by_round[0] == by_round[1] == by_round[2]  # the same inner-loop seeds every round
    seeds = [{r["seed"] for r in journal(out / f"run-{s}") if r["event"] == "reward"} for s in (0, 1)]
    assert not seeds[0] & seeds[1]  # independent runs


def test_report_matches_the_journal(report):
    out, rep = report
    assert rep["runs"] == 2 and len(rep["curves"]) == 2 and (out / "learning_curve.png").stat().st_size > 0
    assert json.loads((out / learning_curve.RESULTS).read_text()) == json.loads(json.dumps(rep))
    for seed, c in enumerate(rep["curves"]):
        recs = [r for r in journal(out / f"run-{seed}") if r["event"] == "reward" and r["phase"] == "heldout"]
        reward = {(r["round"], r["article_id"]): r["reward"] for r in recs}  # heldout_k = 1
        infos = {(r["round"], r["article_id"]): r["info"] for r in recs}
        edits = {
            r["round"]: r["self_edits"]
            for r in journal(out / f"run-{seed}")
            if (r["event"], r.get("phase")) == ("samples", "heldout")
        }
        ids = sorted({a for _, a in reward})
        assert [r["round"] for r in c["rounds"]] == [0, 1, 2] and c["n_articles"] == 3
        for row in c["rounds"]:
            values = [reward[(row["round"], a)] for a in ids]
            mean, low, high = stats.mean_ci(values)
            assert row["heldout_reward"] == pytest.approx(mean) and row["heldout_ci"] == pytest.approx([low, high])
            for key in ("accuracy_gain", "f1_gain"):
                assert row[key] == pytest.approx(np.mean([infos[(row["round"], a)][key] for a in ids])), key
            chars = [len(e) for a in ids for e in edits[row["round"]][a]]
            assert row["self_edit_chars"] == pytest.approx(np.mean(chars)) and row["seconds"] > 0
            if row["round"] == 0:
                assert "change" not in row
                continue
            diff = [reward[(row["round"], a)] - reward[(0, a)] for a in ids]
            ch = row["change"]
            half = stats.t_quantile(0.975, 2) * float(np.std(diff, ddof=1)) / math.sqrt(3)
            assert ch["mean_diff"] == pytest.approx(np.mean(diff)) and ch["n_articles"] == 3
            assert ch["ci"] == pytest.approx([np.mean(diff) - half, np.mean(diff) + half])
            assert ch["significant"] == (ch["ci"][0] > 0 or ch["ci"][1] < 0)
            assert row["article_changes"] == pytest.approx(dict(zip(ids, diff, strict=True)))
    last = [c["rounds"][-1]["change"] for c in rep["curves"]]
    assert rep["runs_significantly_up"] == sum(ch["significant"] and ch["mean_diff"] > 0 for ch in last)
    assert rep["mean_last_change"] == pytest.approx(np.mean([ch["mean_diff"] for ch in last]))
    per_article = [np.mean([c["rounds"][-1]["article_changes"][a] for c in rep["curves"]]) for a in ids]
    mean, low, high = stats.mean_ci(per_article)
    pooled = rep["pooled_last_change"]
    assert pooled["mean_diff"] == pytest.approx(mean) and pooled["ci"] == pytest.approx([low, high])
    assert pooled["n_articles"] == 3 and pooled["runs"] == 2


def test_pooled_change_needs_the_same_articles_in_every_run():
    def run(changes):
        return {"rounds": [{"round": 0}, {"round": 1, "article_changes": changes}]}

    pooled = learning_curve.pooled_change([run({"a": 0.1, "b": 0.3, "c": 0.2}), run({"c": 0.4, "a": 0.3, "b": 0.1})])
    assert pooled is not None and pooled["mean_diff"] == pytest.approx(0.7 / 3) and pooled["runs"] == 2
    assert pooled["ci"][0] < pooled["mean_diff"] < pooled["ci"][1]
    assert learning_curve.pooled_change([run({"a": 0.1, "b": 0.3}), run({"a": 0.1, "c": 0.3})]) is None
    assert learning_curve.pooled_change([{"rounds": [{"round": 0}]}]) is None  # no trained round


def test_rerun_resumes_without_recomputing(report, capsys):
    out, rep = report
    before = [(out / f"run-{s}" / "journal.jsonl").read_bytes() for s in (0, 1)]
    again = learning_curve.main(["--out", str(out), *ARGV])
    assert [(out / f"run-{s}" / "journal.jsonl").read_bytes() for s in (0, 1)] == before  # nothing new computed

    def scores(r):  # the report without its wall-clock figures
        return [[{k: v for k, v in row.items() if k != "seconds"} for row in c["rounds"]] for c in r["curves"]]

    assert scores(again) == scores(rep)
    assert "held-out change, round 2 - round 0" in capsys.readouterr().out


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        learning_curve.main(["--out", str(tmp_path / "lc"), "--runs", "0"])
    assert exit_.value.code == 2 and "--runs must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "lc").exists()  # nothing was created
