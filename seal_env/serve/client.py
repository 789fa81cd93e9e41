"""Clients of ``python -m seal_env.serve``: OpenEnv's client class for the environment, and an executor over it.

:class:`SealEnvClient` is OpenEnv's ``EnvClient`` (a WebSocket session, async; ``.sync()`` wraps it for
synchronous code) typed with :mod:`seal_env.serve.models`, plus the access token::

    async with SealEnvClient("http://127.0.0.1:8000") as env:
        first = await env.reset(seed=0)              # first.observation.title, .context
        result = await env.step("1. A self-edit.")   # result.reward, result.observation.info

:class:`ServedExecutor` is an :class:`~seal_env.executors.Executor` whose rewards come from the server: one session
per request, all of a call's requests at once (so an article's requests are batched by the server). Anything that
takes an executor uses it unchanged, e.g. TRL's reward function
``seal_env.integrations.trl.SealReward(executor=ServedExecutor(url))``, with the same inner-loop seeds, and so the
same rewards, as a local executor.

:class:`ServerProcess` starts ``python -m seal_env.serve`` as a child process and waits until it serves (examples,
tests, benchmarks).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import IO, Any, TypeVar

from seal_env.executors import DEFAULT_REQUEST_TIMEOUT, RewardRequest, check_requests
from seal_env.serve.models import SealAction, SealObservation, SealState

from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from websockets.asyncio.client import connect as ws_connect

T = TypeVar("T")


class SealEnvClient(EnvClient[SealAction, SealObservation, SealState]):
    """A session of the served ``seal/KnowledgeIncorporation-v0`` (OpenEnv's ``EnvClient``).

    ``base_url``: the server (``http://host:port``); ``token``: its access token (sent as
    ``Authorization: Bearer``); ``message_timeout_s``: how long to wait for an answer (a step trains a LoRA).
    ``step`` takes a :class:`~seal_env.serve.models.SealAction` or the self-edit text; ``reset`` takes ``seed``,
    ``episode_id``, ``article_index``, ``article`` (``{title, context, questions}``) and ``inner_loop_seed``.
    A refused request raises RuntimeError with the server's message.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        message_timeout_s: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout_s: float = 30.0,
        **kwargs: Any,
    ):
        super().__init__(base_url, connect_timeout_s=connect_timeout_s, message_timeout_s=message_timeout_s, **kwargs)
        self._token = token

    async def connect(self) -> SealEnvClient:
        """Open the WebSocket session (with the token, when one is set)."""
        if self._ws is not None:  # type: ignore[has-type]  # OpenEnv's attribute, typed under TYPE_CHECKING
            return self
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        local = any(name in self._ws_url.lower() for name in ("://localhost", "://127.0.0.1", "://[::1]"))
        try:
            self._ws = await ws_connect(
                self._ws_url,
                open_timeout=self._connect_timeout,
                max_size=self._max_message_size,
                additional_headers=headers,
                proxy=None if local else True,  # never a proxy for this machine (as OpenEnv's client)
            )
        except Exception as err:
            raise ConnectionError(f"Failed to connect to {self._ws_url}: {err}") from err
        return self

    def _step_payload(self, action: SealAction | str) -> dict[str, Any]:
        if isinstance(action, str):
            action = SealAction(self_edit=action)
        return {"self_edit": action.self_edit, **({"metadata": action.metadata} if action.metadata else {})}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[SealObservation]:
        observation = SealObservation(
            **payload.get("observation", {}), reward=payload.get("reward"), done=payload.get("done", False)
        )
        return StepResult(observation=observation, reward=observation.reward, done=observation.done)

    def _parse_state(self, payload: dict[str, Any]) -> SealState:
        return SealState.model_validate(payload)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code (in a helper thread when this thread runs an event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class ServedExecutor:
    """An :class:`~seal_env.executors.Executor` over a running server: each request is an episode of its own
    session (``reset(article=..., inner_loop_seed=request.seed)``, then ``step``), all of a call's requests at once
    (at most ``max_connections`` sessions open), so that the server trains an article's requests together.

    Rewards and infos are the server's (the info carries ``cache_hit`` and ``batch_adapters``). Requests with
    ``adapt=False`` and :meth:`set_base_weights` are not served (ValueError, NotImplementedError).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        max_connections: int = 64,
        message_timeout_s: float = DEFAULT_REQUEST_TIMEOUT,
    ):
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive integer, got {max_connections!r}")
        self.base_url, self.token = base_url, token
        self.max_connections, self.message_timeout_s = max_connections, message_timeout_s

    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        requests = list(requests)
        check_requests(requests)
        if any(not r.adapt for r in requests):
            raise ValueError("the served environment trains every self-edit: adapt=False needs a local executor")
        return run_sync(self._evaluate(requests, on_result))

    async def _evaluate(
        self, requests: list[RewardRequest], on_result: Callable[[int, float, dict], None] | None
    ) -> list[tuple[float, dict[str, Any]]]:
        gate = asyncio.Semaphore(self.max_connections)

        async def one(i: int, request: RewardRequest) -> tuple[float, dict[str, Any]]:
            async with gate:
                client = SealEnvClient(self.base_url, self.token, message_timeout_s=self.message_timeout_s)
                try:
                    await client.reset(article=request.article.to_dict(), inner_loop_seed=request.seed)
                    result = await client.step(request.self_edit)
                finally:
                    await client.close()
            reward, info = float(result.reward if result.reward is not None else "nan"), result.observation.info
            if on_result is not None:
                on_result(i, reward, info)
            return reward, info

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        raise NotImplementedError("a served environment keeps its model: restart the server with other weights")

    def close(self) -> None:
        """Nothing to close: sessions are closed after each call."""


class ServerProcess:
    """``python -m seal_env.serve *args`` in a child process, started and ready (its model loaded) on return.

    ``url`` is where it serves (``--port 0``, the default here, picks a free port); ``stderr``: where its log goes
    (default: this process's stderr). A server that exits before serving raises RuntimeError with its exit code.
    Use it as a context manager, or call :meth:`stop`.
    """

    def __init__(self, args: Sequence[str] = (), env: dict[str, str] | None = None, stderr: IO[str] | None = None):
        args = list(args)
        if not any(a == "--port" or a.startswith("--port=") for a in args):
            args += ["--port", "0"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seal_env.serve", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None  # a pipe was asked for
        line = self.proc.stdout.readline()
        found = re.search(r" on (http://\S+) ", line)
        if not found:
            code = self.proc.wait()
            raise RuntimeError(f"python -m seal_env.serve exited with code {code} before serving: {line.strip()!r}")
        self.url = found.group(1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Stop the server (SIGTERM: it finishes the batch it computes) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
