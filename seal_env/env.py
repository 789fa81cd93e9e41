"""``seal/KnowledgeIncorporation-v0``: SEAL's single-passage knowledge-incorporation task as a Gymnasium env.

One episode is one step: ``reset`` shows an article (title and passage, never the questions); the action is a
self-edit (any text); ``step`` fine-tunes a fresh LoRA adapter on it, quizzes the adapted model on the
article's questions without the passage, and returns the gain over the un-adapted model as the reward.
"""

from __future__ import annotations

import json
import time
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from seal_env import cache as reward_cache
from seal_env.articles import Article, load_articles, split_articles
from seal_env.config import SealConfig
from seal_env.grading import Grader
from seal_env.inner_loop import Learner
from seal_env.models import load_model
from seal_env.reward import gain, mean_std, quiz, summarize
from seal_env.sequences import build_sequences, sanitize_action, tokenize_sequences
from seal_env.spaces import UnicodeText


def select_articles(cfg: SealConfig) -> list[Article]:
    """The articles of ``cfg.dataset`` in ``cfg.split`` (a deterministic train/held-out split)."""
    articles = load_articles(cfg.dataset)
    if cfg.split == "all":
        return articles
    heldout = int(cfg.heldout) if cfg.heldout >= 1 else cfg.heldout
    train, held = split_articles(articles, heldout=heldout, seed=cfg.split_seed)
    chosen = train if cfg.split == "train" else held
    if not chosen:
        raise ValueError(f"split {cfg.split!r} of {cfg.dataset!r} is empty (heldout={cfg.heldout})")
    return chosen


class KnowledgeIncorporationEnv(gym.Env):
    """Observation: ``{"title", "context"}``; action: a self-edit (str); reward: QA gain after LoRA fine-tuning.

    Keyword arguments are the fields of :class:`seal_env.config.SealConfig` (see README's settings table), plus
    ``grader`` (a callable ``(question, gold, prediction) -> [0, 1]``, e.g. an LLM judge; not JSON-serialisable)
    and ``render_mode`` (``None`` or ``"ansi"``).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, render_mode: str | None = None, grader: Grader | None = None, **settings: Any):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.cfg = SealConfig.from_kwargs(**settings)
        self.render_mode, self.grader = render_mode, grader
        self.articles = select_articles(self.cfg)
        model, tokenizer = load_model(self.cfg.model, quantize=self.cfg.quantize)
        self.learner = Learner(model, tokenizer, self.cfg)
        self.observation_space = spaces.Dict(
            {"title": UnicodeText(max_length=1_000), "context": UnicodeText(max_length=1_000_000)}
        )
        self.action_space = UnicodeText(max_length=self.cfg.max_action_chars)
        self._baselines: dict[str, dict[str, Any]] = {}
        self.article: Article | None = None
        self._done = True
        self._last: dict[str, Any] | None = None

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
        seed = int(self.np_random.integers(2**31 - 1))
        reward, info = self.evaluate(self.article, action, seed=seed)  # raises TypeError before any state change
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
            lines.append(f"reward ({self.cfg.reward}) {i['reward']:+.4f}  baseline acc {i['baseline_accuracy']:.2f}"
                         f" -> adapter acc {i['adapter_accuracy']:.2f}")
            for q in i["questions"]:
                lines.append(f"  Q: {q['question']}\n     gold {q['gold']!r}  base {q['baseline_answer']!r}"
                             f"  adapted {q['answer']!r}")
        return "\n".join(lines)

    def _observation(self) -> dict[str, str]:
        return {"title": self.article.title, "context": self.article.context}

    # ----------------------------------------------------------------- the inner loop
    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Swap the learner's base weights (e.g. a fused, updated policy); cached baselines are dropped."""
        self.learner.set_base_weights(weights)
        self._baselines.clear()

    def baseline(self, article: Article) -> dict[str, Any]:
        """The un-adapted model's quiz on ``article``, computed once per article (the model and settings are fixed)."""
        key = article.id + json.dumps(self.cfg.eval_key(), sort_keys=True)
        if key not in self._baselines:
            self.learner.reset(0)  # lora_b = 0: the adapter adds exactly zero
            results = quiz(self.learner, article, self.cfg.answer_max_tokens, self.grader)
            self._baselines[key] = {"results": results, "summary": summarize(results)}
        return self._baselines[key]

    def evaluate(self, article: Article, self_edit: str, seed: int = 0) -> tuple[float, dict[str, Any]]:
        """Reward and info for one (article, self-edit) pair, independent of the episode state.

        ``eval_times`` repeats use seeds ``seed, seed + 1, ...``; the reward is their mean.
        """
        cfg, t_start = self.cfg, time.perf_counter()
        text, flags = sanitize_action(self_edit, cfg.max_action_chars)
        # The persistent reward cache (seal_env.cache): skipped with a custom grader (not hashable). With timings on,
        # info says cache_hit and its seconds are this call's (a hit: ~0).
        store = key = None
        if reward_cache.enabled(cfg.cache) and self.grader is None:
            store = reward_cache.RewardCache(cfg.cache_dir)
            key = reward_cache.reward_key(self.learner.fingerprint(), article, self_edit, cfg.inner_loop_key(),
                                          seed)
            hit = store.get(key)
            if hit is not None:
                reward, info = hit
                if cfg.timings:
                    info.update(seconds_baseline=0.0, seconds_reset=0.0, seconds_train=0.0, seconds_eval=0.0,
                                seconds_total=time.perf_counter() - t_start, cache_hit=True)
                return reward, info
        t0 = time.perf_counter()
        base = self.baseline(article)
        base_seconds = time.perf_counter() - t0
        seqs, seq_info = build_sequences(text, article.title, article.context, split=cfg.split_mode,
                                         title_prefix=cfg.title_prefix, include_passage=cfg.include_passage,
                                         drop_preamble=cfg.drop_preamble, max_sequences=cfg.max_sequences)
        data, tok_info = tokenize_sequences(seqs, self.learner.tokenizer, loss_on=cfg.loss_on,
                                            max_sequence_tokens=cfg.max_sequence_tokens,
                                            max_total_tokens=cfg.max_total_tokens)
        empty = seq_info["self_edit_pieces"] == 0
        rewards, runs = [], []
        phase = {"reset": 0.0, "train": 0.0, "eval": 0.0}
        for r in range(cfg.eval_times):
            if not data:  # nothing to train on: the adapted model is the base model
                runs.append({"train_losses": [], "train_steps": 0, "diverged": False, "results": base["results"]})
                rewards.append(0.0)
                continue
            t0 = time.perf_counter()
            self.learner.reset(seed + r)
            phase["reset"] += time.perf_counter() - t0
            report = self.learner.train(data, seed=seed + r)
            phase["train"] += report["train_seconds"]
            t0 = time.perf_counter()
            results = quiz(self.learner, article, cfg.answer_max_tokens, self.grader)
            phase["eval"] += time.perf_counter() - t0
            runs.append({**report, "results": results})
            rewards.append(cfg.diverged_reward if report["diverged"] else
                           gain(cfg.reward, base["summary"], summarize(results)))
        reward, reward_std = mean_std(rewards)
        last = runs[-1]
        adapted = [summarize(run["results"]) for run in runs]
        info: dict[str, Any] = {
            "article_id": article.id, "title": article.title, "seed": seed, "reward_kind": cfg.reward,
            "reward": reward, "reward_std": reward_std, "rewards": rewards,
            "baseline_accuracy": base["summary"]["accuracy"], "baseline_f1": base["summary"]["f1"],
            "baseline_loglik": base["summary"]["loglik"],
            "adapter_accuracy": mean_std([a["accuracy"] for a in adapted])[0],
            "adapter_accuracy_std": mean_std([a["accuracy"] for a in adapted])[1],
            "adapter_f1": mean_std([a["f1"] for a in adapted])[0],
            "adapter_loglik": mean_std([a["loglik"] for a in adapted])[0],
            "accuracy_gain": mean_std([a["accuracy"] - base["summary"]["accuracy"] for a in adapted])[0],
            "f1_gain": mean_std([a["f1"] - base["summary"]["f1"] for a in adapted])[0],
            "loglik_gain": mean_std([a["loglik"] - base["summary"]["loglik"] for a in adapted])[0],
            "questions": [{**q, "baseline_answer": b["answer"], "baseline_correct": b["correct"],
                           "baseline_f1": b["f1"], "baseline_loglik": b["loglik"]}
                          for q, b in zip(last["results"], base["results"])],
            "train_losses": last["train_losses"], "train_steps": last["train_steps"],
            "diverged": any(run["diverged"] for run in runs), "empty_action": empty,
            "n_sequences": len(data), **seq_info, **tok_info, **flags,
        }
        if store is not None:
            store.put(key, reward, info)  # without timings: they belong to this call
        if cfg.timings:
            info.update(seconds_baseline=base_seconds, seconds_reset=phase["reset"], seconds_train=phase["train"],
                        seconds_eval=phase["eval"], seconds_total=time.perf_counter() - t_start, cache_hit=False)
        return reward, info
