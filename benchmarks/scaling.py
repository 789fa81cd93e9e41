"""Scaling benchmark: rewards per hour with the in-process executor and Ray pools of 1..N workers, the cost of one
reward at SEAL's paper settings, and a projection of SEAL's paper-scale reward computation onto N workers.

    python -m benchmarks.scaling                                   # SmolLM2-135M: cheap setting, 1 and 2 workers
    python -m benchmarks.scaling --json scaling.json --markdown scaling.md
    python -m benchmarks.scaling --model tiny-random --rewards 4 --no-paper-probe    # smoke test (a minute)

What it measures (the reward cache is off throughout: every reward is really trained):

1. ``--configs`` (default ``inprocess,ray:1,ray:2``): each executor evaluates the same ``--rewards`` requests
   (``--articles`` articles, a "copy" self-edit = the passage's sentences as numbered lines, seeds 0, 1, ...) at a
   cheap setting (``--epochs`` 2, at most 5 sequences, answers up to 16 tokens). Reported: start-up seconds
   (Ray + model loads), batch wall seconds (baseline quizzes included, as in a real run), rewards per hour, and
   whether the rewards equal the in-process ones (bit-exact needs the same BLAS thread count: ``ray:1`` uses
   all cores like in-process, ``ray:2`` one thread per worker on two cores).
2. ``--paper-probe``: one reward at the env defaults with SEAL's 10 epochs (LoRA r=32 on q/v, lr 1e-3, up to 30
   sequences, answers up to 32 tokens), in-process; its baseline, train and eval seconds.
3. A projection of SEAL's paper-scale run (``--rounds`` 2 x ``--paper-articles`` 50 x ``--self-edits`` 5 x
   ``--repeats`` 3 inner-loop runs) onto N workers, each as fast as this whole machine, from the probe's cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env.articles import Article, select_articles
from seal_env.config import SEAL_PAPER_SETTINGS, SealConfig
from seal_env.executors import RewardRequest, blas_threads, make_executor

from benchmarks.inner_loop_speed import REWARD_FIELDS

CHEAP = dict(epochs=2, max_sequences=5, answer_max_tokens=16)


def copy_self_edit(article: Article) -> str:
    """A deterministic, SEAL-sized self-edit: the passage's sentences as a numbered list."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", article.context) if s.strip()]
    return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, 1))


def requests_for(settings: dict[str, Any], n_rewards: int, n_articles: int) -> list[RewardRequest]:
    articles = select_articles(SealConfig.from_kwargs(**settings))[:n_articles]
    return [
        RewardRequest(articles[i % len(articles)], copy_self_edit(articles[i % len(articles)]), seed=i)
        for i in range(n_rewards)
    ]


def cpu_seconds(ex: Any) -> float:
    """CPU seconds used so far by the executor's workers (this process for the in-process executor)."""
    if hasattr(ex, "actors"):
        import ray

        return sum(ray.get([a.cpu_seconds.remote() for a in ex.actors if a is not None]))
    return time.process_time()


def run_config(name: str, settings: dict[str, Any], requests: list[RewardRequest]) -> dict[str, Any]:
    kind, _, workers = name.partition(":")
    t0 = time.perf_counter()
    ex = make_executor(kind, settings, workers=int(workers or 1))
    startup = time.perf_counter() - t0
    try:
        cpu0 = cpu_seconds(ex)
        t0 = time.perf_counter()
        results = ex.evaluate(requests)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(ex) - cpu0
        broadcast = None
        if kind == "ray":  # one base-weight broadcast (what every outer-loop round costs)
            from seal_env.envs.knowledge import KnowledgeIncorporationEnv

            from mlx.utils import tree_flatten

            env = KnowledgeIncorporationEnv(**settings)
            weights = {k: v for k, v in tree_flatten(env.learner.model.parameters()) if "lora_" not in k}
            t0 = time.perf_counter()
            ex.set_base_weights(weights)
            broadcast = time.perf_counter() - t0
            env.close()
        threads = getattr(ex, "cpus_per_worker", None) if kind == "ray" else blas_threads()
    finally:
        ex.close()
    phases = {p: sum(info.get(f"seconds_{p}", 0.0) for _, info in results) for p in ("baseline", "train", "eval")}
    return {
        "config": name,
        "workers": int(workers or 1),
        "threads_per_worker": threads,
        "startup_seconds": startup,
        "wall_seconds": wall,
        "rewards": len(requests),
        "rewards_per_hour": len(requests) / wall * 3600,
        "seconds_per_reward": wall / len(requests),
        "cpu_seconds_per_reward": cpu / len(requests),
        "worker_seconds": phases,
        "broadcast_seconds": broadcast,
        "reward_values": [r for r, _ in results],
        "loglik_gains": [i["loglik_gain"] for _, i in results],
        "load_after": os.getloadavg()[0],
    }


def paper_probe(model: str, n_articles: int, threads: int = 1) -> dict[str, Any]:
    """One reward at SEAL's settings (env defaults, 10 epochs) on each of ``n_articles`` articles, in-process, with
    ``threads`` BLAS threads. With 1 thread, CPU seconds are what the reward costs one otherwise idle core (wall
    seconds on a shared machine are longer; OpenBLAS's idle threads spin, so with more threads CPU time overstates
    the work)."""
    settings = dict(model=model, cache=False, epochs=SEAL_PAPER_SETTINGS["epochs"])
    ex = make_executor("inprocess", settings)
    before = blas_threads()
    blas_threads(threads)
    try:
        out = []
        for req in requests_for(settings, n_articles, n_articles):
            cpu0 = time.process_time()
            reward, info = ex.evaluate([req])[0]
            cpu = time.process_time() - cpu0
            out.append(
                {"cpu_seconds": cpu}
                | {k: info[k] for k in REWARD_FIELDS}
                | {"reward": reward, "n_questions": len(req.article.questions)}
            )
    finally:
        blas_threads(before)
        ex.close()
    mean = lambda key: sum(o[key] for o in out) / len(out)  # noqa: E731
    quiet = mean("cpu_seconds") / mean("seconds_total")  # CPU share we got: wall on an idle core ~ wall * quiet
    return {
        "rewards": out,
        "threads": threads,
        "quiet_factor": quiet,
        "baseline_seconds": mean("seconds_baseline"),
        "run_seconds": mean("seconds_reset") + mean("seconds_train") + mean("seconds_eval"),
        "train_seconds": mean("seconds_train"),
        "eval_seconds": mean("seconds_eval"),
        "cpu_seconds": mean("cpu_seconds"),
        "total_seconds": mean("seconds_total"),
        "train_steps": mean("train_steps"),
        "n_sequences": mean("n_sequences"),
    }


def project(
    run_seconds: float,
    baseline_seconds: float,
    rounds: int,
    articles: int,
    self_edits: int,
    repeats: int,
    workers: list[int],
    broadcast_seconds: float = 0.0,
) -> list[dict[str, Any]]:
    """Wall time of the paper-scale reward computation on N workers (each as fast as the probe's machine).

    One request = one self-edit's reward = ``repeats`` inner-loop runs in a row on one worker; a round's
    ``articles * self_edits`` requests are spread over the workers (list scheduling: ``ceil(requests / N)``
    requests on the busiest worker). Each worker quizzes each article it sees once (baseline): between 1 and
    ``min(N, self_edits)`` baselines per article and round. Rounds are sequential (the policy is updated between
    them, then its weights are broadcast). Self-edit generation and the policy update are not included.
    """
    per_request = repeats * run_seconds
    requests = articles * self_edits
    out = []
    for n in workers:
        busiest = math.ceil(requests / n)
        lo = rounds * (busiest * per_request + math.ceil(articles / n) * baseline_seconds + broadcast_seconds)
        dup = min(n, self_edits)
        hi = rounds * (busiest * per_request + math.ceil(articles * dup / n) * baseline_seconds + broadcast_seconds)
        out.append(
            {"workers": n, "hours_low": lo / 3600, "hours_high": hi / 3600, "utilisation": requests / (n * busiest)}
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Measured on {report['machine']} (load average {report['load_before']:.1f} before, "
        f"{report['load_after']:.1f} after; model `{report['model']}`, cheap setting {report['cheap']}, "
        f"{report['requests']} rewards over {report['articles']} articles, reward cache off).",
        "",
        "| executor | workers x BLAS threads | start-up (s) | batch wall (s) | rewards / hour | worker CPU s / reward"
        " | rewards vs in-process | max abs diff loglik_gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref = next((c for c in report["configs"] if c["config"] == "inprocess"), None)
    for c in report["configs"]:
        same, diff = "-", "-"
        if ref is not None and c is not ref:
            same = "equal" if c["reward_values"] == ref["reward_values"] else "differ"
            diff = f"{max(abs(a - b) for a, b in zip(c['loglik_gains'], ref['loglik_gains'], strict=True)):.1e}"
        lines.append(
            f"| {c['config']} | {c['workers']} x {c['threads_per_worker']} | {c['startup_seconds']:.1f} | "
            f"{c['wall_seconds']:.1f} | {c['rewards_per_hour']:.0f} | {c['cpu_seconds_per_reward']:.1f} | "
            f"{same} | {diff} |"
        )
    p = report.get("paper_probe")
    if p:
        lines += [
            "",
            f"One reward at SEAL's settings (env defaults, 10 epochs), in-process with {p['threads']} BLAS thread(s): "
            f"{p['run_seconds']:.0f} s wall per inner-loop run ({p['train_seconds']:.0f} s training "
            f"{p['train_steps']:.0f} steps on {p['n_sequences']:.0f} sequences, {p['eval_seconds']:.1f} s "
            f"quiz), plus {p['baseline_seconds']:.1f} s for an article's first (baseline) quiz; it got "
            f"{p['quiet_factor']:.0%} of a core (CPU s / wall s), so about {p['run_seconds'] * p['quiet_factor']:.0f}"
            " s per run on an idle core.",
        ]
    if report.get("projection"):
        s = report["paper_scale"]
        runs = s["rounds"] * s["articles"] * s["self_edits"] * s["repeats"]
        lines += [
            "",
            f"Projection: SEAL's paper-scale reward computation ({s['rounds']} rounds x {s['articles']} "
            f"articles x {s['self_edits']} self-edits x {s['repeats']} repeats = {runs} inner-loop runs) on N "
            "single-core workers (low-high: baselines quizzed once per article and round, or once per worker "
            "that sees the article):",
            "",
            "| workers | hours, idle cores (CPU-time estimate) | hours, as slow as measured here | utilisation |",
            "|---|---|---|---|",
        ]

        def fmt(row: dict[str, Any]) -> str:
            lo, hi = f"{row['hours_low']:.1f}", f"{row['hours_high']:.1f}"
            return lo if lo == hi else f"{lo}-{hi}"

        for quiet, loaded in zip(report["projection_quiet"], report["projection"], strict=True):
            lines.append(f"| {quiet['workers']} | {fmt(quiet)} | {fmt(loaded)} | {quiet['utilisation']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--configs",
        default="inprocess,ray:1,ray:2",
        help="comma-separated executors: inprocess, ray:N (default: %(default)s)",
    )
    ap.add_argument("--rewards", type=int, default=8, help="rewards per executor (default: %(default)s)")
    ap.add_argument("--articles", type=int, default=2, help="articles they cover (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=CHEAP["epochs"], help="cheap setting's epochs (default: 2)")
    ap.add_argument("--no-paper-probe", dest="paper_probe", action="store_false")
    ap.add_argument("--probe-articles", type=int, default=1, help="paper-setting rewards to time (default: 1)")
    ap.add_argument("--probe-threads", type=int, default=1, help="BLAS threads for them (default: 1 = one core)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--paper-articles", type=int, default=50)
    ap.add_argument("--self-edits", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--project-workers", default="1,2,4,8,16,32,64,125,250")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--markdown", help="write the markdown summary here")
    args = ap.parse_args(argv)

    settings = dict(model=args.model, cache=False, **{**CHEAP, "epochs": args.epochs})
    requests = requests_for(settings, args.rewards, args.articles)
    report: dict[str, Any] = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_before": os.getloadavg()[0],
        "cheap": {**CHEAP, "epochs": args.epochs},
        "requests": len(requests),
        "articles": args.articles,
        "configs": [],
    }
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        print(f"[scaling] {name} ...", file=sys.stderr, flush=True)
        report["configs"].append(run_config(name, settings, requests))
        c = report["configs"][-1]
        print(f"[scaling] {name}: {c['wall_seconds']:.1f} s, {c['rewards_per_hour']:.0f} rewards/h", file=sys.stderr)
    if args.paper_probe:
        print("[scaling] paper-setting probe ...", file=sys.stderr, flush=True)
        probe = report["paper_probe"] = paper_probe(args.model, args.probe_articles, args.probe_threads)
        bcast = max((c["broadcast_seconds"] or 0.0) for c in report["configs"]) if report["configs"] else 0.0
        report["paper_scale"] = {
            "rounds": args.rounds,
            "articles": args.paper_articles,
            "self_edits": args.self_edits,
            "repeats": args.repeats,
        }
        workers = [int(n) for n in args.project_workers.split(",")]
        scale = args.rounds, args.paper_articles, args.self_edits, args.repeats
        report["projection"] = project(probe["run_seconds"], probe["baseline_seconds"], *scale, workers, bcast)
        q = probe["quiet_factor"]
        report["projection_quiet"] = project(
            probe["run_seconds"] * q, probe["baseline_seconds"] * q, *scale, workers, bcast
        )
    report["load_after"] = os.getloadavg()[0]
    text = markdown(report)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
