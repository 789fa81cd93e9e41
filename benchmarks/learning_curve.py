"""Learning curve of an RL agent: the held-out reward before training and after every round, over several runs.

Each run (``--runs N``: run seeds 0..N-1) is one agent run (``agents.restem`` or ``agents.grpo``) in
``OUT/run-<seed>``; the agent's held-out rollouts use common random numbers (the same articles, samples per article
and inner-loop seeds every round), so round r - round 0 is a paired comparison in which only the policy changed.
Per run and round it reports the held-out reward's mean with a 95 % CI over articles, the paired difference to
round 0 with its CI and sign test, the accuracy and F1 gains, the mean self-edit length, and seconds; then how many
runs end significantly above round 0, and the last round's change per article averaged over the runs (all runs
share the held-out articles) with its CI. Writes ``OUT/learning_curve.json`` and ``OUT/learning_curve.png`` (each
replaced whole). Rerunning the same command resumes every unfinished run and reuses the finished ones; while it runs
it holds ``OUT``'s lock (``OUT/.lock``), so a second process on the same ``OUT`` stops at once with an error.

    python -m benchmarks.learning_curve --preset tiny --runs 2 --out results/lc_tiny       # the machinery, a minute
    python -m benchmarks.learning_curve --preset learn --runs 3 --out results/lc_learn     # benchmarks/LEARNING.md
    python -m benchmarks.learning_curve --runs 3 --out results/lc_demo -- --heldout-articles 8
    python -m benchmarks.learning_curve --agent grpo --runs 3 --out results/lc_grpo -- --k 4
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env import stats
from seal_env.journal import FolderInUseError, FolderLock, read_json, write_json_atomic

from agents import grpo, restem
from agents.report import change_line, learning_curve, plot_learning_curves
from agents.rundir import Run

AGENTS = {"restem": restem.main, "grpo": grpo.main}
RESULTS = "learning_curve.json"


def run_agent(agent: str, out: Path, seed: int, preset: str, extra: list[str]) -> dict[str, Any]:
    """Run (or resume, or reuse) one agent run in ``out/run-<seed>``; its results."""
    folder = out / f"run-{seed}"
    if (folder / "config.json").exists():
        argv = ["--resume", str(folder), "--wandb-mode", "disabled"]
    else:
        argv = ["--preset", preset, *extra, "--seed", str(seed), "--runs-dir", str(out), "--name", folder.name]
        argv += ["--wandb-mode", "disabled"]
    return AGENTS[agent](argv)


def curve(folder: Path) -> dict[str, Any]:
    """Per round of one finished run: :func:`agents.report.learning_curve`."""
    run = Run(folder)
    try:
        return learning_curve(run, read_json(folder / "results.json")["rounds"])
    finally:
        run.close()


def pooled_change(curves: list[dict[str, Any]], conf: float = 0.95) -> dict[str, Any] | None:
    """The last round's change to round 0 per held-out article, averaged over the runs, with its Student-t interval
    over articles; None unless every run has a last round on the same held-out articles."""
    changes = [c["rounds"][-1].get("article_changes") for c in curves]
    if not changes or any(ch is None or sorted(ch) != sorted(changes[0]) for ch in changes):
        return None
    per_article = [statistics.fmean(ch[a] for ch in changes) for a in sorted(changes[0])]
    mean, low, high = stats.mean_ci(per_article, conf)
    return {
        "n_articles": len(per_article),
        "runs": len(changes),
        "mean_diff": mean,
        "ci": [low, high],
        "conf": conf,
        "significant": bool(low > 0 or high < 0),
    }


def summarize(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """How many runs end significantly above (or below) round 0, the mean change of the last round, and that change
    per article averaged over the runs (:func:`pooled_change`)."""
    last = [c["rounds"][-1]["change"] for c in curves if len(c["rounds"]) > 1]
    return {
        "runs": len(curves),
        "runs_significantly_up": sum(ch["significant"] and ch["mean_diff"] > 0 for ch in last),
        "runs_significantly_down": sum(ch["significant"] and ch["mean_diff"] < 0 for ch in last),
        "mean_last_change": statistics.fmean(ch["mean_diff"] for ch in last) if last else float("nan"),
        "pooled_last_change": pooled_change(curves),
    }


def print_curves(curves: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    for c in curves:
        print(f"\n{c['run_dir']} ({c['n_articles']} held-out articles)")
        print(f"{'round':>5} {'held-out reward [95% CI]':>28} {'acc gain':>9} {'F1 gain':>8} {'chars':>6} {'s':>6}")
        for r in c["rounds"]:
            low, high = r["heldout_ci"]
            print(
                f"{r['round']:>5} {r['heldout_reward']:>+9.3f} [{low:+.3f}, {high:+.3f}]   "
                f"{r['accuracy_gain']:>+9.3f} {r['f1_gain']:>+8.3f} {r['self_edit_chars']:>6.0f} {r['seconds']:>6.0f}"
            )
        if len(c["rounds"]) > 1:
            print(change_line(c["rounds"][-1]["change"]))
    print(
        f"\n{summary['runs_significantly_up']} of {summary['runs']} runs end significantly above round 0 "
        f"({summary['runs_significantly_down']} below); mean last-round change {summary['mean_last_change']:+.3f}"
    )
    if pooled := summary["pooled_last_change"]:
        low, high = pooled["ci"]
        print(
            f"last-round change per article, averaged over the {pooled['runs']} runs: {pooled['mean_diff']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}] ({pooled['conf']:.0%} CI over {pooled['n_articles']} articles)"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Arguments after -- go to the agent (e.g. -- --k 4 --rounds 3)."
    )
    parser.add_argument("--agent", choices=sorted(AGENTS), default="restem")
    parser.add_argument("--preset", default="demo", help="the agent's preset (tiny: the tiny model, for tests)")
    parser.add_argument("--runs", type=int, default=3, help="independent runs, with run seeds 0..N-1")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and the report (resumable)")
    parser.add_argument("agent_args", nargs="*", help="settings for the agent, after --")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        lock = FolderLock(args.out)  # held until the report is written (each run also locks its own folder)
    except FolderInUseError as e:
        parser.error(str(e))
    with lock:
        for seed in range(args.runs):
            run_agent(args.agent, args.out, seed, args.preset, args.agent_args)
        curves = [curve(args.out / f"run-{seed}") for seed in range(args.runs)]
        summary = summarize(curves)
        report = {
            "agent": args.agent,
            "preset": args.preset,
            "agent_args": args.agent_args,
            **summary,
            "curves": curves,
        }
        write_json_atomic(args.out / RESULTS, report)
        title = f"{args.agent} ({args.preset}): held-out reward per round"
        plot_learning_curves(curves, args.out / "learning_curve.png", title)
    print_curves(curves, summary)
    return report


if __name__ == "__main__":
    main()
