"""``seal/ContinualSelfEdits-v0``: SEAL's continual self-editing (forgetting) experiment as a Gymnasium env.

An episode is a sequence of ``n_articles`` articles. At step ``k`` the action is a self-edit for article ``k``; a
fresh LoRA adapter is trained on it (plus the passage, ``include_passage``), **merged** into the weights (mlx-lm's
``LoRALinear.fuse``, through :meth:`seal_env.learner.trainer.Learner.fused_weights`), and the merged model -- the model
that step ``k + 1`` trains from -- is quizzed on the questions of articles ``0..k``, without passages. Over an episode
this fills SEAL's ``(K + 1) x K`` lower-triangular matrix: row 0 is the unedited model on all ``K`` articles
(computed at ``reset``), row ``k + 1`` the model after ``k + 1`` merges on articles ``0..k``.
"""

from __future__ import annotations

import statistics
from typing import Any

from seal_env.articles import Article, episode_articles, select_articles
from seal_env.config import SealConfig
from seal_env.reward.grading import Grader
from seal_env.reward.pipeline import RewardPipeline, prepare
from seal_env.reward.quiz import SCORES, quiz, summarize
from seal_env.spaces import UnicodeText, article_space, observation

import gymnasium as gym

#: The scores of every matrix the env keeps (:data:`seal_env.reward.quiz.SCORES`); the reward kind is one of them.
MATRIX_SCORES = SCORES


class ContinualSelfEditsEnv(gym.Env):
    """
    ## Description

    SEAL's continual self-editing experiment (Zweiger et al., 2025, arXiv 2506.10943, section 4.3, "catastrophic
    forgetting"): an episode walks through ``n_articles`` articles; at each step the agent's self-edit for the
    current article trains a fresh LoRA adapter (on the self-edit's pieces plus the passage, as SEAL), which is
    **merged into the weights** that every later step starts from, and the merged model is quizzed on every
    article seen so far. The episode's infos fill SEAL's ``(K + 1) x K`` lower-triangular matrix (``K`` =
    ``n_articles``): row 0 is the unedited model on all ``K`` articles, row ``r`` the model after ``r`` merges on
    articles ``0..r-1``; entries above the diagonal are 0, as in SEAL's files.

    ## Action Space

    The current article's self-edit, a ``str`` (:class:`seal_env.spaces.UnicodeText`; the same cleaning and
    splitting rules as ``seal/KnowledgeIncorporation-v0``). A non-``str`` raises ``TypeError`` and changes
    nothing. A self-edit with nothing to train on (empty, with ``include_passage=False``) merges nothing.

    ## Observation Space

    ``Dict(title: Text, context: Text)`` of the current article, never its questions.

    ## Rewards

    Step ``k``: the current article's score of the ``reward`` kind (accuracy, f1, loglik, ...) after the merge,
    minus its score in row 0 (the unedited model): ``matrix[k + 1][k] - matrix[0][k]``. What happened to the
    earlier articles is in the info (``retention``, ``mean_gain``), not in the reward. A diverged training (loss
    not finite or above ``max_loss``) is **not merged** (the weights stay as they were; the row is quizzed all the
    same) and its step's reward is ``diverged_reward``.

    ## Starting State

    ``reset(options=...)`` takes ``{"article_indices": [i, ...]}`` or ``{"articles": [Article | dict, ...]}`` (the
    episode is then as long as that list); otherwise ``n_articles`` distinct articles of the split are drawn with
    ``self.np_random``. The episode's inner-loop seed is drawn from ``self.np_random`` too; step ``k`` trains with
    ``seed + k``. ``reset`` restores the base weights and quizzes them on the episode's articles (row 0, from the
    pipeline's cached baselines where they exist).

    ## Episode End

    ``terminated=True`` at the step of the last article; ``truncated`` is always ``False``. The base weights the
    env was built with (or last given by :meth:`set_base_weights`) are restored when the episode ends, on
    ``reset``, on ``close``, and when a step raises; stepping again before ``reset`` raises ``RuntimeError``.

    ## Info

    ``reset``: ``metric`` (the ``reward`` kind), ``row`` (row 0: the metric on all ``K`` articles) and ``scores``
    (row 0 of every score kind), the articles (``article_ids``, ``article_indices``) and the episode ``seed``.
    Step ``k``: ``row`` (the metric on articles ``0..k`` after ``k + 1`` merges; length ``k + 1``), ``scores``
    (every score kind on them), ``gain`` (= the reward unless diverged), ``mean_gain`` (mean over articles
    ``0..k`` of the change since row 0), ``retention`` (for each earlier article ``j < k``: its score now minus its
    score right after its own edit, ``matrix[k + 1][j] - matrix[j + 1][j]``), the training (``seed``,
    ``n_sequences`` and what the action cleaning changed, ``train_losses``, ``train_steps``, ``diverged``,
    ``merged``). The last step adds ``matrix`` (the metric's ``(K + 1) x K`` matrix) and ``matrices`` (one per
    score kind). No wall-clock fields: two identical steps give identical infos.

    ## Arguments

    ``n_articles`` (``K``, default 8 as SEAL), ``render_mode`` (``None`` or ``"ansi"``), ``grader`` (a callable
    ``(question, gold, prediction) -> [0, 1]`` that replaces the settings' grader), and every field of
    :class:`seal_env.config.SealConfig` except ``eval_times`` > 1 (one adapter is merged per step) and
    ``quantize`` (a merge into a quantized backbone is not supported).

    ```python
    import gymnasium as gym, seal_env
    env = gym.make("seal/ContinualSelfEdits-v0", model="tiny-random", n_articles=2)
    ```

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(
        self,
        n_articles: int = 8,
        render_mode: str | None = None,
        grader: Grader | str | None = None,
        **settings: Any,
    ):
        if isinstance(grader, str):  # the setting (SealConfig.grader: "lenient" or "judge"), not a callable
            settings["grader"], grader = grader, None
        if not isinstance(n_articles, int) or isinstance(n_articles, bool) or n_articles < 1:
            raise ValueError(f"n_articles must be a positive integer, got {n_articles!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.cfg = SealConfig.from_kwargs(**settings)
        if self.cfg.eval_times != 1:
            raise ValueError(
                f"eval_times must be 1 in seal/ContinualSelfEdits-v0 (each step merges one adapter), "
                f"got {self.cfg.eval_times}; repeat episodes with other seeds instead"
            )
        if self.cfg.quantize is not None:
            raise ValueError("quantize must be None in seal/ContinualSelfEdits-v0: merging into a quantized backbone")
        self.articles = select_articles(self.cfg)
        if n_articles > len(self.articles):
            raise ValueError(
                f"n_articles={n_articles} but split {self.cfg.split!r} of {self.cfg.dataset!r} has "
                f"only {len(self.articles)} articles"
            )
        self.n_articles, self.render_mode, self.grader = n_articles, render_mode, grader
        self.pipeline = RewardPipeline.build(self.cfg, grader)  # the learner and the cached baselines
        self.learner = self.pipeline.learner
        self.observation_space = article_space()
        self.action_space = UnicodeText(max_length=self.cfg.max_action_chars)
        #: The weights every episode starts from (the arrays themselves: mlx arrays are never changed in place).
        self._base = self.learner.base_weights()
        self._merged = False  # whether the learner holds merged weights now
        self.episode: list[Article] = []
        self._indices: list[int] = []
        self._pos = 0
        self._seed = 0
        self._done = True
        #: Per score kind, the rows of the matrix so far (row 0 has ``K`` entries, row ``r`` has ``r``).
        self.rows: dict[str, list[list[float]]] = {}

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.restore_base_weights()
        episode, indices = episode_articles(self.articles, self.n_articles, self.np_random, options)
        self._done = True  # until row 0 is in: a reset that fails leaves no episode to step
        self.episode, self._indices = episode, indices
        self._seed = int(self.np_random.integers(2**31 - 2**16))
        self._pos = 0
        base = [summarize(self.pipeline.baselines.get(a)["results"]) for a in episode]  # the unedited weights
        self.rows = {kind: [[s[kind] for s in base]] for kind in MATRIX_SCORES}
        self._done = False
        info = {
            "metric": self.cfg.reward,
            "row": list(self.rows[self.cfg.reward][0]),
            "scores": {kind: list(rows[0]) for kind, rows in self.rows.items()},
            "n_articles": len(episode),
            "article_ids": [a.id for a in episode],
            "article_indices": list(indices),
            "seed": self._seed,
        }
        return self._observation(), info

    def step(self, action: str):
        if self._done:
            raise RuntimeError("the episode is over (or was never started): call reset()")
        cfg, k = self.cfg, self._pos
        article = self.episode[k]
        prep = prepare(cfg, self.learner.tokenizer, article, action)  # raises TypeError before any state change
        seed = self._seed + k
        try:
            report = {"train_losses": [], "train_steps": 0, "diverged": False}
            merged = False
            if prep.data:
                self.learner.reset([seed])
                report = self.learner.train([prep.data], [seed])[0]
                if not report["diverged"]:
                    fused = self.learner.fused_weights(0)
                    self._merged = merged = True  # before the swap: a swap that fails half-way is undone too
                    self.learner.set_base_weights(fused)
            self.learner.reset([])  # no adapter: the quiz sees the merged weights alone
            now = [
                summarize(quiz(self.learner, a, cfg.answer_max_tokens, self.pipeline.grader)[0])
                for a in self.episode[: k + 1]
            ]
        except BaseException:
            self._end()
            raise
        for kind in MATRIX_SCORES:
            self.rows[kind].append([s[kind] for s in now])
        metric = self.rows[cfg.reward]
        row, first = metric[k + 1], metric[0]
        gain = row[k] - first[k]
        reward = cfg.diverged_reward if report["diverged"] else gain
        info: dict[str, Any] = {
            "position": k,
            "n_articles": len(self.episode),
            "article_id": article.id,
            "article_index": self._indices[k],
            "title": article.title,
            "n_questions": len(article.questions),
            "metric": cfg.reward,
            "row": list(row),
            "scores": {kind: list(rows[k + 1]) for kind, rows in self.rows.items()},
            "reward": reward,
            "gain": gain,
            "mean_gain": statistics.fmean(row[j] - first[j] for j in range(k + 1)),
            "retention": [row[j] - metric[j + 1][j] for j in range(k)],
            "seed": seed,
            "train_losses": report["train_losses"],
            "train_steps": report["train_steps"],
            "diverged": report["diverged"],
            "merged": merged,
            **prep.info,
        }
        self._pos += 1
        terminated = self._pos == len(self.episode)
        if terminated:
            info["matrix"] = self.matrix()
            info["matrices"] = {kind: self.matrix(kind) for kind in MATRIX_SCORES}
            self._end()
        return self._observation(), reward, terminated, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self.episode:
            return "(no episode: call reset())"
        pos = min(self._pos, len(self.episode) - 1)
        lines = [
            f"Continual self-edits: article {pos + 1}/{len(self.episode)}: {self.episode[pos].title} "
            f"({self._pos} merged step(s)); {self.cfg.reward} by row:"
        ]
        for r, row in enumerate(self.rows.get(self.cfg.reward, [])):
            lines.append(f"  {'before' if r == 0 else f'after {r}':>9}: " + " ".join(f"{x:7.3f}" for x in row))
        return "\n".join(lines)

    def close(self) -> None:
        """End any episode and restore the base weights."""
        self._end()
        super().close()

    # ----------------------------------------------------------------- weights
    def matrix(self, kind: str | None = None) -> list[list[float]]:
        """The ``(K + 1) x K`` matrix of score ``kind`` (default: the ``reward`` kind) for the rows filled so far
        (SEAL's layout: entries above the diagonal and rows not reached yet are 0)."""
        kind = kind or self.cfg.reward
        if kind not in MATRIX_SCORES:
            raise ValueError(f"kind must be one of {MATRIX_SCORES}, got {kind!r}")
        n = len(self.episode)
        rows = self.rows.get(kind, [])
        filled = [list(rows[r]) if r < len(rows) else [] for r in range(n + 1)]
        return [row + [0.0] * (n - len(row)) for row in filled]

    def restore_base_weights(self) -> None:
        """Put the base weights back under the adapters if a merge changed them (bit for bit)."""
        if self._merged:
            self.learner.reset([])
            self.learner.set_base_weights(self._base)
            self._merged = False

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the base weights that episodes start from (cached baselines are dropped); an episode in progress is
        ended first."""
        self._end()
        self.pipeline.set_base_weights(weights)
        self._base = self.learner.base_weights()

    def _end(self) -> None:
        self._done = True
        self.restore_base_weights()

    def _observation(self) -> dict[str, str]:
        article = self.episode[min(self._pos, len(self.episode) - 1)]
        return observation(article)
