"""wandb logging for the agents, inside the run directory: any wandb failure prints one warning and never stops
the run; "online" without an API key logs offline."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, cast


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc
        from urllib.parse import urlparse

        host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        return netrc.netrc().authenticators(host or "") is not None
    except Exception:
        return False


class Logger:
    """Logs to wandb inside the run directory; any wandb failure prints one warning and never stops the run."""

    def __init__(self, mode: str, project: str, name: str, run_dir: Path, config: dict[str, Any], run_id: str):
        self.run, self._set_env = None, {}
        if mode == "disabled":
            return
        if mode == "online" and not _has_wandb_key():
            print("wandb: no API key found, logging offline (wandb sync later)", file=sys.stderr)
            mode = "offline"
        try:
            import wandb
        except Exception as e:  # pragma: no cover - wandb is a dependency
            return self._fail(e)
        wanted = {
            var: str(run_dir / "wandb" / sub)
            for var, sub in (
                ("WANDB_CACHE_DIR", "cache"),
                ("WANDB_DATA_DIR", "data"),
                ("WANDB_ARTIFACT_DIR", "artifacts"),
            )
        }
        wanted["WANDB_DISABLE_WEAVE"] = "true"  # wandb takes our `agents` package for OpenAI's and advertises Weave
        self._set_env = {k: v for k, v in wanted.items() if k not in os.environ}  # the user's settings win
        os.environ.update(self._set_env)
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True, disable_git=True, init_timeout=60)
        for attempt in [mode, "offline"] if mode == "online" else [mode]:
            try:
                self.run = wandb.init(
                    project=project,
                    name=name,
                    id=run_id,
                    dir=str(run_dir),
                    config=config,
                    mode=cast(Literal["online", "offline", "disabled"], attempt),  # RunConfig.validate checks it
                    resume="allow",
                    settings=settings,
                )
                self.run.define_metric("self_edit/index")
                self.run.define_metric("self_edit/*", step_metric="self_edit/index")
                self.run.define_metric("round/index")
                self.run.define_metric("round/*", step_metric="round/index")
                return
            except Exception as e:
                print(f"wandb: {attempt} init failed ({type(e).__name__}: {e})", file=sys.stderr)
        self.run = None

    def _fail(self, error: Exception) -> None:
        warnings.warn(f"wandb logging stopped: {type(error).__name__}: {error}", stacklevel=3)
        self.run = None

    def log(self, data: dict[str, Any]) -> None:
        if self.run is not None:
            try:
                self.run.log(data)
            except Exception as e:
                self._fail(e)

    def table(self, key: str, columns: list[str], rows: list[list[Any]], extra: dict[str, Any]) -> None:
        if self.run is not None:
            try:
                import wandb

                self.run.log({key: wandb.Table(columns=cast("list[str | int]", columns), data=rows), **extra})
            except Exception as e:
                self._fail(e)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                self._fail(e)
        for var in self._set_env:
            os.environ.pop(var, None)
