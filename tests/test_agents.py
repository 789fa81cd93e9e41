"""The agent interface: ready policies, make_policy, the command line, the run journal."""

import dataclasses
import json

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.articles import Article, Question, load_articles
from seal_env.config import SealConfig
from seal_env.models import load_model

import mlx.core as mx
import pytest

from agents import grpo, restem
from agents.base import Agent, Experience, Policy, derive_seed
from agents.config import TINY_ENV, RunConfig
from agents.policies import EmptyPolicy, PassagePolicy, PromptPolicy, ReplayPolicy, make_policy
from agents.run import heldout_policy
from agents.rundir import Run

OBS = [
    {"title": "Tervik Observatory", "context": "Tervik Observatory stands on Mount Hallegrim."},
    {"title": "Kelmsund", "context": "Kelmsund is a town with a lens workshop."},
]
TINY_AGENT = {"env": SealConfig(**TINY_ENV)}  # the tiny preset, with its env as the SealConfig the CLI would build


@pytest.fixture(scope="module")
def tiny_model():
    return load_model("tiny-random")


def test_fixed_policies_follow_the_protocol():
    assert EmptyPolicy().propose(OBS, k=2) == [["", ""], ["", ""]]
    assert PassagePolicy().propose(OBS, k=1) == [[OBS[0]["context"]], [OBS[1]["context"]]]
    assert isinstance(EmptyPolicy(), Policy) and isinstance(make_policy("passage-as-edit"), PassagePolicy)
    assert isinstance(make_policy("empty"), EmptyPolicy)
    for condition in ("none", "passage"):  # compare_policies' conditions, not policies: one meaning each
        with pytest.raises(ValueError, match="unknown policy spec"):
            make_policy(condition)
    assert Experience(None, "x", 1.0).k == 0 and not isinstance(EmptyPolicy(), Agent)


@pytest.mark.parametrize(
    "make_agent",
    [
        lambda: restem.ReSTEM(restem.ReSTEMConfig(**{**restem.PRESETS["tiny"], **TINY_AGENT, "threshold": 0.9})),
        lambda: grpo.GRPO(grpo.GRPOConfig(**{**grpo.PRESETS["tiny"], **TINY_AGENT})),
    ],
    ids=["restem", "grpo"],
)
def test_agents_learn_and_their_state_restores_sampling(make_agent):
    """Both agents follow the Agent protocol. A batch with nothing to learn from (ReSTEM: no reward above the
    threshold; GRPO: equal rewards) leaves the weights as they are; one to learn from changes them; load_state
    restores exactly the saved policy, which samples as before."""
    agent = make_agent()
    assert isinstance(agent, Agent) and isinstance(agent.policy, Policy)
    article = Article(OBS[0]["title"], OBS[0]["context"], (Question("Where is it?", "Mount Hallegrim"),))
    edits = ["1. It stands on Mount Hallegrim.", "Bread is made from flour."]

    def batch(rewards):
        return [Experience(article, e, r, k=j) for j, (e, r) in enumerate(zip(edits, rewards, strict=True))]

    def same(weights, other):
        return weights.keys() == other.keys() and all(mx.array_equal(weights[k], other[k]) for k in weights)

    saved, before = agent.state(), agent.policy.propose(OBS, k=2, seed=1)
    agent.learn(batch([0.5, 0.5]), seed=0)
    assert same(agent.state(), saved)
    stats = agent.learn(batch([1.0, 0.0]), seed=0)
    assert stats.get("sft_steps", stats.get("steps")) >= 1 and not stats["diverged"]
    assert not same(agent.state(), saved)
    agent.load_state(saved)
    assert same(agent.state(), saved) and agent.policy.propose(OBS, k=2, seed=1) == before


def test_replay_policy_matches_articles_by_passage(tmp_path):
    path = tmp_path / "edits.json"
    path.write_text(
        json.dumps(
            [
                {
                    "title": "T",
                    "context": "Tervik Observatory  stands on\nMount Hallegrim.",
                    "completions": ["a", "b", "c"],
                }
            ]
        )
    )
    policy = make_policy(f"replay:{path}")
    assert isinstance(policy, ReplayPolicy)
    assert policy.propose(OBS[:1], k=2) == [["a", "b"]]  # whitespace-normalised match
    with pytest.raises(KeyError, match="Kelmsund"):
        policy.propose(OBS, k=1)
    with pytest.raises(ValueError, match="has 3 self-edits"):
        policy.propose(OBS[:1], k=4)
    with pytest.raises(FileNotFoundError, match="not found"):
        make_policy(f"replay:{tmp_path / 'missing.json'}")
    with pytest.raises(ValueError, match="unknown policy spec"):
        make_policy("gpt5")


def test_replay_policy_reads_the_shared_self_edit_files(shared_data):
    articles = load_articles(shared_data / "squad_seal_eval_dev100.json", limit=3)
    policy = ReplayPolicy(shared_data / "self_edits" / "gpt-4.1_dev100.json")
    edits = policy.propose([{"title": a.title, "context": a.context} for a in articles], k=5)
    assert [len(e) for e in edits] == [5, 5, 5] and all(s.strip() for e in edits for s in e)


def test_prompt_policy_sampling_is_seeded_per_observation_and_sample(tiny_model):
    policy = make_policy("prompt:implications", loaded=tiny_model, max_tokens=6)
    assert isinstance(policy, PromptPolicy)
    both = policy.propose(OBS, k=2, seed=3)
    assert [len(x) for x in both] == [2, 2] and both[0][0] != both[0][1]
    assert policy.propose(OBS, k=2, seed=3) == both
    assert policy.propose(OBS[1:], k=2, seed=3) == both[1:]  # independent of the rest of the batch
    assert policy.propose(OBS, k=2, seed=4) != both
    greedy = make_policy("prompt:rewrite", loaded=tiny_model, max_tokens=4, temperature=0.0)
    assert greedy.propose(OBS[:1], k=2) == [[greedy.propose(OBS[:1])[0][0]] * 2]
    ids, start = policy.training_pair(OBS[0], " 1. A fact.")
    assert ids[:start] == policy.prompt_ids(OBS[0]) and ids[-1] == tiny_model[1].eos_token_id
    with pytest.raises(ValueError, match="unknown self-edit template"):
        make_policy("prompt:nonsense", loaded=tiny_model)


def test_heldout_policy_samples_at_the_heldout_temperature_from_the_same_model(tiny_model):
    policy = make_policy("prompt:implications", loaded=tiny_model, max_tokens=6)
    assert isinstance(policy, PromptPolicy)
    cfg = RunConfig()
    assert heldout_policy(policy, cfg) is policy  # none: the policy itself
    held = heldout_policy(policy, dataclasses.replace(cfg, heldout_temperature=0.0))
    assert isinstance(held, PromptPolicy) and held.model is policy.model and policy.temperature == 1.0
    greedy = make_policy("prompt:implications", loaded=tiny_model, max_tokens=6, temperature=0.0)
    assert held.propose(OBS, seed=3) == greedy.propose(OBS, seed=4) != policy.propose(OBS, seed=3)
    with pytest.raises(ValueError, match="heldout_temperature needs a PromptPolicy"):
        heldout_policy(EmptyPolicy(), dataclasses.replace(cfg, heldout_temperature=0.0))


def test_derive_seed_is_deterministic_and_spread():
    assert derive_seed(0, 1, "train", "abc", 2) == derive_seed(0, 1, "train", "abc", 2)
    assert len({derive_seed(0, r, k) for r in range(5) for k in range(5)}) == 25
    assert 0 <= derive_seed("x") < 2**31 - 2**16


def test_journal_drops_a_record_cut_short_by_a_kill(tmp_path):
    run = Run.create(tmp_path / "r", {"algorithm": "test", "config": {}})
    run.append({"event": "reward", "round": 1, "phase": "train", "article_id": "a", "k": 0, "reward": 0.5})
    run.close()
    with open(tmp_path / "r" / "journal.jsonl", "a") as f:
        f.write('{"event": "reward", "round": 1, "pha')
    run = Run(tmp_path / "r")
    assert run.get("reward", 1, "train", "a", 0)["reward"] == 0.5 and len(run.index) == 1
    run.append({"event": "round", "round": 1, "summary": {}})
    run.close()
    lines = (tmp_path / "r" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["reward", "round"]
    with pytest.raises(FileExistsError, match="--resume"):
        Run.create(tmp_path / "r", {"algorithm": "test", "config": {}})


def test_help_lists_every_setting_and_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_:
        restem.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for text in (
        "--articles-per-round",
        "--k",
        "--threshold",
        "--keep-empty, --no-keep-empty",
        "--heldout-temperature",
        "--epochs",
        "--lora-rank",
        "--data",
        "--resume",
        "--wandb-mode {online,offline,disabled}",
        "--executor {auto,inprocess,pool,ray}",
        "--workers",
        "paper",
        "tiny",
        "learn",
    ):
        assert text in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--articles-per-round", "0"], "articles_per_round must be a positive integer"),
        (["--k", "0"], "k must be a positive integer"),
        (["--data", "/nonexistent/articles.json"], "article file not found"),
        (["--articles-per-round", "1000"], "exceeds the 24 training articles"),  # the learn preset holds 16 out
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--template", "nonsense"], "unknown self-edit template"),
        (["--preset", "huge"], "invalid choice"),
        (["--workers", "2"], "needs --executor pool or ray"),
        (["--resume", "/nonexistent/run"], "not a run directory"),
        (["--heldout-temperature", "-1"], "heldout_temperature must be >= 0 or none"),
    ],
)
def test_bad_settings_exit_with_a_clear_message(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        restem.main(argv + ["--runs-dir", str(tmp_path), "--wandb-mode", "disabled"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was created


def test_grpo_needs_groups(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        grpo.main(["--preset", "tiny", "--k", "1", "--runs-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "k must be >= 2" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing was created


def test_a_wandb_failure_never_stops_a_run(tmp_path, monkeypatch):
    import wandb

    from agents.wandb_logger import Logger

    class Broken:
        def define_metric(self, *args, **kwargs):
            pass

        def log(self, data):
            raise ConnectionError("wandb is down")

        def finish(self):
            raise ConnectionError("wandb is down")

    monkeypatch.setattr(wandb, "init", lambda **kwargs: Broken())
    logger = Logger("offline", "p", "n", tmp_path, {}, "id")
    with pytest.warns(UserWarning, match="wandb logging stopped"):
        logger.log({"x": 1.0})
    logger.log({"x": 2.0}), logger.table("t", ["a"], [[1]], {}), logger.finish()  # silent from now on
    monkeypatch.setattr(wandb, "init", lambda **kwargs: (_ for _ in ()).throw(OSError("no network")))
    assert Logger("online", "p", "n", tmp_path, {}, "id").run is None
