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

import gymnasium as gym

from seal_env.articles import Article
from seal_env.env import KnowledgeIncorporationEnv
from seal_env.grading import Grader
from seal_env.reward import gain, mean_std, quiz, summarize
from seal_env.sequences import build_sequences, sanitize_action, tokenize_sequences

TRAIN_MODES = ("pooled", "online")


class ContinualPretrainingEnv(gym.Env):
    """Observation: ``{"title", "context"}`` of the current article; action: its self-edit (str).

    Keyword arguments: ``n_articles`` (episode length, default 5; SEAL's CPT runs use 200), ``train_mode``
    (``"pooled"`` or ``"online"``), ``render_mode`` (``None`` or ``"ansi"``), ``grader``, and every field of
    :class:`seal_env.config.SealConfig` (the same settings as ``seal/KnowledgeIncorporation-v0``; ``eval_times``
    repeats the episode's training with seeds ``seed, seed + 1, ...`` and averages the final reward).

    ``reset(options=...)`` takes ``{"article_indices": [i, ...]}`` or ``{"articles": [Article | dict, ...]}``
    (the episode is then as long as that list); otherwise ``n_articles`` distinct articles are drawn at random.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, n_articles: int = 5, train_mode: str = "pooled", render_mode: str | None = None,
                 grader: Grader | None = None, **settings: Any):
        if not isinstance(n_articles, int) or isinstance(n_articles, bool) or n_articles < 1:
            raise ValueError(f"n_articles must be a positive integer, got {n_articles!r}")
        if train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        # The single-passage env owns the model, the learner, the article split and the cached baselines.
        self._ki = KnowledgeIncorporationEnv(grader=grader, **settings)
        self.cfg, self.learner, self.articles = self._ki.cfg, self._ki.learner, self._ki.articles
        if n_articles > len(self.articles):
            raise ValueError(f"n_articles={n_articles} but split {self.cfg.split!r} of {self.cfg.dataset!r} has "
                             f"only {len(self.articles)} articles")
        self.n_articles, self.train_mode, self.render_mode = n_articles, train_mode, render_mode
        self.observation_space = self._ki.observation_space
        self.action_space = self._ki.action_space
        self.episode: list[Article] = []
        self._indices: list[int] = []
        self._pos = 0
        self._done = True
        self._last: dict[str, Any] | None = None

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "articles" in options:
            episode = [a if isinstance(a, Article) else Article.from_dict(a) for a in options["articles"]]
            indices = [-1] * len(episode)
        elif "article_indices" in options:
            indices = [int(i) for i in options["article_indices"]]
            bad = [i for i in indices if not 0 <= i < len(self.articles)]
            if bad:
                raise IndexError(f"article_indices {bad} out of range [0, {len(self.articles)})")
            episode = [self.articles[i] for i in indices]
        else:
            indices = [int(i) for i in self.np_random.choice(len(self.articles), self.n_articles, replace=False)]
            episode = [self.articles[i] for i in indices]
        if not episode:
            raise ValueError("an episode needs at least one article")
        self.episode, self._indices = episode, indices
        self._seed = int(self.np_random.integers(2**31 - 1))
        self._pos, self._done, self._last = 0, False, None
        self._chunks: list[list[tuple[list[int], int]]] = []  # training data of each step
        self._online: list[dict[str, Any]] = []  # train reports of the steps trained so far (online mode)
        self._bases: list[dict[str, Any]] | None = None
        self._t = {"baseline": 0.0, "train": 0.0, "eval": 0.0}
        if self.train_mode == "online":
            # baselines first: computing one resets the learner, which must then keep its adapter all episode
            self._bases = self._baselines()
            self.learner.reset(self._seed)
        return self._observation(), self._step_info_head()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("the episode is over (or was never started): call reset()")
        cfg = self.cfg
        text, flags = sanitize_action(action, cfg.max_action_chars)  # raises TypeError before any state change
        article = self.episode[self._pos]
        seqs, seq_info = build_sequences(text, article.title, article.context, split=cfg.split_mode,
                                         title_prefix=cfg.title_prefix, include_passage=cfg.include_passage,
                                         drop_preamble=cfg.drop_preamble, max_sequences=cfg.max_sequences)
        data, tok_info = tokenize_sequences(seqs, self.learner.tokenizer, loss_on=cfg.loss_on,
                                            max_sequence_tokens=cfg.max_sequence_tokens,
                                            max_total_tokens=cfg.max_total_tokens)
        info = {**self._step_info_head(), "title": article.title, "n_sequences": len(data),
                "empty_action": seq_info["self_edit_pieces"] == 0, **seq_info, **tok_info, **flags}
        self._chunks.append(data)
        if self.train_mode == "online":
            report = self._train_chunk(len(self._chunks) - 1, self._seed, self._online)
            info["step_train"] = None if report is None else {k: v for k, v in report.items()
                                                              if k != "train_seconds" or cfg.timings}
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
        lines = [f"Continued pretraining ({self.train_mode}): article {pos + 1}/{len(self.episode)}: "
                 f"{self.episode[pos].title}"]
        if self._last:
            s = self._last
            lines.append(f"reward ({self.cfg.reward}) {s['reward']:+.4f}  baseline acc {s['baseline_accuracy']:.2f}"
                         f" -> adapter acc {s['adapter_accuracy']:.2f} over {s['total_questions']} questions")
            for a in s["articles"]:
                lines.append(f"  {a['title']}: acc {a['baseline_accuracy']:.2f} -> {a['adapter_accuracy']:.2f}")
        return "\n".join(lines)

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the learner's base weights (cached baselines are dropped); an episode in progress is ended."""
        self._ki.set_base_weights(weights)
        self._done = True

    def close(self) -> None:
        self._ki.close()

    # ----------------------------------------------------------------- internals
    def _observation(self) -> dict[str, str]:
        article = self.episode[min(self._pos, len(self.episode) - 1)]
        return {"title": article.title, "context": article.context}

    def _step_info_head(self) -> dict[str, Any]:
        pos = min(self._pos, len(self.episode) - 1)
        return {"position": pos, "n_articles": len(self.episode), "article_id": self.episode[pos].id,
                "article_index": self._indices[pos], "n_questions": len(self.episode[pos].questions)}

    def _baselines(self) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        bases = [self._ki.baseline(a) for a in self.episode]  # cached per article by the single-passage env
        self._t["baseline"] += time.perf_counter() - t0
        return bases

    def _train_chunk(self, i: int, run_seed: int, reports: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Online mode: train the shared adapter on step ``i``'s data (seed ``run_seed + i``); None if skipped."""
        data = self._chunks[i]
        if not data or any(r["diverged"] for r in reports):  # nothing to learn, or the adapter is already broken
            return None
        report = self.learner.train(data, seed=run_seed + i)
        self._t["train"] += report["train_seconds"]
        reports.append(report)
        return report

    def _run(self, r: int) -> list[dict[str, Any]]:
        """Train run ``r`` of the episode (seed ``seed + r``) from a fresh adapter; the train reports."""
        run_seed = self._seed + r
        if self.train_mode == "online":
            if r == 0:
                return self._online  # trained step by step already
            self.learner.reset(run_seed)
            reports: list[dict[str, Any]] = []
            for i in range(len(self._chunks)):
                self._train_chunk(i, run_seed, reports)
            return reports
        self.learner.reset(run_seed)
        pooled = [row for chunk in self._chunks for row in chunk]
        report = self.learner.train(pooled, seed=run_seed)
        self._t["train"] += report["train_seconds"]
        return [report]

    def _finish(self) -> tuple[float, dict[str, Any]]:
        cfg, t_start = self.cfg, time.perf_counter()
        if self._bases is None:
            self._bases = self._baselines()
        bases = self._bases
        base_all = summarize([q for b in bases for q in b["results"]])
        empty = not any(self._chunks)
        rewards: list[float] = []
        runs: list[dict[str, Any]] = []
        for r in range(cfg.eval_times):
            if empty:  # nothing to train on: the adapted model is the base model
                runs.append({"reports": [], "results": [b["results"] for b in bases]})
                rewards.append(0.0)
                continue
            reports = self._run(r)
            t0 = time.perf_counter()
            results = [quiz(self.learner, a, cfg.answer_max_tokens, self._ki.grader) for a in self.episode]
            self._t["eval"] += time.perf_counter() - t0
            diverged = any(rep["diverged"] for rep in reports)
            runs.append({"reports": reports, "results": results})
            rewards.append(cfg.diverged_reward if diverged else
                           gain(cfg.reward, base_all, summarize([q for res in results for q in res])))
        reward, reward_std = mean_std(rewards)
        adapted = [summarize([q for res in run["results"] for q in res]) for run in runs]
        articles = []
        for j, (article, base) in enumerate(zip(self.episode, bases)):
            per_run = [summarize(run["results"][j]) for run in runs]
            b = base["summary"]
            articles.append({
                "article_id": article.id, "article_index": self._indices[j], "title": article.title,
                "n_questions": len(article.questions),
                "baseline_accuracy": b["accuracy"], "adapter_accuracy": mean_std([a["accuracy"] for a in per_run])[0],
                "accuracy_gain": mean_std([a["accuracy"] - b["accuracy"] for a in per_run])[0],
                "f1_gain": mean_std([a["f1"] - b["f1"] for a in per_run])[0],
                "loglik_gain": mean_std([a["loglik"] - b["loglik"] for a in per_run])[0],
                "questions": [{**q, "baseline_answer": bq["answer"], "baseline_correct": bq["correct"],
                               "baseline_f1": bq["f1"], "baseline_loglik": bq["loglik"]}
                              for q, bq in zip(runs[-1]["results"][j], base["results"])],
            })
        last = runs[-1]["reports"]
        summary: dict[str, Any] = {
            "train_mode": self.train_mode, "seed": self._seed, "reward_kind": cfg.reward,
            "reward": reward, "reward_std": reward_std, "rewards": rewards,
            "total_questions": sum(len(a.questions) for a in self.episode),
            "baseline_accuracy": base_all["accuracy"], "baseline_f1": base_all["f1"],
            "baseline_loglik": base_all["loglik"],
            "adapter_accuracy": mean_std([a["accuracy"] for a in adapted])[0],
            "adapter_accuracy_std": mean_std([a["accuracy"] for a in adapted])[1],
            "adapter_f1": mean_std([a["f1"] for a in adapted])[0],
            "adapter_loglik": mean_std([a["loglik"] for a in adapted])[0],
            "accuracy_gain": mean_std([a["accuracy"] - base_all["accuracy"] for a in adapted])[0],
            "f1_gain": mean_std([a["f1"] - base_all["f1"] for a in adapted])[0],
            "loglik_gain": mean_std([a["loglik"] - base_all["loglik"] for a in adapted])[0],
            "articles": articles,
            "train_losses": [x for rep in last for x in rep["train_losses"]],
            "train_steps": sum(rep["train_steps"] for rep in last),
            "total_sequences": sum(len(c) for c in self._chunks),
            "total_train_tokens": sum(len(ids) for c in self._chunks for ids, _ in c),
            "diverged": any(rep["diverged"] for run in runs for rep in run["reports"]),
        }
        if cfg.timings:
            summary.update(seconds_baseline=self._t["baseline"], seconds_train=self._t["train"],
                           seconds_eval=self._t["eval"], seconds_finish=time.perf_counter() - t_start)
        return reward, summary
