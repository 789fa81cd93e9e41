"""Rewards per hour through the OpenEnv server (``python -m seal_env.serve``): K concurrent clients per article vs K
sequential steps, and the server's overhead per step over in-process ``evaluate_many``.

    python -m benchmarks.served_rewards --json results/served_rewards.json          # SmolLM2, env defaults, K = 5
    python -m benchmarks.served_rewards --model tiny-random --articles 1 --k 2      # smoke run

The same K self-edits and inner-loop seeds per article are rewarded three ways, in this order, one article after
another (reward cache off everywhere; each article's baseline quiz computed before and counted in none):

* ``inprocess``: one ``env.evaluate_many`` call in this process (no server);
* ``served_concurrent``: K client sessions of one server at once (``reset(article=..., inner_loop_seed=...)`` then
  ``step``), which the server trains together in one ``evaluate_many`` call (its batch window and cap at their
  defaults unless ``--server-arg`` changes them);
* ``served_sequential``: the same K steps through the server one after another (each waits the batch window).

The server is a child process (``--executor inprocess``: the model in the server process) with the same settings;
it and this process compute in turn, never at once. Self-edits are published SEAL self-edits of dev passages
(``../shared/data/self_edits``, as benchmarks.batched_rewards) when present, else sampled from the model with the
``implications`` template. Reported: seconds and rewards per hour of each way, the concurrent/sequential speedup,
the server's overhead per step (served concurrent minus in-process, divided by K) and the largest reward
difference between served and in-process rewards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env.articles import Article
from seal_env.config import parse_assignments
from seal_env.seeding import derive_seed

from benchmarks.batched_rewards import machine_info, published_self_edits


def server_flags(settings: dict[str, Any]) -> list[str]:
    """Environment settings as ``python -m seal_env.serve`` flags."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def sampled(env: Any, n: int, k: int) -> list[tuple[Article, list[str]]]:
    """``k`` self-edits of each of the first ``n`` articles, sampled from the model (implications template)."""
    from agents.policies import PromptPolicy

    policy = PromptPolicy(env.learner.model, env.learner.tokenizer, "implications", max_tokens=256)
    articles = env.articles[:n]
    edits = policy.propose([{"title": a.title, "context": a.context} for a in articles], k=k, seed=0)
    return list(zip(articles, edits, strict=True))


async def served_steps(
    url: str, article: Article, edits: list[str], seeds: list[int], concurrent: bool
) -> list[tuple[float, dict[str, Any]]]:
    """The K steps through the server, at once or one after another: ``[(reward, info)]``."""
    from seal_env.serve.client import SealEnvClient

    async def one(edit: str, seed: int) -> tuple[float, dict[str, Any]]:
        async with SealEnvClient(url) as env:
            await env.reset(article=article.to_dict(), inner_loop_seed=seed)
            result = await env.step(edit)
            return float(result.reward if result.reward is not None else "nan"), result.observation.info

    if concurrent:
        return list(await asyncio.gather(*(one(e, s) for e, s in zip(edits, seeds, strict=True))))
    return [await one(e, s) for e, s in zip(edits, seeds, strict=True)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--k", type=int, default=5, help="self-edits (clients) per article (default 5)")
    p.add_argument("--articles", type=int, default=3, help="articles, one after another (default 3)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an environment setting")
    p.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG", help="one more server argument (--server-arg=--x)"
    )
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {"model": args.model, "cache": False, "split": "all"}
    settings.update(parse_assignments(args.set))

    from seal_env.envs.knowledge import KnowledgeIncorporationEnv
    from seal_env.serve.client import ServerProcess

    env = KnowledgeIncorporationEnv(**settings)
    published = [published_self_edits(i, args.k) for i in range(args.articles)]
    work = [w for w in published if w] if all(published) else sampled(env, args.articles, args.k)
    out: dict[str, Any] = {
        "machine": machine_info(),
        "settings": env.cfg.to_dict(),
        "k": args.k,
        "self_edits": "published" if all(published) else "sampled",
        "server_args": args.server_arg,
        "articles": [],
    }
    env.evaluate(work[0][0], "1. A short warm-up line.\n2. Another one.", seed=0)  # first-call costs out of the way
    server = ServerProcess(
        ["--executor", "inprocess", "--log-level", "warning", *server_flags(settings), *args.server_arg],
        env={"SEAL_ENV_REWARD_CACHE": "off"},
    )
    try:
        for a, (article, edits) in enumerate(work):
            seeds = [derive_seed(0, a, article.id, i) for i in range(args.k)]
            env.baselines.get(article)
            asyncio.run(served_steps(server.url, article, ["1. Warm-up."], [1], concurrent=False))  # its baseline
            t0 = time.perf_counter()
            local = env.evaluate_many(article, edits, seeds)
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            concurrent = asyncio.run(served_steps(server.url, article, edits, seeds, concurrent=True))
            t_concurrent = time.perf_counter() - t0
            t0 = time.perf_counter()
            sequential = asyncio.run(served_steps(server.url, article, edits, seeds, concurrent=False))
            t_sequential = time.perf_counter() - t0
            row = {
                "article": article.title,
                "self_edit_chars": [len(e) for e in edits],
                "inprocess_seconds": t_local,
                "served_concurrent_seconds": t_concurrent,
                "served_sequential_seconds": t_sequential,
                "served_concurrent_batch_adapters": [info.get("batch_adapters") for _, info in concurrent],
                "overhead_seconds_per_step": (t_concurrent - t_local) / args.k,
                "max_abs_reward_difference": max(
                    abs(x[0] - y[0]) for pair in (concurrent, sequential) for x, y in zip(local, pair, strict=True)
                ),
            }
            out["articles"].append(row)
            print(
                f"{article.title[:40]}: in-process evaluate_many {t_local:.1f} s, served K={args.k} at once "
                f"{t_concurrent:.1f} s, one after another {t_sequential:.1f} s, overhead "
                f"{row['overhead_seconds_per_step']:+.3f} s/step, max |reward diff| "
                f"{row['max_abs_reward_difference']:.1e}",
                flush=True,
            )
    finally:
        out["server_exit_code"] = server.stop()
    rows, n = out["articles"], args.k * len(out["articles"])
    for way in ("inprocess", "served_concurrent", "served_sequential"):
        total = sum(r[f"{way}_seconds"] for r in rows)
        out[f"{way}_seconds"] = total
        out[f"rewards_per_hour_{way}"] = 3600 * n / total
    out["speedup_concurrent_over_sequential"] = out["served_sequential_seconds"] / out["served_concurrent_seconds"]
    out["overhead_seconds_per_step"] = statistics.fmean(r["overhead_seconds_per_step"] for r in rows)
    out["overhead_fraction"] = out["served_concurrent_seconds"] / out["inprocess_seconds"] - 1
    out["max_abs_reward_difference"] = max(r["max_abs_reward_difference"] for r in rows)
    print(
        f"rewards/h: served K={args.k} at once {out['rewards_per_hour_served_concurrent']:.0f}, one after another "
        f"{out['rewards_per_hour_served_sequential']:.0f} ({out['speedup_concurrent_over_sequential']:.2f}x), "
        f"in-process evaluate_many {out['rewards_per_hour_inprocess']:.0f}; server overhead "
        f"{out['overhead_seconds_per_step']:+.3f} s/step ({100 * out['overhead_fraction']:+.1f}%)",
        flush=True,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
