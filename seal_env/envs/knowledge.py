"""``seal/KnowledgeIncorporation-v0``: SEAL's single-passage knowledge-incorporation task as a Gymnasium env.

One episode is one step: ``reset`` shows an article (title and passage, never the questions); the action is a
self-edit (any text); ``step`` fine-tunes a fresh LoRA adapter on it, quizzes the adapted model on the
article's questions without the passage, and returns the gain over the un-adapted model as the reward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seal_env.articles import Article, select_articles
from seal_env.config import SealConfig
from seal_env.reward.grading import Grader
from seal_env.reward.pipeline import RewardPipeline, split_timings
from seal_env.spaces import UnicodeText, article_space, observation

import gymnasium as gym


class KnowledgeIncorporationEnv(gym.Env):
    """
    ## Description

    SEAL's knowledge-incorporation task (Zweiger et al., 2025, arXiv 2506.10943, section 3.1): the agent reads a
    passage and writes a *self-edit* (e.g. a list of implications); a fresh LoRA adapter is fine-tuned on it; the
    adapted model answers the passage's questions **without** seeing the passage; the reward is the gain over the
    un-adapted model. One episode is one step.

    ## Action Space

    A self-edit: any ``str`` (:class:`seal_env.spaces.UnicodeText`, up to ``max_action_chars``). It is cleaned by
    fixed rules (control characters removed, lone surrogates replaced, cut at ``max_action_chars``), split into
    training pieces (``split``), each prefixed with the title; the passage is appended (``include_passage``). A
    non-``str`` raises ``TypeError`` and leaves the episode as it was; an empty self-edit is valid.

    ## Observation Space

    ``Dict(title: Text, context: Text)``: the article's title and passage, never its questions.

    ## Rewards

    The gain of the ``reward`` kind of the adapted model over the un-adapted one on the article's questions:
    ``loglik`` (default; mean log-likelihood of the gold answer per answer token), ``accuracy`` and ``f1`` (of
    greedy answers; ``grader`` replaces the match), ``choice`` (the gold answer ranks first among the article's
    answers), ``margin`` (gold minus the other answers' log-likelihood) or ``pmi`` (gold log-likelihood given the
    question minus given the topic alone). The mean over ``eval_times`` inner loops. A diverged inner loop (a
    non-finite or too-large loss) gives ``diverged_reward``.

    ## Starting State

    ``reset`` picks an article: ``options={"article_index": i}``, ``{"article": Article | dict}``, or one drawn
    with ``self.np_random``. The inner-loop seed of ``step`` is drawn from ``self.np_random`` too.

    ## Episode End

    ``step`` always terminates (``terminated=True``, ``truncated=False``); stepping again before ``reset`` raises.

    ## Info

    Every reward kind's baseline, adapter value and gain, per-question results (``questions``), the training
    sequences' counts and losses, what the action cleaning changed, and ``diverged``. Wall-clock fields
    (``seconds_*``, ``cache_hit``, ``batch_adapters``) are kept out of step infos, so two identical steps give
    identical infos, and are in :attr:`last_timings` (and in :meth:`evaluate`'s info).

    ## Arguments

    The fields of :class:`seal_env.config.SealConfig` (README's settings table; the setting ``grader="judge"`` is
    an LLM judge, docs/judge.md), plus ``grader`` (a callable ``(question, gold, prediction) -> [0, 1]`` that
    replaces the setting's; it switches the reward cache off) and
    ``render_mode`` (``None`` or ``"ansi"``).

    ```python
    import gymnasium as gym, seal_env
    env = gym.make("seal/KnowledgeIncorporation-v0", model="tiny-random")
    ```

    ## Version History

    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, render_mode: str | None = None, grader: Grader | str | None = None, **settings: Any):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if isinstance(grader, str):  # the setting (SealConfig.grader: "lenient" or "judge"), not a callable
            settings["grader"], grader = grader, None
        self.cfg = SealConfig.from_kwargs(**settings)
        self.render_mode, self.grader = render_mode, grader
        self.articles = select_articles(self.cfg)
        self.pipeline = RewardPipeline.build(self.cfg, grader)
        self.learner = self.pipeline.learner
        self.observation_space = article_space()
        self.action_space = UnicodeText(max_length=self.cfg.max_action_chars)
        self.article: Article | None = None
        self._done = True
        self._last: dict[str, Any] | None = None
        #: The last step's wall-clock fields (``seconds_*``, ``cache_hit``, ``batch_adapters``), kept out of its info.
        self.last_timings: dict[str, Any] = {}

    # ----------------------------------------------------------------- Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Pick an article: ``options={"article_index": i}`` or ``{"article": Article | dict}``, else at random."""
        super().reset(seed=seed)
        options = options or {}
        if "article" in options:
            art = options["article"]
            self.article = art if isinstance(art, Article) else Article.from_dict(art)
            index = -1
        else:
            index = int(options.get("article_index", self.np_random.integers(len(self.articles))))
            if not 0 <= index < len(self.articles):
                raise IndexError(f"article_index {index} out of range [0, {len(self.articles)})")
            self.article = self.articles[index]
        self._done, self._last = False, None
        info = {"article_id": self.article.id, "article_index": index, "n_questions": len(self.article.questions)}
        return self._observation(), info

    def step(self, action: str):
        if self.article is None or self._done:
            raise RuntimeError("call reset() before step(): each episode is a single step")
        if not isinstance(action, str):  # before the seed is drawn: the episode stays exactly as it was
            raise TypeError(f"a self-edit must be a str, got {type(action).__name__}")
        seed = int(self.np_random.integers(2**31 - 1))
        reward, info = self.evaluate(self.article, action, seed=seed)
        info, self.last_timings = split_timings(info)  # step infos stay deterministic (check_env compares them)
        self._done, self._last = True, info
        return self._observation(), reward, True, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self.article is None:
            return "(no article: call reset())"
        lines = [f"Article: {self.article.title} ({len(self.article.questions)} questions)"]
        if self._last:
            i = self._last
            lines.append(
                f"reward ({self.cfg.reward}) {i['reward']:+.4f}  baseline acc {i['baseline_accuracy']:.2f}"
                f" -> adapter acc {i['adapter_accuracy']:.2f}"
            )
            for q in i["questions"]:
                lines.append(
                    f"  Q: {q['question']}\n     gold {q['gold']!r}  base {q['baseline_answer']!r}"
                    f"  adapted {q['answer']!r}"
                )
        return "\n".join(lines)

    def _observation(self) -> dict[str, str]:
        assert self.article is not None  # called by reset and step, after an article is picked
        return observation(self.article)

    # ----------------------------------------------------------------- the inner loop
    @property
    def baselines(self):
        """The un-adapted model's quiz per article (:class:`seal_env.reward.pipeline.Baselines`), computed once each."""
        return self.pipeline.baselines

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the learner's base weights (e.g. a fused, updated policy); cached baselines are dropped."""
        self.pipeline.set_base_weights(weights)

    def evaluate(self, article: Article, self_edit: str, seed: int = 0) -> tuple[float, dict[str, Any]]:
        """Reward and info for one (article, self-edit) pair, independent of the episode state.

        ``eval_times`` repeats use seeds ``seed, seed + 1, ...``; the reward is their mean.
        """
        return self.pipeline.evaluate(article, self_edit, seed)

    def evaluate_many(
        self, article: Article, self_edits: Sequence[str], seeds: Sequence[int], *, adapt: bool = True
    ) -> list[tuple[float, dict[str, Any]]]:
        """``[evaluate(article, e, s) for e, s in zip(self_edits, seeds)]``, trained and quizzed together in
        passes of up to ``max_batch_adapters`` inner loops (see
        :meth:`seal_env.reward.pipeline.RewardPipeline.evaluate_many`; ``adapt=False``: SEAL's no-adaptation
        condition)."""
        return self.pipeline.evaluate_many(article, self_edits, seeds, adapt=adapt)
