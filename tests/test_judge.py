"""The LLM judge grader (seal_env.judge) against real HTTP servers on 127.0.0.1: a stand-in that speaks OpenAI's
chat-completions API (deterministic verdicts; slow, malformed, failing, evasive or down on request) and mlx-lm's
own server; its failure rules, retries, judgment cache, key secrecy, settings, and env episodes graded by it."""

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import seal_env  # noqa: F401  (registers the env ids, loads OpenBLAS before mlx)
from seal_env.articles import Article, Question
from seal_env.config import SealConfig
from seal_env.judge import JUDGMENTS_FILE, PROMPT_VERSION, JudgeError, JudgeGrader, JudgmentCache, parse_verdict
from seal_env.reward import cache as reward_cache

import gymnasium as gym
import pytest

from conftest import TINY

SENTINEL = "sk-SENTINEL-k3y-0123456789-never-written"
KEY_VAR = "SEAL_TEST_JUDGE_KEY"
ART = Article(
    "Zorblax",
    "Zorblax is a blue planet with seven moons.",
    (Question("What colour is Zorblax?", "blue"), Question("How many moons does Zorblax have?", "seven")),
)
EDIT = "Zorblax is blue.\nZorblax has seven moons."


# ------------------------------------------------------------------------------------------------ the stand-in
class StandIn:
    """A chat-completions server on 127.0.0.1 whose behaviour a test sets: ``modes`` (one per coming request, then
    ``mode``): "ok" (yes if the gold answer occurs in the prediction, in ``shape``), "yes" (always yes), "slow"
    (``delay`` seconds, then ok), "trickle" (a reply a byte every 0.05 s), "malformed" (200 with a body that is not
    JSON), "500", "401", "maybe" (an
    unexpected verdict), "redirect" (302 to ``location``). It keeps every request (path, headers, body)."""

    def __init__(self) -> None:
        self.mode, self.modes, self.shape, self.delay, self.location = "ok", [], "{verdict}", 0.0, ""
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                stand_in.handle(self)

            def do_GET(self):
                with stand_in.lock:
                    stand_in.requests.append({"path": self.path, "headers": dict(self.headers), "body": None})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # a client that gave up: no traceback
        self.port = self.server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            self.requests.append({"path": h.path, "headers": dict(h.headers), "body": body})
            mode = self.modes.pop(0) if self.modes else self.mode
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if mode == "slow":
                time.sleep(self.delay)
            if mode in ("500", "401"):
                self._send(h, int(mode), b'{"error": {"message": "stand-in failure"}}')
            elif mode == "redirect":
                h.send_response(302)
                h.send_header("Location", self.location)
                h.send_header("Content-Length", "0")
                h.end_headers()
            elif mode == "malformed":
                self._send(h, 200, b'{"choices": [{"message": ')
            elif mode == "trickle":  # a valid reply, one byte at a time: no single read waits long
                data = json.dumps({"choices": [{"message": {"content": "Yes"}}]}).encode()
                h.send_response(200)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                for i in range(len(data)):
                    h.wfile.write(data[i : i + 1])
                    h.wfile.flush()
                    time.sleep(0.05)
            else:
                user = body["messages"][-1]["content"]
                gold = re.search(r"^Gold answer: (.*)$", user, re.M).group(1).lower()
                prediction = re.search(r"^Predicted answer: (.*)$", user, re.M).group(1).lower()
                verdict = "Yes" if mode == "yes" or (mode != "maybe" and gold in prediction) else "No"
                text = "maybe" if mode == "maybe" else self.shape.format(verdict=verdict)
                reply = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": text}}]}
                self._send(h, 200, json.dumps(reply).encode())
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, data: bytes) -> None:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge(server: StandIn, **kwargs) -> JudgeGrader:
    return JudgeGrader(server.base_url, "stand-in", **{"backoff": 0.0, **kwargs})


# ------------------------------------------------------------------------------------------------ verdicts
@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Yes", 1.0),
        ("yes.", 1.0),
        ("**Yes**", 1.0),
        ("No", 0.0),
        ("no.", 0.0),
        ("Answer: no", 0.0),
        ("Final answer: Yes", 1.0),
        ("'yes'", 1.0),
        ('{"verdict": "yes"}', 1.0),
        ('{"verdict": "No"}', 0.0),
        ('```json\n{"correct": true}\n```', 1.0),
        ('{"verdict": 0}', 0.0),
        ("<think>The gold answer is blue, so no doubt.</think>\nYes", 1.0),
        ("Correct", 1.0),
        ("Incorrect.", 0.0),
        ("The predicted answer matches, so yes.", 1.0),
        ("maybe", None),
        ("", None),
        ("It could be yes or no.", None),
        ('{"score": 3}', None),
        (None, None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_grades_by_the_servers_verdict_and_sends_the_request_openai_expects(stand_in, monkeypatch):
    monkeypatch.setenv(KEY_VAR, SENTINEL)
    j = judge(stand_in, api_key_env=KEY_VAR)
    assert j("What colour is Zorblax?", "blue", "It is blue.") == 1.0
    assert j("What colour is Zorblax?", "blue", "Red") == 0.0
    stand_in.shape = "**{verdict}.**"
    assert j("How many moons?", "seven", "seven moons") == 1.0
    first = stand_in.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == f"Bearer {SENTINEL}"
    assert first["body"]["model"] == "stand-in" and first["body"]["temperature"] == 0
    assert [m["role"] for m in first["body"]["messages"]] == ["system", "user"]
    assert j.stats == {"requests": 3, "retries": 0, "failures": 0, "cache_hits": 0}


def test_no_key_variable_or_an_unset_one_sends_no_authorization(stand_in, monkeypatch):
    monkeypatch.delenv(KEY_VAR, raising=False)
    assert judge(stand_in)("q", "blue", "blue") == 1.0
    assert judge(stand_in, api_key_env=KEY_VAR)("q", "blue", "blue") == 1.0
    assert all("Authorization" not in r["headers"] for r in stand_in.requests) and len(stand_in.requests) == 2


# ------------------------------------------------------------------------------------------------ failures
@pytest.mark.parametrize("mode", ["malformed", "500", "slow", "trickle"])
def test_transient_failures_are_retried_then_count_as_wrong(stand_in, mode):
    stand_in.mode, stand_in.delay = mode, 3.0
    j = judge(stand_in, retries=2, timeout=0.5)
    assert j("q", "blue", "blue") == 0.0  # the server would have said yes
    assert len(stand_in.requests) == 3  # the first try and 2 retries
    assert j.stats == {"requests": 3, "retries": 2, "failures": 1, "cache_hits": 0}


def test_a_failure_then_a_verdict_is_the_verdict(stand_in):
    stand_in.modes = ["500", "malformed"]
    j = judge(stand_in, retries=3)
    assert j("q", "blue", "blue") == 1.0
    assert len(stand_in.requests) == 3 and j.stats["retries"] == 2 and j.failures == 0


@pytest.mark.parametrize("mode", ["maybe", "401"])
def test_an_unexpected_verdict_or_a_client_error_is_not_retried(stand_in, mode):
    stand_in.mode = mode
    j = judge(stand_in, retries=3)
    assert j("q", "blue", "blue") == 0.0
    assert len(stand_in.requests) == 1 and j.stats["failures"] == 1


def test_a_server_that_is_down_counts_as_wrong(tmp_path):
    j = JudgeGrader(f"http://127.0.0.1:{free_port()}/v1", "m", retries=2, backoff=0.0, cache=tmp_path / "j.jsonl")
    assert j.grade_many([("q", "blue", "blue"), ("q2", "red", "red")]) == [0.0, 0.0]
    assert j.stats == {"requests": 6, "retries": 4, "failures": 2, "cache_hits": 0}
    assert not (tmp_path / "j.jsonl").exists()  # failures are never stored


@pytest.mark.parametrize("mode", ["malformed", "500", "maybe", "down"])
def test_on_error_raise(stand_in, mode, monkeypatch):
    monkeypatch.setenv(KEY_VAR, SENTINEL)
    stand_in.mode = mode
    url = f"http://127.0.0.1:{free_port()}/v1" if mode == "down" else stand_in.base_url
    j = JudgeGrader(url, "m", retries=1, backoff=0.0, on_error="raise", api_key_env=KEY_VAR)
    with pytest.raises(JudgeError, match="could not grade") as err:
        j.grade_many([("q", "blue", "blue"), ("q", "red", "red")])
    assert SENTINEL not in str(err.value)


def test_redirects_are_not_followed(stand_in, monkeypatch):
    """The key would go to the other host: a redirect is a failure, and the other server sees nothing."""
    monkeypatch.setenv(KEY_VAR, SENTINEL)
    other = StandIn()
    try:
        stand_in.mode, stand_in.location = "redirect", other.base_url + "/chat/completions"
        assert judge(stand_in, api_key_env=KEY_VAR, retries=2)("q", "blue", "blue") == 0.0
        assert len(stand_in.requests) == 1 and other.requests == []
    finally:
        other.close()


def test_grade_many_asks_each_distinct_answer_once_with_bounded_concurrency(stand_in):
    stand_in.mode, stand_in.delay = "slow", 0.3
    items = [(f"q{i}", "blue", "blue" if i % 2 else "red") for i in range(8)]
    j = judge(stand_in, concurrency=3)
    assert j.grade_many(items + items[:3]) == [float(i % 2) for i in range(8)] + [0.0, 1.0, 0.0]
    assert len(stand_in.requests) == 8
    assert 2 <= stand_in.max_in_flight <= 3


# ------------------------------------------------------------------------------------------------ the cache
def test_a_repeat_is_a_cache_hit_without_a_request(stand_in, tmp_path):
    path = tmp_path / "judgments.jsonl"
    assert judge(stand_in, cache=path)("q", "blue", "blue") == 1.0
    again = judge(stand_in, cache=path)  # another process or session: a fresh grader on the same file
    assert again("q", "blue", "blue") == 1.0
    assert len(stand_in.requests) == 1 and again.stats["cache_hits"] == 1 and again.stats["requests"] == 0
    # another model, or another base URL of the same server, is another judge
    assert JudgeGrader(stand_in.base_url, "other", cache=path)("q", "blue", "blue") == 1.0
    assert JudgeGrader(f"http://localhost:{stand_in.port}/v1", "stand-in", cache=path)("q", "blue", "blue") == 1.0
    assert len(stand_in.requests) == 3
    entry = json.loads(path.read_text().splitlines()[0])
    assert entry["score"] == 1.0 and entry["prompt_version"] == PROMPT_VERSION


def test_failures_are_not_cached_and_bad_lines_are_misses(stand_in, tmp_path):
    path = tmp_path / "judgments.jsonl"
    stand_in.mode = "500"
    assert judge(stand_in, cache=path, retries=0)("q", "blue", "blue") == 0.0
    stand_in.mode = "ok"
    assert judge(stand_in, cache=path)("q", "blue", "blue") == 1.0  # asked again: the failure was not kept
    assert len(stand_in.requests) == 2
    lines = path.read_text().splitlines()
    path.write_text('not json\n{"key": "x", "score": 1}\n' + json.dumps({**json.loads(lines[0]), "score": 0.5}))
    assert len(JudgmentCache(path)) == 0  # none valid (the last has no newline and a score that is no verdict)
    assert judge(stand_in, cache=path)("q", "blue", "blue") == 1.0 and len(stand_in.requests) == 3


# ------------------------------------------------------------------------------------------------ settings
def test_settings_are_checked_without_repeating_secrets():
    with pytest.raises(ValueError, match="needs judge_base_url and judge_model"):
        SealConfig(grader="judge")
    with pytest.raises(ValueError, match="NAME of an environment variable") as err:
        SealConfig(judge_api_key_env=SENTINEL)
    assert SENTINEL not in str(err.value)
    with pytest.raises(ValueError, match="looks like an API key") as err:
        SealConfig(judge_api_key_env="AbCdEf0123456789XyZ0123456789")
    assert "AbCdEf" not in str(err.value)
    with pytest.raises(ValueError, match="credentials") as err:
        SealConfig(judge_base_url="https://user:hunter2@example.com/v1")
    assert "hunter2" not in str(err.value)
    with pytest.raises(ValueError, match="judge_on_error"):
        SealConfig(judge_on_error="ignore")
    with pytest.raises(ValueError, match="judge_timeout"):
        SealConfig(judge_timeout=0.0)
    judged = SealConfig(grader="judge", judge_base_url="http://127.0.0.1:1/v1/", judge_model="m")
    lenient = SealConfig()
    assert "grader" not in lenient.inner_loop_key() and "judge_model" not in lenient.inner_loop_key()
    identity = {"base_url": "http://127.0.0.1:1/v1", "model": "m", "prompt_version": PROMPT_VERSION}
    assert judged.inner_loop_key()["grader"] == {"judge": identity} and judged.eval_key()["grader"]["judge"]
    # how the judge is reached decides no verdict: the same key
    other = dataclasses.replace(judged, judge_timeout=5.0, judge_retries=0, judge_concurrency=1)
    assert other.inner_loop_key() == judged.inner_loop_key()


def test_the_command_lines_take_the_judge_settings():
    from agents.command_line import build_parser, parse_args
    from agents.restem import PRESETS, ReSTEMConfig
    from benchmarks import compare_policies

    argv = ["--grader", "judge", "--judge-base-url", "http://127.0.0.1:9/v1", "--judge-model", "m"]
    argv += ["--judge-api-key-env", KEY_VAR, "--judge-on-error", "raise", "--judge-timeout", "5"]
    parser = build_parser("restem", ReSTEMConfig, PRESETS, "")
    cfg, _, _ = parse_args(parser, ReSTEMConfig, PRESETS, argv)
    assert (cfg.env.grader, cfg.env.judge_base_url, cfg.env.judge_model) == ("judge", "http://127.0.0.1:9/v1", "m")
    assert (cfg.env.judge_api_key_env, cfg.env.judge_on_error, cfg.env.judge_timeout) == (KEY_VAR, "raise", 5.0)
    with pytest.raises(SystemExit):
        parse_args(parser, ReSTEMConfig, PRESETS, ["--grader", "judge"])  # no endpoint
    sets = ["grader=judge", "judge_base_url=http://127.0.0.1:9/v1", "judge_model=m", "judge_concurrency=2"]
    args = compare_policies.build_parser().parse_args([x for s in sets for x in ("--set", s)])
    settings = compare_policies.build_settings(args)
    assert settings["grader"] == "judge" and settings["judge_concurrency"] == 2
    # a journal written before the judge existed compares equal to the default (lenient) settings
    old = compare_policies.build_settings(compare_policies.build_parser().parse_args([]))
    predates = {k: v for k, v in old.items() if k != "grader" and not k.startswith("judge_")}
    assert compare_policies.comparable(predates) == compare_policies.comparable(old)
    assert compare_policies.comparable(settings) != compare_policies.comparable(old)


# ------------------------------------------------------------------------------------------------ env episodes
def judge_settings(server: StandIn, folder: Path, **extra) -> dict:
    return dict(
        TINY,
        reward="accuracy",
        grader="judge",
        judge_base_url=server.base_url,
        judge_model="stand-in",
        judge_api_key_env=KEY_VAR,
        cache_dir=str(folder),
        **extra,
    )


def test_env_episode_graded_by_the_judge_is_cached_under_its_own_key(stand_in, tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    monkeypatch.setenv(KEY_VAR, SENTINEL)
    stand_in.mode = "yes"  # every answer is right by this judge; the tiny model's never are by the lenient match
    env = gym.make("seal/KnowledgeIncorporation-v0", **judge_settings(stand_in, tmp_path)).unwrapped
    assert env.cfg.grader == "judge" and env.grader is None  # the setting, not a custom callable
    _, info = env.evaluate(ART, EDIT, seed=3)
    assert info["cache_hit"] is False
    assert [q["correct"] for q in info["questions"]] == [1.0, 1.0]
    assert [q["baseline_correct"] for q in info["questions"]] == [1.0, 1.0]
    asked = len(stand_in.requests)
    assert 1 <= asked <= 4  # at most one request per distinct (question, answer): 2 baseline + 2 adapted
    reward, again = env.evaluate(ART, EDIT, seed=3)
    assert again["cache_hit"] is True and len(stand_in.requests) == asked  # a reward-cache hit: no request
    assert reward == info["reward"] and again["questions"] == info["questions"]
    assert (tmp_path / JUDGMENTS_FILE).is_file()
    fp = env.learner.fingerprint()
    lenient_cfg = dataclasses.replace(env.cfg, grader="lenient", judge_base_url=None, judge_model=None)
    keys = {reward_cache.reward_key(fp, ART, EDIT, c.inner_loop_key(), 3) for c in (env.cfg, lenient_cfg)}
    assert len(keys) == 2
    env.pipeline.set_config(lenient_cfg)  # the same inner loop graded by the lenient match: another key, a miss
    _, lenient = env.evaluate(ART, EDIT, seed=3)
    assert lenient["cache_hit"] is False and [q["correct"] for q in lenient["questions"]] == [0.0, 0.0]
    assert len(stand_in.requests) == asked
    # a new env (another process) finds the judged reward in the cache
    env2 = gym.make("seal/KnowledgeIncorporation-v0", **judge_settings(stand_in, tmp_path)).unwrapped
    _, third = env2.evaluate(ART, EDIT, seed=3)
    assert third["cache_hit"] is True and third["reward"] == info["reward"] and len(stand_in.requests) == asked


def test_env_rewards_with_ungradable_answers_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    down = StandIn()
    down.close()  # nothing listens on its port any more
    settings = judge_settings(down, tmp_path, judge_retries=0)
    env = gym.make("seal/KnowledgeIncorporation-v0", **settings).unwrapped
    for _ in range(2):
        _, info = env.evaluate(ART, EDIT, seed=0)
        assert info["cache_hit"] is False  # never stored: it would hold the failures' zeros
        assert [q["correct"] for q in info["questions"]] == [0.0, 0.0]
    assert env.pipeline.grader.failures > 0 and len(reward_cache.RewardCache(tmp_path)) == 0
    with pytest.raises(JudgeError):
        gym.make("seal/KnowledgeIncorporation-v0", **settings, judge_on_error="raise").unwrapped.evaluate(ART, EDIT)


def test_the_key_is_never_written(stand_in, tmp_path, monkeypatch):
    """The key's variable set to a sentinel: the judge sends it, and no file of the reward cache or of an agents
    run, the settings' repr and the journal hold it."""
    from agents import restem

    monkeypatch.delenv("SEAL_ENV_REWARD_CACHE", raising=False)
    monkeypatch.setenv(KEY_VAR, SENTINEL)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    argv = ["--preset", "tiny", "--wandb-mode", "disabled", "--runs-dir", str(runs), "--name", "judged"]
    argv += ["--rounds", "1", "--articles-per-round", "1", "--heldout-articles", "0", "--cache-dir", str(cache)]
    argv += ["--reward", "accuracy", "--grader", "judge", "--judge-base-url", stand_in.base_url]
    argv += ["--judge-model", "stand-in", "--judge-api-key-env", KEY_VAR]
    restem.main(argv)
    assert stand_in.requests and all(r["headers"]["Authorization"] == f"Bearer {SENTINEL}" for r in stand_in.requests)
    config = json.loads((runs / "judged" / "config.json").read_text())["config"]["env"]
    assert config["grader"] == "judge" and config["judge_api_key_env"] == KEY_VAR
    written = [p for p in [*cache.rglob("*"), *runs.rglob("*")] if p.is_file()]
    assert (cache / JUDGMENTS_FILE) in written and any(p.name == "journal.jsonl" for p in written)
    for path in written:
        assert SENTINEL.encode() not in path.read_bytes(), path
    cfg = SealConfig(**config)
    assert SENTINEL not in repr(cfg) + json.dumps(cfg.to_dict()) + repr(JudgeGrader.from_config(cfg, cache=None))


# ------------------------------------------------------------------------------------------------ mlx-lm's server
@pytest.fixture
def mlx_server():
    """``python -m mlx_lm server`` on the tiny random model, on a free port of 127.0.0.1."""
    import urllib.request

    from seal_env.models import resolve_model_path

    port = free_port()
    cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(resolve_model_path("tiny-random"))]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        for _ in range(600):  # up to a minute to start
            if proc.poll() is not None:
                pytest.fail(f"mlx_lm.server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("mlx_lm.server did not start within a minute")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_mlx_lm_server_replies_are_graded_or_handled(mlx_server, tmp_path):
    """The tiny model's reply is random text: the outcome is a verdict or the ungradable rule, never a crash."""
    j = JudgeGrader(mlx_server, "default_model", retries=0, cache=tmp_path / "j.jsonl")
    scores = j.grade_many([("What colour is Zorblax?", "blue", "blue"), ("How many moons?", "seven", "three")])
    assert all(s in (0.0, 1.0) for s in scores)
    assert j.stats["requests"] == 2 and j.stats["retries"] == 0
    assert j.stats["failures"] + len(JudgmentCache(tmp_path / "j.jsonl")) == 2  # each one graded or ungradable
