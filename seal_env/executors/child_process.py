"""Rewards from a child process: :class:`SubprocessExecutor` and the child's loop (``python -m
seal_env.executors.child_process``).

For trainers that run PyTorch in their own process (TRL, verifiers): mlx, its model and seal-env's OpenBLAS then
stay out of that process. The child holds one :class:`~seal_env.envs.knowledge.KnowledgeIncorporationEnv` and evaluates
what the parent sends, an article's requests batched as in-process (:class:`~seal_env.executors.InProcessExecutor`).

Parent and child talk over a private socket pair (``multiprocessing.connection``), so the child is a plain
``python -m`` process: nothing of the parent's ``__main__`` is re-imported, and if the child dies the parent's next
read fails at once. A child that hangs instead is found by the time limit (``request_timeout``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from seal_env.executors.base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_REQUEST_TIMEOUT,
    THREAD_ENV_VARS,
    RewardRequest,
    check_max_retries,
    check_request_timeout,
    check_requests,
    weights_to_numpy,
)

T = TypeVar("T")


class _ChildLost(Exception):
    """The child died, or gave no answer in time and was killed; it is gone and a new one may be started."""


class SubprocessExecutor:
    """Evaluates requests in one child process that holds the environment (``settings``); the same results as
    :class:`~seal_env.executors.InProcessExecutor` with those settings (bit for bit at the same BLAS thread count).

    Args:
        settings: environment settings (the fields of :class:`~seal_env.config.SealConfig`), checked here.
        threads: caps the child's math-library threads (default: its own default).
        request_timeout: seconds (None: no limit) the parent waits for each message it expects from the child --
            the reply to its start (model loaded; in a replacement, the current base weights too), each next result
            of :meth:`evaluate` (the child evaluates an article's requests in batched groups, one ``evaluate_many``
            call each, and sends a group's results together, so this bounds one group), the end of a command, the
            reply to :meth:`set_base_weights` -- and for the child to take a command. Choose it longer than a model
            load and one group's evaluation.
        max_retries: how many times in a row the child may be lost (died, or killed after the time limit) before
            the call raises; any result received in between resets the count.

    ``request_timeout`` and ``max_retries`` are read at each call (changing them between calls takes effect).

    A lost child is replaced by a new one (with the current base weights) and the call goes on: results already
    received are kept, and only the requests without a result are sent again. After more than ``max_retries``
    losses in a row the call raises ``RuntimeError`` (naming the time limit if the last child hung); the executor
    stays usable, and its next call starts a new child. ``stats`` counts results ``completed``, lost children
    (``retried``: died or hung, each time), children started after the first (``respawned``) and ``timeouts``.
    A request that itself fails (e.g. a non-str self-edit) raises its own exception in the parent, before anything
    is sent; an exception in the child's environment is raised in the parent (the child stays).
    """

    def __init__(
        self,
        settings: dict[str, Any] | None = None,
        threads: int | None = None,
        *,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ):
        from seal_env.config import SealConfig

        self.settings = SealConfig.from_kwargs(**(settings or {})).to_dict()  # fail here, not in the child
        self.request_timeout = check_request_timeout(request_timeout)
        self.max_retries = check_max_retries(max_retries)
        self._env = dict(os.environ)
        if threads is not None:
            self._env.update({name: str(threads) for name in THREAD_ENV_VARS})
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._weights: dict[str, Any] | None = None  # the base weights a new child gets
        self._closed = False
        self._starts = 0
        self.stats = {"completed": 0, "retried": 0, "respawned": 0, "timeouts": 0}
        try:
            self._run(lambda progressed: None)  # returns once the child's model is loaded
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id (None after it was lost for good, until the next call starts a new one)."""
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------------------------------- the child
    def _start(self) -> None:
        """Start a child and load the model (and the current base weights) in it."""
        mine, theirs = socket.socketpair()
        with theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "seal_env.executors.child_process", str(theirs.fileno())],
                env=self._env,
                pass_fds=[theirs.fileno()],
            )
        self._conn = Connection(mine.detach())
        self._starts += 1
        if self._starts > 1:
            self.stats["respawned"] += 1
        self._call("start", self.settings)
        if self._weights is not None:
            self._call("set_base_weights", self._weights)

    def _discard(self) -> int | None:
        """Kill the child (a stopped one too), reap it and close our end; its exit code (None if there was none)."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            if process.poll() is None:
                process.kill()
            code = process.wait()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return code

    def _lost(self, timed_out: bool) -> _ChildLost:
        """Discard the child; the error saying why it is gone."""
        if timed_out:
            self._discard()
            self.stats["timeouts"] += 1
            limit = f"request_timeout={self.request_timeout:g} s"
            return _ChildLost(f"the reward subprocess gave no answer within {limit} and was killed")
        assert self._process is not None
        try:  # it closed its end: give it a moment to exit, so that its exit code is known
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return _ChildLost(f"the reward subprocess died (exit code {self._discard()})")

    def _send(self, message: Any) -> None:
        """Send ``message``, waiting at most ``request_timeout`` for the child to take it."""
        conn = self._conn
        assert conn is not None
        if self.request_timeout is None:
            conn.send(message)
            return
        errors: list[BaseException] = []

        def send() -> None:
            try:
                conn.send(message)
            except BaseException as err:  # noqa: BLE001 - raised below, in the caller's thread
                errors.append(err)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(self.request_timeout)
        if sender.is_alive():  # the child takes nothing: once it is killed, the write fails and the thread ends
            assert self._process is not None
            self._process.kill()
            sender.join()
            raise self._lost(timed_out=True)
        if errors:
            raise errors[0]

    def _call(self, kind: str, payload: Any, on_message: Callable[[Any], None] | None = None) -> Any:
        """Send one command; pass progress messages to ``on_message``; return the final value. Raises _ChildLost
        (the child discarded) if the child dies or gives no answer within ``request_timeout``."""
        conn = self._conn
        assert conn is not None
        try:
            self._send((kind, payload))
            while True:
                if not conn.poll(self.request_timeout):
                    raise self._lost(timed_out=True)
                tag, value = conn.recv()
                if tag == "progress" and on_message is not None:
                    on_message(value)
                elif tag in ("done", "error"):
                    break
        except _ChildLost:
            raise
        except (EOFError, OSError) as err:
            raise self._lost(timed_out=False) from err
        except BaseException:  # e.g. on_message raised: the child is mid-command, out of step with us
            self._discard()
            raise
        if tag == "error":
            raise value
        return value

    def _run(self, action: Callable[[Callable[[], None]], T]) -> T:
        """``action(progressed)`` on a live child (started if there is none), with a new child after each loss;
        ``progressed()`` (a result came) resets the count of losses in a row."""
        if self._closed:
            raise RuntimeError("the reward subprocess executor is closed")
        losses = 0

        def progressed() -> None:
            nonlocal losses
            losses = 0

        while True:
            try:
                if self._conn is None:
                    try:
                        self._start()
                    except _ChildLost:
                        raise
                    except BaseException:  # not a usable child (e.g. its model failed to load)
                        self._discard()
                        raise
                return action(progressed)
            except _ChildLost as lost:
                losses += 1
                self.stats["retried"] += 1
                if losses > self.max_retries:
                    raise RuntimeError(f"{lost}; {losses} time(s) in a row (max_retries={self.max_retries})") from None

    # ------------------------------------------------------------------------------------------- the API
    def evaluate(
        self, requests: Iterable[RewardRequest], on_result: Callable[[int, float, dict], None] | None = None
    ) -> list[tuple[float, dict[str, Any]]]:
        requests = list(requests)
        check_requests(requests)
        out: list[tuple[float, dict[str, Any]] | None] = [None] * len(requests)

        def action(progressed: Callable[[], None]) -> None:
            todo = [i for i, result in enumerate(out) if result is None]  # what a lost child did not send

            def progress(item: tuple[int, float, dict[str, Any]]) -> None:
                j, reward, info = item
                i = todo[j]
                out[i] = (reward, info)
                self.stats["completed"] += 1
                progressed()
                if on_result is not None:
                    on_result(i, reward, info)

            if todo:
                self._call("evaluate", [requests[i] for i in todo], progress)

        self._run(action)
        return out  # type: ignore[return-value]

    def set_base_weights(self, weights: dict[str, Any]) -> None:
        """Load ``weights`` in the child; any later child starts with them."""
        arrays = weights_to_numpy(weights)
        self._run(lambda progressed: self._call("set_base_weights", arrays))
        self._weights = arrays

    def close(self) -> None:
        """Ask the child to exit (killed if it has not within 30 s); later calls raise RuntimeError."""
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.send(("close", None))
            except (OSError, EOFError):
                pass
            self._conn.close()
            self._conn = None
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self._discard()

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
                from seal_env.executors.base import InProcessExecutor

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
    """``python -m seal_env.executors.child_process FD``: serve the parent on the inherited socket ``FD``."""
    fd = int((argv or sys.argv[1:])[0])
    with Connection(fd) as conn:
        serve(conn)


if __name__ == "__main__":
    main()
