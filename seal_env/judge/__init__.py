"""An LLM judge grader on any OpenAI-compatible chat-completions endpoint (SEAL grades with GPT-4.1).

:class:`JudgeGrader` asks a chat model, once per (question, gold answer, prediction), whether the prediction gives
the gold answer, and reads a yes/no verdict from the reply (:func:`parse_verdict`): 1.0 for yes, 0.0 for no. It is
a :data:`seal_env.reward.grading.Grader` (a callable ``(question, gold, prediction) -> score``) with a batch method,
:meth:`JudgeGrader.grade_many`, that sends up to ``concurrency`` requests at once from a thread pool.

* Endpoint: ``POST <base_url>/chat/completions`` (OpenAI's API, vLLM, llama.cpp's ``llama-server``,
  ``mlx_lm.server``, ...), through the standard library (no HTTP dependency). The API key is read, at each
  request, from the environment variable *named* ``api_key_env``; the key itself is never a setting and is never
  written anywhere. No ``api_key_env``, or an unset variable, sends no ``Authorization`` header (local servers).
  Redirects are not followed (the key would go to the other host).
* Failures: a request that times out (``timeout`` seconds for the whole request), cannot connect, gets HTTP 408,
  409, 425, 429 or 5xx, or a reply that is not a chat completion is retried up to ``retries`` times after the first
  try, after ``backoff * attempt`` seconds (or the server's ``Retry-After``, up to a minute). Another HTTP status
  or a reply with no yes/no verdict is not retried. An answer that cannot be graded counts as wrong (0.0, SEAL's
  rule: ``on_error="wrong"``), or raises :class:`JudgeError` (``on_error="raise"``); ``stats`` counts requests,
  retries, failures and cache hits.
* Cache: judgments are stored in a JSON-lines file (:class:`JudgmentCache`; the env puts it in the reward cache
  folder as ``judgments.jsonl``) under a SHA-256 of (base URL, model, :data:`PROMPT_VERSION`, question, gold,
  prediction); a repeat is answered from it without a request. Only real verdicts are stored, never failures.

The prompt and the reading of a reply are :mod:`seal_env.judge.prompt`, the cache :mod:`seal_env.judge.cache`.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from seal_env.judge.cache import JUDGMENTS_FILE, JudgmentCache, judgment_key
from seal_env.judge.prompt import PROMPT_VERSION, judge_messages, parse_verdict

log = logging.getLogger(__name__)

__all__ = [
    "JUDGE_SETTINGS",
    "JUDGMENTS_FILE",
    "PROMPT_VERSION",
    "JudgeError",
    "JudgeGrader",
    "JudgmentCache",
    "api_key_env_problem",
    "base_url_problem",
    "judge_key",
    "judgment_key",
    "parse_verdict",
]

ON_ERROR = ("wrong", "raise")
#: The settings of :class:`seal_env.config.SealConfig` that configure the judge.
JUDGE_SETTINGS = (
    "grader",
    "judge_base_url",
    "judge_model",
    "judge_api_key_env",
    "judge_timeout",
    "judge_retries",
    "judge_concurrency",
    "judge_on_error",
    "judge_max_tokens",
)
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, *range(520, 530)})
MAX_RETRY_AFTER = 60.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JudgeError(RuntimeError):
    """The judge could not grade an answer (raised with ``on_error="raise"``)."""


# --------------------------------------------------------------------------------------------- settings checks
def normalize_base_url(url: str) -> str:
    """``url`` without surrounding spaces, trailing slashes and a trailing ``/chat/completions``: the endpoint's
    identity (``https://api.openai.com/v1/`` and ``https://api.openai.com/v1`` are the same judge)."""
    url = url.strip().rstrip("/")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")].rstrip("/")
    return url


def base_url_problem(url: Any) -> str | None:
    """Why ``url`` cannot be a judge's base URL (an http(s) URL with a host and no credentials, query or
    fragment), or None. The message never repeats the URL (it could hold a secret)."""
    if not isinstance(url, str) or not url.strip():
        return "must be an http:// or https:// URL, e.g. https://api.openai.com/v1"
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host, e.g. https://api.openai.com/v1"
    if "@" in parts.netloc or parts.query or parts.fragment:
        return "must not hold credentials, a query or a fragment (the API key goes in judge_api_key_env)"
    return None


def api_key_env_problem(name: Any) -> str | None:
    """Why ``name`` cannot be the name of the environment variable holding the API key, or None. The message never
    repeats the value: it may be a key given by mistake."""
    if name is None:
        return None
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        return "must be the NAME of an environment variable (letters, digits, _), not the key itself"
    mixed = any(c.islower() for c in name) and any(c.isupper() for c in name) and any(c.isdigit() for c in name)
    if len(name) >= 24 and mixed:
        return "looks like an API key; give the NAME of the environment variable that holds it"
    return None


# --------------------------------------------------------------------------------------------------- the judge
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        return None  # the HTTPError of the 3xx goes to the caller: the Authorization header stays here


class _Failure(Exception):
    """One failed try: ``retry`` says whether another try may help; ``wait``: the server's Retry-After."""

    def __init__(self, reason: str, retry: bool, wait: float | None = None):
        super().__init__(reason)
        self.retry, self.wait = retry, wait


class JudgeGrader:
    """A yes/no LLM judge on an OpenAI-compatible endpoint: ``judge(question, gold, prediction) -> 1.0 | 0.0``.

    Args:
        base_url: the endpoint's base URL (``<base_url>/chat/completions`` is posted to), e.g.
            ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8080/v1"``.
        model: the model name sent with each request, e.g. ``"gpt-4.1"``.
        api_key_env: the NAME of the environment variable holding the API key (read at each request); None or an
            unset variable: no key.
        timeout: seconds one request may take, from connecting to the last byte of the reply.
        retries: tries after the first failed one (SEAL: 3), ``backoff * attempt`` seconds apart.
        concurrency: requests in flight at once in :meth:`grade_many`.
        on_error: ``"wrong"``: an answer that cannot be graded scores 0.0 (SEAL's rule); ``"raise"``: JudgeError.
        max_tokens: the reply's token limit (a yes/no needs few; a reasoning model more).
        cache: a :class:`JudgmentCache`, or a path for one; None keeps no judgments.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.5,
        concurrency: int = 8,
        on_error: str = "wrong",
        max_tokens: int = 16,
        cache: JudgmentCache | str | os.PathLike[str] | None = None,
    ):
        problem = base_url_problem(base_url)
        if problem:
            raise ValueError(f"base_url {problem}")
        problem = api_key_env_problem(api_key_env)
        if problem:
            raise ValueError(f"api_key_env {problem}")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a non-empty model name, e.g. 'gpt-4.1'")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not (timeout > 0 and backoff >= 0 and retries >= 0 and concurrency >= 1 and max_tokens >= 1):
            raise ValueError("need timeout > 0, backoff >= 0, retries >= 0, concurrency >= 1 and max_tokens >= 1")
        self.base_url, self.model = normalize_base_url(base_url), model.strip()
        self.url = self.base_url + "/chat/completions"
        self.api_key_env, self.timeout, self.retries, self.backoff = api_key_env, float(timeout), retries, backoff
        self.concurrency, self.on_error, self.max_tokens = concurrency, on_error, max_tokens
        self.cache = cache if isinstance(cache, JudgmentCache) or cache is None else JudgmentCache(cache)
        self.identity = {"base_url": self.base_url, "model": self.model, "prompt_version": PROMPT_VERSION}
        #: requests sent, retries among them, answers that could not be graded, and judgments from the cache.
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "cache_hits": 0}
        self._lock = threading.Lock()
        loopback = urllib.parse.urlsplit(self.url).hostname in _LOOPBACK
        handlers: list[Any] = [_NoRedirect()] + ([urllib.request.ProxyHandler({})] if loopback else [])
        self._opener = urllib.request.build_opener(*handlers)

    @classmethod
    def from_config(cls, cfg: Any, cache: JudgmentCache | str | os.PathLike[str] | None = None) -> JudgeGrader:
        """The judge of settings ``cfg`` (a :class:`seal_env.config.SealConfig` with ``grader="judge"``), keeping
        its judgments in ``cache`` (the env passes ``<reward cache folder>/judgments.jsonl``, or None when the reward
        cache is off)."""
        if cfg.judge_base_url is None or cfg.judge_model is None:
            raise ValueError("grader='judge' needs judge_base_url and judge_model (docs/judge.md)")
        return cls(
            cfg.judge_base_url,
            cfg.judge_model,
            api_key_env=cfg.judge_api_key_env,
            timeout=cfg.judge_timeout,
            retries=cfg.judge_retries,
            concurrency=cfg.judge_concurrency,
            on_error=cfg.judge_on_error,
            max_tokens=cfg.judge_max_tokens,
            cache=cache,
        )

    def __repr__(self) -> str:
        return (
            f"JudgeGrader(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"prompt_version={PROMPT_VERSION!r}, on_error={self.on_error!r})"
        )

    @property
    def failures(self) -> int:
        """Answers that could not be graded so far."""
        return self.stats["failures"]

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    # ------------------------------------------------------------------------------------------- grading
    def __call__(self, question: str, gold: str, prediction: str) -> float:
        return self.grade_many([(question, gold, prediction)])[0]

    def grade_many(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        """The score of each ``(question, gold, prediction)``, in order: cached ones without a request, each
        distinct other one asked once, up to ``concurrency`` at a time."""
        keys = [judgment_key(self.identity, *item) for item in items]
        scores: dict[str, float] = {}
        todo: dict[str, tuple[str, str, str]] = {}
        for key, item in zip(keys, items, strict=True):
            if key in scores or key in todo:
                continue
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                self._count("cache_hits")
                scores[key] = cached
            else:
                todo[key] = item
        if len(todo) == 1 or self.concurrency == 1:
            scores.update({key: self._judge(key, item) for key, item in todo.items()})
        elif todo:
            workers = min(self.concurrency, len(todo))
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="seal-judge") as pool:
                done = pool.map(lambda kv: self._judge(*kv), todo.items())
                scores.update(zip(todo, done, strict=True))
        return [scores[key] for key in keys]

    def _judge(self, key: str, item: tuple[str, str, str]) -> float:
        """One judgment: asked (with retries), stored in the cache, or the ungradable outcome."""
        body = {
            "model": self.model,
            "messages": judge_messages(*item),
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        payload = json.dumps(body, ensure_ascii=True).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self._count("retries")
            try:
                reply = self._ask(payload)
            except _Failure as failure:
                reason = str(failure)
                if not failure.retry or attempt == self.retries:
                    break
                delay = self.backoff * (attempt + 1)
                time.sleep(min(max(delay, failure.wait or 0.0), MAX_RETRY_AFTER))
                continue
            verdict = parse_verdict(reply)
            if verdict is None:
                reason = f"no yes/no verdict in the reply {reply[:80]!r}"
                break
            if self.cache is not None:
                self.cache.put(key, verdict, model=self.model, prompt_version=PROMPT_VERSION, reply=reply[:200])
            return verdict
        self._count("failures")
        message = self._redact(f"judge {self.model} at {self.base_url} could not grade an answer: {reason}")
        if self.on_error == "raise":
            raise JudgeError(message)
        log.warning("%s; counted as wrong", message)
        return 0.0

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._api_key()
        return text.replace(key, "***") if key else text

    def _ask(self, payload: bytes) -> str:
        """POST one request and wait at most ``timeout`` seconds for the whole reply; its text, or
        :class:`_Failure`. The request runs in a daemon thread that is left behind on a time-out (its own socket
        time-out ends it)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "seal-env-judge"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        self._count("requests")
        outcome: dict[str, Any] = {}

        def post() -> None:
            try:
                outcome["data"] = self._post(request)
            except _Failure as failure:
                outcome["failure"] = failure

        worker = threading.Thread(target=post, name="seal-judge-request", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive() or not outcome:
            raise _Failure(f"no complete reply within {self.timeout:g} s", retry=True)
        if "failure" in outcome:
            raise outcome["failure"]
        data = outcome["data"]
        try:
            content = json.loads(data)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Failure(f"not a chat completion: {data[:80]!r}", retry=True) from None
        if not isinstance(content, str):
            raise _Failure("a chat completion without text content", retry=True)
        return content

    def _post(self, request: urllib.request.Request) -> bytes:
        """The body of the reply to ``request``, or :class:`_Failure`."""
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as err:
            wait = _retry_after(err.headers.get("Retry-After") if err.headers else None)
            detail = self._redact(_error_text(err))
            raise _Failure(f"HTTP {err.code}{detail}", retry=err.code in RETRY_STATUS, wait=wait) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Failure(f"no reply within {self.timeout:g} s", retry=True) from None
            raise _Failure(f"request failed: {type(reason).__name__}: {reason}", retry=True) from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        text = err.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""
    return f": {text[:200]}" if text else ""


def judge_key(cfg: Any) -> dict[str, str] | None:
    """What identifies the grader of settings ``cfg`` (a SealConfig) in cache keys: None for the lenient match, the
    judge's base URL, model and prompt version for ``grader="judge"`` (timeouts, retries and the key's variable
    decide no verdict)."""
    if cfg.grader != "judge" or cfg.judge_base_url is None or cfg.judge_model is None:
        return None
    return {
        "base_url": normalize_base_url(cfg.judge_base_url),
        "model": cfg.judge_model.strip(),
        "prompt_version": PROMPT_VERSION,
    }
