"""Settings of the agents and their command line, generated from the config dataclasses.

Each field of an agent's config (a :class:`RunConfig` subclass) and of :class:`seal_env.config.SealConfig` becomes
a flag (``articles_per_round`` -> ``--articles-per-round``); the ``# Section`` comments of the dataclass become the
groups of ``--help`` and the ``#:`` comments their help text. A preset sets every field; flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seal_env.config import SealConfig
from seal_env.prompts import resolve_template

#: Inner-loop settings of the ``demo`` preset (on top of the SealConfig defaults): 2 epochs (SEAL: 10) and short
#: answers, so that a SmolLM2 reward takes ~30 s on two CPU cores. So short an inner loop almost never makes a
#: 135M model answer right (the accuracy gain is ~always 0), so the reward is the gold answers' log-likelihood gain.
DEMO_ENV: dict[str, Any] = {"reward": "loglik", "epochs": 2, "answer_max_tokens": 16}
#: Inner-loop settings of the ``tiny`` preset (tiny-random model; tests). Its answers are never right, so the
#: reward is the gold answers' log-likelihood gain, which varies between self-edits.
TINY_ENV: dict[str, Any] = {
    "model": "tiny-random",
    "reward": "loglik",
    "epochs": 1,
    "lora_rank": 4,
    "lora_alpha": 8.0,
    "answer_max_tokens": 4,
    "max_sequences": 3,
    "max_sequence_tokens": 64,
}
#: Settings of the ``tiny`` preset common to all algorithms.
TINY: dict[str, Any] = {
    "rounds": 2,
    "articles_per_round": 2,
    "k": 2,
    "heldout_articles": 1,
    "self_edit_max_tokens": 8,
    "policy_lora_rank": 4,
    "policy_lora_alpha": 8.0,
    "policy_lora_modules": ["q_proj", "v_proj"],
    "policy_epochs": 1,
    "progress": False,
    "env": TINY_ENV,
}
CHOICES = {
    "wandb_mode": ("online", "offline", "disabled"),
    "executor": ("inprocess", "ray"),
    "inner_loop_learner": ("policy", "base"),
}
ENV_CLI_SKIP = ("split",)  # the round loop picks the split itself
RESUME_OVERRIDES = (
    "executor",
    "workers",
    "ray_address",
    "wandb_mode",
    "progress",
)  # settings that do not change results


@dataclass
class RunConfig:
    """Settings shared by every agent: the run, the rollouts, the policy's LoRA update, and the environment."""

    # Run
    name: str = ""  #: run directory name under --runs-dir (default: <algorithm>-<preset>-<date>-<time>)
    runs_dir: str = "runs"  #: where run directories are created
    seed: int = 0  #: seeds the article order, sampling, the inner loop and the policy update
    wandb_mode: str = "online"  #: online logs offline when there is no API key or no network
    wandb_project: str = "seal-env"  #: wandb project
    executor: str = "inprocess"  #: where rewards are computed (seal_env.executors)
    workers: int = 1  #: reward workers, one model copy each (--executor ray)
    ray_address: str | None = None  #: Ray cluster address for --executor ray (none: start a local Ray)
    progress: bool = True  #: show progress bars

    # Rollouts
    rounds: int = 2  #: rounds of sample -> reward -> update
    articles_per_round: int = 2  #: training articles per round: the next slice of the shuffled train split
    k: int = 3  #: self-edits sampled per article
    heldout_articles: int = 2  #: held-out articles evaluated before training and after each round (-1 all, 0 none)
    heldout_k: int = 1  #: self-edits sampled per held-out article
    template: str = (
        "implications"  #: self-edit prompt: a name in seal_env.prompts.SELF_EDIT_TEMPLATES or a text with {context}
    )
    temperature: float = 1.0  #: sampling temperature of self-edits (0 = greedy)
    top_p: float = 1.0  #: nucleus sampling of self-edits
    self_edit_max_tokens: int = 64  #: token budget of a self-edit
    sample_batch_size: int = 32  #: self-edits generated together
    inner_loop_learner: str = (
        "policy"  #: policy: the updated policy is also the inner loop's model (SEAL); base: the original model
    )

    # Policy update: a LoRA on the policy, folded into its weights after each round
    policy_lora_rank: int = 64  #: LoRA rank of the policy update
    policy_lora_alpha: float = 128.0  #: LoRA alpha of the policy update
    policy_lora_modules: list[str] = field(default_factory=lambda: ["all"])  #: modules with LoRA (short names or all)
    policy_learning_rate: float = 3e-4  #: learning rate of the policy update (AdamW, linear decay)
    policy_epochs: int = 1  #: epochs over a round's training data
    policy_batch_size: int = 1  #: sequences per policy update step

    env: SealConfig = field(default_factory=lambda: SealConfig(**DEMO_ENV))  #: the environment (inner loop)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (the env validated itself when it was built)."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in (
            "workers",
            "rounds",
            "articles_per_round",
            "k",
            "heldout_k",
            "self_edit_max_tokens",
            "sample_batch_size",
            "policy_lora_rank",
            "policy_epochs",
            "policy_batch_size",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.executor == "inprocess" and (self.workers != 1 or self.ray_address):
            raise ValueError("--workers > 1 and --ray-address need --executor ray")
        if self.heldout_articles < -1:
            raise ValueError(f"heldout_articles must be -1 (all), 0 (none) or a count, got {self.heldout_articles}")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.name and (os.sep in self.name or self.name in (".", "..")):
            raise ValueError(f"name must be a plain directory name, got {self.name!r}")
        resolve_template(self.template)
        self.update_config()
        if self.inner_loop_learner == "policy" and self.env.quantize:
            raise ValueError("inner_loop_learner='policy' needs an unquantized inner loop (quantize=None)")

    def update_config(self) -> SealConfig:
        """The policy update's LoRA and optimiser settings, as the SealConfig that seal_env's Learner takes."""
        return SealConfig(
            model=self.env.model,
            lora_rank=self.policy_lora_rank,
            lora_alpha=self.policy_lora_alpha,
            lora_modules=self.policy_lora_modules,
            learning_rate=self.policy_learning_rate,
            epochs=self.policy_epochs,
            batch_size=self.policy_batch_size,
        )


# ------------------------------------------------------------------------------------------------ command line


def _sections(cls: type) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(section, [(field, doc)])]`` read from the ``# Section`` and ``#: doc`` comments of a dataclass source."""
    sections: list[tuple[str, list[tuple[str, str]]]] = []
    seen: set[str] = set()
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        title = klass.__name__
        try:
            source = inspect.getsource(klass).splitlines()[1:]
        except OSError:  # no source (e.g. a frozen install): plain field names, no help text
            source = [f"    {f.name}: x = x" for f in dataclasses.fields(klass) if f.name not in seen]
        for line in source:
            if m := re.match(r"\s{4}# (\S.*)$", line):
                title = m.group(1)
            elif m := re.match(r"\s{4}(\w+): [^=]+=.*?(?:#: (.*))?$", line):
                name, doc = m.group(1), m.group(2) or ""
                if name in seen:  # a subclass changed the default: keep the base's place, take a new doc
                    for _, fields in sections:
                        fields[:] = [(n, doc or d) if n == name else (n, d) for n, d in fields]
                    continue
                seen.add(name)
                if not sections or sections[-1][0] != title:
                    sections.append((title, []))
                sections[-1][1].append((name, doc))
    return sections


def _converter(hint: Any) -> tuple[Callable[[str], Any], dict[str, Any]]:
    """An argparse ``type`` and extra keyword arguments for a field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return args[0], {"nargs": "+"}
    if len(args) == 1:  # X | None
        return lambda s: None if s.lower() == "none" else args[0](s), {}
    return hint, {}


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, defaults: Any, skip: tuple[str, ...] = (), prefix: str = ""
) -> None:
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
            elif name in CHOICES:
                group.add_argument(*flags, choices=CHOICES[name], default=argparse.SUPPRESS, help=text)
            else:
                convert, extra = _converter(hints[name])
                group.add_argument(
                    *flags, type=convert, default=argparse.SUPPRESS, help=text, metavar=name.upper(), **extra
                )


def _preset_table(algorithm: str, presets: dict[str, dict[str, Any]]) -> str:
    lines = ["presets (the defaults above are demo's; flags override a preset):"]
    for name, values in presets.items():
        agent = ", ".join(f"{k}={v}" for k, v in values.items() if k != "env") or "the defaults above"
        env = ", ".join(f"{k}={v}" for k, v in values.get("env", DEMO_ENV).items())
        lines.append(f"  {name:6} {agent}\n         inner loop: SealConfig defaults" + (f" + {env}" if env else ""))
    lines += [
        "",
        "examples:",
        f"  python -m agents.{algorithm}                      # demo",
        f"  python -m agents.{algorithm} --preset tiny --wandb-mode disabled",
        f"  python -m agents.{algorithm} --preset paper --data ../shared/data/squad_train_pool300.json",
        f"  python -m agents.{algorithm} --resume runs/<run>",
    ]
    return "\n".join(lines)


def preset_config(cls: type, presets: dict[str, dict[str, Any]], name: str) -> Any:
    """The config of a preset: its agent settings, and its env settings on top of SealConfig's (SEAL's) defaults."""
    values = dict(presets[name])
    env = SealConfig(**values.pop("env", DEMO_ENV))
    return cls(**values, env=env)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config saved with ``dataclasses.asdict``."""
    data = dict(data)
    env = SealConfig(**data.pop("env"))
    return cls(**data, env=env)


def build_parser(
    algorithm: str, cls: type, presets: dict[str, dict[str, Any]], description: str
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m agents.{algorithm}",
        description=description,
        usage="%(prog)s [--preset NAME | --resume RUN_DIR] [--SETTING VALUE ...]",
        epilog=_preset_table(algorithm, presets),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        choices=list(presets),
        default=argparse.SUPPRESS,
        help="starting point for every setting (default: demo)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=argparse.SUPPRESS,
        help="continue an interrupted run with its saved settings (only "
        + ", ".join("--" + n.replace("_", "-") for n in RESUME_OVERRIDES)
        + " may change)",
    )
    defaults = preset_config(cls, presets, "demo")
    _add_fields(parser, cls, defaults, skip=("env",))
    _add_fields(parser, SealConfig, defaults.env, skip=ENV_CLI_SKIP, prefix="inner loop: ")
    return parser


def parse_args(
    parser: argparse.ArgumentParser, cls: type, presets: dict[str, dict[str, Any]], argv: list[str] | None
) -> tuple[Any, str, Path | None]:
    """``(config, preset, resume_dir)`` from the command line; bad settings exit with the parser's error."""
    given = vars(parser.parse_args(argv))
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
            resume, preset = None, given.pop("preset", "demo")
            cfg = preset_config(cls, presets, preset)
            env = {k: given.pop(k) for k in list(given) if k in env_names}
            cfg = dataclasses.replace(cfg, **given, env=SealConfig(**{**cfg.env.to_dict(), **env}))
        cfg.validate()
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e))
    return cfg, preset, resume


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.json): {run_dir}")
    return json.loads(path.read_text(encoding="utf-8"))
