"""``seal/ContinualPretraining-v0``: SEAL's multi-passage (continued-pretraining) setting as a Gymnasium env.

An episode walks through ``n_articles`` articles. Each step shows one article (title and passage, never the
questions, as in ``seal/KnowledgeIncorporation-v0``); the action is a self-edit for it. All self-edits of the
episode train **one** LoRA adapter:

* ``train_mode="pooled"`` (SEAL's CPT setting): the training sequences of all steps are pooled and the adapter
  is trained once, at the last step (``epochs`` passes over the pool, shuffled across articles).
* ``train_mode="online"`` (train as you go): each step trains the shared adapter on that step's sequences
  (``epochs`` passes, a fresh optimizer per step), continuing from where the previous step left it.

Intermediate steps return reward 0 (``terminated=False``); the last step (``terminated=True``) quizzes the adapted
model on the questions of **all** the episode's articles, without passages, and returns the gain of the configured
reward kind (``reward``: accuracy, f1 or loglik) over the un-adapted model, averaged over all those questions.
Its info holds per-article results under ``"articles"``.
"""

from __future__ import annotations

import time
from typing import Any

from seal_env.articles import Article, episode_articles, select_articles
from seal_env.config import SealConfig
from seal_env.learner.batching import TrainRow
from seal_env.reward.grading import Grader
from seal_env.reward.pipeline import KINDS, QUESTION_SCORES, RewardPipeline, prepare
from seal_env.reward.quiz import gain, mean_std, quiz, summarize
from seal_env.spaces import UnicodeText, article_space, observation

import gymnasium as gym

TRAIN_MODES = ("pooled", "online")


class ContinualPretrainingEnv(gym.Env):
    """
    ## Description

    SEAL's multi-passage (continued-pretraining) setting: an episode walks through ``n_articles`` articles and
    all their self-edits train **one** LoRA adapter (``train_mode``, see the module docstring), which is then
    quizzed on all the episode's questions.

    ## Action Space

    The current article's self-edit, a ``str`` (the same cleaning and splitting rules as
    ``seal/KnowledgeIncorporation-v0``).

    ## Observation Space

    ``Dict(title: Text, context: Text)`` of the current article, never its questions.

    ## Rewards

    0 at intermediate steps; at the last step, the gain of the ``reward`` kind over the un-adapted model,
    averaged over the questions of all the episode's articles (the mean over ``eval_times`` trainings with seeds
    ``seed, seed + 1, ...``); ``diverged_reward`` if a training diverged.

    ## Starting State

    ``reset(options=...)`` takes ``{"article_indices": [i, ...]}`` or ``{"articles": [Article | dict, ...]}`` (the
    episode is then as long as that list); otherwise ``n_articles`` distinct articles are drawn with
    ``self.np_random``.

    ## Episode End

    ``terminated=True`` at the step of the last article; ``truncated`` is always ``False``.

    ## Info

    Per-article results under ``"articles"`` at the last step; ``step_train`` (online mode) at every step.
    Wall-clock fields are kept out of step infos and are in :attr:`last_timings`.

    ## Arguments

    ``n_articles`` (episode length, default 5; SEAL's CPT runs use 200), ``train_mode`` (``"pooled"`` or
    ``"online"``), ``render_mode`` (``None`` or ``"ansi"``), ``grader``, and every field of
    :class:`seal_env.config.SealConfig`.

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        n_articles: int = 5,
        train_mode: str = "pooled",
        render_mode: str | None = None,
        grader: Grader | str | None = None,
        **settings: Any,
    ):
        if isinstance(grader, str):  # the setting (SealConfig.grader: "lenient" or "judge"), not a callable
            settings["grader"], grader = grader, None
        if not isinstance(n_articles, int) or isinstance(n_articles, bool) or n_articles < 1:
            raise ValueError(f"n_articles must be a positive integer, got {n_articles!r}")
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.cfg = SealConfig.from_kwargs(**settings)
        self.articles = select_articles(self.cfg)
        if n_articles > len(self.articles):
            raise ValueError(
                f"n_articles={n_articles} but split {self.cfg.split!r} of {self.cfg.dataset!r} has "
                f"only {len(self.articles)} articles"
            )
        self.n_articles, self.train_mode, self.render_mode, self.grader = n_articles, train_mode, render_mode, grader
        self.pipeline = RewardPipeline.build(self.cfg, grader)  # the learner and the cached baselines
        self.learner = self.pipeline.learner
        self.observation_space = article_space()
        self.action_space = UnicodeText(max_length=self.cfg.max_action_chars)
        self.episode: list[Article] = []
        self._indices: list[int] = []
        self._pos = 0
        self._done = True
        self._last: dict[str, Any] | None = None
        #: The last episode's wall-clock seconds per phase (kept out of the infos).
        self.last_timings: dict[str, float] = {}

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        episode, indices = episode_articles(self.articles, self.n_articles, self.np_random, options)
        self.episode, self._indices = episode, indices
        self._seed = int(self.np_random.integers(2**31 - 1))
        self._pos, self._done, self._last = 0, False, None
        self._chunks: list[list[TrainRow]] = []  # training data of each step
        self._online: list[dict[str, Any]] = []  # train reports of the steps trained so far (online mode)
        self._bases: list[dict[str, Any]] | None = None
        self._t = {"baseline": 0.0, "train": 0.0, "eval": 0.0}
        if self.train_mode == "online":
            # baselines first: computing one resets the learner, which must then keep its adapter all episode
            self._bases = self._baselines()
            self.learner.reset([self._seed])
        return self._observation(), self._step_info_head()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("the episode is over (or was never started): call reset()")
        cfg = self.cfg
        article = self.episode[self._pos]
        prep = prepare(cfg, self.learner.tokenizer, article, action)  # raises TypeError before any state change
        info = {**self._step_info_head(), "title": article.title, **prep.info}
        self._chunks.append(prep.data)
        if self.train_mode == "online":
            report = self._train_chunk(len(self._chunks) - 1, [self._seed], [self._online])[0]
            info["step_train"] = None if report is None else {k: v for k, v in report.items() if k != "train_seconds"}
        self._pos += 1
        if self._pos < len(self.episode):
            return self._observation(), 0.0, False, False, info
        reward, summary = self._finish()
        self._done, self._last = True, summary
        return self._observation(), reward, True, False, {**info, **summary}

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self.episode:
            return "(no episode: call reset())"
        pos = min(self._pos, len(self.episode) - 1)
        lines = [
            f"Continued pretraining ({self.train_mode}): article {pos + 1}/{len(self.episode)}: "
            f"{self.episode[pos].title}"
        ]
        if self._last:
            s = self._last
            lines.append(
                f"reward ({self.cfg.reward}) {s['reward']:+.4f}  baseline acc {s['baseline_accuracy']:.2f}"
                f" -> adapter acc {s['adapter_accuracy']:.2f} over {s['total_questions']} questions"
            )
            for a in s["articles"]:
                lines.append(f"  {a['title']}: acc {a['baseline_accuracy']:.2f} -> {a['adapter_accuracy']:.2f}")
        return "\n".join(lines)

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the learner's base weights (cached baselines are dropped); an episode in progress is ended."""
        self.pipeline.set_base_weights(weights)
        self._done = True

    # ----------------------------------------------------------------- internals
    def _observation(self) -> dict[str, str]:
        article = self.episode[min(self._pos, len(self.episode) - 1)]
        return observation(article)

    def _step_info_head(self) -> dict[str, Any]:
        pos = min(self._pos, len(self.episode) - 1)
        return {
            "position": pos,
            "n_articles": len(self.episode),
            "article_id": self.episode[pos].id,
            "article_index": self._indices[pos],
            "n_questions": len(self.episode[pos].questions),
        }

    def _baselines(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        bases = [self.pipeline.baselines.get(a) for a in self.episode]  # cached per article
        self._t["baseline"] += time.perf_counter() - t0
        return bases

    def _train_chunk(
        self, i: int, run_seeds: list[int], reports: list[list[dict[str, Any]]]
    ) -> list[dict[str, Any] | None]:
        """Online mode: train each adapter slot (run ``r``) on step ``i``'s data with seed ``run_seeds[r] + i``,
        in one batched pass; a run with nothing to learn, or already diverged, is skipped (None)."""
        data = self._chunks[i]
        train = [bool(data) and not any(rep["diverged"] for rep in run) for run in reports]
        if not any(train):
            return [None] * len(run_seeds)
        out = self.learner.train([data if t else [] for t in train], [s + i for s in run_seeds])
        self._t["train"] += sum(rep["train_seconds"] for rep in out)
        for run, rep, t in zip(reports, out, train, strict=True):
            if t:
                run.append(rep)
        return [rep if t else None for rep, t in zip(out, train, strict=True)]

    def _runs(self) -> list[dict[str, Any]]:
        """Train every run ``r`` of ``eval_times`` (seed ``seed + r``, a fresh adapter each) and quiz it."""
        seeds = [self._seed + r for r in range(self.cfg.eval_times)]
        if self.train_mode == "pooled":  # one batched pass: every run trains on the pool of all steps' sequences
            self.learner.reset(seeds)
            pooled = [row for chunk in self._chunks for row in chunk]
            out = self.learner.train([pooled] * len(seeds), seeds)
            self._t["train"] += sum(rep["train_seconds"] for rep in out)
            return self._quiz([[rep] for rep in out])
        runs = self._quiz([self._online])  # run 0: the adapter trained step by step during the episode
        if len(seeds) > 1:  # runs 1..R-1 replay the steps from fresh adapters, batched
            self.learner.reset(seeds[1:])
            reports: list[list[dict[str, Any]]] = [[] for _ in seeds[1:]]
            for i in range(len(self._chunks)):
                self._train_chunk(i, seeds[1:], reports)
            runs += self._quiz(reports)
        return runs

    def _quiz(self, reports: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Quiz the learner's adapter slots (one per run) on every article of the episode."""
        t0 = time.perf_counter()
        grader = self.pipeline.grader  # the grader given, or the one the settings choose (e.g. the LLM judge)
        per_article = [quiz(self.learner, a, self.cfg.answer_max_tokens, grader) for a in self.episode]
        self._t["eval"] += time.perf_counter() - t0
        return [{"reports": reports[r], "results": [q[r] for q in per_article]} for r in range(len(reports))]

    def _finish(self) -> tuple[float, dict[str, Any]]:
        cfg, t_start = self.cfg, time.perf_counter()
        if self._bases is None:
            self._bases = self._baselines()
        bases = self._bases
        base_all = summarize([q for b in bases for q in b["results"]])
        empty = not any(self._chunks)
        if empty:  # nothing to train on: the adapted model is the base model
            runs = [{"reports": [], "results": [b["results"] for b in bases]} for _ in range(cfg.eval_times)]
        else:
            runs = self._runs()
        rewards = [
            cfg.diverged_reward
            if any(rep["diverged"] for rep in run["reports"])
            else gain(cfg.reward, base_all, summarize([q for res in run["results"] for q in res]))
            for run in runs
        ]
        reward, reward_std = mean_std(rewards)
        adapted = [summarize([q for res in run["results"] for q in res]) for run in runs]
        articles = []
        for j, (article, base) in enumerate(zip(self.episode, bases, strict=True)):
            per_run = [summarize(run["results"][j]) for run in runs]
            b = base["summary"]
            articles.append(
                {
                    "article_id": article.id,
                    "article_index": self._indices[j],
                    "title": article.title,
                    "n_questions": len(article.questions),
                    "baseline_accuracy": b["accuracy"],
                    "adapter_accuracy": mean_std([a["accuracy"] for a in per_run])[0],
                    **{f"{k}_gain": mean_std([a[k] - b[k] for a in per_run])[0] for k in KINDS},
                    "questions": [
                        {
                            **q,
                            "baseline_answer": bq["answer"],
                            "baseline_correct": bq["correct"],
                            **{f"baseline_{k}": bq[k] for k in QUESTION_SCORES},
                        }
                        for q, bq in zip(runs[-1]["results"][j], base["results"], strict=True)
                    ],
                }
            )
        last = runs[-1]["reports"]
        summary: dict[str, Any] = {
            "train_mode": self.train_mode,
            "seed": self._seed,
            "reward_kind": cfg.reward,
            "reward": reward,
            "reward_std": reward_std,
            "rewards": rewards,
            "total_questions": sum(len(a.questions) for a in self.episode),
            **{f"baseline_{k}": base_all[k] for k in KINDS},
            **{f"adapter_{k}": mean_std([a[k] for a in adapted])[0] for k in KINDS},
            "adapter_accuracy_std": mean_std([a["accuracy"] for a in adapted])[1],
            **{f"{k}_gain": mean_std([a[k] - base_all[k] for a in adapted])[0] for k in KINDS},
            "articles": articles,
            "train_losses": [x for rep in last for x in rep["train_losses"]],
            "train_steps": sum(rep["train_steps"] for rep in last),
            "total_sequences": sum(len(c) for c in self._chunks),
            "total_train_tokens": sum(len(ids) for c in self._chunks for ids, _ in c),
            "diverged": any(rep["diverged"] for run in runs for rep in run["reports"]),
        }
        # wall-clock seconds stay out of the info (check_env compares infos exactly)
        self.last_timings = {
            "seconds_baseline": self._t["baseline"],
            "seconds_train": self._t["train"],
            "seconds_eval": self._t["eval"],
            "seconds_finish": time.perf_counter() - t_start,
        }
        return reward, summary
