"""Many independent LoRA adapters over one frozen model, each batch row going through its own adapter.

:class:`MultiLoRALinear` wraps a frozen linear layer with ``n`` adapters stacked along a leading axis
(``lora_a``: ``(n, in, r)``, ``lora_b``: ``(n, r, out)``). The batch is laid out *slot-major*: with ``m`` adapters
selected, the rows are ``m`` equal groups, group ``j`` going through adapter ``index[j]``; the low-rank product is
one batched matmul over the adapter axis. Which adapters are selected is set on the shared :class:`AdapterSlots`
object (``slots.index``, an int array, or ``None`` for the frozen model alone), not passed through the model's
``__call__``, so any mlx-lm model runs unchanged.

Per slot the maths is mlx-lm's ``LoRALinear``: ``y = linear(x) + scale * (dropout(x) @ A) @ B``;
:meth:`MultiLoRALinear.to_lora` gives one slot as a ``LoRALinear`` (e.g. to ``fuse`` it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear


class AdapterSlots:
    """Which adapters the next forward pass uses: ``index`` (int32 array of slot numbers) or ``None`` (none)."""

    def __init__(self) -> None:
        self.index: mx.array | None = None


class MultiLoRALinear(nn.Module):
    """A frozen linear layer plus ``n`` LoRA adapters; rows are routed to adapters by :class:`AdapterSlots`."""

    def __init__(self, linear: nn.Module, slots: AdapterSlots, rank: int, scale: float, dropout: float = 0.0):
        super().__init__()
        out_dims, in_dims = linear.weight.shape
        if isinstance(linear, nn.QuantizedLinear):
            in_dims = in_dims * 32 // linear.bits
        self.linear = linear
        self.in_dims, self.out_dims, self.rank, self.scale, self.dropout_p = in_dims, out_dims, rank, scale, dropout
        self.dropout = nn.Dropout(p=dropout)
        self._slots = slots
        self.lora_a = mx.zeros((0, in_dims, rank))
        self.lora_b = mx.zeros((0, rank, out_dims))

    def __call__(self, x: mx.array) -> mx.array:
        y = self.linear(x)
        index = self._slots.index
        if index is None:
            return y
        m = index.shape[0]
        a, b = mx.take(self.lora_a, index, axis=0), mx.take(self.lora_b, index, axis=0)
        rows = self.dropout(x).reshape(m, -1, x.shape[-1])  # slot-major: group j -> adapter index[j]
        z = (rows @ a) @ b
        return y + (self.scale * z).reshape(y.shape).astype(x.dtype)

    def to_lora(self, slot: int) -> LoRALinear:
        """Slot ``slot`` as mlx-lm's single-adapter ``LoRALinear`` (same frozen linear, copies of its A and B)."""
        lora = LoRALinear.from_base(
            self.linear,  # type: ignore[arg-type]  # typed nn.Linear; mlx-lm also takes (checks for) QuantizedLinear
            r=self.rank,
            dropout=self.dropout_p,
            scale=self.scale,
        )
        lora.lora_a, lora.lora_b = self.lora_a[slot], self.lora_b[slot]
        return lora


def resolve_lora_keys(model: nn.Module, modules: Sequence[str]) -> list[str]:
    """Full module paths inside a transformer block for short names (``q_proj`` -> ``self_attn.q_proj``).

    ``["all"]`` selects every linear layer of the block.
    """
    block = model.layers[0]
    linear = [k for k, m in block.named_modules() if isinstance(m, (nn.Linear, nn.QuantizedLinear))]
    if list(modules) == ["all"]:
        return linear
    keys = []
    for name in modules:
        hits = [k for k in linear if k == name or k.endswith("." + name)]
        if not hits:
            raise ValueError(f"lora_modules: {name!r} matches no linear layer of the model; choose from {linear}")
        keys += hits
    return sorted(set(keys))


def add_multi_lora(
    model: nn.Module, keys: Sequence[str], n_layers: int, rank: int, scale: float, dropout: float = 0.0
) -> tuple[AdapterSlots, list[MultiLoRALinear]]:
    """Wrap ``keys`` of the last ``n_layers`` blocks with :class:`MultiLoRALinear`; the slots object and the layers.

    The wrapped linear keeps its place in the parameter tree as ``<key>.linear`` (as mlx-lm's LoRA does).
    """
    slots = AdapterSlots()
    layers: list[MultiLoRALinear] = []
    blocks = model.layers[len(model.layers) - n_layers :]
    for block in blocks:
        modules = dict(block.named_modules())
        updates = []
        for key in keys:
            lora = MultiLoRALinear(modules[key], slots, rank, scale, dropout)
            updates.append((key, lora))
            layers.append(lora)
        block.update_modules(_unflatten(updates))
    return slots, layers


def init_adapters(layers: Sequence[MultiLoRALinear], seeds: Sequence[int]) -> None:
    """Fresh weights for ``len(seeds)`` slots: slot ``j`` gets exactly what a single adapter reset with
    ``seeds[j]`` gets (PEFT/mlx-lm init: A uniform(+-1/sqrt(in)) from a key per layer split from the seed, B = 0)."""
    keys = [mx.random.split(mx.random.key(int(s)), len(layers)) for s in seeds]
    for i, m in enumerate(layers):
        bound = 1.0 / math.sqrt(m.in_dims)
        if seeds:
            m.lora_a = mx.stack([mx.random.uniform(-bound, bound, (m.in_dims, m.rank), key=k[i]) for k in keys])
        else:
            m.lora_a = mx.zeros((0, m.in_dims, m.rank))
        m.lora_b = mx.zeros((len(seeds), m.rank, m.out_dims))
    mx.eval([(m.lora_a, m.lora_b) for m in layers])


def _unflatten(pairs: Sequence[tuple[str, nn.Module]]) -> dict:
    """``[("self_attn.q_proj", m), ...]`` -> ``{"self_attn": {"q_proj": m}}`` for ``Module.update_modules``."""
    tree: dict = {}
    for key, module in pairs:
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = module
    return tree


def fused_weights(model: nn.Module, slot: int = 0) -> dict[str, mx.array]:
    """The base weights of every multi-LoRA layer with slot ``slot``'s adapter folded in (mlx-lm's
    ``LoRALinear.fuse``), under plain mlx-lm names."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, MultiLoRALinear):
            out[f"{name}.weight"] = module.to_lora(slot).fuse().weight
    return out


def base_weights(model: nn.Module) -> dict[str, mx.array]:
    """The frozen weights under the multi-LoRA layers (plain mlx-lm names)."""
    return {f"{name}.weight": m.linear.weight for name, m in model.named_modules() if isinstance(m, MultiLoRALinear)}


def load_base_weights(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Replace frozen base weights (plain mlx-lm names) under the LoRA wrappers: names that the wrapping moved
    (``...q_proj.weight`` -> ``...q_proj.linear.weight``) are mapped; unknown names raise KeyError, other shapes
    ValueError; values take the weights' dtype."""
    current = dict(tree_flatten(model.parameters()))
    mapped = []
    for name, value in weights.items():
        head, _, leaf = name.rpartition(".")
        target = name if name in current else f"{head}.linear.{leaf}"
        if target not in current or "lora_" in target:
            raise KeyError(f"{name!r} is not a base weight of this model")
        if current[target].shape != value.shape:
            raise ValueError(f"{name!r}: shape {value.shape} != {current[target].shape}")
        mapped.append((target, value.astype(current[target].dtype)))
    model.update(tree_unflatten(mapped))
    mx.eval(model.parameters())


def finite_slots(adapters: Sequence[MultiLoRALinear], n_slots: int) -> list[bool]:
    """Per adapter slot: are all of its LoRA weights (in every one of ``adapters``) finite?"""
    if not n_slots:
        return []
    ok = mx.ones((n_slots,), dtype=mx.bool_)
    for m in adapters:
        for p in (m.lora_a, m.lora_b):
            ok = ok & mx.isfinite(p).reshape(n_slots, -1).all(axis=1)
    return [bool(x) for x in cast(list[bool], ok.tolist())]
