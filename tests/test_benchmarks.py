"""The speed benchmark runs end to end on the tiny model and reports every figure of issue 4."""

import json

from benchmarks import inner_loop_speed


def test_inner_loop_speed_reports_every_figure(tmp_path):
    out = tmp_path / "speed.json"
    inner_loop_speed.main(["--model", "tiny-random", "--rewards", "2", "--no-torch", "--soak", "3",
                           "--soak-answer-tokens", "2", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert figures["setting"]["epochs"] == 10  # the standard setting, whatever the env default
    assert figures["matmul_gflops"]["square_2048"] > 0
    assert 0 < figures["step"]["fraction_of_matmul"]
    runs = figures["reward"]["runs"]
    assert len(runs) == 2 and all(r["train_steps"] == 10 * r["n_sequences"] for r in runs)
    assert runs[0]["seconds_baseline"] > 0 and runs[1]["seconds_baseline"] < runs[0]["seconds_baseline"]
    assert figures["peak_rss_mb"] > 0
    assert figures["soak"]["rewards"] == 3 and len(figures["soak"]["rss_mb"]) == 3
