"""The speed benchmark runs end to end on the tiny model and reports every figure of issue 4."""

import json

from benchmarks import inner_loop_speed


def test_inner_loop_speed_reports_every_figure(tmp_path):
    out = tmp_path / "speed.json"
    inner_loop_speed.main(
        [
            "--model",
            "tiny-random",
            "--rewards",
            "2",
            "--no-torch",
            "--soak",
            "3",
            "--soak-answer-tokens",
            "2",
            "--json",
            str(out),
        ]
    )
    figures = json.loads(out.read_text())
    assert figures["setting"]["epochs"] == 10  # the standard setting, whatever the env default
    assert figures["matmul_gflops"]["square_2048"] > 0
    assert 0 < figures["step"]["fraction_of_matmul"]
    runs = figures["reward"]["runs"]
    assert len(runs) == 2 and all(r["train_steps"] == 10 * r["n_sequences"] for r in runs)
    assert runs[0]["seconds_baseline"] > 0 and runs[1]["seconds_baseline"] < runs[0]["seconds_baseline"]
    assert figures["peak_rss_mb"] > 0
    assert figures["soak"]["rewards"] == 3 and len(figures["soak"]["rss_mb"]) == 3


def test_batched_rewards_benchmark_reports_speedup_per_k(tmp_path):
    from benchmarks import batched_rewards

    out = tmp_path / "batched.json"
    batched_rewards.main(
        [
            "--model",
            "tiny-random",
            "--ks",
            "1,3",
            "--no-torch",
            "--set",
            "epochs=1",
            "--set",
            "answer_max_tokens=4",
            "--set",
            "max_sequences=4",
            "--json",
            str(out),
        ]
    )
    figures = json.loads(out.read_text())
    assert set(figures["k"]) == {"1", "3"}
    for k, row in figures["k"].items():
        assert row["speedup"] == row["sequential_seconds"] / row["batched_seconds"]
        assert len(row["train_steps"]) == int(k) and row["max_abs_reward_difference"] < 1e-4
        assert row["peak_rss_mb_batched"] > 0
    assert figures["settings"]["max_batch_adapters"] >= 3


def test_torch_baseline_trains_and_quizzes_in_a_child_process():
    import pytest

    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from seal_env.articles import load_articles
    from seal_env.config import SealConfig
    from seal_env.models import load_model, resolve_model_path
    from seal_env.pipeline import prepare

    from benchmarks import torch_baseline

    cfg = SealConfig(model="tiny-random", epochs=1, answer_max_tokens=3)
    _, tok = load_model("tiny-random")
    article = load_articles("bundled")[0]
    data = prepare(cfg, tok, article, "1. A fact.\n2. Another fact.").data
    job = {
        "kind": "rewards",
        "folder": str(resolve_model_path("tiny-random")),
        "settings": cfg.to_dict(),
        "threads": 1,
        "datas": [data],
        "seeds": [0],
        "quiz": torch_baseline.quiz_job(tok, article),
    }
    out = torch_baseline.run(job, threads=1)
    assert len(out["runs"]) == 1 and out["runs"][0]["train_steps"] == len(data)
    assert out["runs"][0]["seconds_total"] >= out["runs"][0]["seconds_train"] > 0
