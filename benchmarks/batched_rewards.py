"""Rewards per hour: K self-edits of one article evaluated one after another vs in one batched call.

    python -m benchmarks.batched_rewards --json results/batched.json          # K = 1, 2, 5, 8 (~15 min here)
    python -m benchmarks.batched_rewards --ks 5 --no-torch --set epochs=1

At the environment's defaults (reward cache off), for each K: K ``env.evaluate`` calls (sequential) and one
``env.evaluate_many`` call (batched) on the same article, self-edits and seeds, in one run; the article's baseline
quiz is computed before and counted in neither. Self-edits are published SEAL self-edits replayed from
``../shared/data/self_edits`` (Qwen2.5-7B base, GPT-4.1 and SEAL round 2 taken in turn, so K = 8 mixes lengths)
when that folder is present, else sampled from the model with the ``implications`` template. Also: the same K = 5
with PyTorch + PEFT one after another (benchmarks.torch_baseline, a child process), peak RSS of each phase, and the
largest reward difference between the two paths. The JSON holds ``speedup`` per K.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import _blas
from seal_env.articles import Article, load_articles  # noqa: E402
from seal_env.config import parse_assignments

import mlx.core as mx  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ("qwen2.5-7b_base_dev100.json", "gpt-4.1_dev100.json", "seal_round2_dev100.json")


def machine_info() -> dict[str, Any]:
    """The platform, cores, Python and mlx versions and the load average now, for a benchmark's JSON."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "mlx": mx.__version__,
        "blas": _blas.loaded_path,
        "blas_config": _blas.config(),
        "blas_kernels": _blas.core_name(),
        "openblas_env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
        "load_average_start": os.getloadavg(),
    }


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


class PeakRSS:
    """The largest RSS seen while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def published_self_edits(article_index: int, k: int) -> tuple[Article, list[str]] | None:
    """Dev passage ``article_index`` and ``k`` of its published self-edits (sources in turn), if the data is there."""
    if not (SHARED / "self_edits").is_dir():
        return None
    article = load_articles(SHARED / "squad_seal_eval_dev100.json")[article_index]
    per_source = []
    for name in SOURCES:
        entries = json.loads((SHARED / "self_edits" / name).read_text(encoding="utf-8"))
        match = next(e for e in entries if " ".join(e["context"].split()) == " ".join(article.context.split()))
        per_source.append(match["completions"])
    edits = [per_source[i % len(SOURCES)][i // len(SOURCES)] for i in range(k)]
    return article, edits


def sampled_self_edits(env: Any, k: int) -> tuple[Article, list[str]]:
    from agents.policies import PromptPolicy

    article = env.articles[0]
    policy = PromptPolicy(env.learner.model, env.learner.tokenizer, "implications", max_tokens=256)
    return article, policy.propose([{"title": article.title, "context": article.context}], k=k, seed=0)[0]


def torch_rewards(env: Any, article: Article, edits: list[str], seeds: list[int], threads: int) -> dict[str, Any]:
    """The same rewards one after another with PyTorch + PEFT (child process)."""
    from seal_env.models import resolve_model_path
    from seal_env.reward.pipeline import prepare

    from benchmarks import torch_baseline

    cfg, tok = env.cfg, env.learner.tokenizer
    job = {
        "kind": "rewards",
        "folder": str(resolve_model_path(cfg.model)),
        "settings": cfg.to_dict(),
        "threads": threads,
        "datas": [prepare(cfg, tok, article, e).data for e in edits],
        "seeds": seeds,
        "quiz": torch_baseline.quiz_job(tok, article),
    }
    t0 = time.perf_counter()
    out = torch_baseline.run(job, threads)
    out["seconds"] = sum(r["seconds_total"] for r in out["runs"])
    out["seconds_with_start"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ks", default="1,2,5,8", help="numbers of self-edits of one article (default 1,2,5,8)")
    p.add_argument("--article-index", type=int, default=0, help="dev passage (with ../shared/data)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an environment setting")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch + PEFT comparison")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    ks = [int(x) for x in args.ks.split(",")]
    settings: dict[str, Any] = {"model": args.model, "cache": False, "split": "all"}
    settings.update(parse_assignments(args.set))
    settings["max_batch_adapters"] = max(settings.get("max_batch_adapters", 8), max(ks))

    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    env = KnowledgeIncorporationEnv(**settings)
    found = published_self_edits(args.article_index, max(ks))
    article, edits = found if found else sampled_self_edits(env, max(ks))
    out: dict[str, Any] = {
        "machine": machine_info(),
        "settings": env.cfg.to_dict(),
        "self_edits": "published" if found else "sampled",
        "article": article.title,
        "self_edit_chars": [len(e) for e in edits],
        "k": {},
    }
    env.baselines.get(article)  # computed once, before both paths
    env.evaluate(article, "1. A short warm-up line.\n2. Another one.", seed=0)  # first-call costs out of the way
    for k in ks:
        seeds = list(range(100, 100 + k))
        with PeakRSS() as rss_seq:
            t0 = time.perf_counter()
            seq = [env.evaluate(article, e, s) for e, s in zip(edits[:k], seeds, strict=True)]
            t_seq = time.perf_counter() - t0
        with PeakRSS() as rss_bat:
            t0 = time.perf_counter()
            bat = env.evaluate_many(article, edits[:k], seeds)
            t_bat = time.perf_counter() - t0
        row = {
            "sequential_seconds": t_seq,
            "batched_seconds": t_bat,
            "speedup": t_seq / t_bat,
            "rewards_per_hour_sequential": 3600 * k / t_seq,
            "rewards_per_hour_batched": 3600 * k / t_bat,
            "peak_rss_mb_sequential": rss_seq.peak,
            "peak_rss_mb_batched": rss_bat.peak,
            "max_abs_reward_difference": max(abs(a[0] - b[0]) for a, b in zip(seq, bat, strict=True)),
            "train_steps": [info["train_steps"] for _, info in bat],
            "seconds_train_sequential": sum(i["seconds_train"] for _, i in seq),
            "seconds_train_batched": sum(i["seconds_train"] for _, i in bat),
            "seconds_eval_sequential": sum(i["seconds_eval"] for _, i in seq),
            "seconds_eval_batched": sum(i["seconds_eval"] for _, i in bat),
        }
        out["k"][str(k)] = row
        print(
            f"K={k}: sequential {t_seq:.1f} s, batched {t_bat:.1f} s, speedup {row['speedup']:.2f}x, "
            f"{row['rewards_per_hour_batched']:.0f} rewards/h, peak RSS {rss_bat.peak:.0f} MB, "
            f"max |reward diff| {row['max_abs_reward_difference']:.1e}",
            flush=True,
        )
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    if not args.no_torch and 5 in ks:
        try:
            t = torch_rewards(env, article, edits[:5], list(range(100, 105)), os.cpu_count() or 1)
            out["torch_k5"] = {
                "seconds": t["seconds"],
                "torch": t["torch"],
                "runs": t["runs"],
                "batched_speedup_over_torch": t["seconds"] / out["k"]["5"]["batched_seconds"],
                "sequential_speedup_over_torch": t["seconds"] / out["k"]["5"]["sequential_seconds"],
            }
            print(
                f"PyTorch + PEFT, K=5 one after another: {t['seconds']:.1f} s; batched is "
                f"{out['torch_k5']['batched_speedup_over_torch']:.2f}x faster",
                flush=True,
            )
        except Exception as error:  # no torch / peft, or the child failed
            out["torch_k5"] = {"skipped": f"{type(error).__name__}: {error} (pip install 'seal-env[torch]')"}
            print(f"PyTorch + PEFT skipped: {out['torch_k5']['skipped']}", flush=True)
    out["machine"]["load_average_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
