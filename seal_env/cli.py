"""Command-line helpers for scripts that compute rewards: the executor options (``--executor``, ``--workers``,
``--ray-address``) and the executor they ask for."""

from __future__ import annotations

import argparse
from typing import Any

from seal_env.executors import EXECUTOR_KINDS, Executor, make_executor


def add_executor_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--executor {inprocess,ray}``, ``--workers N`` and ``--ray-address ADDR`` to an agent/benchmark CLI."""
    group = parser.add_argument_group("reward executor")
    group.add_argument(
        "--executor",
        choices=EXECUTOR_KINDS,
        default="inprocess",
        help="where rewards are computed (default: inprocess)",
    )
    group.add_argument("--workers", type=int, default=1, help="Ray actors, one model copy each (default: 1)")
    group.add_argument(
        "--ray-address", default=None, help="Ray cluster address (default: start a local Ray); implies --executor ray"
    )
    return parser


def executor_from_args(args: argparse.Namespace, settings: dict[str, Any] | None = None) -> Executor:
    """The executor that :func:`add_executor_args`'s options ask for."""
    kind = "ray" if args.ray_address is not None else args.executor
    if kind == "inprocess" and args.workers != 1:
        raise ValueError("--workers > 1 needs --executor ray")
    return make_executor(kind, settings, workers=args.workers, address=args.ray_address)
