"""The SEAL inner loop on mlx-lm: one LoRA-wrapped model, reset in place, trained on a self-edit, then quizzed.

:class:`Learner` wraps the model with mlx-lm's LoRA layers once. Each reward calls :meth:`Learner.reset`
(fresh LoRA weights from a seed, base weights untouched), :meth:`Learner.train`, and the two evaluation
methods: greedy answers with mlx-lm's ``batch_generate``, and the gold answers' log-likelihood.
With ``lora_b = 0`` the adapter adds exactly zero, so the reset model *is* the base model: that is how the
baseline is computed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.generate import batch_generate
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from seal_env.config import SealConfig
from seal_env.prompts import uses_chat


def resolve_lora_keys(model: nn.Module, modules: list[str]) -> list[str]:
    """Full module paths inside a transformer block for short names (``q_proj`` -> ``self_attn.q_proj``).

    ``["all"]`` selects every linear layer of the block.
    """
    block = model.layers[0]
    linear = [k for k, m in block.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    if modules == ["all"]:
        return linear
    keys = []
    for name in modules:
        hits = [k for k in linear if k == name or k.endswith("." + name)]
        if not hits:
            raise ValueError(f"lora_modules: {name!r} matches no linear layer of the model; choose from {linear}")
        keys += hits
    return sorted(set(keys))


def _loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    logits = model(inputs)
    ce = nn.losses.cross_entropy(logits.astype(mx.float32), targets) * mask
    ntoks = mask.sum()
    return ce.sum() / mx.maximum(ntoks, 1), ntoks


def make_batch(rows: list[tuple[list[int], int]]) -> tuple[mx.array, mx.array, mx.array]:
    """Right-padded ``inputs``, ``targets`` and loss ``mask`` for next-token prediction."""
    width = max(len(ids) for ids, _ in rows) - 1
    inputs = np.zeros((len(rows), width), np.int32)
    targets = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, (ids, start) in enumerate(rows):
        n = len(ids) - 1
        inputs[i, :n], targets[i, :n] = ids[:-1], ids[1:]
        mask[i, max(start - 1, 0) : n] = 1.0  # target j predicts token j + 1
    return mx.array(inputs), mx.array(targets), mx.array(mask)


class Learner:
    """A model with LoRA adapters that can be reset, fine-tuned and quizzed, many times over."""

    def __init__(self, model: nn.Module, tokenizer: Any, cfg: SealConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        model.freeze()
        keys = resolve_lora_keys(model, cfg.lora_modules)
        n_layers = len(model.layers) if cfg.lora_layers == -1 else min(cfg.lora_layers, len(model.layers))
        lora = {"rank": cfg.lora_rank, "scale": cfg.lora_alpha / cfg.lora_rank, "dropout": cfg.lora_dropout,
                "keys": keys}
        linear_to_lora_layers(model, n_layers, lora)
        self.adapters = [m for _, m in model.named_modules() if isinstance(m, LoRALinear)]
        self.n_trainable = sum(m.lora_a.size + m.lora_b.size for m in self.adapters)
        self._loss_and_grad = nn.value_and_grad(model, _loss)
        self.reset(0)

    def reset(self, seed: int) -> None:
        """Fresh adapter weights (PEFT/mlx-lm init: A uniform(+-1/sqrt(in)), B = 0) drawn from ``seed``."""
        keys = mx.random.split(mx.random.key(seed), len(self.adapters))
        for m, key in zip(self.adapters, keys):
            bound = 1.0 / math.sqrt(m.lora_a.shape[0])
            m.lora_a = mx.random.uniform(-bound, bound, m.lora_a.shape, key=key)
            m.lora_b = mx.zeros(m.lora_b.shape)
        mx.eval([(m.lora_a, m.lora_b) for m in self.adapters])

    def _optimizer(self, total_steps: int) -> optim.Optimizer:
        cfg = self.cfg
        if cfg.lr_schedule == "linear":
            decay = optim.linear_schedule(cfg.learning_rate, 0.0, max(total_steps - cfg.warmup_steps, 1))
        else:
            decay = lambda step: cfg.learning_rate  # noqa: E731
        lr = decay
        if cfg.warmup_steps:
            warm = optim.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
            lr = optim.join_schedules([warm, decay], [cfg.warmup_steps])
        if cfg.optimizer == "adamw":
            return optim.AdamW(learning_rate=lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adam":
            return optim.Adam(learning_rate=lr)
        return optim.SGD(learning_rate=lr, weight_decay=cfg.weight_decay)

    def train(self, data: list[tuple[list[int], int]], seed: int) -> dict[str, Any]:
        """Fine-tune the adapters on ``data`` (token ids, loss start) for ``cfg.epochs``; returns a train report.

        Stops early, with ``diverged=True``, if a loss is not finite or exceeds ``cfg.max_loss``, or if the
        adapter weights end up non-finite.
        """
        cfg, model = self.cfg, self.model
        per_epoch = math.ceil(len(data) / cfg.batch_size) if data else 0
        opt = self._optimizer(per_epoch * cfg.epochs)
        rng = np.random.default_rng(seed)
        mx.random.seed(seed)  # LoRA dropout
        losses: list[float] = []
        diverged, tokens, t0 = False, 0, time.perf_counter()
        model.train()
        try:
            for _ in range(cfg.epochs if data else 0):
                order = rng.permutation(len(data))
                for i in range(0, len(data), cfg.batch_size):
                    inputs, targets, mask = make_batch([data[j] for j in order[i : i + cfg.batch_size]])
                    (loss, ntoks), grads = self._loss_and_grad(model, inputs, targets, mask)
                    value = loss.item()
                    if not math.isfinite(value) or value > cfg.max_loss:
                        diverged = True
                        break
                    opt.update(model, grads)
                    mx.eval(model.trainable_parameters(), opt.state)
                    losses.append(value)
                    tokens += int(ntoks.item())
                if diverged:
                    break
            if not diverged and losses:
                diverged = not all(bool(mx.isfinite(p).all()) for m in self.adapters for p in (m.lora_a, m.lora_b))
        finally:
            model.eval()
        return {"train_losses": losses, "train_steps": len(losses), "trained_tokens": tokens,
                "diverged": diverged, "train_seconds": time.perf_counter() - t0}

    def _encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=not uses_chat(self.tokenizer))

    def answers(self, prompts: list[str], max_tokens: int) -> list[str]:
        """Greedy answers to the prompts, generated as one batch."""
        if not prompts:
            return []
        ids = [self._encode_prompt(p) for p in prompts]
        texts = batch_generate(self.model, self.tokenizer, ids, max_tokens=max_tokens, verbose=False).texts
        return [t.split("\nQuestion:")[0].strip() for t in texts]

    def answer_logliks(self, prompts: list[str], answers: list[str]) -> list[float]:
        """Mean log-probability per token of each gold ``answer`` after its ``prompt`` (one batched forward)."""
        if not prompts:
            return []
        rows = []
        for p, a in zip(prompts, answers):
            head = self._encode_prompt(p)
            rows.append((head + self.tokenizer.encode(a.strip(), add_special_tokens=False), len(head)))
        inputs, targets, mask = make_batch(rows)
        logprobs = nn.log_softmax(self.model(inputs).astype(mx.float32), axis=-1)
        picked = mx.take_along_axis(logprobs, targets[..., None], axis=-1)[..., 0] * mask
        per_row = picked.sum(axis=1) / mx.maximum(mask.sum(axis=1), 1)
        return [float(x) for x in per_row.tolist()]

    def set_base_weights(self, weights: dict[str, mx.array]) -> None:
        """Replace frozen base weights (plain mlx-lm names, e.g. from a fused policy) under the LoRA wrappers.

        Lets the inner-loop learner be an updated policy (SEAL's "the model adapts itself"). Names that the LoRA
        wrapping moved (``...q_proj.weight`` -> ``...q_proj.linear.weight``) are mapped; unknown names raise.
        """
        current = dict(tree_flatten(self.model.parameters()))
        mapped = []
        for name, value in weights.items():
            head, _, leaf = name.rpartition(".")
            target = name if name in current else f"{head}.linear.{leaf}"
            if target not in current or "lora_" in target:
                raise KeyError(f"{name!r} is not a base weight of this model")
            if current[target].shape != value.shape:
                raise ValueError(f"{name!r}: shape {value.shape} != {current[target].shape}")
            mapped.append((target, value.astype(current[target].dtype)))
        self.model.update(tree_unflatten(mapped))
        mx.eval(self.model.parameters())
