"""SmolLM2-135M, few steps: the reward must prefer a self-edit that states the answers over unrelated text."""

import pytest

from seal_env.env import KnowledgeIncorporationEnv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_env():
    # no passage appended, so the two conditions differ only by the self-edit; 3 epochs keep it to about a minute
    return KnowledgeIncorporationEnv(model="smollm2-135m", split="all", reward="loglik", epochs=3,
                                     include_passage=False, answer_max_tokens=16)


def test_answer_stating_self_edit_beats_unrelated_text(real_env):
    article = real_env.articles[0]
    stating = "\n".join(f"{q.question} {q.answer}." for q in article.questions)
    unrelated = "The weather in the mountains changes quickly.\nBread is made from flour, water and yeast."
    r_stating, info_stating = real_env.evaluate(article, stating, seed=0)
    r_unrelated, info_unrelated = real_env.evaluate(article, unrelated, seed=0)
    assert r_stating > r_unrelated + 0.5  # nats per answer token
    assert info_stating["adapter_accuracy"] >= info_unrelated["adapter_accuracy"]
    assert info_stating["baseline_accuracy"] == info_unrelated["baseline_accuracy"]  # computed once, shared
