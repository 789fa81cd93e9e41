"""AdamW / Adam / SGD for stacked adapters: one learning-rate schedule, step count and moment state per slot.

The parameters are :class:`seal_env.learner.lora.MultiLoRALinear` stacks (leading axis = adapter slot). Each slot is
optimised exactly as mlx's optimizer would optimise that adapter alone (same update formulas, same schedule over its
own number of steps), and :meth:`AdapterOptimizer.update` takes a mask of the slots that step: a finished or
diverged slot's weights and moments stay as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("linear", "constant")


def schedule_lr(step: int, total_steps: int, learning_rate: float, schedule: str, warmup_steps: int) -> np.float32:
    """The learning rate of update number ``step`` (0-based) of a run of ``total_steps`` updates, as mlx computes it
    with ``linear_schedule`` / ``join_schedules`` (linear warm-up from 0, then linear decay to 0 or constant)."""
    if warmup_steps and step < warmup_steps:
        return np.float32(step) * np.float32(learning_rate / warmup_steps) + np.float32(0.0)
    step -= warmup_steps
    if schedule == "constant":
        return np.float32(learning_rate)
    steps = max(total_steps - warmup_steps, 1)
    return np.float32(min(step, steps)) * np.float32((0.0 - learning_rate) / steps) + np.float32(learning_rate)


class AdapterOptimizer:
    """Optimises ``n`` adapter slots at once; slot ``k`` follows its own schedule over ``total_steps[k]`` updates."""

    @classmethod
    def from_config(cls, cfg: Any, total_steps: Sequence[int]) -> AdapterOptimizer:
        """The optimizer a :class:`seal_env.config.SealConfig` asks for, over slots of ``total_steps`` steps."""
        return cls(
            cfg.optimizer,
            total_steps,
            cfg.learning_rate,
            schedule=cfg.lr_schedule,
            warmup_steps=cfg.warmup_steps,
            weight_decay=cfg.weight_decay,
            bias_correction=cfg.adam_bias_correction,
        )

    def __init__(
        self,
        kind: str,
        total_steps: Sequence[int],
        learning_rate: float,
        *,
        schedule: str = "linear",
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        if kind not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.kind, self.total_steps = kind, list(total_steps)
        self.learning_rate, self.schedule, self.warmup_steps = learning_rate, schedule, warmup_steps
        self.weight_decay, self.bias_correction, self.betas, self.eps = weight_decay, bias_correction, betas, eps
        self.steps = np.zeros(len(self.total_steps), np.int64)  # updates taken per slot
        self.state: dict[str, Any] = {}

    def init(self, params: dict[str, Any]) -> None:
        """Zero moments shaped like ``params`` (Adam/AdamW; SGD keeps none)."""
        if self.kind == "sgd":
            self.state = {}
        else:
            self.state = {"m": tree_map(mx.zeros_like, params), "v": tree_map(mx.zeros_like, params)}

    def step_inputs(self, mask: Sequence[bool]) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """``(mask, lr, c1, c2)`` of the next update for every slot, shaped ``(n, 1, 1)``; advances the step counts
        of the masked slots. ``c1``/``c2`` are Adam's bias corrections (ones when off)."""
        n = len(self.total_steps)
        on = np.asarray(mask, bool)
        lr = np.array(
            [
                schedule_lr(int(s), t, self.learning_rate, self.schedule, self.warmup_steps)
                for s, t in zip(self.steps, self.total_steps, strict=True)
            ],
            np.float32,
        )
        self.steps = self.steps + on
        c1 = np.ones(n, np.float32)
        c2 = np.ones(n, np.float32)
        if self.bias_correction:
            t = np.maximum(self.steps, 1).astype(np.float32)
            b1, b2 = (np.float32(b) for b in self.betas)
            c1 = (lr / (np.float32(1) - b1**t)).astype(np.float32)
            c2 = (np.float32(1) / np.sqrt(np.float32(1) - b2**t)).astype(np.float32)
        shape = (n, 1, 1)
        return (
            mx.array(on.reshape(shape)),
            mx.array(lr.reshape(shape)),
            mx.array(c1.reshape(shape)),
            mx.array(c2.reshape(shape)),
        )

    def apply(
        self, grads: dict[str, Any], params: dict[str, Any], mask: mx.array, lr: mx.array, c1: mx.array, c2: mx.array
    ) -> dict[str, Any]:
        """Updated parameters (and ``self.state``) for one step; unmasked slots keep parameters and moments."""
        if self.kind == "sgd":

            def sgd(g: mx.array, p: mx.array) -> mx.array:
                if self.weight_decay != 0:
                    g = g + self.weight_decay * p
                return mx.where(mask, p - lr * g, p)

            return tree_map(sgd, grads, params)
        b1, b2 = self.betas
        new_m = tree_map(lambda g, m: mx.where(mask, b1 * m + (1 - b1) * g, m), grads, self.state["m"])
        new_v = tree_map(lambda g, v: mx.where(mask, b2 * v + (1 - b2) * mx.square(g), v), grads, self.state["v"])
        self.state["m"], self.state["v"] = new_m, new_v  # in place: a compiled update writes into this dict

        def adam(p: mx.array, m: mx.array, v: mx.array) -> mx.array:
            if self.kind == "adamw":
                p_decayed = p * (1 - lr * self.weight_decay)
            else:
                p_decayed = p
            if self.bias_correction:
                new = p_decayed - (c1 * m) / (mx.sqrt(v) * c2 + self.eps)
            else:
                new = p_decayed - lr * m / (mx.sqrt(v) + self.eps)
            return mx.where(mask, new, p)

        return tree_map(adam, params, new_m, new_v)


def slot_grad_norms(grads: Any, n_slots: int) -> mx.array:
    """Each of ``n_slots`` adapter slots' global gradient norm: the L2 norm over all of its LoRA parameters'
    gradients (every leaf of ``grads`` is stacked along a leading slot axis), in float32, one value per slot."""
    total = mx.zeros((n_slots,), dtype=mx.float32)
    for _, g in cast(list[tuple[str, mx.array]], tree_flatten(grads)):
        total = total + mx.square(g.astype(mx.float32)).reshape(n_slots, -1).sum(axis=1)
    return mx.sqrt(total)


def clip_slot_grads(grads: Any, norms: mx.array, max_norm: float) -> Any:
    """``grads`` (every leaf stacked along a leading slot axis) with each slot's gradient scaled by
    ``min(1, max_norm / norm)``, ``norms`` being the slots' global norms (:func:`slot_grad_norms`)."""
    scale = mx.minimum(1.0, max_norm / mx.maximum(norms, 1e-12))

    def clip(g: mx.array) -> mx.array:
        return g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype)

    return tree_map(clip, grads)
