"""seal-env as a verifiers environment, scored offline by verifiers' own scoring (no model server, no network).

Finished single-turn rollouts (a prompt and a hand-written self-edit as the reply) are scored with verifiers'
``Task.score`` (its v1 API); the rewards must be the environment's: equal to direct ``evaluate`` calls here for the
same self-edits and seeds (the reward source runs in a child process).
"""

import asyncio
import os
import subprocess
import sys

import pytest

pytest.importorskip("verifiers")

from seal_env.articles import load_articles  # noqa: E402
from seal_env.env import KnowledgeIncorporationEnv  # noqa: E402
from seal_env.integrations.common import article_columns, prompt_text  # noqa: E402
from seal_env.integrations.verifiers import close_reward_sources, load_environment, reward_source  # noqa: E402

import verifiers.v1 as vf  # noqa: E402

SETTINGS = dict(
    model="tiny-random", epochs=1, lora_rank=4, lora_alpha=8.0, answer_max_tokens=4, max_sequences=3, split="all"
)
SELF_EDITS = [
    (0, "1. The observatory is a research station.\n2. It studies the sky."),
    (0, "The passage describes an observatory."),
    (1, "1. A fact from the second article."),
]


@pytest.fixture(scope="module")
def direct_env():
    env = KnowledgeIncorporationEnv(**SETTINGS)
    yield env
    env.close()
    close_reward_sources()


def direct_rewards(env: KnowledgeIncorporationEnv, history: list[dict]) -> dict[str, float]:
    """Self-edit -> the reward of ``evaluate`` in this process with the seed the reward source used."""
    articles = {a.id: a for a in env.articles}
    return {h["self_edit"]: env.evaluate(articles[h["article_id"]], h["self_edit"], h["seed"])[0] for h in history}


def finished_trace(task: vf.Task, reply: str) -> vf.Trace:
    """The trace of a finished single-turn rollout of ``task``: its prompt, then ``reply`` sampled."""
    trace = vf.Trace(
        task=vf.TraceTask(type=type(task).__name__, data=task.data, key=task.key, hash=task.hash),
        agent=vf.AgentInfo(config=vf.AgentConfig()),
    )
    trace.nodes = [
        vf.MessageNode(message=vf.UserMessage(content=task.data.prompt)),
        vf.MessageNode(parent=0, message=vf.AssistantMessage(content=reply), sampled=True),
    ]
    return trace


def test_one_task_per_article_with_prompt_and_article():
    env = load_environment(**SETTINGS)
    tasks, articles = list(env.taskset), load_articles("bundled")
    assert isinstance(env, vf.SingleAgentEnv) and len(tasks) == len(articles) == 40
    for task, article in zip(tasks, articles, strict=True):
        assert task.data.prompt == prompt_text(article, "implications")
        assert {k: getattr(task.data, k) for k in article_columns(article)} == article_columns(article)
        assert task.data.article.id == article.id
    assert tasks[0].config.settings == SETTINGS and tasks[0].config.executor == "subprocess"
    # the config round-trips through its JSON form, as verifiers serves and replays environments
    again = vf.load_environment(vf.resolve_env_config(env.config.model_dump(mode="json")))
    assert [t.data for t in again.taskset] == [t.data for t in tasks]


def test_bad_settings_and_options_are_rejected():
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['bogus'\]; valid settings: .*'epochs'"):
        load_environment(model="tiny-random", bogus=1)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        load_environment(model="tiny-random", epochs=0)
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        load_environment(model="tiny-random", executor="threads")
    with pytest.raises(ValueError, match="unknown self-edit template"):
        load_environment(model="tiny-random", template="nope")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['api'\]"):  # one API: verifiers' v1
        load_environment(model="tiny-random", api="classic")


def test_task_score_gives_the_environments_rewards(direct_env):
    env = load_environment(**SETTINGS)
    tasks = list(env.taskset)
    scored = [(tasks[i], finished_trace(tasks[i], edit)) for i, edit in SELF_EDITS]
    ticks = 0

    async def score_all() -> None:
        nonlocal ticks
        scoring = asyncio.ensure_future(asyncio.gather(*(task.score(trace) for task, trace in scored)))
        while not scoring.done():  # the event loop keeps running while the inner loops train
            ticks += 1
            await asyncio.sleep(0.01)
        await scoring

    asyncio.run(score_all())
    assert ticks > 10
    history = reward_source(SETTINGS).history
    assert sorted(h["self_edit"] for h in history) == sorted(edit for _, edit in SELF_EDITS)
    direct = direct_rewards(direct_env, history)
    seeds = []
    for (task, trace), (_, edit) in zip(scored, SELF_EDITS, strict=True):
        [entry] = [h for h in history if h["self_edit"] == edit]
        assert entry["article_id"] == task.data.article_id and trace.info["seal"]["seed"] == entry["seed"]
        seeds.append(entry["seed"])
        assert trace.rewards["seal_reward"].score == pytest.approx(direct[edit], abs=1e-6)
        assert trace.reward == pytest.approx(direct[edit], abs=1e-6)
        assert trace.metrics["seal_loglik_gain"] == pytest.approx(trace.info["seal"]["loglik_gain"])
    # an article's rollouts share their inner-loop seed; the trace still serialises
    assert seeds[0] == seeds[1] != seeds[2]
    assert scored[0][1].to_record()["rewards"]["seal_reward"]["score"] == pytest.approx(direct[SELF_EDITS[0][1]])


def test_an_older_verifiers_is_an_import_error_that_says_what_to_install(tmp_path):
    old = tmp_path / "verifiers"  # a verifiers 0.3 ahead of the installed one on the path
    old.mkdir()
    (old / "__init__.py").write_text('__version__ = "0.3.1"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    code = "import seal_env.integrations.verifiers"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "ImportError: seal_env.integrations.verifiers needs verifiers >= 0.4: "
        'pip install -U "seal-env[verifiers]" (this is verifiers 0.3.1)'
    )
