"""The command line of ``python -m seal_env.serve`` (:mod:`seal_env.serve`): the settings (every environment setting
as a flag, as on the agents' command line), the access token, and the process that serves: OpenEnv's app under
uvicorn in a thread, the rewards computed in the main thread (the model lives there)."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from seal_env.config import SealConfig
from seal_env.serve import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_PORT,
    DEFAULT_WINDOW_MS,
    ENV_ID,
)

log = logging.getLogger("seal_env")


# ------------------------------------------------------------------------------------------------ command line
def _positive(kind: type, what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not (value >= 0 if kind is float else value >= 1) or value != value:
            raise argparse.ArgumentTypeError(f"{what} must be {'>= 0' if kind is float else '>= 1'}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from seal_env.cli import add_dataclass_args, add_executor_args

    parser = argparse.ArgumentParser(
        prog="python -m seal_env.serve",
        description=f"Serve {ENV_ID} through OpenEnv (HTTP + WebSocket); see docs/serving.md.",
        usage="%(prog)s [--host HOST] [--port PORT] [--SETTING VALUE ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m seal_env.serve                          # SmolLM2, the environment's defaults, 127.0.0.1:8000\n"
        "  python -m seal_env.serve --model tiny-random --epochs 1 --port 0   # the tiny random model, a free port\n"
        "  SEAL_TOKEN=... python -m seal_env.serve --host 0.0.0.0 --token-env SEAL_TOKEN --executor pool --workers 4",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    server.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port; 0 picks a free one (default: {DEFAULT_PORT})"
    )
    server.add_argument(
        "--token-env",
        metavar="NAME",
        help="the environment variable holding the access token every request must carry (needed to bind to an "
        "address other than loopback)",
    )
    server.add_argument("--token-file", metavar="PATH", help="a file holding the access token (instead of --token-env)")
    server.add_argument(
        "--batch-window-ms",
        type=_positive(float, "--batch-window-ms"),
        default=DEFAULT_WINDOW_MS,
        help="how long a step waits for steps of other sessions on the same article, to train them together "
        f"(default: {DEFAULT_WINDOW_MS:g})",
    )
    server.add_argument(
        "--batch-cap",
        type=_positive(int, "--batch-cap"),
        default=None,
        help="most steps of one article in one batch (default: max_batch_adapters // eval_times)",
    )
    server.add_argument(
        "--max-sessions",
        type=_positive(int, "--max-sessions"),
        default=DEFAULT_MAX_SESSIONS,
        help=f"WebSocket sessions open at once (default: {DEFAULT_MAX_SESSIONS})",
    )
    server.add_argument(
        "--max-request-bytes",
        type=_positive(int, "--max-request-bytes"),
        default=DEFAULT_MAX_REQUEST_BYTES,
        help=f"largest request body or WebSocket message (default: {DEFAULT_MAX_REQUEST_BYTES})",
    )
    server.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info", help="(default: info)"
    )
    add_executor_args(parser)
    add_dataclass_args(parser, SealConfig, SealConfig(), prefix="environment: ")
    return parser


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(token_env: str | None, token_file: str | None) -> str | None:
    """The access token from the named environment variable or file; ValueError when it is unset or empty."""
    if token_env and token_file:
        raise ValueError("give --token-env or --token-file, not both")
    if token_env:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ValueError(f"--token-env {token_env}: that environment variable is not set or empty")
        return token
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ValueError(f"--token-file {token_file}: {err.strerror or err}") from None
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
        return token
    return None


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, SealConfig, str | None]:
    """``(options, environment settings, access token)``; bad input exits with the parser's error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(SealConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    try:
        cfg = SealConfig.from_kwargs(**given)
        token = read_token(args.token_env, args.token_file)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    if token is None and not is_loopback(args.host):
        parser.error(
            f"binding to {args.host} (not loopback) needs an access token: --token-env NAME or --token-file PATH"
        )
    return args, cfg, token


def main(argv: list[str] | None = None) -> int:
    args, cfg, token = parse_args(argv)
    from seal_env.articles import select_articles
    from seal_env.cli import executor_from_args
    from seal_env.executors import group_size
    from seal_env.serve.app import SealService, build_app
    from seal_env.serve.batcher import RequestBatcher

    import uvicorn

    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    log.setLevel(args.log_level.upper())
    try:
        articles = select_articles(cfg)
        executor = executor_from_args(args, cfg.to_dict())  # loads the model (in this process, or in workers)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"seal-env serve: {err}", file=sys.stderr)
        return 2
    batcher = RequestBatcher(executor.evaluate, group_size(cfg), args.batch_window_ms / 1000, args.batch_cap)
    service = SealService(cfg, articles, batcher)
    app = build_app(service, token, args.max_request_bytes, args.max_sessions)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ws_max_size=args.max_request_bytes,
        log_level="warning" if args.log_level != "debug" else "debug",
        access_log=args.log_level == "debug",
    )
    server = uvicorn.Server(config)
    stop = threading.Event()

    def serve_http() -> None:
        try:
            server.run()
        finally:
            stop.set()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    http = threading.Thread(target=serve_http, name="seal-serve-http", daemon=True)
    http.start()
    while not server.started and not stop.wait(0.05):
        pass
    try:
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]
            print(
                f"seal-env: serving {ENV_ID} on http://{args.host}:{port} ({cfg.model}, {len(articles)} articles, "
                f"{'token required' if token else 'no token'})",
                flush=True,
            )
            batcher.run(stop)  # the rewards are computed in this thread, the HTTP server runs in its own
        else:
            print("seal-env serve: the HTTP server did not start (see above)", file=sys.stderr)
            return 1
    finally:
        batcher.close()
        server.should_exit = True
        http.join(timeout=10)
        executor.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
