"""seal-env in TRL: a dataset of SEAL self-edit prompts and a reward function for ``GRPOTrainer``.

    from trl import GRPOConfig, GRPOTrainer
    from seal_env.integrations.trl import SealReward, seal_dataset

    reward = SealReward({"model": "smollm2-135m"})                 # the SEAL inner loop, in worker processes
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=GRPOConfig(...),
                          train_dataset=seal_dataset("bundled", tokenizer=policy_tokenizer))
    trainer.train()
    reward.close()

The dataset's ``prompt`` column is a SEAL template (``implications`` by default) filled with the article; it is a chat
message list when the policy's tokenizer has a chat template (TRL then applies it), else plain text. The article's
``title``, ``context``, ``questions`` and ``article_id`` are extra columns, which TRL passes to reward functions.

:class:`SealReward` is that reward function: each completion is a self-edit, each reward the environment's
(through an executor; an article's completions are evaluated together). It logs every request's inner-loop seed
and its accuracy / log-likelihood gains to TRL's completions table (``log_extra``) and their means as metrics
(``log_metric``), and keeps everything in ``history``.

Processes: by default (``executor="auto"``) rewards are computed in worker processes, one single-thread worker per
core that memory allows (:class:`seal_env.executors.pool.PoolExecutor`), and in one child process with all cores'
threads when only one fits (never in the trainer's process: mlx and its model stay out of it).
``executor="subprocess"`` is one child process (:class:`seal_env.executors.child_process.SubprocessExecutor`),
``"pool"`` ``workers`` of them, ``"ray"`` ``workers`` Ray actors; ``"inprocess"`` keeps them in this process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from seal_env.articles import Article
from seal_env.executors import Executor
from seal_env.integrations.common import (
    LOGGED,
    RewardSource,
    article_columns,
    article_from_columns,
    completion_text,
    prompt_text,
    resolve_articles,
)


def seal_dataset(
    articles: Sequence[Article] | str = "bundled",
    tokenizer: Any = None,
    template: str = "implications",
    chat: bool | None = None,
) -> Any:
    """A ``datasets.Dataset`` with a ``prompt`` column (the SEAL self-edit prompt) and the article's fields.

    ``articles``: Article objects or a :func:`seal_env.articles.load_articles` source (``"bundled"``, a SEAL/SQuAD
    JSON path). ``chat``: chat-message prompts; default: when ``tokenizer`` has a chat template.
    """
    from datasets import Dataset

    if chat is None:
        chat = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    rows = []
    for article in resolve_articles(articles):
        text = prompt_text(article, template)
        rows.append({"prompt": [{"role": "user", "content": text}] if chat else text, **article_columns(article)})
    if not rows:
        raise ValueError("seal_dataset: no articles")
    return Dataset.from_list(rows)


class SealReward(RewardSource):
    """A TRL reward function: ``reward(prompts, completions, title, context, questions, trainer_state, ...)``.

    Arguments as :class:`seal_env.integrations.common.RewardSource` (``settings`` are the environment settings,
    ``executor`` a kind of :func:`seal_env.executors.make_executor` or an executor, ``seed``, ``workers`` for
    ``"pool"`` and ``"ray"``; ``"auto"``, the default, never computes in this process). The step of the seeds is TRL's
    ``trainer_state.global_step``.
    """

    __name__ = "seal_reward"  # TRL names the reward after it (rewards/seal_reward/mean)

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        executor: Executor | str = "auto",
        seed: int = 0,
        workers: int = 1,
    ):
        super().__init__(settings, executor, seed, workers)

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        *,
        title: Sequence[str],
        context: Sequence[str],
        questions: Sequence[Sequence[dict[str, str]]],
        trainer_state: Any = None,
        log_extra: Any = None,
        log_metric: Any = None,
        **_: Any,
    ) -> list[float]:
        articles = [article_from_columns(t, c, q) for t, c, q in zip(title, context, questions, strict=True)]
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        results = self.rewards(articles, [completion_text(c) for c in completions], step)
        seeds = [h["seed"] for h in self.history[-len(results) :]]
        if log_extra is not None:
            log_extra("seal_seed", seeds)
            for name in LOGGED:
                log_extra(f"seal_{name}", [info.get(name) for _, info in results])
        if log_metric is not None:
            for name in LOGGED:
                values = [float(info[name]) for _, info in results if name in info]
                if values:
                    log_metric(f"seal/{name}", sum(values) / len(values))
        return [float(reward) for reward, _ in results]
