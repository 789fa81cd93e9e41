"""``python -m seal_env.serve``: the environment served through OpenEnv, tested against real server processes on
127.0.0.1 (the tiny random model, the in-process executor) and OpenEnv's own client class.

The rewards must be the environment's: equal to ``evaluate`` in this process for the same (article, self-edit,
seed); concurrent steps of one article must be trained together in one ``evaluate_many`` call; bad requests get a
4xx naming the problem while the server goes on; the reward cache outlives clients and server processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openenv")

from seal_env.reward.cache import RewardCache  # noqa: E402
from seal_env.reward.pipeline import split_timings  # noqa: E402
from seal_env.serve.client import SealEnvClient, ServedExecutor, ServerProcess  # noqa: E402

import httpx  # noqa: E402

from conftest import TINY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def setting_flags(settings: dict[str, Any]) -> list[str]:
    """Environment settings as ``python -m seal_env.serve`` flags."""
    return [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]


class Server(ServerProcess):
    """``python -m seal_env.serve`` on the tiny model (TINY settings), on a free port of 127.0.0.1, its log in
    ``folder``."""

    def __init__(self, folder: Path, *flags: str, cache: Path | None = None, env: dict[str, str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.cache, self.log = cache, folder / f"server-{time.monotonic_ns()}.log"
        cache_flags = ["--cache-dir", str(cache)] if cache is not None else ["--no-cache"]
        args = [*setting_flags(TINY), "--executor", "inprocess", *cache_flags, *flags]
        with open(self.log, "w") as err:
            super().__init__(args, env={"SEAL_ENV_REWARD_CACHE": "on", **(env or {})}, stderr=err)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", self.url)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for most tests: a 200 ms batch window, a 100 kB request limit, its own reward cache."""
    folder = tmp_path_factory.mktemp("serve")
    srv = Server(folder, "--batch-window-ms", "200", "--max-request-bytes", "100000", cache=folder / "cache")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    """A server whose batches close only when 4 steps of an article are there (no time window in play)."""
    folder = tmp_path_factory.mktemp("serve-batch")
    srv = Server(folder, "--batch-window-ms", "3000000", "--batch-cap", "4")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


async def episode(url: str, self_edit: str, token: str | None = None, **reset: Any):
    """One session: reset (with ``reset``'s options), step, state -> (reset result, step result, state)."""
    async with SealEnvClient(url, token) as env:
        first = await env.reset(**reset)
        result = await env.step(self_edit)
        return first, result, await env.state()


def counters(url: str) -> dict[str, int]:
    """The server's counters (a session's state)."""

    async def read() -> dict[str, int]:
        async with SealEnvClient(url) as env:
            return (await env.state()).server.model_dump()

    return asyncio.run(read())


def local_reward(env, article_id: str, self_edit: str, seed: int) -> float:
    article = next(a for a in env.articles if a.id == article_id)
    return env.evaluate(article, self_edit, seed)[0]


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_requests_get_a_4xx_naming_the_problem_and_the_server_goes_on(server):
    def post(path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(server.url + path, json=body, timeout=120, **kwargs)

    r = post("/step", {"action": {"self_edit": 3}, "article_index": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["self_edit"]
    assert "valid string" in r.json()["detail"][0]["msg"]
    r = post("/step", {"article_index": 0})  # no action
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "action"]
    assert r.json()["detail"][0]["msg"] == "Field required"
    r = post("/step", {"action": {}, "article_index": 0})  # an action without its self-edit
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["self_edit"]
    r = post("/step", {"action": {"self_edit": "x", "epochs": 3}, "article_index": 0})  # a setting is no action field
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["epochs"]
    r = post("/reset", {"epochs": 3})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("unknown reset option(s) ['epochs']; valid: seed, episode_id, article_index")
    r = post("/step", {"action": {"self_edit": "x"}, "bogus": 1})
    assert r.status_code == 400 and "unknown reset option(s) ['bogus']" in r.json()["detail"]
    r = post("/step", {"action": {"self_edit": "x"}, "article_index": 99})
    assert r.status_code == 400 and r.json()["detail"] == "article_index 99 out of range [0, 40)"
    r = post("/step", {"action": {"self_edit": "x"}, "article": {"title": "T", "context": "C"}})
    assert r.status_code == 400 and "article: missing field 'questions'" in r.json()["detail"]
    r = post("/step", {"action": {"self_edit": "x"}})  # no episode over HTTP (no session)
    assert r.status_code == 409 and r.json()["detail"].startswith("no episode to step: reset first")
    r = post("/reset", {"seed": -1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "seed"]
    big = {"action": {"self_edit": "x" * 100_001}, "article_index": 0}
    r = post("/step", big)
    assert r.status_code == 413 and "over the limit of 100000 bytes" in r.json()["detail"]
    chunks = (part.encode() for part in [json.dumps(big)[:50_000], json.dumps(big)[50_000:]])
    r = httpx.post(server.url + "/step", content=chunks, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]  # a chunked body, no Content-Length

    async def over_websocket() -> tuple[dict, dict, float | None]:
        async with SealEnvClient(server.url) as env:
            with pytest.raises(RuntimeError, match="no episode to step: reset first"):
                await env.step("a self-edit before any reset")
            await env.reset(article_index=1)
            await env._send({"type": "step", "data": {"self_edit": ["not", "a", "string"]}})
            invalid = await env._receive()  # OpenEnv's validation error, with pydantic's errors
            await env._send({"type": "reset", "data": {"article_index": 1, "epochs": 3}})
            unknown = await env._receive()
            result = await env.step("1. The session still works.")  # the same session goes on
            return invalid, unknown, result.reward

    invalid, unknown, reward = asyncio.run(over_websocket())
    assert invalid["type"] == "error" and invalid["data"]["code"] == "VALIDATION_ERROR"
    assert invalid["data"]["errors"][0]["loc"] == ["self_edit"]
    assert unknown["type"] == "error" and "unknown reset option(s) ['epochs']" in unknown["data"]["message"]
    assert isinstance(reward, float)
    # a whole episode in one HTTP request still works after all of that
    r = post("/step", {"action": {"self_edit": "1. One more fact."}, "article_index": 2, "inner_loop_seed": 5})
    assert r.status_code == 200 and r.json()["done"] is True and isinstance(r.json()["reward"], float)
    assert r.json()["observation"]["info"]["seed"] == 5


def test_the_command_line_rejects_bad_settings_before_loading_anything(tmp_path):
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "seal_env.serve", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **env},
            cwd=tmp_path,
        )

    out = run("--bogus", "1")
    assert out.returncode == 2 and "unrecognized arguments: --bogus 1" in out.stderr
    out = run("--epochs", "0")
    assert out.returncode == 2 and "epochs must be a positive integer, got 0" in out.stderr
    out = run("--host", "0.0.0.0")
    assert out.returncode == 2 and "binding to 0.0.0.0 (not loopback) needs an access token" in out.stderr
    out = run("--host", "0.0.0.0", "--token-env", "SEAL_TEST_TOKEN_UNSET")
    assert out.returncode == 2 and "SEAL_TEST_TOKEN_UNSET: that environment variable is not set or empty" in out.stderr
    (tmp_path / "empty").write_text("\n")
    out = run("--token-file", str(tmp_path / "empty"))
    assert out.returncode == 2 and "is empty" in out.stderr
    out = run("--batch-window-ms", "-1")
    assert out.returncode == 2 and "--batch-window-ms must be >= 0" in out.stderr


def test_the_environment_settings_are_the_flags_of_the_agents_command_line():
    from seal_env.config import SealConfig
    from seal_env.serve.cli import build_parser, parse_args

    from agents.command_line import build_parser as agents_parser
    from agents.config import ENV_CLI_SKIP, RunConfig

    def env_flags(parser) -> dict[str, tuple]:
        names = {"--" + n.replace("_", "-") for n in SealConfig.__dataclass_fields__}
        return {
            o: (a.nargs, a.metavar, type(a).__name__)
            for a in parser._actions
            for o in a.option_strings
            if o in names or o in ("--data", *(f"--no-{n[2:]}" for n in names))
        }

    ours, theirs = env_flags(build_parser()), env_flags(agents_parser("x", RunConfig, {"demo": {}}, ""))
    assert {k: v for k, v in ours.items() if k.lstrip("-").replace("no-", "", 1) not in ENV_CLI_SKIP} == theirs
    flags = ["--lora-modules", "q_proj", "k_proj", "--no-include-passage", "--data", "squad:train", "--epochs", "4"]
    _, cfg, token = parse_args([*flags, "--quantize", "none", "--split", "all"])
    assert (cfg.lora_modules, cfg.include_passage, cfg.dataset, cfg.epochs) == (
        ["q_proj", "k_proj"],
        False,
        "squad:train",
        4,
    )
    assert cfg.quantize is None and cfg.split == "all" and token is None


def test_every_request_must_carry_the_access_token(tmp_path):
    token = "s3cret-token"
    (tmp_path / "token").write_text(token + "\n")
    srv = Server(tmp_path, "--token-file", str(tmp_path / "token"))
    try:
        assert httpx.get(srv.url + "/health", timeout=30).status_code == 401
        r = httpx.get(srv.url + "/health", headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 403 and r.json()["detail"] == "wrong access token"
        r = httpx.post(srv.url + "/reset", json={}, timeout=30)
        assert r.status_code == 401 and "missing access token" in r.json()["detail"]
        r = httpx.get(srv.url + "/health", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200
        with pytest.raises(ConnectionError, match="HTTP 401"):
            asyncio.run(episode(srv.url, "x", article_index=0))
        with pytest.raises(ConnectionError, match="HTTP 403"):
            asyncio.run(episode(srv.url, "x", token="wrong", article_index=0))
        first, result, _ = asyncio.run(episode(srv.url, "1. A fact.", token=token, article_index=0))
        assert first.observation.article_index == 0 and isinstance(result.reward, float)
    finally:
        assert srv.stop() == 0, srv.log.read_text()


# ------------------------------------------------------------------------------------------------ episodes
def test_reset_seed_gives_the_local_envs_article_and_reward(server, tiny_env):
    edit = "1. The article states a fact.\n2. It states another."
    observation, info = tiny_env.reset(seed=11)
    _, local, _, _, local_info = tiny_env.step(edit)
    first, result, state = asyncio.run(episode(server.url, edit, seed=11))
    assert first.observation.title == observation["title"] and first.observation.context == observation["context"]
    assert first.observation.article_id == info["article_id"]
    assert first.observation.article_index == info["article_index"]
    served_info, timings = split_timings(result.observation.info)
    assert served_info["seed"] == local_info["seed"] and result.done is True
    assert result.reward == pytest.approx(local, abs=1e-6)
    assert served_info["loglik_gain"] == pytest.approx(local_info["loglik_gain"], abs=1e-6)
    assert timings["cache_hit"] is False and result.observation.cache_hit is False
    assert state.done and state.step_count == 1 and state.article_id == info["article_id"]
    # an index given with the seed: the local env still draws an article first, so the step's seed is the same
    tiny_env.reset(seed=12, options={"article_index": 3})
    _, local, _, _, local_info = tiny_env.step(edit)
    _, result, _ = asyncio.run(episode(server.url, edit, seed=12, article_index=3))
    assert result.observation.info["seed"] == local_info["seed"] and result.reward == pytest.approx(local, abs=1e-6)


def test_sessions_are_isolated(server):
    async def two_sessions() -> None:
        async with SealEnvClient(server.url) as a, SealEnvClient(server.url) as b:
            ra = await a.reset(article_index=3, inner_loop_seed=1)
            rb = await b.reset(article_index=4, inner_loop_seed=2)
            assert ra.observation.article_index == 3 and rb.observation.article_index == 4
            step_b = await b.step("1. A fact for the second session.")
            state_a, state_b = await a.state(), await b.state()
            assert state_b.done and state_b.step_count == 1 and state_b.article_index == 4
            assert not state_a.done and state_a.step_count == 0 and state_a.article_index == 3
            with pytest.raises(RuntimeError, match="no episode to step"):  # b's episode is over; a's is not
                await b.step("again")
            step_a = await a.step("1. A fact for the first session.")
            assert step_a.observation.info["article_id"] == ra.observation.article_id
            assert step_b.observation.info["article_id"] == rb.observation.article_id
            assert (step_a.observation.info["seed"], step_b.observation.info["seed"]) == (1, 2)

    asyncio.run(two_sessions())


# ------------------------------------------------------------------------------------------------ batching
def test_sixteen_concurrent_clients_each_get_their_own_reward(batch_server, tiny_env):
    before = counters(batch_server.url)
    jobs = [(a, f"{k + 1}. Fact {k} about article {a}.", 1000 * a + k) for a in range(4) for k in range(4)]

    async def all_at_once() -> list:
        return list(
            await asyncio.gather(
                *(episode(batch_server.url, e, article_index=a, inner_loop_seed=s) for a, e, s in jobs)
            )
        )

    results = asyncio.run(all_at_once())
    after = counters(batch_server.url)
    assert after["steps"] - before["steps"] == 16 and after["evaluate_many_calls"] - before["evaluate_many_calls"] == 4
    for (a, edit, seed), (first, result, state) in zip(jobs, results, strict=True):
        info = result.observation.info
        assert first.observation.article_index == a and info["article_id"] == first.observation.article_id
        assert info["seed"] == seed and info["batch_adapters"] == 4 and result.observation.batch_size == 4
        assert state.done and state.article_index == a
        assert result.reward == pytest.approx(local_reward(tiny_env, info["article_id"], edit, seed), abs=1e-6)
    assert len({r.observation.batch for _, r, _ in results}) <= 4


def test_k_concurrent_steps_on_one_article_are_one_evaluate_many_call(batch_server):
    before = counters(batch_server.url)

    async def group() -> list:
        return list(
            await asyncio.gather(
                *(episode(batch_server.url, f"{k}. Rollout {k}.", article_index=7, inner_loop_seed=k) for k in range(4))
            )
        )

    results = asyncio.run(group())
    after = counters(batch_server.url)
    assert after["evaluate_many_calls"] - before["evaluate_many_calls"] == 1
    assert after["batches"] - before["batches"] == 1 and after["steps"] - before["steps"] == 4
    assert len({r.observation.batch for _, r, _ in results}) == 1
    assert all(r.observation.batch_size == 4 and r.observation.info["batch_adapters"] == 4 for _, r, _ in results)
    assert len({r.reward for _, r, _ in results}) == 4  # each its own reward


# ------------------------------------------------------------------------------------------------ the cache
def test_a_client_leaving_mid_step_does_not_wedge_the_server_and_its_reward_is_cached(server, tiny_env):
    edit = "1. A self-edit whose client leaves."
    before, entries = counters(server.url), len(RewardCache(server.cache))
    client = (
        "import json, sys\n"
        "from websockets.sync.client import connect\n"
        f"ws = connect({server.url.replace('http', 'ws') + '/ws'!r})\n"
        "ws.send(json.dumps({'type': 'reset', 'data': {'seed': 123, 'article_index': 5}})); ws.recv()\n"
        f"ws.send(json.dumps({{'type': 'step', 'data': {{'self_edit': {edit!r}}}}}))\n"
        "print('stepping', flush=True)\n"
        "sys.stdin.read()\n"
    )
    leaver = subprocess.Popen([sys.executable, "-c", client], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert leaver.stdout is not None and leaver.stdout.readline().strip() == "stepping"
    leaver.kill()  # gone before its answer
    leaver.wait()
    deadline = time.monotonic() + 300
    while counters(server.url)["steps"] == before["steps"]:  # the server finishes the step all the same
        assert time.monotonic() < deadline, server.log.read_text()
        time.sleep(0.2)
    assert len(RewardCache(server.cache)) == entries + 1
    _, again, _ = asyncio.run(episode(server.url, edit, seed=123, article_index=5))
    assert again.observation.cache_hit is True and again.observation.info["cache_hit"] is True
    seed = again.observation.info["seed"]
    assert again.reward == pytest.approx(local_reward(tiny_env, again.observation.info["article_id"], edit, seed))


def test_a_restarted_server_answers_a_repeated_step_from_the_cache(tmp_path):
    edit = "1. A fact that outlives the server."
    srv = Server(tmp_path, cache=tmp_path / "cache")
    try:
        _, first, _ = asyncio.run(episode(srv.url, edit, seed=7))
    finally:
        srv.stop(signal.SIGKILL)
    assert first.observation.cache_hit is False
    srv = Server(tmp_path, cache=tmp_path / "cache")
    try:
        _, again, _ = asyncio.run(episode(srv.url, edit, seed=7))
    finally:
        assert srv.stop() == 0, srv.log.read_text()
    assert again.observation.cache_hit is True and again.reward == first.reward
    assert split_timings(again.observation.info)[0] == split_timings(first.observation.info)[0]


# ------------------------------------------------------------------------------------------------ trainers
def test_served_executor_gives_the_rewards_of_a_local_one(server, tiny_env):
    from seal_env.executors import RewardRequest

    articles = tiny_env.articles
    requests = [RewardRequest(articles[i], f"1. Served fact {i}.", 40 + i) for i in (8, 8, 9)]
    seen: list[int] = []
    results = ServedExecutor(server.url).evaluate(requests, on_result=lambda i, r, info: seen.append(i))
    assert sorted(seen) == [0, 1, 2]
    for req, (reward, info) in zip(requests, results, strict=True):
        assert info["article_id"] == req.article.id and info["seed"] == req.seed
        assert reward == pytest.approx(tiny_env.evaluate(req.article, req.self_edit, req.seed)[0], abs=1e-6)
    with pytest.raises(ValueError, match="adapt=False needs a local executor"):
        ServedExecutor(server.url).evaluate([RewardRequest(articles[0], "x", 0, adapt=False)])
    with pytest.raises(TypeError, match="a self-edit must be a str"):
        ServedExecutor(server.url).evaluate([RewardRequest(articles[0], 5, 0)])  # type: ignore[arg-type]


def test_trl_grpo_example_trains_with_the_servers_rewards(server, tiny_env, tmp_path):
    pytest.importorskip("trl")
    torch = pytest.importorskip("torch")
    import runpy

    from seal_env.models import resolve_model_path

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny-random")))
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
    LlamaForCausalLM(config).save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    example = runpy.run_path(str(ROOT / "examples" / "grpo_served.py"))
    out = example["main"](
        [
            "--url", server.url, "--policy", str(tmp_path / "policy"), "--articles", "2", "--num-generations", "2",
            "--max-steps", "2", "--max-completion-length", "8", "--output-dir", str(tmp_path / "run"),
            "--history", str(tmp_path / "history.json"),
        ]
    )  # fmt: skip
    history = json.loads((tmp_path / "history.json").read_text())
    assert out["global_step"] == 2 and len(history) == 4  # 2 steps x 1 prompt x 2 generations
    for h in history:
        direct = local_reward(tiny_env, h["article_id"], h["self_edit"], h["seed"])
        assert h["reward"] == pytest.approx(direct, abs=1e-6) and h["info"]["seed"] == h["seed"]
    logged = [e["rewards/seal_reward/mean"] for e in out["log_history"] if "rewards/seal_reward/mean" in e]
    per_step = [sum(h["reward"] for h in history if h["step"] == s) / 2 for s in (0, 1)]
    assert logged == pytest.approx(per_step, abs=1e-6)


def test_served_rewards_benchmark_reports_every_figure(tmp_path):
    from benchmarks import served_rewards

    out = served_rewards.main(
        ["--model", "tiny-random", "--articles", "1", "--k", "2", "--json", str(tmp_path / "served.json")]
        + ["--set", "epochs=1", "--set", "answer_max_tokens=4", "--set", "lora_rank=4", "--set", "lora_alpha=8.0"]
    )
    assert json.loads((tmp_path / "served.json").read_text()) == json.loads(json.dumps(out))
    assert out["server_exit_code"] == 0 and len(out["articles"]) == 1
    [row] = out["articles"]
    assert len(row["served_concurrent_batch_adapters"]) == 2 and all(row["served_concurrent_batch_adapters"])
    assert row["max_abs_reward_difference"] < 1e-5
    for way in ("inprocess", "served_concurrent", "served_sequential"):
        assert out[f"{way}_seconds"] > 0 and out[f"rewards_per_hour_{way}"] > 0
    for name in ("speedup_concurrent_over_sequential", "overhead_seconds_per_step", "overhead_fraction"):
        assert isinstance(out[name], float)
