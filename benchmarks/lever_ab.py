"""One speed lever of the inner loop, off against on, on whole batched rewards.

    python -m benchmarks.lever_ab --lever fixed_shapes --passages 2 --json results/lever_fixed_shapes.json

Two environments at the defaults (reward cache off) in this process, one with the Learner's lever ``--lever`` off
and one with it on (the other levers at their defaults); each keeps its own compiled traces across rewards, as a
reward worker does. For each dev passage (``--passages``; its ``--k`` published SEAL self-edits, as in
``benchmarks.batched_rewards``) both compute the article's baseline and a warm-up reward untimed, then
``env.evaluate_many`` of the same self-edits and seeds is timed ``--repeats`` times each, off and on alternating
(the order swapped every repeat, so that drift in the machine's speed falls on both). Reports seconds and rewards per
hour of each, their ratio, training seconds, and the largest reward difference between off and on.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env.config import parse_assignments

from benchmarks.batched_rewards import machine_info, published_self_edits

LEVERS = ("fast_kernels", "head_on_positions", "compile", "fixed_shapes")


def set_lever(env: Any, lever: str, on: bool) -> None:
    """Switch one of the Learner's speed levers of ``env``, keeping the others as they are."""
    learner = env.learner
    levers = {name: getattr(learner, name) for name in LEVERS}
    levers[lever] = on
    learner.set_levers(**levers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lever", required=True, choices=LEVERS)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--passages", type=int, default=2, help="dev passages 0..N-1 (default 2)")
    p.add_argument("--k", type=int, default=5, help="published self-edits per passage (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls of each setting per passage (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an environment setting")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {"model": args.model, "cache": False, "split": "all"}
    settings.update(parse_assignments(args.set))

    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    envs = {}
    for on in (False, True):
        envs[on] = KnowledgeIncorporationEnv(**settings)
        set_lever(envs[on], args.lever, on)
    out: dict[str, Any] = {"machine": machine_info(), "lever": args.lever, "settings": envs[False].cfg.to_dict()}
    rows: list[dict[str, Any]] = []
    for index in range(args.passages):
        found = published_self_edits(index, args.k)
        if found is None:
            raise SystemExit("needs the published self-edits in ../shared/data/self_edits")
        article, edits = found
        seeds = list(range(100, 100 + args.k))
        for env in envs.values():
            env.baselines.get(article)
            env.evaluate(article, "1. A short warm-up line.\n2. Another one.", seed=0)
        rewards: dict[bool, list[float]] = {}
        for repeat in range(args.repeats):
            for on in (False, True) if repeat % 2 == 0 else (True, False):
                t0 = time.perf_counter()
                result = envs[on].evaluate_many(article, edits, seeds)
                seconds = time.perf_counter() - t0
                rewards[on] = [r for r, _ in result]
                row = {
                    "passage": index,
                    "repeat": repeat,
                    "on": on,
                    "seconds": seconds,
                    "seconds_train": sum(info["seconds_train"] for _, info in result),
                }
                rows.append(row)
                print(f"passage {index} repeat {repeat} lever {'on ' if on else 'off'}: {seconds:.1f} s", flush=True)
        out.setdefault("max_abs_reward_difference", 0.0)
        diff = max(abs(a - b) for a, b in zip(rewards[False], rewards[True], strict=True))
        out["max_abs_reward_difference"] = max(out["max_abs_reward_difference"], diff)
    out["rows"] = rows
    for on in (False, True):
        mine = [r for r in rows if r["on"] == on]
        seconds = sum(r["seconds"] for r in mine)
        out["on" if on else "off"] = {
            "seconds": seconds,
            "seconds_train": sum(r["seconds_train"] for r in mine),
            "rewards_per_hour": 3600 * args.k * len(mine) / seconds,
        }
    out["speedup"] = out["off"]["seconds"] / out["on"]["seconds"]
    out["machine"]["load_average_end"] = os.getloadavg()
    print(
        f"{args.lever}: off {out['off']['seconds']:.1f} s ({out['off']['rewards_per_hour']:.0f} rewards/h), "
        f"on {out['on']['seconds']:.1f} s ({out['on']['rewards_per_hour']:.0f} rewards/h): {out['speedup']:.3f}x; "
        f"max |reward difference| {out['max_abs_reward_difference']:.1e}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
