"""The sessions and the app of ``python -m seal_env.serve`` (see :mod:`seal_env.serve`): :class:`SealServedEnv`, one
session's episode over a :class:`SealService` shared by all sessions, and :func:`build_app`, OpenEnv's FastAPI app
serving it behind :class:`Guard` (the access token and the request size limit). ``pip install "seal-env[serve]"``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import uuid
from typing import Any

from seal_env.articles import Article
from seal_env.config import SealConfig
from seal_env.executors import RewardRequest
from seal_env.serve import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_SESSIONS, ENV_ID
from seal_env.serve.batcher import BatchedReward, RequestBatcher
from seal_env.serve.models import SealAction, SealObservation, SealState, ServerCounters

import numpy as np
from gymnasium.utils import seeding
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import EnvironmentMetadata

#: Options ``reset`` takes besides ``seed`` and ``episode_id`` (and an HTTP ``/step`` body, besides ``action``).
RESET_OPTIONS = ("article_index", "article", "inner_loop_seed")
#: Fields of an HTTP ``/step`` body that OpenEnv itself reads (not reset options).
STEP_FIELDS = ("timeout_s", "request_id")
log = logging.getLogger("seal_env")


class RequestError(Exception):
    """A request the server cannot serve, with its HTTP status (400: bad input, 409: no episode to step)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------ the sessions
class SealService:
    """What every session shares: the settings, the articles and the request batcher."""

    def __init__(self, cfg: SealConfig, articles: list[Article], batcher: RequestBatcher):
        self.cfg, self.articles, self.batcher = cfg, articles, batcher

    def counters(self) -> ServerCounters:
        s = self.batcher.stats
        return ServerCounters(
            steps=s.requests, batches=s.batches, evaluate_many_calls=s.evaluate_many_calls, cache_hits=s.cache_hits
        )


def _int_option(name: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RequestError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


class SealServedEnv(Environment[SealAction, SealObservation, SealState]):
    """One session's episode of ``seal/KnowledgeIncorporation-v0`` over a shared :class:`SealService`.

    ``reset`` and the step's inner-loop seed draw from the session's generator exactly as the local environment
    does; ``step`` hands the request to the service's batcher and waits for its reward.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, service: SealService):
        super().__init__()
        self.service = service
        self._np_random: np.random.Generator | None = None
        self.article: Article | None = None
        self.article_index: int | None = None
        self._inner_loop_seed: int | None = None
        self._done = True
        self._episode_id: str | None = None
        self._steps = 0

    @property
    def np_random(self) -> np.random.Generator:
        """The episode generator, seeded at random on first use (as ``gymnasium.Env.np_random``)."""
        if self._np_random is None:
            self._np_random, _ = seeding.np_random()
        return self._np_random

    def reset(self, seed: int | None = None, episode_id: str | None = None, **options: Any) -> SealObservation:
        """Start an episode: the article ``article`` or ``article_index``, else one drawn from the generator."""
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise RequestError(
                f"unknown reset option(s) {unknown}; valid: seed, episode_id, {', '.join(RESET_OPTIONS)}"
            )
        if seed is not None:
            self._np_random, _ = seeding.np_random(_int_option("seed", seed))
        if episode_id is not None and not isinstance(episode_id, str):
            raise RequestError(f"episode_id must be a string, got {type(episode_id).__name__}")
        inner = options.get("inner_loop_seed")
        inner = None if inner is None else _int_option("inner_loop_seed", inner)
        if options.get("article") is not None:
            if options.get("article_index") is not None:
                raise RequestError("give either article or article_index, not both")
            try:
                article, index = Article.from_dict(options["article"]), -1
            except (ValueError, TypeError) as err:
                raise RequestError(f"article: {err}") from None
        else:
            n = len(self.service.articles)
            drawn = int(self.np_random.integers(n))  # drawn as the local env draws it, also when an index is given
            given = options.get("article_index")
            index = drawn if given is None else _int_option("article_index", given)
            if not 0 <= index < n:
                raise RequestError(f"article_index {index} out of range [0, {n})")
            article = self.service.articles[index]
        self.article, self.article_index, self._inner_loop_seed = article, index, inner
        self._done, self._steps = False, 0
        self._episode_id = episode_id or uuid.uuid4().hex
        return self._observation()

    def _request(self, action: SealAction, options: dict[str, Any]) -> RewardRequest:
        """The step's reward request (an HTTP step with reset options first resets)."""
        options = {k: v for k, v in options.items() if k not in STEP_FIELDS}
        if options:
            self.reset(**options)
        if not isinstance(action, SealAction) or not isinstance(action.self_edit, str):
            raise RequestError(f"the action must be a SealAction with a str self_edit, got {action!r}")
        if self.article is None or self._done:
            raise RequestError(
                "no episode to step: reset first (over HTTP, give the reset options with the step)", status=409
            )
        seed = self._inner_loop_seed
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))  # as the local env's step draws it
        return RewardRequest(self.article, action.self_edit, seed)

    def _finish(self, result: BatchedReward) -> SealObservation:
        self._done, self._steps = True, self._steps + 1
        info = result.info
        return self._observation(
            reward=result.reward,
            done=True,
            info=info,
            cache_hit=bool(info.get("cache_hit", False)),
            batch_size=result.group_size,
            batch=result.batch,
        )

    async def step_async(self, action: SealAction, timeout_s: float | None = None, **options: Any) -> SealObservation:
        """Reward the self-edit (batched with other sessions' steps on the article); the episode ends."""
        request = self._request(action, options)
        result = await asyncio.wrap_future(self.service.batcher.submit(request))
        return self._finish(result)

    def step(self, action: SealAction, timeout_s: float | None = None, **options: Any) -> SealObservation:
        """:meth:`step_async`, blocking."""
        request = self._request(action, options)
        return self._finish(self.service.batcher.submit(request).result())

    @property
    def state(self) -> SealState:
        return SealState(
            episode_id=self._episode_id,
            step_count=self._steps,
            article_id=None if self.article is None else self.article.id,
            article_index=self.article_index,
            done=self._done,
            server=self.service.counters(),
        )

    def get_metadata(self) -> EnvironmentMetadata:
        return EnvironmentMetadata(
            name=ENV_ID,
            description="SEAL knowledge incorporation: the action is a self-edit of the article; a LoRA adapter is "
            "fine-tuned on it and the reward is the adapted model's quiz gain over the base model",
            version=_version(),
        )

    def _observation(self, **after_step: Any) -> SealObservation:
        assert self.article is not None  # called after a reset
        return SealObservation(
            title=self.article.title,
            context=self.article.context,
            article_id=self.article.id,
            article_index=-1 if self.article_index is None else self.article_index,
            n_questions=len(self.article.questions),
            **after_step,
        )


def _version() -> str:
    """seal-env's version (from its installed metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seal-env")
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------------ the app
def _json(status: int, detail: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    return [(b"content-type", b"application/json")], json.dumps({"detail": detail}).encode()


class Guard:
    """ASGI middleware in front of OpenEnv's app: the access token (when set) and the request size limit."""

    def __init__(self, app: Any, token: str | None, max_request_bytes: int):
        self.app, self.token, self.max_bytes = app, token, max_request_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self.token is not None:
            problem = self._auth_problem(scope)
            if problem is not None:
                return await self._deny(kind, scope, receive, send, *problem)
        if kind == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None:
                try:
                    size = int(length)
                except ValueError:
                    return await self._deny(kind, scope, receive, send, 400, "bad Content-Length header")
                if size > self.max_bytes:
                    return await self._deny(kind, scope, receive, send, 413, self._too_large(size))
            else:  # a chunked body: read it here, within the limit, then hand it on
                body, more = b"", True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    body += message.get("body", b"")
                    more = message.get("more_body", False)
                    if len(body) > self.max_bytes:
                        return await self._deny(kind, scope, receive, send, 413, self._too_large(len(body)))
                receive = _replay(body, receive)
            return await self.app(scope, receive, send)
        from starlette import websockets

        gone = (
            websockets.WebSocketDisconnect,
            getattr(websockets, "WebSocketDisconnected", websockets.WebSocketDisconnect),
        )
        try:
            await self.app(scope, receive, send)
        except gone:  # the client has gone (OpenEnv's session then writes to, and closes, the closed socket)
            log.debug("seal-env: a WebSocket client disconnected")
        return None

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_bytes} bytes (--max-request-bytes)"

    def _auth_problem(self, scope: dict[str, Any]) -> tuple[int, str] | None:
        assert self.token is not None
        header = dict(scope["headers"]).get(b"authorization")
        if header is None:
            return 401, "missing access token: send the header 'Authorization: Bearer <token>'"
        scheme, _, given = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return 403, "wrong access token"
        return None

    async def _deny(self, kind: str, scope: dict[str, Any], receive: Any, send: Any, status: int, detail: str) -> None:
        headers, body = _json(status, detail)
        if kind == "http":
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": detail[:120]})


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def build_app(
    service: SealService,
    token: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> Any:
    """OpenEnv's FastAPI app serving :class:`SealServedEnv` sessions over ``service``, behind :class:`Guard`."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from openenv.core.env_server.http_server import create_fastapi_app

    app = create_fastapi_app(
        functools.partial(SealServedEnv, service), SealAction, SealObservation, max_concurrent_envs=max_sessions
    )

    async def request_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=getattr(err, "status", 400))

    app.add_exception_handler(RequestError, request_error)
    app.add_middleware(Guard, token=token, max_request_bytes=max_request_bytes)
    return app
