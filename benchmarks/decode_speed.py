"""Decoding steps per second against the memory-bandwidth bound, for greedy answers and sampled self-edits.

    python -m benchmarks.decode_speed --json results/decode.json          # SmolLM2-135M, batch 1, 4, 16, 64
    python -m benchmarks.decode_speed --model tiny-random --batch-sizes 1,2 --steps 4

A decoding step reads every weight once, so it cannot be faster than ``weight bytes / memory bandwidth``. This
measures, in one run: the bandwidth (a large ``memcpy``: bytes read + bytes written per second), the weight bytes of
the model, and for each batch size the time of one step, for two decoding paths measured in turn (``--repeats``
rounds, each path once per round; the medians are reported, so that both see the same machine):

* **fast** (what seal-env runs): :func:`seal_env.models.kernels.use_fast_decoding` on, and one-row products through
  ``cblas_sgemv`` where :mod:`seal_env._blas` could build its one-row ``cblas_sgemm``;
* **stock**: mlx-lm's modules and mlx's ``cblas_sgemm`` for every product (seal-env without its decoding fast path);

of

* **greedy**: :func:`seal_env.learner.decode.greedy_continue` (the quiz's path) after one prefill;
* **sampled**: mlx-lm's ``BatchGenerator`` with one seeded sampler per row (:class:`agents.policies.PromptPolicy`'s
  path: temperature 1, full nucleus), after its prefill;
* **matmuls only**: the step's weight products alone as the fast path computes them (every 2-D weight times
  ``batch`` rows, one evaluation), so that ``step - matmuls`` is the time of everything else (norms, rotary
  embeddings, attention, sampling, Python); at batch 1 also the same products through the BLAS's matrix-vector
  routine called directly on the weights (``cblas_sgemv`` from Python, no mlx);
* **sampling**: the sampling part of a ``BatchGenerator`` step alone (log-probabilities over the vocabulary, one
  seeded sampler per row) on random logits.

``fraction_of_bound`` = bound seconds / step seconds (greedy, fast path; ``sampled_fraction_of_bound`` for
sampling) per batch size, ``speedup_vs_batch_1`` compares tokens per second, and ``stock`` holds the stock path's
figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, cast

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import _blas
from seal_env.articles import load_articles
from seal_env.learner.decode import greedy_continue, prefill
from seal_env.models.kernels import use_fast_decoding

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import BatchGenerator

from agents.policies import seeded_sampler


def copy_bandwidth(nbytes: int, repeats: int = 3) -> float:
    """Bytes read + bytes written per second by ``numpy.copyto`` of ``nbytes`` (best of ``repeats``)."""
    src = np.ones(max(nbytes, 1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_seconds(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2 * src.nbytes / best


def _seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parameters(model: Any) -> list[mx.array]:
    """Every parameter array of ``model``."""
    return [cast(mx.array, v) for _, v in cast(list[tuple[str, Any]], tree_flatten(model.parameters()))]


def weight_bytes(model: Any) -> int:
    """Bytes of all parameters: what one decoding step reads (a tied embedding is the output projection)."""
    return sum(v.nbytes for v in parameters(model))


def prompts_for(tokenizer: Any, batch: int, length: int) -> list[list[int]]:
    """``batch`` prompts of exactly ``length`` tokens, each from a different bundled article (cycled)."""
    articles = load_articles("bundled")
    out = []
    for i in range(batch):
        a = articles[i % len(articles)]
        ids: list[int] = []
        while len(ids) < length:
            ids += tokenizer.encode(f"{a.title}\n{a.context}\n", add_special_tokens=False)
        out.append(ids[:length])
    return out


def greedy_step_seconds(model: Any, prompts: list[list[int]], steps: int) -> float:
    """Seconds per model call of :func:`greedy_continue` (no stop token: every row runs ``steps`` calls)."""
    cache, last = prefill(model, prompts, steps + 1)
    mx.eval(last, [c.keys for c in cache], [c.values for c in cache])
    seconds = _seconds(lambda: greedy_continue(model, cache, last, steps + 1, ()))
    return seconds / steps


def sampled_step_seconds(model: Any, prompts: list[list[int]], steps: int, seed: int = 0) -> float:
    """Seconds per step of mlx-lm's ``BatchGenerator`` with one seeded sampler per row, prefill excluded."""
    gen = BatchGenerator(model, stop_tokens=[], completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    samplers = [seeded_sampler(seed + i, 1.0, 1.0) for i in range(len(prompts))]
    try:
        gen.insert(prompts, [steps + 2] * len(prompts), samplers=samplers)
        gen.next_generated()  # the prefill and the first token
        gen.next_generated()  # the first step (its graph was built during the prefill)
        start = time.perf_counter()
        for _ in range(steps):
            gen.next_generated()
        return (time.perf_counter() - start) / steps
    finally:
        gen.close()


def use_path(model: Any, fast: bool) -> None:
    """Decode through the fast path (``True``) or the stock one (``False``), in this process."""
    use_fast_decoding(model, fast)
    if _blas.gemv_library is not None:
        ctypes.c_int.in_dll(_blas.gemv_library, "seal_gemv_on").value = int(fast)


def matmul_seconds(model: Any, batch: int, repeats: int = 3) -> float:
    """Seconds for every 2-D weight times ``batch`` rows, in one evaluation (best of ``repeats``)."""
    weights = [v for v in parameters(model) if v.ndim == 2]
    rows = {w.shape[1]: mx.ones((batch, w.shape[1]), dtype=w.dtype) for w in weights}
    mx.eval(list(rows.values()))

    def products() -> None:
        mx.eval([rows[w.shape[1]] @ w.T for w in weights])

    products()
    return min(_seconds(products) for _ in range(repeats))


def sampling_seconds(batch: int, vocab: int, repeats: int = 3) -> float:
    """Seconds of the sampling part of a ``BatchGenerator`` step on random logits: the normalisation to
    log-probabilities and one seeded sampler per row (best of ``repeats``)."""
    logits = mx.random.normal((batch, vocab), key=mx.random.key(0))
    samplers = [seeded_sampler(i, 1.0, 1.0) for i in range(batch)]
    mx.eval(logits)

    def sample() -> None:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        mx.eval(mx.concatenate([s(logprobs[e : e + 1]) for e, s in enumerate(samplers)], axis=0))

    sample()
    return min(_seconds(sample) for _ in range(repeats))


def gemv_seconds(model: Any, repeats: int = 3) -> float | None:
    """Seconds for every 2-D fp32 weight times one row through OpenBLAS's ``cblas_sgemv`` (best of ``repeats``);
    None without a loaded OpenBLAS or with other weight dtypes."""
    gemv = _blas.function("cblas_sgemv")
    weights = [np.asarray(v) for v in parameters(model) if v.ndim == 2]
    if gemv is None or any(w.dtype != np.float32 for w in weights):
        return None
    ptr, one, zero = ctypes.c_void_p, ctypes.c_float(1.0), ctypes.c_float(0.0)
    xs = {w.shape[1]: np.ones(w.shape[1], np.float32) for w in weights}
    ys = [np.empty(w.shape[0], np.float32) for w in weights]

    def products() -> None:
        for w, y in zip(weights, ys, strict=True):
            n, k = w.shape  # row-major, no transpose: y = w @ x
            gemv(101, 111, n, k, one, ptr(w.ctypes.data), k, ptr(xs[k].ctypes.data), 1, zero, ptr(y.ctypes.data), 1)

    products()
    return min(_seconds(products) for _ in range(repeats))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a seal_env.models.load_model spec")
    parser.add_argument("--batch-sizes", default="1,4,16,64", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=16, help="timed decoding steps per measurement")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="tokens of each prompt (the KV cache)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (fast, stock) measurements per batch size")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if args.steps < 1 or args.prompt_tokens < 1 or args.repeats < 1 or any(b < 1 for b in batches):
        parser.error("--steps, --prompt-tokens, --repeats and every batch size must be >= 1")

    from seal_env.models import load_model

    model, tokenizer = load_model(args.model)
    nbytes = weight_bytes(model)
    vocab = int(model(mx.array([[0]])).shape[-1])
    bandwidth = copy_bandwidth(nbytes)
    bound = nbytes / bandwidth
    print(
        f"{args.model}: {nbytes / 1e6:.0f} MB of weights; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
        f"bound {bound * 1e3:.1f} ms a step ({1 / bound:.1f} steps/s)"
    )
    rows: dict[str, dict[str, float]] = {}
    stock: dict[str, dict[str, float]] = {}
    for b in batches:
        prompts = prompts_for(tokenizer, b, args.prompt_tokens)
        times: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
        for fast in (True, False):  # warm-up: mx.compile's first traces and kernel builds are not timed
            use_path(model, fast)
            greedy_step_seconds(model, prompts, 1)
            sampled_step_seconds(model, prompts, 1)
        for _ in range(args.repeats):
            for fast in (True, False):
                use_path(model, fast)
                times[fast].setdefault("greedy", []).append(greedy_step_seconds(model, prompts, args.steps))
                times[fast].setdefault("sampled", []).append(sampled_step_seconds(model, prompts, args.steps))
        use_path(model, True)
        matmuls = matmul_seconds(model, b)
        sampling = sampling_seconds(b, vocab)
        for fast, table in ((True, rows), (False, stock)):
            greedy, sampled = (float(np.median(times[fast][k])) for k in ("greedy", "sampled"))
            table[str(b)] = {
                "greedy_step_ms": greedy * 1e3,
                "greedy_step_ms_each": [t * 1e3 for t in times[fast]["greedy"]],
                "greedy_tokens_per_s": b / greedy,
                "fraction_of_bound": bound / greedy,
                "sampled_step_ms": sampled * 1e3,
                "sampled_step_ms_each": [t * 1e3 for t in times[fast]["sampled"]],
                "sampled_tokens_per_s": b / sampled,
                "sampled_fraction_of_bound": bound / sampled,
            }
        rows[str(b)].update(
            matmuls_ms=matmuls * 1e3,
            rest_of_greedy_step_ms=rows[str(b)]["greedy_step_ms"] - matmuls * 1e3,
            sampling_ms=sampling * 1e3,
        )
        for name, r in (("fast", rows[str(b)]), ("stock", stock[str(b)])):
            print(
                f"batch {b:3d} {name:5s}: greedy {r['greedy_step_ms']:7.1f} ms ({r['greedy_tokens_per_s']:6.1f} tok/s, "
                f"{r['fraction_of_bound']:.2f} of bound) | sampled {r['sampled_step_ms']:7.1f} ms "
                f"({r['sampled_tokens_per_s']:6.1f} tok/s)",
                flush=True,
            )
        print(f"batch {b:3d}: matmuls {matmuls * 1e3:6.1f} ms; sampling {sampling * 1e3:5.1f} ms", flush=True)
    gemv = gemv_seconds(model)
    if gemv is not None:
        print(f"batch   1 matmuls through cblas_sgemv: {gemv * 1e3:.1f} ms")
    for table in (rows, stock):
        base = table.get("1")
        if base is not None:
            for r in table.values():
                r["greedy_speedup_vs_batch_1"] = r["greedy_tokens_per_s"] / base["greedy_tokens_per_s"]
                r["sampled_speedup_vs_batch_1"] = r["sampled_tokens_per_s"] / base["sampled_tokens_per_s"]
    out = {
        "model": args.model,
        "weight_bytes": nbytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "bound_ms": bound * 1e3,
        "bound_steps_per_s": 1 / bound,
        "steps": args.steps,
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "batch": rows,
        "fraction_of_bound": {b: r["fraction_of_bound"] for b, r in rows.items()},
        "stock": {"batch": stock, "fraction_of_bound": {b: r["fraction_of_bound"] for b, r in stock.items()}},
        "matmuls_as_gemv_ms_batch_1": None if gemv is None else gemv * 1e3,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "blas": _blas.loaded_path,
            "one_row_sgemv": _blas.gemv_library is not None,
            "mlx": getattr(mx, "__version__", None),
            "load_average_end": os.getloadavg(),
        },
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
