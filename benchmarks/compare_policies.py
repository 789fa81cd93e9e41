"""Compare self-edit policies through the environment: accuracy, F1 and log-likelihood gains with 95 % CIs.

Conditions (as in SEAL's single-passage knowledge-incorporation table; every reward is ``env.evaluate`` through a
``seal_env.executors`` executor, the environment's own evaluation path):

  none                 no adaptation at all (requests with adapt=False: the article's baseline quiz, computed once
                       where the other rewards of the article are). The reward is exactly 0 and the adapted
                       accuracy is the baseline's.
  passage              passage only: the empty self-edit with include_passage=True (the inner loop trains on the
                       passage alone; agents' make_policy("empty")).
  passage-as-edit      the passage given as the self-edit (agents' make_policy("passage-as-edit")): with
                       include_passage=True the inner loop trains on the passage twice.
  prompt:TEMPLATE      passage + self-edits sampled from --policy-model with a SEAL template (implications, ...).
  replay:PATH          passage + self-edits read from a file (e.g. ../shared/data/self_edits/gpt-4.1_dev100.json).
  checkpoint:RUN[:R]   passage + self-edits sampled from a policy trained by agents (ReSTEM/GRPO), round R.

"passage + self-edit" holds with the default include_passage=True; with --set include_passage=false the self-edit
policies train on the self-edit alone and "passage" is then evaluated as the passage given as the self-edit.
A policy can be given a display label: --policy gpt41=replay:PATH.

Each of N articles gets K self-edits per policy (--self-edits), each trained with S inner-loop seeds (--seeds).
The inner-loop seed depends on (--seed, article, k, s) only, not on the policy, so policies are compared with
common random numbers. Articles are the unit of replication: per-article means (over K and S) give the 95 %
Student-t CIs of the table, and the paired tests (paired bootstrap, sign test) between policies. "Gain" is over
the un-adapted model, i.e. over `none` (whose gain is 0 by construction).

Outputs in --out: journal.jsonl (one JSON line per evaluated (policy, article, k, seed), and the self-edits; an
interrupted run started again with the same --out resumes: finished work is skipped), results.md (tables),
results.json (settings, summaries, tests and every per-question result) and results.png (gains with 95 % CIs).
The report files are replaced whole (never left half-written), and while a run uses --out it holds the folder's
lock (.lock): a second run on the same --out stops at once with an error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, select_articles
from seal_env.config import SEAL_PAPER_SETTINGS, SealConfig, parse_assignments
from seal_env.journal import (
    FolderInUseError,
    FolderLock,
    Journal,
    JournalWriteError,
    read_records,
    write_atomic,
    write_json_atomic,
)

from agents.base import derive_seed, observation
from benchmarks.policy_analysis import JOURNAL, analyse, markdown, plot_gains

#: Inner-loop settings of the quick default (`--preset demo`): 3 epochs and short answers, so that a reward takes
#: seconds on two CPU cores. `--preset paper` is SEAL's inner loop (SealConfig defaults + SEAL_PAPER_SETTINGS).
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {"epochs": 3, "answer_max_tokens": 16},
    "paper": dict(SEAL_PAPER_SETTINGS),
}
DEFAULT_POLICIES = ("none", "passage", "prompt:implications")
#: Settings that do not change a reward (timings, the persistent reward cache, how the LLM judge is reached): a
#: journal is reused across them.
NOT_COMPARED = (
    "timings",
    "cache",
    "cache_dir",
    "judge_api_key_env",
    "judge_timeout",
    "judge_retries",
    "judge_concurrency",
)


# --------------------------------------------------------------------------------------------------- policies
class PolicySpec:
    """A parsed ``--policy`` argument: display ``label``, the ``spec`` and its condition."""

    def __init__(self, arg: str):
        label, sep, spec = arg.partition("=")
        if not (sep and label and self._condition(spec.strip())):
            label, spec = "", arg
        spec = spec.strip()
        kind, _, rest = spec.partition(":")
        condition = self._condition(spec)
        if condition is None:
            raise ValueError(
                f"unknown policy {arg!r}: use none, passage, passage-as-edit, prompt:TEMPLATE, "
                "replay:PATH or checkpoint:RUN_DIR[:ROUND] (optionally LABEL=SPEC)"
            )
        self.condition = condition
        if not label:
            if kind == "replay":
                label = "replay:" + Path(rest).stem
            elif kind == "checkpoint":
                label = "checkpoint:" + Path(rest.rstrip("/")).name
            else:
                label = spec
        self.label, self.spec, self.kind = label, spec, kind

    @staticmethod
    def _condition(spec: str) -> str | None:
        kind, _, rest = spec.partition(":")
        if spec in ("none", "passage", "passage-as-edit"):
            return spec
        if kind in ("prompt", "replay", "checkpoint") and rest:
            return "self-edit"
        return None

    def describe(self, include_passage: bool = True) -> str:
        if self.condition == "none":
            return "no adaptation"
        if self.condition == "passage":
            return "passage only"
        if self.condition == "passage-as-edit":
            return "passage as self-edit" + (" + passage" if include_passage else "")
        return ("passage + " if include_passage else "") + "self-edit"

    def __repr__(self) -> str:
        return f"PolicySpec({self.label!r}={self.spec!r})"


def build_policy(p: PolicySpec, args: argparse.Namespace, settings: dict[str, Any]) -> Any:
    """The agents policy that proposes this condition's self-edits."""
    from agents.policies import EmptyPolicy, PassagePolicy, make_policy

    if p.condition == "none":
        return EmptyPolicy()
    if p.condition == "passage":
        return EmptyPolicy() if settings["include_passage"] else PassagePolicy()
    if p.condition == "passage-as-edit":
        return PassagePolicy()
    sampling: dict[str, Any] = {}
    if p.kind in ("prompt", "checkpoint"):
        sampling = {
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_tokens": args.max_tokens,
            "progress": not args.quiet,
        }
        sampling = {k: v for k, v in sampling.items() if v is not None}
    if p.kind == "prompt":
        return make_policy(p.spec, model=args.policy_model or settings["model"], **sampling)
    return make_policy(p.spec, **sampling)


# --------------------------------------------------------------------------------------------------- journal
def result_key(policy: str, article_id: str, k: int, s: int) -> tuple[str, str, int, int]:
    return policy, article_id, int(k), int(s)


# --------------------------------------------------------------------------------------------------- settings
def build_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {"dataset": args.data, "split": args.split, **PRESETS[args.preset]}
    try:
        settings.update(parse_assignments(args.set or []))
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bad --set: {err}") from None
    if args.model:
        settings["model"] = args.model
    try:
        return SealConfig.from_kwargs(**settings).to_dict()
    except (TypeError, ValueError) as err:
        raise SystemExit(f"bad environment setting: {err}") from None


def comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match for journal records to be reused (everything that changes a reward); a setting
    that a journal predates counts as its default (e.g. ``grader="lenient"``)."""
    return {k: v for k, v in {**SealConfig().to_dict(), **settings}.items() if k not in NOT_COMPARED}


# --------------------------------------------------------------------------------------------------- run
def select(settings: dict[str, Any], n: int) -> list[Article]:
    articles = select_articles(SealConfig.from_kwargs(**settings))
    return articles if n < 0 else articles[:n]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate what the journal in ``args.out`` does not hold yet, then write the report. Returns the report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = build_settings(args)
    journal_path = out / JOURNAL
    old = read_records(journal_path)
    header = next((r for r in old if r.get("type") == "config"), None)
    sampling = {
        "policy_model": args.policy_model or settings["model"],
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
    }
    if header is not None:
        theirs, mine = comparable(header["settings"]), comparable(settings)
        if theirs != mine or header.get("sampling") != sampling:
            diff = sorted(k for k in set(mine) | set(theirs) if theirs.get(k) != mine.get(k))
            diff += [f"sampling.{k}" for k in sampling if (header.get("sampling") or {}).get(k) != sampling[k]]
            raise SystemExit(
                f"{journal_path} was written with other settings ({', '.join(diff)}); "
                "use another --out or the same settings"
            )
    policies = [PolicySpec(p) for p in (args.policy or DEFAULT_POLICIES)]
    labels = [p.label for p in policies]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"duplicate policy labels {labels}; name them with LABEL=SPEC")
    articles = select(settings, args.articles)
    done = {
        result_key(r["policy"], r["article_id"], r["k"], r["seed_index"]): r for r in old if r.get("type") == "result"
    }
    edits: dict[tuple[str, str], list[str]] = {}
    for r in old:
        if r.get("type") == "self_edits":
            edits[(r["policy"], r["article_id"])] = r["self_edits"]

    K, S = args.self_edits, args.seeds
    todo: dict[str, list[tuple[Article, int, int]]] = {}
    for p in policies:
        todo[p.label] = [
            (a, k, s)
            for a in articles
            for k in range(K)
            for s in range(S)
            if result_key(p.label, a.id, k, s) not in done
        ]
    n_todo = sum(map(len, todo.values()))
    n_done = len(articles) * K * S * len(policies) - n_todo
    print(
        f"{len(policies)} policies x {len(articles)} articles x {K} self-edits x {S} seeds: "
        f"{n_done} rewards in the journal, {n_todo} to evaluate",
        file=sys.stderr,
    )
    journal = Journal(journal_path)
    if header is None:
        journal.append(
            {
                "type": "config",
                "settings": settings,
                "sampling": sampling,
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "argv": sys.argv[1:],
            }
        )
    evaluated = 0
    try:
        if n_todo:
            evaluated = _evaluate(args, settings, policies, todo, edits, journal)
    finally:
        journal.close()
    report = write_report(out, settings, policies, articles, K, S, args.bootstrap, plot=not args.no_plot)
    report["run"] = {"evaluated": evaluated, "skipped": n_done}
    return report


def _evaluate(
    args: argparse.Namespace,
    settings: dict[str, Any],
    policies: list[PolicySpec],
    todo: dict[str, list[tuple[Article, int, int]]],
    edits: dict[tuple[str, str], list[str]],
    journal: Journal,
) -> int:
    from seal_env.cli import executor_from_args
    from seal_env.executors import InProcessExecutor, RewardRequest

    from tqdm.auto import tqdm

    K = args.self_edits
    # 1. self-edits (journaled, so a resumed run does not sample them again)
    for p in policies:
        need = sorted(
            {a.id: a for a, _, _ in todo[p.label] if len(edits.get((p.label, a.id), [])) < K}.values(),
            key=lambda a: a.id,
        )
        if not need:
            continue
        if not args.quiet:
            print(f"{p.label}: self-edits for {len(need)} article(s)", file=sys.stderr)
        policy = build_policy(p, args, settings)
        proposed = policy.propose([observation(a) for a in need], k=K, seed=args.seed)
        for a, texts in zip(need, proposed, strict=True):
            record = {"type": "self_edits", "policy": p.label, "spec": p.spec, "article_id": a.id, "self_edits": texts}
            edits[(p.label, a.id)] = journal.append(record)["self_edits"]  # as journaled: what a resumed run reads
        del policy
    # 2. requests, article-major (a partial run holds complete pairs for its first articles), `none` first. `none`
    # trains nothing: its requests (adapt=False) are answered from the article's baseline quiz, where it is computed.
    index = {a.id: i for i, a in enumerate(select(settings, -1))}
    order = {p.label: i for i, p in enumerate(policies)}
    by_label = {p.label: p for p in policies}
    jobs = sorted(
        ((a, k, s, lab) for lab, items in todo.items() for a, k, s in items),
        key=lambda j: (index[j[0].id], j[1], j[2], order[j[3]]),
    )
    bar = tqdm(total=len(jobs), desc="rewards", unit="reward", disable=args.quiet, dynamic_ncols=True)
    count = 0

    def run_batch(executor: Any, batch: list[tuple[Article, int, int, str]]) -> None:
        requests = [
            RewardRequest(
                a,
                edits[(lab, a.id)][k],
                seed=derive_seed(args.seed, a.id, k, s),
                adapt=by_label[lab].condition != "none",
            )
            for a, k, s, lab in batch
        ]

        def on_result(i: int, reward: float, info: dict[str, Any]) -> None:
            nonlocal count
            a, k, s, lab = batch[i]
            journal.append(
                {
                    "type": "result",
                    "policy": lab,
                    "spec": by_label[lab].spec,
                    "condition": by_label[lab].condition,
                    "article_id": a.id,
                    "article_index": index[a.id],
                    "title": a.title,
                    "k": k,
                    "seed_index": s,
                    "seed": requests[i].seed,
                    "self_edit": requests[i].self_edit,
                    "reward": reward,
                    "info": info,
                }
            )
            count += 1
            bar.set_postfix_str(f"{lab} r={reward:+.3f}", refresh=False)
            bar.update(1)

        executor.evaluate(requests, on_result=on_result)

    executor = None
    try:
        executor = executor_from_args(args, settings)
        if isinstance(executor, InProcessExecutor):
            for a in dict.fromkeys(j[0] for j in jobs):  # article by article: a partial run holds whole articles
                run_batch(executor, [j for j in jobs if j[0].id == a.id])
        else:  # a parallel executor gets all its requests at once
            run_batch(executor, jobs)
    finally:
        if executor is not None:
            executor.close()
        bar.close()
    return count


def write_report(
    out: Path,
    settings: dict[str, Any],
    policies: list[PolicySpec],
    articles: list[Article],
    K: int,
    S: int,
    n_boot: int = 10_000,
    plot: bool = True,
) -> dict[str, Any]:
    """results.md, results.json and results.png from the journal, for these policies, articles, K and S."""
    records = [
        r for r in read_records(out / JOURNAL) if r.get("type") == "result" and r["k"] < K and r["seed_index"] < S
    ]
    labels = [p.label for p in policies]
    ids = [a.id for a in articles]
    analysis = analyse(records, labels, ids, n_boot)
    text = markdown(analysis, policies, settings, len(articles), K, S)
    write_atomic(out / "results.md", text)
    report = {
        "settings": settings,
        "policies": [{"label": p.label, "spec": p.spec, "condition": p.condition} for p in policies],
        "articles": [{"id": a.id, "title": a.title} for a in articles],
        "self_edits": K,
        "seeds": S,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        **analysis,
        "records": [r for r in records if r["policy"] in set(labels) and r["article_id"] in set(ids)],
    }
    write_json_atomic(out / "results.json", report)
    if plot:
        plot_gains(
            analysis,
            labels,
            out / "results.png",
            f"{settings['model']} on {Path(str(settings['dataset'])).name}: "
            f"{len(articles)} articles, {K} self-edit(s) x {S} seed(s), {settings['epochs']} epochs",
        )
    print(text)
    print(
        f"wrote {out / 'results.md'}, {out / 'results.json'}" + (f", {out / 'results.png'}" if plot else ""),
        file=sys.stderr,
    )
    return report


# --------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    from seal_env.cli import add_executor_args

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare_policies",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default="bundled",
        help="articles: 'bundled', a SEAL/SQuAD JSON file (e.g. ../shared/data/"
        "squad_seal_eval_dev100.json) or 'squad[:split]' (default: bundled)",
    )
    parser.add_argument(
        "--split",
        default="all",
        choices=("all", "train", "heldout"),
        help="which articles of the data set (default: all, in file order)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        metavar="[LABEL=]SPEC",
        help="a condition to compare (repeat): none, passage, passage-as-edit, prompt:TEMPLATE, "
        "replay:PATH, checkpoint:RUN_DIR[:ROUND] (default: none, passage, prompt:implications)",
    )
    parser.add_argument("--articles", type=int, default=4, help="the first N articles (-1: all; default 4)")
    parser.add_argument(
        "--self-edits",
        type=int,
        default=1,
        metavar="K",
        help="self-edits per article and policy (replay: the file's first K; default 1)",
    )
    parser.add_argument("--seeds", type=int, default=1, metavar="S", help="inner-loop seeds per self-edit (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of sampling and of the inner loop (default 0)")
    parser.add_argument(
        "--out",
        default="results/compare_policies",
        help="output and journal folder (default: results/compare_policies)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="demo",
        help="inner-loop settings: demo (3 epochs, 16-token answers; default) or paper (SEAL's: "
        "10 epochs, LoRA r=32 alpha=64 on q_proj/v_proj, AdamW lr 1e-3, batch 1)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="environment setting override, repeatable (e.g. --set epochs=3 --set reward=loglik "
        "--set 'lora_modules=[\"all\"]'); any SealConfig field",
    )
    parser.add_argument("--model", default=None, help="the learner model (shortcut for --set model=...)")
    parser.add_argument("--policy-model", default=None, help="model sampled by prompt: policies (default: the learner)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (prompt/checkpoint)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (prompt/checkpoint)")
    parser.add_argument("--max-tokens", type=int, default=512, help="self-edit length cap in tokens (default 512)")
    parser.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="evaluate nothing: write the report from what the journal already holds (the "
        "articles among the first N on which every policy has all K x S rewards)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write results.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_executor_args(parser)
    return parser


def report_only(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    records = read_records(out / JOURNAL)
    header = next((r for r in records if r.get("type") == "config"), None)
    if header is None:
        raise SystemExit(f"no journal in {out}")
    settings = header["settings"]
    results = [r for r in records if r.get("type") == "result"]
    specs = args.policy or list(dict.fromkeys(f"{r['policy']}={r['spec']}" for r in results))
    policies = [PolicySpec(p) for p in specs]
    # the articles on which every requested policy has all its K x S rewards (complete pairs only)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in results:
        if r["k"] < args.self_edits and r["seed_index"] < args.seeds:
            counts[(r["policy"], r["article_id"])] += 1
    full = args.self_edits * args.seeds
    articles = [a for a in select(settings, args.articles) if all(counts[(p.label, a.id)] >= full for p in policies)]
    return write_report(
        out, settings, policies, articles, args.self_edits, args.seeds, args.bootstrap, plot=not args.no_plot
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.articles == 0 or args.self_edits < 1 or args.seeds < 1:
        parser.error("--articles must be non-zero, --self-edits and --seeds positive")
    if args.executor in ("auto", "inprocess", "subprocess") and args.workers != 1:
        parser.error("--workers > 1 needs --executor pool or ray")
    out = Path(args.out)
    if args.report_only and not out.is_dir():
        raise SystemExit(f"no journal in {out}")
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
