"""One reward and one batched reward on a GPU (mlx[cuda] or Metal) at the device's dtype: seconds and peak memory.

    python -m benchmarks.gpu_check                              # SmolLM2-135M, the env defaults
    python -m benchmarks.gpu_check --model Qwen/Qwen2.5-0.5B-Instruct --k 5 --json gpu.json
    python -m benchmarks.gpu_check --dtype float32 --quantize 4  # any setting: --set NAME=VALUE

Runs on a CPU too (then in float32); on a GPU ``dtype="auto"`` computes in the checkpoint's half dtype. Prints the
device, the compute dtype, seconds for the article's baseline quiz, one reward (``evaluate``), K self-edits in one
batched call (``evaluate_many``) and the same K one after another, and mlx's peak memory after each phase.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx on Linux CPUs)
from seal_env.articles import load_articles
from seal_env.config import parse_assignments

import mlx.core as mx

EDITS = [
    "1. {title} is the subject of the passage.\n2. The passage describes {title} in detail.",
    "{title}: the key facts of the passage, restated as short sentences.",
    "1. One implication of the passage about {title}.\n2. A second one.\n3. A third one.",
    "Questions about {title} can be answered from what the passage says.",
    "1. {title} matters.\n2. It is described in the passage.",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantize", type=int, default=None)
    p.add_argument("--k", type=int, default=5, help="self-edits in the batched call (default 5)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="an environment setting")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    settings: dict[str, Any] = {
        "model": args.model,
        "dtype": args.dtype,
        "quantize": args.quantize,
        "cache": False,
        "split": "all",
        "max_batch_adapters": max(8, args.k),
    }
    settings.update(parse_assignments(args.set))

    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    t0 = time.perf_counter()
    env = KnowledgeIncorporationEnv(**settings)
    out: dict[str, Any] = {
        "device": str(mx.default_device()),
        "platform": platform.platform(),
        "mlx": mx.__version__,
        "dtype": str(env.learner.dtype),
        "settings": env.cfg.to_dict(),
        "load_seconds": time.perf_counter() - t0,
    }
    article = load_articles("bundled")[0]
    edits = [EDITS[i % len(EDITS)].format(title=article.title) for i in range(args.k)]

    def phase(name: str, fn: Any) -> None:
        mx.reset_peak_memory()
        t = time.perf_counter()
        fn()
        out[f"{name}_seconds"] = time.perf_counter() - t
        out[f"{name}_peak_memory_gb"] = mx.get_peak_memory() / 2**30
        print(f"{name}: {out[f'{name}_seconds']:.2f} s, peak memory {out[f'{name}_peak_memory_gb']:.2f} GB", flush=True)

    print(f"device {out['device']}, dtype {out['dtype']}, model {args.model}", flush=True)
    phase("baseline", lambda: env.baselines.get(article))
    phase("one_reward", lambda: env.evaluate(article, edits[0], seed=0))
    phase(f"batched_{args.k}", lambda: env.evaluate_many(article, edits, list(range(args.k))))
    phase(f"sequential_{args.k}", lambda: [env.evaluate(article, e, s) for s, e in enumerate(edits)])
    out["batched_speedup"] = out[f"sequential_{args.k}_seconds"] / out[f"batched_{args.k}_seconds"]
    print(f"batched speed-up at K={args.k}: {out['batched_speedup']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
