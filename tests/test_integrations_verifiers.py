"""seal-env as a verifiers environment, scored offline by verifiers' own scoring (no model server, no network).

Finished single-turn rollouts (a prompt and a hand-written self-edit as the reply) are scored with verifiers'
``Task.score`` (its v1 API); the rewards must be the environment's: equal to direct ``evaluate`` calls here for the
same self-edits and seeds (the reward source runs in a child process).
"""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verifiers")

from seal_env.articles import load_articles  # noqa: E402
from seal_env.envs.knowledge import KnowledgeIncorporationEnv  # noqa: E402
from seal_env.integrations.common import article_columns, prompt_text  # noqa: E402
from seal_env.integrations.verifiers import close_reward_sources, load_environment, reward_source  # noqa: E402
from seal_env.seeding import derive_seed  # noqa: E402

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
    assert scored[0][1].to_record()["rewards"]["seal_reward"]["score"] == pytest.approx(
        direct[SELF_EDITS[0][1]], abs=1e-6
    )  # scored with the other rollout of its article (float rounding of a batch of 2)


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


def test_an_articles_rollouts_are_scored_in_one_batched_call(direct_env):
    env = load_environment(**SETTINGS, seed=1, batch_window_ms=2000)  # its own reward source (seed 1)
    tasks = list(env.taskset)
    rollouts = [(0, "1. First rollout."), (0, "1. Second rollout."), (0, "1. Third rollout."), (1, "1. Alone.")]
    scored = [(tasks[i], finished_trace(tasks[i], edit)) for i, edit in rollouts]

    async def score_all() -> None:
        await asyncio.gather(*(task.score(trace) for task, trace in scored))

    asyncio.run(score_all())
    for (task, trace), (i, edit) in zip(scored, rollouts, strict=True):
        info = trace.info["seal"]
        assert info["batch_adapters"] == (3 if i == 0 else 1)  # the article's rollouts: one evaluate_many pass
        assert info["seed"] == derive_seed(1, 0, task.data.article_id, 0)
        direct = direct_env.evaluate(task.data.article, edit, info["seed"])[0]
        assert trace.reward == pytest.approx(direct, abs=1e-6)
    assert len(reward_source(SETTINGS, seed=1).history) == 4


def test_verifiers_finds_the_taskset_by_id_in_a_fresh_process(tmp_path):
    code = (
        "import json, verifiers.v1 as vf\n"
        "config = vf.resolve_env_config({'taskset': {'id': 'seal-env-verifiers', 'articles': 'bundled'}})\n"
        "env = vf.load_environment(config)\n"
        "print(json.dumps([type(env).__name__, type(env.taskset).__module__, type(config.taskset).__name__,"
        " len(list(env.taskset))]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not the checkout
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [
        "SingleAgentEnv",
        "seal_env.integrations.verifiers",
        "SealTasksetConfig",
        40,
    ]


def test_verifiers_cli_scores_seal_tasks_offline(tmp_path, direct_env):
    """verifiers' own model-free CLI (``vf-validate``, its noop check: the untouched task scored, no agent) finds the
    taskset by id in a fresh process and scores each article with the environment's reward of an empty self-edit."""
    articles = load_articles("bundled")[:2]
    (tmp_path / "articles.json").write_text(json.dumps([a.to_dict() for a in articles]))
    command = [
        str(Path(sys.executable).with_name("vf-validate")),
        "seal-env-verifiers",
        "--only-noop",
        "--rich",
        "False",
        "--runtime.type",
        "subprocess",
        "--taskset.articles",
        str(tmp_path / "articles.json"),
        "--taskset.task.settings",
        json.dumps(SETTINGS),
        "-o",
        str(tmp_path / "out"),
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    [results] = (tmp_path / "out").glob("*/results.jsonl")
    rows = {row["name"]: row for row in map(json.loads, results.read_text().splitlines())}
    assert sorted(rows) == sorted(a.title for a in articles)
    for article in articles:
        direct = direct_env.evaluate(article, "", derive_seed(0, 0, article.id, 0))[0]
        assert rows[article.title]["rewards"]["seal_reward"] == pytest.approx(direct, abs=1e-6)
