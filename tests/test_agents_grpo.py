"""GRPO on the tiny preset, logging to wandb offline inside the run directory."""

import json

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.models import load_model

import mlx.core as mx
from mlx.utils import tree_flatten

from agents import grpo
from agents.base import Experience


def test_group_advantages_are_normalised_within_each_article():
    a, b = (Article(t, "c " + t, (Question("q", "a"),)) for t in "ab")
    batch = [Experience(a, "", 1.0), Experience(a, "", 3.0), Experience(b, "", 0.5), Experience(b, "", 0.5)]
    assert grpo.group_advantages(batch, eps=0.0) == [-1.0, 1.0, 0.0, 0.0]


def test_tiny_preset_end_to_end_with_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # no API key: "online" must fall back to offline
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.delenv(var, raising=False)
    results = grpo.main(
        ["--preset", "tiny", "--runs-dir", str(tmp_path), "--name", "g", "--wandb-mode", "online", "--no-cache"]
    )
    run_dir = tmp_path / "g"
    assert [r["round"] for r in results["rounds"]] == [0, 1, 2]
    for summary in results["rounds"][1:]:
        learn = summary["learn"]
        assert learn["used"] == 4 and learn["steps"] == 2 and learn["kl"] >= 0 and not learn["diverged"]
    initial = dict(tree_flatten(load_model("tiny-random")[0].parameters()))
    trained = mx.load(results["checkpoint"])
    assert len(trained) == 4 and all(not mx.array_equal(trained[k], initial[k]) for k in trained)  # q, v x 2 layers
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    tables = sorted((offline[0] / "files" / "media" / "table" / "self_edits").glob("round_*.table.json"))
    assert len(tables) == 3 and len(json.loads(tables[-1].read_text())["data"]) == 4 + 1
