"""The Gymnasium environments (registered in :mod:`seal_env`), thin classes over the reward pipeline:

* :mod:`seal_env.envs.knowledge`: ``seal/KnowledgeIncorporation-v0``, one article, one self-edit, one reward;
* :mod:`seal_env.envs.continued_pretraining`: ``seal/ContinualPretraining-v0``, one adapter learns from the
  self-edits of several articles, then one quiz on all of them;
* :mod:`seal_env.envs.continual`: ``seal/ContinualSelfEdits-v0``, each step's adapter merged into the weights and
  every article so far quizzed again (SEAL's forgetting experiment).

The batched vector env is :mod:`seal_env.vector` (it evaluates through an executor).
"""
