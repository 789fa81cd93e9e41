"""Command-line helpers: a flag for every field of a settings dataclass (:func:`add_dataclass_args`, used by the
agents and the server), and for scripts that compute rewards the executor options (``--executor``, ``--workers``,
``--ray-address``, ``--request-timeout``) and the executor they ask for."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import typing
from collections.abc import Callable
from typing import Any

from seal_env.config import SealConfig, parse_setting
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


# ------------------------------------------------------------------------------------------------ settings


def _sections(cls: type) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(group, [(field, help)])]`` from the fields' metadata (:func:`seal_env.config.setting`), in field order; a
    subclass field that only changes a default keeps the base class's help and group."""
    inherited: dict[str, dict[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                base = inherited.get(f.name, {})
                inherited[f.name] = {k: f.metadata.get(k) or base.get(k, "") for k in ("help", "group")}
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    for f in dataclasses.fields(cls):
        meta = inherited[f.name]
        group = meta["group"] or cls.__name__
        if not sections or sections[-1][0] != group:
            sections.append((group, []))
        sections[-1][1].append((f.name, meta["help"]))
    return sections


def _env_value(name: str, text: str) -> Any:
    try:
        return parse_setting(name, text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _converter(hint: Any) -> tuple[Callable[[str], Any], dict[str, Any]]:
    """An argparse ``type`` and extra keyword arguments for a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return args[0], {"nargs": "+"}
    if len(args) == 1:  # X | None
        return lambda s: None if s.lower() == "none" else args[0](s), {}
    return hint, {}


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any,
    skip: tuple[str, ...] = (),
    prefix: str = "",
    choices: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """A flag for every field of the dataclass ``cls`` (``articles_per_round`` -> ``--articles-per-round``;
    ``--data`` also for ``dataset``), in ``--help`` groups and with the help texts of the fields' metadata
    (:func:`seal_env.config.setting`), the default shown from ``defaults``: ``--flag`` / ``--no-flag`` for a bool,
    ``choices`` where given, several values for a list, :func:`seal_env.config.parse_setting` for a
    :class:`~seal_env.config.SealConfig` setting. A flag not given is absent from the parsed namespace."""
    choices = choices or {}
    hints = typing.get_type_hints(cls)
    for title, fields in _sections(cls):
        group = parser.add_argument_group(prefix + title)
        for name, doc in fields:
            if name in skip:
                continue
            flags = ["--" + name.replace("_", "-")] + (["--data"] if name == "dataset" else [])
            default = getattr(defaults, name)
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text = (doc if "default" in doc else f"{doc} (default: {shown})").replace("%", "%%")
            if hints[name] is bool:
                group.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
            elif name in choices:
                group.add_argument(*flags, choices=choices[name], default=argparse.SUPPRESS, help=text)
            else:
                convert, extra = _converter(hints[name])
                if cls is SealConfig and not extra:  # environment settings: parsed as everywhere else
                    convert = functools.partial(_env_value, name)
                group.add_argument(
                    *flags, type=convert, default=argparse.SUPPRESS, help=text, metavar=name.upper(), **extra
                )
