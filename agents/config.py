"""Settings of the agents and their command line, generated from the config dataclasses.

Each field of an agent's config (a :class:`RunConfig` subclass) and of :class:`seal_env.config.SealConfig` becomes
a flag (``articles_per_round`` -> ``--articles-per-round``); the fields' metadata (:func:`seal_env.config.setting`)
give the groups of ``--help`` and the help texts. A preset sets every field; flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from seal_env.config import SEAL_PAPER_SETTINGS, SealConfig, check_field_types, parse_setting, setting
from seal_env.executors import DEFAULT_REQUEST_TIMEOUT, check_request_timeout
from seal_env.journal import read_json
from seal_env.prompts import resolve_template

#: Inner-loop settings of the ``demo`` preset (on top of the SealConfig defaults): 2 epochs (SEAL: 10) and short
#: answers, so that a SmolLM2 reward takes seconds on a CPU. So short an inner loop almost never makes a 135M model
#: answer right (the accuracy gain is ~always 0), so the reward is the gold answers' log-likelihood gain.
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
    "executor": "inprocess",  # tests: one process, bit-exact references
    "env": TINY_ENV,
}
#: Settings of the ``paper`` preset common to all algorithms: SEAL's knowledge-incorporation outer loop (2 rounds
#: of 50 articles x 5 self-edits x 3 inner loops, the policy update 2 epochs in batches of 5, every held-out
#: article) and SEAL's inner loop (the SealConfig defaults + SEAL_PAPER_SETTINGS, with SEAL's accuracy reward).
PAPER_PRESET: dict[str, Any] = {
    "rounds": 2,
    "articles_per_round": 50,
    "k": 5,
    "heldout_articles": -1,
    "self_edit_max_tokens": 1024,
    "policy_epochs": 2,
    "policy_batch_size": 5,
    "env": {**SEAL_PAPER_SETTINGS, "eval_times": 3, "reward": "accuracy"},
}
CHOICES = {
    "wandb_mode": ("online", "offline", "disabled"),
    "executor": ("auto", "inprocess", "pool", "ray"),
    "inner_loop_learner": ("policy", "base"),
}
ENV_CLI_SKIP = ("split",)  # the round loop picks the split itself
RESUME_OVERRIDES = (
    "executor",
    "workers",
    "ray_address",
    "request_timeout",
    "wandb_mode",
    "progress",
)  # settings that do not change results


#: The --help group of the policy-update settings.
POLICY_UPDATE = "Policy update: a LoRA on the policy, folded into its weights after each round"


@dataclass
class RunConfig:
    """Settings shared by every agent: the run, the rollouts, the policy's LoRA update, and the environment."""

    name: str = setting(
        "", "run directory name under --runs-dir (default: <algorithm>-<preset>-<date>-<time>)", group="Run"
    )
    runs_dir: str = setting("runs", "where run directories are created", group="Run")
    seed: int = setting(0, "seeds the article order, sampling, the inner loop and the policy update", group="Run")
    wandb_mode: str = setting("online", "online logs offline when there is no API key or no network", group="Run")
    wandb_project: str = setting("seal-env", "wandb project", group="Run")
    executor: str = setting(
        "auto",
        "where rewards are computed (seal_env.executors): auto picks one single-thread worker process per core, as "
        "many as fit in memory (this process when only one fits), and prints what it picked; inprocess: this process; "
        "pool: --workers processes; ray: --workers Ray actors",
        group="Run",
    )
    workers: int = setting(1, "reward workers, one model copy each (--executor pool or ray)", group="Run")
    ray_address: str | None = setting(
        None, "Ray cluster address for --executor ray (none: start a local Ray)", group="Run"
    )
    request_timeout: float | None = setting(
        DEFAULT_REQUEST_TIMEOUT,
        "seconds a reward worker process (--executor auto, pool or ray) may take to answer one batched group of "
        "requests, or to load its model, before it is killed and replaced and its requests retried (none: no limit)",
        group="Run",
    )
    progress: bool = setting(True, "show progress bars", group="Run")

    rounds: int = setting(2, "rounds of sample -> reward -> update", group="Rollouts")
    articles_per_round: int = setting(
        2, "training articles per round: the next slice of the shuffled train split", group="Rollouts"
    )
    k: int = setting(3, "self-edits sampled per article", group="Rollouts")
    heldout_articles: int = setting(
        2, "held-out articles evaluated before training and after each round (-1 all, 0 none)", group="Rollouts"
    )
    heldout_k: int = setting(1, "self-edits sampled per held-out article", group="Rollouts")
    template: str = setting(
        "implications",
        "self-edit prompt: a name in seal_env.prompts.SELF_EDIT_TEMPLATES or a text with {context}",
        group="Rollouts",
    )
    temperature: float = setting(1.0, "sampling temperature of self-edits (0 = greedy)", group="Rollouts")
    heldout_temperature: float | None = setting(
        None,
        "sampling temperature of held-out self-edits (none: --temperature; 0: greedy, so that rounds differ only by "
        "the policy's most likely self-edit, not by sampling noise)",
        group="Rollouts",
    )
    top_p: float = setting(1.0, "nucleus sampling of self-edits", group="Rollouts")
    self_edit_max_tokens: int = setting(64, "token budget of a self-edit", group="Rollouts")
    sample_batch_size: int = setting(32, "self-edits generated together", group="Rollouts")
    inner_loop_learner: str = setting(
        "policy",
        "policy: the updated policy is also the inner loop's model (SEAL); base: the original model",
        group="Rollouts",
    )

    policy_lora_rank: int = setting(
        64,
        "LoRA rank of the policy update",
        group=POLICY_UPDATE,
    )
    policy_lora_alpha: float = setting(
        128.0,
        "LoRA alpha of the policy update",
        group=POLICY_UPDATE,
    )
    policy_lora_modules: list[str] = setting(
        factory=lambda: ["all"],
        help="modules with LoRA (short names or all)",
        group=POLICY_UPDATE,
    )
    policy_learning_rate: float = setting(
        3e-4,
        "learning rate of the policy update (AdamW, linear decay)",
        group=POLICY_UPDATE,
    )
    policy_epochs: int = setting(
        1,
        "epochs over a round's training data",
        group=POLICY_UPDATE,
    )
    policy_batch_size: int = setting(
        1,
        "sequences per policy update step",
        group=POLICY_UPDATE,
    )

    env: SealConfig = setting(
        factory=lambda: SealConfig(**DEMO_ENV),
        help="the environment (inner loop)",
        group=POLICY_UPDATE,
    )

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting (the env validated itself when it was built): every value
        has its field's type (no NaN or +-inf, no bool for a number), then each setting's range."""
        check_field_types(self)
        check_request_timeout(self.request_timeout)
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
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.executor in ("auto", "inprocess") and self.workers != 1:
            raise ValueError(f"--workers > 1 needs --executor pool or ray, not {self.executor}")
        if self.executor != "ray" and self.ray_address:
            raise ValueError(f"--ray-address needs --executor ray, not {self.executor}")
        if self.heldout_articles < -1:
            raise ValueError(f"heldout_articles must be -1 (all), 0 (none) or a count, got {self.heldout_articles}")
        if not (self.temperature >= 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if self.heldout_temperature is not None and not self.heldout_temperature >= 0:
            raise ValueError(f"heldout_temperature must be >= 0 or none, got {self.heldout_temperature}")
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
                if cls is SealConfig and not extra:  # environment settings: parsed as everywhere else
                    convert = functools.partial(_env_value, name)
                group.add_argument(
                    *flags, type=convert, default=argparse.SUPPRESS, help=text, metavar=name.upper(), **extra
                )


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
    _add_fields(parser, cls, defaults, skip=("env",))
    _add_fields(parser, SealConfig, defaults.env, skip=ENV_CLI_SKIP, prefix="inner loop: ")
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


def read_meta(run_dir: Path | str) -> dict[str, Any]:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a run directory (no config.json): {run_dir}")
    return cast(dict[str, Any], read_json(path))
