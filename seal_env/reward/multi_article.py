"""Several articles' self-edits training one LoRA adapter per run, then a quiz on every article: the reward of
``seal/ContinualPretraining-v0`` (SEAL's multi-passage, continued-pretraining setting).

:class:`MultiArticleEpisode` takes the articles' self-edits in order (:meth:`~MultiArticleEpisode.add`) and, once
each has one, trains and quizzes ``eval_times`` runs, run ``r`` a fresh adapter from seed ``seed + r``
(:meth:`~MultiArticleEpisode.finish`):

* ``train_mode="pooled"``: every run trains once on the pool of all the articles' sequences (``epochs`` passes,
  shuffled across articles); all runs train in one batched pass.
* ``train_mode="online"``: run 0 trains as the self-edits come (each ``add`` trains the adapter on that article's
  sequences, step ``i`` with seed ``seed + i`` and a fresh optimizer); runs 1.. replay the steps at the end from
  fresh adapters, batched.

The reward is the gain of the ``reward`` kind over the un-adapted model on all the articles' questions together
(so articles weigh by their number of questions), the mean over the runs; a run that diverged gives
``diverged_reward``. The summary follows :func:`seal_env.reward.pipeline.reward_info`'s fields, plus per-article
results under ``"articles"``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from seal_env.articles import Article
from seal_env.learner.batching import TrainRow
from seal_env.reward.pipeline import KINDS, RewardPipeline, prepare, question_rows, run_rewards, score_fields
from seal_env.reward.quiz import quiz, summarize

TRAIN_MODES = ("pooled", "online")


class MultiArticleEpisode:
    """One episode's self-edits for ``articles`` (dataset indices ``indices``, -1 for an article given directly)
    training one adapter per run on ``pipeline``'s learner, and the quiz and summary at the end.

    :attr:`seconds` holds the wall-clock seconds per phase so far; :attr:`timings` the episode's, after
    :meth:`finish`. Online mode quizzes the baselines and starts the episode's adapter here, at construction.
    """

    def __init__(
        self,
        pipeline: RewardPipeline,
        articles: Sequence[Article],
        indices: Sequence[int],
        seed: int,
        train_mode: str = "pooled",
    ):
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        if len(indices) != len(articles) or not articles:
            raise ValueError(f"{len(articles)} articles and {len(indices)} indices: need one index per article, >= 1")
        self.pipeline, self.train_mode, self.seed = pipeline, train_mode, seed
        self.articles, self.indices = list(articles), list(indices)
        self.chunks: list[list[TrainRow]] = []  # training data of each article added so far
        self.online: list[dict[str, Any]] = []  # train reports of run 0's steps so far (online mode)
        self.bases: list[dict[str, Any]] | None = None
        self.seconds = {"baseline": 0.0, "train": 0.0, "eval": 0.0}
        #: ``seconds_baseline|train|eval|finish`` of the episode, set by :meth:`finish`.
        self.timings: dict[str, float] = {}
        if train_mode == "online":
            # baselines first: computing one resets the learner, which must then keep its adapter all episode
            self.bases = self._baselines()
            pipeline.learner.reset([seed])

    @property
    def complete(self) -> bool:
        """Whether every article has its self-edit."""
        return len(self.chunks) == len(self.articles)

    def add(self, self_edit: str) -> dict[str, Any]:
        """The next article's self-edit (``articles[len(chunks)]``): build its training data and, in online mode,
        train the episode's adapter on it. Returns the step's info fields: what preparing did (as
        :func:`~seal_env.reward.pipeline.prepare`) and in online mode ``step_train`` (the train report without
        seconds, or None when nothing was trained). A non-str raises ``TypeError`` before anything changes."""
        if self.complete:
            raise RuntimeError("every article of the episode has its self-edit already")
        article = self.articles[len(self.chunks)]
        prep = prepare(self.pipeline.cfg, self.pipeline.learner.tokenizer, article, self_edit)
        self.chunks.append(prep.data)
        info = dict(prep.info)
        if self.train_mode == "online":
            report = self._train_chunk(len(self.chunks) - 1, [self.seed], [self.online])[0]
            info["step_train"] = None if report is None else {k: v for k, v in report.items() if k != "train_seconds"}
        return info

    def finish(self) -> tuple[float, dict[str, Any]]:
        """Train what is left to train, quiz every run on every article, and summarise: the reward and the
        episode's info fields. Called once, after every article's :meth:`add`."""
        if not self.complete:
            raise RuntimeError(f"{len(self.chunks)} of {len(self.articles)} articles have a self-edit")
        t_start = time.perf_counter()
        if self.bases is None:
            self.bases = self._baselines()
        if not any(self.chunks):  # nothing to train on: the adapted model is the base model
            n = self.pipeline.cfg.eval_times
            runs = [{"reports": [], "results": [b["results"] for b in self.bases]} for _ in range(n)]
        else:
            runs = self._runs()
        reward, summary = self.summary(self.bases, runs)
        self.timings = {f"seconds_{k}": v for k, v in self.seconds.items()}
        self.timings["seconds_finish"] = time.perf_counter() - t_start
        return reward, summary

    def summary(self, bases: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
        """The reward and info from the articles' baselines and the runs (``{"reports": [train reports],
        "results": [per article: quiz results]}`` each)."""
        cfg = self.pipeline.cfg
        base_all = summarize([q for b in bases for q in b["results"]])
        adapted = [summarize([q for res in run["results"] for q in res]) for run in runs]
        diverged = [any(rep["diverged"] for rep in run["reports"]) for run in runs]
        reward, head = run_rewards(cfg, base_all, adapted, diverged)
        articles = []
        for j, (article, base) in enumerate(zip(self.articles, bases, strict=True)):
            scores = score_fields(base["summary"], [summarize(run["results"][j]) for run in runs])
            articles.append(
                {
                    "article_id": article.id,
                    "article_index": self.indices[j],
                    "title": article.title,
                    "n_questions": len(article.questions),
                    "baseline_accuracy": scores["baseline_accuracy"],
                    "adapter_accuracy": scores["adapter_accuracy"],
                    **{f"{k}_gain": scores[f"{k}_gain"] for k in KINDS},
                    "questions": question_rows(runs[-1]["results"][j], base["results"]),
                }
            )
        last = runs[-1]["reports"]
        info: dict[str, Any] = {
            "train_mode": self.train_mode,
            "seed": self.seed,
            **head,
            "total_questions": sum(len(a.questions) for a in self.articles),
            **score_fields(base_all, adapted),
            "articles": articles,
            "train_losses": [x for rep in last for x in rep["train_losses"]],
            "train_steps": sum(rep["train_steps"] for rep in last),
            "total_sequences": sum(len(c) for c in self.chunks),
            "total_train_tokens": sum(len(ids) for c in self.chunks for ids, _ in c),
            "diverged": any(diverged),
        }
        return reward, info

    # ----------------------------------------------------------------- internals
    def _baselines(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        bases = [self.pipeline.baselines.get(a) for a in self.articles]  # cached per article
        self.seconds["baseline"] += time.perf_counter() - t0
        return bases

    def _train_chunk(
        self, i: int, run_seeds: list[int], reports: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """Online mode: train each adapter slot (run ``r``) on article ``i``'s data with seed ``run_seeds[r] + i``,
        in one batched pass; a run with nothing to learn, or already diverged, is skipped (None)."""
        data = self.chunks[i]
        train = [bool(data) and not any(rep["diverged"] for rep in run) for run in reports]
        if not any(train):
            return [None] * len(run_seeds)
        out = self.pipeline.learner.train([data if t else [] for t in train], [s + i for s in run_seeds])
        self.seconds["train"] += sum(rep["train_seconds"] for rep in out)
        for run, rep, t in zip(reports, out, train, strict=True):
            if t:
                run.append(rep)
        return [rep if t else None for rep, t in zip(out, train, strict=True)]

    def _runs(self) -> list[dict[str, Any]]:
        """Train every run ``r`` of ``eval_times`` (seed ``seed + r``, a fresh adapter each) and quiz it."""
        learner = self.pipeline.learner
        seeds = [self.seed + r for r in range(self.pipeline.cfg.eval_times)]
        if self.train_mode == "pooled":  # one batched pass: every run trains on the pool of all articles' sequences
            learner.reset(seeds)
            pooled = [row for chunk in self.chunks for row in chunk]
            out = learner.train([pooled] * len(seeds), seeds)
            self.seconds["train"] += sum(rep["train_seconds"] for rep in out)
            return self._quiz([[rep] for rep in out])
        runs = self._quiz([self.online])  # run 0: the adapter trained step by step during the episode
        if len(seeds) > 1:  # runs 1..R-1 replay the steps from fresh adapters, batched
            learner.reset(seeds[1:])
            reports: list[list[dict[str, Any]]] = [[] for _ in seeds[1:]]
            for i in range(len(self.chunks)):
                self._train_chunk(i, seeds[1:], reports)
            runs += self._quiz(reports)
        return runs

    def _quiz(self, reports: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Quiz the learner's adapter slots (one per run) on every article."""
        t0 = time.perf_counter()
        cfg, grader = self.pipeline.cfg, self.pipeline.grader  # the grader given, or the settings' (e.g. the judge)
        per_article = [quiz(self.pipeline.learner, a, cfg.answer_max_tokens, grader) for a in self.articles]
        self.seconds["eval"] += time.perf_counter() - t0
        return [{"reports": reports[r], "results": [q[r] for q in per_article]} for r in range(len(reports))]
