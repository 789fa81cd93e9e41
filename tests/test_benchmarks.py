"""The speed benchmark runs end to end on the tiny model and reports every figure it promises."""

import json
import math
import os

import seal_env  # noqa: F401  (OpenBLAS before mlx)

import numpy as np
import pytest

from benchmarks import inner_loop_speed


def test_inner_loop_speed_reports_every_figure(tmp_path, monkeypatch):
    from seal_env.reward.pipeline import Baselines

    baseline_quizzes = []  # (article, quizzes computed before the call, after it), per reward's baseline lookup
    get = Baselines.get

    def counting_get(self, article):
        before = self.computed
        result = get(self, article)
        baseline_quizzes.append((article.id, before, self.computed))
        return result

    monkeypatch.setattr(Baselines, "get", counting_get)
    out = tmp_path / "speed.json"
    inner_loop_speed.main(
        [
            "--model",
            "tiny-random",
            "--rewards",
            "2",
            "--no-torch",
            "--soak",
            "5",  # the slope is fitted on the second half of the soak: 3 points, the fewest that give one
            "--soak-answer-tokens",
            "2",
            "--json",
            str(out),
        ]
    )
    figures = json.loads(out.read_text())
    assert figures["setting"]["epochs"] == 10  # the benchmark's standard setting, whatever the env default
    # (a)-(b): the step's throughput is its analytic FLOPs over its time, as a fraction of the best matmul ceiling
    step, before, after = figures["step"], figures["matmul_gflops"], figures["matmul_gflops_after"]
    assert all(v > 0 for v in (*before.values(), *after.values(), step["seconds_per_step"], step["gflop_per_step"]))
    assert step["gflops"] == pytest.approx(step["gflop_per_step"] / step["seconds_per_step"], rel=1e-12)
    ceiling = max(before["square_2048"], after["square_2048"])
    assert step["fraction_of_matmul"] == pytest.approx(step["gflops"] / ceiling, rel=1e-12)
    # (c): every reward trains 10 epochs over its sequences; the phases add up to at most the total
    reward = figures["reward"]
    runs = reward["runs"]
    assert len(runs) == 2 and all(r["train_steps"] == 10 * r["n_sequences"] for r in runs)
    for r in runs:
        phases = sum(r[f"seconds_{p}"] for p in ("baseline", "reset", "train", "eval"))
        assert 0 < phases <= r["seconds_total"] + 1e-9
    assert reward["first_reward_seconds"] == runs[0]["seconds_total"]
    assert reward["steady"] == pytest.approx({k: v for k, v in runs[1].items() if k.startswith("seconds")})
    assert reward["tokens_per_sequence"] == runs[0]["train_tokens"] / runs[0]["n_sequences"]
    # the baseline quiz runs for the first reward only; the second reward (same article) reuses it
    (first, c0, c1), (second, c2, c3) = baseline_quizzes[:2]
    assert first == second and (c1 - c0, c3 - c2) == (1, 0)
    # (d): a soak of 5 rewards has 5 RSS figures and a finite slope: the fit of its second half
    soak = figures["soak"]
    rss = soak["rss_mb"]
    assert soak["rewards"] == 5 and len(rss) == 5 and all(x > 0 for x in rss)
    assert (soak["rss_first_mb"], soak["rss_last_mb"], soak["rss_max_mb"]) == (rss[0], rss[-1], max(rss))
    slope = soak["slope_mb_per_100_rewards_second_half"]
    assert math.isfinite(slope) and slope == pytest.approx(100 * np.polyfit(np.arange(3), rss[2:], 1)[0], abs=1e-9)
    assert 0 < figures["peak_rss_mb"] <= figures["peak_rss_mb_after_soak"]  # the peak never goes down
    assert figures["peak_rss_mb_after_soak"] >= max(rss) - 1  # and is at least every RSS seen (MB rounding)


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
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from seal_env.articles import load_articles
    from seal_env.config import SealConfig
    from seal_env.models import load_model, resolve_model_path
    from seal_env.reward.pipeline import prepare

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


def test_decode_speed_reports_fraction_of_bound_per_batch(tmp_path):
    from seal_env.models import load_model

    from mlx.utils import tree_flatten

    from benchmarks import decode_speed

    out = tmp_path / "decode.json"
    figures = decode_speed.main(
        ["--model", "tiny-random", "--batch-sizes", "1,3", "--steps", "2", "--prompt-tokens", "8", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    model, _ = load_model("tiny-random")
    assert figures["weight_bytes"] == sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    bound_s = figures["weight_bytes"] / figures["copy_bandwidth_bytes_per_s"]
    assert figures["bound_ms"] == pytest.approx(bound_s * 1e3) and set(figures["batch"]) == {"1", "3"}
    for b, row in figures["batch"].items():
        assert row["fraction_of_bound"] == pytest.approx(bound_s * 1e3 / row["greedy_step_ms"])
        assert figures["fraction_of_bound"][b] == row["fraction_of_bound"]
        assert row["greedy_tokens_per_s"] == pytest.approx(int(b) / (row["greedy_step_ms"] / 1e3))
        assert row["rest_of_greedy_step_ms"] == pytest.approx(row["greedy_step_ms"] - row["matmuls_ms"])
        assert row["sampled_tokens_per_s"] == pytest.approx(int(b) / (row["sampled_step_ms"] / 1e3))
        assert row["sampling_ms"] > 0
    one, three = figures["batch"]["1"], figures["batch"]["3"]
    for kind in ("greedy", "sampled"):
        assert three[f"{kind}_speedup_vs_batch_1"] == pytest.approx(
            three[f"{kind}_tokens_per_s"] / one[f"{kind}_tokens_per_s"]
        )


def test_decode_speed_prompts_have_the_asked_length_and_differ():
    from seal_env.models import load_model

    from benchmarks import decode_speed

    _, tok = load_model("tiny-random")
    prompts = decode_speed.prompts_for(tok, 3, 40)
    assert [len(p) for p in prompts] == [40, 40, 40] and len({tuple(p) for p in prompts}) == 3


def test_machine_throughput_runs_every_ours_configuration_on_the_same_requests(tmp_path):
    """All three ours configurations at one BLAS thread (the workers' count), so only the batch shapes change the
    rounding: the same rewards, and rewards per hour from each configuration's own wall seconds."""
    from seal_env.executors import blas_threads

    from benchmarks import machine_throughput

    out, table = tmp_path / "machine.json", tmp_path / "machine.md"
    before = blas_threads()
    blas_threads(1)
    try:
        report = machine_throughput.main(
            ["--model", "tiny-random", "--passages", "2", "--k", "2", "--workers", "2", "--self-edits", "fixed"]
            + ["--configs", "ours-sequential,ours-batched,ours-workers", "--set", "epochs=1"]
            + ["--set", "answer_max_tokens=3", "--json", str(out), "--markdown", str(table)]
        )
    finally:
        if before is not None:
            blas_threads(before)
    figures = json.loads(out.read_text())
    assert figures == json.loads(json.dumps(report))
    assert (figures["self_edits"], figures["requests"], figures["settings"]["cache"]) == ("fixed", 4, False)
    rows = {c["config"]: c for c in figures["configs"]}
    assert list(rows) == ["ours-sequential", "ours-batched", "ours-workers"]
    sequential = rows["ours-sequential"]["rewards_per_hour"]
    for c in rows.values():
        assert c["rewards"] == len(c["reward_values"]) == 4
        assert c["rewards_per_hour"] == c["rewards"] / c["wall_seconds"] * 3600
        assert c["vs_ours_sequential"] == c["rewards_per_hour"] / sequential and c["vs_torch_best"] is None
        assert len(c["peak_rss_mb"]) == c["processes"] and all(x > 0 for x in c["peak_rss_mb"])
        assert c["gflops_wall"] == figures["train_gflop"] / c["wall_seconds"] > 0
        assert c["cpu_seconds"] > 0 and c["train_seconds"] > 0
    workers = rows["ours-workers"]
    assert (
        workers["processes"] == 2 and workers["threads_per_process"] == rows["ours-batched"]["threads_per_process"] == 1
    )
    assert workers["startup_seconds"] > 0 and 0 < workers["busy_fraction"] <= 1
    assert set(figures["max_abs_reward_difference"]) == {
        "ours-batched vs ours-sequential",
        "ours-workers vs ours-sequential",
        "ours-workers vs ours-batched",
    }
    assert figures["max_abs_reward_difference_max"] < 1e-4
    assert len(set(rows["ours-sequential"]["reward_values"])) > 1  # real, distinct rewards
    assert "| ours-workers | 2 x 1 |" in table.read_text()


def test_blas_kernels_names_the_library_its_kernels_and_a_rate(capsys):
    from seal_env import _blas

    from benchmarks import blas_kernels

    blas_kernels.main(["--rounds", "1", "--products", "1"])
    out = capsys.readouterr().out
    library = os.path.basename(_blas.loaded_path) if _blas.loaded_path else "mlx's reference BLAS"
    assert f"BLAS: {library}; kernels: {_blas.core_name()};" in out
    rates = [float(line.split(": ")[1].split()[0]) for line in out.splitlines() if "thread(s)" in line]
    assert rates and all(r > 0 for r in rates)
