"""seal-env as a verifiers environment, scored offline by verifiers' own scoring (no model server, no network).

Finished single-turn rollouts (a prompt and a hand-written self-edit as the reply) are scored with verifiers'
``Task.score`` (v1 API) or ``Rubric.score_rollout`` (classic API); the rewards must be the environment's: equal to
direct ``evaluate`` calls here for the same self-edits and seeds (the reward source runs in a child process).
"""

import asyncio

import pytest

verifiers = pytest.importorskip("verifiers")

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
v1_only = pytest.mark.skipif(not hasattr(vf, "SingleAgentEnvConfig"), reason="verifiers.v1 without SingleAgentEnv")


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


@v1_only
def test_one_task_per_article_with_prompt_and_article():
    env = load_environment(**SETTINGS, api="v1")
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
    with pytest.raises(ValueError, match="unknown api"):
        load_environment(model="tiny-random", api="v2")


@v1_only
def test_task_score_gives_the_environments_rewards(direct_env):
    env = load_environment(**SETTINGS, api="v1")
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


@pytest.mark.skipif(not hasattr(verifiers, "SingleTurnEnv"), reason="no classic verifiers API (verifiers >= 0.4)")
def test_classic_rubric_gives_the_environments_rewards(direct_env):
    env = load_environment(**SETTINGS, api="classic")
    assert isinstance(env, verifiers.SingleTurnEnv) and len(env.dataset) == 40
    rows = [env.dataset[i] for i in range(2)]
    assert rows[0]["info"] == article_columns(load_articles("bundled")[0])
    states = [
        {
            "prompt": rows[i]["prompt"],
            "completion": [{"role": "assistant", "content": edit}],
            "answer": "",
            "info": rows[i]["info"],
            "trajectory": [],
        }
        for i, edit in SELF_EDITS
    ]

    async def score_all() -> None:
        await asyncio.gather(*(env.rubric.score_rollout(state) for state in states))

    asyncio.run(score_all())
    direct = direct_rewards(direct_env, reward_source(SETTINGS).history[-len(states) :])
    assert [s["reward"] for s in states] == pytest.approx([direct[edit] for _, edit in SELF_EDITS], abs=1e-6)
