"""What a run shows: a batch's reward statistics, the held-out change of a round over round 0 (paired by article,
with its interval and sign test), the lines printed per round and at the end, and the per-round wandb log.
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any, cast

from seal_env import stats
from seal_env.journal import write_atomic

from agents.base import Experience
from agents.rundir import Run
from agents.wandb_logger import Logger


def reward_stats(batch: list[Experience]) -> dict[str, float]:
    """Mean / max / min reward, fraction positive, and mean baseline and adapter accuracy of a batch."""
    rewards = [e.reward for e in batch]
    if not rewards:
        return {}
    mean = lambda key: statistics.fmean(e.info.get(key, math.nan) for e in batch)  # noqa: E731
    return {
        "reward_mean": statistics.fmean(rewards),
        "reward_max": max(rewards),
        "reward_min": min(rewards),
        "frac_positive": sum(r > 0 for r in rewards) / len(rewards),
        "n": float(len(rewards)),
        "baseline_accuracy": mean("baseline_accuracy"),
        "adapter_accuracy": mean("adapter_accuracy"),
    }


def heldout_rewards(run: Run, article_ids: list[str], round: int, field: str = "reward") -> list[float]:
    """Each held-out article's mean reward (or ``info[field]``) over its samples in ``round``, from the journal."""
    samples = run.get("samples", round, "heldout")
    if samples is None:
        raise ValueError(f"{run.path}: round {round} has no held-out samples")
    means = []
    for a in article_ids:
        recs = [run.get("reward", round, "heldout", a, j) for j in range(len(samples["self_edits"][a]))]
        means.append(statistics.fmean(r["reward"] if field == "reward" else r["info"][field] for r in recs if r))
    return means


def heldout_change(run: Run, article_ids: list[str], round: int, conf: float = 0.95) -> dict[str, Any]:
    """The held-out reward of ``round`` minus round 0's, paired by article (the same seeds both rounds): the mean
    difference with its Student-t interval over articles, the sign test, and each article's difference."""
    before = heldout_rewards(run, article_ids, 0)
    after = heldout_rewards(run, article_ids, round)
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    diff, low, high = stats.mean_ci(diffs, conf)
    return {
        "round": round,
        "n_articles": len(article_ids),
        "before": statistics.fmean(before),
        "after": statistics.fmean(after),
        "mean_diff": diff,
        "ci": [low, high],
        "conf": conf,
        "significant": bool(low > 0 or high < 0),
        "sign_test": stats.sign_test(before, after),
        "article_changes": dict(zip(article_ids, diffs, strict=True)),
    }


def learning_curve(run: Run, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per round of a run (its summaries ``rounds``): the held-out reward (mean, CI over articles), its change to
    round 0, the accuracy and F1 gains, the mean self-edit length and the seconds."""
    samples = run.get("samples", 0, "heldout")
    if samples is None:
        raise ValueError(f"{run.path}: no held-out rollout (the run needs --heldout-articles > 0)")
    ids = list(samples["self_edits"])
    rows = []
    for summary in rounds:
        rnd = summary["round"]
        mean, low, high = stats.mean_ci(heldout_rewards(run, ids, rnd))
        edits = cast(dict[str, Any], run.get("samples", rnd, "heldout"))["self_edits"]
        row: dict[str, Any] = {
            "round": rnd,
            "heldout_reward": mean,
            "heldout_ci": [low, high],
            "accuracy_gain": statistics.fmean(heldout_rewards(run, ids, rnd, "accuracy_gain")),
            "f1_gain": statistics.fmean(heldout_rewards(run, ids, rnd, "f1_gain")),
            "self_edit_chars": statistics.fmean(len(e) for a in ids for e in edits[a]),
            "seconds": summary["seconds"]["total"],
        }
        if rnd > 0:
            row["change"] = heldout_change(run, ids, rnd)
            row["article_changes"] = row["change"].pop("article_changes")
        rows.append(row)
    return {"run_dir": str(run.path), "n_articles": len(ids), "rounds": rows}


def plot_learning_curves(curves: list[dict[str, Any]], path: Path, title: str) -> None:
    """A PNG of the held-out reward per round of every run (:func:`learning_curve`), with its CI band over
    articles; replaces ``path`` whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in curves:
        rounds = [r["round"] for r in c["rounds"]]
        means = [r["heldout_reward"] for r in c["rounds"]]
        line = ax.plot(rounds, means, marker="o", label=Path(c["run_dir"]).name)[0]
        low = [r["heldout_ci"][0] for r in c["rounds"]]
        high = [r["heldout_ci"][1] for r in c["rounds"]]
        ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.15)
    ax.set_xticks(sorted({r["round"] for c in curves for r in c["rounds"]}))
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("held-out reward (95 % CI over articles)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, png.getvalue())


def log_round(logger: Logger, summary: dict[str, Any], batch: list[Experience], rnd: int) -> None:
    flat = {"round/index": rnd}
    for part in ("train", "heldout", "learn", "seconds"):
        flat.update({f"round/{part}_{k}": v for k, v in summary.get(part, {}).items()})
    logger.log(flat)
    rows = [
        [
            rnd,
            "heldout" if i >= summary.get("train", {}).get("n", 0) else "train",
            e.article.title,
            e.k,
            e.reward,
            e.info.get("baseline_accuracy"),
            e.info.get("adapter_accuracy"),
            e.self_edit,
        ]
        for i, e in enumerate(batch)
    ]
    logger.table(
        f"self_edits/round_{rnd}",
        ["round", "phase", "title", "k", "reward", "baseline_accuracy", "adapter_accuracy", "self_edit"],
        rows,
        {"round/index": rnd},
    )


def _fmt(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    return f"{stats['reward_mean']:+.3f} (max {stats['reward_max']:+.3f}, >0 {stats['frac_positive']:.0%})"


def round_line(summary: dict[str, Any]) -> str:
    learn = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.get("learn", {}).items()
    )
    return (
        f"round {summary['round']}: train reward {_fmt(summary.get('train'))} | held-out {_fmt(summary.get('heldout'))}"
        + (f" | {learn}" if learn else "")
        + f" | {summary['seconds']['total']:.0f} s"
    )


def print_summary(results: dict[str, Any]) -> None:
    print(
        f"\n{results['algorithm']} finished: {len(results['rounds']) - 1} rounds, "
        f"{results['seconds']:.0f} s this session"
    )
    print(f"{'round':>5}  {'train reward (mean, max, >0)':34} {'held-out reward':34}")
    for s in results["rounds"]:
        print(f"{s['round']:>5}  {_fmt(s.get('train')):34} {_fmt(s.get('heldout')):34}")
    if change := results.get("heldout_change"):
        print(change_line(change))
    print(f"run dir:    {results['run_dir']}\ncheckpoint: {results['checkpoint']}")
    if results.get("learning_curve"):
        print(f"curve:      {results['learning_curve']}")


def change_line(change: dict[str, Any]) -> str:
    """What a run shows about learning: the held-out change of its last round over round 0, and its interval."""
    low, high = change["ci"]
    sign = change["sign_test"]
    if math.isnan(low):
        verdict = "no interval: one held-out article (use --heldout-articles > 1)"
    elif change["significant"]:
        verdict = "significant: the interval excludes 0"
    else:
        verdict = "not significant: the interval includes 0, so this run does not show learning"
    return (
        f"held-out change, round {change['round']} - round 0: {change['mean_diff']:+.3f} "
        f"[{low:+.3f}, {high:+.3f}] ({change['conf']:.0%} CI over {change['n_articles']} articles; "
        f"sign test {sign['wins']} up, {sign['losses']} down, p {sign['p_value']:.2f}): {verdict}"
    )
