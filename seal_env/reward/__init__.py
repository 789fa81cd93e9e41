"""The reward: from a self-edit to the post-fine-tune QA gain.

* :mod:`seal_env.reward.sequences`: self-edit -> training sequences (SEAL's construction);
* :mod:`seal_env.reward.quiz`: the quiz (answers without the passage) and the gains;
* :mod:`seal_env.reward.grading`: graders (lenient match, exact match, F1); the LLM judge is :mod:`seal_env.judge`;
* :mod:`seal_env.reward.cache`: the persistent reward cache;
* :mod:`seal_env.reward.pipeline`: :class:`~seal_env.reward.pipeline.RewardPipeline`, which ties them to a learner
  (baselines once per article, batched training and quiz, the info);
* :mod:`seal_env.reward.multi_article`: several articles' self-edits training one adapter per run, quizzed on every
  article (the reward of ``seal/ContinualPretraining-v0``).
"""
