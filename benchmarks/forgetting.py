"""Continual self-edits (SEAL's forgetting experiment): the (K+1) x K matrix of quiz scores as edits accumulate.

SEAL's protocol (its continual_self_edits script), through seal/ContinualSelfEdits-v0: S sequences of K articles
each; at step k of a sequence the policy writes a self-edit for article k, a fresh LoRA is trained on it plus the
passage, merged into the weights, and the merged model is quizzed on articles 0..k. Row 0 is the unedited model on
all K articles. Per policy, the mean and the standard deviation over sequences (sample sd, as SEAL's
statistics.stdev; 0 for one sequence) of every cell; cells above the diagonal are 0, as in SEAL's files.

Every policy sees the same sequences: sequence s is the env reset with seed derive_seed(--seed, "sequence", s) (the
same articles and inner-loop seeds for every policy), and the self-edit of step k is sampled with seed
derive_seed(--seed, "self-edit", s, k).

Policies (--policy, one or more; optionally LABEL=SPEC):
  passage              the passage only (the empty self-edit with include_passage=True)
  passage-as-edit      the passage given as the self-edit (+ the passage again with include_passage=True)
  prompt:TEMPLATE      self-edits sampled with a SEAL template; a bare template name (implications, rewrite, ...)
                       means prompt:TEMPLATE. As in SEAL, the model that writes them is the model being edited
                       (the learner's weights after the merges so far) unless --frozen-writer or another
                       --policy-model is given (then a separate, unedited copy writes).
  replay:PATH          self-edits read from a file (e.g. ../shared/data/self_edits/seal_round2_dev100.json with
                       --data ../shared/data/squad_seal_eval_dev100.json): its first self-edit of the article
  checkpoint:RUN[:R]   self-edits sampled by a policy trained by agents (ReSTEM/GRPO), round R

Outputs in --out: journal.jsonl (a config record, then one record per finished (policy, sequence): its articles,
self-edits, rewards and every score kind's matrix; an interrupted run started again with the same --out resumes
from the last finished sequence, and a run with a larger -S adds sequences), results.json (the mean and sd
matrices of every score kind per policy, SEAL's published matrix when present), results.md (the --metric's
matrices, mean +- sd, next to SEAL's published one) and results.png (heatmaps). The report files are replaced whole;
while a run uses --out it holds the folder's lock (.lock): a second run on the same --out stops at once.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env import stats
from seal_env.articles import select_articles
from seal_env.config import REWARD_KINDS, SealConfig
from seal_env.journal import (
    FolderInUseError,
    FolderLock,
    Journal,
    JournalWriteError,
    atomic_path,
    read_json,
    read_records,
    write_atomic,
    write_json_atomic,
)
from seal_env.prompts import SELF_EDIT_TEMPLATES
from seal_env.reward.quiz import SCORES
from seal_env.seeding import derive_seed

from benchmarks import compare_policies
from benchmarks.batched_rewards import machine_info
from benchmarks.compare_policies import PRESETS, PolicySpec, comparable

DEFAULT_POLICIES = ("prompt:implications", "passage")
JOURNAL = "journal.jsonl"
#: SEAL's published matrix (Qwen2.5-7B after two ReSTEM rounds, K = 8, 64 sequences), read when present.
SEAL_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "seal_continual_self_edits.json"


# --------------------------------------------------------------------------------------------------- policies
def parse_policy(arg: str) -> PolicySpec:
    """A ``--policy`` argument: compare_policies' specs, a bare template name (``implications``) meaning
    ``prompt:NAME``; ``none`` is refused (it edits nothing)."""
    label, sep, spec = arg.partition("=")
    if not sep:
        label, spec = "", arg
    spec = spec.strip()
    if spec in SELF_EDIT_TEMPLATES:
        label, spec = label or spec, f"prompt:{spec}"
    p = PolicySpec(f"{label}={spec}" if label else spec)
    if p.condition == "none":
        raise ValueError("policy 'none' edits nothing: every row would be row 0 (the unedited model)")
    return p


def uses_learner(p: PolicySpec, args: argparse.Namespace, settings: dict[str, Any]) -> bool:
    """Whether this policy's self-edits are written by the model being edited (SEAL's protocol)."""
    own = args.policy_model is None or args.policy_model == settings["model"]
    return p.kind == "prompt" and own and not args.frozen_writer


def writer(p: PolicySpec, args: argparse.Namespace, settings: dict[str, Any]) -> str:
    """Who writes this policy's self-edits, in words."""
    if p.kind == "prompt":
        return "written by the model being edited" if uses_learner(p, args, settings) else "written by a separate model"
    return {"replay": "read from a file", "checkpoint": "written by a trained policy (not edited)"}.get(
        p.kind, "none: the passage"
    )


def build_policy(p: PolicySpec, args: argparse.Namespace, settings: dict[str, Any], env: Any) -> Any:
    """The agents policy of ``p`` (a prompt policy on the env's own model where :func:`uses_learner`)."""
    from agents.policies import EmptyPolicy, PassagePolicy, make_policy

    if p.condition == "passage":
        return EmptyPolicy() if settings["include_passage"] else PassagePolicy()
    if p.condition == "passage-as-edit":
        return PassagePolicy()
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_tokens}
    if p.kind == "prompt":
        loaded = (env.learner.model, env.learner.tokenizer) if uses_learner(p, args, settings) else None
        return make_policy(p.spec, model=args.policy_model or settings["model"], loaded=loaded, **sampling)
    if p.kind == "checkpoint":
        return make_policy(p.spec, **sampling)
    return make_policy(p.spec)


# --------------------------------------------------------------------------------------------------- settings
def build_settings(args: argparse.Namespace) -> dict[str, Any]:
    """compare_policies' settings (preset, ``--set``, ``--model``) with ``--metric`` as the reward kind."""
    if args.metric:
        args.set = [*(args.set or []), f"reward={args.metric}"]
    return compare_policies.build_settings(args)


def sampling_of(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy_model": args.policy_model or settings["model"],
        "frozen_writer": args.frozen_writer,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
    }


# --------------------------------------------------------------------------------------------------- matrices
def aggregate(matrices: list[list[list[float]]]) -> tuple[list[list[float]], list[list[float]]]:
    """Cell-wise mean and sample sd (0 for one matrix) of equally shaped matrices (SEAL's aggregation)."""
    rows, cols = len(matrices[0]), len(matrices[0][0])
    cells = [[[m[r][c] for m in matrices] for c in range(cols)] for r in range(rows)]
    mean = [[statistics.fmean(v) for v in row] for row in cells]
    sd = [[statistics.stdev(v) if len(v) > 1 else 0.0 for v in row] for row in cells]
    return mean, sd


def summary(m: list[list[float]]) -> dict[str, float]:
    """Forgetting in a (K+1) x K matrix: the first article right after its edit and after all K, the mean of row 0,
    of the diagonal (each article right after its own edit) and of the last row, and the mean drop from the diagonal
    to the last row over the articles edited before the last."""
    k = len(m[0])
    diag = [m[r + 1][r] for r in range(k)]
    return {
        "first_after_own_edit": m[1][0],
        "first_after_all_edits": m[k][0],
        "mean_before": statistics.fmean(m[0]),
        "mean_after_own_edit": statistics.fmean(diag),
        "mean_after_all_edits": statistics.fmean(m[k]),
        "mean_forgetting": statistics.fmean(diag[j] - m[k][j] for j in range(k - 1)) if k > 1 else 0.0,
    }


def retention_change(matrices: list[list[list[float]]], conf: float = 0.95) -> dict[str, Any]:
    """The first article's score after all K edits minus right after its own edit, per sequence (paired), with its
    mean and Student-t interval over sequences (NaN bounds for fewer than 2 sequences)."""
    k = len(matrices[0][0])
    changes = [m[k][0] - m[1][0] for m in matrices]
    mean, low, high = stats.mean_ci(changes, conf)
    return {"mean": mean, "ci": [low, high], "conf": conf, "per_sequence": changes}


def read_reference(path: Path | None) -> dict[str, Any] | None:
    """SEAL's published matrices, or None when the file is absent."""
    if path is None or not path.is_file():
        return None
    ref = read_json(path)
    return {
        "mean_over_sequences": ref["mean_over_sequences"],
        "std_over_sequences": ref["std_over_sequences"],
        "n_sequences": ref.get("n_sequences"),
        "n_datapoints": ref.get("n_datapoints"),
        "base_model": ref.get("base_model"),
        "source": str(path),
        "summary": summary(ref["mean_over_sequences"]),
    }


# --------------------------------------------------------------------------------------------------- run
def sequence_seed(seed: int, s: int) -> int:
    return derive_seed(seed, "sequence", s)


def run_sequence(env: Any, policy: Any, args: argparse.Namespace, s: int, label: str) -> dict[str, Any]:
    """One episode of the env with this policy: its journal record."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=sequence_seed(args.seed, s))
    seconds: dict[str, Any] = {"reset": time.perf_counter() - t0, "self_edit": [], "step": []}
    K = info["n_articles"]
    edits, steps = [], []
    for k in range(K):
        t1 = time.perf_counter()
        edit = policy.propose([obs], k=1, seed=derive_seed(args.seed, "self-edit", s, k))[0][0]
        t2 = time.perf_counter()
        edits.append(edit)
        obs, reward, terminated, _, step = env.step(edit)
        steps.append(step)
        seconds["self_edit"].append(t2 - t1)
        seconds["step"].append(time.perf_counter() - t2)
        if not args.quiet:
            row = " ".join(f"{x:.3f}" for x in step["row"])
            print(
                f"  {label} sequence {s} step {k + 1}/{K}: {step['metric']} [{row}] (self-edit {t2 - t1:.1f} s, "
                f"train + merge + quiz {time.perf_counter() - t2:.1f} s)",
                file=sys.stderr,
            )
    assert terminated  # the env ends its episode at the K-th step
    return {
        "type": "sequence",
        "policy": label,
        "sequence": s,
        "seed": info["seed"],
        "article_ids": info["article_ids"],
        "article_indices": info["article_indices"],
        "titles": [st["title"] for st in steps],
        "self_edits": edits,
        "rewards": [st["reward"] for st in steps],
        "diverged": [st["diverged"] for st in steps],
        "merged": [st["merged"] for st in steps],
        "train_steps": [st["train_steps"] for st in steps],
        "matrices": steps[-1]["matrices"],
        "seconds": time.perf_counter() - t0,
        "seconds_by_phase": seconds,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the sequences the journal in ``args.out`` does not hold yet, then write the report. Returns the report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = build_settings(args)
    policies = [parse_policy(p) for p in (args.policy or DEFAULT_POLICIES)]
    labels = [p.label for p in policies]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"duplicate policy labels {labels}; name them with LABEL=SPEC")
    available = len(select_articles(SealConfig.from_kwargs(**settings)))
    if args.passages > available:
        raise SystemExit(
            f"-K {args.passages} but split {settings['split']!r} of {settings['dataset']!r} has only {available} "
            "articles"
        )
    journal_path = out / JOURNAL
    old = read_records(journal_path)
    header = next((r for r in old if r.get("type") == "config"), None)
    sampling = sampling_of(args, settings)
    if header is not None:
        mine = {"settings": comparable(settings), "passages": args.passages, "sampling": sampling}
        theirs = {
            "settings": comparable(header["settings"]),
            "passages": header["passages"],
            "sampling": header["sampling"],
        }
        if mine != theirs:
            diff = [k for k in mine if mine[k] != theirs[k]]
            raise SystemExit(
                f"{journal_path} was written with other {', '.join(diff)}; use another --out or the same options"
            )
    done = {(r["policy"], r["sequence"]) for r in old if r.get("type") == "sequence"}
    todo = [(s, p) for s in range(args.sequences) for p in policies if (p.label, s) not in done]
    print(
        f"{len(policies)} policies x {args.sequences} sequences of {args.passages} articles: "
        f"{args.sequences * len(policies) - len(todo)} sequences in the journal, {len(todo)} to run",
        file=sys.stderr,
    )
    if todo:
        journal = Journal(journal_path)
        try:
            if header is None:
                journal.append(
                    {
                        "type": "config",
                        "settings": settings,
                        "passages": args.passages,
                        "sampling": sampling,
                        "started": _dt.datetime.now().isoformat(timespec="seconds"),
                        "argv": sys.argv[1:],
                    }
                )
            _run(args, settings, policies, todo, journal)
        finally:
            journal.close()
    return write_report(out, args, settings, policies)


def _run(
    args: argparse.Namespace,
    settings: dict[str, Any],
    policies: list[PolicySpec],
    todo: list[tuple[int, PolicySpec]],
    journal: Journal,
) -> None:
    import gymnasium as gym

    env = gym.make("seal/ContinualSelfEdits-v0", n_articles=args.passages, **settings).unwrapped
    try:
        built: dict[str, Any] = {}
        for s, p in todo:  # sequence-major: a partial run holds every policy's first sequences
            if p.label not in built:
                built[p.label] = build_policy(p, args, settings, env)
            record = run_sequence(env, built[p.label], args, s, p.label)
            journal.append({**record, "spec": p.spec})
            if not args.quiet:
                row = " ".join(f"{x:.3f}" for x in record["matrices"][settings["reward"]][-1])
                print(f"{p.label} sequence {s}: last row [{row}] ({record['seconds']:.0f} s)", file=sys.stderr)
    finally:
        env.close()


# --------------------------------------------------------------------------------------------------- report
def write_report(
    out: Path, args: argparse.Namespace, settings: dict[str, Any], policies: list[PolicySpec]
) -> dict[str, Any]:
    """results.json, results.md and results.png from the journal: the first -S sequences of each policy."""
    records = [r for r in read_records(out / JOURNAL) if r.get("type") == "sequence" and r["sequence"] < args.sequences]
    metric = settings["reward"]
    reference = read_reference(None if args.no_reference else Path(args.seal_reference))
    report_policies = []
    for p in policies:
        mine = sorted((r for r in records if r["policy"] == p.label), key=lambda r: r["sequence"])
        entry: dict[str, Any] = {
            "label": p.label,
            "spec": p.spec,
            "condition": p.condition,
            "writer": writer(p, args, settings),
            "n_sequences": len(mine),
            "sequences": [r["sequence"] for r in mine],
        }
        if mine:
            cells = {kind: aggregate([r["matrices"][kind] for r in mine]) for kind in SCORES}
            entry["mean_over_sequences"] = {kind: m for kind, (m, _) in cells.items()}
            entry["std_over_sequences"] = {kind: sd for kind, (_, sd) in cells.items()}
            entry["summary"] = summary(cells[metric][0])
            entry["first_article_retention"] = retention_change([r["matrices"][metric] for r in mine])
            entry["diverged_steps"] = sum(sum(r["diverged"]) for r in mine)
            entry["seconds"] = sum(r["seconds"] for r in mine)
        report_policies.append(entry)
    report = {
        "settings": settings,
        "metric": metric,
        "passages": args.passages,
        "sequences": args.sequences,
        "seed": args.seed,
        "sampling": sampling_of(args, settings),
        "policies": report_policies,
        "seal_published": reference,
        "machine": machine_info(),
    }
    write_json_atomic(out / "results.json", report)
    text = markdown(report)
    write_atomic(out / "results.md", text)
    if not args.no_plot:
        plot_heatmaps(report, out / "results.png")
    print(text)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}" + ("" if args.no_plot else f", {out / 'results.png'}"),
        file=sys.stderr,
    )
    return report


def _row_name(r: int) -> str:
    return "before any edit" if r == 0 else f"after {r} edit{'s' if r > 1 else ''}"


def matrix_table(mean: list[list[float]], sd: list[list[float]]) -> list[str]:
    """A Markdown table of a (K+1) x K matrix, mean +- sd, the cells above the diagonal empty."""
    k = len(mean[0])
    lines = ["| | " + " | ".join(f"article {c + 1}" for c in range(k)) + " |", "|---" * (k + 1) + "|"]
    for r, row in enumerate(mean):
        cells = [f"{row[c]:.3f} ± {sd[r][c]:.3f}" if r == 0 or c < r else "" for c in range(k)]
        lines.append(f"| {_row_name(r)} | " + " | ".join(cells) + " |")
    return lines


def summary_lines(s: dict[str, float]) -> list[str]:
    return [
        f"- first article: {s['first_after_own_edit']:.3f} right after its edit, {s['first_after_all_edits']:.3f} "
        "after all edits",
        f"- mean: {s['mean_before']:.3f} before any edit, {s['mean_after_own_edit']:.3f} right after each article's "
        f"own edit, {s['mean_after_all_edits']:.3f} after all edits (mean drop from own edit to the end, over the "
        f"articles before the last: {s['mean_forgetting']:.3f})",
    ]


def markdown(report: dict[str, Any]) -> str:
    settings, metric, ref = report["settings"], report["metric"], report["seal_published"]
    lines = [
        "# Continual self-edits (forgetting)",
        "",
        f"{settings['model']} on {Path(str(settings['dataset'])).name} ({settings['split']}): "
        f"{report['passages']} articles per sequence, up to {report['sequences']} sequences; {metric} "
        f"(mean ± sd over sequences); {settings['epochs']} epochs, LoRA r={settings['lora_rank']} on "
        f"{','.join(settings['lora_modules'])}, lr {settings['learning_rate']}, include_passage="
        f"{settings['include_passage']}. Row r: the model after r self-edit-train-merge steps, quizzed on "
        "articles 1..r (row 0: the unedited model on all of them).",
    ]
    for p in report["policies"]:
        lines += ["", f"## {p['label']} ({p['spec']}; self-edits {p['writer']})", ""]
        if not p["n_sequences"]:
            lines.append("No finished sequence.")
            continue
        lines.append(f"{p['n_sequences']} sequence(s), {p['diverged_steps']} diverged step(s), {p['seconds']:.0f} s.")
        lines += ["", *matrix_table(p["mean_over_sequences"][metric], p["std_over_sequences"][metric]), ""]
        lines += summary_lines(p["summary"])
        kept = p["first_article_retention"]
        low, high = kept["ci"]
        lines.append(
            f"- first article, after all edits minus right after its own edit, paired by sequence: {kept['mean']:+.3f} "
            f"[{low:+.3f}, {high:+.3f}] ({kept['conf']:.0%} CI over {p['n_sequences']} sequences)"
        )
        if metric != "accuracy":
            mean, sd = p["mean_over_sequences"]["accuracy"], p["std_over_sequences"]["accuracy"]
            lines += ["", "Accuracy (SEAL's metric):", "", *matrix_table(mean, sd), "", *summary_lines(summary(mean))]
    if ref is not None:
        lines += [
            "",
            f"## SEAL's published matrix (accuracy; {ref['base_model']}, {ref['n_datapoints']} articles, "
            f"{ref['n_sequences']} sequences)",
            "",
            *matrix_table(ref["mean_over_sequences"], ref["std_over_sequences"]),
            "",
            *summary_lines(ref["summary"]),
            "",
            "### The first article, and each article right after its own edit: ours next to SEAL's (accuracy)",
            "",
            *side_by_side(report, "accuracy"),
        ]
    return "\n".join(lines) + "\n"


def side_by_side(report: dict[str, Any], metric: str) -> list[str]:
    """Column 0 (the first article as edits accumulate) and the diagonal of ``metric``, every policy next to
    SEAL's."""
    ref = report["seal_published"]
    ran = [p for p in report["policies"] if p["n_sequences"]]
    heads = [f"{p['label']} {what}" for p in ran for what in ("first", "own edit")] + ["SEAL first", "SEAL own edit"]
    lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    seal = ref["mean_over_sequences"]
    for r in range(max(report["passages"], len(seal) - 1) + 1):
        cells = []
        for m in [p["mean_over_sequences"][metric] for p in ran] + [seal]:
            k = len(m[0])
            first = f"{m[r][0]:.3f}" if r <= k else ""
            own = f"{m[r][r - 1]:.3f}" if 1 <= r <= k else ""
            cells += [first, own]
        lines.append(f"| {_row_name(r)} | " + " | ".join(cells) + " |")
    return lines


def plot_heatmaps(report: dict[str, Any], path: Path) -> None:
    """One heatmap of the metric's mean matrix per policy (and SEAL's published one), the upper triangle blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric, ref = report["metric"], report["seal_published"]
    panels = [(p["label"], p["mean_over_sequences"][metric], metric) for p in report["policies"] if p["n_sequences"]]
    if ref is not None:
        panels.append(("SEAL (published)", ref["mean_over_sequences"], "accuracy"))
    if not panels:
        return

    def masked(m: list[list[float]]) -> Any:
        a = np.array(m, dtype=float)
        k = a.shape[1]
        return np.ma.masked_array(a, np.array([[r > 0 and c >= r for c in range(k)] for r in range(k + 1)]))

    scales: dict[str, tuple[float, float]] = {}  # panels of the same quantity share one colour scale
    for _, m, what in panels:
        lo, hi = float(masked(m).min()), float(masked(m).max())
        old_lo, old_hi = scales.get(what, (lo, hi))
        scales[what] = (min(lo, old_lo), max(hi, old_hi))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, m, what) in zip(axes[0], panels, strict=True):
        a = masked(m)
        k = a.shape[1]
        mask = np.ma.getmaskarray(a)
        lo, hi = scales[what]
        image = ax.imshow(a, cmap="viridis", aspect="auto", vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=what)
        if k <= 10:
            for r in range(k + 1):
                for c in range(k):
                    if not mask[r, c]:
                        ax.text(c, r, f"{a[r, c]:.2f}", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(k), [str(c + 1) for c in range(k)])
        ax.set_yticks(range(k + 1), ["base"] + [str(r) for r in range(1, k + 1)])
        ax.set_xlabel("article")
        ax.set_ylabel("edits merged")
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"Continual self-edits: {report['settings']['model']}, {metric}", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.forgetting",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        metavar="[LABEL=]SPEC",
        help="policies to compare: passage, passage-as-edit, TEMPLATE or prompt:TEMPLATE, replay:PATH, "
        f"checkpoint:RUN_DIR[:ROUND] (default: {' '.join(DEFAULT_POLICIES)})",
    )
    parser.add_argument("-K", "--passages", type=int, default=8, help="articles per sequence (default 8, as SEAL)")
    parser.add_argument("-S", "--sequences", type=int, default=8, help="sequences per policy (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the sequences and samples (default 0)")
    parser.add_argument(
        "--data",
        default="bundled",
        help="articles: 'bundled', a SEAL/SQuAD JSON file (e.g. ../shared/data/squad_seal_eval_dev100.json) or "
        "'squad[:split]' (default: bundled)",
    )
    parser.add_argument(
        "--split", default="all", choices=("all", "train", "heldout"), help="which articles (default: all)"
    )
    parser.add_argument("--model", default=None, help="the learner model (shortcut for --set model=...)")
    parser.add_argument(
        "--metric",
        choices=REWARD_KINDS,
        default=None,
        help="the score of the matrices shown first and of the env's reward (shortcut for --set reward=...; "
        "default: the env's, loglik); results.md also shows accuracy (SEAL's) and results.json every score kind",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="inner-loop settings: demo (3 epochs, 16-token answers; default) or paper (SEAL's: 10 epochs, loss "
        "on every token, 64-token answers)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="environment setting override, repeatable (e.g. --set epochs=5 --set include_passage=false); any "
        "SealConfig field",
    )
    parser.add_argument(
        "--policy-model",
        default=None,
        help="model of prompt: policies (default: the learner, i.e. the model being edited)",
    )
    parser.add_argument(
        "--frozen-writer",
        action="store_true",
        help="prompt: policies sample from a separate unedited copy of the model, not from the edited one",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0, SEAL's)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default 0.95, SEAL's)")
    parser.add_argument("--max-tokens", type=int, default=512, help="self-edit length cap in tokens (default 512)")
    parser.add_argument(
        "--out", default="results/forgetting", help="output and journal folder (default: results/forgetting)"
    )
    parser.add_argument(
        "--seal-reference",
        default=str(SEAL_REFERENCE),
        help="SEAL's published matrix (default: ../shared/data/seal_continual_self_edits.json; skipped if absent)",
    )
    parser.add_argument("--no-reference", action="store_true", help="do not show SEAL's published matrix")
    parser.add_argument(
        "--report-only", action="store_true", help="run nothing: write the report from what the journal holds"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write results.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def report_only(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    records = read_records(out / JOURNAL)
    header = next((r for r in records if r.get("type") == "config"), None)
    if header is None:
        raise SystemExit(f"no journal in {out}")
    args.passages = header["passages"]
    labels = list(dict.fromkeys((r["policy"], r["spec"]) for r in records if r.get("type") == "sequence"))
    specs = args.policy or [f"{label}={spec}" for label, spec in labels]
    return write_report(out, args, header["settings"], [parse_policy(p) for p in specs])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.passages < 1 or args.sequences < 1:
        parser.error("-K/--passages and -S/--sequences must be positive")
    out = Path(args.out)
    if args.report_only and not out.is_dir():
        raise SystemExit(f"no journal in {out}")
    try:
        for p in args.policy or DEFAULT_POLICIES:
            parse_policy(p)
    except ValueError as err:
        parser.error(str(err))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        with FolderLock(out):  # one process at a time appends to the journal and writes the report
            report = report_only(args) if args.report_only else run(args)
    except (FolderInUseError, JournalWriteError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
