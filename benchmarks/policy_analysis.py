"""The analysis and report of a policy comparison (a ``compare_policies`` journal's result records): per policy
and reward kind the mean gain over articles with its CI, paired differences between policies (bootstrap CI, sign
test, d_z), noise components, the Markdown report and the plot. A library: ``compare_policies`` (the CLI) and
``paper_check`` use it.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from seal_env import stats
from seal_env.config import REWARD_KINDS
from seal_env.journal import atomic_path

JOURNAL = "journal.jsonl"  #: a comparison's journal, in its output folder
METRICS = REWARD_KINDS  # every reward kind is in every info (journals of older versions read nan for new kinds)
METRIC_NAMES = {
    "accuracy": "accuracy",
    "f1": "F1",
    "loglik": "log-lik.",
    "choice": "choice",
    "margin": "margin",
    "pmi": "PMI",
}


def seconds_of(info: dict[str, Any]) -> float:
    """Seconds of one reward without the article's one-off baseline quiz (nan without timings, or for a reward
    served by the persistent reward cache, which took no training)."""
    if "seconds_total" not in info or info.get("cache_hit"):
        return math.nan
    return info["seconds_total"] - info.get("seconds_baseline", 0.0)


def _mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else math.nan


def analyse(
    records: list[dict[str, Any]], labels: list[str], article_ids: list[str], n_boot: int = 10_000
) -> dict[str, Any]:
    """Per-policy summaries, paired tests, separation and noise, from journal result records."""
    cells: dict[str, dict[str, list[dict]]] = {lab: defaultdict(list) for lab in labels}
    wanted = set(article_ids)
    for r in records:
        if r["policy"] in cells and r["article_id"] in wanted:
            cells[r["policy"]][r["article_id"]].append(r)
    order = {a: i for i, a in enumerate(article_ids)}

    def per_article(lab: str, field: str) -> dict[str, float]:
        return {a: _mean(r["info"].get(field, math.nan) for r in rs) for a, rs in cells[lab].items()}

    summary = {}
    for lab in labels:
        rs = [r for rows in cells[lab].values() for r in rows]
        row: dict[str, Any] = {
            "n_articles": len(cells[lab]),
            "n_rewards": len(rs),
            "train_steps": _mean(float(r["info"]["train_steps"]) for r in rs),
            "seconds_per_reward": _mean(seconds_of(r["info"]) for r in rs),
            "diverged": sum(bool(r["info"].get("diverged")) for r in rs),
        }
        for m in METRICS:
            after = per_article(lab, f"adapter_{m}")
            gains = per_article(lab, f"{m}_gain")
            row[f"{m}_after"] = _mean(after.values())
            row[f"{m}_baseline"] = _mean(per_article(lab, f"baseline_{m}").values())
            mean, lo, hi = stats.mean_ci(list(gains.values()))
            row[f"{m}_gain"], row[f"{m}_gain_ci"] = mean, [lo, hi]
        summary[lab] = row

    pairs = []
    for i, la in enumerate(labels):
        for lb in labels[i + 1 :]:
            common = sorted(set(cells[la]) & set(cells[lb]), key=order.get)
            if not common:
                continue
            for m in METRICS:
                ga, gb = per_article(la, f"{m}_gain"), per_article(lb, f"{m}_gain")
                a, b = [ga[x] for x in common], [gb[x] for x in common]
                boot = stats.paired_bootstrap(a, b, n_boot=n_boot, seed=0)
                sign = stats.sign_test(a, b)
                dz = stats.effect_size_dz(a, b)
                reps = _mean(len(cells[la][x]) + len(cells[lb][x]) for x in common)
                sec = (summary[la]["seconds_per_reward"] + summary[lb]["seconds_per_reward"]) / 2 * reps
                need = (2.0 / dz) ** 2 if dz and not math.isnan(dz) and not math.isinf(dz) else math.nan
                pairs.append(
                    {
                        "a": la,
                        "b": lb,
                        "metric": m,
                        **boot,
                        **{f"sign_{k}": v for k, v in sign.items()},
                        "dz": dz,
                        "articles_for_t2": need,
                        "seconds_per_article": sec,
                        "seconds_for_t2": need * sec if not math.isnan(need) else math.nan,
                    }
                )

    noise: dict[str, Any] = {}
    for lab in labels:
        entry: dict[str, Any] = {}
        for m in METRICS:
            seed_groups, edit_groups = [], []
            for rows in cells[lab].values():
                by_k: dict[int, list[float]] = defaultdict(list)
                for r in rows:
                    by_k[r["k"]].append(r["info"].get(f"{m}_gain", math.nan))
                seed_groups += list(by_k.values())
                edit_groups.append([_mean(v) for v in by_k.values()])
            seed_sd, seed_dof = stats.pooled_sd(seed_groups)
            edit_sd, edit_dof = stats.pooled_sd(edit_groups)
            art = list(per_article(lab, f"{m}_gain").values())
            art_sd = stats.pooled_sd([art])[0]
            entry[m] = {
                "seed_sd": seed_sd,
                "seed_dof": seed_dof,
                "self_edit_sd": edit_sd,
                "self_edit_dof": edit_dof,
                "article_sd": art_sd,
            }
        noise[lab] = entry
    return {"summary": summary, "pairs": pairs, "noise": noise}


def _fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "n/a" if x is None or math.isnan(x) else ("+inf" if x > 0 else "-inf")
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(row: dict[str, Any], m: str) -> str:
    lo, hi = row[f"{m}_gain_ci"]
    ci = "" if math.isnan(lo) else f" [{_fmt(lo, 3, True)}, {_fmt(hi, 3, True)}]"
    return _fmt(row[f"{m}_gain"], 3, True) + ci


def markdown(
    analysis: dict[str, Any], policies: list[Any], settings: dict[str, Any], n_articles: int, K: int, S: int
) -> str:
    summary, lines = analysis["summary"], []
    lines.append(
        f"Settings: model `{settings['model']}`, data `{settings['dataset']}` ({n_articles} articles), "
        f"{K} self-edit(s) x {S} seed(s) per article and policy; epochs {settings['epochs']}, "
        f"LoRA r={settings['lora_rank']} alpha={settings['lora_alpha']} on {settings['lora_modules']}, "
        f"lr {settings['learning_rate']}, batch {settings['batch_size']}, "
        f"include_passage={settings['include_passage']}, eval_times={settings['eval_times']}."
    )
    lines.append(
        "Gains are over the un-adapted model (= `none`); mean over articles with a 95 % Student-t CI "
        "(articles are the unit; each article's value is its mean over self-edits and seeds)."
    )
    lines.append("")
    lines.append(
        "| policy | condition | articles | rewards | accuracy after | accuracy gain [95% CI] | F1 after | "
        "F1 gain [95% CI] | log-lik. gain [95% CI] | train steps | s/reward |"
    )
    lines.append("| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- | ---: | ---: |")
    for p in policies:
        r = summary[p.label]
        if not r["n_rewards"]:
            lines.append(f"| {p.label} | {p.describe(settings['include_passage'])} | 0 | 0 | | | | | | | |")
            continue
        lines.append(
            f"| {p.label} | {p.describe(settings['include_passage'])} | {r['n_articles']} | "
            f"{r['n_rewards']} | {_fmt(r['accuracy_after'])} | {_ci(r, 'accuracy')} | "
            f"{_fmt(r['f1_after'])} | {_ci(r, 'f1')} | {_ci(r, 'loglik')} | "
            f"{_fmt(r['train_steps'], 1)} | {_fmt(r['seconds_per_reward'], 1)} |"
        )
    ranked = [p.label for p in policies if summary[p.label]["n_rewards"]]
    if len(ranked) > 1:
        lines.append("")
        for m in METRICS:
            order = sorted(ranked, key=lambda lab: summary[lab][f"{m}_gain"])
            text = order[0]
            for prev, lab in itertools.pairwise(order):
                same = abs(summary[lab][f"{m}_gain"] - summary[prev][f"{m}_gain"]) <= 1e-12
                text += (" = " if same else " < ") + lab
            lines.append(f"Ranking by mean {METRIC_NAMES[m]} gain (low to high): {text}  ")
    if analysis["pairs"]:
        lines += [
            "",
            "Paired tests (B - A on the same articles): mean difference with paired-bootstrap 95 % CI and "
            "p-value; sign test (B wins / losses / ties, exact two-sided p); d_z = mean / sd of the "
            "differences; articles (and seconds) for |t| = 2 are (2 / d_z)^2 (times the seconds per article).",
            "",
            "| A | B | metric | mean B-A [95% CI] | p (bootstrap) | B wins/losses/ties | p (sign) | d_z "
            "| articles for t=2 | seconds for t=2 |",
            "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for q in analysis["pairs"]:
            lines.append(
                f"| {q['a']} | {q['b']} | {METRIC_NAMES[q['metric']]} | {_fmt(q['mean_diff'], 3, True)} "
                f"[{_fmt(q['ci_low'], 3, True)}, {_fmt(q['ci_high'], 3, True)}] | {_fmt(q['p_value'], 4)} | "
                f"{q['sign_wins']}/{q['sign_losses']}/{q['sign_ties']} | {_fmt(q['sign_p_value'], 4)} | "
                f"{_fmt(q['dz'], 2)} | {_fmt(q['articles_for_t2'], 1)} | {_fmt(q['seconds_for_t2'], 0)} |"
            )
    if S > 1 or K > 1:
        lines += [
            "",
            "Noise: standard deviations of the gain of one reward: between inner-loop seeds (same "
            "self-edit), between self-edits (seed-averaged, same article) and between articles "
            "(article means).",
            "",
            "| policy | metric | mean gain | seed sd | self-edit sd | article sd |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for p in policies:
            if not summary[p.label]["n_rewards"] or p.condition == "none":
                continue
            for m in METRICS:
                nz = analysis["noise"][p.label][m]
                lines.append(
                    f"| {p.label} | {METRIC_NAMES[m]} | {_fmt(summary[p.label][f'{m}_gain'], 3, True)} | "
                    f"{_fmt(nz['seed_sd'])} | {_fmt(nz['self_edit_sd'])} | {_fmt(nz['article_sd'])} |"
                )
    return "\n".join(lines) + "\n"


def plot_gains(analysis: dict[str, Any], labels: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = analysis["summary"]
    labels = [lab for lab in labels if summary[lab]["n_rewards"]]
    cols = 3
    rows = math.ceil(len(METRICS) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 + 1.4 * len(labels) * 1.5, 4.2 * rows), squeeze=False)
    for ax, m in zip(axes.flat, METRICS, strict=True):
        means = [summary[lab][f"{m}_gain"] for lab in labels]
        err = [
            [
                0.0
                if math.isnan(summary[lab][f"{m}_gain_ci"][0])
                else summary[lab][f"{m}_gain"] - summary[lab][f"{m}_gain_ci"][0]
                for lab in labels
            ],
            [
                0.0
                if math.isnan(summary[lab][f"{m}_gain_ci"][1])
                else summary[lab][f"{m}_gain_ci"][1] - summary[lab][f"{m}_gain"]
                for lab in labels
            ],
        ]
        ax.bar(range(len(labels)), means, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(labels))])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{METRIC_NAMES[m]} gain (95% CI)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
