"""Greedy batched decoding that keeps every row in place, so that row ``i`` always goes through the same adapter.

mlx-lm's ``batch_generate`` drops finished rows from the batch as it goes; the quiz of several adapters at once
(:mod:`seal_env.lora`: rows are laid out slot-major) needs the layout fixed, so this loop keeps all rows until every
row has stopped (a stopped row's further tokens are discarded). Prompts are left-padded into one
``BatchKVCache`` per layer (mlx-lm's batched cache: per-row positions and padding mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache


def greedy_generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_tokens: int,
                    stop_tokens: Sequence[int]) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token ids), at most ``max_tokens`` each, without the stop token."""
    if not prompts or max_tokens <= 0:
        return [[] for _ in prompts]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    padding = [width - len(p) for p in prompts]
    tokens = mx.array([[0] * pad + [int(t) for t in p] for p, pad in zip(prompts, padding)], dtype=mx.int32)
    cache = [BatchKVCache(padding) for _ in model.layers]
    for c in cache:
        c.step = width + max_tokens  # one allocation that holds the prompt and every answer token
    if width > 1:
        model(tokens[:, :-1], cache=cache)
    stop = set(int(t) for t in stop_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    running = [True] * len(prompts)

    def step(y: mx.array) -> mx.array:
        return mx.argmax(model(y[:, None], cache=cache)[:, -1, :], axis=-1)

    y = step(tokens[:, -1])
    mx.async_eval(y)
    for n in range(max_tokens):
        nxt = step(y) if n + 1 < max_tokens else None
        if nxt is not None:
            mx.async_eval(nxt)
        for i, t in enumerate(y.tolist()):
            if running[i]:
                if t in stop:
                    running[i] = False
                else:
                    out[i].append(t)
        if not any(running) or nxt is None:
            break
        y = nxt
    return out
