"""Extra analyses of a compare_policies journal for the SEAL paper check (benchmarks/PAPER_CHECK.md).

    python -m benchmarks.paper_check results/paper_e3 --articles 30 --noise-articles 6 \
        --order none passage qwen-base gpt-4.1 seal-r2 --tie gpt-4.1 seal-r2

* the paper's ranking as pairwise relations (``--order``, low to high; ``--tie`` pairs that should be about equal are
  not counted): how many hold for the mean gains, and the bootstrap probability (articles resampled) that all hold;
* per-question changes of correctness (newly right / newly wrong) and the mean answer length per condition;
* seed noise against the differences between conditions: for each pair and reward kind, the share of the variance of
  the per-article difference (one seed, on the first ``--articles``) that the inner-loop seed noise (measured on the
  first ``--noise-articles`` with several seeds) accounts for, and what ``eval_times = m`` would do to d_z per second.

Everything is read from ``journal.jsonl`` (seed index 0 for the ranking, all seeds for the noise).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from seal_env import stats
from seal_env.journal import read_records

import numpy as np

from benchmarks.policy_analysis import JOURNAL, METRICS, seconds_of

GAIN = {m: f"{m}_gain" for m in METRICS}


def load(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_records(out / JOURNAL) if r.get("type") == "result" and r["k"] == 0]


def table(
    records: list[dict[str, Any]], policies: list[str], n_articles: int, seed: int = 0
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{article_id: {policy: info}}`` for the first ``n_articles`` articles that have every policy."""
    by: dict[str, dict[str, Any]] = defaultdict(dict)
    index: dict[str, int] = {}
    for r in records:
        if r["seed_index"] == seed and r["policy"] in policies:
            by[r["article_id"]][r["policy"]] = r["info"]
            index[r["article_id"]] = r["article_index"]
    ids = sorted((a for a, d in by.items() if all(p in d for p in policies)), key=index.get)[:n_articles]
    return {a: by[a] for a in ids}


def ranking(
    tab: dict[str, dict[str, Any]], order: list[str], ties: set[frozenset[str]], n_boot: int = 5000, seed: int = 0
) -> dict[str, dict[str, float]]:
    relations = [(a, b) for i, a in enumerate(order) for b in order[i + 1 :] if frozenset((a, b)) not in ties]
    ids = list(tab)
    rng = np.random.default_rng(seed)
    out = {}
    for m in METRICS:
        x = {p: np.array([tab[a][p].get(GAIN[m], math.nan) for a in ids]) for p in order}
        means = {p: float(v.mean()) for p, v in x.items()}
        held = sum(means[a] < means[b] for a, b in relations)
        all_hold = 0
        for _ in range(n_boot):
            idx = rng.integers(0, len(ids), len(ids))
            mm = {p: v[idx].mean() for p, v in x.items()}
            all_hold += all(mm[a] < mm[b] for a, b in relations)
        out[m] = {
            "held": held,
            "relations": len(relations),
            "p_all_hold": all_hold / n_boot,
            "order": sorted(order, key=means.get),
        }
    return out


def questions(tab: dict[str, dict[str, Any]], policies: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for p in policies:
        qs = [q for d in tab.values() for q in d[p]["questions"]]
        out[p] = {
            "questions": len(qs),
            "correct": sum(q["correct"] for q in qs),
            "baseline_correct": sum(q["baseline_correct"] for q in qs),
            "newly_right": sum(q["correct"] > q["baseline_correct"] for q in qs),
            "newly_wrong": sum(q["correct"] < q["baseline_correct"] for q in qs),
            "answer_words": float(np.mean([len(q["answer"].split()) for q in qs])),
        }
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def steps_vs_gain(tab: dict[str, dict[str, Any]], policies: list[str]) -> dict[str, tuple[float, int]]:
    """Per reward kind: the mean over articles of Spearman(train steps, gain) across ``policies``, and how many
    articles had a defined correlation (gains not all equal)."""
    out = {}
    for m in METRICS:
        rhos = [
            spearman([d[p]["train_steps"] for p in policies], [d[p][GAIN[m]] for p in policies]) for d in tab.values()
        ]
        rhos = [r for r in rhos if not math.isnan(r)]
        out[m] = (float(np.mean(rhos)) if rhos else math.nan, len(rhos))
    return out


def leftover_preamble(
    records: list[dict[str, Any]], tab: dict[str, dict[str, Any]], policy: str, baseline: str
) -> dict[str, Any]:
    """Self-edits of ``policy`` whose first training piece (after the env's preamble drop) is not a list item, and
    their mean log-lik. gain over ``baseline`` against the others'."""
    from seal_env.reward.sequences import _NUMBERED, split_self_edit

    edits = {r["article_id"]: r["self_edit"] for r in records if r["policy"] == policy and r["seed_index"] == 0}
    with_pre, without = [], []
    for a, d in tab.items():
        pieces = split_self_edit(edits[a])
        diff = d[policy]["loglik_gain"] - d[baseline]["loglik_gain"]
        (with_pre if pieces and not _NUMBERED.match(pieces[0]) else without).append(diff)
    return {
        "with": len(with_pre),
        "without": len(without),
        "gain_with": float(np.mean(with_pre)) if with_pre else math.nan,
        "gain_without": float(np.mean(without)) if without else math.nan,
    }


def noise(
    records: list[dict[str, Any]], tab: dict[str, dict[str, Any]], policies: list[str], n_noise: int
) -> dict[str, Any]:
    """Seed SD per policy and metric (first ``n_noise`` articles with >= 2 seeds), and per pair the seed share of
    the variance of one-seed per-article differences (on ``tab``)."""
    cells: dict[tuple[str, str], list[dict]] = defaultdict(list)
    index: dict[str, int] = {}
    for r in records:
        cells[(r["policy"], r["article_id"])].append(r["info"])
        index[r["article_id"]] = r["article_index"]
    multi = sorted(
        {a for (p, a), v in cells.items() if len(v) >= 2 and all(len(cells[(q, a)]) >= 2 for q in policies)},
        key=index.get,
    )[:n_noise]
    seed_sd = {
        p: {m: stats.pooled_sd([[i[GAIN[m]] for i in cells[(p, a)]] for a in multi])[0] for m in METRICS}
        for p in policies
    }
    pairs = []
    for i, a in enumerate(policies):
        for b in policies[i + 1 :]:
            for m in METRICS:
                d = np.array([tab[x][b][GAIN[m]] - tab[x][a][GAIN[m]] for x in tab])
                total = float(d.var(ddof=1)) if len(d) > 1 else math.nan
                seed_var = seed_sd[a][m] ** 2 + seed_sd[b][m] ** 2  # independent seed effects in the two conditions
                share = seed_var / total if total > 0 else math.nan
                between = max(total - seed_var, 0.0)
                # d_z per second with eval_times = m, relative to m = 1: (B + W) / (m B + W)
                rel = {
                    k: (between + seed_var) / (k * between + seed_var) if (between + seed_var) > 0 else math.nan
                    for k in (2, 4)
                }
                pairs.append(
                    {
                        "a": a,
                        "b": b,
                        "metric": m,
                        "mean_diff": float(d.mean()),
                        "sd_diff": math.sqrt(total),
                        "seed_sd_diff": math.sqrt(seed_var),
                        "seed_share": share,
                        "efficiency_eval_times_2": rel[2],
                        "efficiency_eval_times_4": rel[4],
                    }
                )
    return {"articles": len(multi), "seed_sd": seed_sd, "pairs": pairs}


def fidelity(
    outs: dict[str, Path],
    order: list[str],
    ties: set[frozenset[str]],
    n_articles: int,
    kinds: tuple[str, ...] = METRICS,
) -> list[dict[str, Any]]:
    """The "fidelity per second" rows: for every protocol (a compare_policies output folder) and reward kind, the
    measured order, the paper's relations that hold and the bootstrap P(all hold), passage - none and
    GPT-4.1 - Qwen-base (mean, paired-bootstrap 95 % CI, d_z), and the seconds per trained reward."""
    rows = []
    for name, out in outs.items():
        records = load(out)
        tab = table(records, order, n_articles)
        rank = ranking(tab, order, ties)
        trained = [r for r in records if r["policy"] in order and r["policy"] != "none" and r["article_id"] in tab]
        seconds = float(np.nanmean([seconds_of(r["info"]) for r in trained])) if trained else math.nan
        for m in kinds:
            row: dict[str, Any] = {
                "protocol": name,
                "kind": m,
                "articles": len(tab),
                "seconds_per_reward": seconds,
                **{k: rank[m][k] for k in ("order", "held", "relations", "p_all_hold")},
            }
            for a, b in (("none", "passage"), ("qwen-base", "gpt-4.1")):
                if a in order and b in order:
                    xa = [tab[x][a].get(GAIN[m], math.nan) for x in tab]
                    xb = [tab[x][b].get(GAIN[m], math.nan) for x in tab]
                    boot = stats.paired_bootstrap(xa, xb, n_boot=5000)
                    row[f"{b}-{a}"] = {
                        "mean": boot["mean_diff"],
                        "ci": [boot["ci_low"], boot["ci_high"]],
                        "dz": stats.effect_size_dz(xa, xb),
                    }
            rows.append(row)
    return rows


def print_fidelity(rows: list[dict[str, Any]]) -> None:
    print(
        "| protocol | reward | measured order (low to high) | relations | P(all hold) | passage - none [95% CI] (d_z) "
        "| GPT-4.1 - Qwen-base [95% CI] (d_z) | s / reward |"
    )
    print("| --- | --- | --- | ---: | ---: | --- | --- | ---: |")
    for r in rows:
        cells = []
        for key in ("passage-none", "gpt-4.1-qwen-base"):
            d = r.get(key)
            cells.append(
                "-" if d is None else f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] ({d['dz']:+.2f})"
            )
        print(
            f"| {r['protocol']} | {r['kind']} | {' < '.join(r['order'])} | {r['held']}/{r['relations']} | "
            f"{r['p_all_hold']:.2f} | {cells[0]} | {cells[1]} | {r['seconds_per_reward']:.1f} |"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--articles", type=int, default=30)
    ap.add_argument("--noise-articles", type=int, default=6)
    ap.add_argument("--order", nargs="+", default=["none", "passage", "qwen-base", "gpt-4.1", "seal-r2"])
    ap.add_argument("--tie", nargs=2, action="append", default=None)
    ap.add_argument(
        "--preamble", default="gpt-4.1", help="policy whose leftover preamble lines are counted ('' = skip)"
    )
    ap.add_argument(
        "--fidelity",
        nargs="+",
        metavar="NAME=DIR",
        help="only the fidelity-per-second table over these compare_policies outputs (protocols)",
    )
    args = ap.parse_args(argv)
    ties = {frozenset(t) for t in (args.tie if args.tie is not None else [["gpt-4.1", "seal-r2"]])}
    if args.fidelity:
        outs = dict(item.split("=", 1) if "=" in item else (Path(item).name, item) for item in args.fidelity)
        print_fidelity(fidelity({k: Path(v) for k, v in outs.items()}, args.order, ties, args.articles))
        return
    records = load(args.out)
    tab = table(records, args.order, args.articles)
    print(f"{len(tab)} articles with every condition (seed index 0)\n")
    print("| reward kind | measured order (low to high) | paper relations holding | bootstrap P(all hold) |")
    print("| --- | --- | ---: | ---: |")
    for m, r in ranking(tab, args.order, ties).items():
        print(f"| {m} | {' < '.join(r['order'])} | {r['held']}/{r['relations']} | {r['p_all_hold']:.3f} |")
    print("\n| condition | questions | correct (baseline) | newly right | newly wrong | mean answer words |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for p, q in questions(tab, args.order).items():
        print(
            f"| {p} | {q['questions']} | {q['correct']:.0f} ({q['baseline_correct']:.0f}) | {q['newly_right']} | "
            f"{q['newly_wrong']} | {q['answer_words']:.1f} |"
        )
    trained = [p for p in args.order if p != "none"]
    print("\nMean within-article Spearman(train steps, gain) over " + ", ".join(trained) + ":")
    for m, (rho, n) in steps_vs_gain(tab, trained).items():
        print(f"  {m}: {rho:+.3f} ({n} articles)")
    if args.preamble in args.order and "passage" in args.order:
        pre = leftover_preamble(records, tab, args.preamble, "passage")
        print(
            f"\n{args.preamble}: {pre['with']} self-edits still start with a non-list piece after the preamble drop "
            f"(log-lik. gain over passage {pre['gain_with']:+.3f}), {pre['without']} do not "
            f"({pre['gain_without']:+.3f})"
        )
    nz = noise(records, tab, trained, args.noise_articles)
    print(f"\nSeed sd of one reward ({nz['articles']} articles x >= 2 seeds):\n")
    print("| condition | " + " | ".join(METRICS) + " |")
    print("| --- |" + " ---: |" * len(METRICS))
    for p in trained:
        print(f"| {p} | " + " | ".join(f"{nz['seed_sd'][p][m]:.3f}" for m in METRICS) + " |")
    print(
        f"\nPairs (one seed, {len(tab)} articles): sd of the per-article difference, the part of its variance that "
        "seed noise accounts for, and d_z per second of eval_times=2 / 4 relative to eval_times=1:\n"
    )
    print("| A | B | metric | mean B-A | sd of diff | seed sd of diff | seed share | eff. m=2 | eff. m=4 |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for q in nz["pairs"]:
        print(
            f"| {q['a']} | {q['b']} | {q['metric']} | {q['mean_diff']:+.3f} | {q['sd_diff']:.3f} | "
            f"{q['seed_sd_diff']:.3f} | {q['seed_share']:.2f} | {q['efficiency_eval_times_2']:.2f} | "
            f"{q['efficiency_eval_times_4']:.2f} |"
        )


if __name__ == "__main__":
    main()
