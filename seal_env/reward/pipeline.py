"""The reward pipeline: self-edits of one article -> training data -> batched LoRA fine-tunes -> quiz -> rewards.

:class:`RewardPipeline` is what both environments and every executor compute rewards with:

1. :func:`prepare` cleans a self-edit and turns it into training sequences (seal_env.reward.sequences);
2. :class:`Baselines` quizzes the un-adapted model once per article;
3. :meth:`RewardPipeline.evaluate_many` trains one adapter slot per (self-edit, repeat) -- up to
   ``max_batch_adapters`` of them in one batched pass (seal_env.learner.trainer) -- quizzes all of them in one batch,
   and builds each request's reward and info (:func:`reward_info`), looking each request up in the reward cache first.

A reward depends only on (article, self-edit, seed) and the settings: evaluated alone or together with other
self-edits, it is the same up to float rounding (the batch shapes change how the matrix products round).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from seal_env.articles import Article
from seal_env.config import REWARD_KINDS, SealConfig
from seal_env.judge import JUDGE_SETTINGS, JUDGMENTS_FILE, JudgeGrader
from seal_env.learner.batching import TrainRow
from seal_env.learner.trainer import Learner
from seal_env.reward import cache as reward_cache
from seal_env.reward.grading import Grader
from seal_env.reward.quiz import gain, mean_std, quiz, summarize
from seal_env.reward.sequences import build_sequences, sanitize_action, tokenize_sequences

PHASES = ("reset", "train", "eval")
#: Info keys that describe how a reward was computed (wall-clock seconds, cache hit, batch size), not the reward.
TIMING_KEYS = ("cache_hit", "batch_adapters")


def split_timings(info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(info without its timing fields, the timing fields)``: ``seconds_*`` and :data:`TIMING_KEYS`."""
    timing = {k: v for k, v in info.items() if k.startswith("seconds_") or k in TIMING_KEYS}
    return {k: v for k, v in info.items() if k not in timing}, timing


#: The scores whose baseline, adapted value and gain every info carries (REWARD_KINDS).
KINDS = REWARD_KINDS
#: Per-question scores besides ``correct`` that the info's questions carry for the base model too.
QUESTION_SCORES = ("f1", "loglik", "choice", "margin", "pmi")


@dataclass
class Prepared:
    """A self-edit's training data and what building it did (info fields: pieces, cuts, input flags)."""

    data: list[TrainRow]
    info: dict[str, Any]


def prepare(cfg: SealConfig, tokenizer: Any, article: Article, self_edit: str) -> Prepared:
    """Clean ``self_edit`` and build its training sequences for ``article`` (a non-str raises ``TypeError``)."""
    text, flags = sanitize_action(self_edit, cfg.max_action_chars)
    seqs, seq_info = build_sequences(
        text,
        article.title,
        article.context,
        split=cfg.split_mode,
        title_prefix=cfg.title_prefix,
        include_passage=cfg.include_passage,
        drop_preamble=cfg.drop_preamble,
        markup=cfg.keep_markup,
        max_sequences=cfg.max_sequences,
    )
    data, tok_info = tokenize_sequences(
        seqs,
        tokenizer,
        loss_on=cfg.loss_on,
        max_sequence_tokens=cfg.max_sequence_tokens,
        max_total_tokens=cfg.max_total_tokens,
    )
    info = {
        "n_sequences": len(data),
        "empty_action": seq_info["self_edit_pieces"] == 0,
        **seq_info,
        **tok_info,
        **flags,
    }
    return Prepared(data, info)


class Baselines:
    """The un-adapted model's quiz of each article, computed once (per article and ``cfg.eval_key()``).

    ``get(article)`` -> ``{"results": [per question], "summary": {accuracy, em, f1, loglik}}``; :meth:`clear`
    after the base weights change. ``computed`` counts the quizzes actually run.
    """

    def __init__(self, learner: Learner, cfg: SealConfig, grader: Grader | None = None):
        self.learner, self.cfg, self.grader = learner, cfg, grader
        self._store: dict[tuple[Article, str], dict[str, Any]] = {}
        self.computed = 0

    def key(self, article: Article) -> tuple[Article, str]:
        """The whole article (its questions too: two articles may share a title and passage) and the settings."""
        return article, json.dumps(self.cfg.eval_key(), sort_keys=True)

    def __contains__(self, article: Article) -> bool:
        return self.key(article) in self._store

    def get(self, article: Article) -> dict[str, Any]:
        """The base model's quiz of ``article``; one in which a judge could not grade an answer is returned but not
        kept (the next call asks again)."""
        key = self.key(article)
        if key in self._store:
            return self._store[key]
        failures = ungraded(self.grader)
        self.learner.reset([])  # no adapters: the base model
        results = quiz(self.learner, article, self.cfg.answer_max_tokens, self.grader)[0]
        entry = {"results": results, "summary": summarize(results)}
        self.computed += 1
        if ungraded(self.grader) == failures:
            self._store[key] = entry
        return entry

    def clear(self) -> None:
        self._store.clear()


def config_grader(cfg: SealConfig) -> Grader | None:
    """The grader that settings ``cfg`` choose: None for ``grader="lenient"`` (seal_env.reward.grading.lenient_match),
    a :class:`seal_env.judge.JudgeGrader` for ``"judge"``, its judgments kept in the reward cache folder
    (``judgments.jsonl``) unless the reward cache is off (``cache=False`` or ``SEAL_ENV_REWARD_CACHE=off``)."""
    if cfg.grader != "judge":
        return None
    store = None
    if reward_cache.enabled(cfg.cache):
        folder = Path(cfg.cache_dir).expanduser() if cfg.cache_dir is not None else reward_cache.default_dir()
        store = folder / JUDGMENTS_FILE
    return JudgeGrader.from_config(cfg, cache=store)


def ungraded(grader: Any) -> int:
    """Answers a judge grader could not grade so far (its ``failures``; 0 for any other grader)."""
    return int(getattr(grader, "failures", 0))


def question_rows(results: list[dict[str, Any]], base_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The adapted model's per-question results, each with the base model's answer and scores beside it
    (``baseline_answer``, ``baseline_correct``, ``baseline_<score>`` for :data:`QUESTION_SCORES`)."""
    return [
        {
            **q,
            "baseline_answer": bq["answer"],
            "baseline_correct": bq["correct"],
            **{f"baseline_{k}": bq[k] for k in QUESTION_SCORES},
        }
        for q, bq in zip(results, base_results, strict=True)
    ]


def run_rewards(
    cfg: SealConfig, base: dict[str, float], adapted: list[dict[str, float]], diverged: list[bool]
) -> tuple[float, dict[str, Any]]:
    """The reward and its info fields (``reward_kind``, ``reward``, ``reward_std``, ``rewards``) from the runs'
    quiz summaries: per run the gain of the ``reward`` kind over ``base``, or ``diverged_reward`` if it diverged;
    the reward is their mean."""
    rewards = [
        cfg.diverged_reward if div else gain(cfg.reward, base, a) for a, div in zip(adapted, diverged, strict=True)
    ]
    reward, reward_std = mean_std(rewards)
    return reward, {"reward_kind": cfg.reward, "reward": reward, "reward_std": reward_std, "rewards": rewards}


def score_fields(base: dict[str, float], adapted: list[dict[str, float]]) -> dict[str, Any]:
    """Every reward kind's ``baseline_<kind>``, ``adapter_<kind>`` and ``<kind>_gain`` (means over the runs'
    summaries ``adapted``), and ``adapter_accuracy_std``."""
    return {
        **{f"baseline_{k}": base[k] for k in KINDS},
        **{f"adapter_{k}": mean_std([a[k] for a in adapted])[0] for k in KINDS},
        "adapter_accuracy_std": mean_std([a["accuracy"] for a in adapted])[1],
        **{f"{k}_gain": mean_std([a[k] - base[k] for a in adapted])[0] for k in KINDS},
    }


def reward_info(
    cfg: SealConfig, article: Article, seed: int, base: dict[str, Any], runs: list[dict[str, Any]], prep: Prepared
) -> tuple[float, dict[str, Any]]:
    """A request's reward and info from its runs (``eval_times`` of them: train report + quiz results each)."""
    adapted = [summarize(run["results"]) for run in runs]
    reward, head = run_rewards(cfg, base["summary"], adapted, [run["diverged"] for run in runs])
    last = runs[-1]
    info: dict[str, Any] = {
        "article_id": article.id,
        "title": article.title,
        "seed": seed,
        **head,
        **score_fields(base["summary"], adapted),
        "questions": question_rows(last["results"], base["results"]),
        "train_losses": last["train_losses"],
        "train_steps": last["train_steps"],
        "diverged": any(run["diverged"] for run in runs),
        **prep.info,
    }
    return reward, info


@dataclass
class _Request:
    """One request's bookkeeping inside :meth:`RewardPipeline.evaluate_many`."""

    self_edit: str
    seed: int
    key: str | None = None
    prep: Prepared | None = None
    runs: list[dict[str, Any] | None] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(("baseline", *PHASES), 0.0))
    batch_adapters: int = 0


class RewardPipeline:
    """Rewards for (article, self-edit, seed) requests on one learner, batched over the self-edits of an article.

    ``grader``: a callable that replaces the settings' grader (``cfg.grader``: the lenient match or the LLM judge
    of seal_env.judge) and switches the reward cache off. Rewards graded by the settings' judge are cached (the
    judge's identity is part of the key), except those of a call in which the judge could not grade an answer."""

    def __init__(self, learner: Learner, cfg: SealConfig, grader: Grader | None = None):
        self.learner, self.cfg = learner, cfg
        self.custom_grader = grader is not None
        self.grader: Grader | None = grader if grader is not None else config_grader(cfg)
        self.baselines = Baselines(learner, cfg, self.grader)

    @classmethod
    def build(cls, cfg: SealConfig, grader: Grader | None = None) -> RewardPipeline:
        """Load ``cfg.model`` (seal_env.models.load_model) and wrap it in a :class:`Learner`."""
        from seal_env.models import load_model

        model, tokenizer = load_model(cfg.model, quantize=cfg.quantize, dtype=cfg.dtype)
        return cls(Learner(model, tokenizer, cfg), cfg, grader)

    def set_config(self, cfg: SealConfig) -> None:
        """Use other settings from now on (the model stays; LoRA shape settings must not change)."""
        changed = any(getattr(self.cfg, name) != getattr(cfg, name) for name in JUDGE_SETTINGS)
        self.cfg = self.learner.cfg = self.baselines.cfg = cfg
        if changed and not self.custom_grader:
            self.grader = self.baselines.grader = config_grader(cfg)

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the learner's base weights (e.g. a fused, updated policy); cached baselines are dropped."""
        self.learner.set_base_weights(weights)
        self.baselines.clear()

    def evaluate(self, article: Article, self_edit: str, seed: int = 0) -> tuple[float, dict[str, Any]]:
        """One request: ``evaluate_many(article, [self_edit], [seed])[0]``."""
        return self.evaluate_many(article, [self_edit], [seed])[0]

    def evaluate_many(
        self, article: Article, self_edits: Sequence[str], seeds: Sequence[int], *, adapt: bool = True
    ) -> list[tuple[float, dict[str, Any]]]:
        """Reward and info for each (self-edit, seed) on ``article``, in order; ``eval_times`` repeats use seeds
        ``seed, seed + 1, ...`` and the reward is their mean.

        Every request is looked up in the reward cache first; the rest are trained and quizzed together, up to
        ``max_batch_adapters`` inner loops per pass. A non-str self-edit raises ``TypeError`` before anything runs.
        ``adapt=False`` trains nothing (SEAL's "no adaptation" condition: the self-edits are ignored, the reward is
        0 and the adapted model is the base model), without the cache.
        """
        cfg, t_call = self.cfg, time.perf_counter()
        if len(self_edits) != len(seeds):
            raise ValueError(f"evaluate_many: {len(self_edits)} self-edits and {len(seeds)} seeds")
        for edit in self_edits:
            if not isinstance(edit, str):
                raise TypeError(f"a self-edit must be a str, got {type(edit).__name__}")
        requests = [_Request(edit, int(seed)) for edit, seed in zip(self_edits, seeds, strict=True)]
        results: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)
        store = None
        if adapt and reward_cache.enabled(cfg.cache) and not self.custom_grader:
            store = reward_cache.RewardCache(cfg.cache_dir)
        for i, req in enumerate(requests):  # 1. the persistent cache
            if store is None:
                continue
            t0 = time.perf_counter()
            req.key = reward_cache.reward_key(
                self.learner.fingerprint(), article, req.self_edit, cfg.inner_loop_key(), req.seed
            )
            hit = store.get(req.key)
            if hit is not None:
                reward, info = hit
                if cfg.timings:
                    info.update(
                        {f"seconds_{p}": 0.0 for p in ("baseline", *PHASES)},
                        seconds_total=time.perf_counter() - t0,
                        cache_hit=True,
                    )
                results[i] = (reward, info)
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            return cast(list[tuple[float, dict[str, Any]]], results)  # every one a cache hit
        failures = ungraded(self.grader)
        t0 = time.perf_counter()  # 2. the baseline (its seconds go to the first request that needed it)
        base = self.baselines.get(article)
        requests[todo[0]].seconds["baseline"] = time.perf_counter() - t0
        prep_cfg = cfg if adapt else dataclasses.replace(cfg, include_passage=False)
        jobs = []  # 3. one inner loop per (request, repeat) that has something to train on
        for i in todo:
            req = requests[i]
            req.prep = prepare(prep_cfg, self.learner.tokenizer, article, req.self_edit if adapt else "")
            req.runs = [None] * cfg.eval_times
            for r in range(cfg.eval_times):
                if req.prep.data:
                    jobs.append((i, r))
                else:  # nothing to train on: the adapted model is the base model
                    req.runs[r] = {"train_losses": [], "train_steps": 0, "diverged": False, "results": base["results"]}
        for start in range(0, len(jobs), cfg.max_batch_adapters):
            self._pass(article, requests, jobs[start : start + cfg.max_batch_adapters])
        # the call's time not attributed to a phase (preparing, grading, bookkeeping) is shared equally
        extra = max(time.perf_counter() - t_call - sum(sum(requests[i].seconds.values()) for i in todo), 0.0)
        if ungraded(self.grader) != failures:
            store = None  # an answer counted as wrong because the judge failed: these rewards are not kept
        for i in todo:  # 4. rewards and infos
            req = requests[i]
            assert req.prep is not None  # step 3 prepared every request of todo and filled all its runs
            runs = cast(list[dict[str, Any]], req.runs)
            reward, info = reward_info(cfg, article, req.seed, base, runs, req.prep)
            if store is not None and req.key is not None:
                store.put(req.key, reward, info)  # without timings: they belong to this call
            if cfg.timings:
                info.update(
                    {f"seconds_{p}": v for p, v in req.seconds.items()},
                    seconds_total=sum(req.seconds.values()) + extra / len(todo),
                    cache_hit=False,
                    batch_adapters=req.batch_adapters,
                )
            results[i] = (reward, info)
        return cast(list[tuple[float, dict[str, Any]]], results)  # all filled: cache hits, then todo

    def _pass(self, article: Article, requests: list[_Request], jobs: list[tuple[int, int]]) -> None:
        """Train and quiz one batch of inner loops (request, repeat) together; fills their runs and seconds."""
        learner, n = self.learner, len(jobs)
        seeds = [requests[i].seed + r for i, r in jobs]
        t0 = time.perf_counter()
        learner.reset(seeds)
        t_reset = time.perf_counter() - t0
        reports = learner.train([cast(Prepared, requests[i].prep).data for i, _ in jobs], seeds)  # all prepared
        t0 = time.perf_counter()
        quizzes = quiz(learner, article, self.cfg.answer_max_tokens, self.grader)
        t_eval = time.perf_counter() - t0
        for (i, r), report, results in zip(jobs, reports, quizzes, strict=True):
            req = requests[i]
            req.runs[r] = {**report, "results": results}
            req.seconds["reset"] += t_reset / n
            req.seconds["train"] += report["train_seconds"]
            req.seconds["eval"] += t_eval / n
            req.batch_adapters = max(req.batch_adapters, n)
