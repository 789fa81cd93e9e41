"""Rewards from a child process: :class:`SubprocessExecutor` and the child's loop (``python -m seal_env.worker``).

For trainers that run PyTorch in their own process (TRL, verifiers): mlx, its model and seal-env's OpenBLAS then
stay out of that process. The child holds one :class:`~seal_env.env.KnowledgeIncorporationEnv` and evaluates what
the parent sends, an article's requests batched as in-process (:class:`~seal_env.executors.InProcessExecutor`).

Parent and child talk over a private socket pair (``multiprocessing.connection``), so the child is a plain
``python -m`` process: nothing of the parent's ``__main__`` is re-imported, and if the child dies the parent's next
read fails at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any

from seal_env.executors import THREAD_ENV_VARS, RewardRequest, check_requests


class SubprocessExecutor:
    """Evaluates requests in one child process that holds the environment (``settings``); the same results as
    :class:`~seal_env.executors.InProcessExecutor` with those settings.

    ``threads`` caps the child's math-library threads (default: its own default). If the child dies, the call
    raises ``RuntimeError`` (and the executor is closed); a request that itself fails (e.g. a non-str self-edit)
    raises its own exception in the parent, before anything is sent.
    """

    def __init__(self, settings: dict[str, Any] | None = None, threads: int | None = None):
        from seal_env.config import SealConfig

        self.settings = SealConfig.from_kwargs(**(settings or {})).to_dict()  # fail here, not in the child
        env = dict(os.environ)
        if threads is not None:
            env.update({name: str(threads) for name in THREAD_ENV_VARS})
        mine, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "seal_env.worker", str(theirs.fileno())], env=env, pass_fds=[theirs.fileno()]
            )
        self._conn: Connection | None = Connection(mine.detach())
        try:
            self.pid = self._call("start", self.settings)  # returns once the child's model is loaded
        except BaseException:
            self.close()
            raise

    def _call(self, kind: str, payload: Any, on_message: Callable[[Any], None] | None = None) -> Any:
        """Send one command; pass progress messages to ``on_message``; return the final value."""
        if self._conn is None:
            raise RuntimeError("the reward subprocess is closed")
        try:
            self._conn.send((kind, payload))
            while True:
                tag, value = self._conn.recv()
                if tag == "progress" and on_message is not None:
                    on_message(value)
                elif tag == "done":
                    return value
                elif tag == "error":
                    raise value
        except (EOFError, OSError, ConnectionError) as err:
            code = self._process.poll()
            self.close()
            raise RuntimeError(f"the reward subprocess died (exit code {code})") from err

    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        requests = list(requests)
        check_requests(requests)
        out: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)

        def progress(item: tuple[int, float, dict[str, Any]]) -> None:
            i, reward, info = item
            out[i] = (reward, info)
            if on_result is not None:
                on_result(i, reward, info)

        self._call("evaluate", requests, progress)
        return out  # type: ignore[return-value]

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        from seal_env.executors import weights_to_numpy

        self._call("set_base_weights", weights_to_numpy(weights))

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(("close", None))
            except (OSError, EOFError):
                pass
            self._conn.close()
            self._conn = None
        if self._process.poll() is None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> SubprocessExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(conn: Connection) -> None:
    """The child's loop: build the environment on ``start``, then answer commands until ``close``."""
    executor = None
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:  # the parent went away
            return
        if kind == "close":
            return
        try:
            if kind == "start":
                from seal_env.executors import InProcessExecutor

                executor = InProcessExecutor(payload)
                conn.send(("done", os.getpid()))
            elif kind == "evaluate":
                assert executor is not None
                executor.evaluate(payload, lambda i, r, info: conn.send(("progress", (i, r, info))))
                conn.send(("done", None))
            elif kind == "set_base_weights":
                import mlx.core as mx

                assert executor is not None
                executor.set_base_weights({k: mx.array(v) for k, v in payload.items()})
                conn.send(("done", None))
            else:
                raise ValueError(f"unknown command {kind!r}")
        except Exception as err:  # sent back and raised in the parent
            conn.send(("error", err))


def main(argv: list[str] | None = None) -> None:
    """``python -m seal_env.worker FD``: serve the parent on the inherited socket ``FD``."""
    fd = int((argv or sys.argv[1:])[0])
    with Connection(fd) as conn:
        serve(conn)


if __name__ == "__main__":
    main()
