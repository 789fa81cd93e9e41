"""TRL's GRPOTrainer trained with rewards from a seal-env server (``python -m seal_env.serve``).

    python -m seal_env.serve &                          # SmolLM2 inner loop at the environment's defaults
    python examples/grpo_served.py --url http://127.0.0.1:8000 --policy HuggingFaceTB/SmolLM2-135M-Instruct

The policy (a transformers causal LM: a hub id or a local folder) writes self-edits of the bundled articles;
``SealReward`` (seal_env.integrations.trl) scores them through :class:`seal_env.serve.client.ServedExecutor`: the
``--num-generations`` completions of a prompt are K sessions stepped at once, which the server trains and quizzes in
one ``evaluate_many`` pass. The inner-loop seeds are SealReward's, so the rewards equal a local executor's.
``--history`` writes every reward (step, article, self-edit, seed, reward, info) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from seal_env.integrations.trl import SealReward, seal_dataset
from seal_env.serve.client import ServedExecutor


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="GRPO on SEAL rewards from a seal-env server")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
    p.add_argument("--token-env", metavar="NAME", help="environment variable holding the server's access token")
    p.add_argument("--policy", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="transformers model id or folder")
    p.add_argument("--articles", type=int, default=8, help="bundled articles to train on (default: 8)")
    p.add_argument("--num-generations", type=int, default=5, help="self-edits per prompt, K (default: 5)")
    p.add_argument("--max-steps", type=int, default=10, help="trainer steps, one prompt each (default: 10)")
    p.add_argument("--max-completion-length", type=int, default=256, help="tokens of a self-edit (default: 256)")
    p.add_argument("--learning-rate", type=float, default=1e-6, help="(default: 1e-6)")
    p.add_argument("--seed", type=int, default=0, help="trainer and inner-loop seeds (default: 0)")
    p.add_argument("--output-dir", default="runs/grpo-served", help="trainer output (default: runs/grpo-served)")
    p.add_argument("--history", help="write every reward to this JSON file")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    token = os.environ[args.token_env] if args.token_env else None
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    policy = AutoModelForCausalLM.from_pretrained(args.policy)
    reward = SealReward(executor=ServedExecutor(args.url, token), seed=args.seed)
    config = GRPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.num_generations,  # one prompt (article) per step: K rollouts of it
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        logging_steps=1,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        seed=args.seed,
        save_strategy="no",
    )
    dataset = seal_dataset("bundled", tokenizer=tokenizer).select(range(args.articles))
    reward_funcs: list[Any] = [reward]  # a callable (prompts, completions, **columns) -> list[float]
    trainer = GRPOTrainer(
        model=policy, reward_funcs=reward_funcs, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    if args.history:
        Path(args.history).write_text(json.dumps(reward.history, indent=1, default=str))
    means = [e["rewards/seal_reward/mean"] for e in trainer.state.log_history if "rewards/seal_reward/mean" in e]
    print(f"{trainer.state.global_step} steps, {len(reward.history)} served rewards, mean reward per step: {means}")
    return {"global_step": trainer.state.global_step, "log_history": trainer.state.log_history}


if __name__ == "__main__":
    main()
