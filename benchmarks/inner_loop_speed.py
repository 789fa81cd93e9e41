"""Inner-loop speed benchmark: matmul ceiling, training-step efficiency, seconds per reward, memory, PyTorch+PEFT.

    python -m benchmarks.inner_loop_speed                       # a, b, c, e (a few minutes)
    python -m benchmarks.inner_loop_speed --soak 100 --json out.json
    python -m benchmarks.inner_loop_speed --levers --no-torch   # each speed lever on/off, in one run

Figures, all measured in one process (timings on a shared machine are noisy: compare ratios within a run):

(a) fp32 matmul GFLOP/s through mlx (the machine's ceiling; a 2048^3 product and the step's own 140x576x1536).
(b) the LoRA training step's achieved FLOP/s and its fraction of (a). FLOPs are counted analytically for the work
    that is needed: forward ``2 * N * T`` (N = transformer matmul parameters, T tokens) + the output projection
    ``2 * V * d`` per loss position + attention ``4 * T^2 * d`` per layer + LoRA; backward the same again (input
    gradients through the frozen weights) plus the LoRA weight gradients.
(c) seconds per reward at the standard setting (SmolLM2-135M, env defaults = SEAL's LoRA r=32/alpha=64 on q,v,
    but SEAL's 10 epochs (the env default is 3), batch 1, 5 training sequences of ~140 tokens, 5 questions, answers
    up to 32 tokens), split into
    baseline (first reward of an article only), reset, train and eval.
(d) peak RSS, and with ``--soak N`` the RSS after each of N cheaper rewards (1 epoch, new sequence lengths every
    reward) and its slope.
(e) the same inner loop with PyTorch + PEFT on CPU (benchmarks.torch_baseline: same weights, LoRA, optimizer,
    schedule, data and questions), timed in the same run in a child process: the speed ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from typing import Any

import seal_env  # noqa: F401  (OpenBLAS before mlx)
from seal_env import _blas
from seal_env.articles import Article, Question, load_articles  # noqa: E402
from seal_env.config import SEAL_PAPER_SETTINGS, SealConfig  # noqa: E402

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

SEQ_TOKENS = 140
#: The benchmark's standard setting trains SEAL's 10 epochs (the env default is 3).
STANDARD_EPOCHS = SEAL_PAPER_SETTINGS["epochs"]
PLAIN = dict(fast_kernels=False, head_on_positions=False, compile=False)
FAST = dict(fast_kernels=True, head_on_positions=True, compile=True)
N_SEQUENCES = 5
N_QUESTIONS = 5


# ------------------------------------------------------------------------------------------------------- helpers
def rss_mb() -> float:
    """Current resident set size (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def set_blas_threads(n: int) -> None:
    """Set OpenBLAS's thread count at run time (the library loaded by seal_env)."""
    set_threads = _blas.function("openblas_set_num_threads")
    if set_threads is not None:
        set_threads(int(n))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(m: int, k: int, n: int, reps: int = 7) -> float:
    a, b = mx.random.normal((m, k)), mx.random.normal((n, k))
    mx.eval(a, b)
    for _ in range(2):
        mx.eval(a @ b.T)
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval(a @ b.T)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def step_flops(model_cfg: dict[str, Any], tokens: int, loss_positions: int, n_lora: int) -> float:
    """Analytic FLOPs of one training step (forward + backward) on one sequence (see module docstring)."""
    d, f, layers = model_cfg["hidden_size"], model_cfg["intermediate_size"], model_cfg["num_hidden_layers"]
    hd = model_cfg.get("head_dim") or d // model_cfg["num_attention_heads"]
    q_out, kv_out = model_cfg["num_attention_heads"] * hd, model_cfg["num_key_value_heads"] * hd
    per_layer = d * q_out + 2 * d * kv_out + q_out * d + 3 * d * f
    body = 2 * per_layer * layers * tokens + 2 * 2 * tokens * tokens * q_out * layers
    head = 2 * model_cfg["vocab_size"] * d * loss_positions
    lora = 2 * n_lora * tokens
    return 2 * (body + head + lora) + lora  # backward: input grads (same again) + LoRA weight grads


def benchmark_data(tokenizer: Any, seq_tokens: int, n_seqs: int, seed: int = 0) -> tuple[Article, list[str]]:
    """An article (context cut to ~seq_tokens, N_QUESTIONS questions) and a self-edit of n_seqs - 1 lines of
    ~seq_tokens tokens each (with the passage: n_seqs training sequences), from the bundled articles."""
    arts = load_articles("bundled")
    base = arts[seed % len(arts)]
    title_toks = len(tokenizer.encode(base.title + "\n"))

    def cut(text: str, n: int) -> str:
        return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)[:n]).strip()

    budget = seq_tokens - title_toks - 1  # title prefix and end-of-sequence token
    context = cut(base.context, budget)
    rng = np.random.default_rng(seed)
    others = [a for a in arts if a is not base]
    lines = []
    for i in range(n_seqs - 1):
        a, b = others[int(rng.integers(len(others)))], others[int(rng.integers(len(others)))]
        lines.append(f"{i + 1}. " + cut(a.context.replace("\n", " ") + " " + b.context.replace("\n", " "), budget - 3))
    article = Article(base.title, context, tuple(Question(q.question, q.answer) for q in base.questions[:N_QUESTIONS]))
    return article, lines


#: A reward's info fields that the speed figures report (its phases' seconds and its size).
REWARD_FIELDS = (
    "seconds_baseline",
    "seconds_reset",
    "seconds_train",
    "seconds_eval",
    "seconds_total",
    "train_steps",
    "train_tokens",
    "n_sequences",
)


def make_env(**settings: Any) -> Any:
    from seal_env.envs.knowledge import KnowledgeIncorporationEnv

    return KnowledgeIncorporationEnv(split="all", **settings)


# ---------------------------------------------------------------------------------------------------- sections
def section_matmul() -> dict[str, float]:
    return {"square_2048": matmul_gflops(2048, 2048, 2048), "step_140x576x1536": matmul_gflops(140, 576, 1536)}


def section_reward(env: Any, rewards: int) -> dict[str, Any]:
    """Rewards at the standard setting; the first one includes the article's baseline quiz."""
    article, _ = benchmark_data(env.learner.tokenizer, SEQ_TOKENS, N_SEQUENCES)
    runs = []
    for r in range(rewards):
        _, lines = benchmark_data(env.learner.tokenizer, SEQ_TOKENS, N_SEQUENCES, seed=r + 1)
        _, info = env.evaluate(article, "\n".join(lines), seed=r)
        runs.append({k: info[k] for k in (*REWARD_FIELDS, "reward")})
    steady = runs[1:] or runs
    mean = {k: float(np.mean([r[k] for r in steady])) for k in runs[0] if k.startswith("seconds")}
    return {
        "runs": runs,
        "first_reward_seconds": runs[0]["seconds_total"],
        "steady": mean,
        "tokens_per_sequence": runs[0]["train_tokens"] / runs[0]["n_sequences"],
    }


def section_step(env: Any, reps: int = 2) -> dict[str, Any]:
    """Steady-state training throughput (traces already compiled) on the standard data."""
    learner = env.learner
    article, lines = benchmark_data(learner.tokenizer, SEQ_TOKENS, N_SEQUENCES, seed=1)
    from seal_env.reward.sequences import build_sequences, tokenize_sequences

    cfg = env.cfg
    seqs, _ = build_sequences("\n".join(lines), article.title, article.context, split=cfg.split_mode)
    data, _ = tokenize_sequences(seqs, learner.tokenizer, loss_on=cfg.loss_on)
    return _step_throughput(learner, data, reps)


def _step_throughput(learner: Any, data: list, reps: int = 2, epochs: int = 2) -> dict[str, Any]:
    cfg = learner.cfg
    flops = sum(
        step_flops(_model_cfg(learner), len(ids) - 1, len(ids) - max(start, 1), learner.n_trainable)
        for ids, start in data
    )
    saved = learner.cfg
    learner.cfg = dataclasses.replace(cfg, epochs=epochs)
    try:
        learner.reset([0])
        learner.train([data], [0])  # traces
        best = best_cpu = math.inf
        for _ in range(reps):
            learner.reset([0])
            cpu = time.process_time()
            best = min(best, learner.train([data], [0])[0]["train_seconds"] / (epochs * len(data)))
            best_cpu = min(best_cpu, (time.process_time() - cpu) / (epochs * len(data)))
    finally:
        learner.cfg = saved
    per_step_flops = flops / len(data)
    return {
        "seconds_per_step": best,
        "cpu_seconds_per_step": best_cpu,
        "gflop_per_step": per_step_flops / 1e9,
        "gflops": per_step_flops / best / 1e9,
    }


def _model_cfg(learner: Any) -> dict[str, Any]:
    args = learner.model.args
    return {
        k: getattr(args, k)
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
        )
    } | {"head_dim": getattr(args, "head_dim", None)}


def section_levers(env: Any, rewards: bool = True) -> dict[str, Any]:
    """Training-step throughput with each lever switched on in turn (same data, same process)."""
    learner = env.learner
    article, lines = benchmark_data(learner.tokenizer, SEQ_TOKENS, N_SEQUENCES, seed=1)
    from seal_env.reward.sequences import build_sequences, tokenize_sequences

    seqs, _ = build_sequences("\n".join(lines), article.title, article.context)
    data, _ = tokenize_sequences(seqs, learner.tokenizer)
    variants = [
        ("plain (mlx-lm code, full logits)", dict(fast_kernels=False, head_on_positions=False, compile=False)),
        ("+ output projection on loss positions", dict(fast_kernels=False, head_on_positions=True, compile=False)),
        ("+ fast exp (SwiGLU, softmax, CE)", dict(fast_kernels=True, head_on_positions=True, compile=False)),
        ("+ mx.compile (all levers)", dict(fast_kernels=True, head_on_positions=True, compile=True)),
        ("mx.compile alone", dict(fast_kernels=False, head_on_positions=False, compile=True)),
    ]
    out: dict[str, Any] = {}
    for name, levers in variants:
        learner.set_levers(**levers)
        out[name] = _step_throughput(learner, data, reps=2, epochs=1)
        print(f"  lever {name}: {out[name]['seconds_per_step']:.3f} s/step", flush=True)
    if not rewards:
        learner.set_levers(**FAST)
        return out
    # whole rewards, plain vs all levers, interleaved (the article's baseline is already cached)
    timed: dict[str, list[dict[str, float]]] = {"plain": [], "fast": []}
    article, _ = benchmark_data(learner.tokenizer, SEQ_TOKENS, N_SEQUENCES)
    for r in range(2):
        _, lines = benchmark_data(learner.tokenizer, SEQ_TOKENS, N_SEQUENCES, seed=100 + r)
        for name, levers in (("plain", PLAIN), ("fast", FAST)):
            learner.set_levers(**levers)
            _, info = env.evaluate(article, "\n".join(lines), seed=100 + r)
            timed[name].append(
                {k: info[k] for k in ("seconds_reset", "seconds_train", "seconds_eval", "seconds_total")}
            )
            print(f"  reward with {name} levers: {info['seconds_total']:.1f} s", flush=True)
    learner.set_levers(**FAST)
    out["rewards"] = {name: {k: float(np.mean([x[k] for x in runs])) for k in runs[0]} for name, runs in timed.items()}
    return out


def section_lora_layers(args: argparse.Namespace) -> dict[str, Any]:
    """Step time with LoRA on fewer / more layers (needs a fresh model per setting)."""
    from seal_env.learner.trainer import Learner
    from seal_env.models import load_model
    from seal_env.reward.sequences import build_sequences, tokenize_sequences

    out = {}
    for name, settings in (
        ("q,v on every layer (default)", {}),
        ("q,v on the last 8 layers", {"lora_layers": 8}),
        ("all linear layers, every layer", {"lora_modules": ["all"]}),
    ):
        cfg = SealConfig(**settings)
        model, tok = load_model(args.model)
        learner = Learner(model, tok, cfg)
        article, lines = benchmark_data(tok, SEQ_TOKENS, N_SEQUENCES, seed=1)
        seqs, _ = build_sequences("\n".join(lines), article.title, article.context)
        data, _ = tokenize_sequences(seqs, tok)
        out[name] = _step_throughput(learner, data, reps=2, epochs=1)
        print(f"  lora {name}: {out[name]['seconds_per_step']:.3f} s/step", flush=True)
        del learner, model
        gc.collect()
    return out


def section_soak(env: Any, n: int, answer_tokens: int = 16) -> dict[str, Any]:
    """RSS over n cheap rewards (1 epoch, ``answer_tokens`` answer tokens, new sequence lengths every reward)."""
    saved = env.pipeline.cfg
    env.pipeline.set_config(dataclasses.replace(saved, epochs=1, answer_max_tokens=answer_tokens))
    rss, t0 = [], time.perf_counter()
    try:
        rng = np.random.default_rng(0)
        for i in range(n):
            length = int(rng.integers(60, 200))
            article, lines = benchmark_data(env.learner.tokenizer, length, 3, seed=i)
            env.evaluate(article, "\n".join(lines), seed=i)
            rss.append(rss_mb())
            if (i + 1) % max(n // 10, 1) == 0:
                print(f"  soak {i + 1}/{n}: RSS {rss[-1]:.0f} MB", flush=True)
    finally:
        env.pipeline.set_config(saved)
    half = rss[len(rss) // 2 :]
    slope = float(np.polyfit(np.arange(len(half)), half, 1)[0]) if len(half) > 2 else float("nan")
    return {
        "rewards": n,
        "seconds": time.perf_counter() - t0,
        "rss_first_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_max_mb": max(rss),
        "slope_mb_per_100_rewards_second_half": slope * 100,
        "rss_mb": rss,
    }


# ---------------------------------------------------------------------------------------------- PyTorch + PEFT
def _standard_sequences(tok: Any, cfg: SealConfig, seed: int) -> tuple[Article, list[tuple[list[int], int]]]:
    from seal_env.reward.sequences import build_sequences, tokenize_sequences

    article, lines = benchmark_data(tok, SEQ_TOKENS, N_SEQUENCES, seed=seed)
    seqs, _ = build_sequences("\n".join(lines), article.title, article.context, split=cfg.split_mode)
    data, _ = tokenize_sequences(seqs, tok, loss_on=cfg.loss_on, max_sequence_tokens=cfg.max_sequence_tokens)
    return article, data


def section_torch(env: Any, rewards: int, threads: int) -> dict[str, Any]:
    """The same rewards with PyTorch + PEFT (benchmarks.torch_baseline, in a child process)."""
    from seal_env.models import resolve_model_path

    from benchmarks import torch_baseline

    cfg, tok = env.cfg, env.learner.tokenizer
    article, _ = benchmark_data(tok, SEQ_TOKENS, N_SEQUENCES)
    datas = []
    for r in range(rewards):
        datas.append(_standard_sequences(tok, cfg, r + 1)[1])
    job = {
        "kind": "rewards",
        "folder": str(resolve_model_path(cfg.model)),
        "settings": cfg.to_dict(),
        "threads": threads,
        "datas": datas,
        "seeds": list(range(rewards)),
        "quiz": torch_baseline.quiz_job(tok, article),
    }
    out = torch_baseline.run(job, threads)
    steady = out["runs"][1:] or out["runs"]
    out["steady"] = {k: float(np.mean([r[k] for r in steady])) for k in out["runs"][0] if k.startswith("seconds")}
    return out


def section_torch_steps(env: Any, threads: int) -> dict[str, Any]:
    """PyTorch + PEFT training-step time (wall and CPU) on the standard data, like :func:`_step_throughput`."""
    from seal_env.models import resolve_model_path

    from benchmarks import torch_baseline

    cfg = env.cfg
    job = {
        "kind": "steps",
        "folder": str(resolve_model_path(cfg.model)),
        "settings": cfg.to_dict(),
        "threads": threads,
        "data": _standard_sequences(env.learner.tokenizer, cfg, 1)[1],
        "repeats": 2,
    }
    return torch_baseline.run(job, threads)


# ------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rewards", type=int, default=3, help="rewards timed at the standard setting (first = +baseline)")
    p.add_argument("--soak", type=int, default=0, help="also run N cheap rewards and report RSS slope (e.g. 500)")
    p.add_argument("--soak-answer-tokens", type=int, default=16, help="answer tokens in the soak's quizzes")
    p.add_argument("--levers", action="store_true", help="also time the step with each speed lever on/off")
    p.add_argument("--lora-layers", action="store_true", help="also time the step with LoRA on fewer/more layers")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch + PEFT comparison")
    p.add_argument(
        "--steps-only",
        action="store_true",
        help="only (a), (b), the levers' step times and PyTorch+PEFT's step time (no whole rewards): a "
        "quick, steadier comparison (use with --threads 1 on a busy machine: CPU seconds are robust)",
    )
    p.add_argument("--plain", action="store_true", help="switch every speed lever off (the plain mlx-lm training path)")
    p.add_argument("--torch-rewards", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="BLAS (OpenBLAS) and torch threads; 0 = their defaults (all cores). 1 is steadier on a busy "
        "machine: OpenBLAS threads spin in sched_yield when the cores are oversubscribed",
    )
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)

    if args.threads:
        set_blas_threads(args.threads)
    out: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads or os.cpu_count(),
            "python": sys.version.split()[0],
            "mlx": mx.__version__,
            "blas": _blas.loaded_path,
            "load_average_start": os.getloadavg(),
        },
        "setting": {
            "model": args.model,
            "epochs": STANDARD_EPOCHS,
            "sequences": N_SEQUENCES,
            "tokens_per_sequence": SEQ_TOKENS,
            "questions": N_QUESTIONS,
            "lora": "r=32 alpha=64 q,v",
        },
    }
    t_all = time.perf_counter()

    def done(name: str) -> None:  # progress: print the section's figures and keep a partial JSON
        value = out[name]
        print(f"  {name}: " + json.dumps(value, default=str)[:600], flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=str)

    print("(a) matmul ceiling ...", flush=True)
    out["matmul_gflops"] = section_matmul()
    done("matmul_gflops")
    env = make_env(model=args.model, cache=False, epochs=STANDARD_EPOCHS)
    if args.plain:
        env.learner.set_levers(**PLAIN)
    out["setting"]["levers"] = PLAIN if args.plain else FAST
    if args.steps_only:
        return steps_only(args, env, out, done)
    print("(c) rewards at the standard setting ...", flush=True)
    out["reward"] = section_reward(env, args.rewards)
    done("reward")
    print("(b) training-step throughput ...", flush=True)
    out["step"] = section_step(env)
    out["matmul_gflops_after"] = section_matmul()  # the ceiling again, to bracket the noise
    ceiling = max(out["matmul_gflops"]["square_2048"], out["matmul_gflops_after"]["square_2048"])
    out["step"]["fraction_of_matmul"] = out["step"]["gflops"] / ceiling
    out["peak_rss_mb"] = peak_rss_mb()
    done("step")
    if args.levers:
        print("levers ...", flush=True)
        out["levers"] = section_levers(env)
        done("levers")
    if args.soak:
        print(f"(d) soak: {args.soak} cheap rewards ...", flush=True)
        out["soak"] = section_soak(env, args.soak, args.soak_answer_tokens)
        out["peak_rss_mb_after_soak"] = peak_rss_mb()
        done("soak")
    if args.lora_layers:
        print("LoRA placement ...", flush=True)
        out["lora_layers"] = section_lora_layers(args)
        done("lora_layers")
    if not args.no_torch:
        print("(e) PyTorch + PEFT ...", flush=True)
        try:
            out["torch"] = section_torch(env, args.torch_rewards, args.threads or os.cpu_count() or 1)
            mine = out["reward"]["steady"]
            out["torch_ratio"] = {
                k: out["torch"]["steady"][k] / mine[k] for k in ("seconds_train", "seconds_eval", "seconds_total")
            }
        except Exception as error:  # no torch / peft, or the worker failed
            out["torch"] = {"skipped": f"{type(error).__name__}: {error} (pip install 'seal-env[torch]')"}
        done("torch")
    out["machine"]["load_average_end"] = os.getloadavg()
    out["benchmark_seconds"] = time.perf_counter() - t_all
    print_table(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


def steps_only(args: argparse.Namespace, env: Any, out: dict[str, Any], done: Any) -> dict[str, Any]:
    """``--steps-only``: per-step times of every lever and of PyTorch + PEFT, interleaved over rounds."""
    results: dict[str, list[dict[str, float]]] = {}
    for rnd in range(2):
        print(f"round {rnd + 1}/2 ...", flush=True)
        for name, v in section_levers(env, rewards=False).items():
            results.setdefault(name, []).append(v)
        if not args.no_torch:
            torch_steps = section_torch_steps(env, args.threads or os.cpu_count() or 1)["steps"]
            results.setdefault("PyTorch + PEFT (own process, MKL)", []).extend(torch_steps)
            print(
                f"  PyTorch + PEFT: {results['PyTorch + PEFT (own process, MKL)'][-1]['seconds_per_step']:.3f} s/step",
                flush=True,
            )
    out["steps"] = {
        name: {k: min(r[k] for r in runs) for k in ("seconds_per_step", "cpu_seconds_per_step")}
        for name, runs in results.items()
    }
    out["matmul_gflops_after"] = section_matmul()
    done("steps")
    plain = out["steps"]["plain (mlx-lm code, full logits)"]
    print()
    for name, v in out["steps"].items():
        print(
            f"{name:<42} {v['seconds_per_step']:.3f} s/step  {v['cpu_seconds_per_step']:.3f} CPU s/step  "
            f"plain/this CPU: {plain['cpu_seconds_per_step'] / v['cpu_seconds_per_step']:.2f}x"
        )
    print(
        f"matmul 2048^3 GFLOP/s before/after: {out['matmul_gflops']['square_2048']:.0f} / "
        f"{out['matmul_gflops_after']['square_2048']:.0f}; load average {os.getloadavg()}"
    )
    return out


def print_table(out: dict[str, Any]) -> None:
    r, s = out["reward"], out["step"]
    rows = [
        (
            "(a) fp32 matmul 2048^3 (GFLOP/s)",
            f"{out['matmul_gflops']['square_2048']:.0f} / "
            f"{out['matmul_gflops_after']['square_2048']:.0f} (before / after)",
        ),
        ("(a) fp32 matmul 140x576x1536 (GFLOP/s)", f"{out['matmul_gflops']['step_140x576x1536']:.0f}"),
        (
            "(b) train step (s, CPU s, GFLOP)",
            f"{s['seconds_per_step']:.3f} s, {s['cpu_seconds_per_step']:.3f} CPU s, {s['gflop_per_step']:.1f} GFLOP",
        ),
        ("(b) train step GFLOP/s, fraction of (a)", f"{s['gflops']:.0f}, {s['fraction_of_matmul']:.2f}"),
        ("(c) first reward incl. baseline (s)", f"{r['first_reward_seconds']:.1f}"),
    ]
    st = r["steady"]
    rows.append(
        (
            "(c) reward (s): total = reset + train + eval",
            f"{st['seconds_total']:.1f} = {st['seconds_reset']:.2f} + {st['seconds_train']:.1f} + "
            f"{st['seconds_eval']:.1f}",
        )
    )
    rows.append(("(c) baseline quiz, once per article (s)", f"{r['runs'][0]['seconds_baseline']:.1f}"))
    rows.append(("(d) peak RSS (MB)", f"{out['peak_rss_mb']:.0f}"))
    if "soak" in out:
        k = out["soak"]
        rows.append(
            (
                f"(d) soak {k['rewards']} rewards: RSS first/last/max (MB)",
                f"{k['rss_first_mb']:.0f} / {k['rss_last_mb']:.0f} / {k['rss_max_mb']:.0f}",
            )
        )
        rows.append(("(d) RSS slope, 2nd half (MB / 100 rewards)", f"{k['slope_mb_per_100_rewards_second_half']:+.1f}"))
    if "torch_ratio" in out:
        t = out["torch"]["steady"]
        rows.append(
            (
                "(e) PyTorch+PEFT reward (s): train + eval",
                f"{t['seconds_total']:.1f} = {t['seconds_train']:.1f} + {t['seconds_eval']:.1f}",
            )
        )
        q = out["torch_ratio"]
        rows.append(
            (
                "(e) speed-up vs PyTorch+PEFT: total / train / eval",
                f"{q['seconds_total']:.2f}x / {q['seconds_train']:.2f}x / {q['seconds_eval']:.2f}x",
            )
        )
    elif "torch" in out:
        rows.append(("(e) PyTorch+PEFT", out["torch"].get("skipped", "?")))
    for name, v in out.get("levers", {}).items():
        if name == "rewards":
            for kind, x in v.items():
                rows.append(
                    (
                        f"lever: reward with {kind} levers (s): train + eval",
                        f"{x['seconds_total']:.1f} = {x['seconds_train']:.1f} + {x['seconds_eval']:.1f}",
                    )
                )
            continue
        rows.append(
            (
                f"lever: {name}",
                f"{v['seconds_per_step']:.3f} s/step ({v['cpu_seconds_per_step']:.3f} CPU s), "
                f"{v['gflops']:.0f} GFLOP/s",
            )
        )
    for name, v in out.get("lora_layers", {}).items():
        rows.append((f"LoRA: {name}", f"{v['seconds_per_step']:.3f} s/step"))
    width = max(len(a) for a, _ in rows)
    print()
    for a, b in rows:
        print(f"{a:<{width}}  {b}")
    print(
        f"\nload average start/end: {out['machine']['load_average_start']} / {out['machine']['load_average_end']}"
        f"; benchmark {out['benchmark_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
