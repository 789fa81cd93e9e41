"""The command line of an agent, generated from its config dataclass: ``--preset``, ``--resume``, and a flag per
setting of the agent (:class:`agents.config.RunConfig` subclass) and of its inner loop
(:class:`seal_env.config.SealConfig`), grouped in ``--help`` by the fields' metadata. A preset sets every field;
flags override it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from seal_env.cli import add_dataclass_args
from seal_env.config import SealConfig

from agents.config import CHOICES, DEMO_ENV, ENV_CLI_SKIP, RESUME_OVERRIDES, config_from_dict, preset_config
from agents.rundir import read_meta


def _preset_table(algorithm: str, presets: dict[str, dict[str, Any]], default: str) -> str:
    lines = [f"presets (the defaults above are {default}'s; flags override a preset):"]
    for name, values in presets.items():
        agent = ", ".join(f"{k}={v}" for k, v in values.items() if k != "env") or "the defaults above"
        env = ", ".join(f"{k}={v}" for k, v in values.get("env", DEMO_ENV).items())
        lines.append(f"  {name:6} {agent}\n         inner loop: SealConfig defaults" + (f" + {env}" if env else ""))
    lines += [
        "",
        "examples:",
        f"  python -m agents.{algorithm}                      # {default}",
        f"  python -m agents.{algorithm} --preset demo        # the machinery, a few minutes",
        f"  python -m agents.{algorithm} --preset tiny --wandb-mode disabled",
        f"  python -m agents.{algorithm} --preset paper --data ../shared/data/squad_train_pool300.json",
        f"  python -m agents.{algorithm} --resume runs/<run>",
    ]
    return "\n".join(lines)


def build_parser(
    algorithm: str, cls: type, presets: dict[str, dict[str, Any]], description: str, default_preset: str = "demo"
) -> argparse.ArgumentParser:
    """The command line of an agent: ``--preset`` (default ``default_preset``), ``--resume``, and a flag per
    setting of ``cls`` and of its inner loop (:class:`SealConfig`), whose shown defaults are the default preset's."""
    parser = argparse.ArgumentParser(
        prog=f"python -m agents.{algorithm}",
        description=description,
        usage="%(prog)s [--preset NAME | --resume RUN_DIR] [--SETTING VALUE ...]",
        epilog=_preset_table(algorithm, presets, default_preset),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=list(presets),
        default=argparse.SUPPRESS,
        help=f"starting point for every setting (default: {default_preset})",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=argparse.SUPPRESS,
        help="continue an interrupted run with its saved settings (only "
        + ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDES)
        + " may change)",
    )
    parser.set_defaults(default_preset=default_preset)
    defaults = preset_config(cls, presets, default_preset)
    add_dataclass_args(parser, cls, defaults, skip=("env",), choices=CHOICES)
    add_dataclass_args(parser, SealConfig, defaults.env, skip=ENV_CLI_SKIP, prefix="inner loop: ")
    return parser


def parse_args(
    parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict[str, Any]], argv: list[str] | None
) -> tuple[Any, str, Path | None]:
    """``(config, preset, resume_dir)`` from the command line; bad settings exit with the parser's error."""
    given = vars(parser.parse_args(argv))
    default_preset = given.pop("default_preset", "demo")
    env_names = {f.name for f in dataclasses.fields(SealConfig)}
    try:
        if "resume" in given:
            resume = Path(given.pop("resume"))
            meta = read_meta(resume)
            bad = sorted(set(given) - set(RESUME_OVERRIDES))
            if bad:
                raise ValueError(
                    f"--resume takes the settings saved in {resume}/config.json; only "
                    f"{', '.join(RESUME_OVERRIDES)} may be given, not {', '.join(bad)}"
                )
            cfg = dataclasses.replace(config_from_dict(cls, meta["config"]), **given)
            preset = meta.get("preset", "")
        else:
            resume, preset = None, given.pop("preset", default_preset)
            cfg = preset_config(cls, presets, preset)
            env = {k: given.pop(k) for k in list(given) if k in env_names}
            cfg = dataclasses.replace(cfg, **given, env=SealConfig(**{**cfg.env.to_dict(), **env}))
        cfg.validate()
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e))
    return cfg, preset, resume
