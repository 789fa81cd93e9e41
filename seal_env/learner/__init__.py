"""The inner loop's learner: K LoRA adapters over one frozen model, trained and quizzed together.

* :mod:`seal_env.learner.trainer`: :class:`~seal_env.learner.trainer.Learner`, training, the quiz's answers and
  log-likelihoods, merging an adapter into the weights;
* :mod:`seal_env.learner.lora`: the multi-adapter LoRA layer; :mod:`seal_env.learner.adapter_optim`: AdamW, Adam
  and SGD per adapter slot;
* :mod:`seal_env.learner.batching`: training rows -> padded batches, the loss at loss positions;
* :mod:`seal_env.learner.decode`: greedy batched decoding with rows kept in place;
* :mod:`seal_env.learner.memory`: malloc tuning and handing memory back after a fine-tune.
"""
