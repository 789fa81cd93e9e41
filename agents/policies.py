"""Ready policies (see :class:`agents.base.Policy`) and :func:`make_policy`, which builds one from a short spec.

* :class:`PromptPolicy`: a model prompted with a SEAL template, sampled in batches (mlx-lm's ``BatchGenerator``)
  with one random key per (observation, sample), so a sample does not depend on the rest of the batch.
* :class:`ReplayPolicy`: self-edits read from a file such as ``../shared/data/self_edits/gpt-4.1_dev100.json``.
* :class:`PassagePolicy`: the passage itself. :class:`EmptyPolicy`: ``""`` (with the env's default
  ``include_passage=True`` the inner loop then trains on the passage only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import seal_env  # noqa: F401  (loads OpenBLAS before mlx)
from seal_env.models import load_model
from seal_env.prompts import resolve_template, self_edit_prompt, uses_chat
from seal_env.reward.sequences import sanitize_action

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import apply_top_p
from tqdm.auto import tqdm

from agents.base import Observation, derive_seed
from agents.rundir import read_meta

#: The specs of :func:`make_policy`, named by the self-edit they write (the conditions of benchmarks.compare_policies,
#: "none" = no adaptation and "passage" = the passage only, are not policies).
POLICY_SPECS = ("empty", "passage-as-edit", "prompt:TEMPLATE", "replay:PATH", "checkpoint:RUN_DIR[:ROUND]")


def _context_key(text: str) -> str:
    return " ".join(text.split())


class EmptyPolicy:
    """Always the empty self-edit."""

    def propose(self, observations: Sequence[Observation], k: int = 1, seed: int = 0) -> list[list[str]]:
        return [[""] * k for _ in observations]


class PassagePolicy:
    """The passage itself as the self-edit."""

    def propose(self, observations: Sequence[Observation], k: int = 1, seed: int = 0) -> list[list[str]]:
        return [[obs["context"]] * k for obs in observations]


class ReplayPolicy:
    """Self-edits from a JSON list of ``{title, context, completions: [str, ...]}``; sample j is ``completions[j]``.

    Articles are matched by their passage (whitespace-normalised); a missing one raises KeyError.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"self-edit file not found: {self.path}")
        entries = json.loads(self.path.read_text(encoding="utf-8"))
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "completions" in e for e in entries):
            raise ValueError(f"{self.path}: expected a JSON list of {{title, context, completions: [...]}}")
        self.completions = {_context_key(e["context"]): list(e["completions"]) for e in entries}

    def propose(self, observations: Sequence[Observation], k: int = 1, seed: int = 0) -> list[list[str]]:
        out = []
        for obs in observations:
            found = self.completions.get(_context_key(obs["context"]))
            if found is None:
                raise KeyError(f"no self-edits for article {obs['title']!r} in {self.path}")
            if k > len(found):
                raise ValueError(f"{self.path} has {len(found)} self-edits for {obs['title']!r}, {k} were asked for")
            out.append(found[:k])
        return out


def seeded_sampler(seed: int, temperature: float, top_p: float) -> Callable[[mx.array], mx.array]:
    """A sampler for one sequence with its own random key: temperature, then nucleus (top-p) sampling."""
    if temperature == 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    key = mx.random.key(seed)

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, sub = mx.random.split(key)
        if 0 < top_p < 1:
            logprobs = apply_top_p(logprobs, top_p)
        return mx.random.categorical(logprobs * (1 / temperature), key=sub)

    return sample


class PromptPolicy:
    """A language model asked for a self-edit with a SEAL template (``implications``, ``rewrite``, ...).

    ``propose`` generates all ``len(observations) * k`` samples in one continuous batch; sample j of an
    observation is drawn with the key ``derive_seed(seed, title, context, j)``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: str = "implications",
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        batch_size: int = 32,
        progress: bool = False,
    ):
        resolve_template(template)  # raises ValueError for an unknown template
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.batch_size, self.progress = batch_size, progress

    def prompt_ids(self, obs: Observation) -> list[int]:
        """The token ids of the self-edit prompt (chat-wrapped for instruct tokenizers)."""
        text = self_edit_prompt(obs["title"], obs["context"], self.template, self.tokenizer)
        return self.tokenizer.encode(text, add_special_tokens=not uses_chat(self.tokenizer))

    def training_pair(self, obs: Observation, self_edit: str) -> tuple[list[int], int]:
        """``(prompt + self-edit + eos token ids, loss start)``: a training sequence with the loss on the self-edit,
        cleaned as the environment cleans an action (lone surrogates, which no tokenizer takes, become U+FFFD)."""
        prompt = self.prompt_ids(obs)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        text, _ = sanitize_action(self_edit, max(1, len(self_edit)))
        return prompt + self.tokenizer.encode(text, add_special_tokens=False) + eos, len(prompt)

    def propose(self, observations: Sequence[Observation], k: int = 1, seed: int = 0) -> list[list[str]]:
        prompts, samplers = [], []
        for obs in observations:
            ids = self.prompt_ids(obs)
            for j in range(k):
                prompts.append(ids)
                samplers.append(
                    seeded_sampler(derive_seed(seed, obs["title"], obs["context"], j), self.temperature, self.top_p)
                )
        texts = self._generate(prompts, samplers)
        return [texts[i * k : (i + 1) * k] for i in range(len(observations))]

    def _generate(self, prompts: list[list[int]], samplers: list[Callable]) -> list[str]:
        if not prompts:
            return []
        gen = BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in self.tokenizer.eos_token_ids],
            completion_batch_size=self.batch_size,
            prefill_batch_size=min(8, self.batch_size),
        )
        budget = self.max_tokens * len(prompts)
        bar = tqdm(total=budget, desc="sampling self-edits", unit="tok", disable=not self.progress, leave=False)
        try:
            uids = gen.insert(prompts, [self.max_tokens] * len(prompts), samplers=samplers)
            tokens: dict[int, list[int]] = {uid: [] for uid in uids}
            while responses := gen.next_generated():
                for r in responses:
                    if r.finish_reason != "stop":
                        tokens[r.uid].append(r.token)
                    if r.finish_reason is not None:  # count the unused budget as done, for a fair ETA
                        bar.update(self.max_tokens - len(tokens[r.uid]))
                bar.update(sum(r.finish_reason != "stop" for r in responses))
        finally:
            gen.close()
            bar.close()
        return [self.tokenizer.decode(tokens[uid]) for uid in uids]


def make_policy(
    spec: str, *, model: str = "smollm2-135m", loaded: tuple[Any, Any] | None = None, **sampling: Any
) -> Any:
    """A policy from a spec: ``empty`` (the empty self-edit), ``passage-as-edit`` (the passage as the self-edit),
    ``prompt:TEMPLATE``, ``replay:PATH`` or ``checkpoint:RUN_DIR[:ROUND]``.

    ``prompt:`` samples ``model`` (a :func:`seal_env.models.load_model` spec; or pass ``loaded=(model, tokenizer)``);
    ``checkpoint:`` samples the policy saved by an ``agents`` run after ``ROUND`` (default: its last), with the
    run's template and sampling settings. ``sampling`` overrides PromptPolicy arguments (``temperature``, ...).
    """
    kind, _, arg = spec.partition(":")
    if spec == "empty":
        return EmptyPolicy()
    if spec == "passage-as-edit":
        return PassagePolicy()
    if kind == "replay" and arg:
        return ReplayPolicy(arg)
    if kind == "prompt" and arg:
        lm, tokenizer = loaded or load_model(model)
        return PromptPolicy(lm, tokenizer, template=arg, **sampling)
    if kind == "checkpoint" and arg:
        run_dir, _, round_ = arg.rpartition(":") if arg.rpartition(":")[2].isdigit() else (arg, "", "")
        return load_policy(run_dir, int(round_) if round_ else None, **sampling)
    raise ValueError(f"unknown policy spec {spec!r}; use one of {', '.join(POLICY_SPECS)}")


def load_policy(run_dir: str | Path, round: int | None = None, **sampling: Any) -> PromptPolicy:
    """The policy of a run after ``round`` (default: its last checkpoint; 0 = the initial model) as a PromptPolicy."""
    meta = read_meta(run_dir)
    cfg = meta["config"]
    rounds = sorted(int(p.parent.name) for p in Path(run_dir).glob("rounds/*/policy.safetensors"))
    round = (rounds[-1] if rounds else 0) if round is None else round
    model, tokenizer = load_model(cfg["env"]["model"])
    if round:
        path = Path(run_dir) / "rounds" / f"{round:03d}" / "policy.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint for round {round} in {run_dir} (have {rounds})")
        model.load_weights(list(cast(dict[str, mx.array], mx.load(str(path))).items()), strict=False)
        mx.eval(model.parameters())
    settings = {
        "template": cfg["template"],
        "temperature": cfg["temperature"],
        "top_p": cfg["top_p"],
        "max_tokens": cfg["self_edit_max_tokens"],
        **sampling,
    }
    return PromptPolicy(model, tokenizer, **settings)
