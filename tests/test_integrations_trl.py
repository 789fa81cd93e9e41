"""TRL's own GRPOTrainer trains a tiny random torch model for 2 steps with rewards from seal-env (a child process).

The rewards the trainer logged must be the environment's: equal to direct ``evaluate`` calls here for the same
self-edits and seeds (the seeds are logged by the reward function to TRL's completions table).
"""

import statistics

import pytest

pytest.importorskip("trl")
torch = pytest.importorskip("torch")

from seal_env.envs.knowledge import KnowledgeIncorporationEnv  # noqa: E402
from seal_env.integrations.common import article_from_columns  # noqa: E402
from seal_env.integrations.trl import SealReward, seal_dataset  # noqa: E402
from seal_env.models import resolve_model_path  # noqa: E402

SETTINGS = dict(
    model="tiny-random", epochs=1, lora_rank=4, lora_alpha=8.0, answer_max_tokens=4, max_sequences=3, split="all"
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-random")))  # a local folder: no hub


def test_dataset_has_prompts_and_article_columns(tokenizer):
    ds = seal_dataset("bundled", tokenizer=tokenizer)
    assert len(ds) == 40 and {"prompt", "title", "context", "questions", "article_id"} <= set(ds.column_names)
    row = ds[0]
    assert row["prompt"][0]["role"] == "user" and row["context"] in row["prompt"][0]["content"]  # chat template
    plain = seal_dataset("bundled", chat=False)
    assert isinstance(plain[0]["prompt"], str) and plain[0]["title"] in plain[0]["prompt"]
    article = article_from_columns(row["title"], row["context"], row["questions"])
    assert article.id == row["article_id"]
    with pytest.raises(ValueError, match="no articles"):
        seal_dataset([])


def test_grpo_trainer_logs_the_environments_rewards(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    reward = SealReward(SETTINGS)  # the environment runs in a child process
    try:
        args = GRPOConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=2,
            num_generations=2,
            max_completion_length=8,
            max_steps=2,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            seed=0,
            save_strategy="no",
        )
        trainer = GRPOTrainer(
            model=LlamaForCausalLM(config),
            reward_funcs=[reward],
            args=args,
            train_dataset=seal_dataset("bundled", tokenizer=tokenizer).select(range(4)),
            processing_class=tokenizer,
        )
        trainer.train()
    finally:
        reward.close()
    assert trainer.state.global_step == 2 and len(reward.history) == 4  # 2 steps x 1 prompt x 2 generations

    env = KnowledgeIncorporationEnv(**SETTINGS)
    articles = {a.id: a for a in env.articles}
    direct = [env.evaluate(articles[h["article_id"]], h["self_edit"], h["seed"])[0] for h in reward.history]
    assert [h["reward"] for h in reward.history] == pytest.approx(direct, abs=1e-6)
    # per step: the mean reward TRL logged
    logged = [
        entry["rewards/seal_reward/mean"] for entry in trainer.state.log_history if "rewards/seal_reward/mean" in entry
    ]
    per_step = [
        statistics.fmean(r for h, r in zip(reward.history, direct, strict=True) if h["step"] == s) for s in (0, 1)
    ]
    assert logged == pytest.approx(per_step, abs=1e-6)
    # the last batch, completion by completion, as TRL's completions table holds it (with the seeds we logged)
    last = trainer._logs
    for completion, value, seed in zip(
        last["completion"], last["rewards"]["seal_reward"], last["extra"]["seal_seed"], strict=True
    ):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        match = [i for i, h in enumerate(reward.history) if h["seed"] == seed and h["self_edit"] == text]
        assert len(match) == 1 and value == pytest.approx(direct[match[0]], abs=1e-6)
    assert any("seal/loglik_gain" in entry for entry in trainer.state.log_history)
    env.close()
