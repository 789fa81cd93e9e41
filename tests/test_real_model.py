"""SmolLM2-135M, few steps: the reward must prefer a self-edit that states the answers over unrelated text."""

from seal_env.envs.knowledge import KnowledgeIncorporationEnv

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_env():
    # no passage appended, so the two conditions differ only by the self-edit; 3 epochs keep it to about a minute
    return KnowledgeIncorporationEnv(
        model="smollm2-135m", split="all", reward="loglik", epochs=3, include_passage=False, answer_max_tokens=16
    )


def test_answer_stating_self_edit_beats_unrelated_text(real_env):
    article = real_env.articles[0]
    stating = "\n".join(f"{q.question} {q.answer}." for q in article.questions)
    unrelated = "The weather in the mountains changes quickly.\nBread is made from flour, water and yeast."
    r_stating, info_stating = real_env.evaluate(article, stating, seed=0)
    r_unrelated, info_unrelated = real_env.evaluate(article, unrelated, seed=0)
    assert r_stating > r_unrelated + 0.5  # nats per answer token
    assert real_env.baselines.computed == 1  # the article's baseline quiz ran once, for both rewards
    # every question's gold answer, stated by the self-edit, became more likely than after the unrelated text,
    # and more likely than before adaptation
    for q_stating, q_unrelated in zip(info_stating["questions"], info_unrelated["questions"], strict=True):
        assert q_stating["loglik"] > q_unrelated["loglik"], q_stating["question"]
        assert q_stating["loglik"] > q_stating["baseline_loglik"], q_stating["question"]


def test_batched_rewards_equal_sequential_on_smollm2():
    # With Adam's bias correction (as SEAL's PyTorch AdamW), training is well conditioned: batching changes float
    # rounding only. (Without it the first steps are 3-6x larger and a 1e-7 rounding difference grows to ~0.05 in
    # the reward within 18 steps: benchmarks/RESULTS.md, "Batched rewards".)
    real_env = KnowledgeIncorporationEnv(
        model="smollm2-135m",
        split="all",
        reward="loglik",
        epochs=3,
        include_passage=False,
        answer_max_tokens=16,
        adam_bias_correction=True,
    )
    article = real_env.articles[1]
    edits = [
        "\n".join(f"{q.question} {q.answer}." for q in article.questions),
        "The weather in the mountains changes quickly.",
        article.context.split(". ")[0] + ".",
    ]
    seeds = [3, 4, 5]
    sequential = [real_env.evaluate(article, e, s) for e, s in zip(edits, seeds, strict=True)]
    batched = real_env.evaluate_many(article, edits, seeds)
    for (rs, si), (rb, bi) in zip(sequential, batched, strict=True):
        assert rb == pytest.approx(rs, abs=1e-4)
        assert bi["train_steps"] == si["train_steps"] and bi["adapter_accuracy"] == si["adapter_accuracy"]
        assert [q["answer"] for q in bi["questions"]] == [q["answer"] for q in si["questions"]]
