"""seal_env.reward.multi_article on the tiny random model: driven directly it gives the env's last step, and it
refuses calls out of order."""

from seal_env.reward.multi_article import MultiArticleEpisode

import gymnasium as gym
import pytest

from conftest import TINY

FAST = {**TINY, "epochs": 1, "max_sequence_tokens": 64, "timings": False, "cache": False}
EDITS = ["1. The observatory sits on Mount Tervik.\n2. It was founded in 1911.", "Another line.\nAnd one more."]


@pytest.fixture(scope="module")
def env():
    env = gym.make("seal/ContinualPretraining-v0", **FAST, n_articles=2, reward="loglik").unwrapped
    yield env
    env.close()


@pytest.mark.parametrize("mode", ["pooled", "online"])
def test_driven_directly_it_gives_the_env_summary(env, mode):
    env.train_mode = mode
    env.reset(seed=2, options={"article_indices": [3, 5]})
    steps = [env.step(edit) for edit in EDITS]
    reward, info = steps[-1][1], steps[-1][4]
    run = MultiArticleEpisode(env.pipeline, [env.articles[3], env.articles[5]], [3, 5], info["seed"], mode)
    firsts = [run.add(edit) for edit in EDITS]
    assert [("step_train" in f) for f in firsts] == [mode == "online"] * 2
    again, summary = run.finish()
    assert again == reward and summary == {k: info[k] for k in summary}
    assert [a["article_index"] for a in summary["articles"]] == [3, 5]
    assert set(run.timings) == {"seconds_baseline", "seconds_train", "seconds_eval", "seconds_finish"}


def test_out_of_order_calls_and_bad_arguments_raise(env):
    articles = env.articles[:2]
    with pytest.raises(ValueError, match="train_mode"):
        MultiArticleEpisode(env.pipeline, articles, [0, 1], 0, "sometimes")
    with pytest.raises(ValueError, match="one index per article"):
        MultiArticleEpisode(env.pipeline, articles, [0], 0)
    run = MultiArticleEpisode(env.pipeline, articles, [0, 1], 0)
    with pytest.raises(TypeError, match="must be a str"):
        run.add(None)
    run.add(EDITS[0])
    with pytest.raises(RuntimeError, match="1 of 2 articles"):
        run.finish()
    run.add(EDITS[1])
    with pytest.raises(RuntimeError, match="already"):
        run.add(EDITS[0])
    reward, info = run.finish()
    assert info["total_sequences"] == 6 and info["seed"] == 0
