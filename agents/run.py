"""The round loop every agent in ``agents/`` shares: rollouts, rewards, updates, held-out evaluation, the run's
summary and its command line. What a run shows (statistics, held-out change, printed lines) is :mod:`agents.report`;
the LoRA policy of ReSTEM and GRPO :mod:`agents.lora_agent`.

The run directory is :mod:`agents.rundir`, wandb :mod:`agents.wandb_logger`. ``--resume`` replays the journal:
nothing in it is sampled or evaluated again, and every seed is derived from (seed, round, article, sample) (held-out
rollouts: without the round), so a resumed run ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, select_articles
from seal_env.executors import RewardRequest
from seal_env.journal import FolderInUseError, JournalWriteError, write_json_atomic

import mlx.core as mx
import numpy as np
from tqdm.auto import tqdm

from agents.base import Agent, Experience, Policy, derive_seed, observation
from agents.command_line import build_parser, parse_args
from agents.config import RunConfig
from agents.policies import PromptPolicy
from agents.report import (
    heldout_change,
    learning_curve,
    log_round,
    plot_learning_curves,
    print_summary,
    reward_stats,
    round_line,
)
from agents.rundir import Run
from agents.wandb_logger import Logger

C = TypeVar("C", bound=RunConfig)  #: an agent's own RunConfig subclass

# ------------------------------------------------------------------------------------------------ the round loop


def make_executor(cfg: RunConfig) -> Any:
    """The reward executor the run's settings ask for (auto, in-process, a worker pool or Ray); prints what
    ``auto`` picked (the executor's ``setup``)."""
    from seal_env import executors

    settings = {**cfg.env.to_dict(), "split": "all"}  # the agent hands articles over itself
    address = cfg.ray_address if cfg.executor == "ray" else None
    executor = executors.make_executor(
        cfg.executor, settings, cfg.workers, address, request_timeout=cfg.request_timeout
    )
    setup = getattr(executor, "setup", None)
    if setup is not None:
        print(setup.message(), flush=True)
    return executor


class Rewards:
    """An executor whose base-weight updates are held back until a reward is actually needed (cheap resumes)."""

    def __init__(self, executor: Any):
        self.executor = executor
        self.pending: dict[str, Any] | None = None

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        self.pending = weights

    def evaluate(self, requests: list[RewardRequest], on_result: Callable[[int, float, dict], None]) -> None:
        if not requests:
            return
        if self.pending is not None:
            self.executor.set_base_weights(self.pending)
            self.pending = None
        self.executor.evaluate(requests, on_result=on_result)


def load_splits(cfg: RunConfig) -> tuple[list[Article], list[Article]]:
    """The training and held-out articles of ``cfg.env.dataset``; errors say what to change."""
    train = select_articles(dataclasses.replace(cfg.env, split="train"))
    if cfg.articles_per_round > len(train):
        raise ValueError(
            f"articles_per_round={cfg.articles_per_round} exceeds the {len(train)} training articles of "
            f"{cfg.env.dataset!r}: lower --articles-per-round or use a larger --data"
        )
    heldout: list[Article] = []
    if cfg.heldout_articles:
        heldout = select_articles(dataclasses.replace(cfg.env, split="heldout"))
        if cfg.heldout_articles > 0:
            heldout = heldout[: cfg.heldout_articles]
    return train, heldout


def round_articles(train: list[Article], round: int, cfg: RunConfig) -> list[Article]:
    """Round ``round``'s articles: the next slice of a seeded permutation of the train split (wrapping around)."""
    order = np.random.default_rng(derive_seed(cfg.seed, "article-order")).permutation(len(train))
    start = (round - 1) * cfg.articles_per_round
    return [train[order[(start + i) % len(train)]] for i in range(cfg.articles_per_round)]


def rollout(
    run: Run,
    policy: Policy,
    rewards: Rewards,
    articles: list[Article],
    k: int,
    round: int,
    phase: str,
    cfg: RunConfig,
    logger: Logger,
) -> tuple[list[Experience], dict[str, float]]:
    """Sample ``k`` self-edits per article and evaluate them, taking whatever the journal already holds.

    Held-out rollouts use common random numbers: the same sampling seed and the same inner-loop seed per (article,
    sample) every round, so that only the policy differs between rounds."""
    seconds = {"sample": 0.0, "rewards": 0.0}
    when = (phase,) if phase == "heldout" else (round, phase)
    if run.get("samples", round, phase) is None:
        t0 = time.perf_counter()
        proposed = policy.propose([observation(a) for a in articles], k, derive_seed(cfg.seed, *when))
        if len(proposed) != len(articles) or any(
            len(p) != k or not all(isinstance(s, str) for s in p) for p in proposed
        ):
            raise ValueError(f"{type(policy).__name__}.propose must return {k} str self-edits for each observation")
        run.append(
            {
                "event": "samples",
                "round": round,
                "phase": phase,
                "self_edits": {a.id: list(p) for a, p in zip(articles, proposed, strict=True)},
            }
        )
        seconds["sample"] = time.perf_counter() - t0
    record = run.get("samples", round, phase)  # the self-edits as journaled: what a resumed run reads
    assert record is not None
    todo = [(a, j) for a in articles for j in range(k) if run.get("reward", round, phase, a.id, j) is None]
    requests = [RewardRequest(a, record["self_edits"][a.id][j], derive_seed(cfg.seed, *when, a.id, j)) for a, j in todo]
    bar = tqdm(
        total=len(requests), desc=f"round {round} {phase} rewards", unit="reward", disable=not cfg.progress, leave=False
    )

    def on_result(i: int, reward: float, info: dict[str, Any]) -> None:
        article, j = todo[i]
        run.append(
            {
                "event": "reward",
                "round": round,
                "phase": phase,
                "article_id": article.id,
                "k": j,
                "title": article.title,
                "seed": requests[i].seed,
                "self_edit": requests[i].self_edit,
                "reward": reward,
                "info": info,
            }
        )
        logger.log(
            {
                "self_edit/index": len(run.index),
                "self_edit/round": round,
                "self_edit/reward": reward,
                "self_edit/heldout": int(phase == "heldout"),
                "self_edit/adapter_accuracy": info.get("adapter_accuracy", math.nan),
            }
        )
        bar.update(1)
        bar.set_postfix(reward=f"{reward:+.3f}")

    t0 = time.perf_counter()
    try:
        rewards.evaluate(requests, on_result)
    finally:
        bar.close()
    seconds["rewards"] = time.perf_counter() - t0
    batch = []
    for a in articles:
        for j in range(k):
            rec = run.get("reward", round, phase, a.id, j)
            assert rec is not None  # journaled before or by on_result just above
            batch.append(Experience(a, rec["self_edit"], rec["reward"], rec["info"], j))
    return batch, seconds


def heldout_policy(policy: Policy, cfg: RunConfig) -> Policy:
    """The policy that samples held-out self-edits: ``policy`` itself, or (``cfg.heldout_temperature`` set) a copy
    of it that shares its model and samples at that temperature, so that it follows every update."""
    if cfg.heldout_temperature is None:
        return policy
    if not isinstance(policy, PromptPolicy):
        raise ValueError(f"heldout_temperature needs a PromptPolicy, got {type(policy).__name__}")
    held = copy.copy(policy)
    held.temperature = cfg.heldout_temperature
    return held


def train(
    cfg: RunConfig, agent: Agent, run: Run, executor: Any, logger: Logger, splits: tuple[list[Article], list[Article]]
) -> dict[str, Any]:
    """Round 0 evaluates the initial policy on held-out articles; rounds 1..R sample, reward, learn, checkpoint and
    evaluate on held-out articles again. Returns (and saves as results.json) the per-round summaries."""
    train_articles, heldout = splits
    held_policy = heldout_policy(agent.policy, cfg)
    rewards, t_start = Rewards(executor), time.perf_counter()
    learned = [r for r in range(1, cfg.rounds + 1) if run.get("learn", r) and run.checkpoint(r).is_file()]
    if learned:  # resume from the last policy update
        agent.load_state(dict(cast(dict[str, mx.array], mx.load(str(run.checkpoint(learned[-1]))))))
        if cfg.inner_loop_learner == "policy":
            rewards.set_base_weights(agent.state())
    summaries = []
    for rnd in range(cfg.rounds + 1):
        if done := run.get("round", rnd):
            summaries.append(done["summary"])
            continue
        t0 = time.perf_counter()
        summary: dict[str, Any] = {"round": rnd}
        batch: list[Experience] = []
        seconds: dict[str, float] = {}
        if rnd >= 1:
            batch, seconds = rollout(
                run, agent.policy, rewards, round_articles(train_articles, rnd, cfg), cfg.k, rnd, "train", cfg, logger
            )
            summary["train"] = reward_stats(batch)
            if record := run.get("learn", rnd):
                stats = record["stats"]
            else:
                t1 = time.perf_counter()
                stats = agent.learn(batch, derive_seed(cfg.seed, rnd, "learn"))
                path = run.save_checkpoint(rnd, agent.state())
                seconds["learn"] = time.perf_counter() - t1
                run.append({"event": "learn", "round": rnd, "stats": stats, "checkpoint": str(path)})
            summary["learn"] = stats
            if cfg.inner_loop_learner == "policy":
                rewards.set_base_weights(agent.state())
        if heldout:
            held, held_seconds = rollout(run, held_policy, rewards, heldout, cfg.heldout_k, rnd, "heldout", cfg, logger)
            summary["heldout"] = reward_stats(held)
            seconds.update({f"heldout_{k}": v for k, v in held_seconds.items()})
            batch += held
        summary["seconds"] = {**seconds, "total": time.perf_counter() - t0}
        run.append({"event": "round", "round": rnd, "summary": summary})
        summaries.append(summary)
        log_round(logger, summary, batch, rnd)
        print(round_line(summary), flush=True)
    last = max([r for r in range(1, cfg.rounds + 1) if run.checkpoint(r).is_file()], default=0)
    results = {
        "algorithm": run.meta["algorithm"],
        "run_dir": str(run.path),
        "rounds": summaries,
        "heldout_change": heldout_change(run, [a.id for a in heldout], cfg.rounds) if heldout and cfg.rounds else None,
        "checkpoint": str(run.checkpoint(last)) if last else None,
        "seconds": time.perf_counter() - t_start,
    }
    if heldout and cfg.rounds:
        png = run.path / "learning_curve.png"
        title = f"{results['algorithm']}: held-out reward per round"
        plot_learning_curves([learning_curve(run, summaries)], png, title)
        results["learning_curve"] = str(png)
    write_json_atomic(run.path / "results.json", results)
    return results


def run_agent(
    algorithm: str,
    cfg: C,
    make_agent: Callable[[C], Agent],
    *,
    preset: str = "",
    resume: Path | str | None = None,
    splits: tuple[list[Article], list[Article]] | None = None,
) -> dict[str, Any]:
    """Create (or resume) a run directory and train ``make_agent(cfg)`` in it; returns the results."""
    cfg.validate()
    splits = splits or load_splits(cfg)  # fail on bad data before loading any model
    if resume is not None:
        run = Run(Path(resume))
    else:
        name = cfg.name or f"{algorithm}-{preset or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
        meta = {
            "algorithm": algorithm,
            "preset": preset,
            "seal_env_version": seal_env.__version__,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wandb_id": os.urandom(4).hex(),
            "command": " ".join(sys.argv),
            "config": dataclasses.asdict(cfg),
        }
        run = Run.create(Path(cfg.runs_dir) / name, meta)
    print(f"{algorithm}: run dir {run.path}", flush=True)
    logger = Logger(
        cfg.wandb_mode,
        cfg.wandb_project,
        run.path.name,
        run.path,
        {"algorithm": algorithm, "preset": preset, **dataclasses.asdict(cfg)},
        run.meta["wandb_id"],
    )
    executor = None
    try:
        agent = make_agent(cfg)
        executor = make_executor(cfg)
        if (setup := getattr(executor, "setup", None)) is not None:  # what the auto executor picked
            run.append({"event": "executor", "setup": dataclasses.asdict(setup)})
        return train(cfg, agent, run, executor, logger, splits)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with  python -m agents.{algorithm} --resume {run.path}", file=sys.stderr)
        raise
    except JournalWriteError:
        print(f"\nonce fixed, continue with  python -m agents.{algorithm} --resume {run.path}", file=sys.stderr)
        raise
    finally:
        if executor is not None:
            executor.close()
        logger.finish()
        run.close()


def main(
    algorithm: str,
    cls: type[C],
    presets: dict[str, dict[str, Any]],
    make_agent: Callable[[C], Agent],
    description: str,
    argv: list[str] | None = None,
    default_preset: str = "demo",
) -> dict[str, Any]:
    """The command line of an agent: parse settings (from ``default_preset`` unless ``--preset`` names another),
    run (or resume), print a summary."""
    parser = build_parser(algorithm, cls, presets, description, default_preset)
    cfg, preset, resume = parse_args(parser, cls, presets, argv)
    try:
        splits = load_splits(cfg)
        if resume is None and cfg.name and (Path(cfg.runs_dir) / cfg.name / "config.json").exists():
            raise FileExistsError(
                f"{Path(cfg.runs_dir) / cfg.name} already holds a run: continue it with --resume, "
                "or pick another --name"
            )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        parser.error(str(e))
    try:
        results = run_agent(algorithm, cfg, make_agent, preset=preset, resume=resume, splits=splits)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except (FolderInUseError, JournalWriteError) as e:  # another process has the run; the disk is full
        raise SystemExit(f"error: {e}") from None
    print_summary(results)
    return results
