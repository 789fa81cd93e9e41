"""Rewards per hour of the whole machine: our in-process, batched and worker-pool paths vs PyTorch + PEFT.

    python -m benchmarks.machine_throughput --json results/machine.json --markdown results/machine.md
    python -m benchmarks.machine_throughput --passages 4 --configs ours-batched,ours-workers
    python -m benchmarks.machine_throughput --model tiny-random --passages 2 --k 2 --set epochs=1    # smoke run

Every configuration computes the same rewards at the environment's defaults (SmolLM2-135M, 3 epochs, loglik
reward; the reward cache off): ``--k`` (5) self-edits of each of ``--passages`` (3) articles, request ``i`` of
article ``a`` trained with seed ``100 + a * K + i``. Self-edits are published SEAL self-edits of the first dev
passages, replayed from ``../shared/data/self_edits`` (Qwen2.5-7B base, GPT-4.1 and SEAL round 2 taken in turn;
at most 15 per passage); without that folder (or with ``--self-edits fixed``) they are fixed: the env's first
articles, self-edit ``i`` = the passage's sentences as numbered lines, starting from sentence ``i`` (wrapping).
The configurations run one after another in one process, never two at once (``--configs``, default all):

1. ``ours-sequential``: this process, all BLAS threads, ``env.evaluate`` one request at a time.
2. ``ours-batched``: this process, all BLAS threads, :class:`~seal_env.executors.InProcessExecutor` (an article's K
   self-edits trained and quizzed together in one ``evaluate_many`` call).
3. ``ours-workers``: ``--workers`` (default: the number of cores) single-thread worker processes
   (:class:`~seal_env.executors.child_process.SubprocessExecutor`), each taking the next article's K requests from a
   shared queue (:func:`pool_evaluate`). Their start (model loads) is timed apart: ``startup_seconds``.
4. ``torch-1proc``: PyTorch + PEFT (benchmarks.torch_baseline: the same weights, LoRA, optimizer, schedule, token
   ids), all threads, the requests one after another; one child process per article (a job holds one quiz).
5. ``torch-procs``: PyTorch + PEFT, ``--workers`` single-thread children at a time, the articles dealt round-robin
   (a thread per slot runs its articles' children one after another).
   Torch configurations are skipped, with a message, when torch, peft or transformers is missing.

What is timed: ``wall_seconds`` is the training and quizzing of every request. Not included: model loads; each
article's baseline quiz (un-adapted model), computed before timing in this process and, with an untimed
``adapt=False`` request per article, in every worker (PyTorch + PEFT computes none: its job has no baseline quiz);
an untimed warm-up on the first article (a two-line self-edit: one reward where rewards are computed one at a time,
one group of K where batched; every torch child trains one before its timed runs). For torch the wall is the
children's own timed runs: ``torch-1proc`` their sum, ``torch-procs`` the largest sum of one slot (slots start
together; a child's start and model load overlap the other slots' work), ``wall_seconds_with_start`` the whole
configuration as this process saw it.

Figures per configuration: ``rewards_per_hour`` = rewards / wall_seconds * 3600; ``peak_rss_mb``, one per process:
this process's largest RSS during the timed block (sampled every 50 ms) for 1-2; each worker's ``VmHWM`` (its
lifetime peak, /proc) for 3; for 4-5 each child's ``VmHWM`` sampled every 100 ms while it runs (the peak up to the
last sample), or where /proc gives no children, ``ru_maxrss`` of RUSAGE_CHILDREN (the largest child waited for so
far, earlier configurations' included) -- ``peak_rss_method`` says which. ``cpu_seconds``: this process's CPU time
(1-2), the workers' (/proc/PID/stat, 3), the children's from RUSAGE_CHILDREN, their start and model load included
(4-5). ``busy_fraction`` (3, 5): the workers' busy seconds over workers x wall (articles % workers != 0 leaves
workers idle at the end). ``vs_torch_best``: rewards/hour over the faster of 4 and 5; ``vs_ours_sequential``: over 1.
``max_abs_reward_difference``: between each pair of ours configurations, same requests (1e-7-ish at equal BLAS
thread counts; another thread count changes the rounding; reported, not asserted).

FLOPs: ``train_gflop`` counts every request's training analytically (benchmarks.inner_loop_speed.step_flops, per
step on one sequence: forward ``2 * N * T`` (N = transformer matmul parameters, T tokens) + output projection
``2 * V * d`` per loss position + attention ``4 * T^2 * d`` per layer + LoRA ``2 * n_lora * T``; backward the same
again -- input gradients through the frozen weights, none of their weight gradients -- plus the LoRA weight
gradients), times epochs and ``eval_times``; quizzes count 0. ``gflops_wall`` = train_gflop / wall_seconds (the
machine's training rate over the whole run) and ``fraction_of_blas_peak`` its share of ``blas_peak_gflops``: an
mlx fp32 1024^3 matmul timed in this process with all BLAS threads (``blas_peak_gflops_1_thread`` with one).
``gflops_train_per_process`` = train_gflop / the summed training seconds of the rewards (one process's rate while
it trains).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import queue
import resource
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env.articles import Article, load_articles
from seal_env.config import SealConfig, parse_assignments
from seal_env.executors import InProcessExecutor, RewardRequest, blas_threads
from seal_env.executors.child_process import SubprocessExecutor

from benchmarks.batched_rewards import SHARED, SOURCES, PeakRSS, machine_info, published_self_edits
from benchmarks.inner_loop_speed import _model_cfg, matmul_gflops, step_flops
from benchmarks.scaling import copy_self_edit

CONFIGS = ("ours-sequential", "ours-batched", "ours-workers", "torch-1proc", "torch-procs")
OURS = tuple(c for c in CONFIGS if c.startswith("ours-"))
TORCH = tuple(c for c in CONFIGS if c.startswith("torch-"))
WARMUP = "1. A short warm-up line.\n2. Another one."
FIRST_SEED = 100


# ----------------------------------------------------------------------------------------------- the workload
def fixed_self_edits(article: Article, k: int) -> list[str]:
    """``k`` self-edits: the passage's sentences as numbered lines, self-edit ``i`` starting from sentence ``i``."""
    sentences = [line.split(". ", 1)[1] for line in copy_self_edit(article).splitlines()]
    out = []
    for i in range(k):
        start = i % len(sentences)
        rotated = sentences[start:] + sentences[:start]
        out.append("\n".join(f"{j}. {s}" for j, s in enumerate(rotated, 1)))
    return out


def workload(env: Any, passages: int, k: int, source: str) -> tuple[str, list[list[RewardRequest]]]:
    """``(self-edit source, an article's K requests per article)``; source ``auto`` is published if the data is
    there, else fixed."""
    if source == "auto":
        source = "published" if (SHARED / "self_edits").is_dir() else "fixed"
    pairs: list[tuple[Article, list[str]]] = []
    if source == "published":
        if not (SHARED / "self_edits").is_dir():
            raise FileNotFoundError(f"--self-edits published needs {SHARED / 'self_edits'}")
        available = len(load_articles(SHARED / "squad_seal_eval_dev100.json"))
        if passages > available:
            raise ValueError(f"--passages {passages}: the published self-edits cover {available} dev passages")
        for a in range(passages):
            found = published_self_edits(a, k)
            assert found is not None  # the folder is there
            pairs.append(found)
    else:
        if passages > len(env.articles):
            raise ValueError(f"--passages {passages}: the env has {len(env.articles)} articles")
        pairs = [(article, fixed_self_edits(article, k)) for article in env.articles[:passages]]
    groups = [
        [RewardRequest(article, edit, FIRST_SEED + a * k + i) for i, edit in enumerate(edits)]
        for a, (article, edits) in enumerate(pairs)
    ]
    return source, groups


def flat(groups: Sequence[Sequence[RewardRequest]]) -> list[RewardRequest]:
    return [r for group in groups for r in group]


def train_gflop(env: Any, groups: list[list[RewardRequest]]) -> float:
    """Analytic training GFLOP of every request (see the module docstring)."""
    from seal_env.reward.pipeline import prepare

    cfg, learner = env.cfg, env.learner
    shape = _model_cfg(learner)
    total = 0.0
    for r in flat(groups):
        data = prepare(cfg, learner.tokenizer, r.article, r.self_edit).data
        per_epoch = sum(
            step_flops(shape, len(ids) - 1, len(ids) - max(start, 1), learner.n_trainable) for ids, start in data
        )
        total += cfg.eval_times * cfg.epochs * per_epoch
    return total / 1e9


# ---------------------------------------------------------------------------------------------- processes
def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of process ``pid`` in MB, None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat), None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def child_pids() -> list[int]:
    """This process's live children: the processes in /proc whose parent it is (empty without /proc)."""
    me, pids = os.getpid(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone, or not ours to read
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # field 4: the parent's pid
            pids.append(int(entry.name))
    return pids


def children_rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_CHILDREN)


class ChildPeaks:
    """Each child process's VmHWM while the block runs, sampled every 100 ms: ``peaks`` maps pid -> MB."""

    def __enter__(self) -> ChildPeaks:
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for pid in child_pids():
                mb = vm_hwm_mb(pid)
                if mb is not None:
                    self.peaks[pid] = max(self.peaks.get(pid, 0.0), mb)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def in_parallel(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same time, one thread each; their results in order (the first error is raised)."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def pool_evaluate(
    executors: Sequence[Any], groups: Sequence[Sequence[RewardRequest]]
) -> tuple[list[list[tuple[float, dict[str, Any]]]], list[float]]:
    """Evaluate ``groups`` on a pool of executors: a thread per executor takes the next group from a shared queue
    and calls its executor's ``evaluate`` on it, until the queue is empty. Returns each group's results (in the
    order of ``groups``) and each executor's busy seconds. After an error no new group is taken; the first error
    is raised once every thread has stopped."""
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(len(groups)):
        todo.put(i)
    results: list[list[tuple[float, dict[str, Any]]] | None] = [None] * len(groups)
    busy = [0.0] * len(executors)
    errors: list[BaseException] = []

    def work(w: int) -> None:
        while not errors:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                results[i] = executors[w].evaluate(list(groups[i]))
            except BaseException as error:  # noqa: BLE001 - raised below, in the caller's thread
                errors.append(error)
                return
            busy[w] += time.perf_counter() - t0

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(len(executors))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None], busy


# ------------------------------------------------------------------------------------------ configurations
def summarize(
    name: str, wall: float, results: list[tuple[float, dict[str, Any]]], processes: int, threads: int | None
) -> dict[str, Any]:
    """The figures every ours configuration reports, from its results."""
    train = [info["seconds_train"] for _, info in results if "seconds_train" in info]  # timings=False: none
    return {
        "config": name,
        "processes": processes,
        "threads_per_process": threads,
        "wall_seconds": wall,
        "rewards": len(results),
        "rewards_per_hour": len(results) / wall * 3600,
        "reward_values": [reward for reward, _ in results],
        "train_seconds": sum(train) if len(train) == len(results) else None,
    }


def run_sequential(env: Any, groups: list[list[RewardRequest]]) -> dict[str, Any]:
    first = groups[0][0].article
    env.evaluate(first, WARMUP, seed=0)
    cpu0 = time.process_time()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        results = [env.evaluate(r.article, r.self_edit, r.seed) for r in flat(groups)]
        wall = time.perf_counter() - t0
    out = summarize("ours-sequential", wall, results, 1, blas_threads())
    return out | {
        "peak_rss_mb": [rss.peak],
        "peak_rss_method": "this process, RSS sampled every 50 ms",
        "cpu_seconds": time.process_time() - cpu0,
    }


def run_batched(env: Any, groups: list[list[RewardRequest]]) -> dict[str, Any]:
    executor = InProcessExecutor(env=env)  # not closed: that would close the env
    executor.evaluate([RewardRequest(groups[0][0].article, WARMUP, seed=i) for i in range(len(groups[0]))])
    cpu0 = time.process_time()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        results = executor.evaluate(flat(groups))
        wall = time.perf_counter() - t0
    out = summarize("ours-batched", wall, results, 1, blas_threads())
    return out | {
        "peak_rss_mb": [rss.peak],
        "peak_rss_method": "this process, RSS sampled every 50 ms",
        "cpu_seconds": time.process_time() - cpu0,
    }


def run_workers(settings: dict[str, Any], groups: list[list[RewardRequest]], workers: int) -> dict[str, Any]:
    articles = [group[0].article for group in groups]
    warmup = [RewardRequest(articles[0], WARMUP, seed=i) for i in range(len(groups[0]))]
    baselines = [RewardRequest(article, "", 0, adapt=False) for article in articles]
    executors: list[SubprocessExecutor] = []
    lock = threading.Lock()

    def start() -> None:
        executor = SubprocessExecutor(settings, threads=1)
        with lock:
            executors.append(executor)

    try:
        t0 = time.perf_counter()
        in_parallel([start] * workers)
        startup = time.perf_counter() - t0
        in_parallel([partial(ex.evaluate, baselines + warmup) for ex in executors])  # untimed
        pids = [ex.pid for ex in executors]
        cpu0 = [proc_cpu_seconds(pid) if pid else None for pid in pids]
        t0 = time.perf_counter()
        per_group, busy = pool_evaluate(executors, groups)
        wall = time.perf_counter() - t0
        cpu1 = [proc_cpu_seconds(pid) if pid else None for pid in pids]
        peaks = [vm_hwm_mb(pid) if pid else None for pid in pids]
    finally:
        for ex in executors:
            ex.close()
    deltas = [b - a for a, b in zip(cpu0, cpu1, strict=True) if a is not None and b is not None]
    cpu = sum(deltas) if len(deltas) == workers else None
    out = summarize("ours-workers", wall, [r for group in per_group for r in group], workers, 1)
    return out | {
        "startup_seconds": startup,
        "peak_rss_mb": peaks,
        "peak_rss_method": "each worker's VmHWM (/proc), its lifetime peak",
        "cpu_seconds": cpu,
        "busy_seconds": busy,
        "busy_fraction": sum(busy) / (workers * wall),
    }


def torch_jobs(env: Any, groups: list[list[RewardRequest]]) -> list[dict[str, Any]]:
    """One torch_baseline ``rewards`` job per article: a warm-up run, then the article's requests (same token ids)."""
    from seal_env.models import resolve_model_path
    from seal_env.reward.pipeline import prepare

    from benchmarks import torch_baseline

    cfg, tok = env.cfg, env.learner.tokenizer
    jobs = []
    for group in groups:
        article = group[0].article
        jobs.append(
            {
                "kind": "rewards",
                "folder": str(resolve_model_path(cfg.model)),
                "settings": cfg.to_dict(),
                "datas": [prepare(cfg, tok, article, e).data for e in [WARMUP] + [r.self_edit for r in group]],
                "seeds": [0] + [r.seed for r in group],
                "quiz": torch_baseline.quiz_job(tok, article),
            }
        )
    return jobs


def run_torch(name: str, jobs: list[dict[str, Any]], slots: int, threads: int) -> dict[str, Any]:
    """``slots`` threads, each running its jobs (dealt round-robin) in child processes one after another."""
    from benchmarks import torch_baseline

    def slot(mine: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [run for job in mine for run in torch_baseline.run({**job, "threads": threads}, threads)["runs"][1:]]

    slots = min(slots, len(jobs))
    before = children_rusage()
    t0 = time.perf_counter()
    with ChildPeaks() as peaks:
        per_slot = in_parallel([partial(slot, jobs[s::slots]) for s in range(slots)])
    with_start = time.perf_counter() - t0
    after = children_rusage()
    busy = [sum(run["seconds_total"] for run in runs) for runs in per_slot]
    wall = max(busy) if name == "torch-procs" else sum(busy)
    runs = [run for runs in per_slot for run in runs]
    if peaks.peaks:
        rss, method = list(peaks.peaks.values()), "each child's VmHWM (/proc), sampled every 100 ms"
    else:
        rss = [after.ru_maxrss / 1024]
        method = "ru_maxrss of RUSAGE_CHILDREN: the largest child waited for so far, earlier configurations' too"
    out = {
        "config": name,
        "processes": slots,
        "threads_per_process": threads,
        "wall_seconds": wall,
        "wall_seconds_with_start": with_start,
        "rewards": len(runs),
        "rewards_per_hour": len(runs) / wall * 3600,
        "train_seconds": sum(run["seconds_train"] for run in runs),
        "peak_rss_mb": rss,
        "peak_rss_method": method,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }
    if name == "torch-procs":
        out |= {"busy_seconds": busy, "busy_fraction": sum(busy) / (slots * wall)}
    return out


def torch_missing() -> list[str]:
    return [m for m in ("torch", "peft", "transformers") if importlib.util.find_spec(m) is None]


# ------------------------------------------------------------------------------------------------ reporting
def compare(report: dict[str, Any]) -> None:
    """Add the ratios and the reward differences between ours configurations to ``report``."""
    done = {c["config"]: c for c in report["configs"] if "rewards_per_hour" in c}
    torch_best = max((done[c]["rewards_per_hour"] for c in TORCH if c in done), default=None)
    sequential = done.get("ours-sequential", {}).get("rewards_per_hour")
    report["torch_best"] = max((c for c in TORCH if c in done), key=lambda c: done[c]["rewards_per_hour"], default=None)
    for c in done.values():
        c["vs_torch_best"] = c["rewards_per_hour"] / torch_best if torch_best else None
        c["vs_ours_sequential"] = c["rewards_per_hour"] / sequential if sequential else None
        gflop = report["train_gflop"]
        c["gflops_wall"] = gflop / c["wall_seconds"]
        c["fraction_of_blas_peak"] = c["gflops_wall"] / report["blas_peak_gflops"]
        c["gflops_train_per_process"] = gflop / c["train_seconds"] if c.get("train_seconds") else None
    diffs = {
        f"{b} vs {a}": max(abs(x - y) for x, y in zip(done[a]["reward_values"], done[b]["reward_values"], strict=True))
        for a, b in itertools.combinations([c for c in OURS if c in done], 2)
    }
    report["max_abs_reward_difference"] = diffs
    report["max_abs_reward_difference_max"] = max(diffs.values(), default=None)


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Measured on {m['platform']} ({m['cpus']} cores; load average {m['load_average_start'][0]:.1f} before, "
        f"{m['load_average_end'][0]:.1f} after), model `{report['settings']['model']}`, env defaults"
        + (f" with {', '.join(report['set'])}" if report["set"] else "")
        + f" (reward cache off): {report['passages']} passages x {report['k']} {report['self_edits']} self-edits = "
        f"{report['requests']} rewards per configuration, one configuration at a time. Measured BLAS peak (mlx fp32 "
        f"1024^3 matmul): {report['blas_peak_gflops']:.0f} GFLOP/s with {report['blas_threads']} BLAS thread(s), "
        f"{report['blas_peak_gflops_1_thread']:.0f} with 1; training {report['train_gflop']:.0f} GFLOP in all.",
        "",
        "| configuration | processes x threads | wall (s) | rewards / hour | vs torch-best | vs ours-sequential "
        "| peak RSS / process (MB) | CPU s | training GFLOP/s (over wall) | of BLAS peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["configs"]:
        if "rewards_per_hour" not in c:
            lines.append(f"| {c['config']} | {c.get('skipped') or c.get('error')} |" + " |" * 8)
            continue
        rss = "/".join(f"{x:.0f}" for x in c["peak_rss_mb"] if x is not None) or "-"
        lines.append(
            f"| {c['config']} | {c['processes']} x {fmt(c['threads_per_process'], 'd')} | {c['wall_seconds']:.1f} "
            f"| {c['rewards_per_hour']:.0f} | {fmt(c['vs_torch_best'], '.2f')} | {fmt(c['vs_ours_sequential'], '.2f')} "
            f"| {rss} | {fmt(c['cpu_seconds'], '.0f')} | {c['gflops_wall']:.1f} | {c['fraction_of_blas_peak']:.1%} |"
        )
    notes = []
    for c in report["configs"]:
        if "startup_seconds" in c:
            notes.append(f"{c['config']} started its workers (model loads) in {c['startup_seconds']:.1f} s, untimed")
        if "wall_seconds_with_start" in c:
            notes.append(f"{c['config']} took {c['wall_seconds_with_start']:.1f} s with its children's starts")
        if "busy_fraction" in c:
            notes.append(f"{c['config']} kept its processes busy {c['busy_fraction']:.0%} of the wall")
    if report["max_abs_reward_difference_max"] is not None:
        pairs = ", ".join(f"{k}: {v:.1e}" for k, v in report["max_abs_reward_difference"].items())
        notes.append(f"max |reward difference| between ours configurations {pairs}")
    if notes:
        lines += ["", "; ".join(notes) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--passages", type=int, default=3, help="articles (default 3)")
    p.add_argument("--k", type=int, default=5, help="self-edits per article (default 5)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)} (default all)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes of 3 and 5 (default: cores)")
    p.add_argument("--self-edits", default="auto", choices=("auto", "published", "fixed"))
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an environment setting")
    p.add_argument("--json", help="write the figures to this file (after every configuration)")
    p.add_argument("--markdown", help="write the table to this file")
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not configs:
        p.error(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    if args.passages < 1 or args.k < 1 or args.workers < 1:
        p.error("--passages, --k and --workers must be >= 1")
    if args.self_edits != "fixed" and (SHARED / "self_edits").is_dir() and args.k > 5 * len(SOURCES):
        p.error(f"--k {args.k}: the published data has {5 * len(SOURCES)} self-edits per passage")
    try:
        settings: dict[str, Any] = {"model": args.model, "cache": False, "split": "all", **parse_assignments(args.set)}
        cfg = SealConfig.from_kwargs(**settings)
    except (TypeError, ValueError) as error:
        p.error(str(error))
    settings["max_batch_adapters"] = max(cfg.max_batch_adapters, args.k * cfg.eval_times)  # an article: one call

    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    t0 = time.perf_counter()
    env = KnowledgeIncorporationEnv(**settings)
    load = time.perf_counter() - t0
    try:
        source, groups = workload(env, args.passages, args.k, args.self_edits)
    except (FileNotFoundError, ValueError) as error:
        env.close()
        p.error(str(error))
    threads = blas_threads()
    blas_threads(1)
    peak_1 = matmul_gflops(1024, 1024, 1024)
    if threads is not None:
        blas_threads(threads)
    t0 = time.perf_counter()
    for group in groups:
        env.baselines.get(group[0].article)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": env.cfg.to_dict(),
        "set": args.set,
        "self_edits": source,
        "passages": args.passages,
        "k": args.k,
        "workers": args.workers,
        "requests": len(flat(groups)),
        "articles": [group[0].article.title for group in groups],
        "self_edit_chars": [len(r.self_edit) for r in flat(groups)],
        "model_load_seconds": load,
        "baseline_seconds": time.perf_counter() - t0,
        "blas_threads": threads,
        "blas_peak_gflops": matmul_gflops(1024, 1024, 1024),
        "blas_peak_gflops_1_thread": peak_1,
        "train_gflop": train_gflop(env, groups),
        "configs": [],
    }
    print(
        f"{report['requests']} rewards ({args.passages} passages x {args.k} {source} self-edits), "
        f"BLAS peak {report['blas_peak_gflops']:.0f} GFLOP/s ({threads} BLAS threads), {peak_1:.0f} (1 thread)",
        flush=True,
    )
    if {"ours-workers", "torch-procs"} & set(configs) and args.passages % args.workers:
        print(f"note: {args.passages} articles on {args.workers} workers leave some idle at the end", flush=True)
    missing = torch_missing()
    for name in configs:
        print(f"[{name}] ...", flush=True)
        try:
            if name in TORCH and missing:
                row: dict[str, Any] = {"config": name, "skipped": f"{', '.join(missing)} missing (seal-env[torch])"}
            elif name == "ours-sequential":
                row = run_sequential(env, groups)
            elif name == "ours-batched":
                row = run_batched(env, groups)
            elif name == "ours-workers":
                row = run_workers(settings, groups, args.workers)
            else:
                slots, per_slot = (1, os.cpu_count() or 1) if name == "torch-1proc" else (args.workers, 1)
                row = run_torch(name, torch_jobs(env, groups), slots, per_slot)
        except Exception as error:  # recorded; the other configurations still run
            row = {"config": name, "error": f"{type(error).__name__}: {error}"}
        report["configs"].append(row)
        if "rewards_per_hour" in row:
            print(f"[{name}] {row['wall_seconds']:.1f} s, {row['rewards_per_hour']:.0f} rewards/h", flush=True)
        else:
            print(f"[{name}] {row.get('skipped') or row.get('error')}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
    report["machine"]["load_average_end"] = os.getloadavg()
    compare(report)
    text = markdown(report)
    print(text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    env.close()
    return report


if __name__ == "__main__":
    main()
