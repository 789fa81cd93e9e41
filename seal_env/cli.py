"""Command-line helpers for scripts that compute rewards: the executor options (``--executor``, ``--workers``,
``--ray-address``, ``--request-timeout``) and the executor they ask for."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from seal_env.executors import (
    DEFAULT_REQUEST_TIMEOUT,
    EXECUTOR_KINDS,
    Executor,
    check_request_timeout,
    make_executor,
)


def _seconds_or_none(text: str) -> float | None:
    """``--request-timeout``'s value: seconds (a positive finite number) or ``none`` (no limit)."""
    try:
        return check_request_timeout(None if text.lower() == "none" else float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_executor_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--executor {auto,inprocess,subprocess,pool,ray}``, ``--workers N``, ``--ray-address ADDR`` and
    ``--request-timeout SECONDS`` to an agent/benchmark CLI."""
    group = parser.add_argument_group("reward executor")
    group.add_argument(
        "--executor",
        choices=EXECUTOR_KINDS,
        default="auto",
        help="where rewards are computed: auto (one single-thread worker process per core, as many as fit in "
        "memory; this process when only one fits), inprocess, subprocess, pool (--workers processes) or ray "
        "(--workers actors) (default: auto)",
    )
    group.add_argument(
        "--workers", type=int, default=1, help="worker processes (pool) or Ray actors, one model copy each (default: 1)"
    )
    group.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: start a local Ray); implies --executor ray"
    )
    group.add_argument(
        "--request-timeout",
        type=_seconds_or_none,
        default=DEFAULT_REQUEST_TIMEOUT,
        metavar="SECONDS",
        help="a subprocess, pool or Ray worker that gives no answer within this time (one batched group of requests, "
        "or a model load) is killed and replaced, and its requests retried; none: no limit (default: %(default)g)",
    )
    return parser


def executor_from_args(args: argparse.Namespace, settings: dict[str, Any] | None = None) -> Executor:
    """The executor that :func:`add_executor_args`'s options ask for; what ``auto`` picked is printed to stderr."""
    kind = "ray" if args.ray_address is not None else args.executor
    if kind not in ("pool", "ray") and args.workers != 1:
        raise ValueError("--workers > 1 needs --executor pool or ray")
    executor = make_executor(
        kind, settings, workers=args.workers, address=args.ray_address, request_timeout=args.request_timeout
    )
    setup = getattr(executor, "setup", None)
    if setup is not None:
        print(setup.message(), file=sys.stderr, flush=True)
    return executor
