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

from typing import Any

from seal_env.articles import Article, episode_articles, select_articles
from seal_env.config import SealConfig
from seal_env.reward.grading import Grader
from seal_env.reward.multi_article import TRAIN_MODES, MultiArticleEpisode
from seal_env.reward.pipeline import RewardPipeline
from seal_env.spaces import UnicodeText, article_space, observation

import gymnasium as gym


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
        seed = int(self.np_random.integers(2**31 - 1))
        self._pos, self._done, self._last = 0, False, None
        # the training, quiz and summary of the episode (online mode quizzes the baselines here)
        self._run = MultiArticleEpisode(self.pipeline, episode, indices, seed, self.train_mode)
        return self._observation(), self._step_info_head()

    def step(self, action: str):
        if self._done:
            raise RuntimeError("the episode is over (or was never started): call reset()")
        article = self.episode[self._pos]
        # a non-str action raises TypeError in add, before any state changes
        info = {**self._step_info_head(), "title": article.title, **self._run.add(action)}
        self._pos += 1
        if self._pos < len(self.episode):
            return self._observation(), 0.0, False, False, info
        reward, summary = self._run.finish()
        self._done, self._last, self.last_timings = True, summary, self._run.timings
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
